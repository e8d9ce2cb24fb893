"""Threads: contexts on one model run in parallel; one context is never entered twice at once."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import pyturbo

PROMPTS = ["the cat", "a dog and", "one two three", "the end of the"]
CACHES = [("f16", "f16"), ("turbo3", "turbo3"), ("q8_0", "turbo2"), ("turbo4", "q4_0")]


def complete(model, prompt: str, cache_k: str, cache_v: str) -> str:
    with model.context(n_ctx=256, cache_k=cache_k, cache_v=cache_v, n_threads=1) as ctx:
        return ctx.complete(prompt, 24)


def test_contexts_in_threads_give_the_sequential_outputs(tiny_model):
    jobs = [(prompt, *cache) for prompt, cache in zip(PROMPTS, CACHES)] * 2
    sequential = [complete(tiny_model, *job) for job in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda job: complete(tiny_model, *job), jobs))
    assert parallel == sequential
    assert len(set(sequential)) > 1


def test_evaluation_releases_the_gil(smol_model):
    """A Python thread keeps running while another evaluates a prompt in llama.cpp."""
    with smol_model.context(n_ctx=2048, n_threads=1) as ctx:
        tokens = ctx.tokenize("The history of the city begins in the year " * 60)[:1500]

        def count_for(seconds: float) -> int:
            n, end = 0, time.perf_counter() + seconds
            while time.perf_counter() < end:
                n += 1
            return n

        baseline_rate = count_for(0.2) / 0.2
        worker = threading.Thread(target=ctx.decode, args=(tokens,))
        started = time.perf_counter()
        worker.start()
        counted = 0
        while worker.is_alive():
            counted += count_for(0.01)
        elapsed = time.perf_counter() - started
    assert elapsed > 0.3, "the prompt evaluated too fast to tell"
    # With the GIL held through the C call this thread would stand still; released, it runs
    # at a good part of its own speed (the machine has other work too).
    assert counted / elapsed > 0.2 * baseline_rate


def test_one_context_used_from_two_threads_is_refused_not_raced(smol_model):
    with smol_model.context(n_ctx=2048, n_threads=1) as ctx:
        tokens = ctx.tokenize("The history of the city begins in the year " * 60)[:1500]
        worker = threading.Thread(target=ctx.score, args=(tokens, len(tokens) - 1))
        worker.start()
        deadline = time.perf_counter() + 10
        while not ctx._busy.locked() and time.perf_counter() < deadline:
            time.sleep(0.001)
        assert ctx._busy.locked()
        with pytest.raises(pyturbo.ContextBusyError, match="another thread"):
            ctx.decode(ctx.tokenize("Hello"))
        with pytest.raises(pyturbo.ContextBusyError):
            ctx.complete("Hello", 4)
        worker.join()
        # once the other thread is done the context works as ever
        assert ctx.complete("The capital of France is", 8)


def test_close_waits_for_a_call_in_another_thread(smol_model):
    ctx = smol_model.context(n_ctx=2048, n_threads=1)
    tokens = ctx.tokenize("The history of the city begins in the year " * 60)[:1500]
    errors = []

    def evaluate():
        try:
            ctx.decode(tokens)
        except Exception as e:  # noqa: BLE001 - the test reports whatever happened
            errors.append(e)

    worker = threading.Thread(target=evaluate)
    worker.start()
    while not ctx._busy.locked() and worker.is_alive():
        time.sleep(0.001)
    ctx.close()  # must not free the cache under the running decode
    worker.join()
    assert errors == []
    assert ctx.closed
    with pytest.raises(pyturbo.PyturboError, match="closed"):
        ctx.complete("Hello", 2)
