// pyturbo: a KV cache type per layer.
//
// llama.cpp gives a context one K type and one V type. A context made by
// pyturbo_context_create with per-layer types (struct pyturbo_kv_layer_types), or any other
// context while $PYTURBO_CACHE_K_LAYERS / $PYTURBO_CACHE_V_LAYERS hold a spec, gets its cache
// tensors made layer by layer (patches/0012). Every layer's attention already takes the
// types of its own tensors, and so do the state writer and the K-shift.
//
// A spec: a default type, then overrides, comma-separated: "turbo3,q8_0@0-1,q8_0@-2" is
// turbo3 everywhere but layers 0 and 1 and the last two. type@N is layer N, type@A-B layers
// A to B, type@-N the last N layers; later items win. pyturbo/layer_types.py reads the same
// grammar (tests check that the two agree).
//
// The context's own type_k / type_v then stand for the layers as a whole: the first turbo
// type among them, else the first quantized one, else the default. llama.cpp decides the
// Hadamard rotation and pyturbo its transforms from those, so both are on whenever one
// layer needs them (both are exact for the layers that do not).
#pragma once

#include "ggml.h"

#include <cstdint>
#include <string>
#include <vector>

struct llama_hparams;

// One side's types, one per layer; empty when every layer has the context's type.
using pyturbo_layer_type_list = std::vector<ggml_type>;

// The types of the layers of one cache under construction.
struct pyturbo_kv_cache_layers {
    pyturbo_layer_type_list k, v;
    ggml_type base_k, base_v;   // the context's own types, for layers without an entry

    ggml_type type_k(uint32_t il) const { return il < k.size() ? k[il] : base_k; }
    ggml_type type_v(uint32_t il) const { return il < v.size() ? v[il] : base_v; }
};

// llama_kv_cache's constructor, before its tensors: the layer types of the context being
// made on this thread, and *type_k / *type_v replaced by the types that stand for all
// layers. Throws std::runtime_error when they cannot work: a count other than n_layer, a
// quantized V with V stored transposed (flash attention off), a block size that does not
// divide a layer's head size, a spec that does not parse.
pyturbo_kv_cache_layers pyturbo_kv_layers_for_cache(const llama_hparams & hparams, bool v_trans,
                                                    ggml_type * type_k, ggml_type * type_v);

// The type that stands for every layer of one side ('K' or 'V') of the context being made
// on this thread, whose own type is `base` (pyturbo_kvt_setup_context decides by it).
ggml_type pyturbo_kv_layers_standing_type(char side, uint32_t n_layer, ggml_type base);

// n_layer types from a spec; false, with *problem, when it is not one.
bool pyturbo_parse_layer_spec(const std::string & spec, uint32_t n_layer, pyturbo_layer_type_list & types,
                              std::string & problem);
