"""turbo K/V caches inside llama.cpp: every pair generates, sizes, refusals, context shift."""

from __future__ import annotations

import itertools
import re
import struct

import pytest

import pyturbo
from pyturbo.units import MiB
from tiny_gguf import write_tiny_llama

CACHE_TYPES = ["f16", "q8_0", "q4_0", "turbo2", "turbo3", "turbo4"]


@pytest.mark.slow
@pytest.mark.parametrize("cache_k, cache_v", list(itertools.product(CACHE_TYPES, repeat=2)))
def test_every_pair_with_turbo_generates_on_smollm2(smol_model, cache_k, cache_v):
    # Counting has one obvious continuation and no natural end, so even a 2-bit
    # cache must keep producing numbers (an open prompt may rightly stop early).
    with smol_model.context(n_ctx=256, cache_k=cache_k, cache_v=cache_v, flash_attn="on") as ctx:
        text = ctx.complete("1, 2, 3, 4, 5, 6, 7, 8,", max_tokens=8)
    assert ctx.last_stats.n_gen == 8
    assert re.fullmatch(r"[\d,\s]+", text), text  # still counting
    if cache_k != "turbo2":  # a 2-bit K on a 135M model may stumble (" 8, 9,10"): the spec expects it to be poor
        assert text.startswith(" 9, 10,"), text


@pytest.mark.slow
@pytest.mark.parametrize("name, bits", [("turbo2", 2.25), ("turbo3", 3.25), ("turbo4", 4.25)])
def test_kv_bytes_per_token_match_the_bits_per_value(smol_model, name, bits):
    with smol_model.context(n_ctx=4096, cache_k=name, cache_v=name, flash_attn="on") as ctx:
        kv = ctx.kv_cache_bytes()
    values_per_token = smol_model.n_layer * smol_model.n_head_kv * smol_model.head_size_k  # K (and V)
    expected = 4096 * values_per_token * bits / 8
    assert abs(kv["k"] - expected) <= 0.005 * MiB
    assert abs(kv["v"] - expected) <= 0.005 * MiB


@pytest.mark.slow
def test_q8_0_k_turbo4_v_greedy_output_matches_f16_first_tokens(smol_model):
    prompt = "The capital of France is"
    with smol_model.context(n_ctx=256) as ctx:
        reference = ctx.tokenize(ctx.complete(prompt, max_tokens=8), add_special=False)
    with smol_model.context(n_ctx=256, cache_k="q8_0", cache_v="turbo4", flash_attn="on") as ctx:
        compressed = ctx.tokenize(ctx.complete(prompt, max_tokens=8), add_special=False)
    assert compressed[:4] == reference[:4]


@pytest.mark.slow
def test_context_shift_on_a_turbo_k_cache_stays_coherent(smol_model):
    with smol_model.context(n_ctx=256, cache_k="turbo4", cache_v="turbo4", flash_attn="on") as ctx:
        text = ctx.complete("1, 2, 3, 4, 5, 6, 7, 8,", max_tokens=400, context_shift=True)
    assert ctx.last_stats.n_gen == 400
    tail = text[-80:]
    assert sum(c.isdigit() for c in tail) > 20 and "," in tail  # still counting after the shifts


def test_turbo_v_without_flash_attention_is_refused(tiny_model):
    with pytest.raises(pyturbo.CacheTypeError, match="requires flash attention"):
        tiny_model.context(n_ctx=256, cache_v="turbo3", flash_attn="off")


# (type, bound on the -fa off/on gap as a fraction of the quantization error) measured:
# turbo3 0.07 against 1.4, turbo3t 0.14 against 1.06 (q4_0 keys: 0.11 against 0.71)
@pytest.mark.parametrize("cache_k, gap", [("turbo3", 0.1), ("turbo3t", 0.2)])
def test_turbo_k_without_flash_attention_matches_the_flash_attention_path(tiny_model, cache_k, gap):
    """-fa off scores turbo keys through vec_dot, -fa on through the flash-attention kernel:
    the same quantized keys must give nearly the same logits, their gap far below the
    quantization error itself (the two paths round differently)."""
    tokens = list(range(3, 3 + 200))
    logits = {}
    for k, fa in (("f16", "on"), (cache_k, "off"), (cache_k, "on")):
        # the kernels compared on the keys as they come (tests/test_kv_transform.py has the transforms)
        with tiny_model.context(n_ctx=256, cache_k=k, cache_v="f16", flash_attn=fa, kv_transform="off") as ctx:
            logits[k, fa] = ctx.score(tokens)
    off, on, f16 = logits[cache_k, "off"], logits[cache_k, "on"], logits["f16", "on"]
    assert abs(off - on).max() < gap * abs(on - f16).max()
    assert (off.argmax(1) == on.argmax(1)).mean() >= 0.97
    assert (off.argmax(1) == f16.argmax(1)).mean() >= 0.7   # a random 2-layer model is fragile: 0.79


def test_turbo_on_a_head_size_the_block_does_not_divide_is_refused(tmp_path):
    path = write_tiny_llama(tmp_path / "head96.gguf", n_embd=192, n_head=2, n_head_kv=1)
    with pyturbo.Model(path) as model:
        with pytest.raises(pyturbo.CacheTypeError, match="head size is 96, not a multiple of 64"):
            model.context(n_ctx=256, cache_k="turbo3", cache_v="turbo3")


def test_turbo_without_the_attention_rotation_is_refused(tiny_model, monkeypatch):
    monkeypatch.setenv("LLAMA_ATTN_ROT_DISABLE", "1")
    with pytest.raises(pyturbo.CacheTypeError, match="LLAMA_ATTN_ROT_DISABLE"):
        tiny_model.context(n_ctx=256, cache_k="turbo4", cache_v="turbo4")
    with tiny_model.context(n_ctx=256, cache_k="q8_0", cache_v="q8_0") as ctx:  # upstream types still work
        assert ctx.n_ctx == 256


def set_tensor_type(data: bytearray, tensor_name: str, type_id: int) -> None:
    """Rewrite one tensor's ggml type id in a GGUF's tensor-info section."""
    name = tensor_name.encode()
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    n_dims = struct.unpack_from("<I", data, at)[0]
    struct.pack_into("<I", data, at + 4 + 8 * n_dims, type_id)


def test_gguf_naming_a_turbo_tensor_type_is_rejected(tiny_path, tmp_path):
    data = bytearray(tiny_path.read_bytes())
    set_tensor_type(data, "output_norm.weight", pyturbo.GGML_TYPE_TURBO3)
    path = tmp_path / "turbo-weights.gguf"
    path.write_bytes(bytes(data))
    with pytest.raises(pyturbo.InvalidModelError, match="runtime-only"):
        pyturbo.Model(path)
