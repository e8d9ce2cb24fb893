"""Weights of a GGUF model: llama-quantize's types, per-tensor statistics, quantizing, picking a quant.

    from pyturbo.weights import quantize, select_quant, weight_type
    quantize("model-f16.gguf", "model-Q4_K_M.gguf", "q4_K_M")   # -> QuantizeResult
    select_quant("models/", "Q4_K_M")   # the Q4_K_M file of a folder (made once from a 16-bit one)

The CLI is `python -m pyturbo.quantize`; the per-tensor rules of llama-quantize's
presets, for sizing weights that were never made, are in pyturbo.upstream.quant_presets.
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from . import _native
from ._native import ffi, llama
from .assets import cache_dir, sha256_of
from .errors import ModelNotFoundError, QuantizeError, WeightTypeError
from .gguf import GGUFHeader, check_gguf_file, read_gguf_header
from .host import default_threads
from .imatrix import read_imatrix
from .units import MiB
from .upstream.cache_table import TURBO_CACHE_TYPES


@dataclass(frozen=True)
class WeightType:
    """One output type of llama-quantize: its name and the llama_ftype it writes."""

    name: str   # llama-quantize's spelling: Q4_K_M, F16, ...
    ftype: int  # enum llama_ftype (include/llama.h)

    @property
    def is_float(self) -> bool:
        """A 16/32-bit type: a file of this type is a source to quantize from, not a quant."""
        return self.name in FLOAT_TYPES


# llama-quantize's QUANT_OPTIONS (tools/quantize/quantize.cpp at the pinned commit), in its
# order, with their LLAMA_FTYPE_* ids. COPY rewrites the file without changing any tensor.
WEIGHT_TYPES = {wt.name: wt for wt in (
    WeightType("Q1_0", 40), WeightType("Q2_0", 41), WeightType("Q4_0", 2), WeightType("Q4_1", 3),
    WeightType("MXFP4_MOE", 38), WeightType("Q5_0", 8), WeightType("Q5_1", 9),
    WeightType("IQ2_XXS", 19), WeightType("IQ2_XS", 20), WeightType("IQ2_S", 28), WeightType("IQ2_M", 29),
    WeightType("IQ1_S", 24), WeightType("IQ1_M", 31), WeightType("TQ1_0", 36), WeightType("TQ2_0", 37),
    WeightType("Q2_K", 10), WeightType("Q2_K_S", 21), WeightType("IQ3_XXS", 23), WeightType("IQ3_S", 26),
    WeightType("IQ3_M", 27), WeightType("IQ3_XS", 22), WeightType("Q3_K_S", 11), WeightType("Q3_K_M", 12),
    WeightType("Q3_K_L", 13), WeightType("IQ4_NL", 25), WeightType("IQ4_XS", 30), WeightType("Q4_K_S", 14),
    WeightType("Q4_K_M", 15), WeightType("Q5_K_S", 16), WeightType("Q5_K_M", 17), WeightType("Q6_K", 18),
    WeightType("Q8_0", 7), WeightType("F16", 1), WeightType("BF16", 32), WeightType("F32", 0),
    WeightType("COPY", 0),
)}
# llama-quantize's short names for the medium k-quant mixes.
WEIGHT_TYPE_ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}
FLOAT_TYPES = ("F32", "BF16", "F16")  # most precise first: the preferred source to quantize from


def weight_type(name: "str | WeightType") -> WeightType:
    """The weight type called `name` (case-insensitive; Q4_K means Q4_K_M as in llama-quantize)."""
    if isinstance(name, WeightType):
        return name
    key = str(name).strip().upper()
    key = WEIGHT_TYPE_ALIASES.get(key, key)
    if key in WEIGHT_TYPES:
        return WEIGHT_TYPES[key]
    if key.lower() in TURBO_CACHE_TYPES:
        raise WeightTypeError(
            f"{name} is a KV-cache type: TurboQuant codes rotated K/V vectors at run time and cannot "
            f"store weights; use it as a cache type (cache_k / cache_v, -ctk / -ctv) and pick a weight "
            f"type from: {', '.join(WEIGHT_TYPES)}")
    raise WeightTypeError(f"unknown weight type {name!r}; llama-quantize's types are: {', '.join(WEIGHT_TYPES)} "
                          f"(any case; {', '.join(WEIGHT_TYPE_ALIASES)} are aliases of the _M mixes)")


def file_type_name(ftype: int) -> str:
    """llama-quantize's name of a GGUF `general.file_type` (15 -> Q4_K_M)."""
    for wt in WEIGHT_TYPES.values():
        if wt.ftype == ftype and wt.name != "COPY":
            return wt.name
    return f"ftype {ftype}"


# A quant named in a file name: "model-Q4_K_M.gguf", "model.q8_0.gguf", "ggml-model-f16.gguf".
_NAME_LABEL = re.compile(
    r"(?:^|[-._ ])(" + "|".join(sorted((n for n in list(WEIGHT_TYPES) + list(WEIGHT_TYPE_ALIASES) if n != "COPY"),
                                       key=len, reverse=True)) + r")(?=$|[-._ ])",
    re.IGNORECASE)


def quant_in_name(path: "str | os.PathLike") -> "str | None":
    """The weight type a file's name states (its last label), or None."""
    stem = Path(path).name
    if stem.lower().endswith(".gguf"):
        stem = stem[:-len(".gguf")]
    labels = _NAME_LABEL.findall(stem)
    return weight_type(labels[-1]).name if labels else None


def quant_of_file(path: "str | os.PathLike") -> "str | None":
    """A GGUF file's weight type: from its name, else from its `general.file_type`."""
    named = quant_in_name(path)
    if named:
        return named
    ftype = read_gguf_header(path).get_int("general.file_type")
    return file_type_name(ftype) if ftype is not None else None



# ggml's unquantized tensor types: a file that has only these is a source to quantize from.
FLOAT_TENSOR_TYPES = ("F32", "F16", "BF16")


@dataclass(frozen=True)
class WeightStats:
    """Tensor count, weights and stored bytes of a GGUF file, overall and per tensor type."""

    n_tensors: int
    n_params: int
    tensor_bytes: int
    file_type: "str | None"  # `general.file_type` by llama-quantize's name
    type_tensors: dict       # ggml type name (Q4_K, F32, ...) -> tensors of that type, most first
    type_params: dict        # ggml type name -> weights stored in it, most first

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.tensor_bytes / self.n_params if self.n_params else 0.0

    @property
    def quantized_types(self) -> tuple:
        """Names of the quantized (not 16/32-bit) types its tensors use, sorted."""
        return tuple(sorted(name for name in self.type_tensors if name not in FLOAT_TENSOR_TYPES))


def weight_stats(model: "str | os.PathLike | GGUFHeader") -> WeightStats:
    """The WeightStats of a GGUF file (or of a header already read)."""
    header = model if isinstance(model, GGUFHeader) else read_gguf_header(model)
    tensors, params = Counter(), Counter()
    for tensor in header.tensors:
        tensors[tensor.type_name] += 1
        params[tensor.type_name] += tensor.n_elements
    ftype = header.get_int("general.file_type")
    return WeightStats(n_tensors=len(header.tensors), n_params=sum(params.values()),
                       tensor_bytes=weight_bytes(header),
                       file_type=file_type_name(ftype) if ftype is not None else None,
                       type_tensors=dict(tensors.most_common()),
                       type_params={name: params[name] for name, _ in params.most_common()})



# llama_model_quantize logs "[  12/ 272]  blk.1.attn_k.weight - [...], type = f16, ..." as it starts a tensor.
_TENSOR_STARTED = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]")
_FAILURE = re.compile(r"failed to quantize: (.*)")


def _quantize_params(wt: WeightType, threads: int, allow_requantize: bool, pure: bool, imatrix_array):
    """A llama_model_quantize_params pointer: llama.cpp's defaults with these settings."""
    params = ffi.new("llama_model_quantize_params *")
    params[0] = llama.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = wt.ftype
    params.allow_requantize = allow_requantize
    params.pure = pure
    params.only_copy = wt.name == "COPY"
    if imatrix_array is not None:
        params.imatrix = imatrix_array
    return params


def _imatrix_array(entries: dict):
    """A NULL-terminated llama_model_imatrix_data array over `entries`, and what keeps its memory alive."""
    array = ffi.new("struct llama_model_imatrix_data[]", len(entries) + 1)
    keep_alive = [array]
    for i, (name, values) in enumerate(entries.items()):
        c_name = ffi.new("char[]", name.encode())
        c_values = ffi.from_buffer("float[]", values)
        keep_alive += [c_name, c_values, values]
        array[i].name, array[i].data, array[i].size = c_name, c_values, len(values)
    return array, keep_alive


def _follow_progress(log: list, bar: tqdm, finished: threading.Event) -> None:
    """Move the bar to the tensor llama.cpp last said it started, until the call has finished."""
    seen = 0
    while True:
        done = finished.wait(0.1)
        while seen < len(log):
            match = _TENSOR_STARTED.match(log[seen][1])
            seen += 1
            if match:
                bar.update(int(match.group(1)) - 1 - bar.n)
        if done:
            return


def _run_llama_quantize(src: Path, dst: Path, params, bar: tqdm) -> None:
    """llama_model_quantize with the bar following its log; llama.cpp's reason in the error."""
    finished = threading.Event()
    with _native.captured_log() as log:
        watcher = threading.Thread(target=_follow_progress, args=(log, bar, finished), daemon=True)
        watcher.start()
        try:
            status = llama.llama_model_quantize(os.fsencode(src), os.fsencode(dst), params)
        finally:
            finished.set()
            watcher.join()
    if status != 0:
        reasons = [m.group(1).strip() for _, line in log if (m := _FAILURE.search(line))]
        reason = reasons[0] if reasons else (_native.last_problem(log) or f"llama_model_quantize returned {status}")
        if "imatrix" in reason:
            reason += " (very low-bit types need an importance matrix: pass imatrix=FILE / --imatrix FILE, " \
                      "made with llama.cpp's llama-imatrix)"
        raise QuantizeError(f"could not quantize {src}: {reason}")
    bar.update(bar.total - bar.n)


@dataclass
class QuantizeResult:
    """What a quantization made: sizes, weights and bits per weight before and after."""

    src: str
    dst: str
    src_type: str          # the source's file type (F16, Q4_1, ...)
    type: str              # the type quantized to
    n_tensors: int
    n_params: int
    src_bytes: int         # file sizes
    dst_bytes: int
    src_bpw: float         # bits per weight of the tensor data (as llama-quantize reports)
    dst_bpw: float
    seconds: float

    def summary(self) -> str:
        return (f"{Path(self.src).name} ({self.src_type}, {self.src_bytes / MiB:.2f} MiB, {self.src_bpw:.2f} bpw) -> "
                f"{Path(self.dst).name} ({self.type}, {self.dst_bytes / MiB:.2f} MiB, {self.dst_bpw:.2f} bpw): "
                f"{self.n_tensors} tensors, {self.n_params / 1e6:.1f} M weights, {self.seconds:.1f} s")


def _check_paths(src: Path, dst: Path, overwrite: bool) -> None:
    check_gguf_file(src, "source model")
    if dst.exists():
        if dst.resolve() == src.resolve():
            raise QuantizeError(f"source and destination are the same file: {src}")
        if not overwrite:
            raise QuantizeError(f"destination exists: {dst}; pass overwrite=True (--force) to replace it")


def _refuse_requantize(src: Path, source: WeightStats, wt: WeightType, src_type: str) -> None:
    if not source.quantized_types or wt.name == "COPY":
        return
    if wt.is_float:
        why = (f"converting it to {wt.name} cannot restore what {src_type} rounded away: the file grows "
               f"but keeps {src_type}'s error")
    else:
        why = (f"quantizing it again to {wt.name} adds a second rounding error to the first, so quality is "
               f"worse than quantizing the 16/32-bit original to {wt.name}")
    raise QuantizeError(
        f"{src.name} is already quantized ({src_type}: {', '.join(source.quantized_types)} tensors); {why}. "
        f"Quantize from a 16/32-bit GGUF, or pass allow_requantize=True (--allow-requantize) to do it anyway")


def quantize(src: "str | os.PathLike", dst: "str | os.PathLike", type: "str | WeightType" = "Q4_K_M",
             allow_requantize: bool = False, threads: "int | None" = None,
             imatrix: "str | os.PathLike | None" = None, pure: bool = False, *,
             overwrite: bool = False, progress: bool = True) -> QuantizeResult:
    """Quantize the GGUF model `src` into `dst` as `type` (llama.cpp's llama_model_quantize).

    type: any llama-quantize type name, any case (WEIGHT_TYPES).
    allow_requantize: accept an already-quantized source (quality suffers).
    threads: default all available CPUs. imatrix: an importance matrix file from
    llama-imatrix. pure: one type for every tensor instead of the k-quant mixture.
    overwrite: replace an existing dst. progress: a tensors-done bar on stderr.
    dst is written under a temporary name and renamed, so a failure leaves no file.
    """
    wt = weight_type(type)
    src, dst = Path(src), Path(dst)
    _check_paths(src, dst, overwrite)
    source = weight_stats(src)
    src_type = source.file_type or quant_in_name(src) or "unknown"
    if not allow_requantize:
        _refuse_requantize(src, source, wt, src_type)
    # keep_alive holds the imatrix's C memory until llama.cpp has used it (this function's end).
    imatrix_array, keep_alive = _imatrix_array(read_imatrix(imatrix)) if imatrix is not None else (None, None)
    params = _quantize_params(wt, threads or default_threads(), allow_requantize, pure, imatrix_array)

    dst.parent.mkdir(parents=True, exist_ok=True)
    # llama.cpp creates this file (with the usual permissions); it becomes dst only when complete.
    partial = dst.with_name(f".{dst.name}.{os.getpid()}-{threading.get_ident()}.partial")
    started = time.perf_counter()
    try:
        with tqdm(total=source.n_tensors, desc=f"quantize {wt.name}", unit="tensor", file=sys.stderr,
                  disable=not progress) as bar:
            _run_llama_quantize(src, partial, params, bar)
        os.replace(partial, dst)
    finally:
        partial.unlink(missing_ok=True)
    result = weight_stats(dst)
    return QuantizeResult(src=str(src), dst=str(dst), src_type=src_type, type=wt.name, n_tensors=result.n_tensors,
                          n_params=result.n_params, src_bytes=src.stat().st_size, dst_bytes=dst.stat().st_size,
                          src_bpw=source.bits_per_weight, dst_bpw=result.bits_per_weight,
                          seconds=time.perf_counter() - started)



def _candidates(path: Path) -> list:
    """The GGUF files `path` names: a folder's *.gguf, a glob pattern's matches, or the file itself."""
    if path.is_dir():
        return sorted(p for p in path.glob("*.gguf") if p.is_file())
    if path.exists():
        return [path]
    if glob.has_magic(str(path)):
        return sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
    raise ModelNotFoundError(f"model not found: {path}")


def select_quant(path: "str | os.PathLike", quant: "str | WeightType", threads: "int | None" = None,
                 progress: bool = False) -> Path:
    """The file of weight type `quant` for `path`.

    path: a folder or a glob pattern holding several quants of one model
    (`*-Q4_K_M.gguf`, `*.Q8_0.gguf`: the type is read from the name, else from the
    GGUF's file type), or one GGUF file. When no file has that type, the most
    precise 16/32-bit file among them is quantized once into the cache dir
    (keyed by its sha256 and the type) and that copy is returned. Otherwise a
    ModelNotFoundError lists what is there.
    """
    wanted = weight_type(quant)
    path = Path(path)
    candidates = _candidates(path)
    if not candidates:
        raise ModelNotFoundError(f"no GGUF files in {path}")
    types = {c: quant_of_file(c) for c in candidates}
    matches = [c for c in candidates if types[c] == wanted.name]
    if len(matches) == 1:
        return matches[0]
    available = ", ".join(f"{c.name} ({types[c] or 'unknown type'})" for c in candidates)
    if len(matches) > 1:
        raise ModelNotFoundError(f"several {wanted.name} files in {path}: {available}; name one of them")
    for float_type in FLOAT_TYPES:
        sources = [c for c in candidates if types[c] == float_type]
        if len(sources) == 1:
            return cached_quant(sources[0], wanted, threads=threads, progress=progress)
        if len(sources) > 1:
            raise ModelNotFoundError(f"no {wanted.name} file in {path} and several {float_type} files to make "
                                     f"one from: {available}; name one of them")
    raise ModelNotFoundError(
        f"no {wanted.name} file for {path}, and no 16/32-bit GGUF to quantize one from "
        f"(pyturbo does not requantize quantized weights on load); available: {available}")


def _hash_index() -> Path:
    return cache_dir() / "quants" / "sources.json"


def source_digest(path: Path) -> str:
    """sha256 of a source model, remembered per (path, size, mtime) so a large file is hashed once."""
    stat = path.stat()
    stamp = [stat.st_size, stat.st_mtime_ns]
    index_path = _hash_index()
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    key = str(path.resolve())
    if key in index and index[key][:2] == stamp:
        return index[key][2]
    digest = sha256_of(path)
    index[key] = stamp + [digest]
    index_path.parent.mkdir(parents=True, exist_ok=True)
    partial = index_path.with_name(f".{index_path.name}.{os.getpid()}")
    partial.write_text(json.dumps(index, indent=1))
    os.replace(partial, index_path)
    return digest


def cached_quant_path(src: Path, wt: WeightType) -> Path:
    """Where the cache keeps `src` quantized as `wt`: named by the source's sha256 and the type."""
    stem = src.name[:-len(".gguf")] if src.name.lower().endswith(".gguf") else src.name
    return cache_dir() / "quants" / f"{stem}-{source_digest(src)[:16]}-{wt.name}.gguf"


def cached_quant(src: "str | os.PathLike", quant: "str | WeightType", threads: "int | None" = None,
                 progress: bool = False) -> Path:
    """`src` quantized as `quant`, made once into the cache dir and reused after."""
    wt, src = weight_type(quant), Path(src)
    target = cached_quant_path(src, wt)
    if not target.exists():
        quantize(src, target, wt, threads=threads, progress=progress)
    return target



def weight_bytes(header: GGUFHeader) -> int:
    """Bytes of every tensor as stored (llama_model_size)."""
    return sum(t.nbytes for t in header.tensors)
