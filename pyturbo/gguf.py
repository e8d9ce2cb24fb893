"""GGUF files without llama.cpp: the magic check, the header (metadata and tensor table), tensor sizes,
and the checks that keep a damaged file away from llama.cpp's loader.

    header = read_gguf_header("model.gguf")
    header.get("attention.head_count"), header.architecture, header.tensors[0].nbytes
    header.get_int("block_count", minimum=1)     # an integer, or InvalidModelError naming the key

Only the header is read, never tensor data, so this works on a 70B file on a
laptop and on header-only files. Every count and length the file states is
checked against the bytes the file has, and against a bound no real model
comes near, before anything is allocated for it; every rule ggml's own GGUF
reader applies (known value and tensor types, dimensions, names, alignment)
is applied here too, so a file pyturbo plans for is one llama.cpp can parse.

llama.cpp reports most problems of a file as a failed load, but some it meets
with GGML_ASSERT, which aborts the process: `check_gguf_file` (what
pyturbo.Model and pyturbo.weights.quantize call first) refuses those files too,
with InvalidModelError (see pyturbo.upstream.loader_rules).
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from .upstream.cache_table import CACHE_TYPES, TURBO_CACHE_TYPES
from .errors import InvalidModelError, ModelNotFoundError
from .upstream.loader_rules import check_loader_rules

GGUF_MAGIC = b"GGUF"
# ggml's GGML_MAX_DIMS: no tensor has more dimensions.
MAX_DIMS = 4
# GGUF's data section starts at a multiple of general.alignment, 32 by default.
DEFAULT_ALIGNMENT = 32
# ggml's GGML_MAX_NAME is 64 bytes with the terminating NUL: gguf_init refuses longer names.
MAX_TENSOR_NAME_BYTES = 63
INT64_MAX = 2**63 - 1
UINT32_MAX = 2**32 - 1
# Bounds far beyond any real model, so that a corrupt count in a large file cannot make
# the reader allocate without limit (a count is also checked against the bytes left):
# the largest vocabularies hold about 260 K tokens, chat templates tens of KB, models
# about 50 metadata keys and a few thousand tensors.
MAX_ARRAY_ITEMS = 1 << 24
MAX_STRING_BYTES = 1 << 26
MAX_METADATA_KEYS = 1 << 16
MAX_TENSORS = 1 << 20
# tensor_data reads only small tensors (biases, norms): a larger one is a corrupt shape.
MAX_TENSOR_DATA_BYTES = 1 << 26

_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H", GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i", GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q", GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d",
}
# The fewest bytes one value of a type takes in the file (a string: its 8-byte length).
_MIN_VALUE_BYTES = {**{t: struct.calcsize("<" + f) for t, f in _SCALAR_FORMATS.items()},
                    GGUFValueType.STRING: 8, GGUFValueType.ARRAY: 12}
# pyturbo's cache-only ggml types (pyturbo.upstream.cache_table), which ggml refuses in a file by name.
_TURBO_TYPE_NAMES = {CACHE_TYPES[name].type_id: name for name in TURBO_CACHE_TYPES}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
# Bytes read at once while parsing an array of strings.
_READ_AHEAD = 1 << 20


def is_gguf(path: "str | os.PathLike") -> bool:
    """Whether the file starts with GGUF's magic."""
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def _check_magic(path: "str | os.PathLike", role: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"{role} not found: {path}")
    if path.is_dir():
        raise InvalidModelError(f"{role} is a directory, not a GGUF file: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise InvalidModelError(f"not a GGUF file (bad magic {magic!r}): {path}")
    return path


def check_gguf_file(path: "str | os.PathLike", role: str = "model file") -> Path:
    """The path, if it names a GGUF file llama.cpp can be given; else ModelNotFoundError /
    InvalidModelError saying why. Besides the header (read_gguf_header), every tensor's data
    must lie inside the file where ggml expects it, and nothing may break a rule llama.cpp's
    loader asserts (pyturbo.upstream.loader_rules): those files would abort the process, not fail."""
    header = read_gguf_header(path, role)
    check_tensor_data(header)
    check_loader_rules(header)
    return header.path


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file: name, shape (ggml order, ne[0] first) and ggml type id."""

    name: str
    shape: tuple
    type_id: int
    offset: int = 0  # of its data, from the start of the data section

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return tensor_bytes(self.shape, self.type_id)

    @property
    def type_name(self) -> str:
        """ggml's name of the tensor's type (Q4_K, F32, ...)."""
        return GGMLQuantizationType(self.type_id).name


def tensor_bytes(shape: Sequence[int], type_id: int) -> int:
    """ggml_nbytes of a contiguous tensor: rows of ne[0] values, stored in blocks of its type."""
    block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(type_id)]
    return shape[0] // block_size * type_size * math.prod(shape[1:])


def _quoted(text: str, limit: int = 60) -> str:
    """A name from the file as a message shows it: quoted, escaped (a corrupt key may hold
    newlines or megabytes), shortened."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def _value_description(value) -> str:
    if isinstance(value, list):
        return f"an array of {len(value)}"
    if isinstance(value, str):
        return f"the string {_quoted(value, 40)}"
    return repr(value)


@dataclass
class GGUFHeader:
    """A GGUF file's metadata and tensor table, read without touching tensor data."""

    path: Path
    metadata: dict
    tensors: list
    data_offset: int = 0  # where the data section starts in the file

    def get(self, key: str, default=None):
        """An architecture key (`attention.head_count`) or a full one (`general.architecture`)."""
        if key in self.metadata:
            return self.metadata[key]
        return self.metadata.get(f"{self.architecture}.{key}", default)

    def key_name(self, key: str) -> str:
        """The full name `get` finds a key under (for messages)."""
        return key if key in self.metadata else f"{self.architecture}.{key}"

    def invalid(self, key: str, value, expected: str) -> InvalidModelError:
        return InvalidModelError(f"{self.key_name(key)} is {_value_description(value)}, expected {expected}: "
                                 f"{self.path}")

    def get_int(self, key: str, default=None, minimum: int = 0, maximum: int = UINT32_MAX):
        """An integer key within [minimum, maximum], or `default` when absent; any other value
        (a string, a float, an array, out of range) is an InvalidModelError naming the key."""
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
            raise self.invalid(key, value, f"an integer from {minimum} to {maximum}")
        return value

    def get_per_layer(self, key: str, n_layer: int, default: int = 0, minimum: int = 0,
                      maximum: int = UINT32_MAX) -> list:
        """A key that is one integer for every layer or an array with one per layer."""
        value = self.get(key)
        if not isinstance(value, list):
            return [self.get_int(key, default, minimum, maximum)] * n_layer
        if len(value) != n_layer or not all(isinstance(v, int) and minimum <= v <= maximum for v in value):
            raise self.invalid(key, value, f"one integer from {minimum} to {maximum} for each of {n_layer} layers")
        return [int(v) for v in value]

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture", "llama")
        if not isinstance(arch, str):
            raise InvalidModelError(f"general.architecture is {_value_description(arch)}, expected a string: "
                                    f"{self.path}")
        return arch


class _HeaderReader:
    """Sequential little-endian reads of a GGUF header. A count or length that the rest of
    the file cannot hold, or that no real model reaches, is refused before anything is
    allocated for it. The position is counted here rather than asked of the file (a tell()
    per value would cost a system call each)."""

    def __init__(self, f, path: Path) -> None:
        self.f = f
        self.path = path
        self.size = os.fstat(f.fileno()).st_size
        self.pos = f.tell()

    def corrupt(self, what: str) -> InvalidModelError:
        return InvalidModelError(f"corrupt GGUF header: {what}: {self.path}")

    def read_bytes(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise InvalidModelError(f"truncated GGUF header: {self.path}")
        self.pos += n
        return data

    def u32(self) -> int:
        return _U32.unpack(self.read_bytes(4))[0]

    def u64(self) -> int:
        return _U64.unpack(self.read_bytes(8))[0]

    def count(self, what: str, min_item_bytes: int, limit: int) -> int:
        """A 64-bit count of items that take at least min_item_bytes each."""
        n = self.u64()
        left = self.size - self.pos
        if n * min_item_bytes > left:
            raise self.corrupt(f"{n} {what} cannot fit in the {left} bytes left")
        if n > limit:
            raise self.corrupt(f"{n} {what}, more than {limit}")
        return n

    def string(self, what: str) -> str:
        n = self.count(f"bytes of {what}", 1, MAX_STRING_BYTES)
        return self.read_bytes(n).decode("utf-8", "replace")

    def strings(self, count: int, key: str) -> list:
        """An array of strings: the common large array (the vocabulary), parsed from chunks
        read ahead, then the file put back where the array ends."""
        unpack_from, read, out = _U64.unpack_from, self.f.read, []
        buf, at = b"", 0
        for _ in range(count):
            if at + 8 > len(buf):
                buf, at = buf[at:] + read(_READ_AHEAD + 8), 0
                if len(buf) < 8:
                    raise InvalidModelError(f"truncated GGUF header: {self.path}")
            n = unpack_from(buf, at)[0]
            at += 8
            if n > len(buf) - at:
                left = self.size - self.f.tell() + len(buf) - at  # from this string to the end of the file
                if n > MAX_STRING_BYTES or n > left:
                    raise self.corrupt(f"a string of {n} bytes in {key} with {left} bytes left")
                buf, at = buf[at:] + read(max(n, _READ_AHEAD)), 0
            out.append(buf[at:at + n].decode("utf-8", "replace"))
            at += n
        self.f.seek(at - len(buf), os.SEEK_CUR)  # give back what was read ahead
        self.pos = self.f.tell()
        return out

    def value(self, value_type: int, key: str):
        """A value of the type; `key` is the quoted key, for messages."""
        value_type = self.value_type(value_type, key)
        if value_type == GGUFValueType.STRING:
            return self.string(key)
        if value_type == GGUFValueType.ARRAY:
            item_type = self.value_type(self.u32(), key)
            if item_type == GGUFValueType.ARRAY:
                raise self.corrupt(f"{key} is an array of arrays, which ggml does not read")
            count = self.count(f"items in {key}", _MIN_VALUE_BYTES[item_type], MAX_ARRAY_ITEMS)
            if item_type == GGUFValueType.STRING:
                return self.strings(count, key)
            code = _SCALAR_FORMATS[item_type]
            return list(struct.unpack(f"<{count}{code}", self.read_bytes(count * _MIN_VALUE_BYTES[item_type])))
        return struct.unpack("<" + _SCALAR_FORMATS[value_type], self.read_bytes(_MIN_VALUE_BYTES[value_type]))[0]

    def value_type(self, type_id: int, key: str) -> GGUFValueType:
        try:
            return GGUFValueType(type_id)
        except ValueError:
            raise self.corrupt(f"{key} has the unknown value type {type_id}") from None

    def tensor_info(self, index: int) -> TensorInfo:
        name = self.string(f"the name of tensor {index}")
        if len(name.encode("utf-8", "surrogatepass")) > MAX_TENSOR_NAME_BYTES:
            raise self.corrupt(f"tensor {index}'s name is longer than {MAX_TENSOR_NAME_BYTES} bytes")
        n_dims = self.u32()
        if not 1 <= n_dims <= MAX_DIMS:
            raise self.corrupt(f"tensor {name!r} has {n_dims} dimensions")
        shape = tuple(self.u64() for _ in range(n_dims))
        # ggml reads dimensions as int64 and refuses negative ones and element counts past
        # INT64_MAX (an empty tensor is allowed: header-only files of recurrent models have them).
        if not all(n <= INT64_MAX for n in shape) or math.prod(shape) > INT64_MAX:
            raise self.corrupt(f"tensor {name!r} has the shape {list(shape)}")
        type_id = self.u32()
        try:
            block_size = GGML_QUANT_SIZES[GGMLQuantizationType(type_id)][0]
        except (ValueError, KeyError):
            if type_id in _TURBO_TYPE_NAMES:
                raise self.corrupt(f"tensor {name!r} has type {_TURBO_TYPE_NAMES[type_id]}, a runtime-only "
                                   "KV-cache type that GGUF files cannot hold") from None
            raise self.corrupt(f"tensor {name!r} has the unknown ggml type {type_id}") from None
        if shape[0] % block_size:
            raise self.corrupt(f"tensor {name!r} has rows of {shape[0]} values, not a multiple of its "
                               f"type's block of {block_size}")
        offset = self.u64()  # into the data section
        return TensorInfo(name, shape, type_id, offset)


def _alignment(metadata: dict, path: Path) -> int:
    """general.alignment as ggml requires it: a power of two (stored as u32; default 32)."""
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 or \
            alignment & (alignment - 1) or alignment > UINT32_MAX:
        raise InvalidModelError(f"corrupt GGUF header: general.alignment is {_value_description(alignment)}, "
                                f"not a power of two: {path}")
    return alignment


def read_gguf_header(path: "str | os.PathLike", role: str = "model file") -> GGUFHeader:
    """Metadata and tensor shapes of a GGUF file; the tensor data is never read (and may be absent)."""
    path = _check_magic(path, role)
    with open(path, "rb") as f:
        f.seek(len(GGUF_MAGIC))
        r = _HeaderReader(f, path)
        version = r.u32()
        if version not in (2, 3):
            raise InvalidModelError(f"unsupported GGUF version {version} (big-endian or too new?): {path}")
        # A tensor entry takes at least 8 (name) + 4 + 8 + 4 + 8 bytes, a metadata pair 8 + 4 + 1.
        n_tensors = r.count("tensors", 32, MAX_TENSORS)
        n_kv = r.count("metadata keys", 13, MAX_METADATA_KEYS)
        metadata = {}
        for i in range(n_kv):
            key = r.string(f"metadata key {i}")
            if not key:
                raise r.corrupt(f"metadata key {i} is empty")
            if key in metadata:
                raise r.corrupt(f"the metadata key {_quoted(key)} appears twice")
            metadata[key] = r.value(r.u32(), _quoted(key))
        alignment = _alignment(metadata, path)
        tensors, names = [], set()
        for i in range(n_tensors):
            tensor = r.tensor_info(i)
            if tensor.name in names:
                raise r.corrupt(f"the tensor name {tensor.name!r} appears twice")
            names.add(tensor.name)
            tensors.append(tensor)
        data_offset = -(-r.pos // alignment) * alignment
    return GGUFHeader(path, metadata, tensors, data_offset)


def check_tensor_data(header: GGUFHeader) -> None:
    """Every tensor's data where ggml's GGUF reader expects it (one after another, each at a
    multiple of the alignment, in table order) and inside the file; else InvalidModelError.
    A header-only file fails here: only planning works on it, not loading."""
    alignment = _alignment(header.metadata, header.path)
    size = header.path.stat().st_size
    expected = 0
    for tensor in header.tensors:
        if not tensor.n_elements:
            # ggml reads such a tensor, but llama.cpp's shape checks refuse it and
            # llama_model_quantize divides by its row length.
            raise InvalidModelError(f"corrupt GGUF tensor table: {tensor.name} has the shape "
                                    f"{list(tensor.shape)}, no elements: {header.path}")
        if tensor.offset != expected:
            raise InvalidModelError(f"corrupt GGUF tensor table: {tensor.name} starts at {tensor.offset} of "
                                    f"the data section, where ggml expects {expected}: {header.path}")
        end = header.data_offset + tensor.offset + tensor.nbytes
        if end > size:
            raise InvalidModelError(f"{tensor.name}'s data ends at byte {end} but the file has {size} bytes "
                                    f"(truncated, or a header-only file): {header.path}")
        expected += -(-tensor.nbytes // alignment) * alignment


def tensor_data(header: GGUFHeader, tensor: TensorInfo):
    """An F32 or F16 tensor's values as a float32 numpy array (ggml order flattened), read
    from the file; for the small tensors (biases, norms) planning looks at."""
    import numpy as np

    dtypes = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16}
    dtype = dtypes.get(GGMLQuantizationType(tensor.type_id))
    if dtype is None:
        raise InvalidModelError(f"{tensor.name} is {tensor.type_name}; only F32/F16 tensors are read here")
    if tensor.nbytes > MAX_TENSOR_DATA_BYTES:
        raise InvalidModelError(f"{tensor.name} has the shape {list(tensor.shape)}, too large for a bias or "
                                f"norm: {header.path}")
    start = header.data_offset + tensor.offset
    if start + tensor.nbytes > header.path.stat().st_size:
        raise InvalidModelError(f"{tensor.name} lies beyond the end of {header.path}")
    with open(header.path, "rb") as f:
        f.seek(start)
        return np.frombuffer(f.read(tensor.nbytes), dtype=dtype).astype(np.float32)
