// pyturbo: the turbo rules libllama enforces (see turbo-llama.h).

#include "turbo-llama.h"

#include <cstdlib>
#include <stdexcept>
#include <string>

// llama_kv_cache turns the rotation off in each of these cases; name the one that applies.
static std::string rotation_off_reason(const char * kv, int32_t n_embd_head_all) {
    const char * disable = getenv("LLAMA_ATTN_ROT_DISABLE");
    if (disable && atoi(disable)) {
        return "LLAMA_ATTN_ROT_DISABLE is set";
    }
    if (n_embd_head_all < 0) {
        return std::string("the layers have different ") + kv + " head sizes";
    }
    return std::string("the ") + kv + " head size " + std::to_string(n_embd_head_all) + " is not a multiple of 64";
}

void pyturbo_check_kv_rotation(const char * kv, ggml_type type, bool rot, int32_t n_embd_head_all) {
    // the turbo codebooks are only defined on Hadamard-rotated data
    if (!ggml_is_runtime_only_type(type) || rot || n_embd_head_all == 0) {
        return;
    }
    throw std::runtime_error(std::string(kv) + " cache type " + ggml_type_name(type) +
                             " needs the attention rotation, which is off because " +
                             rotation_off_reason(kv, n_embd_head_all));
}

static void refuse_runtime_only_type(ggml_type type, const char * what) {
    if (type >= 0 && type < GGML_TYPE_COUNT && ggml_is_runtime_only_type(type)) {
        throw std::runtime_error(std::string(what) + ": " + ggml_type_name(type) +
                                 " is a runtime-only KV-cache type and cannot be used for model weights");
    }
}

void pyturbo_check_quantize_params(const llama_model_quantize_params * params) {
    refuse_runtime_only_type(params->output_tensor_type,   "output tensor type");
    refuse_runtime_only_type(params->token_embedding_type, "token embedding type");
    for (const auto * p = params->tt_overrides; p && p->pattern != nullptr; p++) {
        refuse_runtime_only_type(p->type, p->pattern);
    }
}
