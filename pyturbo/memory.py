"""How much memory a model needs for a context, before loading it, and what llama.cpp really allocates.

    est = pyturbo.memory.estimate("model.gguf", n_ctx=32768, cache_k="q8_0", cache_v="turbo3")
    est.weights, est.kv_k, est.kv_v, est.compute, est.total      # bytes

`estimate` reads only the GGUF header (metadata and tensor shapes; no tensor
data, no native model load), so it works for a 70B file on a laptop, and for
header-only files. It follows llama.cpp's own allocation rules at the pinned
commit (src/llama-context.cpp, llama-kv-cache.cpp, llama-kv-cache-iswa.cpp,
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
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from . import _native
from .cache_types import CacheType, cache_type
from .context import FLASH_ATTN_MODES, KV_SIZE_LINE, check_cache_settings, flash_attn_mode, rotation_disabled
from .errors import CacheTypeError, InvalidModelError, ModelNotFoundError, PyturboError

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

# llama_context pads n_ctx (and each sequence's share) to this many cells.
CELL_PADDING = 256

# llama_context_default_params(): the batch sizes pyturbo.Context also uses.
DEFAULT_N_BATCH = 512
DEFAULT_N_UBATCH = 512

# -- sizes ------------------------------------------------------------------------------

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "kib": KiB, "mib": MiB, "gib": GiB, "tib": 1 << 40,
}
_SIZE_TEXT = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: "str | int") -> int:
    """Bytes in a size: 17179869184, "16GiB", "16GB" (10^9), "16000MB", "1.5 GiB"."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"a size cannot be negative: {text}")
        return text
    match = _SIZE_TEXT.match(str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _SIZE_UNITS:
        raise ValueError(f"invalid size {text!r}: use bytes or a number with a unit "
                         "(B, KB, MB, GB, TB = powers of 1000; KiB, MiB, GiB, TiB = powers of 1024), e.g. 16GiB")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def format_size(n_bytes: float) -> str:
    """A byte count for people: 1.50 GiB, 320.00 KiB."""
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n_bytes) >= scale:
            return f"{n_bytes / scale:.2f} {unit}"
    return f"{int(n_bytes)} B"


# -- the GGUF header ----------------------------------------------------------------------

GGUF_MAGIC = b"GGUF"

_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file: name, shape (ggml order, ne[0] first) and ggml type id."""

    name: str
    shape: tuple
    type_id: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return tensor_bytes(self.shape, self.type_id)


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

    def get(self, key: str, default=None):
        """An architecture key (`attention.head_count`) or a full one (`general.architecture`)."""
        if key in self.metadata:
            return self.metadata[key]
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "llama"))


class _HeaderReader:
    """Sequential little-endian reads of a GGUF header, with a clear error on a truncated file."""

    def __init__(self, f, path: Path) -> None:
        self.f = f
        self.path = path

    def read(self, fmt: str):
        size = struct.calcsize(fmt)
        data = self.f.read(size)
        if len(data) != size:
            raise InvalidModelError(f"truncated GGUF header: {self.path}")
        return struct.unpack(fmt, data)[0]

    def string(self) -> str:
        n = self.read("<Q")
        data = self.f.read(n)
        if len(data) != n:
            raise InvalidModelError(f"truncated GGUF header: {self.path}")
        return data.decode("utf-8", "replace")

    def value(self, value_type: int):
        value_type = GGUFValueType(value_type)
        if value_type == GGUFValueType.STRING:
            return self.string()
        if value_type == GGUFValueType.ARRAY:
            item_type = self.read("<I")
            count = self.read("<Q")
            return [self.value(item_type) for _ in range(count)]
        return self.read(_SCALAR_FORMATS[value_type])


def read_gguf_header(path: "str | os.PathLike") -> GGUFHeader:
    """Metadata and tensor shapes of a GGUF file; the tensor data is never read (and may be absent)."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"model file not found: {path}")
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise InvalidModelError(f"not a GGUF file: {path}")
        r = _HeaderReader(f, path)
        version = r.read("<I")
        if version not in (2, 3):
            raise InvalidModelError(f"unsupported GGUF version {version} (big-endian or too new?): {path}")
        n_tensors = r.read("<Q")
        n_kv = r.read("<Q")
        try:
            metadata = {}
            for _ in range(n_kv):
                key = r.string()
                metadata[key] = r.value(r.read("<I"))
            tensors = []
            for _ in range(n_tensors):
                name = r.string()
                n_dims = r.read("<I")
                shape = tuple(r.read("<Q") for _ in range(n_dims))
                type_id = r.read("<I")
                r.read("<Q")  # offset into the data section
                tensors.append(TensorInfo(name, shape, type_id))
        except ValueError as e:  # an unknown value or tensor type id
            raise InvalidModelError(f"corrupt GGUF header ({e}): {path}") from None
    return GGUFHeader(path, metadata, tensors)


# -- model geometry -----------------------------------------------------------------------

# Sliding-window layout per architecture, when the GGUF has no
# `attention.sliding_window_pattern`: (n_pattern, dense_first) as the
# architecture's load_arch_hparams passes them to load_swa_pattern
# (src/models/*.cpp). Layer il slides when il % n < n - 1 (il % n != 0 with
# dense_first); n = 1 makes every layer slide.
SWA_PATTERNS = {
    "gemma2": (2, False), "gemma3": (6, False), "gemma3n": (5, False), "gemma-embedding": (6, False),
    "llama4": (4, False), "cohere2": (4, False), "cohere2moe": (4, True), "exaone4": (4, False),
    "exaone-moe": (4, False), "olmo2": (4, False), "gpt-oss": (2, False), "afmoe": (4, False),
    "smallthinker": (4, True), "plamo3": (8, False), "mellum": (4, False), "phi3": (1, False),
    "laguna": (4, True), "muse-glimmer": (4, False),
}

# Architectures whose memory is only a recurrent state (llm_arch_is_recurrent).
RECURRENT_ARCHS = {"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"}


@dataclass(frozen=True)
class LayerGeometry:
    """What one layer keeps in memory per cell (attention) or per sequence (recurrent)."""

    n_head: int
    n_head_kv: int
    head_k: int      # values per K head
    head_v: int      # values per V head (0: no V cache, as in MLA)
    n_ff: int
    swa: bool = False
    recurrent: bool = False

    @property
    def has_kv(self) -> bool:
        return not self.recurrent and self.n_head_kv > 0

    @property
    def k_values(self) -> int:
        return self.head_k * self.n_head_kv

    @property
    def v_values(self) -> int:
        return self.head_v * self.n_head_kv


@dataclass(frozen=True)
class ModelGeometry:
    """The hyperparameters memory depends on, as llama.cpp derives them from the GGUF metadata."""

    architecture: str
    n_ctx_train: int
    n_embd: int
    n_vocab: int
    layers: tuple
    n_swa: int = 0            # sliding window (tokens); 0 = none
    mla: bool = False         # multi-head latent attention: one compressed K row, no V
    recurrent_r: int = 0      # f32 values of a recurrent layer's conv/shift state, per sequence
    recurrent_s: int = 0      # f32 values of its SSM/WKV state, per sequence
    n_expert_used: int = 0
    n_ff_expert: int = 0

    @property
    def n_layer(self) -> int:
        return len(self.layers)

    def _kv_layers(self) -> list:
        return [layer for layer in self.layers if layer.has_kv]

    @property
    def head_size_k(self) -> int:
        """K head size of the attention layers (the largest, when they differ)."""
        return max((layer.head_k for layer in self._kv_layers()), default=0)

    @property
    def head_size_v(self) -> int:
        return max((layer.head_v for layer in self._kv_layers()), default=0)

    @property
    def n_head(self) -> int:
        return max((layer.n_head for layer in self.layers), default=0)

    @property
    def n_head_kv(self) -> int:
        return max((layer.n_head_kv for layer in self._kv_layers()), default=0)

    @property
    def gqa_ratio(self) -> float:
        """Query heads per KV head (n_head / n_head_kv); 0 without attention layers."""
        return self.n_head / self.n_head_kv if self.n_head_kv else 0.0

    @property
    def mixed_head_sizes(self) -> bool:
        layers = self._kv_layers()
        return len({layer.head_k for layer in layers}) > 1 or len({layer.head_v for layer in layers if layer.head_v}) > 1


def _per_layer(value, n_layer: int, name: str) -> list:
    """A GGUF key that is either one number for every layer or an array with one per layer."""
    if isinstance(value, list):
        if len(value) != n_layer:
            raise InvalidModelError(f"{name} has {len(value)} entries for {n_layer} layers")
        return [int(v) for v in value]
    return [int(value)] * n_layer


def _swa_layers(header: GGUFHeader, n_layer: int) -> list:
    """Which layers use the sliding window, by llama.cpp's rules (see SWA_PATTERNS)."""
    if int(header.get("attention.sliding_window", 0) or 0) <= 0:
        return [False] * n_layer
    pattern = header.get("attention.sliding_window_pattern")
    if isinstance(pattern, list):
        return [bool(p) for p in _per_layer(pattern, n_layer, "attention.sliding_window_pattern")]
    n_pattern, dense_first = SWA_PATTERNS.get(header.architecture, (None, False))
    if pattern is not None:
        n_pattern = int(pattern)
    if n_pattern is None:
        # An architecture llama.cpp gives no sliding-window layout: every layer keeps the full context.
        return [False] * n_layer
    if n_pattern == 0:
        return [True] * n_layer
    if dense_first:
        return [il % n_pattern != 0 for il in range(n_layer)]
    return [il % n_pattern < n_pattern - 1 for il in range(n_layer)]


def _recurrent_layers(header: GGUFHeader, n_head_kv: list) -> list:
    """Recurrent layers: all of them in a recurrent architecture; in hybrids, the layers
    without KV heads, or all but every `full_attention_interval`-th one."""
    n_layer = len(n_head_kv)
    if header.architecture in RECURRENT_ARCHS:
        return [True] * n_layer
    interval = header.get("full_attention_interval")
    if interval:
        return [(il + 1) % int(interval) != 0 for il in range(n_layer)]
    if header.get("ssm.state_size") or header.get("wkv.head_size"):
        return [n == 0 for n in n_head_kv]
    return [False] * n_layer


def _recurrent_state_sizes(header: GGUFHeader, n_embd: int) -> tuple:
    """f32 values per sequence of a recurrent layer's two states (llama_hparams::n_embd_r / n_embd_s)."""
    wkv_head_size = int(header.get("wkv.head_size", 0) or 0)
    if wkv_head_size:
        token_shift_count = int(header.get("token_shift_count", 2) or 2)
        return token_shift_count * n_embd, n_embd * wkv_head_size
    d_conv = int(header.get("ssm.conv_kernel", 0) or 0)
    d_inner = int(header.get("ssm.inner_size", 0) or 0)
    d_state = int(header.get("ssm.state_size", 0) or 0)
    n_group = int(header.get("ssm.group_count", 0) or 0)
    return max(d_conv - 1, 0) * (d_inner + 2 * n_group * d_state), d_state * d_inner


def _vocab_size(header: GGUFHeader) -> int:
    tokens = header.metadata.get("tokenizer.ggml.tokens")
    if tokens:
        return len(tokens)
    if header.get("vocab_size"):
        return int(header.get("vocab_size"))
    for tensor in header.tensors:
        if tensor.name == "token_embd.weight":
            return tensor.shape[1]
    return 0


def model_geometry(header: GGUFHeader) -> ModelGeometry:
    """The per-layer head counts, head sizes, window and state sizes llama.cpp reads from the header."""
    n_layer = header.get("block_count")
    n_embd = header.get("embedding_length")
    if not n_layer or not n_embd:
        raise InvalidModelError(f"{header.path}: no {header.architecture}.block_count / embedding_length "
                                "in the GGUF metadata")
    n_layer, n_embd = int(n_layer), int(n_embd)
    n_head = _per_layer(header.get("attention.head_count", 0), n_layer, "attention.head_count")
    n_head_kv = _per_layer(header.get("attention.head_count_kv", n_head), n_layer, "attention.head_count_kv")
    n_ff = _per_layer(header.get("feed_forward_length", 0), n_layer, "feed_forward_length")
    default_head = n_embd // max(max(n_head), 1)
    head_k = int(header.get("attention.key_length", default_head))
    head_v = int(header.get("attention.value_length", default_head))
    head_k_swa = int(header.get("attention.sliding_window_key_length", head_k) or head_k)
    head_v_swa = int(header.get("attention.sliding_window_value_length", head_v) or head_v)
    mla = bool(header.get("attention.key_length_mla"))
    if mla:
        head_v = head_v_swa = 0
    swa = _swa_layers(header, n_layer)
    recurrent = _recurrent_layers(header, n_head_kv)
    layers = tuple(
        LayerGeometry(n_head=n_head[il], n_head_kv=n_head_kv[il],
                      head_k=head_k_swa if swa[il] else head_k, head_v=head_v_swa if swa[il] else head_v,
                      n_ff=n_ff[il], swa=swa[il], recurrent=recurrent[il])
        for il in range(n_layer))
    recurrent_r, recurrent_s = _recurrent_state_sizes(header, n_embd) if any(recurrent) else (0, 0)
    return ModelGeometry(
        architecture=header.architecture,
        n_ctx_train=int(header.get("context_length", 0) or 0),
        n_embd=n_embd,
        n_vocab=_vocab_size(header),
        layers=layers,
        n_swa=int(header.get("attention.sliding_window", 0) or 0) if any(swa) else 0,
        mla=mla,
        recurrent_r=recurrent_r,
        recurrent_s=recurrent_s,
        n_expert_used=int(header.get("expert_used_count", 0) or 0),
        n_ff_expert=int(header.get("expert_feed_forward_length", 0) or 0),
    )


# -- the KV cache ------------------------------------------------------------------------

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


# -- compute buffers ------------------------------------------------------------------------

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


# -- weights -------------------------------------------------------------------------------

def weight_bytes(header: GGUFHeader) -> int:
    """Bytes of every tensor as stored (llama_model_size)."""
    return sum(t.nbytes for t in header.tensors)


# `llama-quantize` presets for the "what if" weights. A preset is not one type:
# llama_tensor_get_type (src/llama-quant.cpp) gives some tensors more bits. The
# rules below are that function's for dense models (no 8-expert MoE, not
# Falcon): the output matrix (or tied embeddings) in q6_K; attn_v and ffn_down
# in more bits on the layers `use_more_bits` picks (the first and last eighth,
# and every third layer between); attn_output/attn_qkv bumped for q2_K/q3_K_M/q4_K_M;
# a row length the block does not divide falls back to llama.cpp's 32-block
# type. Norms and other 1-D tensors stay as they are. Tensors other than these
# (MoE experts, SSM) get the preset's base type. An imatrix changes nothing
# here (the presets listed do not depend on it).
WEIGHT_QUANTS = ("q8_0", "q6_K", "q4_K_M", "q3_K_M", "q2_K")

_Q = GGMLQuantizationType
_BASE_TYPE = {"q8_0": _Q.Q8_0, "q6_K": _Q.Q6_K, "q4_K_M": _Q.Q4_K, "q3_K_M": _Q.Q3_K, "q2_K": _Q.Q2_K}
_FALLBACK = {_Q.Q2_K: _Q.Q4_0, _Q.Q3_K: _Q.Q4_0, _Q.Q4_K: _Q.Q5_0, _Q.Q5_K: _Q.Q5_1, _Q.Q6_K: _Q.Q8_0}


def _use_more_bits(i_layer: int, n_layer: int) -> bool:
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def _quantizable(tensor: TensorInfo) -> bool:
    return (len(tensor.shape) >= 2 and tensor.name.endswith("weight") and "_norm.weight" not in tensor.name
            and "ffn_gate_inp.weight" not in tensor.name and "ssm_conv1d" not in tensor.name)


def quantized_type(tensor: TensorInfo, quant: str, geometry: ModelGeometry, layer_index: int,
                   has_output: bool) -> int:
    """The ggml type llama-quantize would give `tensor` under preset `quant` (see WEIGHT_QUANTS)."""
    if not _quantizable(tensor):
        return tensor.type_id
    n_layer = geometry.n_layer
    new = _BASE_TYPE[quant]
    name = tensor.name
    if name == "output.weight" or (name == "token_embd.weight" and not has_output):
        if tensor.shape[0] % 256 != 0:
            new = _Q.Q8_0
        elif new != _Q.Q8_0:
            new = _Q.Q6_K
    elif ".attn_v." in name:
        if quant == "q2_K":
            new = _Q.Q4_K if geometry.gqa_ratio >= 4 else _Q.Q3_K
        elif quant == "q3_K_M":
            new = _Q.Q5_K if layer_index < 2 else _Q.Q4_K
        elif quant == "q4_K_M" and _use_more_bits(layer_index, n_layer):
            new = _Q.Q6_K
        if geometry.architecture == "llama" and n_layer == 80 and new in (_Q.Q3_K, _Q.Q4_K):
            new = _Q.Q5_K  # llama.cpp's LLM_TYPE_70B rule: 8 heads share attn_v
    elif ".ffn_down." in name:
        if quant == "q2_K":
            new = _Q.Q3_K
        elif quant == "q3_K_M":
            new = _Q.Q5_K if layer_index < n_layer // 16 else _Q.Q4_K
        elif quant == "q4_K_M" and _use_more_bits(layer_index, n_layer):
            new = _Q.Q6_K
    elif ".attn_output." in name:
        new = {"q2_K": _Q.Q3_K, "q3_K_M": _Q.Q4_K}.get(quant, new)
    elif ".attn_qkv." in name:
        new = {"q3_K_M": _Q.Q4_K, "q4_K_M": _Q.Q5_K}.get(quant, new)
    block_size = GGML_QUANT_SIZES[new][0]
    if tensor.shape[0] % block_size != 0:
        new = _FALLBACK.get(new, new)
        if tensor.shape[0] % GGML_QUANT_SIZES[new][0] != 0:
            new = _Q.F16
    return int(new)


def weight_bytes_as(header: GGUFHeader, quant: str) -> int:
    """Bytes of the weights if the model were quantized with llama-quantize preset `quant`."""
    if quant not in _BASE_TYPE:
        raise ValueError(f"unknown weight quant {quant!r}; use one of {', '.join(WEIGHT_QUANTS)}")
    geometry = model_geometry(header)
    has_output = any(t.name == "output.weight" for t in header.tensors)
    total = 0
    for tensor in header.tensors:
        match = re.match(r"blk\.(\d+)\.", tensor.name)
        layer_index = int(match.group(1)) if match else 0
        total += tensor_bytes(tensor.shape, quantized_type(tensor, quant, geometry, layer_index, has_output))
    return total


# -- estimate ------------------------------------------------------------------------------

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
    device: int = 0        # of the total, what sits on the GPU with n_gpu_layers (rough split)

    @property
    def kv(self) -> int:
        return self.kv_k + self.kv_v

    @property
    def total(self) -> int:
        return self.weights + self.kv_k + self.kv_v + self.recurrent + self.compute

    def as_dict(self) -> dict:
        return {"n_ctx": self.n_ctx, "cache_k": self.cache_k, "cache_v": self.cache_v,
                "weights": self.weights, "kv_k": self.kv_k, "kv_v": self.kv_v, "recurrent": self.recurrent,
                "compute": self.compute, "total": self.total, "cells": self.cells, "cells_swa": self.cells_swa,
                "device": self.device}


def _header_of(model) -> GGUFHeader:
    if isinstance(model, GGUFHeader):
        return model
    if hasattr(model, "path") and not isinstance(model, (str, os.PathLike)):
        return read_gguf_header(model.path)  # a pyturbo.Model: read its file, not the native handle
    return read_gguf_header(model)


def _flash_attn_enabled(flash_attn) -> bool:
    # "auto" resolves to on wherever the flash-attention op is supported, which includes the CPU.
    return flash_attn_mode(flash_attn) != FLASH_ATTN_MODES["off"]


def check_cache_for_model(geometry: ModelGeometry, k: CacheType, v: CacheType, flash_attn: bool) -> None:
    """The K/V combinations llama.cpp refuses for this model, as CacheTypeError (as Context does)."""
    check_cache_settings(geometry, k, v, FLASH_ATTN_MODES["on" if flash_attn else "off"])
    if (k.turbo or v.turbo) and geometry.mixed_head_sizes:
        raise CacheTypeError("turbo cache types need llama.cpp's attention rotation, which is off when "
                             "the layers have different head sizes; use an upstream type (q8_0, q4_0)")


def _rotations(geometry: ModelGeometry, k: CacheType, v: CacheType) -> tuple:
    """Whether llama.cpp rotates K and V (llama_kv_cache: a quantized type, heads of 64k, one head size)."""
    if rotation_disabled() or geometry.mixed_head_sizes:
        return False, False
    return (k.quantized and geometry.head_size_k > 0 and geometry.head_size_k % 64 == 0,
            v.quantized and geometry.head_size_v > 0 and geometry.head_size_v % 64 == 0)


def estimate(model, n_ctx: int, cache_k: str = "f16", cache_v: str = "f16", n_seq: int = 1,
             flash_attn: "bool | str" = True, n_gpu_layers: int = 0, *, swa_full: bool = False,
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
    fa = _flash_attn_enabled(flash_attn)
    check_cache_for_model(geometry, k, v, fa)
    cells = cache_cells(geometry, n_ctx, n_seq, swa_full, kv_unified, n_batch, n_ubatch)
    kv_k, kv_v = kv_bytes(geometry, cells, k, v, fa)
    weights = weight_bytes_as(header, weight_quant) if weight_quant else weight_bytes(header)
    compute = compute_bytes(geometry, cells, fa, *_rotations(geometry, k, v), n_seq=n_seq)
    recurrent = recurrent_bytes(geometry, n_seq)
    result = MemoryEstimate(n_ctx=cells.n_ctx, cache_k=k.name, cache_v=v.name, weights=weights,
                            kv_k=kv_k, kv_v=kv_v, compute=compute, recurrent=recurrent, cells=cells.cells,
                            cells_swa=cells.cells_swa if geometry.n_swa else 0)
    result.device = _device_share(geometry, result, n_gpu_layers)
    return result


def _device_share(geometry: ModelGeometry, est: MemoryEstimate, n_gpu_layers: int) -> int:
    """Bytes on the accelerator with n_gpu_layers offloaded (a rough split): those layers'
    share of the weights and caches, plus the compute buffer, which then lives there."""
    if n_gpu_layers == 0 or geometry.n_layer == 0:
        return 0
    offloaded = geometry.n_layer if n_gpu_layers < 0 else min(n_gpu_layers, geometry.n_layer)
    share = offloaded / geometry.n_layer
    return int((est.weights + est.kv + est.recurrent) * share + est.compute)


def max_context(model, memory: int, cache_k: str = "f16", cache_v: str = "f16", *,
                limit: "int | None" = None, **kwargs) -> "tuple[int, MemoryEstimate | None]":
    """The largest context (a multiple of 256, at most `limit`, default the training
    context) whose estimate fits in `memory` bytes, with that estimate; (0, None) if none fits."""
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


# -- measure -------------------------------------------------------------------------------

# What llama.cpp logs when it allocates (src/llama-kv-cache.cpp, llama-memory-recurrent.cpp,
# llama-context.cpp); MiB with two decimals, the destructor's compute line with four.
_RECURRENT_LINE = re.compile(r"llama_memory_recurrent.*: size = +[\d.]+ MiB.*R \(\w+\): +([\d.]+) MiB, "
                             r"S \(\w+\): +([\d.]+) MiB")
_COMPUTE_FINAL_LINE = re.compile(r"(\S+) compute buffer size is +([\d.]+) MiB")
_COMPUTE_LINE = re.compile(r"(\S+) compute buffer size = +([\d.]+) MiB")
_OUTPUT_LINE = re.compile(r"(\S+) +output buffer size = +([\d.]+) MiB")


@dataclass
class MemoryMeasurement(MemoryEstimate):
    """What llama.cpp allocated, read from its log: each figure exact to `resolution` bytes."""

    resolution: int = 0   # the largest rounding error of a figure (MiB printed with 2 decimals)
    kv_logged: list = field(default_factory=list)  # (K MiB, V MiB) as llama.cpp printed them, per cache
    log: list = field(default_factory=list, repr=False)


def llama_mib(n_bytes: int) -> str:
    """A byte count as llama_kv_cache prints it: a float32 MiB figure with two decimals."""
    import numpy as np

    return f"{float(np.float32(n_bytes) / np.float32(MiB)):.2f}"


def _mib(text: str) -> int:
    return round(float(text) * MiB)


def parse_allocation_log(lines: Iterable[str]) -> dict:
    """Sizes llama.cpp logged while creating and freeing a context: kv_k, kv_v, recurrent,
    compute (every backend's compute buffer + the output buffer), cells, and the number
    of two-decimal figures summed (for the resolution)."""
    sizes = {"kv_k": 0, "kv_v": 0, "recurrent": 0, "compute": 0, "cells": [], "kv_logged": [], "n_rounded": 0}
    compute_final, compute_reserved = {}, {}
    for line in lines:
        if (m := KV_SIZE_LINE.search(line)):
            sizes["kv_k"] += _mib(m.group(5))
            sizes["kv_v"] += _mib(m.group(7))
            sizes["cells"].append(int(m.group(2)))
            sizes["kv_logged"].append((m.group(5), m.group(7)))
            sizes["n_rounded"] += 2
        elif (m := _RECURRENT_LINE.search(line)):
            sizes["recurrent"] += _mib(m.group(1)) + _mib(m.group(2))
            sizes["n_rounded"] += 2
        elif (m := _COMPUTE_FINAL_LINE.search(line)):
            compute_final[m.group(1)] = _mib(m.group(2))
        elif (m := _COMPUTE_LINE.search(line)):
            compute_reserved[m.group(1)] = _mib(m.group(2))
        elif (m := _OUTPUT_LINE.search(line)):
            sizes["compute"] += _mib(m.group(2))
            sizes["n_rounded"] += 1
    compute = compute_final or compute_reserved
    if not compute_final:
        sizes["n_rounded"] += len(compute_reserved)
    sizes["compute"] += sum(compute.values())
    return sizes


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
    from .model import Model

    if n_seq != 1:
        raise PyturboError("measure() creates a pyturbo.Context, which holds one sequence; "
                           f"n_seq={n_seq} can only be estimated")
    owned = not isinstance(model, Model)
    if owned:
        model = Model(model, n_gpu_layers=n_gpu_layers)
    try:
        with _native.captured_log() as log:
            ctx = model.context(n_ctx=n_ctx, cache_k=cache_k, cache_v=cache_v, flash_attn=flash_attn,
                                n_threads=1, **context_kwargs)
            actual_ctx = ctx.n_ctx
            names = (ctx.cache_k.name, ctx.cache_v.name)
            ctx.close()
        lines = [line for _, line in log]
        sizes = parse_allocation_log(lines)
        weights = model.size_bytes
    finally:
        if owned:
            model.close()
    cells = sizes["cells"]
    return MemoryMeasurement(
        n_ctx=actual_ctx, cache_k=names[0], cache_v=names[1], weights=weights,
        kv_k=sizes["kv_k"], kv_v=sizes["kv_v"], compute=sizes["compute"], recurrent=sizes["recurrent"],
        cells=max(cells, default=0), cells_swa=min(cells) if len(cells) > 1 else 0,
        resolution=math.ceil(sizes["n_rounded"] * 0.005 * MiB), kv_logged=sizes["kv_logged"], log=list(lines))
