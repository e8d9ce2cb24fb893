"""python -m pyturbo.convert's refusals and pyturbo.hf_checkpoint's checks, without the convert extra:
each bad input is one line on stderr, exit code 2, and leaves no file. The conversions themselves (with
torch and transformers) are in test_convert_checkpoint.py."""

from __future__ import annotations

import filecmp
import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import pyturbo
from pyturbo import hf_checkpoint
from pyturbo._cli import run_main
from pyturbo.convert import PROG, main, output_paths
from pyturbo.hf_checkpoint import (CheckpointError, converter_dir, failure_reason, inspect_checkpoint,
                                   known_architectures, resolve_checkpoint)

ROOT = Path(__file__).resolve().parent.parent
PINNED_TREE = ROOT / "vendor" / "llama.cpp"


def write_safetensors(path: Path, tensors: dict) -> None:
    """A safetensors file of zeros: tensors maps a name to its shape (float16)."""
    header, offset = {}, 0
    for name, shape in tensors.items():
        size = 2
        for dim in shape:
            size *= dim
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(offset))


def fake_checkpoint(folder: Path, architecture: str = "LlamaForCausalLM", config: bool = True,
                    tokenizer: bool = True) -> Path:
    """A folder shaped like a checkpoint (no real weights): enough for the checks before conversion."""
    folder.mkdir(parents=True, exist_ok=True)
    if config:
        (folder / "config.json").write_text(json.dumps({"architectures": [architecture], "hidden_size": 64}))
    write_safetensors(folder / "model.safetensors", {"model.embed_tokens.weight": (32, 64),
                                                     "model.norm.weight": (64,)})
    if tokenizer:
        (folder / "tokenizer.json").write_text("{}")
    return folder


def run_cli(capsys, argv):
    code = run_main(PROG, main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def files_in(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir())


def test_the_converter_is_shipped_as_the_pinned_tree_has_it():
    converter = converter_dir()
    for relative in ("convert_hf_to_gguf.py", "conversion/__init__.py", "conversion/base.py",
                     "conversion/llama.py", "conversion/qwen.py", "gguf-py/gguf/__init__.py",
                     "gguf-py/gguf/gguf_writer.py", "LICENSE"):
        assert (converter / relative).is_file(), relative
    assert any((converter / "models" / "templates").glob("*.jinja"))
    if PINNED_TREE.is_dir() and converter != PINNED_TREE:
        # an installed copy: byte for byte the materialized pinned tree's files, not a rewrite
        for relative in ("convert_hf_to_gguf.py", "conversion/base.py", "gguf-py/gguf/constants.py"):
            assert filecmp.cmp(converter / relative, PINNED_TREE / relative, shallow=False), relative


def test_known_architectures_are_the_pinned_converters_table():
    known = known_architectures(converter_dir())
    assert {"LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Gemma3ForCausalLM",
            "MistralForCausalLM"} <= known
    assert "FooBarForCausalLM" not in known and len(known) > 100


def test_a_checkpoint_is_inspected_without_torch(tmp_path):
    checkpoint = inspect_checkpoint(fake_checkpoint(tmp_path / "tiny"))
    assert checkpoint.architecture == "LlamaForCausalLM" and checkpoint.name == "tiny"
    assert checkpoint.n_weights == 32 * 64 + 64 and checkpoint.tokenizer_files == ("tokenizer.json",)
    assert checkpoint.output_bytes("f16") == 2 * checkpoint.n_weights


def test_a_huggingface_hub_cache_folder_stands_for_its_snapshot(tmp_path):
    cache = tmp_path / "hub" / "models--org--tiny-model"
    snapshot = fake_checkpoint(cache / "snapshots" / "0123abcd")
    fake_checkpoint(cache / "snapshots" / "4567ef01")
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text("0123abcd\n")
    assert resolve_checkpoint(cache) == snapshot
    assert inspect_checkpoint(cache).name == "tiny-model"
    assert inspect_checkpoint(snapshot).name == "tiny-model"
    (cache / "refs" / "main").unlink()
    with pytest.raises(CheckpointError, match="2 snapshots and no refs/main"):
        resolve_checkpoint(cache)


def test_output_names_follow_the_outtype_and_each_quant():
    assert output_paths("tiny", None, "f16", ["Q4_K_M"]) == (Path("tiny-F16.gguf"), [Path("tiny-Q4_K_M.gguf")])
    assert output_paths("x", "out/m-bf16.gguf", "bf16", ["Q8_0"]) == (Path("out/m-bf16.gguf"),
                                                                       [Path("out/m-Q8_0.gguf")])
    assert output_paths("x", "m.gguf", "f16", ["Q8_0"])[1] == [Path("m-Q8_0.gguf")]


def test_converter_failures_become_one_line():
    assert "does not support the architecture Foo" in failure_reason(
        "INFO:hf-to-gguf:Loading model: x\nERROR:hf-to-gguf:Model Foo is not supported\n")
    assert failure_reason("Traceback (most recent call last):\n  File ...\nOSError: [Errno 28] No space left on "
                          "device\n").startswith("the disk filled up")
    assert failure_reason("Traceback (most recent call last):\n  File \"x\"\nKeyError: 'hidden_size'\n") == \
        "KeyError: 'hidden_size'"
    # a full disk as Python's buffered writer reports it: a short write, told apart by the space left
    short_write = "Traceback (most recent call last):\nOSError: 32768 requested and 26320 written\n"
    assert failure_reason(short_write, free_bytes=0).startswith("the disk filled up")
    assert failure_reason(short_write, free_bytes=10 << 30) == "OSError: 32768 requested and 26320 written"


@pytest.mark.parametrize("case, pattern", [
    ("missing", r"no such folder: .*nowhere"),
    ("file", r"is a file, not a Hugging Face model folder"),
    ("no-config", r"is not a Hugging Face model folder: it has no config\.json"),
    ("unknown-arch", r"the pinned llama\.cpp converter does not know the architecture FooBarForCausalLM"),
    ("no-tokenizer", r"has no tokenizer \(none of tokenizer\.json, tokenizer\.model"),
    ("no-weights", r"has no weights"),
    ("exists", r"the output exists: .*out\.gguf; pass --force"),
    ("full-disk", r"not enough disk space for out\.gguf"),
    ("no-extra", r"converting needs torch \(the convert extra\): pip install \"pyturbo\[convert\]\""),
    ("quant-after-q8_0", r"--quant quantizes the converted file: convert to f16 or bf16"),
    ("bad-quant", r"unknown weight type|turbo3"),
    ("bad-memory", r"invalid size 'lots'"),
])
def test_each_bad_input_is_one_line_exit_2_and_leaves_no_file(case, pattern, tmp_path, capsys, monkeypatch):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "out.gguf"
    hf_dir = fake_checkpoint(tmp_path / "model")
    extra = []
    if case == "missing":
        hf_dir = tmp_path / "nowhere"
    elif case == "file":
        hf_dir = hf_dir / "config.json"
    elif case == "no-config":
        hf_dir = fake_checkpoint(tmp_path / "no-config", config=False)
    elif case == "unknown-arch":
        hf_dir = fake_checkpoint(tmp_path / "foobar", architecture="FooBarForCausalLM")
    elif case == "no-tokenizer":
        hf_dir = fake_checkpoint(tmp_path / "no-tokenizer", tokenizer=False)
    elif case == "no-weights":
        (hf_dir / "model.safetensors").unlink()
    elif case == "exists":
        out.write_bytes(b"keep me")
    elif case == "full-disk":
        monkeypatch.setattr(hf_checkpoint.shutil, "disk_usage", lambda path: type("U", (), {"free": 1000})())
    elif case == "no-extra":
        monkeypatch.setattr(hf_checkpoint, "missing_converter_packages", lambda: ["torch"])
    elif case == "quant-after-q8_0":
        extra = ["--outtype", "q8_0", "--quant", "q4_K_M"]
    elif case == "bad-quant":
        extra = ["--quant", "turbo3"]
    elif case == "bad-memory":
        extra = ["--memory", "lots"]
    before = files_in(out_dir)
    code, stdout, stderr = run_cli(capsys, [hf_dir, "-o", out, *extra])
    assert code == 2, (stdout, stderr)
    assert stderr.count("\n") == 1 and stderr.startswith(f"{PROG}: error: "), stderr
    assert re.search(pattern, stderr), stderr
    assert files_in(out_dir) == before
    if case == "exists":
        assert out.read_bytes() == b"keep me"


def test_the_command_line_error_has_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pyturbo.convert", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"{PROG}: error: {tmp_path} is not a Hugging Face model folder: it has no config.json (a model page's "
        "files: config.json, *.safetensors, the tokenizer)"]


def test_errors_are_exported():
    assert issubclass(pyturbo.CheckpointError, pyturbo.PyturboError)
    assert issubclass(pyturbo.ConvertError, pyturbo.PyturboError)


def test_a_refusal_makes_no_output_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(hf_checkpoint.shutil, "disk_usage", lambda path: type("U", (), {"free": 1000})())
    code, _, stderr = run_cli(capsys, [fake_checkpoint(tmp_path / "model"), "-o", tmp_path / "new" / "sub" / "x.gguf"])
    assert code == 2 and "not enough disk space" in stderr
    assert not (tmp_path / "new").exists()


def test_a_file_the_header_readers_refuse_still_ends_with_run_it(tmp_path, capsys):
    from pyturbo.convert import report

    not_a_model = tmp_path / "x.gguf"
    not_a_model.write_bytes(b"GGUF" + bytes(20))
    lines = report(not_a_model, None).splitlines()
    assert lines == [f'Run it: python -m pyturbo.run {not_a_model} -p "Once upon a time"']
    assert capsys.readouterr().err.startswith(f"{PROG}: note: {not_a_model} is written, but pyturbo cannot describe it")
