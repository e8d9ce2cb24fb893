// pyturbo: the K/V transform a context gets (see turbo-kv-transform.h).

#include "turbo-kv-transform.h"
#include "turbo-kv-layers.h"
#include "turbo-kv-policy.h"
#include "turbo-kv-registry.h"
#include "turbo-kv-request.h"

#include "llama-context.h"
#include "llama-cparams.h"
#include "llama-impl.h"
#include "llama-model.h"

void pyturbo_kvt_setup_context(const llama_model & model, llama_cparams & cparams, ggml_type type_k, ggml_type type_v) {
    const int32_t request = pyturbo_kvt_take_request();
    int32_t flags = request != PYTURBO_KVT_NO_REQUEST ? request : pyturbo_kvt_env_choice();
    // A model loaded with no_alloc has no weight data: llama.cpp's memory-fit probe
    // (common_fit_params, run by llama-completion, llama-cli, llama-server and llama-perplexity
    // before the real load) creates its contexts on one. The calibration pass would decode on
    // it, with no compute buffer (a NULL dereference in ggml-alloc: SIGSEGV, found by
    // .ci/sanitize), and the weight-derived transforms would have no weights to read. Such a
    // context only measures memory, so it gets no transform; its estimate leaves out the
    // transform's few F32 head x head matrices per layer.
    if (model.hparams.no_alloc) {
        cparams.pyturbo_kvt = nullptr;
        return;
    }
    // with per-layer cache types, what the layers need as a whole
    type_k = pyturbo_kv_layers_standing_type('K', model.hparams.n_layer_all, type_k);
    type_v = pyturbo_kv_layers_standing_type('V', model.hparams.n_layer_all, type_v);
    flags = flags == PYTURBO_KVT_AUTO ? pyturbo_kvt_auto(model, type_k, type_v) : flags & pyturbo_kvt_supported(model);
    const pyturbo_kvt_rotation rotation = { ggml_is_quantized(type_k), ggml_is_quantized(type_v) };
    cparams.pyturbo_kvt = flags ? pyturbo_kvt_shared(model, flags, cparams, rotation) : nullptr;
    if (cparams.pyturbo_kvt) {
        const int32_t applied = cparams.pyturbo_kvt->flags;
        LLAMA_LOG_INFO("%s: pyturbo KV transforms:%s%s%s%s%s\n", __func__,
                       applied & PYTURBO_KVT_K_CALIBRATE ? " calibrated K centering and equalization" : "",
                       applied & PYTURBO_KVT_K_CENTER ? " K centering" : "",
                       applied & PYTURBO_KVT_K_EQUALIZE ? " K/Q equalization" : "",
                       applied & PYTURBO_KVT_V_CENTER ? " V centering" : "",
                       applied & PYTURBO_KVT_V_EQUALIZE ? " V equalization" : "");
    }
}

llama_context * pyturbo_context_create(llama_model * model, llama_context_params params, int32_t kv_transform,
                                       const pyturbo_kv_layer_types * layers, int32_t * applied) {
    llama_context * ctx = pyturbo_kvt_init_context(*model, params, kv_transform, layers);
    if (applied != nullptr) {
        const pyturbo_kv_transform * transform = ctx ? ctx->get_cparams().pyturbo_kvt : nullptr;
        *applied = transform ? transform->flags : 0;
    }
    return ctx;
}

int32_t pyturbo_kv_transform_supported_flags(const llama_model * model) {
    return pyturbo_kvt_supported(*model);
}

void pyturbo_kvt_release(const llama_model * model) {
    pyturbo_kvt_registry_release(model);
}
