"""Exact K/V transforms that make low-bit caches work on models with outlier channels.

Attention is unchanged, in exact arithmetic, by these transforms of what the cache
stores (csrc/llama/turbo-kv-transform.h and turbo-kv-calibration.h have the arithmetic):

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
kept exact. ``"auto"`` (the default everywhere, the llama-cpp-python drop-in
included) takes k_calibrate and v_equalize wherever the model allows them, for the
quantized side of a cache only, for keys of 8 bits or more only where k_proj
biases offset every key (Qwen2.5: q8_0/q8_0 6x better; without biases 8-bit keys
measured the same, -4%..+3%), and V equalization only with transformed keys (on
its own it moved SmolLM2 by -4%..+2%; with them it took another 6-7% off): they cut
4-bit K/V KLD about 2x on SmolLM2 and 30x on Qwen2.5, whose k_proj biases put fixed
outliers into every key (k_center+k_equalize stand in where RoPE rules calibration
out and such biases exist). V centering is never automatic: it made Qwen2.5 worse
(a value that attention sinks onto is small until c_v is taken from it). ``"off"`` turns everything off;
``$PYTURBO_KV_TRANSFORM=off`` does so for code that creates contexts itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .geometry import model_geometry
from .gguf import GGUFHeader, tensor_data

# Bits of the C side's flags (csrc/llama/turbo-kv-transform.h).
K_CENTER = 1
K_EQUALIZE = 2
V_CENTER = 4
V_EQUALIZE = 8
K_CALIBRATE = 16
AUTO = -1
NO_REQUEST = -2  # withdraws a request (libllama's PYTURBO_KVT_NO_REQUEST)
TRANSFORMS = {"k_calibrate": K_CALIBRATE, "k_center": K_CENTER, "k_equalize": K_EQUALIZE, "v_center": V_CENTER,
              "v_equalize": V_EQUALIZE}
ENV = "PYTURBO_KV_TRANSFORM"


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


def set_process_default(value: "str | int") -> None:
    """What contexts get when nobody asks (the llama-cpp-python drop-in, its server): sets
    $PYTURBO_KV_TRANSFORM, which libllama reads at each context creation."""
    flags = parse(value)
    os.environ[ENV] = "auto" if flags == AUTO else str(flags)


@dataclass
class AutoChoice:
    """What "auto" applies to a model and why, read from its GGUF header and bias tensors."""

    flags: int
    reason: str
    k_bias_norms: list   # per layer: L2 norm of the k_proj bias (empty without biases)
    v_bias_norms: list

    @property
    def transforms(self) -> str:
        return describe(self.flags)


def _per_layer_tensor(header: GGUFHeader, n_layer: int, suffix: str) -> list:
    by_name = {t.name: t for t in header.tensors}
    return [by_name.get(f"blk.{il}.{suffix}") for il in range(n_layer)]


def _full_rope(header: GGUFHeader) -> bool:
    """RoPE turns every channel of a key head, and no logit soft-cap bends the scores (what
    calibration needs)."""
    head_k = model_geometry(header).head_size_k
    return header.get("rope.dimension_count", head_k) == head_k and not header.get("attn_logit_softcapping")


def auto_choice(header: GGUFHeader, n_layer: int) -> AutoChoice:
    """The transforms "auto" asks for (libllama decides the same way: a test checks both agree;
    where a calibration pass cannot run, it puts k_center+k_equalize in k_calibrate's place on
    models with k_proj biases, and drops V equalization for weights repacked for the CPU)."""
    fused = any(t is not None for t in _per_layer_tensor(header, n_layer, "attn_qkv.weight"))
    if fused or n_layer == 0:
        return AutoChoice(0, "a fused QKV projection: not transformed", [], [])
    k_bias = _per_layer_tensor(header, n_layer, "attn_k.bias")
    v_bias = _per_layer_tensor(header, n_layer, "attn_v.bias")
    k_norms = [float(np.linalg.norm(tensor_data(header, t))) for t in k_bias] if all(k_bias) else []
    v_norms = [float(np.linalg.norm(tensor_data(header, t))) for t in v_bias] if all(v_bias) else []
    norm_gain = all(_per_layer_tensor(header, n_layer, "attn_norm.weight"))
    out_proj = all(_per_layer_tensor(header, n_layer, "attn_output.weight"))
    values = V_EQUALIZE if norm_gain and out_proj else 0
    if _full_rope(header):
        keys, why = K_CALIBRATE, ("quantized K centered and equalized from one pass over a built-in text "
                                  "(once per model file)")
    elif k_norms:
        keys, why = K_CENTER | K_EQUALIZE, "RoPE rules calibration out; k_proj biases give the key offset instead"
    else:
        keys, why = 0, "RoPE rules calibration out and there is no k_proj bias: keys as they are"
    if keys and not k_norms:
        why += " for K below 8 bits (8-bit keys round finely enough where no k_proj bias offsets them)"
    if values:
        why += ", and then quantized V equalized from W_v and W_o (alone it did not pay)"
    if k_norms:
        top = sorted(range(n_layer), key=lambda il: -k_norms[il])[:3]
        why += ("; k_proj biases put a fixed offset into every key: largest norms "
                + ", ".join(f"layer {il} {k_norms[il]:.1f}" for il in top)
                + f" (median {float(np.median(k_norms)):.1f})")
    return AutoChoice(keys | values, why, k_norms, v_norms)
