"""The trellis-coded cache types turbo3t and turbo2t: format, encoder, quality, and use.

The block format is decoded here in Python from its description (csrc/turbo-common.h),
the library's Viterbi search is compared with one written here in numpy, and the
quality gain over the scalar types is measured on rotated Gaussian-like data.
"""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import numpy as np
import pytest

import pyturbo
from pyturbo import _native
from test_turbo import dequantize, quantize, rotated_gaussian

ROOT = Path(__file__).resolve().parent.parent
TCQ = {"turbo3t": 3, "turbo2t": 2}   # name: bits per value
QK = 64


def shipped_table(name: str) -> np.ndarray:
    header = (ROOT / "csrc" / "turbo-tcq-tables.h").read_text()
    body = re.search(rf"GGML_TABLE_BEGIN\(float, kvalues_{name}, (\d+)\)(.*?)GGML_TABLE_END", header, re.S)
    values = np.array([float(v) for v in re.findall(r"-?\d+\.\d+e[-+]\d+", body.group(2))], dtype=np.float32)
    assert len(values) == int(body.group(1))
    return values


def stated_mse(name: str) -> float:
    header = (ROOT / "csrc" / "turbo-tcq-tables.h").read_text()
    return float(re.search(rf"// {name}: .*MSE per unit-variance value ([0-9.]+)", header).group(1))


def library_viterbi():
    lib = ctypes.CDLL(str(next(p for p in _native.library_dir().iterdir() if p.name.startswith("libggml-base."))))
    fn = lib.turbo_tcq_viterbi
    fn.restype = ctypes.c_float
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    return fn


def numpy_viterbi(y: np.ndarray, table: np.ndarray, k: int) -> np.ndarray:
    """States of the best walk, written from the format's definition: state_i's top k
    bits are value i's code, its low 6 bits the top 6 of state_{i-1}."""
    n_states = 64 << k
    s = np.arange(n_states)
    cost = (y[0] - table) ** 2
    back = np.zeros((QK, n_states), dtype=np.int64)
    for t in range(1, QK):
        # predecessors of s: (g << k) | j for g = s & 63
        preds = ((s & 63) << k)[:, None] | np.arange(1 << k)[None, :]
        choice = cost[preds].argmin(axis=1)
        back[t] = preds[s, choice]
        cost = cost[back[t]] + (y[t] - table) ** 2
    states = np.zeros(QK, dtype=np.int64)
    states[-1] = cost.argmin()
    for t in range(QK - 1, 0, -1):
        states[t - 1] = back[t][states[t]]
    return states


def decode_block(block: bytes, table: np.ndarray, k: int) -> np.ndarray:
    """One block, decoded from the format's description: a little-endian bit string whose
    bits 0-9 are fp16 bits 5..14 of the scale and whose state i is bits 10+k*i .. 16+k*(i+1)."""
    bits = int.from_bytes(block, "little")
    scale = np.array([(bits & 0x3FF) << 5], dtype=np.uint16).view(np.float16)[0]
    states = [(bits >> (10 + k * i)) & ((64 << k) - 1) for i in range(QK)]
    return np.float32(scale) * table[states]


def unit_blocks(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, QK)).astype(np.float32)
    return (x / np.sqrt((x * x).mean(axis=1, keepdims=True))).astype(np.float32)


# -- the tables ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(TCQ))
def test_tables_are_fp16_values_one_per_state(name):
    table = shipped_table(name)
    assert len(table) == 64 << TCQ[name]
    np.testing.assert_array_equal(table.astype(np.float16).astype(np.float32), table)
    assert 0.9 < float(np.sqrt((table ** 2).mean())) < 1.1   # trained on unit-variance data


@pytest.mark.parametrize("name", list(TCQ))
def test_the_vulkan_shaders_carry_the_same_tables(name):
    glsl = (ROOT / "csrc" / "vulkan" / "turbo-tcq-tables.glsl").read_text()
    body = re.search(rf"const float kvalues_{name}\[(\d+)\] = float\[\d+\]\((.*?)\);", glsl, re.S)
    values = np.array([float(v) for v in re.findall(r"-?\d+\.\d+e[-+]\d+", body.group(2))], dtype=np.float32)
    assert int(body.group(1)) == len(values) == 64 << TCQ[name]
    assert np.array_equal(values, shipped_table(name))   # csrc/turbo-tcq-codebook.py --glsl-only rewrites it


@pytest.mark.parametrize("name", list(TCQ))
def test_library_viterbi_finds_the_same_walk_as_numpy(name):
    k, table, viterbi = TCQ[name], shipped_table(name), library_viterbi()
    for y in unit_blocks(6, seed=11):
        states = np.zeros(QK, dtype=np.uint16)
        err = viterbi(y.ctypes.data, table.ctypes.data, k, states.ctypes.data)
        expected = numpy_viterbi(y.astype(np.float64), table.astype(np.float64), k)
        np.testing.assert_array_equal(states, expected)
        assert err == pytest.approx(float(((y - table[states]) ** 2).sum()), rel=1e-5)
        # consecutive states share 6 bits: a walk, not free per-value picks
        assert all((states[i] & 63) == (states[i - 1] >> k) for i in range(1, QK))


@pytest.mark.parametrize("name", list(TCQ))
def test_stated_table_mse_is_reproduced(name):
    k, table, viterbi = TCQ[name], shipped_table(name), library_viterbi()
    blocks = unit_blocks(1024, seed=99)
    states = np.zeros(blocks.shape, dtype=np.uint16)
    for y, s in zip(blocks, states):
        viterbi(y.ctypes.data, table.ctypes.data, k, s.ctypes.data)
    mse = float(((blocks - table[states]) ** 2).mean())
    assert mse == pytest.approx(stated_mse(name), rel=0.05)


# -- ggml round trips ----------------------------------------------------------------------

@pytest.mark.parametrize("name", list(TCQ))
def test_blocks_decode_as_the_format_describes(name):
    x = rotated_gaussian(4, 256, seed=5)
    data = quantize(name, x)
    t = pyturbo.cache_type(name)
    blocks = [data[i:i + t.type_size] for i in range(0, len(data), t.type_size)]
    ours = np.concatenate([decode_block(b, shipped_table(name), TCQ[name]) for b in blocks]).reshape(x.shape)
    np.testing.assert_array_equal(dequantize(name, data, x.shape), ours)


# Measured: on Gaussian blocks turbo3t 0.58x, turbo2t 0.61x the scalar type's error; on the
# heavy-tailed rotated rows 0.62x and 0.74x (the scalar types' re-picked scale fits those better).
@pytest.mark.parametrize("name, scalar, data, ratio", [
    ("turbo3t", "turbo3", "gaussian", 0.62), ("turbo2t", "turbo2", "gaussian", 0.65),
    ("turbo3t", "turbo3", "rotated", 0.66), ("turbo2t", "turbo2", "rotated", 0.78)])
def test_trellis_error_is_well_below_the_scalar_type_at_the_same_bits(name, scalar, data, ratio):
    assert pyturbo.cache_type(name).bits_per_value == pyturbo.cache_type(scalar).bits_per_value
    x = (rotated_gaussian(256, 256, seed=7) if data == "rotated"
         else np.random.default_rng(1).standard_normal((256, 256)).astype(np.float32))
    err = {n: float(((x - dequantize(n, quantize(n, x), x.shape)) ** 2).sum() / (x ** 2).sum()) for n in (name, scalar)}
    assert err[name] <= ratio * err[scalar], err


@pytest.mark.parametrize("name", list(TCQ))
def test_norm_is_kept_and_zero_blocks_stay_zero(name):
    x = rotated_gaussian(16, 128, seed=8)
    x[3, :64] = 0.0
    y = dequantize(name, quantize(name, x), x.shape)
    assert not y[3, :64].any()
    blocks_x, blocks_y = x.reshape(-1, QK), y.reshape(-1, QK)
    live = np.linalg.norm(blocks_x, axis=1) > 0
    # the corrected-norm scale, then rounded to a 5-bit mantissa (at most 1.6% off)
    np.testing.assert_allclose(np.linalg.norm(blocks_y[live], axis=1), np.linalg.norm(blocks_x[live], axis=1), rtol=0.017)


def test_trellis_types_are_listed_with_stable_ids():
    assert pyturbo.cache_type("turbo3t").type_id == pyturbo.GGML_TYPE_TURBO3T == 46
    assert pyturbo.cache_type("turbo2t").type_id == pyturbo.GGML_TYPE_TURBO2T == 47
    assert (pyturbo.cache_type("turbo3t").bits_per_value, pyturbo.cache_type("turbo2t").bits_per_value) == (3.25, 2.25)
    for name in TCQ:
        assert pyturbo.cache_type(name).turbo and ggml_type_name(pyturbo.cache_type(name).type_id) == name


def ggml_type_name(type_id: int) -> str:
    return _native.ffi.string(_native.ggml.ggml_type_name(type_id)).decode()


# -- in llama.cpp ---------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("cache_k, cache_v", [("turbo3t", "turbo3t"), ("q8_0", "turbo3t"), ("turbo3t", "f16"),
                                              ("turbo2t", "turbo2t"), ("turbo4", "turbo2t")])
def test_trellis_pairs_generate_on_smollm2(smol_model, cache_k, cache_v):
    with smol_model.context(n_ctx=256, cache_k=cache_k, cache_v=cache_v, flash_attn="on") as ctx:
        text = ctx.complete("1, 2, 3, 4, 5, 6, 7, 8,", max_tokens=8)
    assert ctx.last_stats.n_gen == 8
    assert re.fullmatch(r"[\d,\s]+", text), text
    if cache_k != "turbo2t":
        assert text.startswith(" 9, 10,"), text


@pytest.mark.slow
@pytest.mark.parametrize("name, bits", [("turbo3t", 3.25), ("turbo2t", 2.25)])
def test_kv_bytes_per_token_match_the_bits_per_value(smol_model, name, bits):
    with smol_model.context(n_ctx=4096, cache_k=name, cache_v=name, flash_attn="on") as ctx:
        kv = ctx.kv_cache_bytes()
    expected = 4096 * smol_model.n_layer * smol_model.n_head_kv * smol_model.head_size_k * bits / 8
    assert kv["k"] == kv["v"] == pytest.approx(expected, abs=5 * 1024)


@pytest.mark.slow
def test_context_shift_requantizes_trellis_keys(smol_model):
    # the shift rotates K in f32 and encodes it again (CPY f32 -> turbo3t, a Viterbi search)
    with smol_model.context(n_ctx=256, cache_k="turbo3t", cache_v="turbo3t", flash_attn="on") as ctx:
        text = ctx.complete("1, 2, 3, 4, 5, 6, 7, 8,", max_tokens=400, context_shift=True)
    assert ctx.last_stats.n_gen == 400
    tail = text[-80:]
    assert sum(c.isdigit() for c in tail) > 20 and "," in tail


@pytest.mark.slow
def test_trellis_caches_cost_less_kld_than_the_scalar_ones_at_the_same_bits(smol_model):
    from pyturbo.kl_divergence import kld
    results = {f"{r.type_k}/{r.type_v}": r.kld for r in
               kld(smol_model, ["turbo3/turbo3", "turbo3t/turbo3t", "turbo2/turbo2", "turbo2t/turbo2t"],
                   chunks=2, progress=False)}
    assert results["turbo3t/turbo3t"] < 0.85 * results["turbo3/turbo3"], results
    assert results["turbo2t/turbo2t"] < 0.85 * results["turbo2/turbo2"], results
