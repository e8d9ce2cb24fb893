"""What llama-quantize's presets would make of a model, from its header alone: the type of each
tensor and the bytes in all (memory planning's "what if the weights were q4_K_M").

    weight_bytes_as(read_gguf_header("model-f16.gguf"), "q4_K_M")
"""

from __future__ import annotations

import re

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ..errors import WeightTypeError
from ..gguf import GGUFHeader, TensorInfo, tensor_bytes
from ..weights import WeightType, weight_type
from .geometry import ModelGeometry, model_geometry

CHECKED_AT_PIN = "0c1e57098"

# `llama-quantize` presets for the "what if" weights. A preset is not one type:
# llama_tensor_get_type (src/llama-quant.cpp) gives some tensors more bits. The
# rules below are that function's for dense models (no 8-expert MoE, not
# Falcon): the output matrix (or tied embeddings) in q6_K; attn_v and ffn_down
# in more bits on the layers `use_more_bits` picks (the first and last eighth,
# and every third layer between); attn_output/attn_qkv bumped for q2_K/q3_K_M/q4_K_M;
# a row length the block does not divide falls back to llama.cpp's 32-block
# type. Norms and other 1-D tensors stay as they are. Tensors other than these
# (MoE experts, SSM) get the preset's base type. An imatrix changes nothing
# here (the presets listed do not depend on it). WEIGHT_QUANTS names them as
# fit's what-if table does; any spelling weight_type() accepts works.
WEIGHT_QUANTS = ("q8_0", "q6_K", "q4_K_M", "q3_K_M", "q2_K")

_Q = GGMLQuantizationType
_BASE_TYPE = {"Q8_0": _Q.Q8_0, "Q6_K": _Q.Q6_K, "Q4_K_M": _Q.Q4_K, "Q3_K_M": _Q.Q3_K, "Q2_K": _Q.Q2_K}
_FALLBACK = {_Q.Q2_K: _Q.Q4_0, _Q.Q3_K: _Q.Q4_0, _Q.Q4_K: _Q.Q5_0, _Q.Q5_K: _Q.Q5_1, _Q.Q6_K: _Q.Q8_0}


def _use_more_bits(i_layer: int, n_layer: int) -> bool:
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def _quantizable(tensor: TensorInfo) -> bool:
    return (len(tensor.shape) >= 2 and tensor.name.endswith("weight") and "_norm.weight" not in tensor.name
            and "ffn_gate_inp.weight" not in tensor.name and "ssm_conv1d" not in tensor.name)


def quantized_type(tensor: TensorInfo, quant: "str | WeightType", geometry: ModelGeometry, layer_index: int,
                   has_output: bool) -> int:
    """The ggml type llama-quantize would give `tensor` under preset `quant` (see WEIGHT_QUANTS)."""
    if not _quantizable(tensor):
        return tensor.type_id
    quant = _preset(quant)
    n_layer = geometry.n_layer
    new = _BASE_TYPE[quant]
    name = tensor.name
    if name == "output.weight" or (name == "token_embd.weight" and not has_output):
        if tensor.shape[0] % 256 != 0:
            new = _Q.Q8_0
        elif new != _Q.Q8_0:
            new = _Q.Q6_K
    elif ".attn_v." in name:
        if quant == "Q2_K":
            new = _Q.Q4_K if geometry.gqa_ratio >= 4 else _Q.Q3_K
        elif quant == "Q3_K_M":
            new = _Q.Q5_K if layer_index < 2 else _Q.Q4_K
        elif quant == "Q4_K_M" and _use_more_bits(layer_index, n_layer):
            new = _Q.Q6_K
        if geometry.architecture == "llama" and n_layer == 80 and new in (_Q.Q3_K, _Q.Q4_K):
            new = _Q.Q5_K  # llama.cpp's LLM_TYPE_70B rule: 8 heads share attn_v
    elif ".ffn_down." in name:
        if quant == "Q2_K":
            new = _Q.Q3_K
        elif quant == "Q3_K_M":
            new = _Q.Q5_K if layer_index < n_layer // 16 else _Q.Q4_K
        elif quant == "Q4_K_M" and _use_more_bits(layer_index, n_layer):
            new = _Q.Q6_K
    elif ".attn_output." in name:
        new = {"Q2_K": _Q.Q3_K, "Q3_K_M": _Q.Q4_K}.get(quant, new)
    elif ".attn_qkv." in name:
        new = {"Q3_K_M": _Q.Q4_K, "Q4_K_M": _Q.Q5_K}.get(quant, new)
    block_size = GGML_QUANT_SIZES[new][0]
    if tensor.shape[0] % block_size != 0:
        new = _FALLBACK.get(new, new)
        if tensor.shape[0] % GGML_QUANT_SIZES[new][0] != 0:
            new = _Q.F16
    return int(new)


def _preset(quant: "str | WeightType") -> str:
    """The WEIGHT_TYPES name of a preset with per-tensor rules here."""
    name = weight_type(quant).name
    if name not in _BASE_TYPE:
        raise WeightTypeError(f"no per-tensor rules for {name} here; weights can be sized as one of "
                              f"{', '.join(WEIGHT_QUANTS)}")
    return name


def weight_bytes_as(header: GGUFHeader, quant: "str | WeightType") -> int:
    """Bytes of the weights if the model were quantized with llama-quantize preset `quant`."""
    quant = _preset(quant)
    geometry = model_geometry(header)
    has_output = any(t.name == "output.weight" for t in header.tensors)
    total = 0
    for tensor in header.tensors:
        match = re.match(r"blk\.(\d+)\.", tensor.name)
        layer_index = int(match.group(1)) if match else 0
        total += tensor_bytes(tensor.shape, quantized_type(tensor, quant, geometry, layer_index, has_output))
    return total
