"""The KV-cache types pyturbo takes, and every rule for using them: the API over the table.

The table itself (llama.cpp's types for -ctk/-ctv plus pyturbo's turbo types, their
ids and block sizes, and llama.cpp's rotation rule) is pyturbo.upstream.cache_table.
Here: looking a type up by name or id, reading a flash-attention setting, and
`check_cache`, every rule llama.cpp applies to a K/V pair, checked in Python before
a context is made, with a message to act on.
"""

from __future__ import annotations

from typing import Sequence

from .errors import CacheTypeError
from .upstream.cache_table import CACHE_TYPES, FLASH_ATTN_MODES, CacheType, rotation_disabled


def cache_types() -> list[CacheType]:
    """Every type usable as cache_k / cache_v, with its block size and bits per value."""
    return list(CACHE_TYPES.values())


def cache_type(name: "str | int | CacheType") -> CacheType:
    """Look a cache type up by name (case-insensitive) or ggml type id."""
    if isinstance(name, CacheType):
        return name
    if isinstance(name, int) and not isinstance(name, bool):
        for t in CACHE_TYPES.values():
            if t.type_id == name:
                return t
    elif isinstance(name, str) and name.lower() in CACHE_TYPES:
        return CACHE_TYPES[name.lower()]
    raise CacheTypeError(
        f"unsupported cache type {name!r}; valid cache types: {', '.join(CACHE_TYPES)}")


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


def check_cache(cache_k: CacheType, cache_v: CacheType, flash_attn: "str | bool | int" = "auto",
                geometry=None) -> None:
    """Refuse, as CacheTypeError, a K/V pair llama.cpp would reject (often with only a log line).

    flash_attn: 'on', 'off' or 'auto' ('auto' is on wherever the op runs, the CPU
    included). geometry: the model's (pyturbo.upstream.geometry.ModelGeometry, or
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
