"""Weight quantization (pyturbo.weights, python -m pyturbo.quantize), quant selection on load (Model(quant=), run --quant), pyturbo.info."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pyturbo
from pyturbo import info as info_tool
from pyturbo import run as run_tool
from pyturbo._cli import run_main
from pyturbo.assets import default_text
from tiny_gguf import write_tiny_llama
from pyturbo import weights
from pyturbo.gguf import read_gguf_header
from pyturbo.imatrix import read_imatrix
from pyturbo.quantize import PROG, main
from pyturbo.upstream.quant_presets import weight_bytes_as
from pyturbo.weights import (
    WEIGHT_TYPES, QuantizeError, WeightTypeError, cached_quant_path, quant_in_name, quantize, select_quant,
    weight_type,
)


ROOT = Path(__file__).resolve().parent.parent
LLAMA_CPP = ROOT / "vendor" / "llama.cpp"
THREADS = 2


def run_cli(capsys, argv):
    """A command's exit code, stdout and stderr, run the way `python -m` runs it (run_main)."""
    code = run_main(PROG, main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# -- fast: the tiny generated model (all f32) -----------------------------------------------------

@pytest.fixture(scope="module")
def tiny_q8_0(tiny_path, tmp_path_factory):
    dst = tmp_path_factory.mktemp("tiny-quants") / "tiny-Q8_0.gguf"
    return quantize(tiny_path, dst, "q8_0", threads=THREADS, progress=False)


def test_quantize_returns_a_result_with_the_types_and_sizes(tiny_path, tmp_path):
    assert pyturbo.QuantizeError is QuantizeError
    result = quantize(tiny_path, tmp_path / "tiny-f16.gguf", "f16", threads=THREADS, progress=False)
    assert isinstance(result, pyturbo.QuantizeResult) and result.type == "F16" and result.src_type == "F32"
    assert result.dst_bpw == pytest.approx(16.0, abs=0.5) and result.src_bpw == pytest.approx(32.0, abs=0.5)


def test_weight_type_names_are_llama_quantizes_in_any_case():
    assert weight_type("q4_k_m") == weight_type("Q4_K_M") == weight_type("q4_K") == WEIGHT_TYPES["Q4_K_M"]
    assert weight_type("f16").ftype == 1 and weight_type("Q8_0").ftype == 7
    for name in WEIGHT_TYPES:
        assert weight_type(name.lower()).name == name


def test_weight_types_match_the_pinned_llama_quantize_and_llama_h():
    # The table is llama-quantize's QUANT_OPTIONS; its ftype ids are llama.h's enum llama_ftype.
    quantize_cpp = (LLAMA_CPP / "tools" / "quantize" / "quantize.cpp").read_text()
    options = dict(re.findall(r'\{\s*"(\w+)",\s*(LLAMA_FTYPE_\w+),', quantize_cpp))
    enum = {name: int(value) for name, value in
            re.findall(r"^\s*(LLAMA_FTYPE_\w+)\s*=\s*(\d+),", (LLAMA_CPP / "include" / "llama.h").read_text(), re.M)}
    aliases = {"Q3_K", "Q4_K", "Q5_K"}
    assert set(WEIGHT_TYPES) == set(options) - aliases
    for name, ftype_name in options.items():
        assert weight_type(name).ftype == enum[ftype_name], name


def test_turbo_type_is_refused_as_a_weight_type(tiny_path, tmp_path):
    with pytest.raises(WeightTypeError, match="turbo3 is a KV-cache type.*cache_k"):
        quantize(tiny_path, tmp_path / "out.gguf", "turbo3")
    assert not (tmp_path / "out.gguf").exists()


def test_unknown_type_lists_the_valid_ones(tiny_path, tmp_path):
    with pytest.raises(WeightTypeError, match=r"unknown weight type 'q5_k_x'.*Q4_K_M.*Q8_0"):
        quantize(tiny_path, tmp_path / "out.gguf", "q5_k_x")


def test_f32_model_quantizes_to_q8_0_that_loads_and_generates(tiny_q8_0, tiny_path):
    assert tiny_q8_0.type == "Q8_0" and tiny_q8_0.src_type == "F32"
    assert tiny_q8_0.n_tensors == len(read_gguf_header(tiny_path).tensors)
    assert tiny_q8_0.src_bpw == pytest.approx(32.0)
    # Every matrix is q8_0 (34 bytes per 32 weights); the f32 norms are a tiny share.
    assert tiny_q8_0.dst_bpw == pytest.approx(8.5, rel=0.03)
    assert tiny_q8_0.dst_bytes < tiny_q8_0.src_bytes / 3
    # q8_0 weights keep the f32 model's greedy tokens
    with pyturbo.Model(tiny_path) as model, model.context(n_ctx=64, n_threads=1) as ctx:
        reference = ctx.complete("the cat", max_tokens=4)
    with pyturbo.Model(tiny_q8_0.dst) as model, model.context(n_ctx=64, n_threads=1) as ctx:
        assert ctx.complete("the cat", max_tokens=4) == reference


def test_requantizing_needs_the_flag_and_says_why(tiny_q8_0, tmp_path):
    with pytest.raises(QuantizeError, match=r"already quantized \(Q8_0.*second rounding error.*allow_requantize"):
        quantize(tiny_q8_0.dst, tmp_path / "q4.gguf", "Q4_0", progress=False)
    assert not (tmp_path / "q4.gguf").exists()
    # pure: every matrix Q4_0 (18 bytes per 32 weights), none of the mixture's q8_0 output.
    result = quantize(tiny_q8_0.dst, tmp_path / "q4.gguf", "Q4_0", allow_requantize=True,
                              threads=THREADS, pure=True, progress=False)
    assert result.src_type == "Q8_0" and result.dst_bpw == pytest.approx(4.5, rel=0.03)


def test_missing_source_is_model_not_found(tmp_path):
    with pytest.raises(pyturbo.ModelNotFoundError, match="source model not found"):
        quantize(tmp_path / "nope.gguf", tmp_path / "out.gguf", "q8_0")


def test_existing_destination_needs_overwrite(tiny_path, tmp_path):
    dst = tmp_path / "out.gguf"
    dst.write_bytes(b"keep me")
    with pytest.raises(QuantizeError, match=r"destination exists.*overwrite=True \(--force\)"):
        quantize(tiny_path, dst, "q8_0")
    assert dst.read_bytes() == b"keep me"
    quantize(tiny_path, dst, "q8_0", overwrite=True, threads=THREADS, progress=False)
    assert read_gguf_header(dst).metadata["general.file_type"] == 7


@pytest.mark.parametrize("case, pattern", [
    ("turbo", "turbo3 is a KV-cache type"),
    ("unknown", "unknown weight type 'Q9_9'"),
    ("requantize", "already quantized"),
    ("missing", "source model not found"),
    ("existing", "destination exists"),
])
def test_cli_errors_are_one_line_with_exit_code_2(case, pattern, capsys, tiny_path, tiny_q8_0, tmp_path):
    existing = tmp_path / "existing.gguf"
    existing.write_bytes(b"x")
    argv = {
        "turbo": [tiny_path, tmp_path / "a.gguf", "turbo3"],
        "unknown": [tiny_path, tmp_path / "a.gguf", "Q9_9"],
        "requantize": [tiny_q8_0.dst, tmp_path / "a.gguf", "q4_0"],
        "missing": [tmp_path / "missing.gguf", tmp_path / "a.gguf", "q8_0"],
        "existing": [tiny_path, existing, "q8_0"],
    }[case]
    code, out, err = run_cli(capsys, argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"{PROG}: error: ") and pattern in err


def test_cli_error_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pyturbo.quantize", str(tmp_path / "missing.gguf"),
                           str(tmp_path / "out.gguf"), "q8_0"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0


def test_cli_shows_tensor_progress_and_a_summary(capsys, tiny_path, tmp_path):
    n_tensors = len(read_gguf_header(tiny_path).tensors)
    code, out, err = run_cli(capsys, [tiny_path, tmp_path / "tiny-f16.gguf", "F16", "-t", THREADS])
    assert code == 0
    assert f"{n_tensors}/{n_tensors}" in err
    assert re.search(r"\(F32, [\d.]+ MiB, 32\.00 bpw\) -> tiny-f16\.gguf \(F16, [\d.]+ MiB, 1[56]\.\d\d bpw\)", out)
    code, out, _ = run_cli(capsys, [tiny_path, tmp_path / "tiny-f16.gguf", "F16", "--force", "--json"])
    record = json.loads(out)
    assert record["type"] == "F16" and record["n_tensors"] == n_tensors and record["dst_bytes"] > 0


def write_legacy_imatrix(path: Path, entries: dict) -> None:
    """llama-imatrix's old .dat layout: count, then (name, calls, values) per tensor, sums scaled by calls."""
    with open(path, "wb") as f:
        f.write(struct.pack("<i", len(entries)))
        for name, values in entries.items():
            f.write(struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", 10, len(values)))
            f.write((np.asarray(values, dtype=np.float32) * 10).tobytes())


def test_gguf_imatrix_means_are_sums_over_counts(tmp_path):
    from gguf import GGUFWriter

    writer = GGUFWriter(str(tmp_path / "m.imatrix.gguf"), "imatrix")
    writer.add_tensor("blk.0.ffn_up.weight.in_sum2", np.array([[2.0, 4.0], [9.0, 3.0]], dtype=np.float32))
    writer.add_tensor("blk.0.ffn_up.weight.counts", np.array([[2.0], [0.0]], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    # Two experts: the first seen twice, the second never (its weights default to 1).
    assert read_imatrix(tmp_path / "m.imatrix.gguf")["blk.0.ffn_up.weight"].tolist() == [1.0, 2.0, 1.0, 1.0]


def test_an_imatrix_reaches_llama_cpp(tiny_path, tmp_path):
    header = read_gguf_header(tiny_path)
    rng = np.random.default_rng(1)
    entries = {t.name: rng.uniform(0.01, 10.0, t.shape[0]).astype(np.float32)
               for t in header.tensors if len(t.shape) == 2 and t.name.startswith("blk.")}
    write_legacy_imatrix(tmp_path / "tiny.imatrix", entries)
    loaded = read_imatrix(tmp_path / "tiny.imatrix")
    assert loaded.keys() == entries.keys()
    assert all(np.allclose(loaded[name], entries[name], rtol=1e-6) for name in entries)
    plain = quantize(tiny_path, tmp_path / "plain.gguf", "q4_0", threads=THREADS, progress=False)
    weighted = quantize(tiny_path, tmp_path / "weighted.gguf", "q4_0", threads=THREADS,
                                imatrix=tmp_path / "tiny.imatrix", progress=False)
    # Same types and sizes; the importance weights change which codes the blocks get.
    assert plain.dst_bytes == weighted.dst_bytes
    assert Path(plain.dst).read_bytes() != Path(weighted.dst).read_bytes()


def test_llama_cpp_refusal_comes_back_with_its_reason_and_leaves_no_file(tmp_path):
    # IQ2_XXS needs an importance matrix for rows of 256 values (the tiny default of 128 falls back).
    source = write_tiny_llama(tmp_path / "tiny-256.gguf", n_embd=256, n_head=4, n_head_kv=2, n_ff=512)
    with pytest.raises(QuantizeError, match=r"requires an imatrix.*--imatrix FILE"):
        quantize(source, tmp_path / "iq2.gguf", "IQ2_XXS", threads=THREADS, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-256.gguf"]
    header = read_gguf_header(source)
    write_legacy_imatrix(tmp_path / "tiny.imatrix", {t.name: np.ones(t.shape[0], dtype=np.float32)
                                                     for t in header.tensors if len(t.shape) == 2})
    result = quantize(source, tmp_path / "iq2.gguf", "IQ2_XXS", threads=THREADS,
                              imatrix=tmp_path / "tiny.imatrix", progress=False)
    assert read_gguf_header(result.dst).metadata["general.file_type"] == 19 and result.dst_bpw < 4


# -- picking a quant when loading ----------------------------------------------------------------

@pytest.fixture(scope="module")
def quant_dir(tiny_path, tiny_q8_0, tmp_path_factory):
    """A folder of quants of the tiny model named as on model hubs (Q8_0, Q4_0), no 16/32-bit file."""
    folder = tmp_path_factory.mktemp("quant-dir")
    shutil.copy(tiny_q8_0.dst, folder / "tiny-llama-Q8_0.gguf")
    quantize(tiny_path, folder / "tiny-llama.q4_0.gguf", "Q4_0", threads=THREADS, progress=False)
    return folder


def test_quant_is_read_from_hub_style_file_names():
    assert quant_in_name("Llama-3-8B-Instruct-Q4_K_M.gguf") == "Q4_K_M"
    assert quant_in_name("mistral.q8_0.gguf") == "Q8_0"
    assert quant_in_name("ggml-model-f16.gguf") == "F16"
    assert quant_in_name("model-IQ4_XS.gguf") == "IQ4_XS"
    assert quant_in_name("model-Q4_K.gguf") == "Q4_K_M"
    assert quant_in_name("model.gguf") is None


def test_model_picks_the_asked_quant_from_a_folder_in_any_case(quant_dir):
    with pyturbo.Model(quant_dir, quant="q4_0") as model:
        assert model.path.name == "tiny-llama.q4_0.gguf"
    assert select_quant(quant_dir, "Q8_0").name == "tiny-llama-Q8_0.gguf"


def test_model_picks_the_asked_quant_from_a_glob_pattern(quant_dir):
    with pyturbo.Model(quant_dir / "tiny-llama*.gguf", quant="Q8_0") as model:
        assert model.path.name == "tiny-llama-Q8_0.gguf"


def test_missing_quant_error_lists_what_is_available(quant_dir):
    with pytest.raises(pyturbo.ModelNotFoundError,
                       match=r"no Q6_K file.*no 16/32-bit GGUF.*tiny-llama-Q8_0\.gguf \(Q8_0\).*\(Q4_0\)"):
        pyturbo.Model(quant_dir, quant="q6_k")
    with pytest.raises(WeightTypeError):
        select_quant(quant_dir, "turbo3")


def test_a_16_or_32_bit_model_is_quantized_once_into_the_cache(tiny_path, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTURBO_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "tiny-llama.gguf"
    shutil.copy(tiny_path, source)
    with pyturbo.Model(source, quant="q8_0") as model:
        made = model.path
    assert made.parent == tmp_path / "cache" / "quants"
    assert re.fullmatch(r"tiny-llama-[0-9a-f]{16}-Q8_0\.gguf", made.name)
    assert made == cached_quant_path(source, weight_type("Q8_0"))
    assert read_gguf_header(made).metadata["general.file_type"] == 7

    def must_not_run(*args, **kwargs):
        raise AssertionError("the cached quant was made again")

    monkeypatch.setattr(weights, "quantize", must_not_run)
    with pyturbo.Model(source, quant="Q8_0") as model:
        assert model.path == made
    # Another source (other bytes) gets its own entry: the key is the content, not the name.
    other = tmp_path / "other" / "tiny-llama.gguf"
    other.parent.mkdir()
    other.write_bytes(source.read_bytes()[:-4] + b"\0\0\0\0")
    assert cached_quant_path(other, weight_type("Q8_0")) != made


def test_a_file_of_the_asked_quant_loads_as_is_and_another_quant_is_refused(tiny_q8_0):
    assert select_quant(tiny_q8_0.dst, "q8_0") == Path(tiny_q8_0.dst)
    with pytest.raises(pyturbo.ModelNotFoundError, match="does not requantize"):
        select_quant(tiny_q8_0.dst, "q4_0")


def test_run_quant_flag_loads_the_picked_file(quant_dir, capsys):
    code = run_main(run_tool.PROG, run_tool.main,
                    [str(quant_dir), "--quant", "Q4_0", "-p", "the cat", "-n", "3", "-c", "64", "-t", "1", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["n_prompt"] > 0
    code = run_main(run_tool.PROG, run_tool.main, [str(quant_dir), "--quant", "Q6_K", "-n", "1"])
    _, err = capsys.readouterr()
    assert code == 2 and "no Q6_K file" in err and err.count("\n") == 1


# -- pyturbo.info ---------------------------------------------------------------------------------

def test_info_of_the_tiny_model(tiny_path, capsys):
    assert run_main(info_tool.PROG, info_tool.main, [str(tiny_path), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["architecture"] == "llama" and record["file_type"] == "F32"
    assert (record["n_layer"], record["n_head"], record["n_head_kv"]) == (2, 2, 1)
    assert (record["head_size_k"], record["head_size_v"], record["n_ctx_train"]) == (64, 64, 2048)
    assert record["bits_per_weight"] == pytest.approx(32.0)
    assert record["tensor_types"] == {"F32": len(read_gguf_header(tiny_path).tensors)}
    assert record["chat_template"] is False and record["sliding_window"] == 0
    # Per token: 2 layers x (K + V) x one 64-value KV head.
    per_row = {"f16": 64 * 2, "q8_0": 64 // 32 * 34, "turbo3": 64 // 64 * pyturbo.cache_type("turbo3").type_size}
    assert record["kv_bytes_per_token"] == {name: 2 * 2 * n for name, n in per_row.items()}
    assert run_main(info_tool.PROG, info_tool.main, [str(tiny_path)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^file type +F32, 32\.00 bits per weight$", text, re.M)
    assert re.search(r"^KV per token +f16 512 B, q8_0 272 B", text, re.M)


def test_info_of_a_missing_file_is_one_line(tmp_path, capsys):
    assert run_main(info_tool.PROG, info_tool.main, [str(tmp_path / "nope.gguf")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


# -- slow: real SmolLM2 weights, made 16-bit, then quantized ----------------------------------------

SMOL_QUANTS = ("Q8_0", "Q6_K", "Q4_K_M", "Q2_K")  # most to least precise


@pytest.fixture(scope="session")
def smol_f16(smol_path, tmp_path_factory):
    """SmolLM2-135M as a genuine 16-bit GGUF, made with the CLI from the Q4_1 release (no hub needed)."""
    dst = tmp_path_factory.mktemp("smol") / "smol-f16.gguf"
    code = run_main(PROG, main, [str(smol_path), str(dst), "F16", "--allow-requantize", "-t", str(THREADS)])
    assert code == 0
    return dst


@pytest.fixture(scope="session")
def smol_quants(smol_f16):
    return {name: quantize(smol_f16, smol_f16.with_name(f"smol-{name}.gguf"), name, threads=THREADS,
                                   progress=False)
            for name in SMOL_QUANTS}


def score(path: Path, tokens: list) -> np.ndarray:
    """Log-probabilities of every position of `tokens` under the model at `path`."""
    with pyturbo.Model(path) as model, model.context(n_ctx=256, n_threads=THREADS) as ctx:
        logits = ctx.score(tokens, 0).astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


@pytest.mark.slow
def test_smol_f16_is_sixteen_bit(smol_f16):
    record = info_tool.inspect(smol_f16)
    assert record.file_type == "F16" and record.bits_per_weight == pytest.approx(16.0, abs=0.01)
    assert (record.n_layer, record.n_head, record.n_head_kv, record.head_size_k) == (30, 9, 3, 64)
    assert (record.n_ctx_train, record.chat_template, record.tokenizer) == (8192, True, "gpt2 (smollm)")
    assert record.kv_bytes_per_token["f16"] == 30 * 2 * 3 * 64 * 2


@pytest.mark.slow
def test_smol_sizes_are_ordered_and_match_bits_per_weight_arithmetic(smol_f16, smol_quants):
    f16_size = smol_f16.stat().st_size
    sizes = [smol_quants[name].dst_bytes for name in SMOL_QUANTS]
    assert f16_size > sizes[0] > sizes[1] > sizes[2] > sizes[3]
    for name, result in smol_quants.items():
        header = read_gguf_header(result.dst)
        # Each tensor's weights x its type's bits per weight, with the type sizes from ggml itself.
        expected_bits = 0.0
        for tensor in header.tensors:
            block = pyturbo._native.ggml.ggml_blck_size(tensor.type_id)
            block_bytes = pyturbo._native.ggml.ggml_type_size(tensor.type_id)
            expected_bits += tensor.n_elements * 8.0 * block_bytes / block
        assert result.dst_bytes == pytest.approx(expected_bits / 8, rel=0.03), name
        assert result.dst_bpw == pytest.approx(expected_bits / result.n_params, rel=1e-9), name
        # pyturbo.memory's model of llama-quantize's type choices predicts the same weight bytes.
        preset = name[0].lower() + name[1:]  # pyturbo.memory spells them q8_0, q6_K, q4_K_M, q2_K
        assert weight_bytes_as(read_gguf_header(smol_f16), preset) == pytest.approx(expected_bits / 8, rel=0.03), name
    # q8_0 is one type throughout: 34 bytes per 32 weights.
    assert smol_quants["Q8_0"].dst_bpw == pytest.approx(8.5, rel=0.03)


@pytest.mark.slow
def test_each_smol_quant_loads_and_generates(smol_quants):
    for name, result in smol_quants.items():
        with pyturbo.Model(result.dst) as model, model.context(n_ctx=128, n_threads=THREADS) as ctx:
            text = ctx.complete("The capital of France is", 8)
            assert ctx.last_stats.n_gen > 0 and text.strip(), name


@pytest.mark.slow
def test_q8_0_greedy_output_matches_f16(smol_f16, smol_quants):
    prompt = "The capital of France is"

    def greedy_tokens(path):
        with pyturbo.Model(path) as model, model.context(n_ctx=128, n_threads=THREADS) as ctx:
            return ctx.tokenize(ctx.complete(prompt, 8), add_special=False)

    reference = greedy_tokens(smol_f16)
    assert len(reference) >= 6
    assert greedy_tokens(smol_quants["Q8_0"].dst)[:6] == reference[:6]


@pytest.mark.slow
def test_kld_against_f16_orders_the_quants(smol_f16, smol_quants):
    with pyturbo.Model(smol_f16) as model, model.context(n_ctx=256, n_threads=1) as ctx:
        tokens = ctx.tokenize(default_text())[:200]
    reference = score(smol_f16, tokens)
    klds = {}
    for name in SMOL_QUANTS:
        logp = score(smol_quants[name].dst, tokens)
        klds[name] = float((np.exp(reference) * (reference - logp)).sum(axis=1).mean())
    print("KLD vs F16 over 200 tokens:", klds)
    values = [klds[name] for name in SMOL_QUANTS]
    assert 0 < values[0] < values[1] < values[2] < values[3], klds
