// pyturbo: the K/V transforms in llama.cpp's graphs (see turbo-kv-graph.h).

#include "turbo-kv-graph.h"
#include "turbo-kv-tensors.h"

#include "llama-cparams.h"
#include "llama-impl.h"

static const pyturbo_kvt_layer * layer_of(const llama_cparams & cparams, int il) {
    const auto * t = cparams.pyturbo_kvt;
    return t && il >= 0 && (size_t) il < t->layers.size() ? &t->layers[il] : nullptr;
}

// op(x, per-KV-head values) for x holding n_head heads of values->ne[0] each ([head, n_head,
// n_tokens] or [head * n_head, n_tokens]): each KV head's values [head, n_head_kv] go to the
// query heads of its group. op is ggml_mul or ggml_add.
static ggml_tensor * per_kv_head(ggml_context * ctx, ggml_tensor * x, ggml_tensor * values, const pyturbo_kvt_layer & L,
                                 ggml_tensor * (*op)(ggml_context *, ggml_tensor *, ggml_tensor *)) {
    const int64_t head = values->ne[0];
    const int64_t group = L.n_head / L.n_head_kv;
    const int64_t n_rows = ggml_nelements(x) / (head * L.n_head);
    ggml_tensor * grouped = ggml_reshape_4d(ctx, ggml_is_contiguous(x) ? x : ggml_cont(ctx, x), head, group,
                                            L.n_head_kv, n_rows);
    ggml_tensor * result = op(ctx, grouped, ggml_reshape_3d(ctx, values, head, 1, L.n_head_kv));
    return ggml_reshape(ctx, result, x);
}

// y = M_h x per head for x [head, n_heads, n_tokens] and M [head, head, n_m] (row-major per
// head; n_heads a multiple of n_m, consecutive heads sharing one M as a GQA group shares its
// KV head). As [head, 1, n_heads, n_tokens], x is one column per (head, token) and
// ggml_mul_mat broadcasts M over both: one op, no copies (one cont for a strided view).
static ggml_tensor * per_head_matmul(ggml_context * ctx, ggml_tensor * x, ggml_tensor * m) {
    ggml_tensor * columns = ggml_reshape_4d(ctx, ggml_is_contiguous(x) ? x : ggml_cont(ctx, x), x->ne[0], 1,
                                            x->ne[1], ggml_nelements(x) / (x->ne[0] * x->ne[1]));
    ggml_tensor * y = ggml_mul_mat(ctx, ggml_reshape_4d(ctx, m, m->ne[0], m->ne[1], m->ne[2], 1), columns);
    return ggml_reshape_3d(ctx, y, x->ne[0], x->ne[1], ggml_nelements(x) / (x->ne[0] * x->ne[1]));
}

static bool folds(const ggml_tensor * matrix, int64_t size, const ggml_tensor * rot) {
    return matrix != nullptr && rot != nullptr && rot->ne[0] == size;
}

// Keys and queries: the transform, then llama.cpp's rotation k_rot (taken into the
// calibrated matrices where they were made for it).
static void apply_to_keys(ggml_context * ctx, const pyturbo_kvt_layer * L, ggml_tensor ** q, ggml_tensor ** k,
                          ggml_tensor * k_rot) {
    if (L != nullptr && *k != nullptr && L->k_matrix) {  // calibrated: A (k - c) stored, A^-1 q asked
        const bool folded = folds(L->k_rot_matrix, L->k_rot_size, k_rot);
        *q = per_head_matmul(ctx, *q, folded ? L->q_rot_matrix : L->q_matrix);
        *k = per_head_matmul(ctx, ggml_sub(ctx, *k, L->k_offset), folded ? L->k_rot_matrix : L->k_matrix);
        k_rot = folded ? nullptr : k_rot;
    } else if (L != nullptr && *k != nullptr) {
        if (L->q_scale) {
            *q = per_kv_head(ctx, *q, L->q_scale, *L, ggml_mul);
            *k = ggml_mul(ctx, *k, L->k_inv_scale);
        }
        if (L->k_offset) {
            *k = ggml_sub(ctx, *k, L->k_offset);
        }
    }
    if (k_rot) {
        *q = llama_mul_mat_hadamard(ctx, *q, k_rot);
        if (*k) {
            *k = llama_mul_mat_hadamard(ctx, *k, k_rot);
        }
    }
}

// Values: c_v off, then 1/s_v and llama.cpp's rotation v_rot (one matrix where made for it).
static void apply_to_values(ggml_context * ctx, const pyturbo_kvt_layer * L, ggml_tensor ** v,
                            const ggml_tensor * sinks, ggml_tensor * v_rot) {
    if (*v == nullptr) {
        return;
    }
    if (L != nullptr && L->v_offset && sinks == nullptr) {
        *v = ggml_sub(ctx, *v, L->v_offset);
    }
    if (L != nullptr && folds(L->v_rot_in, L->v_rot_size, v_rot)) {
        *v = per_head_matmul(ctx, *v, L->v_rot_in);
        return;
    }
    if (L != nullptr && L->v_inv_scale) {
        *v = ggml_mul(ctx, *v, L->v_inv_scale);
    }
    if (v_rot) {
        *v = llama_mul_mat_hadamard(ctx, *v, v_rot);
    }
}

void pyturbo_kvt_apply(ggml_context * ctx, const llama_cparams & cparams, int il, ggml_tensor ** q, ggml_tensor ** k,
                       ggml_tensor ** v, const ggml_tensor * sinks, ggml_tensor * k_rot, ggml_tensor * v_rot) {
    const pyturbo_kvt_layer * L = layer_of(cparams, il);
    apply_to_keys(ctx, L, q, k, k_rot);
    apply_to_values(ctx, L, v, sinks, v_rot);
}

ggml_tensor * pyturbo_kvt_restore_output(ggml_context * ctx, const llama_cparams & cparams, int il, ggml_tensor * cur,
                                         const ggml_tensor * sinks, ggml_tensor * v_rot) {
    const pyturbo_kvt_layer * L = layer_of(cparams, il);
    // cur: [head_v * n_head, n_tokens]
    if (L != nullptr && folds(L->v_rot_out, L->v_rot_size, v_rot)) {
        const int64_t head = L->v_rot_out->ne[0];
        ggml_tensor * heads = ggml_reshape_3d(ctx, ggml_is_contiguous(cur) ? cur : ggml_cont(ctx, cur), head, L->n_head,
                                              ggml_nelements(cur) / (head * L->n_head));
        cur = ggml_reshape(ctx, per_head_matmul(ctx, heads, L->v_rot_out), cur);
    } else {
        if (v_rot) {
            cur = llama_mul_mat_hadamard(ctx, cur, v_rot);
        }
        if (L != nullptr && L->v_scale) {
            cur = per_kv_head(ctx, cur, L->v_scale, *L, ggml_mul);
        }
    }
    if (L != nullptr && L->v_offset && sinks == nullptr) {
        cur = per_kv_head(ctx, cur, L->v_offset, *L, ggml_add);
    }
    return cur;
}

ggml_tensor * pyturbo_kvt_shift_offset(ggml_context * ctx, const llama_cparams & cparams, int il, ggml_tensor * k,
                                       int sign) {
    const pyturbo_kvt_layer * L = layer_of(cparams, il);
    if (L == nullptr || L->k_offset == nullptr) {
        return k;
    }
    ggml_tensor * x = k->type == GGML_TYPE_F32 ? k : ggml_cast(ctx, k, GGML_TYPE_F32);
    if (L->k_matrix) {  // the whole head is RoPE-d (full_rope): A^-1 x + c before, A (x - c) after
        return sign > 0 ? ggml_add(ctx, per_head_matmul(ctx, x, L->q_matrix), L->k_offset)
                        : per_head_matmul(ctx, ggml_sub(ctx, x, L->k_offset), L->k_matrix);
    }
    // the shift RoPEs the first n_rot values of each head: the offset's matching part
    ggml_tensor * offset = ggml_view_2d(ctx, L->k_offset, x->ne[0], L->k_offset->ne[1], L->k_offset->nb[1], 0);
    return sign > 0 ? ggml_add(ctx, x, offset) : ggml_sub(ctx, x, offset);
}

ggml_tensor * pyturbo_kvt_shift_store(ggml_context * ctx, const llama_cparams & cparams, int il, ggml_tensor * k,
                                      ggml_tensor * dst) {
    const pyturbo_kvt_layer * L = layer_of(cparams, il);
    if (L == nullptr || L->k_offset == nullptr) {
        return k;
    }
    return ggml_cpy(ctx, pyturbo_kvt_shift_offset(ctx, cparams, il, k, -1), dst);
}
