// pyturbo: the calibration pass for the key transform (the math: turbo-kv-moments.h).
//
// One pass of the model, with no transform, over a fixed built-in text
// (turbo-kv-calibration-text.h) records each layer's RoPE-d keys and queries, rotated
// back to position 0, as pre-RoPE moments per KV head; the text's two halves are kept
// apart so that a fitted matrix can be tried on text it was not fitted to. The result
// is kept on disk per model file (turbo-kv-store.h), so each model file is calibrated once.
#pragma once

#include "turbo-kv-moments.h"

#include <vector>

struct llama_model;

// The moments of the model's keys and queries, one entry per layer; none where the model's
// attention is not what the transform handles or the pass failed (the reason is logged).
std::vector<pyturbo_kv_moments> pyturbo_kv_calibrate(const llama_model & model, int n_threads);
