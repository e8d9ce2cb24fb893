// pyturbo: exact attention invariances for low-bit K/V caches (see turbo-kv-transform.h).

#include "turbo-kv-transform.h"
#include "turbo-kv-calibration.h"

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
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

// This file stands alone (csrc/pyturbo-kernels.cmake keeps it out of llama's unity batches),
// so its static helpers need no namespace; its one struct of its own has a pyturbo_ name.

// Exponent of the equalization: s = (|k_j| / |q_j|)^alpha. On Qwen2.5-Coder-0.5B (3 chunks,
// K q4_0 / V q8_0, with the bias residual in |k_j|): 0.35 0.064, 0.5 0.059, 0.75 0.065, 1.0 0.126.
static const double EQUALIZE_ALPHA = 0.5;

// One layer's transform tensors (F32, where the layer's weights are); nullptr where a transform is off.
struct pyturbo_kvt_layer {
    ggml_tensor * k_inv_scale = nullptr; // [head_k, n_head_kv]  1 / s
    ggml_tensor * k_offset    = nullptr; // [head_k, n_head_kv]  c_k / s, or c_k before k_matrix
    ggml_tensor * q_scale     = nullptr; // [head_k, n_head_kv]  s
    ggml_tensor * k_matrix    = nullptr; // [head_k, head_k, n_head_kv]  A (calibrated; replaces s)
    ggml_tensor * q_matrix    = nullptr; // [head_k, head_k, n_head_kv]  A^-1
    ggml_tensor * v_offset    = nullptr; // [head_v, n_head_kv]  c_v
    ggml_tensor * v_inv_scale = nullptr; // [head_v, n_head_kv]  1 / s_v
    ggml_tensor * v_scale     = nullptr; // [head_v, n_head_kv]  s_v
    // the same with llama.cpp's Hadamard rotation H (of k_rot_size / v_rot_size, block-diagonal
    // over the head) taken in, for caches that get it: H A, H A^-1, H diag(1/s_v), diag(s_v) H
    ggml_tensor * k_rot_matrix = nullptr; // [head_k, head_k, n_head_kv]
    ggml_tensor * q_rot_matrix = nullptr;
    ggml_tensor * v_rot_in     = nullptr; // [head_v, head_v, n_head_kv]
    ggml_tensor * v_rot_out    = nullptr;
    int64_t k_rot_size = 0;
    int64_t v_rot_size = 0;
    int64_t n_head    = 0;
    int64_t n_head_kv = 0;
};

// Whether llama.cpp will rotate a context's K and V: its KV cache does for quantized types,
// K over the largest power of two (>= 64) dividing the head, V over 64. The transform
// prepares matrices with those rotations taken in; the graph uses them only where the
// rotation it is given has that size.
struct pyturbo_kvt_rotation {
    bool k = false;
    bool v = false;

    bool operator<(const pyturbo_kvt_rotation & other) const {
        return k != other.k ? k < other.k : v < other.v;
    }
};

static const int64_t V_ROTATION_SIZE = 64;

struct pyturbo_kv_transform {
    int32_t flags = 0;
    std::vector<pyturbo_kvt_layer> layers;
    // each layer's tensors live where its weights do (a GPU's memory, else host memory), so
    // that the ops using them run beside the layer's other ops: one context per buffer type
    std::map<ggml_backend_buffer_type_t, ggml_context *> contexts;
    std::vector<ggml_backend_buffer_t> buffers;

    ~pyturbo_kv_transform() {
        for (ggml_backend_buffer_t buffer : buffers) {
            ggml_backend_buffer_free(buffer);
        }
        for (auto & entry : contexts) {
            ggml_free(entry.second);
        }
    }

    ggml_context * context_for(ggml_backend_buffer_type_t buft, size_t n_tensors) {
        ggml_context *& ctx = contexts[buft];
        if (ctx == nullptr) {
            ggml_init_params params = { ggml_tensor_overhead() * n_tensors, nullptr, true };
            ctx = ggml_init(params);
        }
        return ctx;
    }

    void allocate() {
        for (auto & entry : contexts) {
            if (ggml_get_first_tensor(entry.second) != nullptr) {
                buffers.push_back(ggml_backend_alloc_ctx_tensors_from_buft(entry.second, entry.first));
                GGML_ASSERT(buffers.back() != nullptr);
            }
        }
    }
};

// Where a layer's transform tensors go: its K weights' device if that is not the CPU
// (a CPU's own buffer types may repack what they hold), else plain host memory.
static ggml_backend_buffer_type_t layer_buffer_type(const llama_model & model, int il) {
    const ggml_tensor * w = model.layers[il].wk;
    if (w != nullptr && w->buffer != nullptr) {
        ggml_backend_buffer_type_t buft = ggml_backend_buffer_get_type(w->buffer);
        ggml_backend_dev_t dev = ggml_backend_buft_get_device(buft);
        if (dev != nullptr && ggml_backend_dev_type(dev) != GGML_BACKEND_DEVICE_TYPE_CPU) {
            return buft;
        }
    }
    return ggml_backend_cpu_buffer_type();
}

// -- what a model allows ----------------------------------------------------------------

static bool is_bias(const ggml_tensor * t, int64_t n) {
    return pyturbo_tensor_readable(t) && ggml_n_dims(t) == 1 && t->ne[0] == n;
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

// Every layer RoPEs its whole head (the calibration's moments are per RoPE pair).
static bool full_rope(const llama_model & model) {
    const auto & hp = model.hparams;
    for (uint32_t il = 0; il < hp.n_layer(); ++il) {
        if (!hp.has_rope(il) || hp.n_rot(il) != hp.n_embd_head_k(il) || hp.n_embd_head_k(il) % 2 != 0) {
            return false;
        }
    }
    return true;
}

static int32_t supported_flags(const llama_model & model) {
    if (!model_allows_transforms(model)) {
        return 0;
    }
    const auto & hp = model.hparams;
    bool k_bias = true;
    bool v_bias = true;
    bool equalize = true;
    bool v_equalize = true;
    for (uint32_t il = 0; il < hp.n_layer(); ++il) {
        const auto & layer = model.layers[il];
        k_bias = k_bias && is_bias(layer.wk_b, hp.n_embd_k_gqa(il));
        v_bias = v_bias && is_bias(layer.wv_b, hp.n_embd_v_gqa(il));
        const bool qk_norm = pyturbo_tensor_readable(layer.attn_q_norm) && pyturbo_tensor_readable(layer.attn_k_norm);
        const bool norm_gain = is_bias(layer.attn_norm, hp.n_embd) && pyturbo_tensor_readable(layer.attn_norm);
        // the weight-derived scales read W_q, W_k, W_v and W_o (not if repacked for the CPU)
        equalize = equalize && (qk_norm || (norm_gain && pyturbo_tensor_readable(layer.wq) &&
                                            pyturbo_tensor_readable(layer.wk)));
        v_equalize = v_equalize && norm_gain && pyturbo_tensor_readable(layer.wv) && pyturbo_tensor_readable(layer.wo) &&
                     layer.wo->ne[0] == hp.n_embd_head_v(il) * hp.n_head(il);
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
    if (v_equalize) {
        flags |= PYTURBO_KVT_V_EQUALIZE;
    }
    if (full_rope(model) && !hp.attn_soft_cap) {  // calibration centers keys too
        flags |= PYTURBO_KVT_K_CALIBRATE;
    }
    return flags;
}

static int32_t auto_flags(const llama_model & model) {
    const int32_t supported = supported_flags(model);
    // What measured better on both models tried (Qwen2.5-Coder-0.5B, with k_proj biases, and
    // SmolLM2-135M, without): the calibrated key transform and V equalization. Where RoPE
    // rules calibration out, the weight-derived centering and equalization stand in for it,
    // but only where a k_proj bias puts a fixed offset into every key (they were measured
    // there; equalization alone made SmolLM2 2% worse). V centering is left out: a value
    // that attention sinks onto is small as it comes (the sink adds nothing to the output),
    // and minus c_v it is not, so its quantization error lands in every output that sinks.
    int32_t keys = 0;
    if (supported & PYTURBO_KVT_K_CALIBRATE) {
        keys = PYTURBO_KVT_K_CALIBRATE;
    } else if (supported & PYTURBO_KVT_K_CENTER) {
        keys = PYTURBO_KVT_K_CENTER | PYTURBO_KVT_K_EQUALIZE;
    }
    return supported & (keys | PYTURBO_KVT_V_EQUALIZE);
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

// Scales s[0..n) to a geometric mean of 1 (any common factor is exact; this one keeps
// the cached values their size).
static void to_unit_geometric_mean(float * s, int64_t n) {
    double log_sum = 0.0;
    for (int64_t d = 0; d < n; ++d) {
        log_sum += std::log((double) s[d]);
    }
    const double mean = std::exp(log_sum / n);
    for (int64_t d = 0; d < n; ++d) {
        s[d] = (float) (s[d] / mean);
    }
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
        for (int64_t d = 0; d < head; ++d) {
            const int64_t p = rope_partner(hp, il, d);
            const double pair_k = rk[d] + (p != d ? rk[p] : 0.0);
            const double pair_q = rq[d] + (p != d ? rq[p] : 0.0);
            s[h * head + d] = (float) (pair_k > 0.0 && pair_q > 0.0 ? std::pow(pair_k / pair_q, EQUALIZE_ALPHA / 2) : 1.0);
        }
        to_unit_geometric_mean(&s[h * head], head);
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

// Energy of each input channel of W_o (ggml [n_in, n_out]): sum_r W[r, j]^2.
static std::vector<double> input_channel_energy(const ggml_tensor * w) {
    const std::vector<float> values = tensor_values(w);
    const int64_t n_in = w->ne[0];
    std::vector<double> energy(n_in, 0.0);
    for (int64_t r = 0; r < w->ne[1]; ++r) {
        for (int64_t j = 0; j < n_in; ++j) {
            energy[j] += (double) values[r * n_in + j] * values[r * n_in + j];
        }
    }
    return energy;
}

// s_v of one layer, [head_v][n_head_kv]. A value's quantization error reaches the residual
// stream through W_o, so channel j costs e_j^2 s_j^2 |W_o col j|^2 while the rotated cache
// spreads an error proportional to sum_j r_v(j) / s_j^2 over all channels; the product is
// least at s_j = (r_v(j) / |W_o col j|^2)^(1/4). r_v: W_v's row energy with the attn-norm
// gain folded in, plus the v_proj bias squared (what V centering would remove).
static std::vector<float> value_scales(const llama_model & model, int il) {
    const auto & hp = model.hparams;
    const auto & layer = model.layers[il];
    const int64_t head = hp.n_embd_head_v(il);
    const int64_t n_head_kv = hp.n_head_kv(il);
    const int64_t group = hp.n_head(il) / n_head_kv;
    std::vector<double> r_v = channel_energy(layer.wv, tensor_values(layer.attn_norm));
    if (is_bias(layer.wv_b, hp.n_embd_v_gqa(il))) {
        const std::vector<float> bias = tensor_values(layer.wv_b);
        for (size_t j = 0; j < r_v.size(); ++j) {
            r_v[j] += (double) bias[j] * bias[j];
        }
    }
    const std::vector<double> w_o = input_channel_energy(layer.wo);
    std::vector<float> s(head * n_head_kv, 1.0f);
    for (int64_t h = 0; h < n_head_kv; ++h) {
        for (int64_t d = 0; d < head; ++d) {
            double out = 0.0;  // the query heads of this KV head all read channel d
            for (int64_t m = 0; m < group; ++m) {
                out += w_o[(h * group + m) * head + d];
            }
            const double r = r_v[h * head + d];
            s[h * head + d] = (float) (r > 0.0 && out > 0.0 ? std::pow(r / out, 0.25) : 1.0);
        }
        to_unit_geometric_mean(&s[h * head], head);
    }
    return s;
}

static std::vector<float> reciprocals(const std::vector<float> & x) {
    std::vector<float> out(x.size());
    for (size_t j = 0; j < x.size(); ++j) {
        out[j] = 1.0f / x[j];
    }
    return out;
}

// Largest power of two >= 64 dividing n, or 0.
static int64_t k_rotation_size(int64_t n) {
    if (n % 64 != 0) {
        return 0;
    }
    int64_t size = 64;
    while (n % (2 * size) == 0) {
        size *= 2;
    }
    return size;
}

// llama.cpp's orthonormal Walsh-Hadamard matrix of size n (Sylvester order; symmetric),
// applied block-diagonally to a head of `head` values: [head][head], row-major.
static std::vector<double> block_hadamard(int64_t n, int64_t head) {
    std::vector<double> h(n * n, 0.0);
    h[0] = 1.0 / std::sqrt((double) n);
    for (int64_t size = 1; size < n; size *= 2) {
        for (int64_t i = 0; i < size; ++i) {
            for (int64_t j = 0; j < size; ++j) {
                const double value = h[i * n + j];
                h[(i + size) * n + j] = value;
                h[i * n + j + size] = value;
                h[(i + size) * n + j + size] = -value;
            }
        }
    }
    std::vector<double> out(head * head, 0.0);
    for (int64_t b = 0; b < head; b += n) {
        for (int64_t i = 0; i < n; ++i) {
            for (int64_t j = 0; j < n; ++j) {
                out[(b + i) * head + b + j] = h[i * n + j];
            }
        }
    }
    return out;
}

// left * right for head x head matrices per KV head (right: [n_head_kv][head][head] as floats).
static std::vector<float> rotate_matrices(const std::vector<double> & left, const std::vector<float> & right,
                                          int64_t head) {
    std::vector<float> out(right.size());
    for (size_t base = 0; base < right.size(); base += head * head) {
        for (int64_t i = 0; i < head; ++i) {
            for (int64_t j = 0; j < head; ++j) {
                double sum = 0.0;
                for (int64_t l = 0; l < head; ++l) {
                    sum += left[i * head + l] * right[base + l * head + j];
                }
                out[base + i * head + j] = (float) sum;
            }
        }
    }
    return out;
}

// diag(scale) as [n_head_kv][head][head] floats (scale: [n_head_kv][head]).
static std::vector<float> diagonal_matrices(const std::vector<float> & scale, int64_t head) {
    std::vector<float> out(scale.size() * head, 0.0f);
    for (size_t h = 0; h < scale.size() / head; ++h) {
        for (int64_t d = 0; d < head; ++d) {
            out[(h * head + d) * head + d] = scale[h * head + d];
        }
    }
    return out;
}

static ggml_tensor * new_matrix(ggml_context * ctx, int64_t head, int64_t n_head_kv) {
    return ggml_new_tensor_2d(ctx, GGML_TYPE_F32, head, n_head_kv);
}

// Weight-derived K centering and equalization of one layer (the transform without calibration).
static void set_weight_key_transform(const llama_model & model, const llama_cparams & cparams, int il,
                                     const pyturbo_kvt_layer & L, int32_t flags) {
    std::vector<double> k_residual;
    const std::vector<float> center = (flags & PYTURBO_KVT_K_CENTER)
        ? key_center(model, cparams, il, k_residual) : std::vector<float>();
    const std::vector<float> s = (flags & PYTURBO_KVT_K_EQUALIZE)
        ? layer_scales(model, il, k_residual) : std::vector<float>(model.hparams.n_embd_k_gqa(il), 1.0f);
    if (L.k_inv_scale) {
        const std::vector<float> inv = reciprocals(s);
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
}

// Every layer's calibrated c, A and A^-1, the layers shared out over n_threads threads
// (a few 64x64 eigen-decompositions per KV head).
static void set_calibrated_key_transforms(const std::vector<pyturbo_kv_moments> & moments, uint32_t n_ctx,
                                          const std::vector<pyturbo_kvt_layer> & layers, int n_threads) {
    const auto work = [&](size_t first, size_t step) {
        for (size_t il = first; il < layers.size(); il += step) {
            std::vector<float> c, a, a_inv;
            const pyturbo_kvt_layer & L = layers[il];
            pyturbo_kv_key_basis(moments[il], n_ctx, c, a, a_inv);
            ggml_backend_tensor_set(L.k_offset, c.data(), 0, ggml_nbytes(L.k_offset));
            ggml_backend_tensor_set(L.k_matrix, a.data(), 0, ggml_nbytes(L.k_matrix));
            ggml_backend_tensor_set(L.q_matrix, a_inv.data(), 0, ggml_nbytes(L.q_matrix));
            if (L.k_rot_matrix) {
                const int64_t head = L.k_matrix->ne[0];
                const std::vector<double> h = block_hadamard(L.k_rot_size, head);
                const std::vector<float> ha = rotate_matrices(h, a, head);
                const std::vector<float> ha_inv = rotate_matrices(h, a_inv, head);
                ggml_backend_tensor_set(L.k_rot_matrix, ha.data(), 0, ggml_nbytes(L.k_rot_matrix));
                ggml_backend_tensor_set(L.q_rot_matrix, ha_inv.data(), 0, ggml_nbytes(L.q_rot_matrix));
            }
        }
    };
    const size_t n_workers = std::max<size_t>(1, std::min<size_t>(n_threads, layers.size()));
    std::vector<std::thread> workers;
    for (size_t w = 1; w < n_workers; ++w) {
        workers.emplace_back(work, w, n_workers);
    }
    work(0, n_workers);
    for (auto & worker : workers) {
        worker.join();
    }
}

static void set_value_transform(const llama_model & model, int il, const pyturbo_kvt_layer & L) {
    if (L.v_offset) {
        const std::vector<float> offset = tensor_values(model.layers[il].wv_b);
        ggml_backend_tensor_set(L.v_offset, offset.data(), 0, ggml_nbytes(L.v_offset));
    }
    if (L.v_scale) {
        const std::vector<float> s_v = value_scales(model, il);
        const std::vector<float> inv = reciprocals(s_v);
        ggml_backend_tensor_set(L.v_scale, s_v.data(), 0, ggml_nbytes(L.v_scale));
        ggml_backend_tensor_set(L.v_inv_scale, inv.data(), 0, ggml_nbytes(L.v_inv_scale));
        if (L.v_rot_in) {
            const int64_t head = L.v_scale->ne[0];
            const std::vector<double> h = block_hadamard(L.v_rot_size, head);
            const std::vector<float> in = rotate_matrices(h, diagonal_matrices(inv, head), head);
            std::vector<float> out(in.size());  // diag(s_v) H = (H diag(s_v))^T, H symmetric
            const std::vector<float> h_s = rotate_matrices(h, diagonal_matrices(s_v, head), head);
            for (size_t base = 0; base < out.size(); base += head * head) {
                for (int64_t i = 0; i < head; ++i) {
                    for (int64_t j = 0; j < head; ++j) {
                        out[base + i * head + j] = h_s[base + j * head + i];
                    }
                }
            }
            ggml_backend_tensor_set(L.v_rot_in, in.data(), 0, ggml_nbytes(L.v_rot_in));
            ggml_backend_tensor_set(L.v_rot_out, out.data(), 0, ggml_nbytes(L.v_rot_out));
        }
    }
}

// flags: what applies (a calibrated key transform replaces the weight-derived one).
static std::unique_ptr<pyturbo_kv_transform> build_transform(const llama_model & model, int32_t flags,
                                                             const llama_cparams & cparams,
                                                             const std::vector<pyturbo_kv_moments> & moments,
                                                             const pyturbo_kvt_rotation & rotation) {
    const auto & hp = model.hparams;
    auto t = std::make_unique<pyturbo_kv_transform>();
    t->flags = flags;
    const bool calibrated = flags & PYTURBO_KVT_K_CALIBRATE;
    const uint32_t n_layer = hp.n_layer();
    t->layers.resize(n_layer);
    for (uint32_t il = 0; il < n_layer; ++il) {
        auto & L = t->layers[il];
        ggml_context * ctx = t->context_for(layer_buffer_type(model, il), 12 * n_layer);
        const int64_t head = hp.n_embd_head_k(il);
        L.n_head = hp.n_head(il);
        L.n_head_kv = hp.n_head_kv(il);
        if (calibrated) {
            L.k_offset = new_matrix(ctx, head, L.n_head_kv);
            L.k_matrix = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, head, head, L.n_head_kv);
            L.q_matrix = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, head, head, L.n_head_kv);
            L.k_rot_size = rotation.k ? k_rotation_size(head) : 0;
            if (L.k_rot_size) {
                L.k_rot_matrix = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, head, head, L.n_head_kv);
                L.q_rot_matrix = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, head, head, L.n_head_kv);
            }
        }
        if (!calibrated && (flags & PYTURBO_KVT_K_EQUALIZE)) {
            L.k_inv_scale = new_matrix(ctx, head, L.n_head_kv);
            L.q_scale = new_matrix(ctx, head, L.n_head_kv);
        }
        if (!calibrated && (flags & PYTURBO_KVT_K_CENTER)) {
            L.k_offset = new_matrix(ctx, head, L.n_head_kv);
        }
        if (flags & PYTURBO_KVT_V_CENTER) {
            L.v_offset = new_matrix(ctx, hp.n_embd_head_v(il), L.n_head_kv);
        }
        if (flags & PYTURBO_KVT_V_EQUALIZE) {
            const int64_t head_v = hp.n_embd_head_v(il);
            L.v_inv_scale = new_matrix(ctx, head_v, L.n_head_kv);
            L.v_scale = new_matrix(ctx, head_v, L.n_head_kv);
            L.v_rot_size = rotation.v && head_v % V_ROTATION_SIZE == 0 ? V_ROTATION_SIZE : 0;
            if (L.v_rot_size) {
                L.v_rot_in = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, head_v, head_v, L.n_head_kv);
                L.v_rot_out = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, head_v, head_v, L.n_head_kv);
            }
        }
    }
    t->allocate();

    if (calibrated) {
        set_calibrated_key_transforms(moments, cparams.n_ctx, t->layers, cparams.n_threads);
    }
    for (uint32_t il = 0; il < n_layer; ++il) {
        if (!calibrated) {
            set_weight_key_transform(model, cparams, il, t->layers[il], flags);
        }
        set_value_transform(model, il, t->layers[il]);
    }
    return t;
}

// One transform per (model, flags, context size), shared by contexts alike, freed with the model;
// one calibration per model (empty where it failed), shared by its context sizes.
static std::mutex registry_mutex;
static std::map<std::tuple<const llama_model *, int32_t, uint32_t, pyturbo_kvt_rotation>,
                std::unique_ptr<pyturbo_kv_transform>> registry;
static std::map<const llama_model *, std::vector<pyturbo_kv_moments>> calibrations;

static const std::vector<pyturbo_kv_moments> & calibration_for(const llama_model & model, int n_threads) {
    auto it = calibrations.find(&model);
    if (it == calibrations.end()) {
        it = calibrations.emplace(&model, pyturbo_kv_calibrate(model, n_threads)).first;
    }
    return it->second;
}

static const pyturbo_kv_transform * transform_for(const llama_model & model, int32_t flags,
                                                  const llama_cparams & cparams, const pyturbo_kvt_rotation & rotation) {
    std::lock_guard<std::mutex> lock(registry_mutex);
    auto & slot = registry[{&model, flags, cparams.n_ctx, rotation}];
    if (!slot) {
        static const std::vector<pyturbo_kv_moments> none;
        const auto & moments = (flags & PYTURBO_KVT_K_CALIBRATE) ? calibration_for(model, cparams.n_threads) : none;
        // a calibrated key transform replaces the weight-derived centering and equalization;
        // where the pass gives none, those stand in for it on models with k_proj biases
        const int32_t supported = supported_flags(model);
        const int32_t weight_keys = (supported & PYTURBO_KVT_K_CENTER)
            ? supported & (PYTURBO_KVT_K_CENTER | PYTURBO_KVT_K_EQUALIZE) : 0;
        const int32_t applied = !(flags & PYTURBO_KVT_K_CALIBRATE) ? flags
            : !moments.empty() ? flags & ~(PYTURBO_KVT_K_CENTER | PYTURBO_KVT_K_EQUALIZE)
            : (flags & ~PYTURBO_KVT_K_CALIBRATE) | weight_keys;
        slot = build_transform(model, applied, cparams, moments, rotation);
    }
    return slot.get();
}

void pyturbo_kvt_release(const llama_model * model) {
    std::lock_guard<std::mutex> lock(registry_mutex);
    for (auto it = registry.begin(); it != registry.end();) {
        it = std::get<0>(it->first) == model ? registry.erase(it) : std::next(it);
    }
    calibrations.erase(model);
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

static const int32_t KEY_FLAGS = PYTURBO_KVT_K_CENTER | PYTURBO_KVT_K_EQUALIZE | PYTURBO_KVT_K_CALIBRATE;
static const int32_t VALUE_FLAGS = PYTURBO_KVT_V_CENTER | PYTURBO_KVT_V_EQUALIZE;

// What "auto" applies to a context with these cache types, as measured (KLD against the f16
// cache on SmolLM2-135M, no biases, and Qwen2.5-Coder-0.5B, k_proj biases):
// - only a side that rounds: an F16/BF16/F32 side keeps its exact numbers and its speed;
// - keys of 8 bits or more only where a k_proj bias puts a fixed outlier into every key
//   (q8_0/q8_0 on Qwen2.5 went 6x better; on SmolLM2 8-bit keys moved -4%..+3%, noise);
// - values only together with transformed keys: V equalization on its own moved SmolLM2 by
//   -4%..+2%, while with calibrated 4- and 3-bit keys it took another 6-7% off.
static int32_t auto_flags_for_cache(const llama_model & model, ggml_type type_k, ggml_type type_v) {
    int32_t flags = auto_flags(model);
    const double k_bits = 8.0 * ggml_type_size(type_k) / ggml_blck_size(type_k);
    const bool k_bias = supported_flags(model) & PYTURBO_KVT_K_CENTER;
    if (!ggml_is_quantized(type_k) || (k_bits >= 8.0 && !k_bias)) {
        flags &= ~KEY_FLAGS;
    }
    if (!ggml_is_quantized(type_v) || !(flags & KEY_FLAGS)) {
        flags &= ~VALUE_FLAGS;
    }
    return flags;
}

void pyturbo_kvt_setup_context(const llama_model & model, llama_cparams & cparams, ggml_type type_k, ggml_type type_v) {
    int32_t flags = request_pending ? request_flags : flags_from_env();
    request_pending = false;
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
    const pyturbo_kvt_rotation rotation = { ggml_is_quantized(type_k), ggml_is_quantized(type_v) };
    if (flags == PYTURBO_KVT_AUTO) {
        flags = auto_flags_for_cache(model, type_k, type_v);
    } else {
        flags &= supported_flags(model);
    }
    cparams.pyturbo_kvt = flags ? transform_for(model, flags, cparams, rotation) : nullptr;
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
