// Time of one FLASH_ATTN_EXT on the CPU for SmolLM2's shapes (head size 64, 9 query heads,
// 3 KV heads), through ggml's public API: a decoded token over 4096 cells, four sequences'
// tokens decoded together (each over its own 1024 interleaved cells), and a 512-token
// prefill at depth 3584 (causal). docs/results/fattn_invariance_speed.py runs it against
// two builds of the library.
//
//     fattn_bench THREADS REPETITIONS
//
// Output lines: "<K>/<V> <case> <milliseconds per op>", one per repetition.

#include "ggml.h"
#include "ggml-cpu.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

namespace {

constexpr int D = 64, N_HEAD = 9, N_HEAD_KV = 3;

struct bench_case {
    const char * name;
    int n_query, n_kv, n_seq;   // n_seq sequences interleaved over the cells, one query token each (decode)
    bool causal;                // prefill: the queries are the last n_query cells
    int iterations;
};

double time_op(ggml_type type_k, ggml_type type_v, const bench_case & c, int n_threads, std::mt19937 & rng) {
    ggml_init_params params = { 256u << 20, nullptr, false };
    ggml_context * ctx = ggml_init(params);
    ggml_tensor * q = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, D, c.n_query, N_HEAD, 1);
    ggml_tensor * k = ggml_new_tensor_4d(ctx, type_k, D, c.n_kv, N_HEAD_KV, 1);
    ggml_tensor * v = ggml_new_tensor_4d(ctx, type_v, D, c.n_kv, N_HEAD_KV, 1);
    ggml_tensor * mask = ggml_new_tensor_4d(ctx, GGML_TYPE_F16, c.n_kv, c.n_query, 1, 1);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> row(D);
    for (int64_t i = 0; i < ggml_nelements(q); ++i) {
        ((float *) q->data)[i] = 2.0f*normal(rng);
    }
    for (int h = 0; h < N_HEAD_KV; ++h) {
        for (int j = 0; j < c.n_kv; ++j) {
            for (float & x : row) x = normal(rng);
            ggml_quantize_chunk(type_k, row.data(), (char *) k->data + j*k->nb[1] + h*k->nb[2], 0, 1, D, nullptr);
            for (float & x : row) x = normal(rng);
            ggml_quantize_chunk(type_v, row.data(), (char *) v->data + j*v->nb[1] + h*v->nb[2], 0, 1, D, nullptr);
        }
    }
    for (int i = 0; i < c.n_query; ++i) {
        for (int j = 0; j < c.n_kv; ++j) {
            bool visible = true;
            if (c.causal) {
                visible = j <= c.n_kv - c.n_query + i;
            } else if (c.n_seq > 1) {
                visible = j % c.n_seq == i % c.n_seq;
            }
            ((ggml_fp16_t *) mask->data)[(size_t) i*c.n_kv + j] = ggml_fp32_to_fp16(visible ? 0.0f : -INFINITY);
        }
    }
    ggml_tensor * out = ggml_flash_attn_ext(ctx, q, k, v, mask, 1.0f/sqrtf((float) D), 0.0f, 0.0f);
    ggml_cgraph * graph = ggml_new_graph(ctx);
    ggml_build_forward_expand(graph, out);
    ggml_graph_compute_with_ctx(ctx, graph, n_threads);   // warm-up
    const auto start = std::chrono::steady_clock::now();
    for (int it = 0; it < c.iterations; ++it) {
        ggml_graph_compute_with_ctx(ctx, graph, n_threads);
    }
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    ggml_free(ctx);
    return ms / c.iterations;
}

}  // namespace

int main(int argc, char ** argv) {
    const int n_threads = argc > 1 ? atoi(argv[1]) : 2;
    const int repetitions = argc > 2 ? atoi(argv[2]) : 3;
    const ggml_type TURBO3 = (ggml_type) 44;
    const ggml_type pairs[][2] = {{GGML_TYPE_Q8_0, GGML_TYPE_Q8_0}, {GGML_TYPE_Q8_0, TURBO3}, {TURBO3, TURBO3}};
    const bench_case cases[] = {
        {"decode@4096", 1, 4096, 1, false, 200},
        {"decode4x1024", 4, 4096, 4, false, 200},
        {"prefill512@3584", 512, 4096, 1, true, 3},
    };
    std::mt19937 rng(1);
    for (int r = 0; r < repetitions; ++r) {
        for (const auto & pair : pairs) {
            for (const bench_case & c : cases) {
                printf("%s/%s %s %.4f\n", ggml_type_name(pair[0]), ggml_type_name(pair[1]), c.name,
                       time_op(pair[0], pair[1], c, n_threads, rng));
                fflush(stdout);
            }
        }
    }
    return 0;
}
