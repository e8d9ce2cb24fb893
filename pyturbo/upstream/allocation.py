"""llama.cpp's allocation rules for a context, as functions of a model's geometry: cells,
KV-cache bytes, recurrent state, compute buffer. No file, no native library.

pyturbo.memory's planner (estimate, max_context) and pyturbo.host's check that a
context fits in this machine's memory both use these.

They follow llama.cpp's own rules at the pinned commit
(src/llama-context.cpp, llama-kv-cache.cpp, llama-kv-cache-iswa.cpp,
llama-memory-recurrent.cpp):

- cells: n_ctx rounded up to a multiple of 256 (per sequence when the
  sequences have their own streams); sliding-window layers keep
  min(cells, window * streams + n_ubatch) rounded up to 256, or every cell with
  swa_full;
- per layer: K row = head_k * n_head_kv values, V row = head_v * n_head_kv values
  (without flash attention V is stored transposed and every layer uses the
  widest V row); MLA keeps one compressed K row and no V; recurrent layers keep
  f32 conv and SSM states per sequence instead;
- a row of n values costs n / block * block_bytes of the cache type.

The compute buffer (the scheduler's scratch for the worst-case batch) is an
estimate: the largest of the live tensors of the embedding/FFN, attention and
output phases of one n_ubatch-token batch, which is how ggml's allocator reuses
memory. It is within a few percent of llama.cpp's CPU figure for llama-type models.

"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .cache_table import CacheType, attention_rotation
from .geometry import ModelGeometry

CHECKED_AT_PIN = "0c1e57098"

# llama_context pads n_ctx (and each sequence's share) to this many cells.
CELL_PADDING = 256

# llama_context_default_params(): the batch sizes pyturbo.Context also uses.
DEFAULT_N_BATCH = 512
DEFAULT_N_UBATCH = 512


@dataclass(frozen=True)
class CacheCells:
    """How many cells llama.cpp gives each cache for a context request."""

    n_ctx: int        # the context llama.cpp reports (padded)
    cells: int        # cells per stream of the full-attention cache
    cells_swa: int    # cells per stream of the sliding-window cache
    n_stream: int     # 1, or one stream per sequence when they are not unified
    n_ubatch: int     # tokens of the worst-case batch


def cache_cells(geometry: ModelGeometry, n_ctx: int, n_seq: int = 1, swa_full: bool = False,
                kv_unified: bool = False, n_batch: int = DEFAULT_N_BATCH,
                n_ubatch: int = DEFAULT_N_UBATCH) -> CacheCells:
    """llama_context's padding of n_ctx and llama_kv_cache_iswa's window size."""
    if n_seq < 1:
        raise ValueError(f"n_seq must be >= 1, got {n_seq}")
    if n_ctx < 0:
        raise ValueError(f"n_ctx must be >= 0 (0 = the model's training context), got {n_ctx}")
    requested = n_ctx or geometry.n_ctx_train
    if requested <= 0:
        raise ValueError("n_ctx is 0 and the model states no training context; pass n_ctx")
    # The batch is capped by the requested (unpadded) context, as llama_context does.
    n_batch = min(requested, n_batch)
    n_ubatch = min(n_batch, n_ubatch)
    padded = _pad(requested, CELL_PADDING)
    if kv_unified:
        cells, n_stream = padded, 1
    else:
        cells, n_stream = _pad(padded // n_seq, CELL_PADDING), n_seq
        padded = cells * n_seq
    cells_swa = cells
    if geometry.n_swa and not swa_full:
        window = geometry.n_swa * (n_seq if kv_unified else 1) + n_ubatch
        cells_swa = _pad(min(cells, window), CELL_PADDING)
    return CacheCells(padded, cells, cells_swa, n_stream, min(padded, n_ubatch))


def _pad(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


def per_layer(cache: "CacheType | Sequence[CacheType]", n_layer: int) -> "Sequence[CacheType]":
    """A cache type for each of n_layer layers: one type for all, or already one per layer."""
    return (cache,) * n_layer if isinstance(cache, CacheType) else cache


def standing(cache: "CacheType | Sequence[CacheType]") -> CacheType:
    """The type llama.cpp decides its rotation by: with a type per layer, the one pyturbo's
    per-layer hook passes it (pyturbo.layer_types.standing_type)."""
    from ..layer_types import standing_type

    return cache if isinstance(cache, CacheType) else standing_type(cache)


def kv_bytes(geometry: ModelGeometry, cells: CacheCells, cache_k: "CacheType | Sequence[CacheType]",
             cache_v: "CacheType | Sequence[CacheType]", flash_attn: bool = True) -> tuple:
    """(K bytes, V bytes) of every attention layer's cache tensors (llama_kv_cache::size_k/v_bytes);
    cache_k / cache_v: one type, or one per layer."""
    # Without flash attention V is stored transposed, every layer padded to the widest row.
    widest_v = max((layer.v_values for layer in geometry.layers if layer.has_kv), default=0)
    types_k, types_v = per_layer(cache_k, geometry.n_layer), per_layer(cache_v, geometry.n_layer)
    k_total = v_total = 0
    for layer, type_k, type_v in zip(geometry.layers, types_k, types_v):
        if not layer.has_kv:
            continue
        n_cells = (cells.cells_swa if layer.swa else cells.cells) * cells.n_stream
        k_total += type_k.row_bytes(layer.k_values) * n_cells
        if layer.head_v:
            v_total += type_v.row_bytes(layer.v_values if flash_attn else widest_v) * n_cells
    return k_total, v_total


def recurrent_bytes(geometry: ModelGeometry, n_seq: int = 1) -> int:
    """f32 conv/shift and SSM/WKV states of the recurrent layers, one cell per sequence."""
    n_recurrent = sum(layer.recurrent for layer in geometry.layers)
    return n_recurrent * (geometry.recurrent_r + geometry.recurrent_s) * 4 * max(1, n_seq)


F32 = 4


def _k_rotation_size(head_k: int) -> int:
    """Side of llama.cpp's K rotation matrix: the largest power of two >= 64 dividing the head."""
    n = 64
    while head_k % (2 * n) == 0:
        n *= 2
    return n


def compute_bytes(geometry: ModelGeometry, cells: CacheCells, flash_attn: bool = True,
                  rotate_k: bool = False, rotate_v: bool = False, n_seq: int = 1) -> int:
    """The scheduler's compute buffer for the worst-case batch, plus the logits output buffer.

    ggml's allocator frees a tensor after its last use and reuses the space, so the
    buffer is about the largest set of tensors alive at once. Per batch of T tokens:
    - inputs kept through the layers: token ids, positions, cache slots (28 bytes a
      token), the attention mask (n_kv x T; f16 with flash attention, else f32) and
      the Hadamard matrices of a rotated cache;
    - feed-forward: gate, up and their product (3 n_ff) beside the residual stream
      and its norm (2 n_embd), per token, in f32 (a rotated V with flash attention
      keeps one more attention-output row alive);
    - attention: the residual, the norm, Q, K, V and the output; without flash
      attention also the n_kv x T scores of every head (softmax works in place);
    - output: the logits (n_vocab x T) beside two rows of n_embd.
    """
    T = cells.n_ubatch
    E = geometry.n_embd
    attention_layers = [layer for layer in geometry.layers if layer.has_kv]
    masks = 0
    for swa in (False, True):
        if any(layer.swa == swa for layer in attention_layers):
            masks += (cells.cells_swa if swa else cells.cells) * T * (2 if flash_attn else F32)
    rotations = 0
    if rotate_k:
        rotations += _k_rotation_size(geometry.head_size_k) ** 2 * F32
    if rotate_v:
        rotations += 64 * 64 * F32
    inputs = T * 28 + masks + rotations

    widest = max(attention_layers, key=lambda layer: layer.n_head * layer.head_k, default=None)
    n_ff = max((layer.n_ff for layer in geometry.layers), default=0)
    if geometry.n_expert_used and geometry.n_ff_expert:
        n_ff = max(n_ff, geometry.n_expert_used * geometry.n_ff_expert)
    ffn_row = 3 * n_ff + 2 * E
    if widest is not None and rotate_v and flash_attn:
        ffn_row += widest.n_head * widest.head_v
    phases = [ffn_row * T * F32 + inputs]

    if widest is not None:
        out = widest.n_head * (widest.head_v or widest.head_k)
        row = 2 * E + widest.n_head * widest.head_k + widest.k_values + widest.v_values + out
        attention = row * T * F32 + inputs
        if not flash_attn:
            attention += (cells.cells * widest.n_head + out) * T * F32
        phases.append(attention)
    if geometry.recurrent_s:
        # A recurrent layer's scan reads and writes the states of every sequence.
        phases.append(2 * (geometry.recurrent_r + geometry.recurrent_s) * F32 * max(1, n_seq)
                      + 4 * E * T * F32 + inputs)
    phases.append((geometry.n_vocab + 2 * E) * T * F32 + T * 4)
    output_buffer = geometry.n_vocab * max(1, n_seq) * F32
    return max(phases) + output_buffer


@dataclass(frozen=True)
class ContextBytes:
    """What one context allocates besides the weights."""

    cells: CacheCells
    kv_k: int
    kv_v: int
    compute: int      # compute (scheduler) buffer + logits output buffer
    recurrent: int

    @property
    def total(self) -> int:
        return self.kv_k + self.kv_v + self.compute + self.recurrent


def context_bytes(geometry: ModelGeometry, n_ctx: int, cache_k: "CacheType | Sequence[CacheType]",
                  cache_v: "CacheType | Sequence[CacheType]",
                  flash_attn: bool = True, *, n_seq: int = 1, swa_full: bool = False, kv_unified: bool = False,
                  n_batch: int = DEFAULT_N_BATCH, n_ubatch: int = DEFAULT_N_UBATCH) -> ContextBytes:
    """Cells, caches, recurrent state and compute buffer of a context of n_ctx tokens."""
    cells = cache_cells(geometry, n_ctx, n_seq, swa_full, kv_unified, n_batch, n_ubatch)
    kv_k, kv_v = kv_bytes(geometry, cells, cache_k, cache_v, flash_attn)
    compute = compute_bytes(geometry, cells, flash_attn,
                            *attention_rotation(geometry, standing(cache_k), standing(cache_v)),
                            n_seq=n_seq)
    return ContextBytes(cells, kv_k, kv_v, compute, recurrent_bytes(geometry, n_seq))
