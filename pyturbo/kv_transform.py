"""Exact K/V transforms that make low-bit caches work on models with outlier channels.

Attention is unchanged, in exact arithmetic, by three transforms of what the cache
stores (csrc/llama/turbo-kv-transform.h has the arithmetic):

- ``k_center``: keys stored minus the k_proj bias as RoPE leaves it on average over
  the context (softmax ignores a shift common to all of one query's scores);
- ``k_equalize``: key channel j divided by s_j and the query's multiplied by it,
  s from the weights alone, so that K's channels have similar ranges;
- ``v_center``: values stored minus the v_proj bias, added back to the output.

llama.cpp applies them in the attention graph, on every backend, with context shift
kept exact. ``"auto"`` (the default everywhere, the llama-cpp-python drop-in
included) takes centering where the model has k_proj / v_proj biases (the Qwen2
family, whose biases put fixed outliers into every key) and equalization with it;
models without those biases are left as they are. ``"off"`` turns everything off;
``$PYTURBO_KV_TRANSFORM=off`` does so for code that creates contexts itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .gguf import GGUFHeader, tensor_data

# Bits of the C side's flags (csrc/llama/turbo-kv-transform.h).
K_CENTER = 1
K_EQUALIZE = 2
V_CENTER = 4
AUTO = -1
NO_REQUEST = -2  # withdraws a request (libllama's PYTURBO_KVT_NO_REQUEST)
TRANSFORMS = {"k_center": K_CENTER, "k_equalize": K_EQUALIZE, "v_center": V_CENTER}
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


def auto_choice(header: GGUFHeader, n_layer: int) -> AutoChoice:
    """The transforms "auto" applies (libllama decides the same way: a test checks both agree)."""
    fused = any(t is not None for t in _per_layer_tensor(header, n_layer, "attn_qkv.weight"))
    k_bias = _per_layer_tensor(header, n_layer, "attn_k.bias")
    v_bias = _per_layer_tensor(header, n_layer, "attn_v.bias")
    if fused or n_layer == 0:
        return AutoChoice(0, "a fused QKV projection: not transformed", [], [])
    v_norms = [float(np.linalg.norm(tensor_data(header, t))) for t in v_bias] if all(v_bias) else []
    if any(t is None for t in k_bias):
        if v_norms:
            return AutoChoice(V_CENTER, "v_proj biases but no k_proj bias: values are centered", [], v_norms)
        return AutoChoice(0, "no k_proj bias: keys have no fixed offset to remove, so nothing is applied", [], [])
    k_norms = [float(np.linalg.norm(tensor_data(header, t))) for t in k_bias]
    flags = K_CENTER | K_EQUALIZE | (V_CENTER if v_norms else 0)
    top = sorted(range(n_layer), key=lambda il: -k_norms[il])[:3]
    median = float(np.median(k_norms))
    reason = ("k_proj biases put a fixed offset into every key: largest norms "
              + ", ".join(f"layer {il} {k_norms[il]:.1f}" for il in top)
              + f" (median {median:.1f})")
    return AutoChoice(flags, reason, k_norms, v_norms)
