// pyturbo: the turbo rules libllama enforces, compiled into the llama target
// (csrc/pyturbo-kernels.cmake). patches/0002 calls each one from its site.
#pragma once

#include "ggml.h"
#include "llama.h"

#include <cstdint>

// The KV cache's check (llama_kv_cache's constructor, once attn_rot_k/v are
// decided): throws std::runtime_error when `type` is a turbo type and the
// Hadamard attention rotation of this cache is off, naming the reason.
// kv: "K" or "V"; n_embd_head_all: the head size of every layer, -1 when
// they differ, 0 when the cache has no data of its own (MLA's V).
void pyturbo_check_kv_rotation(const char * kv, ggml_type type, bool rot, int32_t n_embd_head_all);

// llama_model_quantize's check: throws std::runtime_error when the output,
// token embedding or a per-tensor override type is a turbo type (runtime-only
// KV-cache types, never weights).
void pyturbo_check_quantize_params(const llama_model_quantize_params * params);
