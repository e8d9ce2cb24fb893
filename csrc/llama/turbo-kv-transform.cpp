// pyturbo: exact attention invariances for low-bit K/V caches (see turbo-kv-transform.h).

#include "turbo-kv-transform.h"

#include "llama-context.h"
#include "llama-cparams.h"
#include "llama-hparams.h"
#include "llama-impl.h"
#include "llama-model.h"

#include "ggml-alloc.h"
#include "ggml-backend.h"

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

// This file stands alone (csrc/pyturbo-kernels.cmake keeps it out of llama's unity batches),
// so its static helpers need no namespace; its one struct of its own has a pyturbo_ name.

// Exponent of the equalization: s = (|k_j| / |q_j|)^alpha. On Qwen2.5-Coder-0.5B (3 chunks,
// K q4_0 / V q8_0, with the bias residual in |k_j|): 0.35 0.064, 0.5 0.059, 0.75 0.065, 1.0 0.126.
static const double EQUALIZE_ALPHA = 0.5;

// One layer's transform tensors (F32, in a CPU buffer); nullptr where a transform is off.
struct pyturbo_kvt_layer {
    ggml_tensor * k_inv_scale = nullptr; // [head_k, n_head_kv]  1 / s
    ggml_tensor * k_offset    = nullptr; // [head_k, n_head_kv]  c_k / s
    ggml_tensor * q_scale     = nullptr; // [head_k, n_head_kv]  s
    ggml_tensor * v_offset    = nullptr; // [head_v, n_head_kv]  c_v
    int64_t n_head    = 0;
    int64_t n_head_kv = 0;
};

struct pyturbo_kv_transform {
    int32_t flags = 0;
    std::vector<pyturbo_kvt_layer> layers;
    ggml_context * ctx = nullptr;
    ggml_backend_buffer_t buffer = nullptr;

    ~pyturbo_kv_transform() {
        ggml_backend_buffer_free(buffer);
        ggml_free(ctx);
    }
};

// -- what a model allows ----------------------------------------------------------------

static bool is_bias(const ggml_tensor * t, int64_t n) {
    return t != nullptr && ggml_n_dims(t) == 1 && t->ne[0] == n;
}

// Layers whose attention is a plain W x (+ b) projection per head, RoPE-d and cached.
static bool layer_has_plain_attention(const llama_model & model, int il) {
    const auto & hp = model.hparams;
    const auto & layer = model.layers[il];
    return layer.wq != nullptr && layer.wk != nullptr && layer.wv != nullptr && layer.wqkv == nullptr &&
           hp.n_head_kv(il) > 0 && hp.n_head(il) % hp.n_head_kv(il) == 0 &&
           hp.n_embd_head_k(il) == hp.n_embd_head_v(il);
}

static bool model_allows_transforms(const llama_model & model) {
    const auto & hp = model.hparams;
    if (hp.is_mla() || hp.n_layer_kv_from_start >= 0) {
        return false;  // compressed or shared KV: keys are not one head's W_k x
    }
    if (hp.rope_type != LLAMA_ROPE_TYPE_NORM && hp.rope_type != LLAMA_ROPE_TYPE_NEOX) {
        return false;  // the RoPE pairs of other layouts are not handled
    }
    for (uint32_t il = 0; il < hp.n_layer(); ++il) {
        if (!layer_has_plain_attention(model, il)) {
            return false;
        }
    }
    return hp.n_layer() > 0;
}

static int32_t supported_flags(const llama_model & model) {
    if (!model_allows_transforms(model)) {
        return 0;
    }
    const auto & hp = model.hparams;
    bool k_bias = true;
    bool v_bias = true;
    bool equalize = true;
    for (uint32_t il = 0; il < hp.n_layer(); ++il) {
        const auto & layer = model.layers[il];
        k_bias = k_bias && is_bias(layer.wk_b, hp.n_embd_k_gqa(il));
        v_bias = v_bias && is_bias(layer.wv_b, hp.n_embd_v_gqa(il));
        const bool qk_norm = layer.attn_q_norm != nullptr && layer.attn_k_norm != nullptr;
        equalize = equalize && (qk_norm || (layer.attn_norm != nullptr && is_bias(layer.attn_norm, hp.n_embd)));
    }
    int32_t flags = 0;
    // a logit soft-cap bends scores before softmax: a shift of every score is no longer free
    if (k_bias && !hp.attn_soft_cap) {
        flags |= PYTURBO_KVT_K_CENTER;
    }
    if (equalize) {
        flags |= PYTURBO_KVT_K_EQUALIZE;
    }
    if (v_bias) {
        flags |= PYTURBO_KVT_V_CENTER;
    }
    return flags;
}

static int32_t auto_flags(const llama_model & model) {
    const int32_t supported = supported_flags(model);
    // Centering only where a bias puts a fixed offset into every key and value (the
    // Qwen2 family's outliers); equalization where keys are centered, where it was measured.
    if (!(supported & PYTURBO_KVT_K_CENTER)) {
        return supported & PYTURBO_KVT_V_CENTER;
    }
    return supported;
}

// -- computing the transform from the weights --------------------------------------------

// A tensor's values as floats (any type ggml can convert, on any backend).
static std::vector<float> tensor_values(const ggml_tensor * t) {
    std::vector<uint8_t> raw(ggml_nbytes(t));
    ggml_backend_tensor_get(t, raw.data(), 0, raw.size());
    std::vector<float> out(ggml_nelements(t));
    if (t->type == GGML_TYPE_F32) {
        memcpy(out.data(), raw.data(), raw.size());
        return out;
    }
    const auto * traits = ggml_get_type_traits(t->type);
    GGML_ASSERT(traits->to_float != nullptr);
    const int64_t n_rows = ggml_nrows(t);
    for (int64_t r = 0; r < n_rows; ++r) {
        traits->to_float(raw.data() + r * t->nb[1], out.data() + r * t->ne[0], t->ne[0]);
    }
    return out;
}

// Squared norm of each output channel of a projection W (ggml [n_in, n_out]) applied to
// x * gain: sum_i (W[j, i] * gain[i])^2.
static std::vector<double> channel_energy(const ggml_tensor * w, const std::vector<float> & gain) {
    const std::vector<float> values = tensor_values(w);
    const int64_t n_in = w->ne[0];
    std::vector<double> energy(w->ne[1], 0.0);
    for (int64_t j = 0; j < w->ne[1]; ++j) {
        double sum = 0.0;
        for (int64_t i = 0; i < n_in; ++i) {
            const double x = (double) values[j * n_in + i] * gain[i];
            sum += x * x;
        }
        energy[j] = sum;
    }
    return energy;
}

// The partner of channel d in RoPE (the two channels one rotation mixes), d itself if unrotated.
static int64_t rope_partner(const llama_hparams & hp, int il, int64_t d) {
    const int64_t n_rot = hp.n_rot(il);
    if (d >= n_rot) {
        return d;
    }
    if (hp.rope_type == LLAMA_ROPE_TYPE_NEOX) {
        return d < n_rot / 2 ? d + n_rot / 2 : d - n_rot / 2;
    }
    return d ^ 1;
}

// s of one layer, [head][n_head_kv], from per-channel energies of K (n_head_kv heads) and
// Q (n_head heads, averaged over each KV head's group); normalized to a geometric mean of 1.
static std::vector<float> equalization_scales(const llama_hparams & hp, int il, const std::vector<double> & k_energy,
                                              const std::vector<double> & q_energy, bool per_head_shared) {
    const int64_t head = hp.n_embd_head_k(il);
    const int64_t n_head_kv = hp.n_head_kv(il);
    const int64_t group = hp.n_head(il) / n_head_kv;
    std::vector<float> s(head * n_head_kv, 1.0f);
    for (int64_t h = 0; h < n_head_kv; ++h) {
        std::vector<double> rk(head), rq(head, 0.0);
        for (int64_t d = 0; d < head; ++d) {
            rk[d] = k_energy[per_head_shared ? d : h * head + d];
            for (int64_t m = 0; m < group; ++m) {
                rq[d] += q_energy[per_head_shared ? d : (h * group + m) * head + d] / group;
            }
        }
        double log_sum = 0.0;
        for (int64_t d = 0; d < head; ++d) {
            const int64_t p = rope_partner(hp, il, d);
            const double pair_k = rk[d] + (p != d ? rk[p] : 0.0);
            const double pair_q = rq[d] + (p != d ? rq[p] : 0.0);
            const double value = pair_k > 0.0 && pair_q > 0.0 ? std::pow(pair_k / pair_q, EQUALIZE_ALPHA / 2) : 1.0;
            s[h * head + d] = (float) value;
            log_sum += std::log(value);
        }
        const double mean = std::exp(log_sum / head);
        for (int64_t d = 0; d < head; ++d) {
            s[h * head + d] = (float) (s[h * head + d] / mean);
        }
    }
    return s;
}

// The offset K centering removes, c [n_embd_k_gqa]: the k_proj bias as RoPE leaves it on
// average over positions 0..n_ctx-1. Per RoPE pair that is the mean of R(p theta) b: a
// slowly turning pair keeps its bias (removed whole), a fast one averages to about 0 and
// is kept (subtracting a bias that turns would double its energy). Any fixed c is exact;
// this one leaves the keys least energy, |b|^2 - |c|^2 per pair, which `residual` receives
// (half to each channel of the pair).
static std::vector<float> key_center(const llama_model & model, const llama_cparams & cparams, int il,
                                     std::vector<double> & residual) {
    const auto & hp = model.hparams;
    std::vector<float> c = tensor_values(model.layers[il].wk_b);
    residual.assign(c.size(), 0.0);
    const int64_t head = hp.n_embd_head_k(il);
    const int64_t n_rot = hp.n_rot(il);
    const double base = model.get_rope_freq_base(cparams, il);
    const double scale = model.get_rope_freq_scale(cparams, il);
    const double n_pos = std::max<uint32_t>(cparams.n_ctx, 1);
    for (int64_t h = 0; h < (int64_t) hp.n_head_kv(il); ++h) {
        for (int64_t f = 0; f < n_rot / 2; ++f) {
            // the two channels one rotation mixes, and how fast it turns
            const int64_t d0 = hp.rope_type == LLAMA_ROPE_TYPE_NEOX ? f : 2 * f;
            const int64_t d1 = hp.rope_type == LLAMA_ROPE_TYPE_NEOX ? f + n_rot / 2 : 2 * f + 1;
            const double theta = scale * std::pow(base, -2.0 * f / n_rot);
            // mean of e^{i p theta} over p < n_pos, summed in closed form
            const std::complex<double> turn = std::polar(1.0, theta);
            const std::complex<double> mean = std::abs(theta) * n_pos < 1e-9 ? 1.0
                : (1.0 - std::pow(turn, n_pos)) / (n_pos * (1.0 - turn));
            const double b0 = c[h * head + d0], b1 = c[h * head + d1];
            const double c0 = mean.real() * b0 - mean.imag() * b1;
            const double c1 = mean.imag() * b0 + mean.real() * b1;
            const double left = std::max(0.0, b0 * b0 + b1 * b1 - c0 * c0 - c1 * c1);
            c[h * head + d0] = (float) c0;
            c[h * head + d1] = (float) c1;
            residual[h * head + d0] = residual[h * head + d1] = left / 2;
        }
    }
    return c;
}

static std::vector<float> layer_scales(const llama_model & model, int il, const std::vector<double> & k_residual) {
    const auto & hp = model.hparams;
    const auto & layer = model.layers[il];
    if (layer.attn_q_norm != nullptr && layer.attn_k_norm != nullptr) {
        // Q/K norms: each channel's size is its norm gain (shared by every head).
        std::vector<double> k_energy, q_energy;
        for (float g : tensor_values(layer.attn_k_norm)) {
            k_energy.push_back((double) g * g);
        }
        for (float g : tensor_values(layer.attn_q_norm)) {
            q_energy.push_back((double) g * g);
        }
        return equalization_scales(hp, il, k_energy, q_energy, true);
    }
    // K's channel energy: its W_k x part plus what centering leaves of the bias
    const std::vector<float> gain = tensor_values(layer.attn_norm);
    std::vector<double> k_energy = channel_energy(layer.wk, gain);
    for (size_t j = 0; j < k_residual.size(); ++j) {
        k_energy[j] += k_residual[j];
    }
    return equalization_scales(hp, il, k_energy, channel_energy(layer.wq, gain), false);
}

static ggml_tensor * new_matrix(ggml_context * ctx, int64_t head, int64_t n_head_kv) {
    return ggml_new_tensor_2d(ctx, GGML_TYPE_F32, head, n_head_kv);
}

static std::unique_ptr<pyturbo_kv_transform> build_transform(const llama_model & model, int32_t flags,
                                                             const llama_cparams & cparams) {
    const auto & hp = model.hparams;
    auto t = std::make_unique<pyturbo_kv_transform>();
    t->flags = flags;
    const uint32_t n_layer = hp.n_layer();
    ggml_init_params params = { ggml_tensor_overhead() * (4 * n_layer + 1), nullptr, true };
    t->ctx = ggml_init(params);
    t->layers.resize(n_layer);
    for (uint32_t il = 0; il < n_layer; ++il) {
        auto & L = t->layers[il];
        const int64_t head = hp.n_embd_head_k(il);
        L.n_head = hp.n_head(il);
        L.n_head_kv = hp.n_head_kv(il);
        if (flags & PYTURBO_KVT_K_EQUALIZE) {
            L.k_inv_scale = new_matrix(t->ctx, head, L.n_head_kv);
            L.q_scale = new_matrix(t->ctx, head, L.n_head_kv);
        }
        if (flags & PYTURBO_KVT_K_CENTER) {
            L.k_offset = new_matrix(t->ctx, head, L.n_head_kv);
        }
        if (flags & PYTURBO_KVT_V_CENTER) {
            L.v_offset = new_matrix(t->ctx, hp.n_embd_head_v(il), L.n_head_kv);
        }
    }
    t->buffer = ggml_backend_alloc_ctx_tensors_from_buft(t->ctx, ggml_backend_cpu_buffer_type());
    GGML_ASSERT(t->buffer != nullptr);

    for (uint32_t il = 0; il < n_layer; ++il) {
        auto & L = t->layers[il];
        const auto & layer = model.layers[il];
        std::vector<double> k_residual;
        const std::vector<float> center = (flags & PYTURBO_KVT_K_CENTER)
            ? key_center(model, cparams, il, k_residual) : std::vector<float>();
        const std::vector<float> s = (flags & PYTURBO_KVT_K_EQUALIZE)
            ? layer_scales(model, il, k_residual) : std::vector<float>(hp.n_embd_k_gqa(il), 1.0f);
        if (L.k_inv_scale) {
            std::vector<float> inv(s.size());
            for (size_t j = 0; j < s.size(); ++j) {
                inv[j] = 1.0f / s[j];
            }
            ggml_backend_tensor_set(L.k_inv_scale, inv.data(), 0, ggml_nbytes(L.k_inv_scale));
            ggml_backend_tensor_set(L.q_scale, s.data(), 0, ggml_nbytes(L.q_scale));
        }
        if (L.k_offset) {
            std::vector<float> offset(center.size());
            for (size_t j = 0; j < offset.size(); ++j) {
                offset[j] = center[j] / s[j];
            }
            ggml_backend_tensor_set(L.k_offset, offset.data(), 0, ggml_nbytes(L.k_offset));
        }
        if (L.v_offset) {
            const std::vector<float> offset = tensor_values(layer.wv_b);
            ggml_backend_tensor_set(L.v_offset, offset.data(), 0, ggml_nbytes(L.v_offset));
        }
    }
    return t;
}

// One transform per (model, flags, context size), shared by contexts alike, freed with the model.
static std::mutex registry_mutex;
static std::map<std::tuple<const llama_model *, int32_t, uint32_t>, std::unique_ptr<pyturbo_kv_transform>> registry;

static const pyturbo_kv_transform * transform_for(const llama_model & model, int32_t flags,
                                                  const llama_cparams & cparams) {
    std::lock_guard<std::mutex> lock(registry_mutex);
    auto & slot = registry[{&model, flags, cparams.n_ctx}];
    if (!slot) {
        slot = build_transform(model, flags, cparams);
    }
    return slot.get();
}

void pyturbo_kvt_release(const llama_model * model) {
    std::lock_guard<std::mutex> lock(registry_mutex);
    for (auto it = registry.begin(); it != registry.end();) {
        it = std::get<0>(it->first) == model ? registry.erase(it) : std::next(it);
    }
}

// -- which transforms a context gets ------------------------------------------------------

static thread_local bool    request_pending = false;
static thread_local int32_t request_flags   = PYTURBO_KVT_AUTO;

void pyturbo_kv_transform_request(int32_t flags) {
    request_pending = flags != PYTURBO_KVT_NO_REQUEST;
    request_flags = flags;
}

static int32_t flags_from_env() {
    const char * value = getenv("PYTURBO_KV_TRANSFORM");
    if (value == nullptr || *value == '\0' || strcmp(value, "auto") == 0) {
        return PYTURBO_KVT_AUTO;
    }
    if (strcmp(value, "off") == 0) {
        return 0;
    }
    return atoi(value);
}

void pyturbo_kvt_setup_context(const llama_model & model, llama_cparams & cparams) {
    int32_t flags = request_pending ? request_flags : flags_from_env();
    request_pending = false;
    flags = flags == PYTURBO_KVT_AUTO ? auto_flags(model) : (flags & supported_flags(model));
    cparams.pyturbo_kvt = flags ? transform_for(model, flags, cparams) : nullptr;
    if (flags) {
        LLAMA_LOG_INFO("%s: pyturbo KV transforms:%s%s%s\n", __func__,
                       flags & PYTURBO_KVT_K_CENTER ? " K centering" : "",
                       flags & PYTURBO_KVT_K_EQUALIZE ? " K/Q equalization" : "",
                       flags & PYTURBO_KVT_V_CENTER ? " V centering" : "");
    }
}

int32_t pyturbo_kv_transform_flags(const struct llama_context * ctx) {
    const auto * t = ctx->get_cparams().pyturbo_kvt;
    return t ? t->flags : 0;
}

int32_t pyturbo_kv_transform_auto_flags(const struct llama_model * model) {
    return auto_flags(*model);
}

int32_t pyturbo_kv_transform_supported_flags(const struct llama_model * model) {
    return supported_flags(*model);
}

// -- the graph ------------------------------------------------------------------------------

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

void pyturbo_kvt_apply(ggml_context * ctx, const llama_cparams & cparams, int il,
                       ggml_tensor ** q, ggml_tensor ** k, ggml_tensor ** v, const ggml_tensor * sinks) {
    const pyturbo_kvt_layer * L = layer_of(cparams, il);
    if (L == nullptr) {
        return;
    }
    if (L->q_scale && *k) {
        *q = per_kv_head(ctx, *q, L->q_scale, *L, ggml_mul);
        *k = ggml_mul(ctx, *k, L->k_inv_scale);
    }
    if (L->k_offset && *k) {
        *k = ggml_sub(ctx, *k, L->k_offset);
    }
    if (L->v_offset && *v && sinks == nullptr) {
        *v = ggml_sub(ctx, *v, L->v_offset);
    }
}

ggml_tensor * pyturbo_kvt_restore_output(ggml_context * ctx, const llama_cparams & cparams, int il, ggml_tensor * cur,
                                         const ggml_tensor * sinks) {
    const pyturbo_kvt_layer * L = layer_of(cparams, il);
    if (L == nullptr || L->v_offset == nullptr || sinks != nullptr) {
        return cur;
    }
    return per_kv_head(ctx, cur, L->v_offset, *L, ggml_add);  // cur: [head_v * n_head, n_tokens]
}

ggml_tensor * pyturbo_kvt_shift_offset(ggml_context * ctx, const llama_cparams & cparams, int il, ggml_tensor * k,
                                       int sign) {
    const pyturbo_kvt_layer * L = layer_of(cparams, il);
    if (L == nullptr || L->k_offset == nullptr) {
        return k;
    }
    ggml_tensor * x = k->type == GGML_TYPE_F32 ? k : ggml_cast(ctx, k, GGML_TYPE_F32);
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
