"""A Hugging Face checkpoint folder, and its conversion to GGUF by the pinned llama.cpp's own converter.

    from pyturbo.hf_checkpoint import convert, inspect_checkpoint
    inspect_checkpoint("SmolLM2-135M-Instruct/")                 # -> Checkpoint, or CheckpointError
    convert("SmolLM2-135M-Instruct/", "smollm2-F16.gguf", "f16")  # -> ConvertResult

A checkpoint is the folder a model page downloads to: config.json, the weights
(*.safetensors, or pytorch_model*.bin) and a tokenizer. A huggingface_hub cache
folder (models--org--name, or its snapshots/<hash>) stands for its snapshot.

The converter is llama.cpp's convert_hf_to_gguf.py with its conversion/ package and
the gguf-py it puts first on sys.path, all from the pinned tree: `pip install .`
ships them under pyturbo/vendor/llama.cpp, a source checkout has them in
vendor/llama.cpp. It runs in a child process of this interpreter and needs the
`convert` extra (pip install "pyturbo[convert]"). The CLI is python -m pyturbo.convert.
"""

from __future__ import annotations

import ast
import collections
import importlib.util
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .errors import CheckpointError, ConvertError
from .units import format_size

# Where the converter lives, relative to the package (installed) or to the repository (source checkout).
CONVERTER_SUBDIR = Path("vendor") / "llama.cpp"
CONVERTER_SCRIPT = "convert_hf_to_gguf.py"
# What the pinned converter imports: torch and transformers at the top of convert_hf_to_gguf.py and
# conversion/base.py (every architecture), sentencepiece for tokenizer.model vocabularies, yaml in gguf-py.
# Module name -> the package that provides it.
CONVERTER_MODULES = {"torch": "torch", "transformers": "transformers", "sentencepiece": "sentencepiece",
                     "yaml": "pyyaml"}
EXTRA_INSTALL = 'pip install "pyturbo[convert]"  (from a checkout: pip install ".[convert]")'

# The converter's --outtype choices pyturbo offers, with the bytes one weight takes (q8_0: 34-byte
# blocks of 32) for sizing the output before it is written.
OUTTYPE_BYTES_PER_WEIGHT = {"f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32}
# Files a tokenizer comes in: Hugging Face's tokenizers (tokenizer.json, or GPT-2 style vocab.json +
# merges.txt), SentencePiece (tokenizer.model), WordPiece (vocab.txt), Mistral's tekken, tiktoken.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "tekken.json")
TOKENIZER_SUFFIXES = (".tiktoken",)
# The converter's output lines kept for its error: a traceback's end, or its ERROR line.
LOG_TAIL_LINES = 400
# Free bytes below which a failed write is put down to a full disk.
DISK_FULL_BYTES = 1 << 20
# A safetensors header longer than this is not one (the format's own limit is 100 MB).
MAX_SAFETENSORS_HEADER = 100_000_000
_SAFETENSORS_ITEM_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
                           "I16": 2, "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1}


def converter_dir() -> Path:
    """The folder holding the pinned convert_hf_to_gguf.py (installed, else the source checkout's)."""
    package = Path(__file__).resolve().parent
    for root in (package, package.parent):
        if (root / CONVERTER_SUBDIR / CONVERTER_SCRIPT).is_file():
            return root / CONVERTER_SUBDIR
    raise ConvertError(f"this pyturbo has no {CONVERTER_SCRIPT} (looked in {package / CONVERTER_SUBDIR}): "
                       "reinstall it with pip install . , which ships the pinned llama.cpp's converter")


def missing_converter_packages() -> list:
    """The packages of the `convert` extra that this interpreter lacks."""
    return [package for module, package in CONVERTER_MODULES.items() if importlib.util.find_spec(module) is None]


def known_architectures(converter: Path) -> "frozenset | None":
    """The Hugging Face architecture names the pinned converter converts to a text model: the keys of
    TEXT_MODEL_MAP in its conversion/__init__.py, read without importing it (that needs torch).
    None when the table is not found, so a moved pin falls back to the converter's own refusal."""
    try:
        tree = ast.parse((converter / "conversion" / "__init__.py").read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return None
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
        if isinstance(target, ast.Name) and target.id == "TEXT_MODEL_MAP" and node.value is not None:
            try:
                return frozenset(ast.literal_eval(node.value))
            except ValueError:
                return None
    return None


def resolve_checkpoint(path: "str | os.PathLike") -> Path:
    """The folder holding the checkpoint's files: path itself, or for a huggingface_hub cache folder
    (models--org--name) the snapshot its refs/main names, else its only snapshot."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"no such folder: {path}")
    if not path.is_dir():
        hint = (": it is a GGUF already (python -m pyturbo.info / pyturbo.quantize take it)"
                if path.suffix.lower() == ".gguf" else "")
        raise CheckpointError(f"{path} is a file, not a Hugging Face model folder{hint}")
    snapshots = path / "snapshots"
    if path.name.startswith("models--") and snapshots.is_dir():
        ref = path / "refs" / "main"
        if ref.is_file() and (snapshots / ref.read_text().strip()).is_dir():
            return snapshots / ref.read_text().strip()
        found = sorted(p for p in snapshots.iterdir() if p.is_dir())
        if len(found) == 1:
            return found[0]
        if not found:
            raise CheckpointError(f"{path} is a Hugging Face cache folder with no snapshot: download the model "
                                  "again (huggingface-cli download ORG/NAME)")
        raise CheckpointError(f"{path} holds {len(found)} snapshots and no refs/main: pass one of them, "
                              f"e.g. {found[-1]}")
    return path


def checkpoint_name(folder: Path) -> str:
    """A model's name from its folder: the repository name for a cache snapshot, else the folder's name."""
    for part in reversed(folder.parts):
        if part.startswith("models--"):
            return part.split("--")[-1]
    return folder.name


def safetensors_weights(path: Path) -> int:
    """The number of weights in one .safetensors file, from its JSON header."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is not a safetensors file (shorter than its header length)")
        (length,) = struct.unpack("<Q", head)
        if length > min(MAX_SAFETENSORS_HEADER, path.stat().st_size - 8):
            raise CheckpointError(f"{path} is not a safetensors file (header length {length})")
        try:
            header = json.loads(f.read(length))
        except ValueError:
            raise CheckpointError(f"{path} is not a safetensors file (its header is not JSON)") from None
    total = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        count = 1
        for dim in entry.get("shape", []):
            count *= int(dim)
        total += count
    return total


@dataclass(frozen=True)
class Checkpoint:
    """A checked Hugging Face checkpoint folder."""

    path: Path                  # the folder with config.json (a cache snapshot resolved)
    name: str                   # the model's name, for output file names
    architecture: str           # config.json's architectures[0] (or text_config's)
    weight_files: tuple         # the *.safetensors (or pytorch_model*.bin) files
    tokenizer_files: tuple
    n_weights: "int | None"     # from the safetensors headers; None for .bin checkpoints
    weight_bytes: int           # the weight files' size

    def output_bytes(self, outtype: str) -> int:
        """About what the GGUF of this checkpoint takes as outtype (the weights, not the header)."""
        if self.n_weights is None:
            return self.weight_bytes
        return int(self.n_weights * OUTTYPE_BYTES_PER_WEIGHT[outtype])


def _read_config(folder: Path) -> dict:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{folder} is not a Hugging Face model folder: it has no config.json "
                              "(a model page's files: config.json, *.safetensors, the tokenizer)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {config_path}: {e}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path} is not a JSON object")
    return config


def _architectures(config: dict) -> list:
    """config.json's architecture names, the top level's first, then its text_config's."""
    names = []
    for section in (config, config.get("text_config") or {}):
        found = section.get("architectures") if isinstance(section, dict) else None
        if isinstance(found, list) and found and isinstance(found[0], str):
            names.append(found[0])
    return names


def inspect_checkpoint(path: "str | os.PathLike", converter: "Path | None" = None) -> Checkpoint:
    """Check that path is a checkpoint the pinned converter takes: config.json, an architecture it
    knows, weights, a tokenizer. Raises CheckpointError saying what is missing."""
    folder = resolve_checkpoint(path)
    config = _read_config(folder)
    names = _architectures(config)
    if not names:
        raise CheckpointError(f"{folder / 'config.json'} names no architecture (no \"architectures\" list)")
    known = known_architectures(converter or converter_dir())
    if known is not None and not any(name in known for name in names):
        raise CheckpointError(f"the pinned llama.cpp converter does not know the architecture {names[0]} "
                              f"(of {folder}); it converts {len(known)} others, e.g. LlamaForCausalLM, "
                              "Qwen2ForCausalLM, Gemma3ForCausalLM")
    weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not weights:
        raise CheckpointError(f"{folder} has no weights (*.safetensors or pytorch_model*.bin): "
                              "was the download complete?")
    tokenizer = sorted(p.name for p in folder.iterdir()
                       if p.name in TOKENIZER_FILES or p.name.endswith(TOKENIZER_SUFFIXES))
    if not tokenizer:
        raise CheckpointError(f"{folder} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}): download the "
                              "model's tokenizer files with its weights")
    safetensors = [p for p in weights if p.suffix == ".safetensors"]
    n_weights = sum(safetensors_weights(p) for p in safetensors) if safetensors else None
    return Checkpoint(path=folder, name=checkpoint_name(folder), architecture=names[0],
                      weight_files=tuple(weights), tokenizer_files=tuple(tokenizer), n_weights=n_weights,
                      weight_bytes=sum(p.stat().st_size for p in weights))


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """Refuse before writing when the disk holding folder (made later, if it is not there yet) has
    less than needed bytes free."""
    folder = Path(folder).absolute()
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise ConvertError(f"not enough disk space for {what}: about {format_size(needed)} needed, "
                           f"{format_size(free)} free on {folder}")


def partial_name(dst: Path) -> Path:
    """The temporary name a file is written under, in dst's folder, until it is complete."""
    return dst.with_name(f".{dst.name}.{os.getpid()}-{threading.get_ident()}.partial")


@dataclass
class ConvertResult:
    """What a conversion made."""

    src: str               # the checkpoint folder
    dst: str               # the GGUF written
    architecture: str
    outtype: str
    n_weights: "int | None"
    src_bytes: int         # the weight files
    dst_bytes: int
    seconds: float

    def summary(self) -> str:
        return (f"{self.src} ({self.architecture}, {format_size(self.src_bytes)}) -> {Path(self.dst).name} "
                f"({self.outtype.upper()}, {format_size(self.dst_bytes)}): {self.seconds:.1f} s")


# The converter's own words for the failures it reports in its log rather than by exception.
_UNSUPPORTED = re.compile(r"Model (\S+) is not supported")
_EXCEPTION_LINE = re.compile(r"^(\w+(?:\.\w+)*(?:Error|Exception)): (.*)$")


def failure_reason(log: str, free_bytes: "int | None" = None) -> str:
    """One line saying why the converter failed, from what it wrote and the space left where it wrote
    (Python's buffered writer reports a full disk as a short write, without ENOSPC's words)."""
    if "No space left on device" in log or (free_bytes is not None and free_bytes < DISK_FULL_BYTES):
        return "the disk filled up while writing (No space left on device)"
    if match := _UNSUPPORTED.search(log):
        return f"the pinned llama.cpp converter does not support the architecture {match.group(1)}"
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in reversed(lines):
        if match := _EXCEPTION_LINE.match(line):
            return f"{match.group(1)}: {match.group(2)}"
    for line in reversed(lines):
        if line.startswith("ERROR:"):
            return line.split(":", 2)[-1].strip()
    return lines[-1] if lines else "it exited without a message"


def _follow_size(path: Path, bar: tqdm, finished: threading.Event) -> None:
    """Move the bar to the size the file being written has reached, until the converter exits."""
    while not finished.wait(0.2):
        try:
            size = path.stat().st_size
        except OSError:
            continue
        if bar.total is not None:
            size = min(size, bar.total)
        bar.update(size - bar.n)


def _run_converter(converter: Path, args: list, partial: Path, bar: tqdm, verbose: bool) -> None:
    """convert_hf_to_gguf.py in a child process of this interpreter; its output is kept for the error
    (and shown with verbose), the bar follows the file it writes."""
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)  # the converter then puts the pin's gguf-py first on sys.path
    command = [sys.executable, str(converter / CONVERTER_SCRIPT), *args]
    # Its last lines say why it failed: an exception, or its own ERROR line.
    tail = collections.deque(maxlen=LOG_TAIL_LINES)
    finished = threading.Event()
    watcher = threading.Thread(target=_follow_size, args=(partial, bar, finished), daemon=True)
    watcher.start()
    try:
        with subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=env, text=True, encoding="utf-8", errors="replace") as child:
            try:
                for line in child.stdout:
                    tail.append(line)
                    if verbose:
                        sys.stderr.write(line)
                child.wait()
            except BaseException:
                child.kill()
                raise
    finally:
        finished.set()
        watcher.join()
    if child.returncode < 0:
        killed = signal.Signals(-child.returncode).name
        raise ConvertError(f"could not convert {args[0]}: the converter was killed by {killed}"
                           + (" (out of memory?)" if killed == "SIGKILL" else ""))
    if child.returncode != 0:
        reason = failure_reason("".join(tail), shutil.disk_usage(partial.parent).free)
        error = CheckpointError if reason.startswith("the pinned llama.cpp converter does not") else ConvertError
        raise error(f"could not convert {args[0]}: {reason}")


def convert(hf_dir: "str | os.PathLike", dst: "str | os.PathLike", outtype: str = "f16", *,
            overwrite: bool = False, progress: bool = True, verbose: bool = False) -> ConvertResult:
    """Convert the Hugging Face checkpoint hf_dir into the GGUF dst with the pinned llama.cpp converter.

    outtype: f16, bf16 or q8_0 (the converter's own). overwrite: replace an existing dst.
    progress: a bar of the bytes written on stderr. verbose: the converter's log on stderr.
    dst is written under a temporary name and renamed, so a failure leaves no file.
    """
    if outtype not in OUTTYPE_BYTES_PER_WEIGHT:
        raise ValueError(f"outtype must be one of {', '.join(OUTTYPE_BYTES_PER_WEIGHT)}, got {outtype!r}")
    converter = converter_dir()
    checkpoint = inspect_checkpoint(hf_dir, converter)
    missing = missing_converter_packages()
    if missing:
        raise ConvertError(f"converting needs {', '.join(missing)} (the convert extra): {EXTRA_INSTALL}")
    dst = Path(dst)
    if dst.is_dir():
        raise ConvertError(f"the output {dst} is a folder; name the .gguf file to write")
    if dst.exists() and not overwrite:
        raise ConvertError(f"the output exists: {dst}; pass overwrite=True (--force) to replace it")
    estimate = checkpoint.output_bytes(outtype)
    check_free_space(dst.parent, estimate, dst.name)
    dst.parent.mkdir(parents=True, exist_ok=True)

    partial = partial_name(dst)
    args = [str(checkpoint.path), "--outfile", str(partial), "--outtype", outtype]
    started = time.perf_counter()
    try:
        with tqdm(total=estimate, desc=f"convert {outtype.upper()}", unit="B", unit_scale=True,
                  unit_divisor=1024, file=sys.stderr, disable=not progress) as bar:
            _run_converter(converter, args, partial, bar, verbose)
            bar.update(bar.total - bar.n)
        if not partial.is_file():
            raise ConvertError(f"could not convert {checkpoint.path}: the converter wrote no {partial.name}")
        os.replace(partial, dst)
    finally:
        partial.unlink(missing_ok=True)
    return ConvertResult(src=str(checkpoint.path), dst=str(dst), architecture=checkpoint.architecture,
                         outtype=outtype, n_weights=checkpoint.n_weights, src_bytes=checkpoint.weight_bytes,
                         dst_bytes=dst.stat().st_size, seconds=time.perf_counter() - started)
