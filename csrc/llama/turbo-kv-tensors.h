// pyturbo: a K/V transform's tensors, made from what the weights and (for K calibration)
// the calibration moments give; the graph (turbo-kv-graph.cpp) multiplies by them.
#pragma once

#include "turbo-kv-moments.h"

#include "ggml.h"
#include "ggml-backend.h"

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

struct llama_model;
struct llama_cparams;

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

struct pyturbo_kv_transform {
    int32_t flags = 0;
    std::vector<pyturbo_kvt_layer> layers;
    // each layer's tensors live where its weights do (a GPU's memory, else host memory), so
    // that the ops using them run beside the layer's other ops: one context per buffer type
    std::map<ggml_backend_buffer_type_t, ggml_context *> contexts;
    std::vector<ggml_backend_buffer_t> buffers;

    ~pyturbo_kv_transform();

    // the ggml context for tensors in buffers of type buft (made on first use, room for n_tensors)
    ggml_context * context_for(ggml_backend_buffer_type_t buft, size_t n_tensors);

    // allocates every context's tensors in a buffer of its type
    void allocate();
};

// The transform of a model for one context (its n_ctx sets the RoPE averages; `rotation`
// which of llama.cpp's rotations get folded in). flags: what applies, a calibrated key
// transform (from `moments`, one entry per layer) in place of the weight-derived one.
std::unique_ptr<pyturbo_kv_transform> pyturbo_kvt_build(const llama_model & model, int32_t flags,
                                                        const llama_cparams & cparams,
                                                        const std::vector<pyturbo_kv_moments> & moments,
                                                        const pyturbo_kvt_rotation & rotation);
