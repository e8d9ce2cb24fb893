// pyturbo: exact attention invariances that make K and V easy to quantize.
//
// Five transforms, each leaving every attention output unchanged in exact
// arithmetic; only the cache's own quantization sees different numbers:
//
// - K calibration: keys are stored as A (k - c) and queries multiplied by A^-1,
//   c and the symmetric matrix A per layer and KV head from the moments of the
//   keys and queries in one pass over a built-in text (turbo-kv-calibration.h):
//   the keys' mean and the A that makes the rounding cost least in q.k. It takes
//   the place of K centering and K/Q equalization, which stand in for it where
//   the pass cannot run.
// - K centering: keys are stored as k - c_k for one fixed vector c_k per layer
//   and KV head: the k_proj bias (whose outlier channels dominate Qwen2-family
//   keys) as RoPE leaves it on average over the context's positions, so slowly
//   turning pairs lose their bias and fast ones keep theirs. q.(k - c) = q.k - q.c
//   shifts all of one query's scores by the same amount, which softmax ignores.
// - K/Q equalization: per channel j, keys are divided by s_j and queries
//   multiplied by it, so q.k is unchanged. s comes from the weights alone (the
//   squared row norms of W_k and W_q with the attention-norm gain folded in, or
//   the gains of a Q/K norm; K's also counts what centering leaves of the bias),
//   s_j = (r_k(j) / r_q(j))^(alpha/2), alpha 0.5, and is shared
//   by both channels of a RoPE pair, so it commutes with RoPE.
// - V equalization: value channel j is divided by s_j and each head's attention
//   output multiplied by it before W_o (the output is linear in V), s_j =
//   (r_v(j) / |W_o column j|^2)^(1/4) from the weights, so the channels W_o reads
//   most carry the least of the cache's rounding.
// - V centering: values are stored as v - c_v (the v_proj bias) and c_v is
//   added back to each head's output; exact because attention weights sum to 1
//   (off for layers with attention sinks). Auto leaves it off (see auto_flags).
//
// The graph applies them right after RoPE, before llama.cpp's Hadamard rotation
// and the cache write; a K-shift undoes the key transform of stored keys before
// re-RoPE-ing them and redoes it after. Everything derives from the weights (and,
// for K calibration, the fixed built-in text, its moments cached on disk per model
// file so that every context of a model gets the same transform), so a saved state
// needs nothing extra. patches/0006 calls these functions from llama.cpp.
#pragma once

#include "ggml.h"
#include "llama.h"

#include <cstdint>

struct llama_model;
struct llama_cparams;
struct pyturbo_kv_transform;

// Transform bits (pyturbo_kv_transform_flags); 0 = off.
#define PYTURBO_KVT_K_CENTER   1
#define PYTURBO_KVT_K_EQUALIZE 2
#define PYTURBO_KVT_V_CENTER   4
#define PYTURBO_KVT_V_EQUALIZE 8
#define PYTURBO_KVT_K_CALIBRATE 16
// A request that lets each model take what helps it (see pyturbo_kv_transform_auto_flags).
#define PYTURBO_KVT_AUTO      -1
// Withdraws a request (what the environment says applies again).
#define PYTURBO_KVT_NO_REQUEST -2

#ifdef __cplusplus
extern "C" {
#endif

// The transforms the next llama_context created on this thread gets: PYTURBO_KVT_AUTO,
// 0 (off) or a set of bits; PYTURBO_KVT_NO_REQUEST withdraws it. Without a request,
// $PYTURBO_KV_TRANSFORM decides ("auto", "off" or bits as a number), else auto.
LLAMA_API void pyturbo_kv_transform_request(int32_t flags);

// The transforms a context applies (bits; 0 = none).
LLAMA_API int32_t pyturbo_kv_transform_flags(const struct llama_context * ctx);

// The transforms "auto" picks for a model: K calibration and V equalization where the model
// allows them (K centering and K/Q equalization in calibration's place where RoPE rules it
// out and every layer has a k_proj bias).
LLAMA_API int32_t pyturbo_kv_transform_auto_flags(const struct llama_model * model);

// The transforms a model's tensors allow (an asked transform that is not allowed is dropped).
LLAMA_API int32_t pyturbo_kv_transform_supported_flags(const struct llama_model * model);

#ifdef __cplusplus
}
#endif

// -- called from llama.cpp (patches/0006) ---------------------------------------------------

// llama_context's constructor: resolves the request for this context into cparams.
// "auto" transforms only the sides whose cache type is quantized (an F16 cache has no
// rounding to speak of); asked transforms apply as asked.
void pyturbo_kvt_setup_context(const llama_model & model, llama_cparams & cparams, ggml_type type_k, ggml_type type_v);

// build_attn, before the cache write: transforms Q, K and V of layer il, then applies
// llama.cpp's Hadamard rotations k_rot (Q and K) and v_rot (V), where given. A transform
// that is a matrix per head takes the rotation into that matrix (one op instead of two).
void pyturbo_kvt_apply(ggml_context * ctx, const llama_cparams & cparams, int il, ggml_tensor ** q, ggml_tensor ** k,
                       ggml_tensor ** v, const ggml_tensor * sinks, ggml_tensor * k_rot, ggml_tensor * v_rot);

// build_attn, on the attention output: undoes v_rot and V's transform (c_v back, s_v).
ggml_tensor * pyturbo_kvt_restore_output(ggml_context * ctx, const llama_cparams & cparams, int il, ggml_tensor * cur,
                                         const ggml_tensor * sinks, ggml_tensor * v_rot);

// K-shift of layer il: the stored keys k (the n_rot leading values of each head) as F32 with
// c_k / s added back (sign +1, before RoPE) or taken off again (sign -1, after). Returns k
// itself when the layer has no K centering.
ggml_tensor * pyturbo_kvt_shift_offset(ggml_context * ctx, const llama_cparams & cparams, int il, ggml_tensor * k,
                                       int sign);

// K-shift of an unquantized cache: takes the offset off the re-RoPE-d keys and writes them
// into the cache view dst; returns k itself when the layer has no K centering (RoPE ran in place).
ggml_tensor * pyturbo_kvt_shift_store(ggml_context * ctx, const llama_cparams & cparams, int il, ggml_tensor * k,
                                      ggml_tensor * dst);

// llama_model's destructor: frees the model's transform tensors.
void pyturbo_kvt_release(const llama_model * model);
