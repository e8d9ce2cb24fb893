"""pyturbo.fit for the user's own model: KLDs measured on it and cached, every KLD labelled with
its source, and the n_ubatch search when the compute buffer limits the context."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from pyturbo import bench, fit, kl_divergence, kld_cache, memory, run, units
from pyturbo.measure import measure
from pyturbo.units import MiB
from tiny_gguf import write_header_only, write_tiny_llama

REPO = Path(__file__).resolve().parent.parent
CONFIGS = [("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0")]


@pytest.fixture
def kld_cache_dir(tmp_path, monkeypatch):
    """An empty pyturbo cache dir for the test, so no user's measurement leaks in."""
    monkeypatch.setenv("PYTURBO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def counting_kld(monkeypatch) -> list:
    """Count the configurations kl_divergence.kld is asked for; let it run (1 thread)."""
    asked, real = [], kl_divergence.kld

    def kld(*args, **kwargs):
        asked.append(list(args[1]))
        return real(*args, **{**kwargs, "n_threads": 1})
    monkeypatch.setattr(kl_divergence, "kld", kld)
    return asked


def forbid_kld(monkeypatch) -> None:
    def kld(*args, **kwargs):
        raise AssertionError("the model was run although its KLDs are cached")
    monkeypatch.setattr(kl_divergence, "kld", kld)


# -- measured KLDs: cached per model file, labelled in text and JSON ------------------------------------

def test_measured_klds_are_cached_and_the_second_call_does_not_run_the_model(tiny_path, kld_cache_dir,
                                                                              monkeypatch):
    asked = counting_kld(monkeypatch)
    first = fit.plan(tiny_path, memory="64MiB", configs=CONFIGS, what_if=(), measure=True, chunks=1,
                     progress=False)
    assert asked == [["q8_0/q8_0", "q4_0/q4_0"]]     # f16/f16 is the reference: 0 without a run
    label = "measured: tiny-llama.gguf, 1 chunks"
    assert [r.kld_source for r in first.results] == [label] * 3
    assert first.results[0].kld == 0.0 and all(r.kld > 0 for r in first.results[1:])
    assert len(list(kld_cache_dir.glob("kld/*.json"))) == 1

    forbid_kld(monkeypatch)
    again = fit.plan(tiny_path, memory="64MiB", configs=CONFIGS, what_if=(), measure=True, chunks=1)
    assert [r.kld for r in again.results] == [r.kld for r in first.results]
    # Without --measure the cached numbers are used, and say so.
    cached = fit.plan(tiny_path, memory="64MiB", configs=CONFIGS, what_if=())
    assert [(r.kld, r.kld_source) for r in cached.results] == [(r.kld, label) for r in first.results]
    text = fit.to_markdown(cached)
    assert text.count(f"| {label} |") == 3
    recommendation = next(line for line in text.splitlines() if line.startswith("Recommendation:"))
    assert label in recommendation
    plan = json.loads(fit.to_json(cached))
    assert {r["kld_source"] for r in plan["results"]} == {label}
    assert plan["recommendation"]["kld_source"] == label


def test_measuring_again_with_other_settings_runs_only_what_is_missing(tiny_path, kld_cache_dir, monkeypatch):
    asked = counting_kld(monkeypatch)
    kld_cache.measure(tiny_path, CONFIGS[:2], chunks=1, n_ctx=64, progress=False)
    kld_cache.measure(tiny_path, CONFIGS, chunks=1, n_ctx=64, progress=False)
    kld_cache.measure(tiny_path, CONFIGS[1:], chunks=2, n_ctx=64, progress=False)
    assert asked == [["q8_0/q8_0"], ["q4_0/q4_0"], ["q8_0/q8_0", "q4_0/q4_0"]]


def test_without_measurements_every_kld_is_the_reference_table_s_and_says_so(tiny_path, kld_cache_dir):
    configs = [("q8_0", "turbo3"), ("q5_0", "q8_0")]     # the second is not in the table
    plan = fit.plan(tiny_path, memory="64MiB", configs=configs, what_if=())
    assert [(r.kld, r.kld_source) for r in plan.results] == [
        (fit.KLD_TABLE["q8_0", "turbo3"], "reference: SmolLM2-135M"), (None, None)]
    text = fit.to_markdown(plan)
    assert "| reference: SmolLM2-135M |" in text and "| unmeasured |" in text
    assert "reference: SmolLM2-135M" in plan.recommendation["reason"]
    assert json.loads(fit.to_json(plan))["results"][0]["kld_source"] == "reference: SmolLM2-135M"


def test_fit_cli_measure_prints_the_measured_source(tiny_path, kld_cache_dir, monkeypatch, capsys):
    counting_kld(monkeypatch)
    assert fit.main([str(tiny_path), "--memory", "64MiB", "-ctk", "q8_0", "-ctv", "q8_0", "--measure",
                     "--chunks", "1", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["results"][0]["kld_source"] == "measured: tiny-llama.gguf, 1 chunks"


@pytest.mark.slow
def test_klds_measured_on_smollm2_are_used_for_its_plan(smol_path, kld_cache_dir, monkeypatch, tmp_path):
    asked = counting_kld(monkeypatch)
    text = tmp_path / "text.txt"   # one chunk's worth of the license texts: tokenizing all of them takes seconds
    text.write_text(kl_divergence.read_text(None)[:4000])
    measured = kld_cache.measure(smol_path, [("f16", "f16"), ("turbo2", "turbo2")], chunks=1, n_ctx=128,
                                 text=text, progress=False)
    assert asked == [["turbo2/turbo2"]]
    assert measured["turbo2", "turbo2"].kld > 0.05              # a 2-bit cache is visibly off
    plan = fit.plan(smol_path, memory="1GiB", configs=[("turbo2", "turbo2"), ("q8_0", "q8_0")], what_if=())
    assert [r.kld_source for r in plan.results] == ["measured: SmolLM2-135M-Instruct.Q4_1.gguf, 1 chunks",
                                                    "reference: SmolLM2-135M"]
    assert plan.results[0].kld == measured["turbo2", "turbo2"].kld


# -- n_ubatch: searched when the compute buffer limits the context ------------------------------------

def test_a_smaller_ubatch_reaches_a_longer_context_when_the_logits_dominate(tmp_path):
    # A 152K vocabulary (Qwen2.5's) on small layers: 512 tokens of logits are 297 MiB, the KV cache 2 KiB a token.
    path = write_header_only(tmp_path / "vocab.gguf", n_vocab=152064, n_layer=4, n_embd=512, n_head=8, n_head_kv=2)
    weights = memory.estimate(path, 256).weights
    budget = weights + 64 * MiB
    fixed = fit.plan(path, memory=budget, configs=[("f16", "f16")], what_if=(), n_ubatch=512).results[0]
    searched = fit.plan(path, memory=budget, configs=[("f16", "f16")], what_if=())
    best = searched.results[0]
    assert fixed.n_ctx == 0 and best.n_ctx == 8192 and best.n_ubatch < 512
    assert best.total <= budget < memory.estimate(path, 8192, n_ubatch=best.n_ubatch * 2).total
    assert f"-ub {best.n_ubatch}" in searched.recommendation["flags"]
    assert "prefills at" in fit.to_markdown(searched)


def test_the_ubatch_stays_at_512_when_the_kv_cache_is_the_limit(tmp_path):
    path = write_header_only(tmp_path / "8b.gguf", n_layer=32, n_embd=4096, n_head=32, n_head_kv=8, head=128,
                             n_ff=14336, n_vocab=128256, n_ctx_train=131072)
    plan = fit.plan(path, memory="16GiB", configs=[("f16", "f16")], weights_as="q4_K_M", what_if=())
    assert plan.results[0].n_ubatch == 512 and "-ub" not in plan.recommendation["flags"]


@pytest.fixture(scope="module")
def large_vocab_path(tmp_path_factory):
    """A loadable tiny llama whose 32K-token vocabulary makes the logits 64 MiB at n_ubatch 512."""
    return write_tiny_llama(tmp_path_factory.mktemp("vocab") / "tiny-vocab.gguf", n_vocab_extra=32768 - 291)


def test_the_printed_flags_fed_to_run_allocate_what_the_plan_said(large_vocab_path, kld_cache_dir, capsys):
    weights = memory.estimate(large_vocab_path, 256).weights
    plan = fit.plan(large_vocab_path, memory=weights + 24 * MiB, configs=[("q8_0", "q8_0")], what_if=())
    planned = plan.results[0]
    assert planned.n_ubatch < 512 and planned.n_ctx == 2048
    line = next(line for line in fit.to_markdown(plan).splitlines() if line.startswith("Run it:"))
    flags = shlex.split(line)[6:]                  # after "Run it: python -m pyturbo.run MODEL"
    assert run.main([str(large_vocab_path), *flags, "-n", "1", "-t", "1", "-p", "the cat", "--json"]) == 0
    ran = json.loads(capsys.readouterr().out)
    assert (ran["n_ctx"], ran["n_ubatch"], ran["cache_k"]) == (planned.n_ctx, planned.n_ubatch, "q8_0")
    assert (ran["kv_k_bytes"], ran["kv_v_bytes"]) == (planned.kv_k, planned.kv_v)
    allocated = measure(large_vocab_path, planned.n_ctx, "q8_0", "q8_0", n_ubatch=planned.n_ubatch)
    assert allocated.total == pytest.approx(planned.total, rel=0.05)


# -- batch flags on the commands -------------------------------------------------------------------------

@pytest.mark.parametrize("parser", [run.build_parser, bench.build_parser])
def test_run_and_bench_take_llama_cpp_s_batch_flags_and_defaults(parser, tiny_path):
    args = parser().parse_args([str(tiny_path)])
    assert (args.n_batch, args.n_ubatch) == (2048, 512)
    args = parser().parse_args([str(tiny_path), "-b", "1024", "-ub", "128"])
    assert (args.n_batch, args.n_ubatch) == (1024, 128)


def test_the_prefill_speeds_fit_prints_are_the_committed_table_s():
    table = (REPO / fit.UBATCH_PREFILL_TABLE).read_text()
    rows = dict(re.findall(r"^\| (\d+) \|.*\| ([\d.]+)x \|$", table, flags=re.MULTILINE))
    assert {int(k): float(v) for k, v in rows.items()} == fit.UBATCH_PREFILL_SPEED


def test_a_turbo_pair_measured_on_the_model_is_not_demoted_by_the_gqa_rule():
    configs = [("q8_0", "turbo3"), ("turbo4", "turbo4")]
    klds = {("q8_0", "turbo3"): 0.05, ("turbo4", "turbo4"): 0.01}
    assert fit.quality_order(configs, gqa_ratio=7, klds=klds)[0] == ("q8_0", "turbo3")
    assert fit.quality_order(configs, gqa_ratio=7, klds=klds, measured={("turbo4", "turbo4")})[0] == \
        ("turbo4", "turbo4")


@pytest.mark.parametrize("budget", [["--memory", "48MiB"], ["-c", "1024"]])
def test_fit_plots_max_context_and_kld_for_a_budget_and_memory_for_a_context(tiny_path, kld_cache_dir, tmp_path,
                                                                              budget, capsys):
    png = tmp_path / "fit.png"
    assert fit.main([str(tiny_path), *budget, "--plot", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_the_default_pairs_rank_each_trellis_pair_above_the_scalar_pair_of_the_same_memory(tiny_path):
    configs = fit.parse_configs(None, None)
    order = fit.quality_order(configs, gqa_ratio=1.0)
    plan = fit.plan(tiny_path, memory="64MiB", what_if=(), progress=False)
    kv_bytes = {(r.type_k, r.type_v): (r.kv_k + r.kv_v) / r.n_ctx for r in plan.results}
    for trellis, scalar in ((("q8_0", "turbo3t"), ("q8_0", "turbo3")), (("turbo3t", "turbo3t"), ("turbo3", "turbo3")),
                            (("turbo2t", "turbo2t"), ("turbo2", "turbo2"))):
        assert trellis in configs and scalar in configs
        assert order.index(trellis) < order.index(scalar)
        assert fit.KLD_TABLE[trellis] < 0.7 * fit.KLD_TABLE[scalar]
        assert kv_bytes[trellis] == kv_bytes[scalar]      # the same bytes per cell


def test_a_per_layer_spec_is_measured_and_returned_under_the_spec_asked(tiny_path, kld_cache_dir, monkeypatch):
    asked = counting_kld(monkeypatch)
    config = ("q8_0,q4_0@1,q4_0@0", "q8_0")     # the library names it q8_0,q4_0@0-1
    first = kld_cache.measure(tiny_path, [config], chunks=1, progress=False)
    assert asked == [["q8_0,q4_0@1,q4_0@0/q8_0"]] and first[config].kld > 0
    forbid_kld(monkeypatch)
    assert kld_cache.measure(tiny_path, [config], chunks=1, progress=False)[config] == first[config]
