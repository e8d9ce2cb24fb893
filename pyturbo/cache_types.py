"""KV-cache types and the rules for using them: the one home of both.

The types are llama.cpp's for -ctk/-ctv plus pyturbo's turbo types, as a static
table (a test checks it against the loaded libggml), so planning from a GGUF
header needs no native library. `check_cache` is every rule llama.cpp applies to
a K/V pair, checked in Python before a context is made, with a message to act on.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Sequence

from .errors import CacheTypeError

# llama.cpp's own cache-type list (common/arg.cpp kv_cache_types), in its order.
UPSTREAM_CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
TURBO_CACHE_TYPES = ("turbo2", "turbo3", "turbo4")

# Stable ids of pyturbo's types in enum ggml_type, for code that passes ints
# (llama-cpp-python's type_k/type_v).
GGML_TYPE_TURBO2 = 43
GGML_TYPE_TURBO3 = 44
GGML_TYPE_TURBO4 = 45

# Side of the blocks llama.cpp's Hadamard rotation works on: a head size must be a multiple.
ROTATION_BLOCK = 64

# llama_flash_attn_type by its -fa name.
FLASH_ATTN_MODES = {"auto": -1, "off": 0, "on": 1}


@dataclass(frozen=True)
class CacheType:
    """One K/V cache type: its ggml type id, values per block and bytes per block."""

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


# ggml's type_traits at the pinned commit (ggml.c, ggml-common.h) and csrc/turbo-common.h:
# a turbo block is one fp16 scale and 64 codes of 2, 3 or 4 bits.
_TYPES = {t.name: t for t in (
    CacheType("f32", 0, 1, 4),
    CacheType("f16", 1, 1, 2),
    CacheType("bf16", 30, 1, 2),
    CacheType("q8_0", 8, 32, 34),
    CacheType("q4_0", 2, 32, 18),
    CacheType("q4_1", 3, 32, 20),
    CacheType("iq4_nl", 20, 32, 18),
    CacheType("q5_0", 6, 32, 22),
    CacheType("q5_1", 7, 32, 24),
    CacheType("turbo2", GGML_TYPE_TURBO2, 64, 18),
    CacheType("turbo3", GGML_TYPE_TURBO3, 64, 26),
    CacheType("turbo4", GGML_TYPE_TURBO4, 64, 34),
)}


def cache_types() -> list[CacheType]:
    """Every type usable as cache_k / cache_v, with its block size and bits per value."""
    return list(_TYPES.values())


def cache_type(name: "str | int | CacheType") -> CacheType:
    """Look a cache type up by name (case-insensitive) or ggml type id."""
    if isinstance(name, CacheType):
        return name
    if isinstance(name, int) and not isinstance(name, bool):
        for t in _TYPES.values():
            if t.type_id == name:
                return t
    elif isinstance(name, str) and name.lower() in _TYPES:
        return _TYPES[name.lower()]
    raise CacheTypeError(
        f"unsupported cache type {name!r}; valid cache types: {', '.join(_TYPES)}")


def flash_attn_mode(value: "str | bool | int") -> int:
    """llama_flash_attn_type for 'on' / 'off' / 'auto' (or True / False, or the id itself)."""
    if isinstance(value, bool):
        return FLASH_ATTN_MODES["on" if value else "off"]
    if isinstance(value, int) and value in FLASH_ATTN_MODES.values():
        return value
    mode = FLASH_ATTN_MODES.get(str(value).lower())
    if mode is None:
        raise ValueError(f"flash_attn must be one of on, off, auto (got {value!r})")
    return mode


def flash_attn_enabled(value: "str | bool | int") -> bool:
    """Whether a flash-attention setting means flash attention: 'auto' resolves to on
    wherever the op runs (the CPU included), as llama.cpp decides at context creation."""
    return flash_attn_mode(value) != FLASH_ATTN_MODES["off"]


def rotation_disabled() -> bool:
    """Whether LLAMA_ATTN_ROT_DISABLE is set the way llama.cpp reads it (atoi != 0)."""
    match = re.match(r"\s*[+-]?\d+", os.environ.get("LLAMA_ATTN_ROT_DISABLE", ""))
    return bool(match and int(match.group()) != 0)


def attention_rotation(geometry, cache_k: CacheType, cache_v: CacheType) -> tuple[bool, bool]:
    """Whether llama.cpp rotates K and V (llama_kv_cache: a quantized type, one head size
    for every layer, a multiple of ROTATION_BLOCK, and LLAMA_ATTN_ROT_DISABLE unset)."""
    if rotation_disabled() or geometry.mixed_head_sizes:
        return False, False
    k_head, v_head = geometry.head_size_k, geometry.head_size_v
    return (cache_k.quantized and k_head > 0 and k_head % ROTATION_BLOCK == 0,
            cache_v.quantized and v_head > 0 and v_head % ROTATION_BLOCK == 0)


def check_cache(cache_k: CacheType, cache_v: CacheType, flash_attn: "str | bool | int" = "auto",
                geometry=None) -> None:
    """Refuse, as CacheTypeError, a K/V pair llama.cpp would reject (often with only a log line).

    flash_attn: 'on', 'off' or 'auto' ('auto' is on wherever the op runs, the CPU
    included). geometry: the model's (pyturbo.geometry.ModelGeometry, or
    Model.geometry); without it only the rules that do not depend on the model apply.
    """
    if cache_v.quantized and not flash_attn_enabled(flash_attn):
        raise CacheTypeError(
            f"the quantized V cache type {cache_v.name} requires flash attention; "
            "use flash_attn='on' or 'auto' (-fa on), or an unquantized V cache (f16)")
    if geometry is None:
        return
    for role, ctype, head_size in (("K", cache_k, geometry.head_size_k), ("V", cache_v, geometry.head_size_v)):
        if ctype.quantized and head_size % ctype.block_size != 0:
            raise CacheTypeError(
                f"{role} cache type {ctype.name} stores blocks of {ctype.block_size} values, but this "
                f"model's {role} head size is {head_size}, not a multiple of {ctype.block_size}; "
                "use f16 or a type whose block size divides the head size")
        if not ctype.turbo:
            continue
        if rotation_disabled():
            raise CacheTypeError(
                f"{role} cache type {ctype.name} needs llama.cpp's attention rotation, which "
                "LLAMA_ATTN_ROT_DISABLE turns off; unset it or use an upstream cache type (q8_0, q4_0)")
        if geometry.mixed_head_sizes:
            raise CacheTypeError(
                f"{role} cache type {ctype.name} needs llama.cpp's attention rotation, which is off when "
                "the layers have different head sizes; use an upstream type (q8_0, q4_0)")


def kv_configs(configs: "str | Sequence") -> list[tuple[CacheType, CacheType]]:
    """[(K, V)] from "f16/f16,q8_0/turbo3" or [("q8_0", "turbo3"), "turbo4/turbo4", ...]."""
    items = configs.split(",") if isinstance(configs, str) else list(configs)
    pairs = []
    for item in items:
        parts = item.strip().split("/") if isinstance(item, str) else list(item)
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"a configuration is K/V, e.g. q8_0/turbo3 (got {item!r})")
        pairs.append((cache_type(parts[0].strip()), cache_type(parts[1].strip())))
    if not pairs:
        raise ValueError("no K/V configurations given")
    return pairs
