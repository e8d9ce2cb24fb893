// pyturbo: the K/V transforms that come from the weights alone (see turbo-kv-weights.h).

#include "turbo-kv-weights.h"

#include "llama-cparams.h"
#include "llama-hparams.h"
#include "llama-model.h"

#include "ggml-backend.h"
#include "ggml-backend-impl.h"

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstring>
#include <vector>

// Exponent of the K/Q equalization, s = (|k_j| / |q_j|)^alpha: the best of the values tried
// (docs/results/kv-transform-constants.md).
static const double EQUALIZE_ALPHA = 0.5;

bool pyturbo_tensor_readable(const ggml_tensor * t) {
    return t != nullptr && t->buffer != nullptr && t->buffer->iface.get_tensor != nullptr;
}

bool pyturbo_tensor_is_vector(const ggml_tensor * t, int64_t n) {
    return pyturbo_tensor_readable(t) && ggml_n_dims(t) == 1 && t->ne[0] == n;
}

std::vector<float> pyturbo_tensor_values(const ggml_tensor * t) {
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
    const std::vector<float> values = pyturbo_tensor_values(w);
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
std::vector<float> pyturbo_kv_key_center(const llama_model & model, const llama_cparams & cparams, int il,
                                         std::vector<double> & residual) {
    const auto & hp = model.hparams;
    std::vector<float> c = pyturbo_tensor_values(model.layers[il].wk_b);
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

std::vector<float> pyturbo_kv_key_scales(const llama_model & model, int il, const std::vector<double> & k_residual) {
    const auto & hp = model.hparams;
    const auto & layer = model.layers[il];
    if (layer.attn_q_norm != nullptr && layer.attn_k_norm != nullptr) {
        // Q/K norms: each channel's size is its norm gain (shared by every head).
        std::vector<double> k_energy, q_energy;
        for (float g : pyturbo_tensor_values(layer.attn_k_norm)) {
            k_energy.push_back((double) g * g);
        }
        for (float g : pyturbo_tensor_values(layer.attn_q_norm)) {
            q_energy.push_back((double) g * g);
        }
        return equalization_scales(hp, il, k_energy, q_energy, true);
    }
    // K's channel energy: its W_k x part plus what centering leaves of the bias
    const std::vector<float> gain = pyturbo_tensor_values(layer.attn_norm);
    std::vector<double> k_energy = channel_energy(layer.wk, gain);
    for (size_t j = 0; j < k_residual.size(); ++j) {
        k_energy[j] += k_residual[j];
    }
    return equalization_scales(hp, il, k_energy, channel_energy(layer.wq, gain), false);
}

// Energy of each input channel of W_o (ggml [n_in, n_out]): sum_r W[r, j]^2.
static std::vector<double> input_channel_energy(const ggml_tensor * w) {
    const std::vector<float> values = pyturbo_tensor_values(w);
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
std::vector<float> pyturbo_kv_value_scales(const llama_model & model, int il) {
    const auto & hp = model.hparams;
    const auto & layer = model.layers[il];
    const int64_t head = hp.n_embd_head_v(il);
    const int64_t n_head_kv = hp.n_head_kv(il);
    const int64_t group = hp.n_head(il) / n_head_kv;
    std::vector<double> r_v = channel_energy(layer.wv, pyturbo_tensor_values(layer.attn_norm));
    if (pyturbo_tensor_is_vector(layer.wv_b, hp.n_embd_v_gqa(il))) {
        const std::vector<float> bias = pyturbo_tensor_values(layer.wv_b);
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
