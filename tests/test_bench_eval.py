"""pyturbo.bench and pyturbo.eval: records, output formats, plots, sane numbers, bad inputs."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest

import pyturbo
from pyturbo import bench, eval as pteval
from pyturbo._report import render

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
KLD_FIELDS = {"type_k", "type_v", "bpv_k", "bpv_v", "kld", "kld_p99", "ppl", "ppl_ratio", "same_top"}
BENCH_FIELDS = {"type_k", "type_v", "n_prompt", "n_gen", "n_depth", "n_threads", "flash_attn", "avg_ts",
                "stddev_ts", "kv_bytes"}
NIAH_FIELDS = {"type_k", "type_v", "length", "depth", "trials", "passed"}
TEXT = ("The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun. " * 40)


def run_cli(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300)


# -- bench ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bench_results(tiny_model):
    return bench.run(tiny_model, n_prompt=[32], n_gen=[4], depths=[0, 32], cache_k=["f16", "q8_0"],
                     cache_v=["turbo3"], n_threads=1, repetitions=2, progress=False)


def test_bench_runs_the_cartesian_product_with_llama_bench_test_names(bench_results):
    assert [(r.type_k, r.test) for r in bench_results] == [
        (k, t) for k in ("f16", "q8_0") for t in ("pp32", "tg4", "pp32 @ d32", "tg4 @ d32")]
    for r in bench_results:
        assert r.avg_ts > 0 and r.stddev_ts >= 0 and len(r.samples_ts) == 2
        assert r.kv_bytes > 0 and r.n_ctx >= 64 and r.type_v == "turbo3" and r.flash_attn == "auto"  # llama-bench's default


def test_bench_output_formats_parse(bench_results):
    records = json.loads(render(bench_results, "json", bench.to_markdown))
    assert len(records) == 8 and BENCH_FIELDS <= set(records[0])
    lines = render(bench_results, "jsonl", bench.to_markdown).splitlines()
    assert [json.loads(line)["test"] for line in lines] == [r.test for r in bench_results]
    rows = list(csv.DictReader(io.StringIO(render(bench_results, "csv", bench.to_markdown))))
    assert float(rows[0]["avg_ts"]) == pytest.approx(bench_results[0].avg_ts)
    table = render(bench_results, "md", bench.to_markdown).splitlines()
    assert table[0].startswith("| model |") and len(table) == 2 + 8
    assert " ± " in table[2] and "pp32 @ d32" in table[4]


def test_bench_plot_is_a_png(bench_results, tmp_path):
    pytest.importorskip("matplotlib")
    bench.plot(bench_results, tmp_path / "speed.png")
    assert (tmp_path / "speed.png").read_bytes().startswith(PNG_SIGNATURE)


def test_bench_cli_prints_json_records(tiny_path):
    result = run_cli("pyturbo.bench", str(tiny_path), "-p", "16", "-n", "2", "-ctk", "f16", "-ctv", "q4_0",
                     "-t", "1", "-r", "1", "-o", "jsonl")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["test"] for r in records] == ["pp16", "tg2"] and all(r["avg_ts"] > 0 for r in records)


# -- eval kld ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "fox.txt"
    path.write_text(TEXT)
    return path


def test_kld_of_f16_against_itself_is_zero_and_grows_with_coarser_caches(tiny_model, text_file):
    results = pteval.kld(tiny_model, "f16/f16,q8_0/q8_0,q4_0/q4_0,turbo2/turbo2", text=text_file, n_ctx=64,
                         chunks=3, n_threads=1, progress=False)
    by_pair = {(r.type_k, r.type_v): r for r in results}
    same = by_pair["f16", "f16"]
    assert abs(same.kld) < 1e-3 and same.same_top == 1.0 and same.ppl_ratio == pytest.approx(1.0, abs=1e-3)
    assert same.n_tokens == 3 * (64 - 1 - 32)
    assert 0 < by_pair["q8_0", "q8_0"].kld < by_pair["q4_0", "q4_0"].kld < by_pair["turbo2", "turbo2"].kld
    assert by_pair["q4_0", "q4_0"].kld_p99 >= by_pair["q4_0", "q4_0"].kld
    assert (by_pair["turbo2", "turbo2"].bpv_k, by_pair["q8_0", "q8_0"].bpv_v) == (2.25, 8.5)
    records = json.loads(render(results, "json", pteval.kld_to_markdown))
    assert KLD_FIELDS <= set(records[0])


def test_kld_plot_draws_the_upstream_frontier(tmp_path):
    pytest.importorskip("matplotlib")
    results = [pteval.KLDResult(k, v, b, b, kld, kld, 10.0, 1.0, 0.9, 100, 1.0) for k, v, b, kld in [
        ("q8_0", "q8_0", 8.5, 0.005), ("q4_0", "q4_0", 4.5, 0.07), ("q5_0", "q5_0", 5.5, 0.09),
        ("turbo3", "turbo3", 3.25, 0.3)]]
    assert pteval.upstream_frontier(results) == [(4.5, 0.07), (8.5, 0.005)]  # q5_0 is dominated
    pteval.plot_kld(results, tmp_path / "kld.png")
    assert (tmp_path / "kld.png").read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.slow
def test_kld_on_smollm2_orders_the_upstream_types(smol_model):
    results = pteval.kld(smol_model, "f16/f16,q8_0/q8_0,q4_0/q4_0,q8_0/turbo4", n_ctx=256, chunks=2,
                         progress=False)
    kld = {(r.type_k, r.type_v): r.kld for r in results}
    assert abs(kld["f16", "f16"]) < 1e-3
    assert 0 < kld["q8_0", "q8_0"] < kld["q4_0", "q4_0"] < 0.2
    assert kld["q8_0", "turbo4"] < kld["q4_0", "q4_0"]


# -- eval niah -----------------------------------------------------------------------------------------

def test_niah_records_every_length_and_depth_with_the_same_needles(tiny_model, text_file):
    results = pteval.niah(tiny_model, [384, 512], [0.0, 0.5, 1.0], "f16/f16,q8_0/turbo3", trials=2,
                          text=text_file, n_threads=1, progress=False)
    assert [(r.type_v, r.length, r.depth) for r in results] == [
        (v, n, d) for v in ("f16", "turbo3") for n in (384, 512) for d in (0.0, 0.5, 1.0)]
    # A random model cannot produce a six-digit passcode: no trial may pass by accident.
    assert all(r.trials == 2 and r.passed == 0 for r in results)
    records = json.loads(render(results, "json", pteval.niah_to_markdown))
    assert NIAH_FIELDS <= set(records[0])
    assert "| f16 / f16 | 384 | 0/2 |" in pteval.niah_to_markdown(results)


def test_niah_passes_every_trial_when_the_reply_holds_the_hidden_passcode(tiny_model, text_file, monkeypatch):
    """A stand-in for a perfect model: it answers with the passcode it finds in the prompt, so
    every trial passes only if each needle really is in its haystack and the reply is scored."""
    import re

    def perfect_reader(ctx, prompt, max_tokens=64, **kwargs):
        # the tiny vocabulary spells some spaces as "▁": allow any non-word run between words
        found = re.search(r"secret\W+passcode\W+of\W+\w+\W+is\W+(\d{6})", ctx.detokenize(prompt))
        return found.group(1) if found else "no needle"

    monkeypatch.setattr(pyturbo.Context, "complete", perfect_reader)
    results = pteval.niah(tiny_model, [384], [0.0, 0.5, 1.0], "f16/f16", trials=3, text=text_file, n_threads=1,
                          progress=False)
    assert [(r.depth, r.passed, r.trials) for r in results] == [(0.0, 3, 3), (0.5, 3, 3), (1.0, 3, 3)]


def test_niah_needles_are_seeded_and_the_prompt_fits(tiny_model, text_file):
    import random

    first = pteval.needle(random.Random("0/1024/0.5/0"))
    assert first == pteval.needle(random.Random("0/1024/0.5/0"))
    assert first != pteval.needle(random.Random("0/1024/0.5/1"))
    sentence, question, answer = first
    assert len(answer) == 6 and answer.isdigit() and answer in sentence
    with tiny_model.context(n_ctx=600) as ctx:
        filler = ctx.tokenize(text_file.read_text(), add_special=False)
        prompt = pteval.haystack_prompt(ctx, filler, 600, 0.5, sentence, question)
        assert 600 - pteval.ANSWER_TOKENS - 16 <= len(prompt) <= 600 - pteval.ANSWER_TOKENS
        assert answer in ctx.detokenize(prompt)


@pytest.mark.slow
def test_niah_on_smollm2_finds_a_needle_in_a_short_haystack(smol_model, tmp_path):
    results = pteval.niah(smol_model, [512], [0.5], "f16/f16,q8_0/q8_0", trials=3, progress=False)
    assert all(r.passed >= 2 for r in results), results
    pytest.importorskip("matplotlib")
    pteval.plot_niah(results, tmp_path / "heat.png")
    assert (tmp_path / "heat.png").read_bytes().startswith(PNG_SIGNATURE)


# -- bad inputs ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make_args, message", [
    (lambda p, tmp: ["pyturbo.bench", str(p), "-ctk", "q3_0"], "valid cache types: f32, f16"),
    (lambda p, tmp: ["pyturbo.bench", str(p), "-p", "0", "-n", "0"], "nothing to run"),
    (lambda p, tmp: ["pyturbo.bench", str(p), "-d", "a,b"], "comma-separated list of integers"),
    (lambda p, tmp: ["pyturbo.eval", "kld", str(p), "--configs", "f16/f16", "--text", str(tmp / "none.txt")],
     "text file not found"),
    (lambda p, tmp: ["pyturbo.eval", "kld", str(p), "--configs", "f16"], "a configuration is K/V"),
    (lambda p, tmp: ["pyturbo.eval", "kld", str(p), "--configs", "f16/turbo9"], "valid cache types"),
    (lambda p, tmp: ["pyturbo.eval", "niah", str(p), "--configs", "f16/f16", "--lengths", "1024,4096"],
     "exceeds the model's training context of 2048"),
    (lambda p, tmp: ["pyturbo.eval", "kld", str(tmp / "missing.gguf"), "--configs", "f16/f16"],
     "model file not found"),
])
def test_bad_inputs_are_one_line_on_stderr_with_exit_code_2(tiny_path, tmp_path, make_args, message):
    result = run_cli(*make_args(tiny_path, tmp_path))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_default_text_is_the_license_texts_or_a_clear_error(monkeypatch, tmp_path):
    from pyturbo import assets

    monkeypatch.setattr(assets, "LICENSE_TEXTS_DIR", tmp_path / "nowhere")
    with pytest.raises(pteval.PyturboError, match="pass a text file with --text"):
        assets.default_text()
    (tmp_path / "lic").mkdir()
    (tmp_path / "lic" / "B").write_text("second")
    (tmp_path / "lic" / "A").write_text("first")
    (tmp_path / "lic" / "C").symlink_to(tmp_path / "lic" / "A")
    monkeypatch.setattr(assets, "LICENSE_TEXTS_DIR", tmp_path / "lic")
    assert assets.default_text() == "first\n\nsecond"
