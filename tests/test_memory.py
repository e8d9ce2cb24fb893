"""pyturbo.memory and pyturbo.fit: header arithmetic, estimate against llama.cpp's allocations, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import pyturbo
from pyturbo import fit, memory, units
from pyturbo.measure import measure
from pyturbo.gguf import read_gguf_header
from pyturbo.units import GiB, KiB, MiB
from pyturbo.upstream.geometry import model_geometry
from pyturbo.upstream.quant_presets import WEIGHT_QUANTS, weight_bytes_as
from pyturbo.weights import weight_bytes
from tiny_gguf import write_header_only as write_header

REPO = Path(__file__).resolve().parent.parent
CACHE_TYPES = [t.name for t in pyturbo.cache_types()]


# -- sizes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("16GiB", 16 * GiB), ("16GB", 16 * 10**9), ("16000MB", 16 * 10**9), ("17179869184", 16 * GiB),
    ("1.5 GiB", 3 * GiB // 2), ("512kib", 512 * KiB), (4096, 4096),
])
def test_parse_size_accepts_binary_decimal_and_plain_bytes(text, expected):
    assert units.parse_size(text) == expected


@pytest.mark.parametrize("text", ["16 gigs", "GiB", "-1GB", "", "16GiBs", "1e9"])
def test_parse_size_rejects_bad_sizes_with_a_clear_error(text):
    with pytest.raises(ValueError, match="invalid size"):
        units.parse_size(text)


# -- header arithmetic ---------------------------------------------------------------------

def test_cells_round_n_ctx_up_to_256_as_llama_cpp_does(tmp_path):
    path = write_header(tmp_path / "m.gguf")
    assert memory.estimate(path, 1000).n_ctx == 1024
    assert memory.estimate(path, 1024).n_ctx == 1024
    assert memory.estimate(path, 0).n_ctx == 8192           # 0 = the training context
    est = memory.estimate(path, 1000, n_seq=3)               # each sequence's stream padded
    assert (est.n_ctx, est.cells) == (3 * 512, 512)


def test_gqa_kv_bytes_follow_kv_heads_not_query_heads(tmp_path):
    path = write_header(tmp_path / "m.gguf", n_layer=4, n_head=32, n_head_kv=8, head=128, n_embd=4096)
    est = memory.estimate(path, 4096)
    assert est.kv_k == est.kv_v == 4 * 4096 * 8 * 128 * 2     # layers x cells x KV heads x head x f16
    q8 = memory.estimate(path, 4096, "q8_0", "q8_0")
    assert q8.kv_k == 4 * 4096 * (8 * 128 // 32 * 34)
    turbo = memory.estimate(path, 4096, "q8_0", "turbo3")
    assert turbo.kv_v == 4 * 4096 * (8 * 128 // 64 * 26)      # 26 bytes per 64 values


def test_per_layer_kv_head_counts_are_summed_layer_by_layer(tmp_path):
    path = write_header(tmp_path / "m.gguf", n_layer=4, n_head=[8, 8, 8, 8], n_head_kv=[2, 4, 1, 2])
    est = memory.estimate(path, 512)
    assert est.kv_k == 512 * 64 * 2 * (2 + 4 + 1 + 2)
    # without flash attention V is transposed and every layer padded to the widest row
    assert memory.estimate(path, 512, flash_attn=False).kv_v == 512 * 64 * 2 * 4 * 4


def test_sliding_window_layers_keep_the_window_plus_a_batch(tmp_path):
    # gemma2: every other layer slides (pattern 2): layers 0, 2, 4 use the window
    path = write_header(tmp_path / "g.gguf", arch="gemma2", n_layer=6, extra={"attention.sliding_window": 1024})
    geometry = model_geometry(read_gguf_header(path))
    assert [layer.swa for layer in geometry.layers] == [True, False] * 3
    est = memory.estimate(path, 8192)
    swa_cells = 1024 + 512                                    # window + n_ubatch, padded to 256
    row = 2 * 64 * 2
    assert (est.cells, est.cells_swa) == (8192, swa_cells)
    assert est.kv_k == 3 * 8192 * row + 3 * swa_cells * row
    full = memory.estimate(path, 8192, swa_full=True)
    assert full.kv_k == 6 * 8192 * row
    assert memory.estimate(path, 1000).cells_swa == 1024      # never more than the context


def test_sliding_window_pattern_from_the_header_wins(tmp_path):
    path = write_header(tmp_path / "p.gguf", arch="gemma3", n_layer=4,
                        extra={"attention.sliding_window": 512, "attention.sliding_window_pattern":
                               [True, True, True, False]})
    est = memory.estimate(path, 4096)
    assert est.kv_k == (3 * 1024 + 4096) * 2 * 64 * 2


def test_mla_keeps_one_compressed_k_row_and_no_v(tmp_path):
    path = write_header(tmp_path / "d.gguf", arch="deepseek2", n_layer=2, n_head=16, n_head_kv=1, head=576,
                        extra={"attention.key_length_mla": 192, "attention.value_length_mla": 128})
    est = memory.estimate(path, 1024)
    assert est.kv_k == 2 * 1024 * 576 * 2
    assert est.kv_v == 0


def test_recurrent_layers_keep_a_state_per_sequence_not_a_cache(tmp_path):
    extra = {"ssm.conv_kernel": 4, "ssm.inner_size": 1536, "ssm.state_size": 16, "ssm.time_step_rank": 48}
    path = write_header(tmp_path / "m.gguf", arch="mamba", n_layer=3, n_embd=768, n_head=0, n_head_kv=0,
                        extra=extra)
    est = memory.estimate(path, 4096, n_seq=2)
    assert est.kv_k == est.kv_v == 0
    assert est.recurrent == 3 * 2 * 4 * (3 * 1536 + 16 * 1536)


def test_quantized_v_without_flash_attention_is_refused(tmp_path):
    path = write_header(tmp_path / "m.gguf")
    with pytest.raises(pyturbo.CacheTypeError, match="flash attention"):
        memory.estimate(path, 1024, "q8_0", "turbo3", flash_attn=False)


def test_header_only_files_are_read_without_tensor_data(tmp_path):
    path = write_header(tmp_path / "m.gguf")
    assert path.stat().st_size < 64 * KiB
    header = read_gguf_header(path)
    per_layer = 2 * 512 + 2 * 512 * 512 + 2 * 128 * 512 + 3 * 1024 * 512   # norms, q/o, k/v, gate/up/down
    assert weight_bytes(header) == 2 * (2 * 1000 * 512 + 512 + 4 * per_layer)


def test_q4_k_m_what_if_matches_the_real_llama_3_1_8b_file_size(tmp_path):
    # Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf holds 4,920,734,464 bytes of tensors (4.58 GiB)
    path = write_header(tmp_path / "8b.gguf", n_layer=32, n_embd=4096, n_head=32, n_head_kv=8, head=128,
                        n_ff=14336, n_vocab=128256, n_ctx_train=131072)
    size = weight_bytes_as(read_gguf_header(path), "q4_K_M")
    assert size == pytest.approx(4_920_734_464, rel=0.02)


# -- estimate vs what llama.cpp allocates ------------------------------------------------------

def assert_estimate_matches(model, path, n_ctx, cache_k, cache_v, flash_attn="on"):
    measured = measure(model, n_ctx, cache_k, cache_v, flash_attn=flash_attn)
    est = memory.estimate(path, n_ctx, cache_k, cache_v, flash_attn=flash_attn, swa_full=True)
    assert est.n_ctx == measured.n_ctx
    # libllama's own figures: the estimate is exact to the byte
    assert (est.kv_k, est.kv_v) == (measured.kv_k, measured.kv_v)
    assert est.weights == measured.weights
    assert est.total == pytest.approx(measured.total, rel=0.05)


@pytest.mark.parametrize("cache", CACHE_TYPES)
@pytest.mark.parametrize("n_ctx", [256, 1000, 4096])
def test_estimate_matches_allocation_on_the_tiny_model(tiny_model, tiny_path, cache, n_ctx):
    assert_estimate_matches(tiny_model, tiny_path, n_ctx, cache, cache)


@pytest.mark.parametrize("n_ctx", [512, 3000])
def test_estimate_matches_allocation_without_flash_attention(tiny_model, tiny_path, n_ctx):
    assert_estimate_matches(tiny_model, tiny_path, n_ctx, "q8_0", "f16", flash_attn="off")


@pytest.mark.slow
@pytest.mark.parametrize("cache", CACHE_TYPES)
@pytest.mark.parametrize("n_ctx", [512, 3000, 8192])
def test_estimate_matches_allocation_on_smollm2(smol_model, smol_path, cache, n_ctx):
    assert_estimate_matches(smol_model, smol_path, n_ctx, "q8_0" if cache.startswith("turbo") else cache, cache)


# -- fit ---------------------------------------------------------------------------------------

def test_quality_order_puts_q8_0_k_pairs_before_symmetric_turbo_on_high_gqa(monkeypatch):
    configs = [("turbo4", "turbo4"), ("q8_0", "turbo3"), ("f16", "f16"), ("q8_0", "q4_0")]
    assert fit.quality_order(configs, gqa_ratio=4)[0] == ("f16", "f16")
    monkeypatch.setitem(fit.KLD_TABLE, ("turbo4", "turbo4"), 0.001)   # better than q8_0/turbo3 on its own
    assert fit.quality_order(configs, gqa_ratio=4).index(("turbo4", "turbo4")) == 1
    assert fit.quality_order(configs, gqa_ratio=7)[-1] == ("turbo4", "turbo4")


def run_fit(*args):
    return subprocess.run([sys.executable, "-m", "pyturbo.fit", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=120)


@pytest.fixture(scope="module")
def header_70b(tmp_path_factory):
    return write_header(tmp_path_factory.mktemp("fit") / "70b.gguf", n_layer=80, n_embd=8192, n_head=64,
                        n_head_kv=8, head=128, n_ff=28672, n_vocab=128256, n_ctx_train=131072)


def test_fit_cli_gives_320_kib_per_token_of_f16_kv_on_a_70b_shape(header_70b):
    done = run_fit(header_70b, "--ctx", 8192, "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    f16 = next(r for r in plan["results"] if (r["type_k"], r["type_v"]) == ("f16", "f16"))
    assert f16["kv_k"] + f16["kv_v"] == 80 * 2 * 8 * 128 * 2 * 8192 == 320 * KiB * 8192


def test_fit_cli_finds_the_largest_context_that_fits(header_70b, tmp_path):
    done = run_fit(header_70b, "--memory", "48GiB", "--weights", "q4_K_M", "--json", "--plot", tmp_path / "p.png")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    budget = 48 * GiB
    for r in plan["results"]:
        if r["n_ctx"] and r["n_ctx"] < plan["n_ctx_train"]:
            assert r["total"] <= budget
            bigger = memory.estimate(header_70b, r["n_ctx"] + 256, r["type_k"], r["type_v"], weight_quant="q4_K_M",
                                     n_ubatch=r["n_ubatch"])
            assert bigger.total > budget
    ranked = [r["n_ctx"] for r in plan["results"]]
    assert ranked[0] < ranked[-1]                      # f16/f16 reaches less than turbo2/turbo2
    assert plan["recommendation"]["reason"]
    assert set(plan["what_if"]) == set(WEIGHT_QUANTS)
    assert (tmp_path / "p.png").stat().st_size > 0


def test_fit_cli_markdown_has_the_table_what_if_and_a_recommendation(header_70b):
    done = run_fit(header_70b, "--memory", "64GiB", "--cache-k", "q8_0", "--cache-v", "q8_0,turbo3")
    assert done.returncode == 0, done.stderr
    assert "| q8_0/q8_0 |" in done.stdout and "| q8_0/turbo3 |" in done.stdout
    assert "What if" in done.stdout and "q2_K" in done.stdout
    assert done.stdout.count("Recommendation:") == 1


@pytest.mark.parametrize("args, message", [
    (["--memory", "16 gigs"], "invalid size"),
    ([], "give a memory budget"),
    (["--ctx", "4096", "--cache-k", "nope"], "unsupported cache type"),
    (["-m", "16GiB"], "two models"),                  # -m is the model, as in llama.cpp and pyturbo.run
])
def test_fit_cli_errors_are_one_line_and_exit_code_2(header_70b, args, message):
    done = run_fit(header_70b, *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


def test_fit_cli_takes_the_model_from_m_as_llama_cpp_does(header_70b, capsys):
    assert fit.main(["-m", str(header_70b), "--memory", "16GiB", "--json"]) == 0
    by_flag = json.loads(capsys.readouterr().out)
    assert fit.main([str(header_70b), "--memory", "16GiB", "--json"]) == 0
    assert by_flag == json.loads(capsys.readouterr().out)
    assert by_flag["model"] == str(header_70b) and by_flag["memory"] == 16 * GiB


@pytest.mark.parametrize("args, message", [
    (["--memory", "16GiB"], "give a GGUF file"),
    (["-m", "16GiB", "--ctx", "4096"], "16GiB"),       # a model that is not there, not a budget
])
def test_fit_cli_without_a_model_file_is_a_one_line_error(args, message):
    done = run_fit(*args)
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


def test_fit_warns_when_its_recommendation_has_a_kld_above_0_1(tmp_path):
    # An 8B shape in 8 GiB at q4_K_M weights: only a 2-bit cache reaches the training context.
    path = write_header(tmp_path / "8b.gguf", n_layer=32, n_embd=4096, n_head=32, n_head_kv=8, head=128,
                        n_ff=14336, n_vocab=128256, n_ctx_train=131072)
    done = run_fit(path, "--memory", "8GiB", "--weights", "q4_K_M")
    assert done.returncode == 0, done.stderr
    recommendation = next(line for line in done.stdout.splitlines() if line.startswith("Recommendation:"))
    kld = fit.KLD_TABLE[tuple(recommendation.split()[1].rstrip(":").split("/"))]
    assert kld > fit.KLD_WARNING
    warnings = [line for line in done.stdout.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and f"KLD of {kld:g}" in warnings[0]
    plan = json.loads(run_fit(path, "--memory", "8GiB", "--weights", "q4_K_M", "--json").stdout)
    assert plan["recommendation"]["warning"] == warnings[0][len("Warning: "):]


def test_fit_does_not_warn_about_a_good_recommendation(header_70b):
    plan = json.loads(run_fit(header_70b, "--memory", "64GiB", "--weights", "q4_K_M", "--json").stdout)
    assert plan["recommendation"]["type_k"] is not None
    assert fit.KLD_TABLE[plan["recommendation"]["type_k"], plan["recommendation"]["type_v"]] <= fit.KLD_WARNING
    assert plan["recommendation"]["warning"] is None
