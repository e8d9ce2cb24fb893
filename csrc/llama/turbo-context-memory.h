// pyturbo: what a llama_context allocated, in bytes, per buffer type: its K and V caches
// (sliding-window and hybrid memories included), recurrent states, compute and output
// buffers. pyturbo.Context and pyturbo.memory read their figures here, exactly, instead of
// from llama.cpp's log (which rounds to 0.01 MiB).
#pragma once

#include "llama.h"

#include <stdint.h>

#define PYTURBO_MEMORY_MAX_BUFFER_TYPES 16

// One buffer type's bytes ("CPU", "CUDA0", "CUDA_Host", "RPC0[...]" ...).
struct pyturbo_buffer_memory {
    char name[64];       // ggml_backend_buft_name
    uint64_t k;          // K cache tensors
    uint64_t v;          // V cache tensors
    uint64_t recurrent;  // recurrent layers' states (R and S)
    uint64_t other;      // memory of a kind not broken down here (its buffers' size)
    uint64_t compute;    // the scheduler's compute buffer
    uint64_t output;     // the logits/embeddings output buffer
};

struct pyturbo_context_memory {
    int32_t n_buffer_types;
    uint32_t cells;       // cells of the full-attention KV cache (0: none)
    uint32_t cells_swa;   // cells of the sliding-window KV cache (0: none)
    struct pyturbo_buffer_memory buffer_types[PYTURBO_MEMORY_MAX_BUFFER_TYPES];
};

#ifdef __cplusplus
extern "C" {
#endif

// Fills *out; 0, or -1 if the context uses more than PYTURBO_MEMORY_MAX_BUFFER_TYPES
// buffer types.
LLAMA_API int32_t pyturbo_context_memory(const struct llama_context * ctx, struct pyturbo_context_memory * out);

#ifdef __cplusplus
}
#endif
