// pyturbo: the K/V transforms in llama.cpp's graphs; patches/0006 calls these from
// build_attn (llama-graph.cpp) and the K-shift (llama-kv-cache.cpp). A layer without a
// transform gets exactly llama.cpp's own ops.
#pragma once

#include "ggml.h"

struct llama_cparams;

// build_attn, before the cache write: transforms Q, K and V of layer il, then applies
// llama.cpp's Hadamard rotations k_rot (Q and K) and v_rot (V), where given. A transform
// that is a matrix per head takes the rotation into that matrix (one op instead of two).
void pyturbo_kvt_apply(ggml_context * ctx, const llama_cparams & cparams, int il, ggml_tensor ** q, ggml_tensor ** k,
                       ggml_tensor ** v, const ggml_tensor * sinks, ggml_tensor * k_rot, ggml_tensor * v_rot);

// build_attn, on the attention output: undoes v_rot and V's transform (c_v back, s_v).
ggml_tensor * pyturbo_kvt_restore_output(ggml_context * ctx, const llama_cparams & cparams, int il, ggml_tensor * cur,
                                         const ggml_tensor * sinks, ggml_tensor * v_rot);

// K-shift of layer il: the stored keys k (the n_rot leading values of each head) as F32 with
// the key transform undone (sign +1, before RoPE) or redone (sign -1, after). Returns k
// itself when the layer has no K centering.
ggml_tensor * pyturbo_kvt_shift_offset(ggml_context * ctx, const llama_cparams & cparams, int il, ggml_tensor * k,
                                       int sign);

// K-shift of an unquantized cache: redoes the transform on the re-RoPE-d keys and writes them
// into the cache view dst; returns k itself when the layer has no K centering (RoPE ran in place).
ggml_tensor * pyturbo_kvt_shift_store(ggml_context * ctx, const llama_cparams & cparams, int il, ggml_tensor * k,
                                      ggml_tensor * dst);
