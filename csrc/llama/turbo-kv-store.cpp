// pyturbo: calibration moments kept on disk (see turbo-kv-store.h).

#include "turbo-kv-store.h"
#include "turbo-kv-weights.h"

#include "llama-impl.h"
#include "llama-model.h"

#include "ggml-backend.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>

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

// The file the moments of this model and text live in; empty without a cache dir.
static std::filesystem::path moments_path(const llama_model & model, const std::vector<llama_token> & tokens) {
    const std::filesystem::path dir = cache_dir();
    if (dir.empty()) {
        return dir;
    }
    char name[32];
    snprintf(name, sizeof(name), "%016llx.bin", (unsigned long long) fingerprint(model, tokens));
    return dir / name;
}

bool pyturbo_kv_store_load(const llama_model & model, const std::vector<llama_token> & tokens,
                           std::vector<pyturbo_kv_moments> & layers) {
    const std::filesystem::path path = moments_path(model, tokens);
    if (path.empty() || !load_moments(path, model, layers)) {
        return false;
    }
    LLAMA_LOG_INFO("%s: moments from %s\n", __func__, path.string().c_str());
    return true;
}

void pyturbo_kv_store_save(const llama_model & model, const std::vector<llama_token> & tokens,
                           const std::vector<pyturbo_kv_moments> & layers) {
    const std::filesystem::path path = moments_path(model, tokens);
    if (!path.empty()) {
        save_moments(path, layers);
    }
}
