// pyturbo: contexts made with a K/V transform choice of their own (see turbo-kv-request.h).

#include "turbo-kv-request.h"
#include "turbo-kv-flags.h"

// The choice for the next context constructed on this thread, if any.
static thread_local int32_t pending = PYTURBO_KVT_NO_REQUEST;

// Sets the pending choice for one llama_init_from_model call and puts back what was there
// (a calibration pass makes its context from inside another context's constructor).
struct scoped_request {
    int32_t saved;

    explicit scoped_request(int32_t flags) : saved(pending) { pending = flags; }

    ~scoped_request() { pending = saved; }
};

llama_context * pyturbo_kvt_init_context(llama_model & model, const llama_context_params & params, int32_t flags) {
    scoped_request request(flags);
    return llama_init_from_model(&model, params);
}

int32_t pyturbo_kvt_take_request() {
    const int32_t flags = pending;
    pending = PYTURBO_KVT_NO_REQUEST;
    return flags;
}
