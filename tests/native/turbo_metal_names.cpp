// Runs ggml's Metal host code (ggml-metal-ops.cpp, ggml-metal-device.cpp and
// ggml-metal-tuning.cpp of the patched tree, plain C++) on this machine for
// every op on a turbo type that pyturbo's Metal supports_op accepts, and prints
// the name of every kernel the host code asks the Metal library for. The parts
// of the backend written in Objective-C (pipelines, encoders, buffers, device
// properties) are replaced below by stand-ins that record the names and
// encode nothing. tests/test_metal.py then requires each name to be
// instantiated in a Metal source, so no pipeline lookup can fail on a Mac.
//
// Output: "kernel <name>" per distinct name, "encoded <n> ops", and
// "supports <op description> <0|1>" for the ops whose answer the test pins.

#include "ggml.h"
#include "ggml-backend-impl.h"
#include "ggml-impl.h"

#include "ggml-metal-device.h"
#include "ggml-metal-fusion.h"
#include "ggml-metal-ops.h"

#include "turbo-metal.h"

#include <cstdio>
#include <cstring>
#include <set>
#include <string>
#include <vector>

// ---- stand-ins for the Objective-C half of ggml-metal ------------------------

namespace {

std::set<std::string> g_kernels;
ggml_metal_device_props g_props;
int g_fake_object;   // what the opaque handles point at

ggml_metal_pipeline_t fake_pipeline() { return (ggml_metal_pipeline_t) &g_fake_object; }

} // namespace

extern "C" {

ggml_metal_cv_t ggml_metal_cv_init(void) { return (ggml_metal_cv_t) &g_fake_object; }
void ggml_metal_cv_free(ggml_metal_cv_t) {}
void ggml_metal_cv_set_int16(ggml_metal_cv_t, int16_t, int32_t) {}
void ggml_metal_cv_set_int32(ggml_metal_cv_t, int32_t, int32_t) {}
void ggml_metal_cv_set_bool(ggml_metal_cv_t, bool, int32_t) {}

void ggml_metal_pipeline_free(ggml_metal_pipeline_t) {}
int ggml_metal_pipeline_max_theads_per_threadgroup(ggml_metal_pipeline_with_params) { return 1024; }

// Nothing is cached: every lookup reaches compile_pipeline, which records the
// kernel's base name (the function the Metal library must contain).
ggml_metal_pipeline_with_params ggml_metal_library_get_pipeline(ggml_metal_library_t, const char *) {
    ggml_metal_pipeline_with_params res = {};
    return res;
}

ggml_metal_pipeline_with_params ggml_metal_library_compile_pipeline(ggml_metal_library_t, const char * base, const char *, ggml_metal_cv_t) {
    g_kernels.insert(base);
    ggml_metal_pipeline_with_params res = {};
    res.pipeline = fake_pipeline();
    return res;
}

ggml_metal_device_t ggml_metal_library_get_device(ggml_metal_library_t) { return (ggml_metal_device_t) &g_fake_object; }
ggml_metal_library_t ggml_metal_device_get_library(ggml_metal_device_t) { return (ggml_metal_library_t) &g_fake_object; }
const ggml_metal_device_props * ggml_metal_device_get_props(ggml_metal_device_t) { return &g_props; }
ggml_metal_device_t ggml_metal_device_init(int, int) { return (ggml_metal_device_t) &g_fake_object; }
void ggml_metal_device_free(ggml_metal_device_t) {}

bool ggml_metal_device_supports_op(ggml_metal_device_t, const ggml_tensor * op) {
    bool supported = false;
    return pyturbo_metal_supports_op(op, g_props.has_simdgroup_mm, &supported) && supported;
}

ggml_metal_buffer_id ggml_metal_buffer_get_id(ggml_metal_buffer_t, const ggml_tensor *) {
    ggml_metal_buffer_id id = { &g_fake_object, 0 };
    return id;
}

ggml_metal_encoder_t ggml_metal_encoder_init(ggml_metal_cmd_buf_t, bool) { return (ggml_metal_encoder_t) &g_fake_object; }
void ggml_metal_encoder_free(ggml_metal_encoder_t) {}
void ggml_metal_encoder_debug_group_push(ggml_metal_encoder_t, const char *) {}
void ggml_metal_encoder_debug_group_pop(ggml_metal_encoder_t) {}
void ggml_metal_encoder_set_pipeline(ggml_metal_encoder_t, ggml_metal_pipeline_with_params) {}
void ggml_metal_encoder_set_bytes(ggml_metal_encoder_t, void *, size_t, int) {}
void ggml_metal_encoder_set_buffer(ggml_metal_encoder_t, ggml_metal_buffer_id, int) {}
void ggml_metal_encoder_set_threadgroup_memory_size(ggml_metal_encoder_t, size_t, int) {}
void ggml_metal_encoder_dispatch_threadgroups(ggml_metal_encoder_t, int, int, int, int, int, int) {}
void ggml_metal_encoder_memory_barrier(ggml_metal_encoder_t) {}
void ggml_metal_encoder_end_encoding(ggml_metal_encoder_t) {}

} // extern "C"

// ---- ops ---------------------------------------------------------------------

namespace {

const ggml_type TURBO[] = {GGML_TYPE_TURBO2, GGML_TYPE_TURBO3, GGML_TYPE_TURBO4};

int g_encoded = 0;

struct graph_builder {
    ggml_context * ctx;

    graph_builder() {
        ggml_init_params params = {64*1024*1024, nullptr, true};   // tensor metadata only
        ctx = ggml_init(params);
    }
    ~graph_builder() { ggml_free(ctx); }

    ggml_tensor * tensor(ggml_type type, int64_t ne0, int64_t ne1 = 1, int64_t ne2 = 1, int64_t ne3 = 1) {
        return ggml_new_tensor_4d(ctx, type, ne0, ne1, ne2, ne3);
    }
};

// Encodes the graph of op with the Metal host code, if pyturbo's supports_op
// accepts op (returns whether it did).
bool encode(ggml_context * ctx, ggml_tensor * op) {
    bool supported = false;
    if (!pyturbo_metal_supports_op(op, g_props.has_simdgroup_mm, &supported) || !supported) {
        return false;
    }
    // a buffer for the dependency tracking to look at (the sizes are ggml_nbytes)
    static ggml_backend_buffer_type fake_buffer_type = {};
    static ggml_backend_buffer fake_buffer = {};
    fake_buffer.buft    = &fake_buffer_type;
    fake_buffer.context = &g_fake_object;
    char * address = (char *) 0x1000000;
    for (ggml_tensor * t = ggml_get_first_tensor(ctx); t; t = ggml_get_next_tensor(ctx, t)) {
        t->buffer = &fake_buffer;
        t->data   = address;
        address  += GGML_PAD(ggml_nbytes(t), 4096);
    }
    ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, op);
    ggml_metal_fusion_info * finfo = ggml_metal_fusion_info_init(false, 0);
    ggml_metal_op_t mop = ggml_metal_op_init((ggml_metal_device_t) &g_fake_object, nullptr, gf, finfo,
                                             0, ggml_graph_n_nodes(gf), false, false, 0);
    for (int i = 0; i < ggml_metal_op_n_nodes(mop); ) {
        i += ggml_metal_op_encode(mop, i);
    }
    ggml_metal_op_free(mop);
    ggml_metal_fusion_info_free(finfo);
    ++g_encoded;
    return true;
}

void report(const char * what, ggml_tensor * op) {
    bool supported = false;
    const bool decided = pyturbo_metal_supports_op(op, true, &supported);
    std::printf("supports %s %d\n", what, decided ? (int) supported : -1);
}

void copies_and_rows() {
    for (ggml_type type : TURBO) {
        for (ggml_type idx : {GGML_TYPE_I64, GGML_TYPE_I32}) {
            graph_builder g;
            ggml_tensor * dst = g.tensor(type, 256, 64, 3);
            ggml_tensor * rows = g.tensor(GGML_TYPE_F32, 256, 5, 3);
            ggml_tensor * ids = g.tensor(idx, 5, 3);
            encode(g.ctx, ggml_set_rows(g.ctx, dst, rows, ids));
        }
        {
            graph_builder g;   // f32 -> turbo, as the K-shift writes a shifted K back
            ggml_tensor * src = g.tensor(GGML_TYPE_F32, 128, 7, 2);
            encode(g.ctx, ggml_cpy(g.ctx, src, g.tensor(type, 128, 7, 2)));
        }
        for (ggml_type to : {GGML_TYPE_F32, GGML_TYPE_F16}) {
            graph_builder g;   // turbo -> f32/f16, as the K-shift reads K
            ggml_tensor * src = g.tensor(type, 128, 7, 2);
            encode(g.ctx, ggml_cpy(g.ctx, src, g.tensor(to, 128, 7, 2)));
        }
        {
            graph_builder g;
            ggml_tensor * src = g.tensor(type, 256, 10, 2);
            encode(g.ctx, ggml_get_rows(g.ctx, src, g.tensor(GGML_TYPE_I32, 4, 2)));
        }
    }
}

ggml_tensor * flash_attn(graph_builder & g, ggml_type tk, ggml_type tv, int64_t dk, int64_t dv, int64_t n_q, int64_t n_kv) {
    const int64_t n_head = 8, n_head_kv = 2;
    ggml_tensor * q = g.tensor(GGML_TYPE_F32, dk, n_q, n_head);
    ggml_tensor * k = g.tensor(tk, dk, n_kv, n_head_kv);
    ggml_tensor * v = g.tensor(tv, dv, n_kv, n_head_kv);
    ggml_tensor * mask = g.tensor(GGML_TYPE_F16, n_kv, n_q);
    ggml_tensor * fa = ggml_flash_attn_ext(g.ctx, q, k, v, mask, 0.125f, 0.0f, 0.0f);
    ggml_flash_attn_ext_set_prec(fa, GGML_PREC_F32);
    return fa;
}

void flash_attention() {
    std::vector<std::pair<ggml_type, ggml_type>> pairs;
    for (ggml_type t : TURBO) {
        pairs.push_back({t, t});
        pairs.push_back({GGML_TYPE_Q8_0, t});
    }
    // every path of ggml_metal_op_flash_attn_ext: vector kernels (< 20 queries, with
    // fa_vec_pick's buckets of KV length and query count), matrix kernels (20-31
    // queries), dequantization to F16 then the F16 kernels (32 and more); every GPU
    // family the tuning table knows
    const int64_t n_queries[] = {1, 2, 3, 4, 5, 8, 19, 20, 31, 32, 512};
    const int64_t n_kvs[] = {256, 1000, 2048, 8192, 40000};
    for (int family : {7, 8, 9, 10}) {
        g_props.gpu_family = family;
        for (auto [tk, tv] : pairs) {
            for (int64_t dk : {64, 128, 256}) {
                for (int64_t n_q : n_queries) {
                    for (int64_t n_kv : n_kvs) {
                        graph_builder g;
                        if (!encode(g.ctx, flash_attn(g, tk, tv, dk, dk, n_q, n_kv))) {
                            std::printf("supports FLASH_ATTN_EXT(%s,%s,dk=%d) 0\n", ggml_type_name(tk), ggml_type_name(tv), (int) dk);
                        }
                    }
                }
            }
        }
    }
}

void unsupported() {
    const struct { ggml_type k, v; int64_t dk, dv; const char * what; } cases[] = {
        {GGML_TYPE_TURBO3, GGML_TYPE_F16,    128, 128, "FLASH_ATTN_EXT(turbo3,f16)"},
        {GGML_TYPE_F16,    GGML_TYPE_TURBO3, 128, 128, "FLASH_ATTN_EXT(f16,turbo3)"},
        {GGML_TYPE_TURBO4, GGML_TYPE_TURBO3, 128, 128, "FLASH_ATTN_EXT(turbo4,turbo3)"},
        {GGML_TYPE_TURBO4, GGML_TYPE_Q8_0,   128, 128, "FLASH_ATTN_EXT(turbo4,q8_0)"},
        {GGML_TYPE_TURBO3, GGML_TYPE_TURBO3, 192, 192, "FLASH_ATTN_EXT(turbo3,dk=192)"},
        {GGML_TYPE_TURBO3, GGML_TYPE_TURBO3, 256, 128, "FLASH_ATTN_EXT(turbo3,dk=256,dv=128)"},
        {GGML_TYPE_Q8_0,   GGML_TYPE_Q8_0,   128, 128, "FLASH_ATTN_EXT(q8_0,q8_0)"},
    };
    for (const auto & c : cases) {
        graph_builder g;
        report(c.what, flash_attn(g, c.k, c.v, c.dk, c.dv, 1, 256));
    }
    {
        graph_builder g;
        ggml_tensor * k = g.tensor(GGML_TYPE_TURBO3, 128, 256, 2);
        report("MUL_MAT(turbo3,f32)", ggml_mul_mat(g.ctx, k, g.tensor(GGML_TYPE_F32, 128, 1, 2)));
    }
    {
        graph_builder g;
        ggml_tensor * src = g.tensor(GGML_TYPE_TURBO3, 128, 4);
        report("CPY(turbo3,turbo4)", ggml_cpy(g.ctx, src, g.tensor(GGML_TYPE_TURBO4, 128, 4)));
    }
    {
        graph_builder g;
        ggml_tensor * rows = g.tensor(GGML_TYPE_F16, 128, 4);
        report("SET_ROWS(f16,turbo3)", ggml_set_rows(g.ctx, g.tensor(GGML_TYPE_TURBO3, 128, 16), rows, g.tensor(GGML_TYPE_I64, 4)));
    }
    {
        graph_builder g;
        report("VIEW(turbo3)", ggml_view_1d(g.ctx, g.tensor(GGML_TYPE_TURBO3, 128, 4), 64, 0));
    }
}

} // namespace

int main() {
    std::strcpy(g_props.name, "stand-in");
    g_props.has_simdgroup_reduction = true;
    g_props.has_simdgroup_mm        = true;
    g_props.has_bfloat              = true;
    g_props.max_theadgroup_memory_size = 32768;
    g_props.gpu_family              = 9;

    copies_and_rows();
    flash_attention();
    unsupported();

    for (const std::string & name : g_kernels) {
        std::printf("kernel %s\n", name.c_str());
    }
    std::printf("encoded %d ops\n", g_encoded);
    return 0;
}
