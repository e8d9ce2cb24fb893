// pyturbo: calibration moments kept on disk, one file per model file and calibration text,
// under pyturbo's cache dir (kv-calibration/), so that every context of a model, in any
// process, gets the same key transform and the pass runs once per model file.
//
// A file is named by a fingerprint of the tokens and of the weights (the start of the
// embeddings and of each layer's norms, biases, attention and FFN tensors), written whole
// or not at all, and read only if its format and shapes fit the model.
#pragma once

#include "turbo-kv-moments.h"

#include "llama.h"

#include <vector>

// The moments stored for this model and calibration text; false if there are none (or none
// that fit).
bool pyturbo_kv_store_load(const llama_model & model, const std::vector<llama_token> & tokens,
                           std::vector<pyturbo_kv_moments> & layers);

// Stores them (nothing without a cache dir; a failed write leaves no file).
void pyturbo_kv_store_save(const llama_model & model, const std::vector<llama_token> & tokens,
                           const std::vector<pyturbo_kv_moments> & layers);
