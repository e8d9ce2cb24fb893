// pyturbo: the calibration pass for the key transform (see turbo-kv-calibration.h).

#include "turbo-kv-calibration.h"
#include "turbo-kv-calibration-text.h"
#include "turbo-kv-request.h"
#include "turbo-kv-store.h"

#include "llama-impl.h"
#include "llama-model.h"

#include "ggml-backend.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

// Tokens of the calibration text a pass runs (fewer if the text or the model's context is
// shorter): a 64x64 key covariance needs several hundred samples.
static const int CALIBRATION_TOKENS = 512;
static const int CALIBRATION_MIN_TOKENS = 64;
static const int CALIBRATION_UBATCH = 512;

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
                pyturbo_kv_rope_pair(m, f, d0, d1);
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
        all.use_matrix = pyturbo_kv_matrix_pays(first, second, cap.middle);
    }
    return "";
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
    // the log between these lines is the calibration context's
    LLAMA_LOG_INFO("pyturbo_kv_calibrate: begin: %zu tokens\n", tokens.size());
    // no transform, an f16 cache: its keys and queries as the model makes them
    llama_context * ctx = pyturbo_kvt_init_context(const_cast<llama_model &>(model), params, 0, nullptr);
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
    std::vector<pyturbo_kv_moments> layers;
    if (pyturbo_kv_store_load(model, tokens, layers)) {
        return layers;
    }
    LLAMA_LOG_INFO("%s: one pass over %zu tokens of built-in text (once per model file)\n", __func__, tokens.size());
    layers = run_calibration(model, tokens, n_threads);
    if (!layers.empty()) {
        pyturbo_kv_store_save(model, tokens, layers);
    }
    return layers;
}
