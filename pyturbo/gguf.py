"""GGUF files without llama.cpp: the magic check, the header (metadata and tensor table), tensor sizes.

    header = read_gguf_header("model.gguf")
    header.get("attention.head_count"), header.architecture, header.tensors[0].nbytes

Only the header is read, never tensor data, so this works on a 70B file on a
laptop and on header-only files. Every count and length the file states is
checked against the bytes the file has before anything is allocated for it.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from .errors import InvalidModelError, ModelNotFoundError

GGUF_MAGIC = b"GGUF"
# ggml's GGML_MAX_DIMS: no tensor has more dimensions.
MAX_DIMS = 4
# GGUF's data section starts at a multiple of general.alignment, 32 by default.
DEFAULT_ALIGNMENT = 32

_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}
# The fewest bytes one value of a type takes in the file (a string: its 8-byte length).
_MIN_VALUE_BYTES = {**{t: struct.calcsize(f) for t, f in _SCALAR_FORMATS.items()},
                    GGUFValueType.STRING: 8, GGUFValueType.ARRAY: 12}


def is_gguf(path: "str | os.PathLike") -> bool:
    """Whether the file starts with GGUF's magic."""
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def check_gguf_file(path: "str | os.PathLike", role: str = "model file") -> Path:
    """The path, if it names a GGUF file; else ModelNotFoundError / InvalidModelError saying why."""
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

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "llama"))


class _HeaderReader:
    """Sequential little-endian reads of a GGUF header. A count or length that the rest of
    the file cannot hold is refused before anything is allocated for it."""

    def __init__(self, f, path: Path) -> None:
        self.f = f
        self.path = path
        self.size = os.fstat(f.fileno()).st_size

    def remaining(self) -> int:
        return self.size - self.f.tell()

    def truncated(self) -> InvalidModelError:
        return InvalidModelError(f"truncated GGUF header: {self.path}")

    def read(self, fmt: str):
        size = struct.calcsize(fmt)
        data = self.f.read(size)
        if len(data) != size:
            raise self.truncated()
        return struct.unpack(fmt, data)[0]

    def count(self, what: str, min_item_bytes: int) -> int:
        """A 64-bit count of items that take at least min_item_bytes each."""
        n = self.read("<Q")
        if n * min_item_bytes > self.remaining():
            raise InvalidModelError(f"corrupt GGUF header: {n} {what} cannot fit in the "
                                    f"{self.remaining()} bytes left of {self.path}")
        return n

    def string(self) -> str:
        n = self.count("string bytes", 1)
        return self.f.read(n).decode("utf-8", "replace")

    def value(self, value_type: int):
        value_type = GGUFValueType(value_type)
        if value_type == GGUFValueType.STRING:
            return self.string()
        if value_type == GGUFValueType.ARRAY:
            item_type = GGUFValueType(self.read("<I"))
            count = self.count("array items", _MIN_VALUE_BYTES[item_type])
            return [self.value(item_type) for _ in range(count)]
        return self.read(_SCALAR_FORMATS[value_type])

    def tensor_info(self) -> TensorInfo:
        name = self.string()
        n_dims = self.read("<I")
        if not 1 <= n_dims <= MAX_DIMS:
            raise InvalidModelError(f"corrupt GGUF header: tensor {name!r} has {n_dims} dimensions: {self.path}")
        shape = tuple(self.read("<Q") for _ in range(n_dims))
        type_id = self.read("<I")
        offset = self.read("<Q")  # into the data section
        return TensorInfo(name, shape, type_id, offset)


def read_gguf_header(path: "str | os.PathLike") -> GGUFHeader:
    """Metadata and tensor shapes of a GGUF file; the tensor data is never read (and may be absent)."""
    path = check_gguf_file(path)
    with open(path, "rb") as f:
        f.seek(len(GGUF_MAGIC))
        r = _HeaderReader(f, path)
        version = r.read("<I")
        if version not in (2, 3):
            raise InvalidModelError(f"unsupported GGUF version {version} (big-endian or too new?): {path}")
        # A tensor entry takes at least 8 (name) + 4 + 8 + 4 + 8 bytes, a metadata pair 8 + 4 + 1.
        n_tensors = r.count("tensors", 32)
        n_kv = r.count("metadata keys", 13)
        try:
            metadata = {}
            for _ in range(n_kv):
                key = r.string()
                metadata[key] = r.value(r.read("<I"))
            tensors = [r.tensor_info() for _ in range(n_tensors)]
            alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT) or DEFAULT_ALIGNMENT)
            data_offset = -(-f.tell() // alignment) * alignment
        except InvalidModelError:
            raise
        except ValueError as e:  # an unknown value type id
            raise InvalidModelError(f"corrupt GGUF header ({e}): {path}") from None
    return GGUFHeader(path, metadata, tensors, data_offset)


def tensor_data(header: GGUFHeader, tensor: TensorInfo):
    """An F32 or F16 tensor's values as a float32 numpy array (ggml order flattened), read
    from the file; for the small tensors (biases, norms) planning looks at."""
    import numpy as np

    dtypes = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16}
    dtype = dtypes.get(GGMLQuantizationType(tensor.type_id))
    if dtype is None:
        raise InvalidModelError(f"{tensor.name} is {tensor.type_name}; only F32/F16 tensors are read here")
    start = header.data_offset + tensor.offset
    if start + tensor.nbytes > header.path.stat().st_size:
        raise InvalidModelError(f"{tensor.name} lies beyond the end of {header.path}")
    with open(header.path, "rb") as f:
        f.seek(start)
        return np.frombuffer(f.read(tensor.nbytes), dtype=dtype).astype(np.float32)
