// pyturbo: contexts made with choices of their own (K/V transforms, per-layer cache types).
//
// A llama_context decides its transform in its constructor (pyturbo_kvt_setup_context,
// called from llama.cpp by patches/0006) and its caches make their tensors there too
// (patches/0012), and llama_init_from_model's parameters have no field to carry either
// choice. pyturbo_kvt_init_context carries them for the duration of that one call, on the
// calling thread; contexts made any other way (llama-server, llama-cpp-python) get what
// $PYTURBO_KV_TRANSFORM, $PYTURBO_CACHE_K_LAYERS and $PYTURBO_CACHE_V_LAYERS say.
#pragma once

#include "llama.h"

#include <cstdint>

struct pyturbo_kv_layer_types;

// llama_init_from_model, the context getting `flags` (PYTURBO_KVT_AUTO, 0 or bits) and the
// cache types of `layers` (NULL: the types in params, whatever the environment says).
llama_context * pyturbo_kvt_init_context(llama_model & model, const llama_context_params & params, int32_t flags,
                                         const pyturbo_kv_layer_types * layers);

// The transform choice made for the context being constructed on this thread, once (for
// its constructor); PYTURBO_KVT_NO_REQUEST when it was not made by pyturbo_kvt_init_context.
int32_t pyturbo_kvt_take_request();

// Whether the context being constructed on this thread was made by pyturbo_kvt_init_context,
// and if so its per-layer types (*layers, NULL for none).
bool pyturbo_kvt_layers_request(const pyturbo_kv_layer_types ** layers);
