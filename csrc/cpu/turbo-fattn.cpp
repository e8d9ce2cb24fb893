// pyturbo: CPU flash attention over quantized K/V caches.
//
// llama.cpp's CPU flash attention has fast paths (a tiled prefill, a split-KV
// decode) only for F16/F32 caches of one type; any quantized cache falls back
// to a loop that converts one K row and one V row per query row. This path
// takes every other K/V pair (turbo2/3/4, q8_0, q4_0, ..., mixed types) and
// works in tiles, with two ways to cut the op into work items:
//
//  - Query tiles: up to Q_TILE rows that share one KV head (the tokens of the
//    batch times the heads of a GQA group), over every KV tile (KV_TILE cells):
//    K and V are dequantized to F32 once per tile for all rows, scores and the
//    V accumulation are GEMMs. Tiles no row sees are skipped.
//  - Token segments, with few query tiles (decoding): one token's heads over one
//    segment of its visible cells, gathered into tiles, the segments spread over
//    the threads; after a barrier each row's segments are folded in order.
//
// Both compute the same reduction, defined once in turbo-fattn-reduce.h: a row's
// result depends on its own visible cells only, bit for bit, so it is the same
// whatever else is in the batch, wherever the cache put its cells, whichever way
// the op is cut and however many threads run it (batch invariance; the server's
// answers do not depend on who else is asking, tests/test_fattn_invariance.py).
//
// The reference mode (params->use_ref) keeps llama.cpp's per-row loop, which
// is what test-backend-ops compares this path against.

#include "turbo.h"

#include "ggml-cpu-impl.h"
#include "ggml-impl.h"
#include "ops.h"
#include "simd-gemm.h"
#include "vec.h"
#include "turbo-fattn-reduce.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace {

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

// How the op is cut into work items; the same for the planner and the threads.
struct fattn_plan {
    int64_t DK, DV, DVp;      // DVp = DV + 1: the accumulators carry the sum S
    int64_t n_group_heads;    // query heads per KV head (GQA)
    int64_t n_groups;         // (KV head, query sequence) pairs
    int64_t rows_per_group;   // tokens x n_group_heads
    int64_t tiles_per_group;
    bool    by_token;         // work items are (group, token, segment), else (group, query tile)
    int64_t n_segments;       // segments per row at most (by_token)
    int64_t n_mask_rows;      // distinct mask rows (token, mask sequence) (by_token)
};

fattn_plan make_plan(const ggml_tensor * dst, int nth) {
    const ggml_tensor * q = dst->src[0];
    const ggml_tensor * k = dst->src[1];
    const ggml_tensor * v = dst->src[2];
    const ggml_tensor * mask = dst->src[3];

    fattn_plan p;
    p.DK  = k->ne[0];
    p.DV  = v->ne[0];
    p.DVp = p.DV + 1;
    p.n_group_heads   = q->ne[2] / k->ne[2];
    p.n_groups        = k->ne[2] * q->ne[3];
    p.rows_per_group  = q->ne[1] * p.n_group_heads;
    p.tiles_per_group = (p.rows_per_group + Q_TILE - 1) / Q_TILE;

    // Token segments when there are too few query tiles to keep every thread busy
    // (decoding: a few tokens), and the heads of a token share its mask row.
    p.by_token    = p.n_groups*p.tiles_per_group < 2*nth && q->ne[1] <= 8 && (!mask || mask->ne[2] == 1);
    p.n_segments  = std::max<int64_t>(1, (k->ne[1] + SEGMENT - 1) / SEGMENT);
    p.n_mask_rows = q->ne[1] * (mask ? std::min(mask->ne[3], q->ne[3]) : 1);
    return p;
}

// Per-thread scratch, in floats.
struct fattn_scratch {
    float * Q;      // Q_TILE x DK, pre-scaled
    float * KQ;     // Q_TILE x KV_TILE scores
    float * mask;   // Q_TILE x KV_TILE
    float * P;      // Q_TILE x KV_TILE probabilities
    float * K;      // KV_TILE x DK, row-major
    float * KT;     // DK x KV_TILE, transposed for the GEMM
    float * V;      // KV_TILE x DVp, the last column 1
    float * slope;  // Q_TILE ALiBi slopes
    fattn_rows rows;

    static int64_t floats(const fattn_plan & p) {
        return Q_TILE*p.DK + 3*Q_TILE*KV_TILE + KV_TILE*p.DK + p.DK*KV_TILE + KV_TILE*p.DVp + Q_TILE
             + 2*Q_TILE*p.DVp + 2*Q_TILE + CACHE_LINE_SIZE_F32;
    }

    fattn_scratch(float * base, const fattn_plan & p) {
        Q      = base;
        KQ     = Q     + Q_TILE*p.DK;
        mask   = KQ    + Q_TILE*KV_TILE;
        P      = mask  + Q_TILE*KV_TILE;
        K      = P     + Q_TILE*KV_TILE;
        KT     = K     + KV_TILE*p.DK;
        V      = KT    + p.DK*KV_TILE;
        slope  = V     + KV_TILE*p.DVp;
        rows.O = slope + Q_TILE;
        rows.G = rows.O + Q_TILE*p.DVp;
        rows.M = rows.G + Q_TILE*p.DVp;
        rows.GM = rows.M + Q_TILE;
    }
};

// by_token: per (row, segment) the segment's (M, O), O with S last
int64_t partial_floats(const fattn_plan & p) {
    return 1 + p.DVp;
}

int64_t partials_floats(const fattn_plan & p, const ggml_tensor * dst) {
    if (!p.by_token) {
        return 0;
    }
    const ggml_tensor * q = dst->src[0];
    return (q->ne[1]*q->ne[2]*q->ne[3] * p.n_segments * partial_floats(p) + 1) / 2 * 2;   // bounds: int64
}

// by_token: per mask row, the first cell of each segment (n_segments + 1 int64, two floats each)
int64_t bounds_floats(const fattn_plan & p, const ggml_tensor * dst) {
    return p.by_token && dst->src[3] ? 2*p.n_mask_rows*(p.n_segments + 1) : 0;
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

    // the mask row of a token (its heads share it where mask->ne[2] == 1)
    const ggml_fp16_t * mask_row(int64_t token, int64_t head, int64_t iq3) const {
        return (const ggml_fp16_t *) ((const char *) mask->data + token*mask->nb[1]
                + (head % mask->ne[2])*mask->nb[2] + (iq3 % mask->ne[3])*mask->nb[3]);
    }
};

// Query row r of a group: token r / n_group_heads, head first_head + r % n_group_heads.
struct group_row {
    int64_t token, head;
};

inline group_row row_of(const fattn_plan & p, int64_t ik2, int64_t r) {
    return { r / p.n_group_heads, ik2*p.n_group_heads + r % p.n_group_heads };
}

// Loads the pre-scaled query rows [r0, r0+n_rows) of group (ik2, iq3) and starts their state.
void start_rows(const fattn_op & op, const fattn_plan & p, fattn_scratch & w,
                int64_t ik2, int64_t iq3, int64_t r0, int n_rows, int64_t first_count) {
    const ggml_tensor * q = op.q;
    for (int m = 0; m < n_rows; ++m) {
        const group_row gr = row_of(p, ik2, r0 + m);
        const float * pq = (const float *) ((const char *) q->data + gr.token*q->nb[1] + gr.head*q->nb[2] + iq3*q->nb[3]);
        for (int64_t d = 0; d < p.DK; ++d) {
            w.Q[m*p.DK + d] = pq[d]*op.scale;
        }
        w.slope[m] = op.alibi_slope(gr.head);
    }
    rows_start(w.rows, n_rows, p.DVp, first_count);
}

// One tile of cells (cells[0..n_cells), in order) for the rows: w.mask already holds
// each row's mask over them (-inf: not visible, and past n_cells); seen[t]: some row sees cell t.
void attend_cells(const fattn_op & op, const fattn_plan & p, fattn_scratch & w, int64_t ik2, int64_t iq3,
                  int n_rows, const int64_t * cells, int n_cells, const bool * seen) {
    const ggml_tensor * k = op.k;
    const ggml_tensor * v = op.v;
    const int64_t DK = p.DK, DVp = p.DVp;
    const int64_t ik3 = iq3 / (op.q->ne[3] / k->ne[3]);

    // K cells -> F32 rows -> transposed (cells nobody sees are zero), then the scores
    for (int t = 0; t < KV_TILE; ++t) {
        float * kr = w.K + t*DK;
        if (t < n_cells && seen[t]) {
            op.k_to_f32((const char *) k->data + cells[t]*k->nb[1] + ik2*k->nb[2] + ik3*k->nb[3], kr, DK);
        } else {
            memset(kr, 0, DK*sizeof(float));
        }
        for (int64_t d = 0; d < DK; ++d) {
            w.KT[d*KV_TILE + t] = kr[d];
        }
    }
    memset(w.KQ, 0, n_rows*KV_TILE*sizeof(float));
    simd_gemm(w.KQ, w.Q, w.KT, n_rows, (int) DK, KV_TILE);
    for (int m = 0; m < n_rows; ++m) {
        float * row = w.KQ + m*KV_TILE;
        const float * mrow = w.mask + m*KV_TILE;
        for (int t = 0; t < n_cells; ++t) {
            if (op.logit_softcap != 0.0f) {
                row[t] = op.logit_softcap*tanhf(row[t]);
            }
            row[t] += w.slope[m]*mrow[t];   // -inf where masked; the reduction goes by the mask
        }
    }

    // V cells -> F32 rows with a 1 for S; zero rows where nobody looks (probability 0 there)
    uint32_t non_finite = 0;
    for (int t = 0; t < KV_TILE; ++t) {
        float * vr = w.V + t*DVp;
        if (t < n_cells && seen[t]) {
            op.v_to_f32((const char *) v->data + cells[t]*v->nb[1] + ik2*v->nb[2] + ik3*v->nb[3], vr, p.DV);
            vr[p.DV] = 1.0f;
            for (int64_t d = 0; d < p.DV; ++d) {
                uint32_t bits;
                memcpy(&bits, vr + d, sizeof(bits));
                non_finite |= (bits & 0x7f800000u) == 0x7f800000u;
            }
        } else {
            memset(vr, 0, DVp*sizeof(float));
        }
    }
    reduce_tile(w.rows, n_rows, w.KQ, w.mask, w.P, w.V, n_cells, DVp, non_finite != 0);
}

// dst row of (token, head, sequence) = G / S, after the sink; G holds the folded segments
void finish_row(const fattn_op & op, const fattn_plan & p, int64_t token, int64_t head, int64_t iq3, float GM, float * G) {
    float S = G[p.DV];
    if (op.sinks) {
        add_sink(((const float *) op.sinks->data)[head], p.DV, GM, S, G);
    }
    ggml_vec_scale_f32(p.DV, G, S == 0.0f ? 0.0f : 1.0f/S);
    // dst is permuted (0, 2, 1, 3): [DV, heads, tokens, sequences]
    const ggml_tensor * dst = op.dst;
    memcpy((char *) dst->data + (iq3*dst->ne[2]*dst->ne[1] + head + token*dst->ne[1])*dst->nb[1], G, p.DV*sizeof(float));
}

// Work item (group, query tile): its rows over every KV tile, then written.
void run_tile_item(const fattn_op & op, const fattn_plan & p, fattn_scratch & w, int64_t item) {
    const int64_t tile  = item % p.tiles_per_group;
    const int64_t group = item / p.tiles_per_group;
    const int64_t ik2 = group % op.k->ne[2];
    const int64_t iq3 = group / op.k->ne[2];
    const int64_t r0 = tile*Q_TILE;
    const int n_rows = (int) std::min<int64_t>(Q_TILE, p.rows_per_group - r0);
    const int64_t n_kv = op.k->ne[1];

    start_rows(op, p, w, ik2, iq3, r0, n_rows, 0);
    int64_t cells[KV_TILE];
    bool seen[KV_TILE];
    for (int64_t ic = 0; ic < n_kv; ic += KV_TILE) {
        const int n_cells = (int) std::min<int64_t>(KV_TILE, n_kv - ic);
        bool any = false;
        for (int t = 0; t < KV_TILE; ++t) {
            cells[t] = ic + t;
            seen[t] = t < n_cells && !op.mask;
        }
        for (int m = 0; m < n_rows; ++m) {
            float * row = w.mask + m*KV_TILE;
            if (!op.mask) {
                std::fill(row, row + n_cells, 0.0f);
            } else if (m > 0 && row_of(p, ik2, r0 + m).token == row_of(p, ik2, r0 + m - 1).token && op.mask->ne[2] == 1) {
                memcpy(row, row - KV_TILE, n_cells*sizeof(float));   // the heads of one token share a mask row
            } else {
                const group_row gr = row_of(p, ik2, r0 + m);
                ggml_cpu_fp16_to_fp32(op.mask_row(gr.token, gr.head, iq3) + ic, row, n_cells);
            }
            std::fill(row + n_cells, row + KV_TILE, -INFINITY);
            for (int t = 0; op.mask && t < n_cells; ++t) {
                seen[t] |= row[t] != -INFINITY;
            }
        }
        for (int t = 0; t < n_cells; ++t) {
            any |= seen[t];
        }
        if (any) {   // else fully masked (causal future, other sequences): nothing to fold
            attend_cells(op, p, w, ik2, iq3, n_rows, cells, n_cells, seen);
        }
    }
    for (int m = 0; m < n_rows; ++m) {
        const group_row gr = row_of(p, ik2, r0 + m);
        fattn_rows & st = w.rows;
        fold_segment(st.GM[m], st.G + m*p.DVp, st.M[m], st.O + m*p.DVp, p.DVp);
        finish_row(op, p, gr.token, gr.head, iq3, st.GM[m], st.G + m*p.DVp);
    }
}

// by_token: the first cell of each segment of each mask row (token, mask sequence),
// rows ith, ith + nth, ...; n_kv past the last.
void find_segments(const fattn_op & op, const fattn_plan & p, int64_t * bounds, int ith, int nth) {
    const int64_t n_kv = op.k->ne[1];
    for (int64_t r = ith; r < p.n_mask_rows; r += nth) {
        const int64_t token = r % op.q->ne[1];
        const ggml_fp16_t * mrow = op.mask_row(token, 0, r / op.q->ne[1]);
        int64_t * b = bounds + r*(p.n_segments + 1);
        int64_t seg = 0, seen = 0;
        for (int64_t c = 0; c < n_kv && seg < p.n_segments; ++c) {
            if (mrow[c] != 0xFC00) {   // -inf in F16
                if (seen % SEGMENT == 0) {
                    b[seg++] = c;
                }
                ++seen;
            }
        }
        for (; seg <= p.n_segments; ++seg) {
            b[seg] = n_kv;
        }
    }
}

// Work item (group, token, segment): the heads of one token over the visible cells of
// one segment, gathered; the segment's (M, O) go to the partials.
void run_token_item(const fattn_op & op, const fattn_plan & p, fattn_scratch & w, const int64_t * bounds,
                    float * partials, int64_t item) {
    const int64_t seg   = item % p.n_segments;
    const int64_t token = (item / p.n_segments) % op.q->ne[1];
    const int64_t group = item / (p.n_segments*op.q->ne[1]);
    const int64_t ik2 = group % op.k->ne[2];
    const int64_t iq3 = group / op.k->ne[2];
    const int n_rows = (int) p.n_group_heads;
    const int64_t n_kv = op.k->ne[1];

    start_rows(op, p, w, ik2, iq3, token*p.n_group_heads, n_rows, seg*SEGMENT);
    int64_t c0 = std::min(seg*SEGMENT, n_kv), c1 = std::min(c0 + SEGMENT, n_kv);
    const ggml_fp16_t * mrow = nullptr;
    if (op.mask) {
        const int64_t * b = bounds + (token + (iq3 % op.mask->ne[3])*op.q->ne[1])*(p.n_segments + 1);
        c0 = b[seg];
        c1 = b[seg + 1];
        mrow = op.mask_row(token, 0, iq3);
    }
    int64_t cells[KV_TILE];
    bool seen[KV_TILE];
    float mvals[KV_TILE];
    int n = 0;
    for (int64_t c = c0; c <= c1; ++c) {
        if (c < c1) {
            const float mv = mrow ? GGML_CPU_FP16_TO_FP32(mrow[c]) : 0.0f;
            if (mv == -INFINITY) {
                continue;
            }
            cells[n] = c;
            seen[n] = true;
            mvals[n++] = mv;
        }
        if (n == KV_TILE || (c == c1 && n > 0)) {
            for (int m = 0; m < n_rows; ++m) {
                float * row = w.mask + m*KV_TILE;
                memcpy(row, mvals, n*sizeof(float));
                std::fill(row + n, row + KV_TILE, -INFINITY);
            }
            attend_cells(op, p, w, ik2, iq3, n_rows, cells, n, seen);
            n = 0;
        }
    }
    for (int m = 0; m < n_rows; ++m) {
        const group_row gr = row_of(p, ik2, token*p.n_group_heads + m);
        // row index over the whole op: (sequence, head, token)
        const int64_t row = (iq3*op.q->ne[2] + gr.head)*op.q->ne[1] + gr.token;
        float * part = partials + (row*p.n_segments + seg)*partial_floats(p);
        part[0] = w.rows.M[m];
        memcpy(part + 1, w.rows.O + m*p.DVp, p.DVp*sizeof(float));
    }
}

// by_token: folds the segments of rows ith, ith+nth, ... in order and writes them.
void merge_segments(const fattn_op & op, const fattn_plan & p, fattn_scratch & w, const float * partials, int ith, int nth) {
    const ggml_tensor * q = op.q;
    const int64_t n_rows = q->ne[1]*q->ne[2]*q->ne[3];
    for (int64_t row = ith; row < n_rows; row += nth) {
        float GM = -INFINITY;
        float * G = w.rows.G;
        memset(G, 0, p.DVp*sizeof(float));
        for (int64_t seg = 0; seg < p.n_segments; ++seg) {
            const float * part = partials + (row*p.n_segments + seg)*partial_floats(p);
            fold_segment(GM, G, part[0], part + 1, p.DVp);
        }
        finish_row(op, p, row % q->ne[1], (row / q->ne[1]) % q->ne[2], row / (q->ne[1]*q->ne[2]), GM, G);
    }
}

} // namespace

size_t pyturbo_flash_attn_ext_work_size(const ggml_tensor * dst, int n_tasks) {
    if (!takes_op(dst)) {
        return 0;
    }
    const fattn_plan p = make_plan(dst, n_tasks);
    return sizeof(float)*(n_tasks*fattn_scratch::floats(p) + partials_floats(p, dst) + bounds_floats(p, dst));
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
    float * partials = (float *) params->wdata + nth*fattn_scratch::floats(p);
    int64_t * bounds = (int64_t *) (partials + partials_floats(p, dst));

    if (p.by_token && op.mask) {
        find_segments(op, p, bounds, ith, nth);
    }
    const int64_t n_items = p.by_token ? p.n_groups*op.q->ne[1]*p.n_segments : p.n_groups*p.tiles_per_group;

    // items handed out dynamically: causal masks make them uneven
    if (ith == 0) {
        ggml_threadpool_chunk_set(params->threadpool, nth);
    }
    ggml_barrier(params->threadpool);
    for (int64_t item = ith; item < n_items; item = ggml_threadpool_chunk_add(params->threadpool, 1)) {
        if (p.by_token) {
            run_token_item(op, p, w, bounds, partials, item);
        } else {
            run_tile_item(op, p, w, item);
        }
    }

    if (p.by_token) {
        ggml_barrier(params->threadpool);
        merge_segments(op, p, w, partials, ith, nth);
    }
    return true;
}
