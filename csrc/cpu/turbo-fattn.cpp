// pyturbo: CPU flash attention over quantized K/V caches.
//
// llama.cpp's CPU flash attention has fast paths (a tiled prefill, a split-KV
// decode) only for F16/F32 caches of one type; any quantized cache falls back
// to a loop that converts one K row and one V row per query row. This path
// takes every other K/V pair (turbo2/3/4, q8_0, q4_0, ..., mixed types) and
// works in tiles:
//
//  - A query tile holds up to Q_TILE rows that share one KV head: the tokens
//    of the batch times the heads of a GQA group, so each K/V tile is
//    dequantized once for all of them.
//  - For each KV tile (KV_TILE rows) K and V are dequantized to F32 once, the
//    scores are Q*K^T (a GEMM for many rows, dot products for few), the online
//    softmax runs over the tile, and V is accumulated with a GEMM.
//  - With few query tiles (decoding), the KV sequence is split into chunks
//    across threads; each writes (max, sum, accumulator) partials per row,
//    and after a barrier the threads merge them per row.
//
// The reference mode (params->use_ref) keeps llama.cpp's per-row loop, which
// is what test-backend-ops compares this path against.

#include "turbo.h"

#include "ggml-cpu-impl.h"
#include "ggml-impl.h"
#include "ops.h"
#include "simd-gemm.h"
#include "vec.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace {

constexpr int Q_TILE  = 64;   // query rows per tile
constexpr int KV_TILE = 64;   // K/V rows per tile
constexpr int GEMM_MIN_ROWS = 8;   // fewer query rows: dot products, no K transpose
constexpr int CHUNKS_PER_THREAD = 8;   // KV chunks per thread when splitting (load balance)

using row_to_f32_t = void (*)(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t n);

void f32_row_copy(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t n) {
    memcpy(y, x, n*sizeof(float));
}

void f16_row_to_f32(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t n) {
    ggml_cpu_fp16_to_fp32((const ggml_fp16_t *) x, y, n);
}

// The fastest row converter for a cache type, nullptr if there is none.
row_to_f32_t kv_row_to_f32(ggml_type type) {
    switch (type) {
        case GGML_TYPE_F32:    return f32_row_copy;
        case GGML_TYPE_F16:    return f16_row_to_f32;
        case GGML_TYPE_TURBO2: return pyturbo_dequantize_row_turbo2;
        case GGML_TYPE_TURBO3: return pyturbo_dequantize_row_turbo3;
        case GGML_TYPE_TURBO4: return pyturbo_dequantize_row_turbo4;
        case GGML_TYPE_TURBO3T: return pyturbo_dequantize_row_turbo3t;
        case GGML_TYPE_TURBO2T: return pyturbo_dequantize_row_turbo2t;
        default:               return (row_to_f32_t) ggml_get_type_traits(type)->to_float;
    }
}

// How the op is cut into work items; the same for the planner and the threads.
struct fattn_plan {
    int64_t DK, DV;
    int64_t n_group_heads;    // query heads per KV head (GQA)
    int64_t n_groups;         // (KV head, query sequence) pairs
    int64_t rows_per_group;   // tokens x n_group_heads
    int64_t tiles_per_group;
    int64_t n_chunks;         // KV chunks (1 unless the KV sequence is split)
    int64_t chunk_size;       // KV rows per chunk, a multiple of KV_TILE
};

bool takes_op(const ggml_tensor * dst) {
    const ggml_tensor * q = dst->src[0];
    const ggml_tensor * k = dst->src[1];
    const ggml_tensor * v = dst->src[2];
    const ggml_tensor * mask = dst->src[3];

    const bool same_float_type = k->type == v->type && (k->type == GGML_TYPE_F16 || k->type == GGML_TYPE_F32);
    if (same_float_type || q->type != GGML_TYPE_F32) {
        return false;   // llama.cpp's tiled and split-KV paths
    }
    if (!kv_row_to_f32(k->type) || !kv_row_to_f32(v->type)) {
        return false;
    }
    if (q->nb[0] != sizeof(float) || k->nb[0] != ggml_type_size(k->type) || v->nb[0] != ggml_type_size(v->type)) {
        return false;   // rows must be contiguous
    }
    if (mask && mask->type != GGML_TYPE_F16) {
        return false;
    }
    // one KV head per GQA group, the same for K and V
    if (q->ne[2] % k->ne[2] != 0 || q->ne[3] % k->ne[3] != 0 || k->ne[2] != v->ne[2] || k->ne[3] != v->ne[3]) {
        return false;
    }
    return true;
}

fattn_plan make_plan(const ggml_tensor * dst, int nth) {
    const ggml_tensor * q = dst->src[0];
    const ggml_tensor * k = dst->src[1];
    const ggml_tensor * v = dst->src[2];

    fattn_plan p;
    p.DK = k->ne[0];
    p.DV = v->ne[0];
    p.n_group_heads   = q->ne[2] / k->ne[2];
    p.n_groups        = k->ne[2] * q->ne[3];
    p.rows_per_group  = q->ne[1] * p.n_group_heads;
    p.tiles_per_group = (p.rows_per_group + Q_TILE - 1) / Q_TILE;

    // Split the KV sequence when there are too few query tiles to keep every
    // thread busy (decoding), as long as each chunk keeps a few KV tiles.
    const int64_t n_kv     = k->ne[1];
    const int64_t n_tiles  = p.n_groups * p.tiles_per_group;
    const int64_t kv_tiles = (n_kv + KV_TILE - 1) / KV_TILE;
    p.n_chunks = 1;
    if (n_tiles < 2*nth && kv_tiles >= 8) {
        // about CHUNKS_PER_THREAD items per thread, and a multiple of nth where possible
        int64_t wanted = (CHUNKS_PER_THREAD*nth + n_tiles - 1) / n_tiles;
        while ((wanted*n_tiles) % nth != 0 && wanted < 2*CHUNKS_PER_THREAD*nth) {
            ++wanted;
        }
        p.n_chunks = std::max<int64_t>(1, std::min(wanted, kv_tiles / 2));
    }
    p.chunk_size = std::max<int64_t>(1, (kv_tiles + p.n_chunks - 1) / p.n_chunks) * KV_TILE;
    p.n_chunks   = std::max<int64_t>(1, (n_kv + p.chunk_size - 1) / p.chunk_size);   // an empty KV still writes zeros
    return p;
}

// Per-thread scratch, in floats.
struct fattn_scratch {
    float * Q;      // Q_TILE x DK, pre-scaled
    float * KQ;     // Q_TILE x KV_TILE: scores, then probabilities
    float * mask;   // Q_TILE x KV_TILE
    float * O;      // Q_TILE x DV accumulators
    float * K;      // KV_TILE x DK, row-major
    float * KT;     // DK x KV_TILE, transposed for the GEMM
    float * V;      // KV_TILE x DV
    float * M;      // Q_TILE running maxima
    float * S;      // Q_TILE running sums
    float * slope;  // Q_TILE ALiBi slopes

    static int64_t floats(const fattn_plan & p) {
        return Q_TILE*p.DK + 2*Q_TILE*KV_TILE + Q_TILE*p.DV + KV_TILE*p.DK + p.DK*KV_TILE + KV_TILE*p.DV + 3*Q_TILE
             + CACHE_LINE_SIZE_F32;
    }

    fattn_scratch(float * base, const fattn_plan & p) {
        Q     = base;
        KQ    = Q    + Q_TILE*p.DK;
        mask  = KQ   + Q_TILE*KV_TILE;
        O     = mask + Q_TILE*KV_TILE;
        K     = O    + Q_TILE*p.DV;
        KT    = K    + KV_TILE*p.DK;
        V     = KT   + p.DK*KV_TILE;
        M     = V    + KV_TILE*p.DV;
        S     = M    + Q_TILE;
        slope = S    + Q_TILE;
    }
};

int64_t partial_floats(const fattn_plan & p) {
    return 2 + p.DV;   // max, sum, accumulator
}

int64_t partials_floats(const fattn_plan & p, const ggml_tensor * dst) {
    if (p.n_chunks == 1) {
        return 0;
    }
    const ggml_tensor * q = dst->src[0];
    return q->ne[1]*q->ne[2]*q->ne[3] * p.n_chunks * partial_floats(p);
}

// Everything a tile needs to know about the op.
struct fattn_op {
    const ggml_tensor * q, * k, * v, * mask, * sinks;
    ggml_tensor * dst;
    row_to_f32_t k_to_f32, v_to_f32;
    float scale, max_bias, logit_softcap, m0, m1;
    uint32_t n_head_log2;

    explicit fattn_op(ggml_tensor * d) : dst(d) {
        q = d->src[0]; k = d->src[1]; v = d->src[2]; mask = d->src[3]; sinks = d->src[4];
        k_to_f32 = kv_row_to_f32(k->type);
        v_to_f32 = kv_row_to_f32(v->type);
        memcpy(&scale,         (const float *) d->op_params + 0, sizeof(float));
        memcpy(&max_bias,      (const float *) d->op_params + 1, sizeof(float));
        memcpy(&logit_softcap, (const float *) d->op_params + 2, sizeof(float));
        if (logit_softcap != 0.0f) {
            scale /= logit_softcap;
        }
        n_head_log2 = 1u << (uint32_t) floor(log2((double) q->ne[2]));
        m0 = powf(2.0f, -(max_bias       ) / n_head_log2);
        m1 = powf(2.0f, -(max_bias / 2.0f) / n_head_log2);
    }

    float alibi_slope(int64_t h) const {
        if (max_bias <= 0.0f) {
            return 1.0f;
        }
        return h < n_head_log2 ? powf(m0, h + 1) : powf(m1, 2*(h - n_head_log2) + 1);
    }
};

// Query row r of a group: token r / n_group_heads, head first_head + r % n_group_heads.
struct group_row {
    int64_t token, head;
};

inline group_row row_of(const fattn_plan & p, int64_t ik2, int64_t r) {
    return { r / p.n_group_heads, ik2*p.n_group_heads + r % p.n_group_heads };
}

// Fills the mask tile for rows [r0, r0+n_rows) and KV [ic, ic+n_kv); false when every entry is -inf.
bool load_mask_tile(const fattn_op & op, const fattn_plan & p, fattn_scratch & w,
                    int64_t ik2, int64_t iq3, int64_t r0, int n_rows, int64_t ic, int n_kv) {
    const ggml_tensor * mask = op.mask;
    bool any = false;
    const ggml_fp16_t * prev = nullptr;
    for (int m = 0; m < n_rows; ++m) {
        const group_row gr = row_of(p, ik2, r0 + m);
        const ggml_fp16_t * mp = (const ggml_fp16_t *) ((const char *) mask->data + gr.token*mask->nb[1]
                + (gr.head % mask->ne[2])*mask->nb[2] + (iq3 % mask->ne[3])*mask->nb[3]) + ic;
        float * row = w.mask + m*KV_TILE;
        if (mp == prev) {
            memcpy(row, row - KV_TILE, n_kv*sizeof(float));   // the heads of one token share a mask row
        } else {
            ggml_cpu_fp16_to_fp32(mp, row, n_kv);
            prev = mp;
        }
        for (int t = 0; !any && t < n_kv; ++t) {
            any = row[t] != -INFINITY;
        }
    }
    return any;
}

// Online softmax of one tile of scores (KQ rows of KV_TILE, already masked and
// -inf padded): rescales O, S for a new maximum and turns KQ into probabilities.
void softmax_tile(const fattn_plan & p, fattn_scratch & w, int n_rows) {
    for (int m = 0; m < n_rows; ++m) {
        float * row = w.KQ + m*KV_TILE;
        float tile_max = -INFINITY;
        ggml_vec_max_f32(KV_TILE, &tile_max, row);
        if (tile_max == -INFINITY) {
            memset(row, 0, KV_TILE*sizeof(float));
            continue;
        }
        const float M_new = std::max(w.M[m], tile_max);
        if (M_new > w.M[m]) {
            const float ms = expf(w.M[m] - M_new);
            ggml_vec_scale_f32(p.DV, w.O + m*p.DV, ms);
            w.S[m] *= ms;
            w.M[m] = M_new;
        }
        w.S[m] += (float) ggml_vec_soft_max_f32(KV_TILE, row, row, M_new);
    }
}

// Attention of query rows [r0, r0+n_rows) of group (ik2, iq3) over KV [c0, c1):
// leaves O, M, S in the scratch (O not yet divided by S).
void attend_tile(const fattn_op & op, const fattn_plan & p, fattn_scratch & w,
                 int64_t ik2, int64_t iq3, int64_t r0, int n_rows, int64_t c0, int64_t c1) {
    const ggml_tensor * q = op.q;
    const ggml_tensor * k = op.k;
    const ggml_tensor * v = op.v;
    const int64_t DK = p.DK;
    const int64_t DV = p.DV;
    const int64_t ik3 = iq3 / (q->ne[3] / k->ne[3]);
    const bool use_gemm = n_rows >= GEMM_MIN_ROWS;

    for (int m = 0; m < n_rows; ++m) {
        const group_row gr = row_of(p, ik2, r0 + m);
        const float * pq = (const float *) ((const char *) q->data + gr.token*q->nb[1] + gr.head*q->nb[2] + iq3*q->nb[3]);
        for (int64_t d = 0; d < DK; ++d) {
            w.Q[m*DK + d] = pq[d]*op.scale;
        }
        w.M[m] = -INFINITY;
        w.S[m] = 0.0f;
        w.slope[m] = op.alibi_slope(gr.head);
    }
    memset(w.O, 0, n_rows*DV*sizeof(float));

    for (int64_t ic = c0; ic < c1; ic += KV_TILE) {
        const int n_kv = (int) std::min<int64_t>(KV_TILE, c1 - ic);

        if (op.mask && !load_mask_tile(op, p, w, ik2, iq3, r0, n_rows, ic, n_kv)) {
            continue;   // fully masked (causal future, other sequences)
        }

        // K tile -> F32 rows, then scores
        for (int t = 0; t < n_kv; ++t) {
            op.k_to_f32((const char *) k->data + (ic + t)*k->nb[1] + ik2*k->nb[2] + ik3*k->nb[3], w.K + t*DK, DK);
        }
        if (use_gemm) {
            for (int t = 0; t < KV_TILE; ++t) {
                const float * kr = w.K + t*DK;
                for (int64_t d = 0; d < DK; ++d) {
                    w.KT[d*KV_TILE + t] = t < n_kv ? kr[d] : 0.0f;
                }
            }
            memset(w.KQ, 0, n_rows*KV_TILE*sizeof(float));
            simd_gemm(w.KQ, w.Q, w.KT, n_rows, (int) DK, KV_TILE);
        } else {
            for (int m = 0; m < n_rows; ++m) {
                for (int t = 0; t < n_kv; ++t) {
                    ggml_vec_dot_f32((int) DK, w.KQ + m*KV_TILE + t, 0, w.Q + m*DK, 0, w.K + t*DK, 0, 1);
                }
            }
        }

        for (int m = 0; m < n_rows; ++m) {
            float * row = w.KQ + m*KV_TILE;
            if (op.logit_softcap != 0.0f) {
                for (int t = 0; t < n_kv; ++t) {
                    row[t] = op.logit_softcap*tanhf(row[t]);
                }
            }
            if (op.mask) {
                const float * mrow = w.mask + m*KV_TILE;
                for (int t = 0; t < n_kv; ++t) {
                    row[t] += w.slope[m]*mrow[t];
                }
            }
            for (int t = n_kv; t < KV_TILE; ++t) {
                row[t] = -INFINITY;
            }
        }

        softmax_tile(p, w, n_rows);

        // V tile -> F32 rows (padding rows zero: they meet probability 0), O += P*V
        for (int t = 0; t < n_kv; ++t) {
            op.v_to_f32((const char *) v->data + (ic + t)*v->nb[1] + ik2*v->nb[2] + ik3*v->nb[3], w.V + t*DV, DV);
        }
        if (n_kv < KV_TILE) {
            memset(w.V + n_kv*DV, 0, (KV_TILE - n_kv)*DV*sizeof(float));
        }
        simd_gemm(w.O, w.KQ, w.V, n_rows, KV_TILE, (int) DV);
    }
}

// Folds the attention sink of head h into (M, S, O).
void add_sink(const fattn_op & op, int64_t h, int64_t DV, float & M, float & S, float * O) {
    const float s = ((const float *) op.sinks->data)[h];
    float ms = 1.0f;
    float vs = 1.0f;
    if (s > M) {
        ms = expf(M - s);
        M = s;
        ggml_vec_scale_f32(DV, O, ms);
    } else {
        vs = expf(s - M);
    }
    S = S*ms + vs;
}

// dst row of (token, head, sequence) = O / S
void write_row(const fattn_op & op, int64_t token, int64_t head, int64_t iq3, float S, float * O, int64_t DV) {
    const ggml_tensor * dst = op.dst;
    ggml_vec_scale_f32(DV, O, S == 0.0f ? 0.0f : 1.0f/S);
    // dst is permuted (0, 2, 1, 3): [DV, heads, tokens, sequences]
    memcpy((char *) dst->data + (iq3*dst->ne[2]*dst->ne[1] + head + token*dst->ne[1])*dst->nb[1], O, DV*sizeof(float));
}

// Work item i: (group, query tile, KV chunk).
void run_item(const fattn_op & op, const fattn_plan & p, fattn_scratch & w, float * partials, int64_t item) {
    const int64_t chunk = item % p.n_chunks;
    const int64_t tile  = (item / p.n_chunks) % p.tiles_per_group;
    const int64_t group = item / (p.n_chunks*p.tiles_per_group);
    const int64_t ik2 = group % op.k->ne[2];
    const int64_t iq3 = group / op.k->ne[2];

    const int64_t r0     = tile*Q_TILE;
    const int     n_rows = (int) std::min<int64_t>(Q_TILE, p.rows_per_group - r0);
    const int64_t c0     = chunk*p.chunk_size;
    const int64_t c1     = std::min<int64_t>(c0 + p.chunk_size, op.k->ne[1]);

    attend_tile(op, p, w, ik2, iq3, r0, n_rows, c0, c1);

    for (int m = 0; m < n_rows; ++m) {
        const group_row gr = row_of(p, ik2, r0 + m);
        float * O = w.O + m*p.DV;
        if (partials) {
            // row index over the whole op: (sequence, head, token)
            const int64_t row = (iq3*op.q->ne[2] + gr.head)*op.q->ne[1] + gr.token;
            float * part = partials + (row*p.n_chunks + chunk)*partial_floats(p);
            part[0] = w.M[m];
            part[1] = w.S[m];
            memcpy(part + 2, O, p.DV*sizeof(float));
        } else {
            if (op.sinks) {
                add_sink(op, gr.head, p.DV, w.M[m], w.S[m], O);
            }
            write_row(op, gr.token, gr.head, iq3, w.S[m], O, p.DV);
        }
    }
}

// Merges the KV-chunk partials of rows ith, ith+nth, ... and writes them.
void merge_partials(const fattn_op & op, const fattn_plan & p, fattn_scratch & w, const float * partials, int ith, int nth) {
    const ggml_tensor * q = op.q;
    const int64_t n_rows = q->ne[1]*q->ne[2]*q->ne[3];
    for (int64_t row = ith; row < n_rows; row += nth) {
        const int64_t token = row % q->ne[1];
        const int64_t head  = (row / q->ne[1]) % q->ne[2];
        const int64_t iq3   = row / (q->ne[1]*q->ne[2]);

        float M = -INFINITY;
        float S = 0.0f;
        float * O = w.O;
        memset(O, 0, p.DV*sizeof(float));
        for (int64_t chunk = 0; chunk < p.n_chunks; ++chunk) {
            const float * part = partials + (row*p.n_chunks + chunk)*partial_floats(p);
            if (part[1] == 0.0f) {
                continue;   // nothing visible in this chunk
            }
            const float M_new = std::max(M, part[0]);
            const float s_old = expf(M - M_new);
            const float s_new = expf(part[0] - M_new);
            for (int64_t d = 0; d < p.DV; ++d) {
                O[d] = O[d]*s_old + part[2 + d]*s_new;
            }
            S = S*s_old + part[1]*s_new;
            M = M_new;
        }
        if (op.sinks) {
            add_sink(op, head, p.DV, M, S, O);
        }
        write_row(op, token, head, iq3, S, O, p.DV);
    }
}

} // namespace

size_t pyturbo_flash_attn_ext_work_size(const ggml_tensor * dst, int n_tasks) {
    if (!takes_op(dst)) {
        return 0;
    }
    const fattn_plan p = make_plan(dst, n_tasks);
    return sizeof(float)*(n_tasks*fattn_scratch::floats(p) + partials_floats(p, dst));
}

bool pyturbo_flash_attn_ext(const ggml_compute_params * params, ggml_tensor * dst) {
    if (params->use_ref || !takes_op(dst)) {
        return false;
    }
    const int ith = params->ith;
    const int nth = params->nth;

    const fattn_op   op(dst);
    const fattn_plan p = make_plan(dst, nth);
    GGML_ASSERT(params->wsize >= pyturbo_flash_attn_ext_work_size(dst, nth));

    fattn_scratch w((float *) params->wdata + ith*fattn_scratch::floats(p), p);
    float * partials = p.n_chunks > 1 ? (float *) params->wdata + nth*fattn_scratch::floats(p) : nullptr;

    const int64_t n_items = p.n_groups*p.tiles_per_group*p.n_chunks;

    // items handed out dynamically: causal masks make them uneven
    if (ith == 0) {
        ggml_threadpool_chunk_set(params->threadpool, nth);
    }
    ggml_barrier(params->threadpool);
    for (int64_t item = ith; item < n_items; item = ggml_threadpool_chunk_add(params->threadpool, 1)) {
        run_item(op, p, w, partials, item);
    }

    if (partials) {
        ggml_barrier(params->threadpool);
        merge_partials(op, p, w, partials, ith, nth);
    }
    return true;
}
