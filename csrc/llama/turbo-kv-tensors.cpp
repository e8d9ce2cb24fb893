// pyturbo: a K/V transform's tensors (see turbo-kv-tensors.h).

#include "turbo-kv-tensors.h"
#include "turbo-kv-flags.h"
#include "turbo-kv-weights.h"

#include "llama-cparams.h"
#include "llama-hparams.h"
#include "llama-model.h"

#include "ggml-alloc.h"

#include <algorithm>
#include <cmath>
#include <thread>
#include <vector>

// llama.cpp rotates a quantized V cache over blocks of 64 values.
static const int64_t V_ROTATION_SIZE = 64;

pyturbo_kv_transform::~pyturbo_kv_transform() {
    for (ggml_backend_buffer_t buffer : buffers) {
        ggml_backend_buffer_free(buffer);
    }
    for (auto & entry : contexts) {
        ggml_free(entry.second);
    }
}

ggml_context * pyturbo_kv_transform::context_for(ggml_backend_buffer_type_t buft, size_t n_tensors) {
    ggml_context *& ctx = contexts[buft];
    if (ctx == nullptr) {
        ggml_init_params params = { ggml_tensor_overhead() * n_tensors, nullptr, true };
        ctx = ggml_init(params);
    }
    return ctx;
}

void pyturbo_kv_transform::allocate() {
    for (auto & entry : contexts) {
        if (ggml_get_first_tensor(entry.second) != nullptr) {
            buffers.push_back(ggml_backend_alloc_ctx_tensors_from_buft(entry.second, entry.first));
            GGML_ASSERT(buffers.back() != nullptr);
        }
    }
}

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
        ? pyturbo_kv_key_center(model, cparams, il, k_residual) : std::vector<float>();
    const std::vector<float> s = (flags & PYTURBO_KVT_K_EQUALIZE)
        ? pyturbo_kv_key_scales(model, il, k_residual) : std::vector<float>(model.hparams.n_embd_k_gqa(il), 1.0f);
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
        const std::vector<float> offset = pyturbo_tensor_values(model.layers[il].wv_b);
        ggml_backend_tensor_set(L.v_offset, offset.data(), 0, ggml_nbytes(L.v_offset));
    }
    if (L.v_scale) {
        const std::vector<float> s_v = pyturbo_kv_value_scales(model, il);
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

std::unique_ptr<pyturbo_kv_transform> pyturbo_kvt_build(const llama_model & model, int32_t flags,
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
