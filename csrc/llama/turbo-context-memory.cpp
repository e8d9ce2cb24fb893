// pyturbo: what a llama_context allocated (see turbo-context-memory.h).

#include "turbo-context-memory.h"

#include "llama-context.h"
#include "llama-kv-cache.h"
#include "llama-kv-cache-iswa.h"
#include "llama-memory-hybrid.h"
#include "llama-memory-hybrid-iswa.h"
#include "llama-memory-recurrent.h"
#include "llama-model.h"

#include "ggml-backend.h"

#include <cstring>
#include <map>
#include <memory>
#include <string>

// The one figure llama_context keeps to itself: patches/0010 makes this its friend.
struct pyturbo_memory_probe {
    static const ggml_backend_buffer * output_buffer(const llama_context & ctx) { return ctx.buf_output.get(); }
};

using buffer_type_bytes = std::map<ggml_backend_buffer_type_t, pyturbo_buffer_memory>;

static pyturbo_buffer_memory & entry(buffer_type_bytes & bytes, ggml_backend_buffer_type_t buft) {
    auto it = bytes.find(buft);
    if (it == bytes.end()) {
        pyturbo_buffer_memory blank = {};
        snprintf(blank.name, sizeof(blank.name), "%s", ggml_backend_buft_name(buft));
        it = bytes.emplace(buft, blank).first;
    }
    return it->second;
}

static pyturbo_buffer_memory & entry_of(buffer_type_bytes & bytes, const ggml_tensor * t) {
    return entry(bytes, ggml_backend_buffer_get_type(t->buffer));
}

// A KV cache's K and V tensors. The cache hands out its V tensor only as a view
// (get_v), whose view_src is the tensor itself; MLA caches have none.
static void add_kv_cache(const llama_kv_cache & kv, bool has_v, buffer_type_bytes & bytes) {
    const std::vector<uint32_t> layers = kv.get_layer_ids();
    ggml_init_params params = { ggml_tensor_overhead() * (layers.size() + 1), nullptr, true };
    std::unique_ptr<ggml_context, decltype(&ggml_free)> views(ggml_init(params), ggml_free);
    llama_kv_cache::slot_info first_stream;
    first_stream.s0 = first_stream.s1 = 0;
    for (uint32_t il : layers) {
        const ggml_tensor * k = kv.get_k_storage((int32_t) il);
        entry_of(bytes, k).k += ggml_nbytes(k);
        if (has_v) {
            const ggml_tensor * v = kv.get_v(views.get(), (int32_t) il, 1, first_stream)->view_src;
            entry_of(bytes, v).v += ggml_nbytes(v);
        }
    }
}

static void add_recurrent(const llama_memory_recurrent & mem, buffer_type_bytes & bytes) {
    for (const std::vector<ggml_tensor *> * states : { &mem.r_l, &mem.s_l }) {
        for (const ggml_tensor * t : *states) {
            if (t != nullptr) {
                entry_of(bytes, t).recurrent += ggml_nbytes(t);
            }
        }
    }
}

// Adds the context's memory; false for a kind of memory not broken down here.
static bool add_memory(const llama_memory_i * mem, bool mla, struct pyturbo_context_memory & out, buffer_type_bytes & bytes) {
    if (const auto * kv = dynamic_cast<const llama_kv_cache *>(mem)) {
        add_kv_cache(*kv, !mla, bytes);
        out.cells = kv->get_size();
        return true;
    }
    if (const auto * iswa = dynamic_cast<const llama_kv_cache_iswa *>(mem)) {
        add_kv_cache(*iswa->get_base(), !mla, bytes);
        add_kv_cache(*iswa->get_swa(), !mla, bytes);
        out.cells = iswa->get_base()->get_size();
        out.cells_swa = iswa->get_swa()->get_size();
        return true;
    }
    if (const auto * recurrent = dynamic_cast<const llama_memory_recurrent *>(mem)) {
        add_recurrent(*recurrent, bytes);
        return true;
    }
    if (const auto * hybrid = dynamic_cast<const llama_memory_hybrid *>(mem)) {
        return add_memory(hybrid->get_mem_attn(), mla, out, bytes) && add_memory(hybrid->get_mem_recr(), mla, out, bytes);
    }
    if (const auto * hybrid = dynamic_cast<const llama_memory_hybrid_iswa *>(mem)) {
        return add_memory(hybrid->get_mem_attn(), mla, out, bytes) && add_memory(hybrid->get_mem_recr(), mla, out, bytes);
    }
    return false;
}

int32_t pyturbo_context_memory(const llama_context * ctx, struct pyturbo_context_memory * out) {
    *out = {};
    buffer_type_bytes bytes;
    const llama_memory_i * mem = llama_get_memory(ctx);
    if (mem != nullptr && !add_memory(mem, ctx->get_model().hparams.is_mla(), *out, bytes)) {
        for (const auto & [buft, size] : mem->memory_breakdown()) {
            entry(bytes, buft).other += size;
        }
    }
    for (const auto & [buft, sizes] : ctx->memory_breakdown()) {
        if (sizes.compute > 0) {  // the breakdown lists the weights' buffer types too
            entry(bytes, buft).compute += sizes.compute;
        }
    }
    if (const ggml_backend_buffer * output = pyturbo_memory_probe::output_buffer(*ctx)) {
        auto * buffer = const_cast<ggml_backend_buffer *>(output);
        entry(bytes, ggml_backend_buffer_get_type(buffer)).output += ggml_backend_buffer_get_size(buffer);
    }
    if (bytes.size() > PYTURBO_MEMORY_MAX_BUFFER_TYPES) {
        return -1;
    }
    for (const auto & [buft, figures] : bytes) {
        out->buffer_types[out->n_buffer_types++] = figures;
    }
    return 0;
}
