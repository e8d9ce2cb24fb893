// pyturbo: transforms and calibrations made once and shared (see turbo-kv-registry.h).

#include "turbo-kv-registry.h"
#include "turbo-kv-calibration.h"
#include "turbo-kv-policy.h"

#include "llama-cparams.h"

#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

// A value made once by whoever needs it first; others needing it wait on its own lock.
template <typename T> struct made_once {
    std::mutex mutex;
    bool made = false;
    T value;
};

using transform_key = std::tuple<const llama_model *, int32_t, uint32_t, pyturbo_kvt_rotation>;
using calibration_slot = made_once<std::vector<pyturbo_kv_moments>>;
using transform_slot = made_once<std::unique_ptr<pyturbo_kv_transform>>;

// The registry's lock guards only these maps, never the work of filling a slot.
static std::mutex registry_mutex;
static std::map<transform_key, std::shared_ptr<transform_slot>> transforms;
static std::map<const llama_model *, std::shared_ptr<calibration_slot>> calibrations;

template <typename K, typename S> static std::shared_ptr<S> slot_for(std::map<K, std::shared_ptr<S>> & slots,
                                                                     const K & key) {
    std::lock_guard<std::mutex> lock(registry_mutex);
    std::shared_ptr<S> & slot = slots[key];
    if (!slot) {
        slot = std::make_shared<S>();
    }
    return slot;
}

// The model's calibration moments (empty where the pass gave none), run on first need.
static const std::vector<pyturbo_kv_moments> & calibration_for(const llama_model & model, int n_threads) {
    const std::shared_ptr<calibration_slot> slot = slot_for(calibrations, &model);
    std::lock_guard<std::mutex> lock(slot->mutex);
    if (!slot->made) {
        slot->value = pyturbo_kv_calibrate(model, n_threads);
        slot->made = true;
    }
    return slot->value;  // the slot lives until the model is freed (pyturbo_kvt_release)
}

// What applies of `flags`: a calibrated key transform replaces the weight-derived centering
// and equalization; where the pass gave nothing, those stand in for it on models with
// k_proj biases.
static int32_t applied_flags(const llama_model & model, int32_t flags, bool calibrated) {
    if (!(flags & PYTURBO_KVT_K_CALIBRATE)) {
        return flags;
    }
    if (calibrated) {
        return flags & ~(PYTURBO_KVT_K_CENTER | PYTURBO_KVT_K_EQUALIZE);
    }
    const int32_t supported = pyturbo_kvt_supported(model);
    const int32_t weight_keys = (supported & PYTURBO_KVT_K_CENTER)
        ? supported & (PYTURBO_KVT_K_CENTER | PYTURBO_KVT_K_EQUALIZE) : 0;
    return (flags & ~PYTURBO_KVT_K_CALIBRATE) | weight_keys;
}

const pyturbo_kv_transform * pyturbo_kvt_shared(const llama_model & model, int32_t flags, const llama_cparams & cparams,
                                                const pyturbo_kvt_rotation & rotation) {
    const std::shared_ptr<transform_slot> slot = slot_for(transforms, transform_key{ &model, flags, cparams.n_ctx,
                                                                                      rotation });
    std::lock_guard<std::mutex> lock(slot->mutex);
    if (!slot->made) {
        static const std::vector<pyturbo_kv_moments> none;
        const auto & moments = (flags & PYTURBO_KVT_K_CALIBRATE) ? calibration_for(model, cparams.n_threads) : none;
        slot->value = pyturbo_kvt_build(model, applied_flags(model, flags, !moments.empty()), cparams, moments,
                                        rotation);
        slot->made = true;
    }
    return slot->value.get();
}

void pyturbo_kvt_registry_release(const llama_model * model) {
    std::lock_guard<std::mutex> lock(registry_mutex);
    for (auto it = transforms.begin(); it != transforms.end();) {
        it = std::get<0>(it->first) == model ? transforms.erase(it) : std::next(it);
    }
    calibrations.erase(model);
}
