"""The turbo2/turbo3/turbo4 KV-cache types: codebooks, round trips, and use in llama.cpp."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

import pyturbo
from pyturbo._native import ffi, ggml, ggml_cpu

ROOT = Path(__file__).resolve().parent.parent
TURBO = {"turbo2": 2, "turbo3": 3, "turbo4": 4}


# -- the codebooks ------------------------------------------------------------------

def lloyd_max_normal(bits: int, iterations: int = 2000) -> np.ndarray:
    """Lloyd-Max centroids of N(0,1) at `bits` bits, by Lloyd iteration."""
    levels = 2 ** bits
    centroids = np.linspace(-2.5, 2.5, levels)
    pdf = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    cdf = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))
    for _ in range(iterations):
        edges = [-math.inf] + list((centroids[1:] + centroids[:-1]) / 2) + [math.inf]
        centroids = np.array([
            ((pdf(a) if a != -math.inf else 0.0) - (pdf(b) if b != math.inf else 0.0)) / (cdf(b) - cdf(a))
            for a, b in zip(edges[:-1], edges[1:])])
    return centroids


def shipped_codebook(bits: int) -> np.ndarray:
    """The kvalues_turboN table as csrc/turbo-common.h ships it to every backend."""
    header = (ROOT / "csrc" / "turbo-common.h").read_text()
    body = re.search(rf"GGML_TABLE_BEGIN\(float, kvalues_turbo{bits}, \d+\)(.*?)GGML_TABLE_END", header, re.S)
    return np.array([float(v) for v in re.findall(r"-?\d+\.\d+", body.group(1))])


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_shipped_codebooks_are_the_lloyd_max_centroids_of_the_normal(bits):
    shipped = shipped_codebook(bits)
    assert len(shipped) == 2 ** bits
    np.testing.assert_allclose(shipped, lloyd_max_normal(bits), atol=1e-3)


def test_codebooks_reach_the_lloyd_max_mse():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(200_000)
    for bits, mse in ((2, 0.1175), (3, 0.03455), (4, 0.00950)):
        table = shipped_codebook(bits)
        nearest = table[np.abs(x[:, None] - table[None, :]).argmin(axis=1)]
        assert abs(((x - nearest) ** 2).mean() - mse) < 0.002


# -- ggml round trips --------------------------------------------------------------------

def quantize(name: str, x: np.ndarray, reference: bool = True) -> bytes:
    t = pyturbo.cache_type(name)
    x = np.ascontiguousarray(x, dtype=np.float32)
    nrows, n = x.shape
    dst = ffi.new("char[]", ggml.ggml_row_size(t.type_id, n) * nrows)
    src = ffi.cast("float *", ffi.from_buffer(x))
    if reference:
        ggml.ggml_quantize_chunk(t.type_id, src, dst, 0, nrows, n, ffi.NULL)
    else:
        ggml_cpu.ggml_get_type_traits_cpu(t.type_id).from_float(src, dst, nrows * n)
    return bytes(ffi.buffer(dst))


def dequantize(name: str, data: bytes, shape) -> np.ndarray:
    t = pyturbo.cache_type(name)
    out = np.empty(shape, dtype=np.float32)
    ggml.ggml_get_type_traits(t.type_id).to_float(ffi.from_buffer(data), ffi.cast("float *", ffi.from_buffer(out)),
                                                  out.size)
    return out


def hadamard(n: int) -> np.ndarray:
    h = np.array([[1.0]])
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / math.sqrt(n)


def rotated_gaussian(rows: int, n: int, seed: int = 0) -> np.ndarray:
    """Heavy-tailed, anisotropic rows (like K/V activations) after a 64-wide Hadamard rotation."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, n)) * rng.uniform(0.2, 3.0, n)
    x[:, rng.integers(0, n, 4)] *= 8.0  # outlier channels
    return (x.reshape(rows, n // 64, 64) @ hadamard(64)).reshape(rows, n).astype(np.float32)


@pytest.mark.parametrize("name, bound", [("turbo2", 0.120), ("turbo3", 0.035), ("turbo4", 0.0095)])
def test_round_trip_mse_on_rotated_gaussian_data_is_within_the_paper_bound(name, bound):
    x = rotated_gaussian(256, 256)
    y = dequantize(name, quantize(name, x), x.shape)
    relative_mse = float(((x - y) ** 2).sum() / (x ** 2).sum())
    assert relative_mse <= bound


@pytest.mark.parametrize("name", list(TURBO) + ["turbo3t", "turbo2t"])
def test_reference_and_cpu_quantizers_give_identical_codes(name):
    x = rotated_gaussian(64, 512, seed=3)
    assert quantize(name, x, reference=True) == quantize(name, x, reference=False)


@pytest.mark.parametrize("name", list(TURBO))
def test_dequantize_quantize_is_idempotent_on_its_own_output(name):
    x = rotated_gaussian(32, 256, seed=4)
    once = dequantize(name, quantize(name, x), x.shape)
    twice = dequantize(name, quantize(name, once), x.shape)
    np.testing.assert_allclose(twice, once, rtol=2e-3, atol=1e-6)


def test_zero_block_round_trips_to_zero():
    x = np.zeros((2, 128), dtype=np.float32)
    for name in TURBO:
        assert not dequantize(name, quantize(name, x), x.shape).any()


def test_cache_types_list_turbo_with_its_bits_per_value():
    bits = {t.name: t.bits_per_value for t in pyturbo.cache_types()}
    assert (bits["turbo2"], bits["turbo3"], bits["turbo4"]) == (2.25, 3.25, 4.25)
    assert pyturbo.cache_type("turbo3").type_id == pyturbo.GGML_TYPE_TURBO3 == 44
    assert (pyturbo.GGML_TYPE_TURBO2, pyturbo.GGML_TYPE_TURBO4) == (43, 45)
    assert all(pyturbo.cache_type(name).block_size == 64 for name in TURBO)
