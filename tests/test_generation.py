"""End to end on the real SmolLM2-135M: generation, cache types, KV sizes, chat, the CLI."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest

import pyturbo
from pyturbo.units import MiB

pytestmark = pytest.mark.slow

UPSTREAM_PAIRS = list(itertools.product(["f16", "q8_0", "q4_0"], repeat=2))


def kv_formula(model, n_cells: int, cache_k: str, cache_v: str) -> dict:
    """llama.cpp's KV size: n_layer * cells * row(type, head_size * n_head_kv), for K and V."""
    k, v = pyturbo.cache_type(cache_k), pyturbo.cache_type(cache_v)
    return {"k": model.n_layer * n_cells * k.row_bytes(model.head_size_k * model.n_head_kv),
            "v": model.n_layer * n_cells * v.row_bytes(model.head_size_v * model.n_head_kv)}


def test_model_facts_match_smollm2(smol_model):
    assert smol_model.architecture == "llama"
    assert (smol_model.n_layer, smol_model.n_head, smol_model.n_head_kv) == (30, 9, 3)
    assert smol_model.head_size_k == smol_model.head_size_v == 64
    assert smol_model.n_ctx_train == 8192
    assert "im_start" in smol_model.chat_template


def test_greedy_generation_is_deterministic_and_sensible(smol_model):
    with smol_model.context(n_ctx=512, cache_k="q8_0", cache_v="q4_0") as ctx:
        first = ctx.complete("The capital of France is", max_tokens=16)
        second = ctx.complete("The capital of France is", max_tokens=16)
    assert first == second
    assert "Paris" in first
    assert ctx.last_stats.n_gen == 16


def test_second_call_reuses_the_cached_prompt_prefix(smol_model):
    with smol_model.context(n_ctx=512) as ctx:
        ctx.complete("The capital of France is Paris. The capital of Italy is", max_tokens=4)
        assert ctx.last_stats.n_prompt_eval == ctx.last_stats.n_prompt
        ctx.complete("The capital of France is Paris. The capital of Spain is", max_tokens=4)
        assert ctx.last_stats.n_prompt_eval < ctx.last_stats.n_prompt / 2


@pytest.fixture(scope="module")
def f16_answer(smol_model):
    with smol_model.context(n_ctx=1000, flash_attn="on") as ctx:
        return ctx.tokenize(ctx.complete("The capital of France is", max_tokens=8), add_special=False)


@pytest.mark.parametrize("cache_k, cache_v", UPSTREAM_PAIRS)
def test_every_upstream_cache_pair_generates_and_sizes_match_the_formula(smol_model, f16_answer, cache_k, cache_v):
    with smol_model.context(n_ctx=1000, cache_k=cache_k, cache_v=cache_v, flash_attn="on") as ctx:
        text = ctx.complete("The capital of France is", max_tokens=8)
        # the f16 cache's greedy answer starts the same (" Paris" on SmolLM2) with every 4- to 16-bit cache
        assert ctx.tokenize(text, add_special=False)[:2] == f16_answer[:2], text
        assert ctx.n_ctx == 1024  # llama.cpp rounds the cells up to a multiple of 256
        expected = kv_formula(smol_model, 1024, cache_k, cache_v)
        allocated = ctx.kv_cache_bytes()
        # llama.cpp reports MiB to two decimals
        assert abs(allocated["k"] - expected["k"]) <= 0.005 * MiB
        assert abs(allocated["v"] - expected["v"]) <= 0.005 * MiB


def test_sampling_with_a_seed_is_reproducible(smol_model):
    with smol_model.context(n_ctx=256, seed=7) as ctx:
        a = ctx.complete("Once upon a time", max_tokens=12, temperature=0.8)
        b = ctx.complete("Once upon a time", max_tokens=12, temperature=0.8)
        c = ctx.complete("Once upon a time", max_tokens=12, temperature=0.8, seed=8)
    assert a == b
    assert a != c


def test_generation_stops_when_the_context_is_full(smol_model):
    with smol_model.context(n_ctx=256) as ctx:
        ctx.complete("Count: 1, 2, 3,", max_tokens=400)
        assert ctx.last_stats.stop_reason == "context"
        # the last token is sampled from a full cache, so it is never stored
        assert ctx.last_stats.n_prompt + ctx.last_stats.n_gen == 256 + 1


def test_context_shift_keeps_generating_past_the_context(smol_model):
    with smol_model.context(n_ctx=256, cache_k="q8_0", cache_v="q8_0") as ctx:
        text = ctx.complete("Count: 1, 2, 3, 4,", max_tokens=400, context_shift=True)
    assert ctx.last_stats.n_gen == 400
    assert ctx.last_stats.stop_reason == "max_tokens"
    assert "," in text[-50:]


def test_tokenize_detokenize_round_trip(smol_model):
    with smol_model.context(n_ctx=256) as ctx:
        text = "Hello, world! Ünïcödé works: 日本語."
        tokens = ctx.tokenize(text, add_special=False)
        assert ctx.detokenize(tokens) == text


def test_chat_uses_the_chat_template(smol_model):
    with smol_model.context(n_ctx=1024) as ctx:
        prompt = ctx.format_chat([{"role": "user", "content": "Hi"}])
        assert "<|im_start|>user\nHi<|im_end|>" in prompt
        assert prompt.endswith("<|im_start|>assistant\n")
        reply = ctx.chat([{"role": "user", "content": "What is the capital of France?"}], max_tokens=32)
    assert "Paris" in reply
    assert "<|im_" not in reply


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "pyturbo.run", *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_streams_text_and_prints_a_summary(smol_path):
    result = run_cli(str(smol_path), "--cache-k", "q8_0", "--cache-v", "q4_0",
                     "-p", "The capital of France is", "-n", "16")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    summary = result.stderr.strip().splitlines()[-1]
    assert "t/s" in summary and "K q8_0" in summary and "V q4_0" in summary


def test_cli_json_has_the_documented_fields(smol_path):
    result = run_cli(str(smol_path), "-ctk", "q8_0", "-ctv", "q8_0", "-c", "512", "-n", "8", "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    for field in ("text", "n_prompt", "n_gen", "prompt_tps", "gen_tps", "cache_k", "cache_v",
                  "kv_k_bytes", "kv_v_bytes", "n_ctx"):
        assert field in record
    assert record["n_gen"] == 8 and record["n_ctx"] == 512
    assert record["cache_k"] == record["cache_v"] == "q8_0"
    assert record["kv_k_bytes"] == record["kv_v_bytes"] > 0
    assert record["gen_tps"] > 0


def test_cli_chat_holds_a_multi_turn_conversation(smol_path):
    result = subprocess.run(
        [sys.executable, "-m", "pyturbo.run", str(smol_path), "--chat", "-n", "24", "-c", "1024"],
        input="What is the capital of France?\nAnd what river flows through it?\n",
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert len([line for line in result.stdout.splitlines() if line.strip()]) >= 2
