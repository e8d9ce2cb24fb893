"""How much memory a model needs for a context, before loading it.

    est = pyturbo.memory.estimate("model.gguf", n_ctx=32768, cache_k="q8_0", cache_v="turbo3")
    est.weights, est.kv_k, est.kv_v, est.compute, est.total      # bytes

`estimate` reads only the GGUF header (pyturbo.gguf; no tensor data, no native
library), so it works for a 70B file on a laptop, and for header-only files.
It follows llama.cpp's own allocation rules at the pinned commit, which
pyturbo.upstream.allocation writes down. pyturbo.measure.measure says what a real
context allocates, to check an estimate against.
"""

from __future__ import annotations

from dataclasses import dataclass

from .upstream.allocation import CELL_PADDING, DEFAULT_N_BATCH, DEFAULT_N_UBATCH, context_bytes
from . import layer_types
from .cache_types import flash_attn_enabled
from .upstream.geometry import model_geometry
from .gguf import GGUFHeader, read_gguf_header
from .units import parse_size
from .upstream.quant_presets import weight_bytes_as
from .weights import weight_bytes

@dataclass
class MemoryEstimate:
    """Bytes a context needs: weights + K cache + V cache + recurrent state + compute buffers."""

    n_ctx: int             # context as llama.cpp sets it (padded to 256 cells)
    cache_k: str
    cache_v: str
    weights: int
    kv_k: int
    kv_v: int
    compute: int           # compute (scheduler) buffer + logits output buffer
    recurrent: int = 0     # recurrent layers' states (0 for pure attention models)
    cells: int = 0         # cells per stream of the full-attention cache
    cells_swa: int = 0     # cells per stream of the sliding-window cache (0: none)

    @property
    def kv(self) -> int:
        return self.kv_k + self.kv_v

    @property
    def total(self) -> int:
        return self.weights + self.kv_k + self.kv_v + self.recurrent + self.compute


def _header_of(model) -> GGUFHeader:
    if isinstance(model, GGUFHeader):
        return model
    return read_gguf_header(getattr(model, "path", model))  # a pyturbo.Model: its file


def estimate(model, n_ctx: int, cache_k: str = "f16", cache_v: str = "f16", n_seq: int = 1,
             flash_attn: "bool | str" = True, *, swa_full: bool = False,
             kv_unified: bool = False, n_batch: int = DEFAULT_N_BATCH, n_ubatch: int = DEFAULT_N_UBATCH,
             weight_quant: "str | None" = None) -> MemoryEstimate:
    """Memory for a context of n_ctx tokens with the given cache types, from the GGUF header alone.

    cache_k / cache_v: a type name, or a type per layer (a spec such as
    "turbo3,q8_0@0-1" or a list; pyturbo.layer_types).

    model: a path, a pyturbo.Model or a GGUFHeader. n_ctx 0 means the training
    context. swa_full keeps the whole context in sliding-window layers (as
    llama.cpp's --swa-full). weight_quant: one of WEIGHT_QUANTS, to ask what the
    weights would take quantized that way instead of as stored.
    """
    header = _header_of(model)
    geometry = model_geometry(header)
    k, v = layer_types.parse_pair(cache_k, cache_v, flash_attn, geometry)
    sizes = context_bytes(geometry, n_ctx, k.types, v.types, flash_attn_enabled(flash_attn), n_seq=n_seq,
                          swa_full=swa_full, kv_unified=kv_unified, n_batch=n_batch, n_ubatch=n_ubatch)
    weights = weight_bytes_as(header, weight_quant) if weight_quant else weight_bytes(header)
    return MemoryEstimate(n_ctx=sizes.cells.n_ctx, cache_k=k.spec, cache_v=v.spec, weights=weights,
                          kv_k=sizes.kv_k, kv_v=sizes.kv_v, compute=sizes.compute, recurrent=sizes.recurrent,
                          cells=sizes.cells.cells, cells_swa=sizes.cells.cells_swa if geometry.n_swa else 0)


def max_context(model, memory: "int | str", cache_k: str = "f16", cache_v: str = "f16", *,
                limit: "int | None" = None, **kwargs) -> "tuple[int, MemoryEstimate | None]":
    """The largest context (a multiple of 256, at most `limit`, default the training
    context) whose estimate fits in `memory` (bytes, or a size such as "16GiB"), with
    that estimate; (0, None) if none fits."""
    memory = parse_size(memory)
    header = _header_of(model)
    geometry = model_geometry(header)
    limit = limit or geometry.n_ctx_train or 1 << 20
    top = limit // CELL_PADDING * CELL_PADDING or CELL_PADDING

    def at(n_ctx: int) -> MemoryEstimate:
        return estimate(header, n_ctx, cache_k, cache_v, **kwargs)

    best = at(top)
    if best.total <= memory:
        return min(limit, best.n_ctx), best
    low, high = 0, top // CELL_PADDING  # in units of 256 cells; memory grows with the context
    found = None
    while low < high:
        mid = (low + high + 1) // 2
        candidate = at(mid * CELL_PADDING)
        if candidate.total <= memory:
            low, found = mid, candidate
        else:
            high = mid - 1
    return (low * CELL_PADDING, found) if found else (0, None)


# The n_ubatch values the planner tries, largest first: llama.cpp takes any n_ubatch up
# to n_batch and reserves its compute buffer for one n_ubatch-token batch; these are
# the powers of two its own tools offer.
UBATCH_CHOICES = (512, 256, 128, 64, 32)

# A smaller n_ubatch prefills slower (docs/results/ubatch-prefill-smollm2.md), so the
# planner takes the largest one whose context is within this share of the longest.
UBATCH_CONTEXT_SHARE = 0.95


@dataclass(frozen=True)
class BatchedFit:
    """The longest context over n_ubatch choices: the largest n_ubatch that reaches the
    limit, else that comes within UBATCH_CONTEXT_SHARE of the longest; what it reaches,
    and what the first choice reached."""

    n_ctx: int
    estimate: "MemoryEstimate | None"
    n_ubatch: int
    n_ctx_first: int    # the context the first (default) choice reaches


def max_context_over_ubatch(model, memory: "int | str", cache_k: str = "f16", cache_v: str = "f16", *,
                            choices=UBATCH_CHOICES, limit: "int | None" = None, **kwargs) -> BatchedFit:
    """max_context for each n_ubatch of `choices` (largest first), when the first does not
    already reach `limit` (default the training context): the compute buffer grows with
    n_ubatch (the logits alone are n_vocab x n_ubatch floats), so on a large-vocabulary
    model in little memory it, not the KV cache, limits the context."""
    header = _header_of(model)
    limit = limit or model_geometry(header).n_ctx_train or 1 << 20
    reached = {}
    for n_ubatch in choices:
        reached[n_ubatch] = max_context(header, memory, cache_k, cache_v, limit=limit, n_ubatch=n_ubatch, **kwargs)
        if reached[choices[0]][0] >= limit:
            break
    longest = max(n for n, _ in reached.values())
    # Reaching the limit is the goal itself; short of it, nearly the longest will do.
    enough = longest if longest >= limit else UBATCH_CONTEXT_SHARE * longest
    # The choice reaching the longest context qualifies itself, so next() always finds one.
    n_ubatch = next(ub for ub, (n, _) in reached.items() if n >= enough)
    n_ctx, est = reached[n_ubatch]
    return BatchedFit(n_ctx, est, n_ubatch, reached[choices[0]][0])
