// pyturbo: which K/V transforms a model allows, and which kv_transform="auto" gives a
// context. Auto's rules are one table, pyturbo/kv_transform_auto.txt, which Python reads
// too (pyturbo.kv_transform): this file only evaluates it.
#pragma once

#include "turbo-kv-flags.h"

#include "ggml.h"

#include <cstdint>

struct llama_model;

#define PYTURBO_KVT_KEY_FLAGS (PYTURBO_KVT_K_CENTER | PYTURBO_KVT_K_EQUALIZE | PYTURBO_KVT_K_CALIBRATE)

// The transforms a model's tensors allow (bits): plain W x (+ b) attention per head with
// RoPE of a layout the transforms handle; K centering where every layer has a k_proj bias
// and no logit soft-cap bends the scores, K calibration where RoPE turns whole heads, the
// equalizations where the weights they read can be read (not CPU-repacked ones).
int32_t pyturbo_kvt_supported(const llama_model & model);

// What "auto" applies to a context of the model with these cache types.
int32_t pyturbo_kvt_auto(const llama_model & model, ggml_type type_k, ggml_type type_v);

// What $PYTURBO_KV_TRANSFORM asks for ("auto" or unset, "off", or bits as a number, as
// pyturbo.kv_transform.env_value writes it), for contexts nobody asked about.
int32_t pyturbo_kvt_env_choice();
