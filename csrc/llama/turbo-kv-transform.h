// pyturbo: exact attention invariances that make K and V easy to quantize.
//
// Five transforms, each leaving every attention output unchanged in exact
// arithmetic; only the cache's own quantization sees different numbers:
//
// - K calibration: keys are stored as A (k - c) and queries multiplied by A^-1, c and
//   the symmetric matrix A per layer and KV head from the moments of the keys and
//   queries in one pass over a built-in text (turbo-kv-calibration.h, turbo-kv-moments.h).
//   It takes the place of K centering and K/Q equalization, which stand in for it where
//   the pass cannot run.
// - K centering, K/Q equalization, V equalization: from the weights alone
//   (turbo-kv-weights.h).
// - V centering: values are stored as v - c_v (the v_proj bias) and c_v is added back to
//   each head's output; exact because attention weights sum to 1 (off for layers with
//   attention sinks).
//
// The graph applies them right after RoPE, before llama.cpp's Hadamard rotation and the
// cache write (turbo-kv-graph.h); a K-shift undoes the key transform of stored keys before
// re-RoPE-ing them and redoes it after. Everything derives from the weights and the fixed
// built-in text, so a saved state needs nothing extra.
//
// The files: turbo-kv-policy (what a model allows, what "auto" gives), turbo-kv-request
// (a context with a choice of its own), turbo-kv-registry (made once, shared),
// turbo-kv-tensors (the transform's tensors), turbo-kv-weights, turbo-kv-calibration,
// turbo-kv-moments, turbo-kv-store, turbo-kv-graph; turbo-kv-context implements this header.
#pragma once

#include "ggml.h"
#include "llama.h"

#include "turbo-kv-flags.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// A KV cache type per layer (turbo-kv-layers.h): n_layer ggml type ids for K and for V; a
// NULL array gives every layer of that side params.type_k / params.type_v.
struct pyturbo_kv_layer_types {
    int32_t         n_layer;
    const int32_t * type_k;
    const int32_t * type_v;
};

// llama_init_from_model with the K/V transforms `kv_transform` asks for: PYTURBO_KVT_AUTO,
// 0 (off) or bits (those the model does not allow are dropped), and the cache types of
// `layers` (NULL: params.type_k / type_v everywhere, or what $PYTURBO_CACHE_K_LAYERS and
// $PYTURBO_CACHE_V_LAYERS say). *applied (if not NULL) receives the transform bits that
// apply; NULL as llama_init_from_model fails.
LLAMA_API struct llama_context * pyturbo_context_create(struct llama_model * model, struct llama_context_params params,
                                                        int32_t kv_transform, const struct pyturbo_kv_layer_types * layers,
                                                        int32_t * applied);

// The transforms a model's tensors allow (bits).
LLAMA_API int32_t pyturbo_kv_transform_supported_flags(const struct llama_model * model);

#ifdef __cplusplus
}

struct llama_cparams;

// -- called from llama.cpp (patches/0006) -----------------------------------------------------

// llama_context's constructor: the transform of this context into cparams (the choice of
// pyturbo_context_create, else $PYTURBO_KV_TRANSFORM's). "auto" transforms only the sides
// whose cache type is quantized.
void pyturbo_kvt_setup_context(const llama_model & model, llama_cparams & cparams, ggml_type type_k, ggml_type type_v);

// llama_model's destructor: frees the model's transforms and calibration.
void pyturbo_kvt_release(const llama_model * model);
#endif
