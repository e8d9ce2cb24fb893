"""How much memory a model needs for a context, before loading it, and what llama.cpp really allocates.

    est = pyturbo.memory.estimate("model.gguf", n_ctx=32768, cache_k="q8_0", cache_v="turbo3")
    est.weights, est.kv_k, est.kv_v, est.compute, est.total      # bytes

`estimate` reads only the GGUF header (pyturbo.gguf; no tensor data, no native
library), so it works for a 70B file on a laptop, and for header-only files.
It follows llama.cpp's own allocation rules at the pinned commit
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

`measure` creates a real context with pyturbo.Context and reads the sizes from
llama.cpp's allocation log, so estimates can be checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from . import _native
from ._allocation_log import parse_allocation_log
from .cache_types import CacheType, attention_rotation, cache_type, check_cache, flash_attn_enabled
from .errors import PyturboError
from .geometry import ModelGeometry, model_geometry
from .gguf import GGUFHeader, read_gguf_header
from .model import Model, open_model
from .units import MiB, parse_size
from .quant_presets import weight_bytes_as
from .weights import weight_bytes

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


def kv_bytes(geometry: ModelGeometry, cells: CacheCells, cache_k: CacheType, cache_v: CacheType,
             flash_attn: bool = True) -> tuple:
    """(K bytes, V bytes) of every attention layer's cache tensors (llama_kv_cache::size_k/v_bytes)."""
    # Without flash attention V is stored transposed, every layer padded to the widest row.
    widest_v = max((layer.v_values for layer in geometry.layers if layer.has_kv), default=0)
    k_total = v_total = 0
    for layer in geometry.layers:
        if not layer.has_kv:
            continue
        n_cells = (cells.cells_swa if layer.swa else cells.cells) * cells.n_stream
        k_total += cache_k.row_bytes(layer.k_values) * n_cells
        if layer.head_v:
            v_total += cache_v.row_bytes(layer.v_values if flash_attn else widest_v) * n_cells
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
    if isinstance(model, Model):
        return read_gguf_header(model.path)  # its file, not the native handle
    return read_gguf_header(model)


def estimate(model, n_ctx: int, cache_k: str = "f16", cache_v: str = "f16", n_seq: int = 1,
             flash_attn: "bool | str" = True, *, swa_full: bool = False,
             kv_unified: bool = False, n_batch: int = DEFAULT_N_BATCH, n_ubatch: int = DEFAULT_N_UBATCH,
             weight_quant: "str | None" = None) -> MemoryEstimate:
    """Memory for a context of n_ctx tokens with the given cache types, from the GGUF header alone.

    model: a path, a pyturbo.Model or a GGUFHeader. n_ctx 0 means the training
    context. swa_full keeps the whole context in sliding-window layers (as
    llama.cpp's --swa-full). weight_quant: one of WEIGHT_QUANTS, to ask what the
    weights would take quantized that way instead of as stored.
    """
    header = _header_of(model)
    geometry = model_geometry(header)
    k, v = cache_type(cache_k), cache_type(cache_v)
    check_cache(k, v, flash_attn, geometry)
    fa = flash_attn_enabled(flash_attn)
    cells = cache_cells(geometry, n_ctx, n_seq, swa_full, kv_unified, n_batch, n_ubatch)
    kv_k, kv_v = kv_bytes(geometry, cells, k, v, fa)
    weights = weight_bytes_as(header, weight_quant) if weight_quant else weight_bytes(header)
    compute = compute_bytes(geometry, cells, fa, *attention_rotation(geometry, k, v), n_seq=n_seq)
    return MemoryEstimate(n_ctx=cells.n_ctx, cache_k=k.name, cache_v=v.name, weights=weights,
                          kv_k=kv_k, kv_v=kv_v, compute=compute, recurrent=recurrent_bytes(geometry, n_seq),
                          cells=cells.cells, cells_swa=cells.cells_swa if geometry.n_swa else 0)


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


@dataclass
class MemoryMeasurement(MemoryEstimate):
    """What llama.cpp allocated, read from its log: each figure exact to `resolution` bytes."""

    resolution: int = 0   # the largest rounding error of a figure (MiB printed with 2 decimals)
    kv_logged: list = field(default_factory=list)  # (K MiB, V MiB) as llama.cpp printed them, per cache
    log: list = field(default_factory=list, repr=False)


def measure(model, n_ctx: int, cache_k: str = "f16", cache_v: str = "f16", n_seq: int = 1,
            flash_attn: "bool | str" = True, n_gpu_layers: int = 0, **context_kwargs) -> MemoryMeasurement:
    """What llama.cpp really allocates for this context: a pyturbo.Context is created and freed.

    model: a path (loaded with n_gpu_layers, then freed) or a pyturbo.Model. The
    figures come from llama.cpp's allocation log (MiB with two decimals, so each is
    exact to 0.005 MiB; the compute buffer to 0.00005 MiB); the weights are
    llama_model_size. pyturbo.Context keeps one sequence and, like llama.cpp's C
    default, a full-size sliding-window cache: compare with
    estimate(..., swa_full=True) on sliding-window models.
    """
    if n_seq != 1:
        raise PyturboError("measure() creates a pyturbo.Context, which holds one sequence; "
                           f"n_seq={n_seq} can only be estimated")
    with open_model(model, n_gpu_layers=n_gpu_layers) as model:
        with _native.captured_log() as log:
            ctx = model.context(n_ctx=n_ctx, cache_k=cache_k, cache_v=cache_v, flash_attn=flash_attn,
                                n_threads=1, **context_kwargs)
            actual_ctx = ctx.n_ctx
            names = (ctx.cache_k.name, ctx.cache_v.name)
            ctx.close()
        lines = [line for _, line in log]
        weights = model.size_bytes
    sizes = parse_allocation_log(lines)
    return MemoryMeasurement(
        n_ctx=actual_ctx, cache_k=names[0], cache_v=names[1], weights=weights,
        kv_k=sizes.kv_k, kv_v=sizes.kv_v, compute=sizes.compute, recurrent=sizes.recurrent,
        cells=max(sizes.cells, default=0), cells_swa=min(sizes.cells) if len(sizes.cells) > 1 else 0,
        resolution=math.ceil(sizes.n_rounded * 0.005 * MiB), kv_logged=sizes.kv_logged, log=list(lines))
