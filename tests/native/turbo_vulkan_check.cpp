// The turbo2/turbo3/turbo4/turbo3t/turbo2t block math of ggml's Vulkan backend
// (csrc/vulkan/*.glsl), run on a Vulkan device, against the CPU reference (csrc/turbo-quants.c,
// csrc/turbo-tcq.c) bit for bit: the same random rows are quantized (CPY f32 -> turbo and
// SET_ROWS, the KV write), dequantized (CPY turbo -> f32, GET_ROWS) on both backends, and
// every byte compared.
//
//     turbo_vulkan_check [device]      (links to pyturbo's libggml, libggml-base, libggml-cpu;
//                                       device: a ggml device name, default the first Vulkan one)
//
// Output lines: "<type> <op>: rows=<n> bytes=<n> differing=<n>", then "device <name>".

#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

const int N_ROWS = 512;
const int ROW = 256;  // four turbo blocks

// One op on one backend: src (F32 [ROW, N_ROWS], or the turbo rows for the way back) in,
// the result's bytes out.
enum class op_kind { quantize, set_rows, dequantize, get_rows };

std::vector<uint8_t> run(ggml_backend_t backend, op_kind kind, ggml_type type, const std::vector<float> & values,
                         const std::vector<uint8_t> & quantized) {
    ggml_init_params params = { 16 * ggml_tensor_overhead() + ggml_graph_overhead(), nullptr, true };
    ggml_context * ctx = ggml_init(params);
    const bool from_f32 = kind == op_kind::quantize || kind == op_kind::set_rows;
    ggml_tensor * src = ggml_new_tensor_2d(ctx, from_f32 ? GGML_TYPE_F32 : type, ROW, N_ROWS);
    ggml_tensor * rows = ggml_new_tensor_1d(ctx, GGML_TYPE_I64, N_ROWS);
    ggml_tensor * out = nullptr;
    switch (kind) {
        case op_kind::quantize:   out = ggml_cpy(ctx, src, ggml_new_tensor_2d(ctx, type, ROW, N_ROWS)); break;
        case op_kind::set_rows:   out = ggml_set_rows(ctx, ggml_new_tensor_2d(ctx, type, ROW, N_ROWS), src, rows); break;
        case op_kind::dequantize: out = ggml_cpy(ctx, src, ggml_new_tensor_2d(ctx, GGML_TYPE_F32, ROW, N_ROWS)); break;
        case op_kind::get_rows:   out = ggml_get_rows(ctx, src, ggml_new_tensor_1d(ctx, GGML_TYPE_I32, N_ROWS)); break;
    }
    ggml_tensor * index32 = kind == op_kind::get_rows ? out->src[1] : nullptr;
    ggml_cgraph * graph = ggml_new_graph(ctx);
    ggml_build_forward_expand(graph, out);
    ggml_backend_buffer_t buffer = ggml_backend_alloc_ctx_tensors(ctx, backend);

    if (from_f32) {
        ggml_backend_tensor_set(src, values.data(), 0, ggml_nbytes(src));
    } else {
        ggml_backend_tensor_set(src, quantized.data(), 0, ggml_nbytes(src));
    }
    // rows written / read in a shuffled order, the same on both backends
    std::vector<int64_t> order64(N_ROWS);
    std::vector<int32_t> order32(N_ROWS);
    for (int i = 0; i < N_ROWS; ++i) {
        order64[i] = order32[i] = (i * 37) % N_ROWS;
    }
    ggml_backend_tensor_set(rows, order64.data(), 0, ggml_nbytes(rows));
    if (index32) {
        ggml_backend_tensor_set(index32, order32.data(), 0, ggml_nbytes(index32));
    }
    if (kind == op_kind::set_rows) {
        ggml_backend_tensor_memset(out->src[0], 0, 0, ggml_nbytes(out->src[0]));
    }
    if (ggml_backend_graph_compute(backend, graph) != GGML_STATUS_SUCCESS) {
        fprintf(stderr, "graph compute failed\n");
        exit(1);
    }
    std::vector<uint8_t> bytes(ggml_nbytes(out));
    ggml_backend_tensor_get(out, bytes.data(), 0, bytes.size());
    ggml_backend_buffer_free(buffer);
    ggml_free(ctx);
    return bytes;
}

const char * name_of(op_kind kind) {
    switch (kind) {
        case op_kind::quantize:   return "cpy_f32_to_turbo";
        case op_kind::set_rows:   return "set_rows";
        case op_kind::dequantize: return "cpy_turbo_to_f32";
        case op_kind::get_rows:   return "get_rows";
    }
    return "?";
}

}  // namespace

int main(int argc, char ** argv) {
    ggml_backend_load_all();
    ggml_backend_dev_t device = nullptr;
    for (size_t i = 0; i < ggml_backend_dev_count() && device == nullptr; ++i) {
        ggml_backend_dev_t d = ggml_backend_dev_get(i);
        const std::string name = ggml_backend_dev_name(d);
        if (argc > 1 ? name == argv[1] : name.rfind("Vulkan", 0) == 0) {
            device = d;
        }
    }
    if (device == nullptr) {
        fprintf(stderr, "no Vulkan device\n");
        return 2;
    }
    ggml_backend_t gpu = ggml_backend_dev_init(device, nullptr);
    ggml_backend_t cpu = ggml_backend_cpu_init();

    // rotated-cache-like values: Gaussian, a scale per row, a few all-zero and outlier blocks
    std::mt19937 rng(42);
    std::normal_distribution<float> gauss(0.0f, 1.0f);
    std::vector<float> values((size_t) ROW * N_ROWS);
    for (int r = 0; r < N_ROWS; ++r) {
        const float scale = std::exp(gauss(rng));
        for (int j = 0; j < ROW; ++j) {
            values[(size_t) r * ROW + j] = r % 61 == 0 && j < 64 ? 0.0f : scale * gauss(rng) * (j % 97 == 0 ? 9.0f : 1.0f);
        }
    }
    for (ggml_type type : { GGML_TYPE_TURBO2, GGML_TYPE_TURBO3, GGML_TYPE_TURBO4, GGML_TYPE_TURBO3T, GGML_TYPE_TURBO2T }) {
        const std::vector<uint8_t> reference = run(cpu, op_kind::quantize, type, values, {});
        for (op_kind kind : { op_kind::quantize, op_kind::set_rows, op_kind::dequantize, op_kind::get_rows }) {
            const std::vector<uint8_t> want = run(cpu, kind, type, values, reference);
            const std::vector<uint8_t> got = run(gpu, kind, type, values, reference);
            size_t differing = 0;
            for (size_t i = 0; i < want.size(); ++i) {
                differing += want[i] != got[i];
            }
            printf("%s %s: rows=%d bytes=%zu differing=%zu\n", ggml_type_name(type), name_of(kind), N_ROWS, want.size(),
                   differing);
        }
    }
    printf("device %s\n", ggml_backend_dev_name(device));
    ggml_backend_free(gpu);
    ggml_backend_free(cpu);
    return 0;
}
