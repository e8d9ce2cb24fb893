"""What a context may cost: the sliding-window default the planner and runtime share, the
memory check before allocation, and the warning past the training context."""

from __future__ import annotations

import warnings

import pytest

import pyturbo
from pyturbo import host, memory
from pyturbo.measure import measure
from pyturbo.upstream import allocation
from tiny_gguf import write_tiny_llama

WINDOW = 64  # tiny_gguf's Gemma 3 sliding window


@pytest.fixture(scope="module")
def gemma3_path(tmp_path_factory):
    # six layers: five sliding-window ones and one global, Gemma 3's pattern
    return write_tiny_llama(tmp_path_factory.mktemp("g3") / "gemma3.gguf", arch="gemma3", n_layer=6,
                            n_ctx_train=8192)


@pytest.mark.parametrize("swa_full", [False, True])
@pytest.mark.parametrize("cache_k, cache_v", [("f16", "f16"), ("q8_0", "turbo3")])
def test_estimate_and_measure_agree_on_a_sliding_window_model_by_default(gemma3_path, swa_full, cache_k,
                                                                          cache_v):
    kwargs = {} if not swa_full else {"swa_full": True}
    measured = measure(gemma3_path, 8192, cache_k, cache_v, **kwargs)
    est = memory.estimate(gemma3_path, 8192, cache_k, cache_v, **kwargs)
    assert (est.cells, est.cells_swa) == (measured.cells, measured.cells_swa)
    assert est.cells_swa == (8192 if swa_full else 768)  # window + one batch, padded to 256
    assert (est.kv_k, est.kv_v) == (measured.kv_k, measured.kv_v)


# Batches of 64 keep the window cache at 256 cells (window + batch, padded), so that
# 400 tokens overwrite its oldest cells.
SMALL_BATCH = dict(n_batch=64, n_ubatch=64)


def fresh_continuation(model, tokens, n=16, **kwargs) -> str:
    with model.context(n_ctx=512, **SMALL_BATCH, **kwargs) as ctx:
        return ctx.complete(tokens, n)


@pytest.mark.parametrize("cache_k, cache_v", [("f16", "f16"), ("turbo3", "turbo3")])
def test_cutting_back_past_the_window_evaluates_again_instead_of_answering_wrongly(gemma3_path, cache_k,
                                                                                    cache_v):
    with pyturbo.Model(gemma3_path) as model:
        with model.context(n_ctx=512, cache_k=cache_k, cache_v=cache_v, **SMALL_BATCH) as ctx:
            tokens = ctx.tokenize("the cat sat on the mat and the dog ran " * 30)[:400]
            ctx.decode(tokens)
            # the window cache no longer holds what precedes token 200
            assert pyturbo._native.llama.llama_memory_seq_pos_min(ctx._memory, 0) > 200 - WINDOW
            ctx.truncate(200)
            after_truncate = ctx.complete(tokens[:200], 16)
            assert ctx.last_stats.n_prompt_eval == 1
            # a prompt sharing a long prefix with the cache: reused only where the window allows
            ctx.complete(tokens[:380], 2)
            after_prefix = ctx.complete(tokens[:300] + tokens[:20], 16)
        assert after_truncate == fresh_continuation(model, tokens[:200], cache_k=cache_k, cache_v=cache_v)
        assert after_prefix == fresh_continuation(model, tokens[:300] + tokens[:20], cache_k=cache_k,
                                                  cache_v=cache_v)


def test_context_shift_on_a_window_cache_streams_a_long_text_through(gemma3_path):
    with pyturbo.Model(gemma3_path) as model:
        with model.context(n_ctx=256, cache_k="turbo3", cache_v="turbo3") as ctx:
            tokens = ctx.tokenize("the cat sat on the mat and the dog ran " * 80)
            assert len(tokens) > 700
            ctx.complete(tokens, 8, context_shift=True)
            assert ctx.last_stats.stop_reason in ("eog", "max_tokens")
            assert ctx._n_dropped > 400
            held = ctx.cached_tokens
            assert held[0] == tokens[0] and len(held) <= 256
            # the next turn, given as cache + new text, evaluates only the new text
            more = ctx.tokenize(" and the cat", add_special=False)
            ctx.complete(held + more, 4, context_shift=True)
            assert ctx.last_stats.n_prompt_eval == len(more)


def test_a_context_larger_than_memory_is_refused_before_allocation(smol_model):
    with pytest.raises(pyturbo.ContextError, match=r"needs about .* GiB .* available"):
        smol_model.context(n_ctx=4_000_000, cache_k="f16", cache_v="f16")


def test_the_memory_check_uses_the_planner_figures(tiny_model, monkeypatch):
    k = v = pyturbo.cache_type("turbo3")
    needed = allocation.context_bytes(tiny_model.geometry, 4096, k, v, True)
    monkeypatch.setattr(host, "available_host_memory", lambda: needed.total - 1)
    with pytest.raises(pyturbo.ContextError, match="smaller n_ctx or smaller cache types"):
        tiny_model.context(n_ctx=4096, cache_k="turbo3", cache_v="turbo3")
    monkeypatch.setattr(host, "available_host_memory", lambda: needed.total)
    with tiny_model.context(n_ctx=4096, cache_k="turbo3", cache_v="turbo3") as ctx:
        assert ctx.n_ctx == 4096


def test_available_memory_is_read_from_the_system():
    available = host.available_host_memory()
    assert available is not None and 2**26 < available < 2**50


def test_a_context_beyond_the_training_context_warns(tiny_model):
    assert tiny_model.n_ctx_train == 2048
    with pytest.warns(pyturbo.PyturboWarning, match="beyond the 2048 tokens"):
        tiny_model.context(n_ctx=4096).close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_model.context(n_ctx=2048).close()
