// pyturbo: one K/V transform per (model, flags, context size, rotation), shared by the
// contexts alike and freed with the model; one calibration pass per model.
//
// Each transform and each model's calibration is made once, under a lock of its own: a
// context waits only for the one it needs (another context of the same model, for its
// calibration), never for work on another model.
#pragma once

#include "turbo-kv-tensors.h"

#include <cstdint>

struct llama_model;
struct llama_cparams;

// The shared transform for a context of `model` with `flags` (supported ones; K calibration
// falls back to the weight-derived K centering and equalization where the pass gives nothing).
const pyturbo_kv_transform * pyturbo_kvt_shared(const llama_model & model, int32_t flags, const llama_cparams & cparams,
                                                const pyturbo_kvt_rotation & rotation);

// Frees the model's transforms and calibration (its destructor, through pyturbo_kvt_release).
void pyturbo_kvt_registry_release(const llama_model * model);
