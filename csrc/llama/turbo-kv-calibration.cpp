// pyturbo: a calibration pass for the key transform (see turbo-kv-calibration.h).

#include "turbo-kv-calibration.h"
#include "turbo-kv-calibration-text.h"
#include "turbo-kv-transform.h"

#include "llama-impl.h"
#include "llama-model.h"

#include "ggml-backend.h"
#include "ggml-backend-impl.h"

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

// Tokens of the calibration text a pass runs (fewer if the text or the model's context is
// shorter). A 64x64 key covariance needs several hundred samples: on Qwen2.5-0.5B the
// matrix transform from 256 tokens rounded 1.5x worse than from 512.
static const int CALIBRATION_TOKENS = 512;
static const int CALIBRATION_MIN_TOKENS = 64;
static const int CALIBRATION_UBATCH = 512;

bool pyturbo_tensor_readable(const ggml_tensor * t) {
    return t != nullptr && t->buffer != nullptr && t->buffer->iface.get_tensor != nullptr;
}

// -- symmetric matrices (row-major, n x n, double) ------------------------------------------

using matrix = std::vector<double>;

static matrix multiply(const matrix & a, const matrix & b, int64_t n) {
    matrix c(n * n, 0.0);
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t k = 0; k < n; ++k) {
            const double aik = a[i * n + k];
            for (int64_t j = 0; j < n; ++j) {
                c[i * n + j] += aik * b[k * n + j];
            }
        }
    }
    return c;
}

// a = v diag(w) v^T by cyclic Jacobi rotations; v's columns are the eigenvectors.
static void symmetric_eigen(matrix a, int64_t n, std::vector<double> & w, matrix & v) {
    v.assign(n * n, 0.0);
    for (int64_t i = 0; i < n; ++i) {
        v[i * n + i] = 1.0;
    }
    for (int sweep = 0; sweep < 64; ++sweep) {
        double off = 0.0, diag = 0.0;
        for (int64_t i = 0; i < n; ++i) {
            for (int64_t j = 0; j < n; ++j) {
                (i == j ? diag : off) += a[i * n + j] * a[i * n + j];
            }
        }
        if (off <= 1e-26 * (off + diag)) {
            break;
        }
        for (int64_t p = 0; p < n - 1; ++p) {
            for (int64_t q = p + 1; q < n; ++q) {
                const double apq = a[p * n + q];
                if (apq == 0.0) {
                    continue;
                }
                // the rotation of columns/rows p and q that zeroes a[p][q]
                const double tau = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                const double t = (tau >= 0.0 ? 1.0 : -1.0) / (std::abs(tau) + std::sqrt(1.0 + tau * tau));
                const double cs = 1.0 / std::sqrt(1.0 + t * t);
                const double sn = t * cs;
                for (int64_t k = 0; k < n; ++k) {
                    const double akp = a[k * n + p], akq = a[k * n + q];
                    a[k * n + p] = cs * akp - sn * akq;
                    a[k * n + q] = sn * akp + cs * akq;
                }
                for (int64_t k = 0; k < n; ++k) {
                    const double apk = a[p * n + k], aqk = a[q * n + k];
                    a[p * n + k] = cs * apk - sn * aqk;
                    a[q * n + k] = sn * apk + cs * aqk;
                }
                for (int64_t k = 0; k < n; ++k) {
                    const double vkp = v[k * n + p], vkq = v[k * n + q];
                    v[k * n + p] = cs * vkp - sn * vkq;
                    v[k * n + q] = sn * vkp + cs * vkq;
                }
            }
        }
    }
    w.resize(n);
    for (int64_t i = 0; i < n; ++i) {
        w[i] = a[i * n + i];
    }
}

// The eigen-decomposition of a symmetric positive semi-definite matrix, with eigenvalues
// below 1e-9 of the largest raised to that (a direction the keys never take gets a finite,
// large weight).
struct spectrum {
    std::vector<double> w;
    matrix v;
    int64_t n;

    spectrum(const matrix & a, int64_t n) : n(n) {
        symmetric_eigen(a, n, w, v);
        const double top = *std::max_element(w.begin(), w.end());
        for (double & x : w) {
            x = std::max(x, top > 0.0 ? 1e-9 * top : 1.0);
        }
    }

    // v diag(f(w)) v^T
    matrix apply(const std::function<double(double)> & f) const {
        matrix out(n * n, 0.0);
        for (int64_t e = 0; e < n; ++e) {
            const double fe = f(w[e]);
            for (int64_t i = 0; i < n; ++i) {
                for (int64_t j = 0; j < n; ++j) {
                    out[i * n + j] += v[i * n + e] * fe * v[j * n + e];
                }
            }
        }
        return out;
    }
};

// -- RoPE: the pairs, and moments averaged over positions -------------------------------------

static void pair_channels(const pyturbo_kv_moments & m, int64_t f, int64_t & d0, int64_t & d1) {
    d0 = m.neox ? f : 2 * f;
    d1 = m.neox ? f + m.head / 2 : 2 * f + 1;
}

// mean of e^{i p omega} over positions p < n_pos
static std::complex<double> mean_turn(double omega, double n_pos) {
    const std::complex<double> turn = std::polar(1.0, omega);
    if (std::abs(1.0 - turn) * n_pos < 1e-9) {
        return std::pow(turn, (n_pos - 1) / 2);  // every turn is about the same
    }
    return (1.0 - std::pow(turn, n_pos)) / (n_pos * (1.0 - turn));
}

// E_p[R_p S R_p^T] for a pre-RoPE second moment S. Per pair of RoPE pairs (f, g), with
// z_f = x_d0 + i x_d1: E[z_f conj(z_g)] turns by the mean of e^{i p (theta_f - theta_g)}
// and E[z_f z_g] by that of e^{i p (theta_f + theta_g)}; the 2x2 block follows from both.
static matrix average_over_positions(const pyturbo_kv_moments & m, const double * s, double n_pos) {
    const int64_t n = m.head;
    matrix out(n * n);
    for (int64_t f = 0; f < n / 2; ++f) {
        for (int64_t g = 0; g < n / 2; ++g) {
            int64_t a, b, c, d;
            pair_channels(m, f, a, b);
            pair_channels(m, g, c, d);
            const std::complex<double> cross(s[a * n + c] + s[b * n + d], s[b * n + c] - s[a * n + d]);
            const std::complex<double> pseudo(s[a * n + c] - s[b * n + d], s[b * n + c] + s[a * n + d]);
            const std::complex<double> c2 = mean_turn(m.theta[f] - m.theta[g], n_pos) * cross;
            const std::complex<double> p2 = mean_turn(m.theta[f] + m.theta[g], n_pos) * pseudo;
            out[a * n + c] = (c2.real() + p2.real()) / 2;
            out[b * n + d] = (c2.real() - p2.real()) / 2;
            out[b * n + c] = (c2.imag() + p2.imag()) / 2;
            out[a * n + d] = (p2.imag() - c2.imag()) / 2;
        }
    }
    return out;
}

// One KV head's keys and queries as a context of n_pos positions sees them: the keys' mean
// (each RoPE pair's mean turned on average), their covariance and the queries' second moment.
struct head_view {
    std::vector<double> mean;
    matrix sigma_k;
    matrix second_q;
};

static head_view view_at_positions(const pyturbo_kv_moments & m, int64_t h, double n_pos) {
    const int64_t n = m.head;
    head_view view;
    view.mean.resize(n);
    for (int64_t f = 0; f < n / 2; ++f) {
        int64_t d0, d1;
        pair_channels(m, f, d0, d1);
        const std::complex<double> z = mean_turn(m.theta[f], n_pos) *
            std::complex<double>(m.k_mean[h * n + d0], m.k_mean[h * n + d1]);
        view.mean[d0] = z.real();
        view.mean[d1] = z.imag();
    }
    view.sigma_k = average_over_positions(m, &m.k_second[h * n * n], n_pos);
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < n; ++j) {
            view.sigma_k[i * n + j] -= view.mean[i] * view.mean[j];
        }
    }
    view.second_q = average_over_positions(m, &m.q_second[h * n * n], n_pos);
    return view;
}

// A^2 = Sk^-1 # Sq = Sk^-1/2 (Sk^1/2 Sq Sk^1/2)^1/2 Sk^-1/2, as its spectrum.
static spectrum squared_key_matrix(const head_view & view, int64_t n) {
    const spectrum keys(view.sigma_k, n);
    const matrix k_half = keys.apply([](double x) { return std::sqrt(x); });
    const matrix k_inv_half = keys.apply([](double x) { return 1.0 / std::sqrt(x); });
    const matrix inner = spectrum(multiply(multiply(k_half, view.second_q, n), k_half, n), n)
                             .apply([](double x) { return std::sqrt(x); });
    return spectrum(multiply(multiply(k_inv_half, inner, n), k_inv_half, n), n);
}

static double trace_of_product(const matrix & a, const matrix & b, int64_t n) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < n; ++j) {
            sum += a[i * n + j] * b[j * n + i];
        }
    }
    return sum;
}

// What rounding A (k - c) costs in q.k, up to a constant: the rotation spreads an error
// proportional to |A (k - c)|^2 evenly over the channels, and q reads it through A^-1:
// tr(A^-2 Sq) tr(A^2 Sk). With A = I: tr(Sq) tr(Sk).
static double rounding_cost(const spectrum * squared, const head_view & view, int64_t n) {
    if (squared == nullptr) {
        double tq = 0.0, tk = 0.0;
        for (int64_t i = 0; i < n; ++i) {
            tq += view.second_q[i * n + i];
            tk += view.sigma_k[i * n + i];
        }
        return tq * tk;
    }
    return trace_of_product(squared->apply([](double x) { return 1.0 / x; }), view.second_q, n) *
           trace_of_product(squared->apply([](double x) { return x; }), view.sigma_k, n);
}

void pyturbo_kv_key_basis(const pyturbo_kv_moments & m, uint32_t n_ctx, std::vector<float> & c,
                          std::vector<float> & a, std::vector<float> & a_inv) {
    const int64_t n = m.head;
    const double n_pos = std::max<uint32_t>(n_ctx, 1);
    c.assign(n * m.n_head_kv, 0.0f);
    a.assign(n * n * m.n_head_kv, 0.0f);
    a_inv.assign(n * n * m.n_head_kv, 0.0f);
    for (int64_t h = 0; h < m.n_head_kv; ++h) {
        const head_view view = view_at_positions(m, h, n_pos);
        for (int64_t i = 0; i < n; ++i) {
            c[h * n + i] = (float) view.mean[i];
        }
        if (!m.use_matrix[h]) {  // the calibration could not show A beats the identity here
            for (int64_t i = 0; i < n; ++i) {
                a[(h * n + i) * n + i] = a_inv[(h * n + i) * n + i] = 1.0f;
            }
            continue;
        }
        // A itself, scaled to determinant 1 (any scale is exact; this one keeps keys their size)
        const spectrum squared = squared_key_matrix(view, n);
        double log_sum = 0.0;
        for (double x : squared.w) {
            log_sum += 0.5 * std::log(x);
        }
        const double scale = std::exp(log_sum / n);
        const matrix fwd = squared.apply([scale](double x) { return std::sqrt(x) / scale; });
        const matrix inv = squared.apply([scale](double x) { return scale / std::sqrt(x); });
        for (int64_t i = 0; i < n; ++i) {
            for (int64_t j = 0; j < n; ++j) {
                a[(h * n + i) * n + j] = (float) fwd[i * n + j];
                a_inv[(h * n + i) * n + j] = (float) inv[i * n + j];
            }
        }
    }
}

// -- the pass --------------------------------------------------------------------------------

// The sums of each half of the text (tokens before and after the middle), kept apart so
// that a matrix fitted to one half can be tried on the other.
struct calibration_capture {
    std::vector<pyturbo_kv_moments> halves[2];
    std::vector<int64_t> n_keys[2], n_queries[2];  // vectors summed per layer (tokens x group heads)
    int32_t middle = 0;                            // first position of the second half
    std::string problem;                           // why the pass cannot give a transform
};

// "Kcur-12" -> ('K', 12); the names llama.cpp's graphs give RoPE-d queries and keys
static bool rope_output_of(const ggml_tensor * t, char & kind, int & il) {
    if (t->op != GGML_OP_ROPE || (t->name[0] != 'K' && t->name[0] != 'Q') || strncmp(t->name + 1, "cur-", 4) != 0) {
        return false;
    }
    char * end = nullptr;
    il = (int) strtol(t->name + 5, &end, 10);
    kind = t->name[0];
    return end != t->name + 5 && *end == '\0';
}

template <typename T> static std::vector<T> tensor_copy(const ggml_tensor * t, size_t n) {
    std::vector<T> out(n);
    ggml_backend_tensor_get(t, out.data(), 0, n * sizeof(T));
    return out;
}

// The RoPE of this node as pyturbo's layer moments record it; false if it is not plain RoPE.
static bool read_rope(const ggml_tensor * t, pyturbo_kv_moments & m, std::string & problem) {
    const int32_t * params = t->op_params;
    float base, scale, ext_factor, attn_factor;
    memcpy(&base, params + 5, sizeof(float));
    memcpy(&scale, params + 6, sizeof(float));
    memcpy(&ext_factor, params + 7, sizeof(float));
    memcpy(&attn_factor, params + 8, sizeof(float));
    const int n_dims = params[1], mode = params[2];
    if (n_dims != t->ne[0] || (mode != GGML_ROPE_TYPE_NEOX && mode != 0) || ext_factor != 0.0f ||
        attn_factor != 1.0f) {
        problem = "RoPE is partial, YaRN-scaled or not a plain/NeoX rotation";
        return false;
    }
    m.head = t->ne[0];
    m.neox = mode == GGML_ROPE_TYPE_NEOX;
    std::vector<float> factors(m.head / 2, 1.0f);
    if (t->src[2] != nullptr) {
        factors = tensor_copy<float>(t->src[2], m.head / 2);
    }
    m.theta.resize(m.head / 2);
    for (int64_t f = 0; f < m.head / 2; ++f) {
        m.theta[f] = scale * std::pow((double) base, -2.0 * f / n_dims) / factors[f];
    }
    return true;
}

// Adds one RoPE-d Q or K tensor [head, n_heads, n_tokens] of a layer, rotated back to position 0.
static void add_rope_output(calibration_capture & cap, const ggml_tensor * t, char kind, int il) {
    if (il < 0 || (size_t) il >= cap.halves[0].size() || t->type != GGML_TYPE_F32 || !ggml_is_contiguous(t) ||
        t->src[1] == nullptr || t->src[1]->type != GGML_TYPE_I32) {
        cap.problem = "an unexpected Q/K tensor in layer " + std::to_string(il);
        return;
    }
    if (cap.halves[0][il].theta.empty()) {
        if (!read_rope(t, cap.halves[0][il], cap.problem)) {
            return;
        }
        const auto & first = cap.halves[0][il];
        cap.halves[1][il].head = first.head;
        cap.halves[1][il].neox = first.neox;
        cap.halves[1][il].theta = first.theta;
    }
    const pyturbo_kv_moments & m = cap.halves[0][il];
    const int64_t n = m.head, n_heads = t->ne[1], n_tokens = t->ne[2];
    if (t->ne[0] != n || (kind == 'K' ? n_heads != m.n_head_kv : n_heads % m.n_head_kv != 0)) {
        cap.problem = "the RoPE-d Q or K of layer " + std::to_string(il) + " is not [head, heads, tokens]";
        return;
    }
    for (auto & half : cap.halves) {
        half[il].k_mean.resize(m.n_head_kv * n, 0.0);
        half[il].k_second.resize(m.n_head_kv * n * n, 0.0);
        half[il].q_second.resize(m.n_head_kv * n * n, 0.0);
    }
    const std::vector<float> values = tensor_copy<float>(t, ggml_nelements(t));
    const std::vector<int32_t> positions = tensor_copy<int32_t>(t->src[1], n_tokens);
    const int64_t group = n_heads / m.n_head_kv;
    std::vector<double> x(n);
    for (int64_t tok = 0; tok < n_tokens; ++tok) {
        for (int64_t h = 0; h < n_heads; ++h) {
            const float * row = values.data() + (tok * n_heads + h) * n;
            for (int64_t f = 0; f < n / 2; ++f) {  // undo the turn of position p
                int64_t d0, d1;
                pair_channels(m, f, d0, d1);
                const double angle = positions[tok] * m.theta[f];
                const double cs = std::cos(angle), sn = std::sin(angle);
                x[d0] = cs * row[d0] + sn * row[d1];
                x[d1] = cs * row[d1] - sn * row[d0];
            }
            const int half = positions[tok] < cap.middle ? 0 : 1;
            pyturbo_kv_moments & sums = cap.halves[half][il];
            const int64_t kv = h / group;
            double * second = (kind == 'K' ? sums.k_second.data() : sums.q_second.data()) + kv * n * n;
            for (int64_t i = 0; i < n; ++i) {
                for (int64_t j = 0; j < n; ++j) {
                    second[i * n + j] += x[i] * x[j];
                }
                if (kind == 'K') {
                    sums.k_mean[kv * n + i] += x[i];
                }
            }
            if (h == 0) {  // each KV head's sums: over tokens (keys), tokens x group heads (queries)
                (kind == 'K' ? cap.n_keys : cap.n_queries)[half][il] += group;
            }
        }
    }
}

static bool observe(ggml_tensor * t, bool ask, void * user_data) {
    auto * cap = (calibration_capture *) user_data;
    char kind;
    int il;
    if (!rope_output_of(t, kind, il)) {
        return !ask;  // not asked for; and go on computing
    }
    if (!ask && cap->problem.empty()) {
        add_rope_output(*cap, t, kind, il);
    }
    return true;
}

static std::vector<llama_token> calibration_tokens(const llama_model & model) {
    const llama_vocab * vocab = llama_model_get_vocab(&model);
    const int32_t n_text = (int32_t) strlen(PYTURBO_CALIBRATION_TEXT);
    const int32_t n = -llama_tokenize(vocab, PYTURBO_CALIBRATION_TEXT, n_text, nullptr, 0, true, false);
    std::vector<llama_token> tokens(std::max(n, 0));
    if (n <= 0 || llama_tokenize(vocab, PYTURBO_CALIBRATION_TEXT, n_text, tokens.data(), n, true, false) != n) {
        return {};
    }
    const size_t limit = std::min<size_t>(CALIBRATION_TOKENS, std::max<uint32_t>(model.hparams.n_ctx_train, 1));
    tokens.resize(std::min(tokens.size(), limit));
    return tokens;
}

// Divides a layer's sums by their counts (keys: tokens; queries: tokens x the group's heads).
static void normalize(pyturbo_kv_moments & m, int64_t n_keys, int64_t n_queries) {
    for (double & x : m.k_mean) {
        x /= (double) n_keys;
    }
    for (double & x : m.k_second) {
        x /= (double) n_keys;
    }
    for (double & x : m.q_second) {
        x /= (double) n_queries;
    }
}

// Per KV head, whether the matrix A fitted to one half of the text rounds the other half's
// keys better than the identity, both ways round: with few samples for many channels
// (isotropic keys, a small model's text) the fit can be noise, and then A = I.
static std::vector<uint8_t> matrix_pays(const pyturbo_kv_moments & first, const pyturbo_kv_moments & second,
                                        double n_pos) {
    // the fit must cut the held-out cost this much: below it, a gain is within the noise
    static const double REQUIRED_GAIN = 0.9;
    const int64_t n = first.head;
    std::vector<uint8_t> pays(first.n_head_kv);
    for (int64_t h = 0; h < first.n_head_kv; ++h) {
        const head_view a = view_at_positions(first, h, n_pos), b = view_at_positions(second, h, n_pos);
        const spectrum fit_a = squared_key_matrix(a, n), fit_b = squared_key_matrix(b, n);
        const double ratio = 0.5 * (rounding_cost(&fit_a, b, n) / rounding_cost(nullptr, b, n) +
                                    rounding_cost(&fit_b, a, n) / rounding_cost(nullptr, a, n));
        pays[h] = ratio < REQUIRED_GAIN;
    }
    return pays;
}

// The moments of the whole text, each head's matrix tried on held-out halves; the problem,
// if a layer saw no keys or queries.
static std::string finish_moments(calibration_capture & cap, std::vector<pyturbo_kv_moments> & layers) {
    layers.assign(cap.halves[0].size(), {});
    for (size_t il = 0; il < layers.size(); ++il) {
        auto & first = cap.halves[0][il];
        auto & second = cap.halves[1][il];
        if (cap.n_keys[0][il] == 0 || cap.n_keys[1][il] == 0 || cap.n_queries[0][il] == 0 ||
            cap.n_queries[1][il] == 0) {
            return "no RoPE-d keys and queries named Kcur/Qcur in layer " + std::to_string(il);
        }
        pyturbo_kv_moments & all = layers[il];
        all = first;
        for (size_t i = 0; i < all.k_mean.size(); ++i) {
            all.k_mean[i] += second.k_mean[i];
        }
        for (size_t i = 0; i < all.k_second.size(); ++i) {
            all.k_second[i] += second.k_second[i];
            all.q_second[i] += second.q_second[i];
        }
        normalize(all, cap.n_keys[0][il] + cap.n_keys[1][il], cap.n_queries[0][il] + cap.n_queries[1][il]);
        normalize(first, cap.n_keys[0][il], cap.n_queries[0][il]);
        normalize(second, cap.n_keys[1][il], cap.n_queries[1][il]);
        all.use_matrix = matrix_pays(first, second, cap.middle);
    }
    return "";
}

// -- the cache on disk: one pass per model file, not per process ----------------------------

// Changes whenever the text, the pass or the file layout does.
static const char CACHE_FORMAT[32] = "pyturbo kv-calibration 2";

static uint64_t fnv1a(uint64_t hash, const void * data, size_t n) {
    const auto * bytes = (const uint8_t *) data;
    for (size_t i = 0; i < n; ++i) {
        hash = (hash ^ bytes[i]) * 1099511628211ull;
    }
    return hash;
}

static uint64_t hash_tensor_head(uint64_t hash, const ggml_tensor * t, size_t limit) {
    if (t == nullptr) {
        return fnv1a(hash, "-", 1);
    }
    hash = fnv1a(hash, t->ne, sizeof(t->ne));
    hash = fnv1a(hash, &t->type, sizeof(t->type));
    if (!pyturbo_tensor_readable(t)) {
        return hash;  // repacked: the norms and biases (never repacked) speak for its layer
    }
    std::vector<uint8_t> bytes(std::min(ggml_nbytes(t), limit));
    ggml_backend_tensor_get(t, bytes.data(), 0, bytes.size());
    return fnv1a(hash, bytes.data(), bytes.size());
}

// What the moments depend on: the tokens, and the weights (sampled: the start of the
// embeddings and of each layer's norms, biases, attention and FFN tensors tells one model
// file from another).
static uint64_t fingerprint(const llama_model & model, const std::vector<llama_token> & tokens) {
    uint64_t hash = fnv1a(1469598103934665603ull, CACHE_FORMAT, sizeof(CACHE_FORMAT));
    hash = fnv1a(hash, tokens.data(), tokens.size() * sizeof(llama_token));
    hash = hash_tensor_head(hash, model.tok_embd, 1 << 16);
    for (const auto & layer : model.layers) {
        for (const ggml_tensor * t : std::initializer_list<const ggml_tensor *>{
                 layer.attn_norm, layer.ffn_norm, layer.wq, layer.wk, layer.wq_b, layer.wk_b, layer.attn_q_norm,
                 layer.attn_k_norm, layer.ffn_down }) {
            hash = hash_tensor_head(hash, t, 1 << 14);
        }
    }
    return hash;
}

// $PYTURBO_CACHE, else the platform's user cache dir, as pyturbo.assets.cache_dir(); empty if none.
static std::filesystem::path cache_dir() {
    const auto env = [](const char * name) -> std::string {
        const char * value = getenv(name);
        return value ? value : "";
    };
    std::filesystem::path root;
    if (!env("PYTURBO_CACHE").empty()) {
        return std::filesystem::path(env("PYTURBO_CACHE")) / "kv-calibration";
    }
#if defined(__APPLE__)
    root = env("HOME").empty() ? "" : std::filesystem::path(env("HOME")) / "Library" / "Caches" / "pyturbo";
#elif defined(_WIN32)
    root = env("LOCALAPPDATA").empty() ? "" : std::filesystem::path(env("LOCALAPPDATA")) / "pyturbo" / "Cache";
#else
    root = !env("XDG_CACHE_HOME").empty() ? std::filesystem::path(env("XDG_CACHE_HOME")) / "pyturbo"
         : env("HOME").empty() ? "" : std::filesystem::path(env("HOME")) / ".cache" / "pyturbo";
#endif
    return root.empty() ? root : root / "kv-calibration";
}

template <typename T> static void write_values(std::ofstream & out, const std::vector<T> & values) {
    out.write((const char *) values.data(), values.size() * sizeof(T));
}

template <typename T> static bool read_values(std::ifstream & in, std::vector<T> & values, size_t n) {
    values.resize(n);
    return (bool) in.read((char *) values.data(), n * sizeof(T));
}

static void save_moments(const std::filesystem::path & path, const std::vector<pyturbo_kv_moments> & layers) {
    std::error_code error;
    std::filesystem::create_directories(path.parent_path(), error);
    const std::filesystem::path partial = path.string() + ".partial";
    {
        std::ofstream out(partial, std::ios::binary);
        out.write(CACHE_FORMAT, sizeof(CACHE_FORMAT));
        const uint64_t n_layer = layers.size();
        out.write((const char *) &n_layer, sizeof(n_layer));
        for (const auto & m : layers) {
            const int64_t shape[3] = { m.head, m.n_head_kv, m.neox ? 1 : 0 };
            out.write((const char *) shape, sizeof(shape));
            write_values(out, m.theta);
            write_values(out, m.k_mean);
            write_values(out, m.k_second);
            write_values(out, m.q_second);
            write_values(out, m.use_matrix);
        }
        if (!out) {
            std::filesystem::remove(partial, error);
            return;
        }
    }
    std::filesystem::rename(partial, path, error);  // whole or not at all, for processes racing
}

// The moments cached for this model, if the file is there and fits it.
static bool load_moments(const std::filesystem::path & path, const llama_model & model,
                         std::vector<pyturbo_kv_moments> & layers) {
    std::ifstream in(path, std::ios::binary);
    char format[sizeof(CACHE_FORMAT)];
    uint64_t n_layer = 0;
    if (!in.read(format, sizeof(format)) || memcmp(format, CACHE_FORMAT, sizeof(format)) != 0 ||
        !in.read((char *) &n_layer, sizeof(n_layer)) || n_layer != model.hparams.n_layer()) {
        return false;
    }
    layers.assign(n_layer, {});
    for (uint64_t il = 0; il < n_layer; ++il) {
        auto & m = layers[il];
        int64_t shape[3];
        if (!in.read((char *) shape, sizeof(shape)) || shape[0] != model.hparams.n_embd_head_k(il) ||
            shape[1] != model.hparams.n_head_kv(il)) {
            return false;
        }
        m.head = shape[0];
        m.n_head_kv = shape[1];
        m.neox = shape[2] != 0;
        const size_t n = m.head, n_kv = m.n_head_kv;
        if (!read_values(in, m.theta, n / 2) || !read_values(in, m.k_mean, n_kv * n) ||
            !read_values(in, m.k_second, n_kv * n * n) || !read_values(in, m.q_second, n_kv * n * n) ||
            !read_values(in, m.use_matrix, n_kv)) {
            return false;
        }
    }
    return in.peek() == std::char_traits<char>::eof();
}

static std::vector<pyturbo_kv_moments> run_calibration(const llama_model & model,
                                                       const std::vector<llama_token> & tokens, int n_threads) {
    calibration_capture cap;
    cap.middle = (int32_t) tokens.size() / 2;
    for (int half = 0; half < 2; ++half) {
        cap.halves[half].resize(model.hparams.n_layer());
        for (size_t il = 0; il < cap.halves[half].size(); ++il) {
            cap.halves[half][il].n_head_kv = model.hparams.n_head_kv(il);
        }
        cap.n_keys[half].assign(cap.halves[half].size(), 0);
        cap.n_queries[half].assign(cap.halves[half].size(), 0);
    }

    llama_context_params params = llama_context_default_params();
    params.n_ctx = (uint32_t) tokens.size();
    params.n_batch = (uint32_t) tokens.size();
    params.n_ubatch = std::min<uint32_t>(CALIBRATION_UBATCH, (uint32_t) tokens.size());
    params.n_seq_max = 1;
    params.n_threads = params.n_threads_batch = std::max(n_threads, 1);
    params.cb_eval = observe;
    params.cb_eval_user_data = &cap;
    params.no_perf = true;
    // the log between these lines is the calibration context's (pyturbo's log reader skips it)
    LLAMA_LOG_INFO("pyturbo_kv_calibrate: begin: %zu tokens\n", tokens.size());
    pyturbo_kv_transform_request(0);  // its keys as the model makes them
    llama_context * ctx = llama_init_from_model(const_cast<llama_model *>(&model), params);
    int rc = -1;
    if (ctx != nullptr) {
        rc = llama_decode(ctx, llama_batch_get_one(const_cast<llama_token *>(tokens.data()), (int32_t) tokens.size()));
        llama_free(ctx);
    }
    LLAMA_LOG_INFO("pyturbo_kv_calibrate: end\n");
    if (rc != 0) {
        cap.problem = "the calibration pass failed (llama_decode " + std::to_string(rc) + ")";
    }
    std::vector<pyturbo_kv_moments> layers;
    if (cap.problem.empty()) {
        cap.problem = finish_moments(cap, layers);
    }
    if (!cap.problem.empty()) {
        LLAMA_LOG_WARN("%s: %s: weights only\n", __func__, cap.problem.c_str());
        return {};
    }
    size_t n_heads = 0, n_fitted = 0;
    for (const auto & m : layers) {
        n_heads += m.use_matrix.size();
        n_fitted += std::count(m.use_matrix.begin(), m.use_matrix.end(), 1);
    }
    LLAMA_LOG_INFO("%s: %zu of %zu KV heads round better with the fitted matrix on held-out text (the rest: "
                   "centering only)\n", __func__, n_fitted, n_heads);
    return layers;
}

std::vector<pyturbo_kv_moments> pyturbo_kv_calibrate(const llama_model & model, int n_threads) {
    const std::vector<llama_token> tokens = calibration_tokens(model);
    if ((int) tokens.size() < CALIBRATION_MIN_TOKENS) {
        LLAMA_LOG_WARN("%s: the calibration text is %zu tokens for this model (< %d): weights only\n", __func__,
                       tokens.size(), CALIBRATION_MIN_TOKENS);
        return {};
    }
    const std::filesystem::path dir = cache_dir();
    char name[32];
    snprintf(name, sizeof(name), "%016llx.bin", (unsigned long long) fingerprint(model, tokens));
    std::vector<pyturbo_kv_moments> layers;
    if (!dir.empty() && load_moments(dir / name, model, layers)) {
        LLAMA_LOG_INFO("%s: moments from %s\n", __func__, (dir / name).string().c_str());
        return layers;
    }
    LLAMA_LOG_INFO("%s: one pass over %zu tokens of built-in text (once per model file)\n", __func__, tokens.size());
    layers = run_calibration(model, tokens, n_threads);
    if (!layers.empty() && !dir.empty()) {
        save_moments(dir / name, layers);
    }
    return layers;
}
