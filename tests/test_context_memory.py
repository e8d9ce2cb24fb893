"""A context's memory figures come from libllama (pyturbo.context_memory), byte for byte: they
agree with llama.cpp's own log (within its 0.01 MiB print) and with pyturbo.memory.estimate
exactly, on llama, qwen2 and gemma3 (sliding-window) models, for every cache pair."""

from __future__ import annotations

import pytest

import pyturbo
from pyturbo import _native, memory
from allocation_log import logged_mib
from tiny_gguf import write_tiny_llama

CACHE_TYPES = [t.name for t in pyturbo.cache_types()]
PRINT_RESOLUTION = 0.005 * 2**20  # llama.cpp prints MiB with two decimals


@pytest.fixture(scope="module", params=["llama", "qwen2", "gemma3"])
def arch_model(request, tmp_path_factory):
    arch = request.param
    path = write_tiny_llama(tmp_path_factory.mktemp(arch) / f"{arch}.gguf", arch=arch, n_layer=6 if arch == "gemma3"
                            else 2, bias=8.0 if arch == "qwen2" else 0.0)
    with pyturbo.Model(path) as model:
        yield arch, path, model


def within_print(exact: int, printed_mib: float, n_printed: int = 1) -> bool:
    return abs(exact - printed_mib * 2**20) <= n_printed * PRINT_RESOLUTION + 1


@pytest.mark.parametrize("cache_k", CACHE_TYPES)
def test_memory_figures_equal_llama_cpp_s_log_and_the_estimate(arch_model, cache_k):
    arch, path, model = arch_model
    for cache_v in CACHE_TYPES:
        with _native.captured_log() as log:
            ctx = model.context(n_ctx=1024, cache_k=cache_k, cache_v=cache_v, flash_attn="on", kv_transform="off")
        with ctx:
            figures = ctx.memory()
        logged = logged_mib(line for _, line in log)
        pair = f"{arch} {cache_k}/{cache_v}"
        n_caches = len(logged["k"])
        assert n_caches == (2 if arch == "gemma3" else 1), pair
        assert within_print(figures.kv_k, sum(logged["k"]), n_caches), pair
        assert within_print(figures.kv_v, sum(logged["v"]), n_caches), pair
        assert sorted([figures.cells] + ([figures.cells_swa] if figures.cells_swa else [])) == sorted(logged["cells"])
        for buffer in figures.buffers:
            if buffer.compute:
                assert within_print(buffer.compute, logged["compute"][buffer.name]), (pair, buffer)
            if buffer.output:
                assert within_print(buffer.output, logged["output"][buffer.name]), (pair, buffer)
        est = memory.estimate(path, 1024, cache_k, cache_v)
        assert (est.kv_k, est.kv_v) == (figures.kv_k, figures.kv_v), pair
        assert (est.cells, est.cells_swa) == (figures.cells, figures.cells_swa), pair


def test_the_output_buffer_grows_with_the_logits_asked_for(tiny_model):
    with tiny_model.context(n_ctx=256) as ctx:
        before = ctx.memory()
        ctx.score(list(range(3, 3 + 100)))  # logits for 100 tokens at once
        after = ctx.memory()
    assert sum(b.output for b in after.buffers) >= 100 * tiny_model.n_vocab * 4
    assert sum(b.output for b in after.buffers) > sum(b.output for b in before.buffers)
    assert (after.kv_k, after.kv_v) == (before.kv_k, before.kv_v)


def test_kv_cache_bytes_are_the_memory_figures(tiny_model):
    with tiny_model.context(n_ctx=512, cache_k="q8_0", cache_v="turbo3") as ctx:
        figures = ctx.memory()
        assert ctx.kv_cache_bytes() == {"k": figures.kv_k, "v": figures.kv_v}
    assert [b.name for b in figures.buffers if b.k] == ["CPU"]
