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

void pyturbo_kv_key_basis(const pyturbo_kv_moments & m, uint32_t n_ctx, std::vector<float> & c,
                          std::vector<float> & a, std::vector<float> & a_inv) {
    const int64_t n = m.head;
    const double n_pos = std::max<uint32_t>(n_ctx, 1);
    c.assign(n * m.n_head_kv, 0.0f);
    a.assign(n * n * m.n_head_kv, 0.0f);
    a_inv.assign(n * n * m.n_head_kv, 0.0f);
    for (int64_t h = 0; h < m.n_head_kv; ++h) {
        // the keys' mean over the context's positions: each pair's mean turned on average
        std::vector<double> mean(n);
        for (int64_t f = 0; f < n / 2; ++f) {
            int64_t d0, d1;
            pair_channels(m, f, d0, d1);
            const std::complex<double> z = mean_turn(m.theta[f], n_pos) *
                std::complex<double>(m.k_mean[h * n + d0], m.k_mean[h * n + d1]);
            mean[d0] = z.real();
            mean[d1] = z.imag();
        }
        matrix sigma_k = average_over_positions(m, &m.k_second[h * n * n], n_pos);
        for (int64_t i = 0; i < n; ++i) {
            for (int64_t j = 0; j < n; ++j) {
                sigma_k[i * n + j] -= mean[i] * mean[j];
            }
        }
        const matrix second_q = average_over_positions(m, &m.q_second[h * n * n], n_pos);
        // A^2 = Sk^-1 # Sq = Sk^-1/2 (Sk^1/2 Sq Sk^1/2)^1/2 Sk^-1/2
        const spectrum keys(sigma_k, n);
        const matrix k_half = keys.apply([](double x) { return std::sqrt(x); });
        const matrix k_inv_half = keys.apply([](double x) { return 1.0 / std::sqrt(x); });
        const matrix inner = spectrum(multiply(multiply(k_half, second_q, n), k_half, n), n)
                                 .apply([](double x) { return std::sqrt(x); });
        const spectrum squared(multiply(multiply(k_inv_half, inner, n), k_inv_half, n), n);
        // A itself, scaled to determinant 1 (any scale is exact; this one keeps keys their size)
        double log_sum = 0.0;
        for (double x : squared.w) {
            log_sum += 0.5 * std::log(x);
        }
        const double scale = std::exp(log_sum / n);
        const matrix fwd = squared.apply([scale](double x) { return std::sqrt(x) / scale; });
        const matrix inv = squared.apply([scale](double x) { return scale / std::sqrt(x); });
        for (int64_t i = 0; i < n; ++i) {
            c[h * n + i] = (float) mean[i];
            for (int64_t j = 0; j < n; ++j) {
                a[(h * n + i) * n + j] = (float) fwd[i * n + j];
                a_inv[(h * n + i) * n + j] = (float) inv[i * n + j];
            }
        }
    }
}

// -- the pass --------------------------------------------------------------------------------

struct calibration_capture {
    std::vector<pyturbo_kv_moments> layers;
    std::vector<int64_t> n_keys, n_queries;  // vectors summed per layer (tokens x heads)
    std::string problem;                     // why the pass cannot give a transform
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
    if (il < 0 || (size_t) il >= cap.layers.size() || t->type != GGML_TYPE_F32 || !ggml_is_contiguous(t) ||
        t->src[1] == nullptr || t->src[1]->type != GGML_TYPE_I32) {
        cap.problem = "an unexpected Q/K tensor in layer " + std::to_string(il);
        return;
    }
    pyturbo_kv_moments & m = cap.layers[il];
    if (m.theta.empty() && !read_rope(t, m, cap.problem)) {
        return;
    }
    const int64_t n = m.head, n_heads = t->ne[1], n_tokens = t->ne[2];
    if (t->ne[0] != n || (kind == 'K' ? n_heads != m.n_head_kv : n_heads % m.n_head_kv != 0)) {
        cap.problem = "the RoPE-d Q or K of layer " + std::to_string(il) + " is not [head, heads, tokens]";
        return;
    }
    m.k_mean.resize(m.n_head_kv * n, 0.0);
    m.k_second.resize(m.n_head_kv * n * n, 0.0);
    m.q_second.resize(m.n_head_kv * n * n, 0.0);
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
            const int64_t kv = h / group;
            double * second = (kind == 'K' ? m.k_second.data() : m.q_second.data()) + kv * n * n;
            for (int64_t i = 0; i < n; ++i) {
                for (int64_t j = 0; j < n; ++j) {
                    second[i * n + j] += x[i] * x[j];
                }
                if (kind == 'K') {
                    m.k_mean[kv * n + i] += x[i];
                }
            }
        }
    }
    (kind == 'K' ? cap.n_keys : cap.n_queries)[il] += n_tokens * group;
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

// Normalizes the sums into moments; the problem, if a layer saw no keys or queries.
static std::string finish_moments(calibration_capture & cap) {
    for (size_t il = 0; il < cap.layers.size(); ++il) {
        auto & m = cap.layers[il];
        if (cap.n_keys[il] == 0 || cap.n_queries[il] == 0) {
            return "no RoPE-d keys and queries named Kcur/Qcur in layer " + std::to_string(il);
        }
        // per KV head: keys summed over tokens, queries over tokens x the group's heads
        const double keys = (double) cap.n_keys[il], queries = (double) cap.n_queries[il];
        for (double & x : m.k_mean) {
            x /= keys;
        }
        for (double & x : m.k_second) {
            x /= keys;
        }
        for (double & x : m.q_second) {
            x /= queries;
        }
    }
    return "";
}

// -- the cache on disk: one pass per model file, not per process ----------------------------

// Changes whenever the text, the pass or the file layout does.
static const char CACHE_FORMAT[32] = "pyturbo kv-calibration 1";

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
            !read_values(in, m.k_second, n_kv * n * n) || !read_values(in, m.q_second, n_kv * n * n)) {
            return false;
        }
    }
    return in.peek() == std::char_traits<char>::eof();
}

static std::vector<pyturbo_kv_moments> run_calibration(const llama_model & model,
                                                       const std::vector<llama_token> & tokens, int n_threads) {
    calibration_capture cap;
    cap.layers.resize(model.hparams.n_layer());
    for (size_t il = 0; il < cap.layers.size(); ++il) {
        cap.layers[il].n_head_kv = model.hparams.n_head_kv(il);
    }
    cap.n_keys.assign(cap.layers.size(), 0);
    cap.n_queries.assign(cap.layers.size(), 0);

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
    if (cap.problem.empty()) {
        cap.problem = finish_moments(cap);
    }
    if (!cap.problem.empty()) {
        LLAMA_LOG_WARN("%s: %s: weights only\n", __func__, cap.problem.c_str());
        return {};
    }
    return cap.layers;
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
