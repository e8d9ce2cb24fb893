// pyturbo: which K/V transforms a model allows, and which "auto" gives a context
// (see turbo-kv-policy.h).

#include "turbo-kv-policy.h"
#include "turbo-kv-auto-table.h"  // generated from pyturbo/kv_transform_auto.txt
#include "turbo-kv-weights.h"

#include "llama-hparams.h"
#include "llama-impl.h"
#include "llama-model.h"

#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

// Layers whose attention is a plain W x (+ b) projection per head, RoPE-d and cached.
static bool layer_has_plain_attention(const llama_model & model, int il) {
    const auto & hp = model.hparams;
    const auto & layer = model.layers[il];
    return layer.wq != nullptr && layer.wk != nullptr && layer.wv != nullptr && layer.wqkv == nullptr &&
           hp.n_head_kv(il) > 0 && hp.n_head(il) % hp.n_head_kv(il) == 0 &&
           hp.n_embd_head_k(il) == hp.n_embd_head_v(il);
}

static bool model_allows_transforms(const llama_model & model) {
    const auto & hp = model.hparams;
    if (hp.is_mla() || hp.n_layer_kv_from_start >= 0) {
        return false;  // compressed or shared KV: keys are not one head's W_k x
    }
    if (hp.rope_type != LLAMA_ROPE_TYPE_NORM && hp.rope_type != LLAMA_ROPE_TYPE_NEOX) {
        return false;  // the RoPE pairs of other layouts are not handled
    }
    for (uint32_t il = 0; il < hp.n_layer(); ++il) {
        if (!layer_has_plain_attention(model, il)) {
            return false;
        }
    }
    return hp.n_layer() > 0;
}

// Every layer RoPEs its whole head (the calibration's moments are per RoPE pair).
static bool full_rope(const llama_model & model) {
    const auto & hp = model.hparams;
    for (uint32_t il = 0; il < hp.n_layer(); ++il) {
        if (!hp.has_rope(il) || hp.n_rot(il) != hp.n_embd_head_k(il) || hp.n_embd_head_k(il) % 2 != 0) {
            return false;
        }
    }
    return true;
}

int32_t pyturbo_kvt_supported(const llama_model & model) {
    if (!model_allows_transforms(model)) {
        return 0;
    }
    const auto & hp = model.hparams;
    bool k_bias = true;
    bool v_bias = true;
    bool equalize = true;
    bool v_equalize = true;
    for (uint32_t il = 0; il < hp.n_layer(); ++il) {
        const auto & layer = model.layers[il];
        k_bias = k_bias && pyturbo_tensor_is_vector(layer.wk_b, hp.n_embd_k_gqa(il));
        v_bias = v_bias && pyturbo_tensor_is_vector(layer.wv_b, hp.n_embd_v_gqa(il));
        const bool qk_norm = pyturbo_tensor_readable(layer.attn_q_norm) && pyturbo_tensor_readable(layer.attn_k_norm);
        const bool norm_gain = pyturbo_tensor_is_vector(layer.attn_norm, hp.n_embd);
        // the weight-derived scales read W_q, W_k, W_v and W_o (not if repacked for the CPU)
        equalize = equalize && (qk_norm || (norm_gain && pyturbo_tensor_readable(layer.wq) &&
                                            pyturbo_tensor_readable(layer.wk)));
        v_equalize = v_equalize && norm_gain && pyturbo_tensor_readable(layer.wv) && pyturbo_tensor_readable(layer.wo) &&
                     layer.wo->ne[0] == hp.n_embd_head_v(il) * hp.n_head(il);
    }
    int32_t flags = 0;
    // a logit soft-cap bends scores before softmax: a shift of every score is no longer free
    if (k_bias && !hp.attn_soft_cap) {
        flags |= PYTURBO_KVT_K_CENTER;
    }
    if (equalize) {
        flags |= PYTURBO_KVT_K_EQUALIZE;
    }
    if (v_bias) {
        flags |= PYTURBO_KVT_V_CENTER;
    }
    if (v_equalize) {
        flags |= PYTURBO_KVT_V_EQUALIZE;
    }
    if (full_rope(model) && !hp.attn_soft_cap) {  // calibration centers keys too
        flags |= PYTURBO_KVT_K_CALIBRATE;
    }
    return flags;
}

struct transform_name {
    const char * name;
    int32_t flag;
};

static const transform_name TRANSFORM_NAMES[] = {
    { "k_calibrate", PYTURBO_KVT_K_CALIBRATE }, { "k_center", PYTURBO_KVT_K_CENTER },
    { "k_equalize", PYTURBO_KVT_K_EQUALIZE },   { "v_center", PYTURBO_KVT_V_CENTER },
    { "v_equalize", PYTURBO_KVT_V_EQUALIZE },
};

static int32_t transform_flag(const std::string & name) {
    for (const transform_name & t : TRANSFORM_NAMES) {
        if (name == t.name) {
            return t.flag;
        }
    }
    return 0;
}

// What the table's conditions ask about a context.
struct auto_facts {
    int32_t supported = 0;
    bool k_quantized = false;
    bool v_quantized = false;
    bool k_below_8_bits = false;
    int32_t chosen = 0;  // what the lines read so far apply
};

// A condition's value; false with `known` cleared for a word the table should not have.
static bool condition_holds(const std::string & name, const auto_facts & facts, bool & known) {
    known = true;
    if (name == "k_quantized") {
        return facts.k_quantized;
    }
    if (name == "v_quantized") {
        return facts.v_quantized;
    }
    if (name == "k_below_8_bits") {
        return facts.k_below_8_bits;
    }
    if (name == "keys") {
        return facts.chosen & PYTURBO_KVT_KEY_FLAGS;
    }
    const std::string prefix = "supports_";
    const int32_t flag = name.compare(0, prefix.size(), prefix) == 0 ? transform_flag(name.substr(prefix.size())) : 0;
    known = flag != 0;
    return facts.supported & flag;
}

// Whether one line of the table ("transform condition ...") applies; ends the process on a
// line that is not one (the table is compiled in, and tests/test_kv_transform.py reads it too).
static bool line_applies(const std::string & line, const auto_facts & facts, int32_t & flag) {
    std::istringstream words(line);
    std::string word;
    words >> word;
    flag = transform_flag(word);
    if (flag == 0) {
        GGML_ABORT("pyturbo: kv_transform_auto.txt: unknown transform '%s'", word.c_str());
    }
    bool all = true;
    while (words >> word) {
        const bool negated = word[0] == '!';
        bool known;
        const bool value = condition_holds(negated ? word.substr(1) : word, facts, known);
        if (!known) {
            GGML_ABORT("pyturbo: kv_transform_auto.txt: unknown condition '%s'", word.c_str());
        }
        all = all && value != negated;
    }
    return all;
}

static bool is_rule_line(const std::string & line) {
    const size_t first = line.find_first_not_of(" \t");
    return first != std::string::npos && line[first] != '#';
}

int32_t pyturbo_kvt_auto(const llama_model & model, ggml_type type_k, ggml_type type_v) {
    auto_facts facts;
    facts.supported = pyturbo_kvt_supported(model);
    facts.k_quantized = ggml_is_quantized(type_k);
    facts.v_quantized = ggml_is_quantized(type_v);
    facts.k_below_8_bits = 8.0 * ggml_type_size(type_k) / ggml_blck_size(type_k) < 8.0;
    std::istringstream table(PYTURBO_KV_AUTO_TABLE);
    std::string line;
    while (std::getline(table, line)) {
        int32_t flag = 0;
        if (is_rule_line(line) && line_applies(line, facts, flag)) {
            facts.chosen |= flag & facts.supported;
        }
    }
    return facts.chosen;
}

int32_t pyturbo_kvt_env_choice() {
    const char * value = getenv("PYTURBO_KV_TRANSFORM");
    if (value == nullptr || *value == '\0' || strcmp(value, "auto") == 0) {
        return PYTURBO_KVT_AUTO;
    }
    if (strcmp(value, "off") == 0) {
        return 0;
    }
    return atoi(value);
}
