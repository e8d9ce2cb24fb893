// pyturbo: a KV cache type per layer (see turbo-kv-layers.h).

#include "turbo-kv-layers.h"
#include "turbo-kv-request.h"
#include "turbo-kv-transform.h"

#include "llama-hparams.h"
#include "llama-impl.h"

#include <cctype>
#include <cstdlib>
#include <stdexcept>

namespace {

const char * const ENV_K = "PYTURBO_CACHE_K_LAYERS";
const char * const ENV_V = "PYTURBO_CACHE_V_LAYERS";

bool find_type(std::string name, ggml_type & type) {
    for (char & c : name) {
        c = (char) tolower((unsigned char) c);
    }
    for (int t = 0; t < GGML_TYPE_COUNT; t++) {
        const char * known = ggml_type_name((ggml_type) t);
        const ggml_type_traits * traits = ggml_get_type_traits((ggml_type) t);
        // a type with no block size is a removed one (its id kept for old files)
        if (known != nullptr && traits->blck_size != 0 && name == known) {
            type = (ggml_type) t;
            return true;
        }
    }
    return false;
}

bool parse_index(const std::string & text, long & value) {
    if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos || text.size() > 6) {
        return false;
    }
    value = std::strtol(text.c_str(), nullptr, 10);
    return true;
}

// The layers [first, last] an override's "@..." names, or false.
bool parse_layers(const std::string & where, uint32_t n_layer, long & first, long & last) {
    if (!where.empty() && where[0] == '-') {  // the last N layers
        long n;
        if (!parse_index(where.substr(1), n) || n < 1 || n > (long) n_layer) {
            return false;
        }
        first = (long) n_layer - n;
        last = (long) n_layer - 1;
        return true;
    }
    const size_t dash = where.find('-');
    if (dash == std::string::npos) {
        if (!parse_index(where, first)) {
            return false;
        }
        last = first;
    } else if (!parse_index(where.substr(0, dash), first) || !parse_index(where.substr(dash + 1), last)) {
        return false;
    }
    return first <= last && last < (long) n_layer;
}

// The layer types of one side: the request's, else its environment variable's spec.
pyturbo_layer_type_list requested_types(char side, uint32_t n_layer) {
    const pyturbo_kv_layer_types * request = nullptr;
    if (pyturbo_kvt_layers_request(&request)) {
        const int32_t * ids = request == nullptr ? nullptr : side == 'K' ? request->type_k : request->type_v;
        if (ids == nullptr) {
            return {};
        }
        if (request->n_layer != (int32_t) n_layer) {
            throw std::runtime_error("pyturbo: per-layer cache types for " + std::to_string(request->n_layer) +
                                     " layers, but the model has " + std::to_string(n_layer));
        }
        pyturbo_layer_type_list types;
        for (int32_t il = 0; il < request->n_layer; il++) {
            if (ids[il] < 0 || ids[il] >= GGML_TYPE_COUNT) {
                throw std::runtime_error("pyturbo: per-layer cache type " + std::to_string(ids[il]) + " is not a ggml type");
            }
            types.push_back((ggml_type) ids[il]);
        }
        return types;
    }
    const char * name = side == 'K' ? ENV_K : ENV_V;
    const char * spec = getenv(name);
    if (spec == nullptr || spec[0] == '\0') {
        return {};
    }
    pyturbo_layer_type_list types;
    std::string problem;
    if (!pyturbo_parse_layer_spec(spec, n_layer, types, problem)) {
        throw std::runtime_error(std::string("pyturbo: ") + name + "=" + spec + ": " + problem);
    }
    return types;
}

int demand(ggml_type type) {
    return ggml_is_runtime_only_type(type) ? 2 : ggml_is_quantized(type) ? 1 : 0;
}

ggml_type standing_type(const pyturbo_layer_type_list & types, ggml_type base) {
    ggml_type best = base;
    for (ggml_type t : types) {
        if (demand(t) > demand(best)) {
            best = t;
        }
    }
    return best;
}

void check_block_sizes(const char * side, const pyturbo_layer_type_list & types, const llama_hparams & hparams) {
    for (uint32_t il = 0; il < types.size(); il++) {
        const uint32_t head = side[0] == 'K' ? hparams.n_embd_head_k(il) : hparams.n_embd_head_v(il);
        const int64_t block = ggml_blck_size(types[il]);
        if (head != 0 && head % block != 0) {
            throw std::runtime_error(std::string("pyturbo: ") + side + " cache type " + ggml_type_name(types[il]) +
                                     " of layer " + std::to_string(il) + " stores blocks of " + std::to_string(block) +
                                     " values, which do not divide its head size " + std::to_string(head));
        }
    }
}

} // namespace

bool pyturbo_parse_layer_spec(const std::string & spec, uint32_t n_layer, pyturbo_layer_type_list & types,
                              std::string & problem) {
    types.clear();
    size_t start = 0;
    bool first_item = true;
    while (start <= spec.size()) {
        size_t comma = spec.find(',', start);
        if (comma == std::string::npos) {
            comma = spec.size();
        }
        const std::string item = spec.substr(start, comma - start);
        const size_t at = item.find('@');
        ggml_type type;
        if (!find_type(item.substr(0, at), type)) {
            problem = "unknown cache type '" + item.substr(0, at) + "'";
            return false;
        }
        if (first_item != (at == std::string::npos)) {
            problem = first_item ? "a spec starts with the default type, without '@'"
                                 : "'" + item + "': every type after the first names its layers (type@N, type@A-B, type@-N)";
            return false;
        }
        if (first_item) {
            types.assign(n_layer, type);
        } else {
            long first, last;
            if (!parse_layers(item.substr(at + 1), n_layer, first, last)) {
                problem = "'" + item + "' names no layers of the " + std::to_string(n_layer) + " there are";
                return false;
            }
            for (long il = first; il <= last; il++) {
                types[il] = type;
            }
        }
        first_item = false;
        start = comma + 1;
    }
    return true;
}

pyturbo_kv_cache_layers pyturbo_kv_layers_for_cache(const llama_hparams & hparams, bool v_trans,
                                                    ggml_type * type_k, ggml_type * type_v) {
    pyturbo_kv_cache_layers layers;
    layers.k = requested_types('K', hparams.n_layer_all);
    layers.v = requested_types('V', hparams.n_layer_all);
    layers.base_k = *type_k;
    layers.base_v = *type_v;
    check_block_sizes("K", layers.k, hparams);
    check_block_sizes("V", layers.v, hparams);
    *type_k = standing_type(layers.k, *type_k);
    *type_v = standing_type(layers.v, *type_v);
    if (v_trans && ggml_is_quantized(*type_v)) {
        throw std::runtime_error(std::string("pyturbo: the quantized V cache type ") + ggml_type_name(*type_v) +
                                 " of a layer requires flash attention");
    }
    if (!layers.k.empty() || !layers.v.empty()) {
        LLAMA_LOG_INFO("%s: per-layer cache types, standing for them all: K %s, V %s\n", __func__,
                       ggml_type_name(*type_k), ggml_type_name(*type_v));
    }
    return layers;
}

ggml_type pyturbo_kv_layers_standing_type(char side, uint32_t n_layer, ggml_type base) {
    try {
        return standing_type(requested_types(side, n_layer), base);
    } catch (const std::runtime_error &) {
        return base;  // the cache's constructor reports it
    }
}
