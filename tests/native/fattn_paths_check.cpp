// pyturbo's CPU flash attention (csrc/cpu/turbo-fattn.cpp) cuts the same op two ways:
// query tiles of many rows, or a few tokens' rows over segments of their cells spread
// across threads. Run through ggml's public API on random data, both must give what
// the other gives, bit for bit (one reduction order, csrc/cpu/turbo-fattn-reduce.h):
// this prints the largest difference between each query row computed alone and the
// same row computed in a batch, per K/V pair and KV length.
//
//     fattn_paths_check            (links to pyturbo's libggml, libggml-base, libggml-cpu)
//
// Output lines: "<K>/<V> kv=<n>: max_diff=<x> max_out=<y>".

#include "ggml.h"
#include "ggml-cpu.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

namespace {

struct attention_case {
    ggml_type type_k, type_v;
    int head_size, n_kv, n_head, n_head_kv;
};

// Output [n_query][n_head][head_size] of FLASH_ATTN_EXT over the given rows of Q.
std::vector<float> attend(const attention_case & c, const std::vector<float> & q_rows, int n_query,
                          const std::vector<float> & k_rows, const std::vector<float> & v_rows, int n_threads) {
    const int D = c.head_size;
    ggml_init_params params = { 256u << 20, nullptr, false };
    ggml_context * ctx = ggml_init(params);
    ggml_tensor * q = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, D, n_query, c.n_head, 1);
    ggml_tensor * k = ggml_new_tensor_4d(ctx, c.type_k, D, c.n_kv, c.n_head_kv, 1);
    ggml_tensor * v = ggml_new_tensor_4d(ctx, c.type_v, D, c.n_kv, c.n_head_kv, 1);
    ggml_tensor * mask = ggml_new_tensor_4d(ctx, GGML_TYPE_F16, c.n_kv, n_query, 1, 1);
    for (int h = 0; h < c.n_head; ++h) {
        for (int i = 0; i < n_query; ++i) {
            memcpy((char *) q->data + i*q->nb[1] + h*q->nb[2], &q_rows[(h*n_query + i)*D], D*sizeof(float));
        }
    }
    for (int h = 0; h < c.n_head_kv; ++h) {
        for (int j = 0; j < c.n_kv; ++j) {
            ggml_quantize_chunk(c.type_k, &k_rows[(h*c.n_kv + j)*D], (char *) k->data + j*k->nb[1] + h*k->nb[2], 0, 1, D, nullptr);
            ggml_quantize_chunk(c.type_v, &v_rows[(h*c.n_kv + j)*D], (char *) v->data + j*v->nb[1] + h*v->nb[2], 0, 1, D, nullptr);
        }
    }
    // a causal-looking mask: query i sees all but the last (n_query - 1 - i) cells
    ggml_fp16_t * m = (ggml_fp16_t *) mask->data;
    for (int i = 0; i < n_query; ++i) {
        for (int j = 0; j < c.n_kv; ++j) {
            m[i*c.n_kv + j] = ggml_fp32_to_fp16(j < c.n_kv - (n_query - 1 - i) ? 0.0f : -INFINITY);
        }
    }
    ggml_tensor * out = ggml_flash_attn_ext(ctx, q, k, v, mask, 1.0f/sqrtf((float) D), 0.0f, 0.0f);
    ggml_cgraph * graph = ggml_new_graph(ctx);
    ggml_build_forward_expand(graph, out);
    ggml_graph_compute_with_ctx(ctx, graph, n_threads);
    std::vector<float> result((size_t) n_query*c.n_head*D);
    // out is [D, n_head, n_query]
    for (int i = 0; i < n_query; ++i) {
        memcpy(&result[(size_t) i*c.n_head*D], (char *) out->data + i*out->nb[2], (size_t) c.n_head*D*sizeof(float));
    }
    ggml_free(ctx);
    return result;
}

}  // namespace

int main() {
    const ggml_type TURBO2 = (ggml_type) 43, TURBO3 = (ggml_type) 44, TURBO4 = (ggml_type) 45;
    const ggml_type pairs[][2] = {
        {GGML_TYPE_Q8_0, GGML_TYPE_Q8_0}, {GGML_TYPE_Q8_0, GGML_TYPE_F16}, {GGML_TYPE_Q4_0, GGML_TYPE_Q4_0},
        {TURBO2, TURBO2}, {TURBO3, TURBO3}, {TURBO4, TURBO4}, {GGML_TYPE_Q8_0, TURBO3}, {TURBO4, GGML_TYPE_F16},
    };
    const int n_query = 12;   // x3 heads per KV head: 36 rows, query tiles; one row alone: token segments
    std::mt19937 rng(42);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (const auto & pair : pairs) {
        // 200 and 1000 cells: one segment of a lone row's cells (tests/native/fattn_invariance_check
        // splits 2600 across threads)
        for (int n_kv : {200, 1000}) {
            const attention_case c = { pair[0], pair[1], 64, n_kv, 9, 3 };
            std::vector<float> q((size_t) c.n_head*n_query*c.head_size);
            std::vector<float> k((size_t) c.n_head_kv*n_kv*c.head_size), v(k.size());
            for (float & x : q) x = 2.0f*normal(rng);   // peaked softmax, as trained attention is
            for (float & x : k) x = normal(rng);
            for (float & x : v) x = normal(rng);
            const std::vector<float> batched = attend(c, q, n_query, k, v, 2);
            double max_diff = 0.0, max_out = 0.0;
            for (int i = 0; i < n_query; ++i) {
                // row i alone sees what it saw in the batch: the cells its mask row left visible
                attention_case alone = c;
                alone.n_kv = n_kv - (n_query - 1 - i);
                std::vector<float> q_row((size_t) c.n_head*c.head_size);
                for (int h = 0; h < c.n_head; ++h) {
                    memcpy(&q_row[(size_t) h*c.head_size], &q[((size_t) h*n_query + i)*c.head_size], c.head_size*sizeof(float));
                }
                std::vector<float> k_alone, v_alone;
                for (int h = 0; h < c.n_head_kv; ++h) {
                    const size_t from = (size_t) h*n_kv*c.head_size;
                    k_alone.insert(k_alone.end(), k.begin() + from, k.begin() + from + (size_t) alone.n_kv*c.head_size);
                    v_alone.insert(v_alone.end(), v.begin() + from, v.begin() + from + (size_t) alone.n_kv*c.head_size);
                }
                const std::vector<float> one = attend(alone, q_row, 1, k_alone, v_alone, 2);
                for (size_t e = 0; e < one.size(); ++e) {
                    const float b = batched[(size_t) i*c.n_head*c.head_size + e];
                    max_diff = std::max(max_diff, (double) fabsf(one[e] - b));
                    max_out = std::max(max_out, (double) fabsf(b));
                }
            }
            printf("%s/%s kv=%d: max_diff=%.3g max_out=%.3g\n", ggml_type_name(pair[0]), ggml_type_name(pair[1]), n_kv,
                   max_diff, max_out);
        }
    }
    return 0;
}
