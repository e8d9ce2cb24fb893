"""Per-layer KV cache types: the spec, the native hook, and everything that follows the layers
(memory, state, context shift, transforms, the llama-cpp-python drop-in)."""

from __future__ import annotations

import numpy as np
import pytest

import pyturbo
from pyturbo import _native, layer_types
from pyturbo.context_memory import read_context_memory
from pyturbo.memory import estimate
from pyturbo.state import StateError

N = 30  # SmolLM2-135M's layers
MIXED_K = "turbo3,q8_0@0-1,q8_0@-2"
MIXED_V = "f16,turbo3@3-5,turbo4@7"


def names(types) -> list:
    return [t.name for t in types.types]


# -- the spec ----------------------------------------------------------------------------------

def test_a_spec_is_a_default_then_overrides_later_items_winning():
    types = names(layer_types.parse("turbo3,q8_0@0-1,q8_0@-2,f16@29", N))
    assert types[:3] == ["q8_0", "q8_0", "turbo3"]
    assert types[27:] == ["turbo3", "q8_0", "f16"]
    assert types.count("turbo3") == 26
    assert names(layer_types.parse("TURBO4, q8_0@5", N))[4:7] == ["turbo4", "q8_0", "turbo4"]


def test_a_list_names_each_layer_and_a_plain_name_every_layer():
    listed = layer_types.parse(["q8_0"] * 10 + ["turbo3"] * 20, N)
    assert listed.spec == "turbo3,q8_0@0-9"
    assert layer_types.parse("turbo3", N).uniform and layer_types.parse("turbo3", N).spec == "turbo3"


@pytest.mark.parametrize("spec", [MIXED_K, MIXED_V, "q8_0,turbo2@-1", "f16,q4_0@0,q4_0@2,turbo3@10-12"])
def test_the_shortest_spec_parses_back_to_the_same_layers(spec):
    types = layer_types.parse(spec, N)
    assert layer_types.parse(types.spec, N) == types
    assert len(types.spec) <= len(spec)


@pytest.mark.parametrize("spec, message", [
    ("turbo9,q8_0@1", "valid cache types: f32, f16"),
    ("q8_0@1,turbo3", "starts with the default type"),
    ("turbo3,q8_0", "names no layers"),
    ("turbo3,q8_0@30", "names no layers of the 30"),
    ("turbo3,q8_0@5-3", "names no layers"),
    ("turbo3,q8_0@-0", "names no layers"),
    ("turbo3,q8_0@x", "names no layers"),
])
def test_a_bad_spec_is_refused_with_what_is_wrong(spec, message):
    with pytest.raises(pyturbo.CacheTypeError, match=message):
        layer_types.parse(spec, N)


def test_a_list_of_the_wrong_length_is_refused():
    with pytest.raises(pyturbo.CacheTypeError, match="3 per-layer cache types given for a model of 30"):
        layer_types.parse(["f16", "q8_0", "turbo3"], N)


def test_the_standing_type_is_the_first_turbo_else_quantized_else_the_default():
    assert layer_types.parse("f16,q8_0@3,turbo4@5,turbo3@6", N).standing.name == "turbo4"
    assert layer_types.parse("f16,q4_0@3,q8_0@2", N).standing.name == "q8_0"
    assert layer_types.parse("bf16,f16@3", N).standing.name == "bf16"


# -- contexts with a type per layer ------------------------------------------------------------

@pytest.mark.parametrize("cache_k, cache_v, flash_attn", [
    (MIXED_K, MIXED_V, "on"),
    ("f16,turbo3@7", "f16", "on"),
    ("q8_0,f16@0-14", "turbo4,q8_0@-10", "auto"),
    ("q4_0,f16@2", "f16", "off"),
])
def test_the_cache_allocated_is_the_estimate_byte_for_byte(smol_model, cache_k, cache_v, flash_attn):
    with smol_model.context(n_ctx=768, cache_k=cache_k, cache_v=cache_v, flash_attn=flash_attn) as ctx:
        memory = ctx.memory()
        assert (ctx.cache_k_spec, ctx.cache_v_spec) == (layer_types.parse(cache_k, N).spec,
                                                      layer_types.parse(cache_v, N).spec)
    est = estimate(smol_model, 768, cache_k, cache_v, flash_attn=flash_attn != "off")
    assert (memory.kv_k, memory.kv_v) == (est.kv_k, est.kv_v)
    assert abs(memory.compute - est.compute) < 0.05 * memory.compute   # an estimate, as for one type
    uniform = estimate(smol_model, 768, layer_types.parse(cache_k, N).standing.name,
                       layer_types.parse(cache_v, N).standing.name, flash_attn=flash_attn != "off")
    assert memory.kv_k + memory.kv_v != uniform.kv_k + uniform.kv_v


def logits_of(model, tokens, cache_k, cache_v="f16", layers=None, kv_transform="auto"):
    """The last position's logits; layers: a native struct pyturbo_kv_layer_types to force the hook."""
    if layers is None:
        with model.context(n_ctx=256, cache_k=cache_k, cache_v=cache_v, kv_transform=kv_transform) as ctx:
            return ctx.score(tokens)[-1]
    params = _native.llama.llama_context_default_params()
    params.n_ctx, params.type_k, params.type_v = 256, pyturbo.cache_type(cache_k).type_id, \
        pyturbo.cache_type(cache_v).type_id
    params.flash_attn_type = 1
    handle = _native.llama.pyturbo_context_create(model.handle, params, -1, layers, _native.ffi.NULL)
    assert handle != _native.ffi.NULL
    try:
        batch = _native.ffi.new("llama_token[]", tokens)
        assert _native.llama.llama_decode(handle, _native.llama.llama_batch_get_one(batch, len(tokens))) == 0
        out = _native.llama.llama_get_logits(handle)
        return np.frombuffer(_native.ffi.buffer(out, 4 * model.n_vocab), dtype=np.float32).copy()
    finally:
        _native.llama.llama_free(handle)


def kld(reference, logits) -> float:
    p = np.exp(reference - reference.max())
    p /= p.sum()
    q = logits - logits.max()
    q -= np.log(np.exp(q).sum())
    return float((p * (np.log(p) - q)).sum())


def test_the_hook_with_one_type_everywhere_is_that_type(smol_model):
    tokens = smol_model.tokenize("The licence grants you the freedom to share and change it, and")
    uniform = logits_of(smol_model, tokens, "turbo3", "turbo3")
    ids = _native.ffi.new("int32_t[]", [pyturbo.cache_type("turbo3").type_id] * N)
    layers = _native.ffi.new("struct pyturbo_kv_layer_types *", {"n_layer": N, "type_k": ids, "type_v": ids})
    assert np.array_equal(logits_of(smol_model, tokens, "turbo3", "turbo3", layers), uniform)


def test_more_layers_at_more_bits_lose_less(smol_model):
    tokens = smol_model.tokenize(pyturbo.assets.default_text()[:3000])[:200]
    reference = logits_of(smol_model, tokens, "f16", kv_transform="off")
    measured = [kld(reference, logits_of(smol_model, tokens, spec, "turbo2", kv_transform="off"))
                for spec in ("turbo2", "turbo2,q8_0@0-14", "q8_0")]
    assert measured[0] > measured[1] > measured[2] > 0, measured


def test_transforms_follow_the_quantized_layers(smol_model):
    with smol_model.context(n_ctx=256, cache_k="f16,turbo3@7", cache_v="f16") as ctx:
        assert ctx.kv_transform != "off" and ctx.cache_k.name == "turbo3"
    with smol_model.context(n_ctx=256, cache_k="f16,bf16@7", cache_v="f16") as ctx:
        assert ctx.kv_transform == "off"


def test_a_quantized_v_layer_without_flash_attention_is_refused(smol_model):
    with pytest.raises(pyturbo.CacheTypeError, match="requires flash attention"):
        smol_model.context(n_ctx=256, cache_v="f16,q8_0@3", flash_attn="off")


def test_the_native_hook_refuses_a_count_that_is_not_the_models(smol_model):
    params = _native.llama.llama_context_default_params()
    params.n_ctx = 256
    ids = _native.ffi.new("int32_t[]", [1] * 4)
    layers = _native.ffi.new("struct pyturbo_kv_layer_types *", {"n_layer": 4, "type_k": ids, "type_v": ids})
    with _native.captured_log() as log:
        handle = _native.llama.pyturbo_context_create(smol_model.handle, params, 0, layers, _native.ffi.NULL)
    assert handle == _native.ffi.NULL
    assert "per-layer cache types for 4 layers, but the model has 30" in _native.last_problem(log)


PROMPT = "The quick brown fox jumps over the lazy dog because it"


def test_a_saved_state_restores_into_the_same_layers_only(smol_model):
    with smol_model.context(n_ctx=512, cache_k=MIXED_K, cache_v=MIXED_V) as ctx:
        ctx.complete(PROMPT, 12)
        saved = ctx.save_state()
        expected = ctx.complete(list(ctx._cached), 16)
    with smol_model.context(n_ctx=512, cache_k=MIXED_K, cache_v=MIXED_V) as restored:
        restored.load_state(saved)
        assert restored.complete(list(restored._cached), 16) == expected
    with smol_model.context(n_ctx=512, cache_k="turbo3", cache_v=MIXED_V) as other:
        with pytest.raises(StateError, match="turbo3,q8_0@0-1,q8_0@-2"):
            other.load_state(saved)


def test_context_shift_with_a_type_per_layer_keeps_counting(smol_model):
    with smol_model.context(n_ctx=256, cache_k="turbo4,q8_0@0-1,f16@-2", cache_v="turbo4,q8_0@0") as ctx:
        text = ctx.complete("1, 2, 3, 4, 5, 6, 7, 8,", max_tokens=400, context_shift=True)
    assert ctx.last_stats.n_gen == 400
    tail = text[-80:]
    assert sum(c.isdigit() for c in tail) > 20 and "," in tail


# -- contexts made outside pyturbo take the spec from the environment ------------------------

def context_memory_from_env(model, monkeypatch, env_k, env_v, type_k="f16", type_v="f16"):
    """What llama_init_from_model (as llama-server and llama-cpp-python call it) allocates."""
    monkeypatch.setenv(layer_types.ENV_K, env_k)
    monkeypatch.setenv(layer_types.ENV_V, env_v)
    params = _native.llama.llama_context_default_params()
    params.n_ctx, params.flash_attn_type = 512, 1
    params.type_k, params.type_v = pyturbo.cache_type(type_k).type_id, pyturbo.cache_type(type_v).type_id
    with _native.captured_log() as log:
        handle = _native.llama.llama_init_from_model(model.handle, params)
    if handle == _native.ffi.NULL:
        return None, _native.last_problem(log)
    try:
        return read_context_memory(handle), None
    finally:
        _native.llama.llama_free(handle)


@pytest.mark.parametrize("spec_k, spec_v", [(MIXED_K, MIXED_V), ("q8_0,turbo2@-3,q4_0@4-8", "turbo4,f16@0")])
def test_the_native_parser_reads_a_spec_as_python_does(smol_model, monkeypatch, spec_k, spec_v):
    memory, problem = context_memory_from_env(smol_model, monkeypatch, spec_k, spec_v)
    assert problem is None
    est = estimate(smol_model, 512, spec_k, spec_v)
    assert (memory.kv_k, memory.kv_v) == (est.kv_k, est.kv_v)


def test_a_bad_spec_in_the_environment_fails_with_its_reason(smol_model, monkeypatch):
    memory, problem = context_memory_from_env(smol_model, monkeypatch, "turbo3,q8_0@40", "f16")
    assert memory is None
    assert "PYTURBO_CACHE_K_LAYERS=turbo3,q8_0@40: 'q8_0@40' names no layers of the 30" in problem


def test_llama_kwargs_puts_a_spec_in_the_environment_and_clears_it(monkeypatch, smol_path):
    from pyturbo.llama_cpp import llama_kwargs  # noqa: imports llama_cpp when installed

    monkeypatch.delenv(layer_types.ENV_K, raising=False)
    monkeypatch.delenv(layer_types.ENV_V, raising=False)
    kwargs = llama_kwargs(cache_k="f16,turbo3@2-4", cache_v="q8_0", model_path=str(smol_path))
    assert kwargs["type_k"] == pyturbo.cache_type("turbo3").type_id and kwargs["flash_attn"] is True
    import os

    assert os.environ[layer_types.ENV_K] == "f16,turbo3@2-4" and layer_types.ENV_V not in os.environ
    with pytest.raises(pyturbo.CacheTypeError, match="names no layers of the 30"):
        llama_kwargs(cache_k="f16,turbo3@31", model_path=str(smol_path))
    llama_kwargs(cache_k="turbo3", cache_v="turbo3")
    assert layer_types.ENV_K not in os.environ


# -- choosing the types by measurement (pyturbo.layer_search, fit --per-layer) ---------------

def synthetic_sensitivities(smol_model, layer_k, layer_v):
    from pyturbo.layer_search import LADDER, Sensitivities

    # a type's KLD on a side: 0 for f16, growing as its bits fall
    scale = {t: (16 - pyturbo.cache_type(t).bits_per_value) ** 2 for t in LADDER}
    return Sensitivities(smol_model.geometry, {"K": layer_k, "V": layer_v},
                         {"K": dict(scale), "V": dict(scale)}, chunks=1)


def test_the_search_spends_the_budget_on_the_sensitive_layers(smol_model):
    from pyturbo import layer_search

    layer_k = [0.001] * N
    layer_k[4] = 1.0            # one K layer matters far more than the rest
    sens = synthetic_sensitivities(smol_model, layer_k, [0.001] * N)
    budget = layer_search.bytes_per_cell(smol_model.geometry, "turbo3", "turbo3")
    choice = layer_search.search(sens, budget)
    assert choice.bytes_per_cell <= budget
    k = layer_types.parse(choice.cache_k, N)
    assert k[4].bits_per_value > max(t.bits_per_value for i, t in enumerate(k.types) if i != 4)
    # the predicted KLD is what the cost model says of the spec chosen
    v = layer_types.parse(choice.cache_v, N)
    predicted = sum(sens.cost("K", i, k[i].name) + sens.cost("V", i, v[i].name) for i in range(N))
    assert choice.predicted_kld == pytest.approx(predicted)
    # more memory never predicts worse; the cheapest types are the floor
    richer = layer_search.search(sens, layer_search.bytes_per_cell(smol_model.geometry, "q8_0", "turbo3"))
    assert richer.predicted_kld < choice.predicted_kld
    assert layer_search.search(sens, budget // 2) is None


def test_fit_per_layer_measures_the_layers_and_prints_a_spec_that_runs(tiny_path, tmp_path, monkeypatch, capsys):
    from pyturbo import fit

    monkeypatch.setenv("PYTURBO_CACHE", str(tmp_path / "cache"))
    assert fit.main([str(tiny_path), "--memory", "64MiB", "-ctk", "turbo3", "-ctv", "turbo3", "--per-layer",
                     "--chunks", "1", "-t", "1"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("Per layer, in the memory of turbo3/turbo3"))
    assert "measured: 1 chunks" in line
    choice = fit.plan(tiny_path, memory="64MiB", configs=[("turbo3", "turbo3")], what_if=(), per_layer=True,
                      chunks=1, n_threads=1, progress=False).per_layer   # read back from the cache
    assert choice["bytes_per_cell"] <= choice["pair_bytes_per_cell"]
    if choice["flags"]:
        assert f"-ctk {choice['cache_k']} -ctv {choice['cache_v']}" in out
        assert choice["kld"] < choice["pair_kld"]
    with pytest.raises(ValueError, match="give --memory"):
        fit.main([str(tiny_path), "-c", "512", "--per-layer"])
