"""A model's shape as llama.cpp derives it from the GGUF metadata: per-layer heads, head sizes,
sliding windows, recurrent states. What memory planning and the cache rules depend on.

    geometry = model_geometry(read_gguf_header("model.gguf"))
    geometry.n_layer, geometry.head_size_k, geometry.gqa_ratio, geometry.layers[0].swa
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidModelError
from ..gguf import GGUFHeader
from .loader_rules import LLAMA_MAX_LAYERS

CHECKED_AT_PIN = "0c1e57098"

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


def _swa_layers(header: GGUFHeader, n_layer: int) -> list:
    """Which layers use the sliding window, by llama.cpp's rules (see SWA_PATTERNS)."""
    if not header.get_int("attention.sliding_window", 0):
        return [False] * n_layer
    pattern = header.get("attention.sliding_window_pattern")
    if isinstance(pattern, list):
        return [bool(p) for p in header.get_per_layer("attention.sliding_window_pattern", n_layer)]
    n_pattern, dense_first = SWA_PATTERNS.get(header.architecture, (None, False))
    n_pattern = header.get_int("attention.sliding_window_pattern", n_pattern)
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
    interval = header.get_int("full_attention_interval", 0)
    if interval:
        return [(il + 1) % interval != 0 for il in range(n_layer)]
    if header.get_int("ssm.state_size", 0) or header.get_int("wkv.head_size", 0):
        return [n == 0 for n in n_head_kv]
    return [False] * n_layer


def _recurrent_state_sizes(header: GGUFHeader, n_embd: int) -> tuple:
    """f32 values per sequence of a recurrent layer's two states (llama_hparams::n_embd_r / n_embd_s)."""
    wkv_head_size = header.get_int("wkv.head_size", 0)
    if wkv_head_size:
        token_shift_count = header.get_int("token_shift_count", 2) or 2
        return token_shift_count * n_embd, n_embd * wkv_head_size
    d_conv = header.get_int("ssm.conv_kernel", 0)
    d_inner = header.get_int("ssm.inner_size", 0)
    d_state = header.get_int("ssm.state_size", 0)
    n_group = header.get_int("ssm.group_count", 0)
    return max(d_conv - 1, 0) * (d_inner + 2 * n_group * d_state), d_state * d_inner


def _vocab_size(header: GGUFHeader) -> int:
    tokens = header.metadata.get("tokenizer.ggml.tokens")
    if tokens is not None and not isinstance(tokens, list):
        raise header.invalid("tokenizer.ggml.tokens", tokens, "an array of strings")
    if tokens:
        return len(tokens)
    vocab_size = header.get_int("vocab_size", 0)
    if vocab_size:
        return vocab_size
    for tensor in header.tensors:
        if tensor.name == "token_embd.weight" and len(tensor.shape) > 1:
            return tensor.shape[1]
    return 0


def model_geometry(header: GGUFHeader) -> ModelGeometry:
    """The per-layer head counts, head sizes, window and state sizes llama.cpp reads from the header."""
    if header.get("block_count") is None or header.get("embedding_length") is None:
        raise InvalidModelError(f"{header.path}: no {header.architecture}.block_count / embedding_length "
                                "in the GGUF metadata")
    # llama.cpp asserts 1 <= block_count <= LLAMA_MAX_LAYERS; every size is a uint32 there.
    n_layer = header.get_int("block_count", minimum=1, maximum=LLAMA_MAX_LAYERS)
    n_embd = header.get_int("embedding_length", minimum=1)
    n_head = header.get_per_layer("attention.head_count", n_layer)
    n_head_kv = (header.get_per_layer("attention.head_count_kv", n_layer)
                 if header.get("attention.head_count_kv") is not None else n_head)
    n_ff = header.get_per_layer("feed_forward_length", n_layer)
    default_head = n_embd // max(max(n_head), 1)
    head_k = header.get_int("attention.key_length", default_head)
    head_v = header.get_int("attention.value_length", default_head)
    head_k_swa = header.get_int("attention.sliding_window_key_length", 0) or head_k
    head_v_swa = header.get_int("attention.sliding_window_value_length", 0) or head_v
    mla = bool(header.get_int("attention.key_length_mla", 0))
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
        n_ctx_train=header.get_int("context_length", 0),
        n_embd=n_embd,
        n_vocab=_vocab_size(header),
        layers=layers,
        n_swa=header.get_int("attention.sliding_window", 0) if any(swa) else 0,
        mla=mla,
        recurrent_r=recurrent_r,
        recurrent_s=recurrent_s,
        n_expert_used=max(header.get_per_layer("expert_used_count", n_layer)),
        n_ff_expert=max(header.get_per_layer("expert_feed_forward_length", n_layer)),
    )
