"""KV-cache types by name: the ones llama.cpp accepts for -ctk/-ctv, plus pyturbo's turbo types."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ._native import c_string, ggml
from .errors import CacheTypeError, LibraryError

# llama.cpp's own cache-type list (common/arg.cpp kv_cache_types), in its order.
UPSTREAM_CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
TURBO_CACHE_TYPES = ("turbo2", "turbo3", "turbo4")

# Stable ids of pyturbo's types in enum ggml_type, for code that passes ints
# (llama-cpp-python's type_k/type_v).
GGML_TYPE_TURBO2 = 43
GGML_TYPE_TURBO3 = 44
GGML_TYPE_TURBO4 = 45

# enum ggml_type ids of llama.cpp's cache types at the pinned commit (ggml.h).
# ggml_type_name() does not range-check, so ids are never probed blindly.
_UPSTREAM_TYPE_IDS = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7,
                      "q8_0": 8, "iq4_nl": 20, "bf16": 30}
_TURBO_TYPE_IDS = {"turbo2": GGML_TYPE_TURBO2, "turbo3": GGML_TYPE_TURBO3, "turbo4": GGML_TYPE_TURBO4}


@dataclass(frozen=True)
class CacheType:
    """One K/V cache type as the loaded library defines it."""

    name: str
    type_id: int
    block_size: int  # values per block
    type_size: int   # bytes per block

    @property
    def bits_per_value(self) -> float:
        return 8.0 * self.type_size / self.block_size

    @property
    def quantized(self) -> bool:
        return self.name not in ("f32", "f16", "bf16")

    @property
    def turbo(self) -> bool:
        """A TurboQuant type: defined only on Hadamard-rotated K/V."""
        return self.name in TURBO_CACHE_TYPES

    def row_bytes(self, n_values: int) -> int:
        """Bytes llama.cpp stores for a row of n_values (a multiple of block_size)."""
        return n_values // self.block_size * self.type_size


def library_has_turbo() -> bool:
    """Whether the loaded libggml was built with pyturbo's turbo types."""
    try:
        ggml.dequantize_row_turbo3
    except AttributeError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _types_by_name() -> dict[str, CacheType]:
    ids = dict(_UPSTREAM_TYPE_IDS)
    if library_has_turbo():
        ids.update(_TURBO_TYPE_IDS)
    types = {}
    for name in UPSTREAM_CACHE_TYPES + TURBO_CACHE_TYPES:
        if name not in ids:
            continue
        type_id = ids[name]
        actual = c_string(ggml.ggml_type_name(type_id))
        if actual != name:
            raise LibraryError(f"the loaded libggml names type {type_id} {actual!r}, expected {name!r}: "
                               "it was not built from pyturbo's pinned llama.cpp")
        types[name] = CacheType(name, type_id, int(ggml.ggml_blck_size(type_id)),
                                int(ggml.ggml_type_size(type_id)))
    return types


def cache_types() -> list[CacheType]:
    """Every type usable as cache_k / cache_v, with its block size and bits per value."""
    return list(_types_by_name().values())


def cache_type(name: "str | int | CacheType") -> CacheType:
    """Look a cache type up by name (case-insensitive) or ggml type id."""
    if isinstance(name, CacheType):
        return name
    types = _types_by_name()
    if isinstance(name, int) and not isinstance(name, bool):
        for t in types.values():
            if t.type_id == name:
                return t
    elif isinstance(name, str) and name.lower() in types:
        return types[name.lower()]
    raise CacheTypeError(
        f"unsupported cache type {name!r}; valid cache types: {', '.join(types)}")
