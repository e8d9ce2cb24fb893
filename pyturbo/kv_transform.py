"""Exact K/V transforms that make low-bit caches work on models with outlier channels.

Attention is unchanged, in exact arithmetic, by these transforms of what the cache
stores (csrc/llama/turbo-kv-transform.h and the files it names have the arithmetic):

- ``k_calibrate``: keys stored as A (k - c) and queries multiplied by A^-1, c the keys'
  mean and A a 64x64 matrix per KV head that makes the cache's rounding cost the least
  in q.k; both come from one pass of the model over a built-in text (about 500 tokens,
  once per model file: the result is cached under pyturbo's cache dir);
- ``k_center``: keys stored minus the k_proj bias as RoPE leaves it on average over
  the context (softmax ignores a shift common to all of one query's scores);
- ``k_equalize``: key channel j divided by s_j and the query's multiplied by it,
  s from the weights alone, so that K's channels have similar ranges;
- ``v_equalize``: value channel j divided by s_j and the attention output multiplied
  by it, s from W_v and W_o, so that the channels that reach the output most carry
  the least quantization error;
- ``v_center``: values stored minus the v_proj bias, added back to the output.

llama.cpp applies them in the attention graph, on every backend, with context shift
kept exact. What ``"auto"`` (the default everywhere, the llama-cpp-python drop-in
included) applies is one table, ``kv_transform_auto.txt`` beside this file, which
libllama compiles in and `auto_choice` reads: calibrated keys for a quantized K below
8 bits, or of any bits where k_proj biases offset every key (Qwen2.5), the weight-derived
centering and equalization in calibration's place where RoPE rules it out, and V
equalization for a quantized V with transformed keys. ``"off"`` turns everything off;
``$PYTURBO_KV_TRANSFORM`` (see `env_value`) does so for code that creates contexts itself.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache_types import CacheType, cache_type
from .gguf import GGUFHeader, tensor_data
from .upstream.geometry import model_geometry

# Bits of the C side's flags (csrc/llama/turbo-kv-flags.h; a test reads them from there).
K_CENTER = 1
K_EQUALIZE = 2
V_CENTER = 4
V_EQUALIZE = 8
K_CALIBRATE = 16
AUTO = -1
KEY_FLAGS = K_CENTER | K_EQUALIZE | K_CALIBRATE
TRANSFORMS = {"k_calibrate": K_CALIBRATE, "k_center": K_CENTER, "k_equalize": K_EQUALIZE, "v_center": V_CENTER,
              "v_equalize": V_EQUALIZE}
ENV = "PYTURBO_KV_TRANSFORM"
AUTO_TABLE = Path(__file__).with_name("kv_transform_auto.txt")


def parse(value: "str | int | None") -> int:
    """Flags for "auto", "off", or transform names joined by "," or "+" ("k_center+v_center")."""
    if value is None:
        return AUTO
    if isinstance(value, int) and not isinstance(value, bool):
        if value != AUTO and value & ~sum(TRANSFORMS.values()):
            raise ValueError(f"unknown kv_transform bits {value}")
        return value
    text = str(value).strip().lower()
    if text == "auto":
        return AUTO
    if text in ("off", "none", ""):
        return 0
    flags = 0
    for name in text.replace("+", ",").split(","):
        name = name.strip()
        if name not in TRANSFORMS:
            raise ValueError(f"kv_transform must be auto, off or some of {', '.join(TRANSFORMS)} "
                             f"joined by '+' (got {value!r})")
        flags |= TRANSFORMS[name]
    return flags


def describe(flags: int) -> str:
    """ "k_center+k_equalize+v_center", or "off"."""
    names = [name for name, bit in TRANSFORMS.items() if flags & bit]
    return "+".join(names) if names else "off"


def env_value(value: "str | int") -> str:
    """What $PYTURBO_KV_TRANSFORM holds for a choice: "auto", or the bits as a number (libllama
    reads it for contexts nobody asked about: llama-server's, llama-cpp-python's)."""
    flags = parse(value)
    return "auto" if flags == AUTO else str(flags)


def set_process_default(value: "str | int") -> None:
    """What contexts created without a choice get from now on, in this process and the
    processes it starts (the llama-cpp-python drop-in, its server)."""
    os.environ[ENV] = env_value(value)



@functools.lru_cache(maxsize=None)
def auto_rules() -> tuple:
    """kv_transform_auto.txt's lines as (transform bit, ((condition, negated), ...))."""
    rules = []
    for number, line in enumerate(AUTO_TABLE.read_text().splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] not in TRANSFORMS:
            raise ValueError(f"{AUTO_TABLE.name}:{number}: unknown transform {words[0]!r}")
        conditions = tuple((word.lstrip("!"), word.startswith("!")) for word in words[1:])
        for name, _ in conditions:
            if name not in ("k_quantized", "v_quantized", "k_below_8_bits", "keys") and \
                    name.removeprefix("supports_") not in TRANSFORMS:
                raise ValueError(f"{AUTO_TABLE.name}:{number}: unknown condition {name!r}")
        rules.append((TRANSFORMS[words[0]], conditions))
    return tuple(rules)


def auto_flags(supported: int, cache_k: "str | CacheType", cache_v: "str | CacheType") -> int:
    """What "auto" applies to a model allowing `supported` with these cache types: the table,
    evaluated as libllama evaluates it (csrc/llama/turbo-kv-policy.cpp)."""
    k, v = cache_type(cache_k), cache_type(cache_v)
    facts = {"k_quantized": k.quantized, "v_quantized": v.quantized, "k_below_8_bits": k.bits_per_value < 8}
    chosen = 0
    for flag, conditions in auto_rules():
        facts["keys"] = bool(chosen & KEY_FLAGS)
        holds = all((bool(supported & TRANSFORMS[name.removeprefix("supports_")]) if name.startswith("supports_")
                     else facts[name]) != negated for name, negated in conditions)
        if holds:
            chosen |= flag & supported
    return chosen



def _per_layer_tensor(header: GGUFHeader, n_layer: int, suffix: str) -> list:
    by_name = {t.name: t for t in header.tensors}
    return [by_name.get(f"blk.{il}.{suffix}") for il in range(n_layer)]


def _plain_attention(header: GGUFHeader) -> bool:
    """Every layer projects Q, K and V with their own weights into whole heads, RoPE-d in a
    layout the transforms handle (libllama's model_allows_transforms, from the header)."""
    geometry = model_geometry(header)
    n_layer = geometry.n_layer
    if n_layer == 0 or geometry.mla or header.get("rope.dimension_sections"):
        return False  # no layers, compressed KV, or multi-section (M-RoPE) layouts
    for suffix in ("attn_q.weight", "attn_k.weight", "attn_v.weight"):
        if not all(_per_layer_tensor(header, n_layer, suffix)):
            return False
    if any(_per_layer_tensor(header, n_layer, "attn_qkv.weight")):
        return False
    return all(layer.n_head_kv > 0 and layer.n_head % layer.n_head_kv == 0 and layer.head_k == layer.head_v
               for layer in geometry.layers)


def supported_flags(header: GGUFHeader) -> int:
    """The transforms a model allows, read from its header: what libllama's
    pyturbo_kv_transform_supported_flags answers for the loaded model, except that it also
    drops the equalizations where the weights were repacked for the CPU (they cannot be read)."""
    if not _plain_attention(header):
        return 0
    geometry = model_geometry(header)
    n_layer = geometry.n_layer
    soft_cap = bool(header.get("attn_logit_softcapping"))
    norm_gain = all(_per_layer_tensor(header, n_layer, "attn_norm.weight"))
    qk_norm = all(_per_layer_tensor(header, n_layer, "attn_q_norm.weight")) and \
        all(_per_layer_tensor(header, n_layer, "attn_k_norm.weight"))
    out_proj = _per_layer_tensor(header, n_layer, "attn_output.weight")
    flags = 0
    if all(_per_layer_tensor(header, n_layer, "attn_k.bias")) and not soft_cap:
        flags |= K_CENTER
    if qk_norm or norm_gain:
        flags |= K_EQUALIZE
    if all(_per_layer_tensor(header, n_layer, "attn_v.bias")):
        flags |= V_CENTER
    if norm_gain and all(t is not None and t.shape[0] == layer.head_v * layer.n_head
                         for t, layer in zip(out_proj, geometry.layers)):
        flags |= V_EQUALIZE
    head_k = geometry.head_size_k
    if header.get("rope.dimension_count", head_k) == head_k and head_k % 2 == 0 and not soft_cap:
        flags |= K_CALIBRATE
    return flags


@dataclass
class AutoChoice:
    """What "auto" applies to a model with one pair of cache types, and why."""

    flags: int
    reason: str
    k_bias_norms: list   # per layer: L2 norm of the k_proj bias (empty without biases)
    v_bias_norms: list

    @property
    def transforms(self) -> str:
        return describe(self.flags)


def _why(flags: int, supported: int, k: CacheType, v: CacheType) -> str:
    """The reason for an auto choice, in words."""
    if flags & K_CALIBRATE:
        keys = "K calibrated (centered and equalized) from one pass over a built-in text, once per model file"
    elif flags & KEY_FLAGS:
        keys = "K centered on its k_proj bias and equalized from the weights (RoPE rules calibration out)"
    elif not k.quantized:
        keys = f"K ({k.name}) is not quantized: keys as they are"
    elif not supported & KEY_FLAGS:
        keys = "the model allows no key transform: keys as they are"
    else:
        keys = f"{k.name} keys (8 bits) round finely enough without a k_proj bias: keys as they are"
    if flags & V_EQUALIZE:
        values = "V equalized from W_v and W_o"
    elif not v.quantized:
        values = f"V ({v.name}) is not quantized"
    else:
        values = "V as it is (its equalization pays only with transformed keys)"
    return f"{keys}; {values}"


def auto_choice(header: GGUFHeader, cache_k: "str | CacheType" = "turbo3",
                cache_v: "str | CacheType" = "turbo3") -> AutoChoice:
    """What "auto" applies to this model's contexts with these cache types, from its header
    (a context's own answer is the same, tests/test_kv_transform.py checks; where a
    calibration pass gives nothing, libllama puts k_center+k_equalize in k_calibrate's place
    on models with k_proj biases)."""
    k, v = cache_type(cache_k), cache_type(cache_v)
    supported = supported_flags(header)
    flags = auto_flags(supported, k, v)
    n_layer = model_geometry(header).n_layer
    k_bias = _per_layer_tensor(header, n_layer, "attn_k.bias")
    v_bias = _per_layer_tensor(header, n_layer, "attn_v.bias")
    k_norms = [float(np.linalg.norm(tensor_data(header, t))) for t in k_bias] if n_layer and all(k_bias) else []
    v_norms = [float(np.linalg.norm(tensor_data(header, t))) for t in v_bias] if n_layer and all(v_bias) else []
    why = _why(flags, supported, k, v)
    if k_norms:
        top = sorted(range(n_layer), key=lambda il: -k_norms[il])[:3]
        why += ("; k_proj biases put a fixed offset into every key: largest norms "
                + ", ".join(f"layer {il} {k_norms[il]:.1f}" for il in top)
                + f" (median {float(np.median(k_norms)):.1f})")
    return AutoChoice(flags, why, k_norms, v_norms)
