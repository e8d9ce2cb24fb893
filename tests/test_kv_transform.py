"""Exact K/V transforms (pyturbo.kv_transform): attention unchanged, low-bit K rescued, shift and state exact.

A tiny qwen2 model with large Qwen2-style k/v biases (outlier channels 10x the rest)
stands in for Qwen2.5; the tiny llama model (no biases) is the other kind.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import pyturbo
from pyturbo import _native, kv_transform
from pyturbo import info as pyturbo_info
from pyturbo.gguf import read_gguf_header
from tiny_gguf import write_tiny_llama

TOKENS = list(range(3, 3 + 200))
AUTO_QWEN = "k_calibrate+v_equalize"  # what auto applies to a qwen2 model's quantized K and V
# auto leaves F16 caches alone; asked for by name, the transforms apply to any cache (here:
# to check that they are exact)
TRANSFORMED = "k_calibrate+v_equalize"


@pytest.fixture(scope="module")
def qwen_path(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("qwen") / "tiny-qwen2.gguf", arch="qwen2", bias=32.0, seed=1)


@pytest.fixture(scope="module")
def qwen(qwen_path):
    with pyturbo.Model(qwen_path) as model:
        yield model


def score(model, cache_k="f16", cache_v="f16", kv_transform="auto", flash_attn="on", tokens=TOKENS):
    with model.context(n_ctx=256, cache_k=cache_k, cache_v=cache_v, flash_attn=flash_attn,
                       kv_transform=kv_transform) as ctx:
        return ctx.score(tokens), ctx.kv_transform


def log_softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def kld(reference, logits):
    p, q = log_softmax(reference), log_softmax(logits)
    return float((np.exp(p) * (p - q)).sum(axis=1).mean())


def test_auto_calibrates_keys_and_equalizes_values_where_the_model_allows(qwen, qwen_path, tiny_model, tiny_path):
    assert score(qwen, "q4_0", "q8_0")[1] == AUTO_QWEN
    assert score(tiny_model, "turbo4", "turbo3")[1] == "k_calibrate+v_equalize"
    assert score(qwen, "q4_0", "q8_0", kv_transform="off")[1] == "off"
    assert score(qwen, kv_transform="k_center")[1] == "k_center"
    # an asked transform the model cannot take is dropped: llama has no biases to center with
    assert score(tiny_model, kv_transform="k_center+k_equalize")[1] == "k_equalize"


@pytest.mark.parametrize("which", ["qwen2", "llama"])
def test_info_s_auto_answer_is_the_context_s_for_every_cache_pair(which, qwen, qwen_path, tiny_model, tiny_path):
    model, path = (qwen, qwen_path) if which == "qwen2" else (tiny_model, tiny_path)
    header = read_gguf_header(path)
    names = [t.name for t in pyturbo.cache_types()]
    for cache_k in names:
        for cache_v in names:
            with model.context(n_ctx=256, cache_k=cache_k, cache_v=cache_v, flash_attn="on") as ctx:
                applied = ctx.kv_transform
            assert kv_transform.auto_choice(header, cache_k, cache_v).transforms == applied, (cache_k, cache_v)
    info = pyturbo_info.inspect(path, cache_k="q4_0", cache_v="q8_0")
    assert info.kv_transform == score(model, "q4_0", "q8_0")[1]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma3"])
def test_the_header_s_supported_transforms_are_libllama_s(tmp_path, arch):
    path = write_tiny_llama(tmp_path / f"{arch}.gguf", arch=arch, bias=4.0 if arch == "qwen2" else 0.0)
    with pyturbo.Model(path) as model:
        in_library = _native.llama.pyturbo_kv_transform_supported_flags(model.handle)
    assert kv_transform.supported_flags(read_gguf_header(path)) == in_library != 0


def test_the_auto_table_reads_and_names_only_known_words():
    rules = kv_transform.auto_rules()
    assert {flag for flag, _ in rules} == {kv_transform.K_CALIBRATE, kv_transform.K_CENTER, kv_transform.K_EQUALIZE,
                                           kv_transform.V_EQUALIZE}
    # an F16 cache is never transformed by auto, whatever the model allows
    everything = sum(kv_transform.TRANSFORMS.values())
    assert kv_transform.auto_flags(everything, "f16", "f16") == 0
    assert kv_transform.auto_flags(everything, "turbo3", "turbo3") == kv_transform.K_CALIBRATE | kv_transform.V_EQUALIZE


def test_auto_transforms_only_the_quantized_side(qwen):
    assert score(qwen, "q8_0", "f16")[1] == "k_calibrate"
    # V equalization goes with transformed keys only (on its own it measured as noise)
    assert score(qwen, "f16", "turbo3")[1] == "off"


def test_auto_leaves_8_bit_keys_alone_without_k_proj_biases(qwen, tiny_model):
    assert score(qwen, "q8_0", "turbo3")[1] == AUTO_QWEN      # biases: calibrated, 6x better at q8_0
    assert score(tiny_model, "q8_0", "turbo3")[1] == "off"    # none: 8-bit keys (and so V) as they are
    assert score(tiny_model, "q5_0", "turbo3")[1] == "k_calibrate+v_equalize"
    # an F16 cache is left exactly as it was: same graph, same logits
    plain, applied = score(qwen, kv_transform="auto")
    assert applied == "off"
    np.testing.assert_array_equal(plain, score(qwen, kv_transform="off")[0])


@pytest.mark.parametrize("flash_attn", ["on", "off"])
@pytest.mark.parametrize("transforms", [TRANSFORMED, "k_center", "k_equalize", "v_center", "v_equalize",
                                        "k_center+k_equalize+v_center+v_equalize", "k_calibrate"])
def test_transforms_leave_f16_attention_unchanged(qwen, flash_attn, transforms):
    reference, _ = score(qwen, kv_transform="off", flash_attn=flash_attn)
    transformed, applied = score(qwen, kv_transform=transforms, flash_attn=flash_attn)
    assert applied != "off"
    scale = np.abs(reference).max()
    # f16 rounding of the stored K/V is the only difference
    assert np.abs(transformed - reference).max() < 0.02 * scale
    assert kld(reference, transformed) < 1e-4
    assert (transformed.argmax(1) == reference.argmax(1)).mean() >= 0.98


def test_transforms_cut_a_4_bit_k_caches_kld_at_least_5x(qwen):
    reference, _ = score(qwen, kv_transform="off")
    plain = kld(reference, score(qwen, "q4_0", "q8_0", kv_transform="off")[0])
    transformed = kld(reference, score(qwen, "q4_0", "q8_0", kv_transform="auto")[0])
    assert plain > 5 * transformed, (plain, transformed)


@pytest.mark.parametrize("cache", [t.name for t in pyturbo.cache_types()])
def test_every_cache_type_works_with_the_transforms(qwen, cache):
    reference, _ = score(qwen, kv_transform="off")
    plain = kld(reference, score(qwen, cache, cache, kv_transform="off")[0])
    transformed, applied = score(qwen, cache, cache, kv_transform="auto")
    assert applied == (AUTO_QWEN if pyturbo.cache_type(cache).quantized else "off")
    assert np.isfinite(transformed).all()
    # never worse than without (up to noise at the f16 floor)
    assert kld(reference, transformed) <= 1.05 * plain + 1e-4, cache


def greedy(model, prompt, n, kv_transform, cache_k="f16", n_ctx=256, **kwargs):
    with model.context(n_ctx=n_ctx, cache_k=cache_k, kv_transform=kv_transform) as ctx:
        tokens = ctx.tokenize(ctx.complete(prompt, max_tokens=n, **kwargs), add_special=False)
        return tokens, ctx.last_stats


def test_context_shift_with_transforms_continues_as_without(qwen):
    # 64 cells, 150 tokens: several shifts re-RoPE the stored (centered) keys. The two
    # runs differ by f16 rounding only, which may tip a near tie late in a long greedy run.
    on, stats = greedy(qwen, "the cat sat on the mat", 150, TRANSFORMED, n_ctx=64, context_shift=True)
    off, _ = greedy(qwen, "the cat sat on the mat", 150, "off", n_ctx=64, context_shift=True)
    assert stats.n_gen == 150
    common = next((i for i, (a, b) in enumerate(zip(on, off)) if a != b), min(len(on), len(off)))
    assert common >= 0.8 * len(off), (common, len(off))


def next_logits_after_a_shift(model, cache_k, transforms):
    """Logits after evaluating 100 tokens, dropping tokens 1..40 (a K-shift moves the other
    59 back by 40) and evaluating one more."""
    with model.context(n_ctx=256, cache_k=cache_k, kv_transform=transforms) as ctx:
        ctx.decode(list(range(3, 3 + 100)))
        _native.llama.llama_memory_seq_rm(ctx._memory, 0, 1, 41)
        _native.llama.llama_memory_seq_add(ctx._memory, 0, 41, -1, -40)
        ctx.decode([7])
        logits = _native.ffi.buffer(_native.llama.llama_get_logits(ctx.handle), 4 * model.n_vocab)
        return np.frombuffer(logits, dtype=np.float32).copy()[None]


# turbo4: the shifted keys are rounded twice (stored, then stored again after the shift);
# measured 0.0008 with the weight-derived transform, 0.0023 calibrated (one token's logits)
@pytest.mark.parametrize("cache_k, limit", [("f16", 1e-4), ("q8_0", 1e-4), ("turbo4", 4e-3)])
def test_shifted_transformed_keys_give_the_untransformed_caches_logits(qwen, cache_k, limit):
    """The shift adds c_k back before re-RoPE-ing stored keys and takes it off after: a wrong
    offset (RoPE(c) - c left in the keys) would cost far more than the cache's own rounding."""
    reference = next_logits_after_a_shift(qwen, "f16", "off")
    assert kld(reference, next_logits_after_a_shift(qwen, cache_k, TRANSFORMED)) < limit
    if cache_k == "turbo4":   # without transforms a shifted 4-bit K is far worse (measured 0.10)
        assert kld(reference, next_logits_after_a_shift(qwen, cache_k, "off")) > 20 * limit


def test_state_restored_into_a_transformed_context_continues_the_same(qwen):
    prompt = "the cat sat on the mat"
    with qwen.context(n_ctx=256, kv_transform=TRANSFORMED) as ctx:
        tokens = ctx.tokenize(prompt)
        ctx.decode(tokens)
        size = _native.llama.llama_state_get_size(ctx.handle)
        state = _native.ffi.new("uint8_t[]", size)
        assert _native.llama.llama_state_get_data(ctx.handle, state, size) > 0
        expected = ctx.tokenize(ctx.complete(tokens, max_tokens=16), add_special=False)
    with qwen.context(n_ctx=256, kv_transform=TRANSFORMED) as ctx:
        assert _native.llama.llama_state_set_data(ctx.handle, state, size) > 0
        ctx._cached = list(tokens)
        restored = ctx.tokenize(ctx.complete(tokens, max_tokens=16), add_special=False)
    untransformed, _ = greedy(qwen, prompt, 16, "off")
    assert restored == expected == untransformed


def test_a_bad_kv_transform_value_is_refused(qwen):
    with pytest.raises(ValueError, match="kv_transform must be auto, off"):
        qwen.context(n_ctx=256, kv_transform="sideways")


def calibrated_logits(path, **kwargs):
    with pyturbo.Model(path) as model, _native.captured_log() as log:
        logits, applied = score(model, "q4_0", "q8_0", **kwargs)
    return logits, applied, [line for _, line in log]


def test_a_calibration_runs_once_per_model_file_and_is_read_back(qwen_path, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTURBO_CACHE", str(tmp_path))
    first, applied, log = calibrated_logits(qwen_path)
    assert applied == AUTO_QWEN
    assert any("pyturbo_kv_calibrate: begin" in line for line in log)
    files = list((tmp_path / "kv-calibration").glob("*.bin"))
    assert len(files) == 1 and files[0].stat().st_size > 0
    # a new process (here: a new model object) reads the moments instead of running the pass
    second, _, log = calibrated_logits(qwen_path)
    assert any("moments from" in line for line in log)
    assert not any("pyturbo_kv_calibrate: begin" in line for line in log)
    np.testing.assert_array_equal(first, second)
    # a damaged file is not trusted: the pass runs again and rewrites it
    files[0].write_bytes(files[0].read_bytes()[:1000])
    third, _, log = calibrated_logits(qwen_path)
    assert any("pyturbo_kv_calibrate: begin" in line for line in log)
    np.testing.assert_allclose(third, first, atol=1e-3 * np.abs(first).max())


# llama.cpp's memory-fit probe (common_fit_params: llama-completion, llama-cli, llama-server,
# llama-perplexity) creates a context on a model loaded with no_alloc, which has no weights.
# The calibration pass used to decode on it: a NULL dereference in ggml-alloc (SIGSEGV; found
# by .ci/sanitize). In a child process, so that a crash fails this test and not the session.
NO_ALLOC_CONTEXT = textwrap.dedent("""
    import sys
    from pyturbo._native import ffi, llama
    from pyturbo.cache_types import cache_type, flash_attn_mode
    mparams = llama.llama_model_default_params()
    mparams.no_alloc = True  # as common_fit_params loads it
    mparams.load_mode = llama.LLAMA_LOAD_MODE_NONE
    model = llama.llama_model_load_from_file(sys.argv[1].encode(), mparams)
    assert model != ffi.NULL
    cparams = llama.llama_context_default_params()
    cparams.n_ctx = 256
    cparams.type_k = cache_type("turbo4").type_id
    cparams.type_v = cache_type("turbo3").type_id
    cparams.flash_attn_type = flash_attn_mode("on")
    applied = ffi.new("int32_t *")
    ctx = llama.pyturbo_context_create(model, cparams, -1, ffi.NULL, applied)  # auto, no per-layer types
    assert ctx != ffi.NULL
    print("flags", applied[0])
    llama.llama_free(ctx)
    llama.llama_model_free(model)
""")


def test_a_no_alloc_models_context_gets_no_transform_and_runs_no_calibration(tiny_path, tmp_path):
    env = {**os.environ, "PYTURBO_CACHE": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", NO_ALLOC_CONTEXT, str(tiny_path)], capture_output=True,
                            text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "flags 0" in result.stdout
    assert not (tmp_path / "kv-calibration").exists()  # nothing cached from a model without weights


def test_the_calibrated_transform_is_exact_on_a_model_without_biases(tiny_model):
    reference, _ = score(tiny_model, kv_transform="off")
    transformed, applied = score(tiny_model, kv_transform="k_calibrate")
    assert applied == "k_calibrate"
    assert kld(reference, transformed) < 1e-4


# Random weights give a llama isotropic keys with nothing to remove (no worse is all it can
# show); the qwen2 biases and the qwen3/gemma3 Q/K-norm gains put real outlier channels in.
# gemma3's sliding-window layers take llama.cpp's iSWA attention path.
@pytest.mark.parametrize("arch, at_most", [("llama", 1.05), ("qwen2", 0.7), ("qwen3", 0.7), ("gemma3", 0.7)])
def test_each_architecture_is_exact_and_rounds_better_with_auto(tmp_path, arch, at_most):
    path = write_tiny_llama(tmp_path / f"{arch}.gguf", arch=arch, seed=3, bias=32.0 if arch == "qwen2" else 0.0)
    with pyturbo.Model(path) as model:
        reference, _ = score(model, kv_transform="off")
        assert kld(reference, score(model, kv_transform=TRANSFORMED)[0]) < 1e-4
        plain = kld(reference, score(model, "turbo4", "turbo4", kv_transform="off")[0])
        transformed, applied = score(model, "turbo4", "turbo4")
        assert applied == "k_calibrate+v_equalize"
        assert kld(reference, transformed) < at_most * plain, (plain, kld(reference, transformed))


def test_contexts_of_two_models_do_not_wait_for_each_other_s_calibration(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTURBO_CACHE", str(tmp_path / "cache"))  # every calibration runs here
    slow = [write_tiny_llama(tmp_path / f"slow{seed}.gguf", n_embd=512, n_head=8, n_head_kv=4, n_layer=6,
                             n_ff=1024, seed=seed) for seed in (1, 2)]
    quick = write_tiny_llama(tmp_path / "quick.gguf", seed=3)
    low_bit = dict(cache_k="turbo3", cache_v="turbo3", n_threads=1)
    with pyturbo.Model(slow[0]) as first, pyturbo.Model(slow[1]) as second, pyturbo.Model(quick) as other:
        other.context(n_ctx=256, **low_bit).close()  # calibrated once: later contexts only build
        started = time.perf_counter()
        first.context(n_ctx=256, **low_bit).close()
        calibration = time.perf_counter() - started  # a context whose model calibrates first

        calibrating = threading.Thread(target=lambda: second.context(n_ctx=256, **low_bit).close())
        calibrating.start()
        time.sleep(0.2 * calibration)  # the second slow model's calibration is under way
        started = time.perf_counter()
        other.context(n_ctx=512, **low_bit).close()  # a new transform of the calibrated model
        waited = time.perf_counter() - started
        calibrating.join()
    # before, one lock held through every calibration made it wait for the rest of that pass
    assert waited < 0.5 * calibration, (waited, calibration)


def test_the_transform_bits_are_libllama_s():
    header = (Path(__file__).resolve().parent.parent / "csrc" / "llama" / "turbo-kv-flags.h").read_text()
    defined = {name: int(value) for name, value in re.findall(r"#define PYTURBO_KVT_(\w+)\s+(-?\d+)", header)}
    assert {name.upper(): bit for name, bit in kv_transform.TRANSFORMS.items()} == \
        {name: value for name, value in defined.items() if value > 0}
    assert defined["AUTO"] == kv_transform.AUTO
