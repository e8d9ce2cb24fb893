// pyturbo: the Metal backend's supports_op answers for the turbo types (see turbo-metal.h).

#include "turbo-metal.h"

#include <cstdio>

namespace {

bool is_turbo(ggml_type type) {
    return type == GGML_TYPE_TURBO2 || type == GGML_TYPE_TURBO3 || type == GGML_TYPE_TURBO4;
}

bool involves_turbo(const ggml_tensor * op) {
    if (is_turbo(op->type)) {
        return true;
    }
    for (int i = 0; i < GGML_MAX_SRC; ++i) {
        if (op->src[i] && is_turbo(op->src[i]->type)) {
            return true;
        }
    }
    return false;
}

// the head sizes fa_turbo.metal and fa_vec_turbo.metal are instantiated for
bool fa_head_size_supported(int64_t dk, int64_t dv) {
    return dk == dv && (dk == 64 || dk == 128 || dk == 256);
}

bool flash_attn_supported(const ggml_tensor * op, bool has_simdgroup_mm) {
    const ggml_tensor * q = op->src[0];
    const ggml_tensor * k = op->src[1];
    const ggml_tensor * v = op->src[2];
    return has_simdgroup_mm &&
           q->ne[0] == k->ne[0] &&
           fa_head_size_supported(k->ne[0], v->ne[0]) &&
           pyturbo_metal_fa_kv_types_supported(k->type, v->type);
}

} // namespace

bool pyturbo_metal_fa_kv_types_supported(ggml_type k, ggml_type v) {
    return is_turbo(v) && (k == v || k == GGML_TYPE_Q8_0);
}

void pyturbo_metal_fa_kv_type_name(const ggml_tensor * op, bool use_kv_f16, char * buf, size_t size) {
    const ggml_type k = op->src[1]->type;
    const ggml_type v = op->src[2]->type;
    if (use_kv_f16) {
        snprintf(buf, size, "f16");
    } else if (k == v) {
        snprintf(buf, size, "%s", ggml_type_name(k));
    } else {
        snprintf(buf, size, "%s_%s", ggml_type_name(k), ggml_type_name(v));
    }
}

bool pyturbo_metal_supports_op(const ggml_tensor * op, bool has_simdgroup_mm, bool * supported) {
    if (!involves_turbo(op)) {
        return false;
    }
    const ggml_tensor * src0 = op->src[0];
    switch (op->op) {
        case GGML_OP_NONE:
        case GGML_OP_RESHAPE:
        case GGML_OP_VIEW:
        case GGML_OP_PERMUTE:
        case GGML_OP_TRANSPOSE:
            return false;   // no kernel runs: upstream's answer (true) stands
        case GGML_OP_SET_ROWS:
            *supported = src0->type == GGML_TYPE_F32 && is_turbo(op->type) &&
                         (op->src[1]->type == GGML_TYPE_I64 || op->src[1]->type == GGML_TYPE_I32);
            return true;
        case GGML_OP_CPY:
        case GGML_OP_DUP:
        case GGML_OP_CONT:
            *supported = (src0->type == GGML_TYPE_F32 && is_turbo(op->type)) ||
                         (is_turbo(src0->type) && (op->type == GGML_TYPE_F32 || op->type == GGML_TYPE_F16));
            return true;
        case GGML_OP_GET_ROWS:
            *supported = is_turbo(src0->type) && op->type == GGML_TYPE_F32;
            return true;
        case GGML_OP_FLASH_ATTN_EXT:
            *supported = flash_attn_supported(op, has_simdgroup_mm);
            return true;
        default:
            *supported = false;
            return true;
    }
}
