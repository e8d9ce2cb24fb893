"""The K/V cache types llama.cpp accepts, plus pyturbo's turbo types, as a static table.

The rows are ggml's type_traits at the pinned commit (ggml/src/ggml.c,
ggml-common.h) and csrc/turbo-common.h for the turbo rows; the list of names is
common/arg.cpp's kv_cache_types. A test checks every row against the loaded
libggml, so planning from a GGUF header needs no native library. Also here:
llama.cpp's rule for when it rotates K and V (src/llama-kv-cache.cpp), and
enum llama_flash_attn_type (include/llama.h).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

CHECKED_AT_PIN = "0c1e57098"

# llama.cpp's own cache-type list (common/arg.cpp kv_cache_types), in its order.
UPSTREAM_CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
TURBO_CACHE_TYPES = ("turbo2", "turbo3", "turbo4", "turbo3t", "turbo2t")

# Stable ids of pyturbo's types in enum ggml_type, for code that passes ints
# (llama-cpp-python's type_k/type_v).
GGML_TYPE_TURBO2 = 43
GGML_TYPE_TURBO3 = 44
GGML_TYPE_TURBO4 = 45
GGML_TYPE_TURBO3T = 46   # trellis-coded (csrc/turbo-tcq.h)
GGML_TYPE_TURBO2T = 47

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


# Every usable type by name, llama.cpp's first: a turbo block is one fp16 scale and
# 64 codes of 2, 3 or 4 bits; a trellis-coded one (turbo3t, turbo2t) a 10-bit scale,
# 6 start bits and a 64-step walk of 3 or 2 bits per step.
CACHE_TYPES = {t.name: t for t in (
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
    CacheType("turbo3t", GGML_TYPE_TURBO3T, 64, 26),
    CacheType("turbo2t", GGML_TYPE_TURBO2T, 64, 18),
)}


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
