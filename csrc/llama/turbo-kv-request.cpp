// pyturbo: contexts made with choices of their own (see turbo-kv-request.h).

#include "turbo-kv-request.h"
#include "turbo-kv-flags.h"

namespace {

struct request {
    int32_t flags = PYTURBO_KVT_NO_REQUEST;    // taken by the context's constructor
    bool made_here = false;
    const pyturbo_kv_layer_types * layers = nullptr;  // read by each of its caches
};

// The choices for the context being constructed on this thread, if any.
thread_local request pending;

// Sets the pending choices for one llama_init_from_model call and puts back what was there
// (a calibration pass makes its context from inside another context's constructor).
struct scoped_request {
    request saved;

    scoped_request(int32_t flags, const pyturbo_kv_layer_types * layers) : saved(pending) {
        pending = { flags, true, layers };
    }

    ~scoped_request() { pending = saved; }
};

} // namespace

llama_context * pyturbo_kvt_init_context(llama_model & model, const llama_context_params & params, int32_t flags,
                                         const pyturbo_kv_layer_types * layers) {
    scoped_request scoped(flags, layers);
    return llama_init_from_model(&model, params);
}

int32_t pyturbo_kvt_take_request() {
    const int32_t flags = pending.flags;
    pending.flags = PYTURBO_KVT_NO_REQUEST;
    return flags;
}

bool pyturbo_kvt_layers_request(const pyturbo_kv_layer_types ** layers) {
    *layers = pending.layers;
    return pending.made_here;
}
