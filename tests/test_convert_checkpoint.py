"""Hugging Face checkpoint -> GGUF -> quants -> turbo cache, end to end (python -m pyturbo.convert), on tiny
random llama and qwen2 checkpoints made here with transformers. Needs the convert extra (torch,
transformers, sentencepiece): skipped without it (`pytest -m "not convert"` leaves these out)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

for module in ("torch", "transformers", "sentencepiece"):
    pytest.importorskip(module, reason='the convert extra: pip install ".[convert]"')

import torch  # noqa: E402

import pyturbo  # noqa: E402
from pyturbo.hf_checkpoint import ConvertError, convert, inspect_checkpoint  # noqa: E402
from tiny_checkpoint import write_tiny_checkpoint  # noqa: E402

pytestmark = pytest.mark.convert

PROMPT = "The license grants you the freedom to"
N_GREEDY = 8          # greedy tokens compared with transformers
THREADS = 2


def hub_cache_layout(checkpoint: Path, cache: Path, repo: str) -> Path:
    """checkpoint's files laid out as huggingface_hub's cache keeps them: blobs, a snapshot of links, refs."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / "5b1d0c5f0e"
    (root / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, path in enumerate(sorted(checkpoint.iterdir())):
        blob = root / "blobs" / f"blob{i:04d}"
        blob.write_bytes(path.read_bytes())
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(snapshot.name)
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    base = tmp_path_factory.mktemp("hf")
    return {arch: write_tiny_checkpoint(base / f"tiny-{arch}", arch) for arch in ("llama", "qwen2")}


@pytest.fixture(scope="module")
def converted(checkpoints, tmp_path_factory):
    """Each checkpoint as F16, Q8_0 and Q4_K_M GGUFs: llama through the command line from a hub cache
    folder (the newcomer's path), qwen2 through the API."""
    out = tmp_path_factory.mktemp("gguf")
    files = {}
    cache = hub_cache_layout(checkpoints["llama"], tmp_path_factory.mktemp("hub"), "pyturbo-tests/tiny-llama")
    done = subprocess.run([sys.executable, "-m", "pyturbo.convert", str(cache), "-o", str(out / "tiny-llama-F16.gguf"),
                           "--quant", "q8_0,q4_K_M", "-t", str(THREADS), "--memory", "1GiB"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    files["llama"] = {t: out / f"tiny-llama-{t}.gguf" for t in ("F16", "Q8_0", "Q4_K_M")}
    result = convert(checkpoints["qwen2"], out / "tiny-qwen2-F16.gguf", "f16", progress=False)
    for t in ("Q8_0", "Q4_K_M"):
        pyturbo.weights.quantize(result.dst, out / f"tiny-qwen2-{t}.gguf", t, threads=THREADS, progress=False)
    files["qwen2"] = {t: out / f"tiny-qwen2-{t}.gguf" for t in ("F16", "Q8_0", "Q4_K_M")}
    return {"files": files, "cli": done}


def reference_model(checkpoint: Path):
    """The checkpoint in transformers, float32 on the CPU (its float16 weights exactly)."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    return model.eval()


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def gguf_greedy(ctx, prompt: list, n: int) -> list:
    logits = ctx.score(prompt)[-1]
    tokens = []
    for _ in range(n):
        tokens.append(int(np.argmax(logits)))
        logits = ctx.score_next([tokens[-1]])[-1]
    return tokens


def reference_greedy(model, prompt: list, n: int) -> list:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def test_the_command_line_ends_with_info_the_plan_and_run_it(converted):
    out = converted["cli"].stdout
    assert "tiny-llama-F16.gguf (F16" in out and "tiny-llama-Q4_K_M.gguf (Q4_K_M" in out
    assert re.search(r"^architecture +llama$", out, re.M) and re.search(r"^file type +Q4_K_M", out, re.M)
    assert re.search(r"^Recommendation for 1GiB: ", out, re.M)
    run_it = [line for line in out.splitlines() if line.startswith("Run it: python -m pyturbo.run ")]
    assert len(run_it) == 1 and "tiny-llama-Q4_K_M.gguf" in run_it[0]
    err = converted["cli"].stderr
    assert "convert F16" in err and "quantize Q8_0" in err and "quantize Q4_K_M" in err  # a bar per stage
    assert not list(Path(converted["files"]["llama"]["F16"]).parent.glob("*.partial"))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_f16_gguf_greedy_tokens_equal_the_checkpoints_own(arch, checkpoints, converted):
    with pyturbo.Model(converted["files"][arch]["F16"]) as model:
        assert model.n_layer == 2
        with model.context(n_ctx=256, cache_k="f16", cache_v="f16", n_threads=THREADS) as ctx:
            prompt = ctx.tokenize(PROMPT)
            ours = gguf_greedy(ctx, prompt, N_GREEDY)
    assert prompt[0] == 1 and len(prompt) > 4   # BOS, then the SentencePiece pieces
    assert ours == reference_greedy(reference_model(checkpoints[arch]), prompt, N_GREEDY)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_kld_against_transformers_is_tiny_for_f16_and_grows_with_the_quant(arch, checkpoints, converted):
    reference = reference_model(checkpoints[arch])
    klds = {}
    for weight_type, path in converted["files"][arch].items():
        with pyturbo.Model(path) as model, model.context(n_ctx=256, cache_k="f16", cache_v="f16",
                                                          n_threads=THREADS) as ctx:
            tokens = ctx.tokenize(PROMPT * 4)
            ours = log_softmax(ctx.score(tokens).astype(np.float64))
        with torch.no_grad():
            theirs = log_softmax(reference(torch.tensor([tokens])).logits[0].double().numpy())
        klds[weight_type] = float((np.exp(theirs) * (theirs - ours)).sum(axis=1).mean())
    assert klds["F16"] < 1e-4, klds
    assert klds["F16"] < klds["Q8_0"] < klds["Q4_K_M"] < 0.5, klds


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("weight_type", ["Q8_0", "Q4_K_M"])
def test_each_quant_loads_and_generates_with_a_q8_0_turbo3_cache(arch, weight_type, converted):
    with pyturbo.Model(converted["files"][arch][weight_type]) as model:
        with model.context(n_ctx=512, cache_k="q8_0", cache_v="turbo3", n_threads=THREADS) as ctx:
            text = ctx.complete(PROMPT, max_tokens=16)
            stats = ctx.last_stats
            assert ctx.cache_k_spec == "q8_0" and ctx.cache_v_spec == "turbo3"
            assert stats.n_gen == 16 or (stats.stop_reason == "eog" and stats.n_gen > 0), (stats, text)


def test_an_existing_output_is_replaced_only_with_force(checkpoints, tmp_path):
    out = tmp_path / "tiny.gguf"
    out.write_bytes(b"old")
    with pytest.raises(ConvertError, match="the output exists"):
        convert(checkpoints["llama"], out, progress=False)
    assert out.read_bytes() == b"old"
    convert(checkpoints["llama"], out, "q8_0", overwrite=True, progress=False)
    assert out.read_bytes()[:4] == b"GGUF"


def test_a_disk_that_fills_up_while_writing_is_one_line_and_leaves_no_file(checkpoints, tmp_path):
    # a tmpfs the size of the model's tensor data (mounting needs root): it passes the free-space check
    # before conversion, and the converter's header and vocabulary then do not fit beside the tensors
    small_disk = tmp_path / "small-disk"
    small_disk.mkdir()
    checkpoint = inspect_checkpoint(checkpoints["llama"])
    size = -(-checkpoint.output_bytes("f16") // 4096) * 4096
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(small_disk)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        done = subprocess.run([sys.executable, "-m", "pyturbo.convert", str(checkpoints["llama"]),
                               "-o", str(small_disk / "tiny.gguf")], capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith(
            "python -m pyturbo.convert: error: could not convert "), done.stderr
        assert "the disk filled up while writing" in done.stderr.strip().splitlines()[-1]
        assert list(small_disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small_disk)], check=True)

