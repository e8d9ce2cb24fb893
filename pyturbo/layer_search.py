"""Per-layer cache types chosen by measurement: the lowest predicted KLD that fits a budget.

    sens = pyturbo.layer_search.sensitivities("model.gguf")          # measured once, cached
    choice = pyturbo.layer_search.search(sens, budget=bytes_per_cell)
    choice.cache_k, choice.cache_v, choice.predicted_kld              # specs, e.g. "turbo3,q8_0@0-1"

How a layer's cache type costs quality is measured on the model itself, with the
KLD against the f16 cache (pyturbo.kl_divergence through pyturbo.kld_cache, so a
second run reads it back):
- per layer and side, the KLD when only that layer's K (or V) is PROBE and every
  other cache f16: the layer's sensitivity;
- per side and type of LADDER, the KLD when every layer's K (or V) has that type:
  how much worse or better than PROBE the type is, on this model.
A layer's side at type t is then predicted to cost sensitivity x U(t) / U(PROBE),
and a mix the sum over layers and sides (KLDs of small independent errors add up).
`search` picks the mix of least predicted KLD whose cache bytes per cell fit the
budget, exactly (a multiple-choice knapsack over bytes, by dynamic programming);
the caller verifies it with one real measurement.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from . import kld_cache, layer_types
from .cache_types import cache_type
from .gguf import read_gguf_header
from .upstream.geometry import ModelGeometry, model_geometry

# The types a layer may get, most bits first, and the one sensitivities are measured at
# (in the middle of the ladder, where the choices fall at 3-4 bits per value).
LADDER = ("f16", "q8_0", "q5_0", "q4_0", "turbo4", "turbo3t", "turbo3", "turbo2t", "turbo2")
PROBE = "turbo3"

# Chunks of 512 tokens per sensitivity: one KLD per layer and side, 2N+2x9 of them, so few;
# the ranking of layers is what counts, and the chosen mix is measured again in full.
SENSITIVITY_CHUNKS = 2

SIDES = ("K", "V")


@dataclass(frozen=True)
class Sensitivities:
    """What lowering each layer's K or V costs on one model, and each type per side."""

    geometry: ModelGeometry
    layer_kld: dict        # {side: [KLD with only that layer's side at PROBE, per layer]}
    type_kld: dict         # {side: {type name: KLD with every layer's side at that type}}
    chunks: int

    def cost(self, side: str, layer: int, type_name: str) -> float:
        """Predicted KLD of this layer's side at this type, the rest f16."""
        probe = self.type_kld[side][PROBE]
        scale = self.type_kld[side][type_name] / probe if probe > 0 else 0.0
        return self.layer_kld[side][layer] * scale


def _side_config(side: str, spec: str) -> tuple:
    return (spec, "f16") if side == "K" else ("f16", spec)


def _only_layer(layer: int, n_layer: int, type_name: str) -> str:
    types = [cache_type("f16")] * n_layer
    types[layer] = cache_type(type_name)
    return layer_types.format_spec(types)


def sensitivities(model: "str | os.PathLike", chunks: int = SENSITIVITY_CHUNKS, text=None,
                  n_threads: "int | None" = None, progress: bool = True) -> Sensitivities:
    """Measure (or read back) every layer's and every type's KLD on this model file."""
    geometry = model_geometry(read_gguf_header(model))
    attention = [i for i, layer in enumerate(geometry.layers) if layer.has_kv]
    configs = {}
    for side in SIDES:
        for layer in attention:
            configs[side, "layer", layer] = _side_config(side, _only_layer(layer, geometry.n_layer, PROBE))
        for name in LADDER:
            configs[side, "type", name] = _side_config(side, name)
    measured = kld_cache.measure(model, list(dict.fromkeys(configs.values())), chunks=chunks, text=text,
                                 n_threads=n_threads, progress=progress)
    layer_kld = {side: [0.0] * geometry.n_layer for side in SIDES}
    type_kld = {side: {} for side in SIDES}
    for (side, kind, which), config in configs.items():
        value = max(measured[config].kld, 0.0)
        if kind == "layer":
            layer_kld[side][which] = value
        else:
            type_kld[side][which] = value
    return Sensitivities(geometry, layer_kld, type_kld, chunks)


@dataclass(frozen=True)
class LayerChoice:
    """A type per layer for K and V, its cost and its predicted quality."""

    cache_k: str            # spec (pyturbo.layer_types)
    cache_v: str
    bytes_per_cell: int     # K + V bytes of one cell over all layers
    bits_per_value: float   # mean over K and V values
    predicted_kld: float


def row_bytes(geometry: ModelGeometry, side: str, layer: int, type_name: str) -> int:
    values = geometry.layers[layer].k_values if side == "K" else geometry.layers[layer].v_values
    return cache_type(type_name).row_bytes(values)


def bytes_per_cell(geometry: ModelGeometry, cache_k, cache_v) -> int:
    """K + V bytes one cell takes over all layers, for a type or spec per side."""
    total = 0
    for side, spec in zip(SIDES, (cache_k, cache_v)):
        types = layer_types.parse(spec, geometry.n_layer)
        total += sum(row_bytes(geometry, side, i, types[i].name)
                     for i, layer in enumerate(geometry.layers) if layer.has_kv)
    return total


def _usable(geometry: ModelGeometry, side: str, type_name: str) -> bool:
    head = geometry.head_size_k if side == "K" else geometry.head_size_v
    return head % cache_type(type_name).block_size == 0


def search(sens: Sensitivities, budget: int, ladder=LADDER) -> "LayerChoice | None":
    """The mix of least predicted KLD whose bytes per cell are at most `budget`; None if even
    the cheapest types do not fit."""
    geometry = sens.geometry
    items = [(side, i) for side in SIDES for i, layer in enumerate(geometry.layers) if layer.has_kv]
    # best[c]: least predicted KLD of the items so far at exactly c bytes (inf: unreachable)
    best = np.full(budget + 1, np.inf)
    best[0] = 0.0
    picks = []
    for side, layer in items:
        options = [t for t in ladder if _usable(geometry, side, t)]
        nxt = np.full(budget + 1, np.inf)
        pick = np.full(budget + 1, -1, dtype=np.int16)
        for j, name in enumerate(options):
            size = row_bytes(geometry, side, layer, name)
            if size > budget:
                continue
            candidate = np.full(budget + 1, np.inf)
            candidate[size:] = best[:budget + 1 - size] + sens.cost(side, layer, name)
            better = candidate < nxt
            nxt[better], pick[better] = candidate[better], j
        picks.append((options, pick))
        best = nxt
    if not np.isfinite(best).any():
        return None
    spent = int(np.argmin(best))
    predicted = float(best[spent])
    chosen = {side: [cache_type("f16")] * geometry.n_layer for side in SIDES}
    for (side, layer), (options, pick) in zip(reversed(items), reversed(picks)):
        name = options[pick[spent]]
        chosen[side][layer] = cache_type(name)
        spent -= row_bytes(geometry, side, layer, name)
    spec_k, spec_v = (layer_types.format_spec(chosen[side]) for side in SIDES)
    total = bytes_per_cell(geometry, spec_k, spec_v)
    values = sum(layer.k_values + layer.v_values for layer in geometry.layers if layer.has_kv)
    return LayerChoice(spec_k, spec_v, total, 8.0 * total / values, predicted)
