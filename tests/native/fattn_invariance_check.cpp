// Batch invariance and isolation of pyturbo's CPU flash attention (csrc/cpu/turbo-fattn.cpp),
// through ggml's public API: one sequence ("A") computed alone, its cells contiguous, must
// give bit for bit what it gives in a batch with other sequences whose cells are interleaved
// with A's in the cache and hold extreme values (quantized from +-1e4, or bytes 0xFF: NaN
// and inf scales), for every thread count and on every path: decode (a few tokens: token
// segments), prefill (query tiles mixing two sequences) and a long KV split in segments.
// A's rows are also compared with a float64 softmax over its dequantized cells.
//
//     fattn_invariance_check    (links to pyturbo's libggml, libggml-base, libggml-cpu)
//
// Output lines: "<K>/<V> <scenario> <fill>: max_diff=<x> max_err=<y> max_out=<z> runs=<n>",
// max_diff over every batched run against A alone, max_err against float64.

#include "ggml.h"
#include "ggml-cpu.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

namespace {

constexpr int D = 64, N_HEAD = 9, N_HEAD_KV = 3;

struct cache {   // cells x KV heads, quantized
    ggml_type type_k, type_v;
    int n_kv = 0;
    std::vector<std::vector<char>> k, v;   // [head][cell bytes]
};

std::vector<char> quantize_rows(ggml_type type, const std::vector<float> & rows, int n) {
    std::vector<char> out(ggml_row_size(type, D) * n);
    for (int j = 0; j < n; ++j) {
        ggml_quantize_chunk(type, &rows[(size_t) j*D], out.data() + j*ggml_row_size(type, D), 0, 1, D, nullptr);
    }
    return out;
}

// Output [n_query][N_HEAD][D] of FLASH_ATTN_EXT; q [N_HEAD][n_query][D]; mask [n_query][n_kv].
std::vector<float> attend(const cache & c, const std::vector<float> & q, int n_query,
                          const std::vector<float> & mask, int n_threads) {
    ggml_init_params params = { 512u << 20, nullptr, false };
    ggml_context * ctx = ggml_init(params);
    ggml_tensor * tq = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, D, n_query, N_HEAD, 1);
    ggml_tensor * tk = ggml_new_tensor_4d(ctx, c.type_k, D, c.n_kv, N_HEAD_KV, 1);
    ggml_tensor * tv = ggml_new_tensor_4d(ctx, c.type_v, D, c.n_kv, N_HEAD_KV, 1);
    ggml_tensor * tm = ggml_new_tensor_4d(ctx, GGML_TYPE_F16, c.n_kv, n_query, 1, 1);
    for (int h = 0; h < N_HEAD; ++h) {
        for (int i = 0; i < n_query; ++i) {
            memcpy((char *) tq->data + i*tq->nb[1] + h*tq->nb[2], &q[((size_t) h*n_query + i)*D], D*sizeof(float));
        }
    }
    for (int h = 0; h < N_HEAD_KV; ++h) {
        memcpy((char *) tk->data + h*tk->nb[2], c.k[h].data(), c.k[h].size());
        memcpy((char *) tv->data + h*tv->nb[2], c.v[h].data(), c.v[h].size());
    }
    for (size_t e = 0; e < mask.size(); ++e) {
        ((ggml_fp16_t *) tm->data)[e] = ggml_fp32_to_fp16(mask[e]);
    }
    ggml_tensor * out = ggml_flash_attn_ext(ctx, tq, tk, tv, tm, 1.0f/sqrtf((float) D), 0.0f, 0.0f);
    ggml_cgraph * graph = ggml_new_graph(ctx);
    ggml_build_forward_expand(graph, out);
    ggml_graph_compute_with_ctx(ctx, graph, n_threads);
    std::vector<float> result((size_t) n_query*N_HEAD*D);
    for (int i = 0; i < n_query; ++i) {   // out is [D, N_HEAD, n_query]
        memcpy(&result[(size_t) i*N_HEAD*D], (char *) out->data + i*out->nb[2], (size_t) N_HEAD*D*sizeof(float));
    }
    ggml_free(ctx);
    return result;
}

struct scenario {
    const char * name;
    int a_cells;     // cells of sequence A
    int a_queries;   // A's query tokens: its last cells, causal
    int n_kv;        // cells of the shared cache
    int b_queries;   // query tokens of the other sequences in the batch
    int a_stride;    // A's cells after its first half: every a_stride-th cell (decode interleaving)
};

struct sequence_a {
    std::vector<float> k, v, q;   // k, v: [head][cell][D]; q: [N_HEAD][a_queries][D]
};

}  // namespace

int main() {
    const ggml_type TURBO2 = (ggml_type) 43, TURBO3 = (ggml_type) 44, TURBO4 = (ggml_type) 45;
    const ggml_type pairs[][2] = {
        {GGML_TYPE_Q8_0, GGML_TYPE_Q8_0}, {GGML_TYPE_Q8_0, TURBO3}, {TURBO3, TURBO3}, {TURBO2, TURBO2},
        {TURBO4, TURBO4}, {GGML_TYPE_Q4_0, GGML_TYPE_Q4_0}, {GGML_TYPE_Q8_0, GGML_TYPE_F16}, {TURBO4, GGML_TYPE_F16},
    };
    const scenario scenarios[] = {
        {"decode", 300, 1, 1300, 3, 4},     // one token of A with three others: token segments
        {"prefill", 150, 40, 700, 60, 3},   // 40 tokens of A among 60 of B: query tiles of both
        {"split", 2600, 1, 4100, 1, 2},     // 2600 visible cells: two segments across threads
    };
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (const auto & pair : pairs) {
        for (const scenario & s : scenarios) {
            for (const char * fill : {"big", "nan"}) {
                sequence_a a;
                a.k.resize((size_t) N_HEAD_KV*s.a_cells*D);
                a.v.resize(a.k.size());
                a.q.resize((size_t) N_HEAD*s.a_queries*D);
                for (float & x : a.k) x = normal(rng);
                for (float & x : a.v) x = normal(rng);
                for (float & x : a.q) x = 2.0f*normal(rng);

                // A alone: its cells in order at 0..a_cells-1, causal over its queries
                cache alone = { pair[0], pair[1], s.a_cells, {}, {} };
                for (int h = 0; h < N_HEAD_KV; ++h) {
                    std::vector<float> kh(&a.k[(size_t) h*s.a_cells*D], &a.k[(size_t) (h + 1)*s.a_cells*D]);
                    std::vector<float> vh(&a.v[(size_t) h*s.a_cells*D], &a.v[(size_t) (h + 1)*s.a_cells*D]);
                    alone.k.push_back(quantize_rows(pair[0], kh, s.a_cells));
                    alone.v.push_back(quantize_rows(pair[1], vh, s.a_cells));
                }
                const int first_query_cell = s.a_cells - s.a_queries;
                std::vector<float> alone_mask((size_t) s.a_queries*s.a_cells);
                for (int i = 0; i < s.a_queries; ++i) {
                    for (int j = 0; j < s.a_cells; ++j) {
                        alone_mask[(size_t) i*s.a_cells + j] = j <= first_query_cell + i ? 0.0f : -INFINITY;
                    }
                }
                std::vector<std::vector<float>> outputs;
                outputs.push_back(attend(alone, a.q, s.a_queries, alone_mask, 1));
                outputs.push_back(attend(alone, a.q, s.a_queries, alone_mask, 4));
                // and each of A's queries on its own (a decode shape instead of a prefill one)
                if (s.a_queries > 1) {
                    std::vector<float> one((size_t) s.a_queries*N_HEAD*D);
                    for (int i = 0; i < s.a_queries; i += 13) {
                        std::vector<float> qi((size_t) N_HEAD*D);
                        for (int h = 0; h < N_HEAD; ++h) {
                            memcpy(&qi[(size_t) h*D], &a.q[((size_t) h*s.a_queries + i)*D], D*sizeof(float));
                        }
                        std::vector<float> mi(&alone_mask[(size_t) i*s.a_cells], &alone_mask[(size_t) (i + 1)*s.a_cells]);
                        const std::vector<float> r = attend(alone, qi, 1, mi, 2);
                        // scattered into a copy of the batch's output: compared with it below
                        memcpy(&one[(size_t) i*N_HEAD*D], r.data(), r.size()*sizeof(float));
                    }
                    for (int i = 0; i < s.a_queries; ++i) {
                        if (i % 13 != 0) {
                            memcpy(&one[(size_t) i*N_HEAD*D], &outputs[0][(size_t) i*N_HEAD*D], N_HEAD*D*sizeof(float));
                        }
                    }
                    outputs.push_back(one);
                }

                // The batch: A's cells spread over the cache (first half in a block at 17, the rest every
                // a_stride-th cell after it), every other cell another sequence's, holding extremes.
                std::vector<int> a_cell(s.a_cells);
                const int half = s.a_cells/2;
                for (int j = 0; j < s.a_cells; ++j) {
                    a_cell[j] = j < half ? 17 + j : 17 + half + (j - half)*s.a_stride + 1;
                }
                cache batch = { pair[0], pair[1], s.n_kv, {}, {} };
                for (int h = 0; h < N_HEAD_KV; ++h) {
                    std::vector<float> kh((size_t) s.n_kv*D), vh(kh.size());
                    for (size_t e = 0; e < kh.size(); ++e) {
                        kh[e] = (e % 3 == 0 ? -1e4f : 1e4f);
                        vh[e] = (e % 5 == 0 ? 1e4f : -1e4f);
                    }
                    std::vector<char> kq = quantize_rows(pair[0], kh, s.n_kv), vq = quantize_rows(pair[1], vh, s.n_kv);
                    if (!strcmp(fill, "nan")) {
                        std::fill(kq.begin(), kq.end(), (char) 0xFF);
                        std::fill(vq.begin(), vq.end(), (char) 0xFF);
                    }
                    const size_t rk = ggml_row_size(pair[0], D), rv = ggml_row_size(pair[1], D);
                    for (int j = 0; j < s.a_cells; ++j) {
                        memcpy(&kq[a_cell[j]*rk], &alone.k[h][j*rk], rk);
                        memcpy(&vq[a_cell[j]*rv], &alone.v[h][j*rv], rv);
                    }
                    batch.k.push_back(kq);
                    batch.v.push_back(vq);
                }
                // queries: b_queries/3 of the others, then A's, then the rest of the others
                const int n_query = s.a_queries + s.b_queries, a_first = s.b_queries/3;
                std::vector<float> q((size_t) N_HEAD*n_query*D), mask((size_t) n_query*s.n_kv, -INFINITY);
                std::vector<bool> is_a(s.n_kv, false);
                for (int j : a_cell) is_a[j] = true;
                for (int i = 0; i < n_query; ++i) {
                    const bool mine = i >= a_first && i < a_first + s.a_queries;
                    for (int h = 0; h < N_HEAD; ++h) {
                        float * qi = &q[((size_t) h*n_query + i)*D];
                        for (int d = 0; d < D; ++d) {
                            qi[d] = mine ? a.q[((size_t) h*s.a_queries + (i - a_first))*D + d] : normal(rng);
                        }
                    }
                    for (int j = 0; j < s.a_cells && mine; ++j) {
                        if (j <= first_query_cell + (i - a_first)) {
                            mask[(size_t) i*s.n_kv + a_cell[j]] = 0.0f;
                        }
                    }
                    for (int j = 0; j < s.n_kv && !mine; ++j) {   // the others see their own cells
                        mask[(size_t) i*s.n_kv + j] = is_a[j] || j > s.n_kv - 1 - (n_query - i) ? -INFINITY : 0.0f;
                    }
                }
                for (int threads : {1, 2, 3, 4}) {
                    const std::vector<float> r = attend(batch, q, n_query, mask, threads);
                    outputs.emplace_back(r.begin() + (size_t) a_first*N_HEAD*D, r.begin() + (size_t) (a_first + s.a_queries)*N_HEAD*D);
                }

                // float64 reference over A's dequantized cells
                const auto * tk = ggml_get_type_traits(pair[0]);
                const auto * tv = ggml_get_type_traits(pair[1]);
                double max_diff = 0.0, max_err = 0.0, max_out = 0.0;
                std::vector<float> kd((size_t) s.a_cells*D), vd(kd.size());
                for (int h = 0; h < N_HEAD; ++h) {
                    const int hk = h / (N_HEAD/N_HEAD_KV);
                    tk->to_float(alone.k[hk].data(), kd.data(), (int64_t) s.a_cells*D);
                    tv->to_float(alone.v[hk].data(), vd.data(), (int64_t) s.a_cells*D);
                    for (int i = 0; i < s.a_queries; ++i) {
                        const int n_vis = first_query_cell + i + 1;
                        std::vector<double> sc(n_vis);
                        double mx = -INFINITY, sum = 0.0;
                        for (int j = 0; j < n_vis; ++j) {
                            double dot = 0.0;
                            for (int d = 0; d < D; ++d) dot += (double) a.q[((size_t) h*s.a_queries + i)*D + d]*kd[(size_t) j*D + d];
                            sc[j] = dot/sqrt((double) D);
                            mx = std::max(mx, sc[j]);
                        }
                        std::vector<double> o(D, 0.0);
                        for (int j = 0; j < n_vis; ++j) {
                            const double pj = exp(sc[j] - mx);
                            sum += pj;
                            for (int d = 0; d < D; ++d) o[d] += pj*vd[(size_t) j*D + d];
                        }
                        for (int d = 0; d < D; ++d) {
                            const size_t e = ((size_t) i*N_HEAD + h)*D + d;
                            const double want = o[d]/sum;
                            max_err = std::max(max_err, std::fabs(outputs[0][e] - want));
                            max_out = std::max(max_out, std::fabs(want));
                            for (const auto & out : outputs) {
                                const double diff = std::fabs((double) out[e] - outputs[0][e]);
                                max_diff = std::max(max_diff, std::isnan(diff) ? INFINITY : diff);
                            }
                        }
                    }
                }
                printf("%s/%s %s %s: max_diff=%.3g max_err=%.3g max_out=%.3g runs=%zu\n", ggml_type_name(pair[0]),
                       ggml_type_name(pair[1]), s.name, fill, max_diff, max_err, max_out, outputs.size());
                fflush(stdout);
            }
        }
    }
    return 0;
}
