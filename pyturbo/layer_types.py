"""A KV cache type per layer: the spec that names one, and what the layers need as a whole.

    ctx = model.context(cache_k="turbo3,q8_0@0-1,q8_0@-2", cache_v="turbo3")
    types = pyturbo.layer_types.parse("turbo3,q8_0@0-1,q8_0@-2", n_layer=30)

A spec is a default type, then overrides, comma-separated; later items win:
type@N is layer N, type@A-B layers A to B, type@-N the last N layers. A list or
tuple of names, one per layer, says the same. csrc/llama/turbo-kv-layers.cpp reads
the same grammar (from $PYTURBO_CACHE_K_LAYERS / $PYTURBO_CACHE_V_LAYERS, for
contexts llama-server or llama-cpp-python make).

The context's own type_k / type_v stand for the layers as a whole (`standing`):
the first turbo type among them, else the first quantized one, else the default,
so that llama.cpp's Hadamard rotation and pyturbo's K/V transforms are on whenever
one layer needs them; both are exact, so the other layers lose nothing.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from .cache_types import cache_type, check_cache
from .errors import CacheTypeError
from .upstream.cache_table import CacheType

# The variables the native library reads a spec from for contexts pyturbo does not make.
ENV_K = "PYTURBO_CACHE_K_LAYERS"
ENV_V = "PYTURBO_CACHE_V_LAYERS"


@dataclass(frozen=True)
class LayerTypes:
    """One side's (K or V) cache type for each layer."""

    types: tuple  # CacheType per layer

    @property
    def uniform(self) -> bool:
        return len(set(self.types)) <= 1

    @property
    def standing(self) -> CacheType:
        """The type that stands for every layer in llama.cpp's own decisions."""
        return standing_type(self.types)

    @property
    def spec(self) -> str:
        """The shortest spec of these types (the bare name when they are all one type)."""
        return format_spec(self.types)

    def __len__(self) -> int:
        return len(self.types)

    def __getitem__(self, layer: int) -> CacheType:
        return self.types[layer]

    def type_ids(self) -> list[int]:
        return [t.type_id for t in self.types]


def is_layered(value) -> bool:
    """Whether a cache_k / cache_v value names types per layer (a spec or a list)."""
    if isinstance(value, str):
        return "," in value or "@" in value
    return isinstance(value, (list, tuple))


def _demand(t: CacheType) -> int:
    return 2 if t.turbo else 1 if t.quantized else 0


def standing_type(types: Sequence[CacheType]) -> CacheType:
    """The first turbo type, else the first quantized one, else the first (the default)."""
    best = types[0]
    for t in types:
        if _demand(t) > _demand(best):
            best = t
    return best


def _layer_range(item: str, where: str, n_layer: int) -> range:
    def index(text: str) -> int:
        if not text.isdigit() or len(text) > 6:
            raise ValueError
        return int(text)

    try:
        if where.startswith("-"):
            n = index(where[1:])
            first, last = n_layer - n, n_layer - 1
            if n < 1:
                raise ValueError
        elif "-" in where:
            head, tail = where.split("-", 1)
            first, last = index(head), index(tail)
        else:
            first = last = index(where)
    except ValueError:
        first, last = 1, 0
    if not 0 <= first <= last < n_layer:
        raise CacheTypeError(f"{item!r} names no layers of the {n_layer} there are; give type@N, "
                             f"type@A-B or type@-N (the last N layers)")
    return range(first, last + 1)


def parse(value: "str | Sequence | CacheType", n_layer: int) -> LayerTypes:
    """The types of n_layer layers from a name, a spec or a list of one name per layer."""
    if not isinstance(value, str) and isinstance(value, (list, tuple)):
        if len(value) != n_layer:
            raise CacheTypeError(f"{len(value)} per-layer cache types given for a model of {n_layer} layers")
        return LayerTypes(tuple(cache_type(t) for t in value))
    if not isinstance(value, str):
        return LayerTypes((cache_type(value),) * n_layer)
    items = [item.strip() for item in value.split(",")]
    if "@" in items[0]:
        raise CacheTypeError(f"cache spec {value!r}: it starts with the default type, without '@' "
                             "(e.g. turbo3,q8_0@0-1)")
    types = [cache_type(items[0])] * n_layer
    for item in items[1:]:
        name, at, where = item.partition("@")
        if not at:
            raise CacheTypeError(f"cache spec {value!r}: {item!r} names no layers; every type after "
                                 "the first says which (type@N, type@A-B, type@-N)")
        t = cache_type(name.strip())
        for layer in _layer_range(item, where.strip(), n_layer):
            types[layer] = t
    return LayerTypes(tuple(types))


def _runs(types: Sequence[CacheType]) -> list[tuple[int, int, CacheType]]:
    """(first, last, type) of each stretch of equal types."""
    runs = []
    for i, t in enumerate(types):
        if runs and runs[-1][2] == t:
            runs[-1] = (runs[-1][0], i, t)
        else:
            runs.append((i, i, t))
    return runs


def format_spec(types: Sequence[CacheType]) -> str:
    """The shortest spec: the commonest type as the default (the earliest of a tie), then
    every other stretch of layers as type@N, type@A-B or, reaching the end, type@-N."""
    counts = Counter(types)
    default = max(types, key=lambda t: (counts[t], -types.index(t)))
    items = [default.name]
    n = len(types)
    for first, last, t in _runs(types):
        if t == default:
            continue
        if first == last:
            where = str(first)
        elif last == n - 1 and first > 0:
            where = f"-{n - first}"
        else:
            where = f"{first}-{last}"
        items.append(f"{t.name}@{where}")
    return ",".join(items)


def bits_per_value(types: Sequence[CacheType], values_per_layer: Sequence[int]) -> float:
    """Mean bits per cached value over layers that hold values_per_layer each."""
    total = sum(values_per_layer)
    return sum(t.bits_per_value * n for t, n in zip(types, values_per_layer)) / total if total else 0.0


def mean_bits(types: LayerTypes, geometry, side: str) -> float:
    """Mean bits per cached value of one side ('K' or 'V') over a model's attention layers."""
    layers = [(t, layer) for t, layer in zip(types.types, geometry.layers) if layer.has_kv]
    values = [layer.k_values if side == "K" else layer.v_values for _, layer in layers]
    return bits_per_value([t for t, _ in layers], values)


def parse_pair(cache_k, cache_v, flash_attn, geometry) -> "tuple[LayerTypes, LayerTypes]":
    """Both sides' types on a model, every K type with every V type checked as
    pyturbo.cache_types.check_cache checks one pair."""
    k, v = parse(cache_k, geometry.n_layer), parse(cache_v, geometry.n_layer)
    for type_k, type_v in itertools.product(set(k.types), set(v.types)):
        check_cache(type_k, type_v, flash_attn, geometry)
    return k, v


def native_struct(types_k: LayerTypes, types_v: LayerTypes):
    """struct pyturbo_kv_layer_types for per-layer caches (NULL when both sides are uniform),
    and the arrays it points to, to keep alive until the context is made."""
    from ._native import ffi  # here, so that planning from a header needs no native library

    if types_k.uniform and types_v.uniform:
        return ffi.NULL, ()
    ids_k = ffi.new("int32_t[]", types_k.type_ids())
    ids_v = ffi.new("int32_t[]", types_v.type_ids())
    layers = ffi.new("struct pyturbo_kv_layer_types *", {"n_layer": len(types_k), "type_k": ids_k, "type_v": ids_v})
    return layers, (ids_k, ids_v)
