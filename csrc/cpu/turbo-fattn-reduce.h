// pyturbo: the reduction order of csrc/cpu/turbo-fattn.cpp, one definition for every path.
//
// A query row's result is a function of its own visible cells only (mask != -inf),
// taken in cell order, whatever else is in the batch, wherever its cells lie in the
// cache, and whichever path (tiles of many rows, one token's rows over gathered
// cells, a KV split across threads) and thread count computes it:
//
//  - score s = Q.K as one FMA chain over the head dimension (simd_gemm, whose every
//    element is such a chain whatever the matrix shape), softcap, + slope*mask;
//  - the row's visible cells form segments of SEGMENT cells (the 1st..2048th, ...);
//    in a segment, cell by cell: a score above the running max M rescales the
//    accumulator by expf(M_old - s), then O += p*V and S += p with p = exp(s - M)
//    (the vectorized exp, elementwise) as one FMA chain per element (S rides in
//    V's extra column of ones, so it is summed by the same chain);
//  - segments are folded in order (fold_segment), then the sink, then O / S.
//
// A tile of rows does this with one GEMM for the rows whose max does not move and
// no segment ends in the tile (most tiles: an FMA chain over zeros, the masked
// cells, is the chain over the visible cells exactly), and run by run for the rest.

#pragma once

#include "ggml-cpu-impl.h"
#include "simd-gemm.h"
#include "vec.h"

#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

constexpr int Q_TILE  = 64;    // query rows per tile
constexpr int KV_TILE = 64;    // K/V cells per tile
constexpr int64_t SEGMENT = 2048;  // visible cells per segment of a row: the unit of the KV split

// Running state of the rows of a tile, in the scratch. O rows are DV + 1 wide, S last.
struct fattn_rows {
    float * M;    // max of the open segment
    float * O;    // accumulators of the open segment
    float * GM;   // max of the folded segments
    float * G;    // folded segments
    int64_t count[Q_TILE];   // visible cells seen so far
};

#if defined(_MSC_VER)
#define PYTURBO_NOINLINE __declspec(noinline)
#else
#define PYTURBO_NOINLINE __attribute__((noinline))
#endif

// G = fold of (GM, G) and the segment (M, O): the merge of two softmax partials.
// Not inlined: every path must run these very instructions.
PYTURBO_NOINLINE void fold_segment(float & GM, float * G, float M, const float * O, int64_t n) {
    if (M == -INFINITY) {
        return;   // an empty segment
    }
    const float M_new = GM > M ? GM : M;
    const float s_old = expf(GM - M_new);
    const float s_new = expf(M - M_new);
    for (int64_t d = 0; d < n; ++d) {
        G[d] = G[d]*s_old + O[d]*s_new;
    }
    GM = M_new;
}

inline void rows_start(fattn_rows & st, int n_rows, int64_t DVp, int64_t first_count) {
    for (int m = 0; m < n_rows; ++m) {
        st.M[m] = -INFINITY;
        st.GM[m] = -INFINITY;
        st.count[m] = first_count;
    }
    memset(st.O, 0, n_rows*DVp*sizeof(float));
    memset(st.G, 0, n_rows*DVp*sizeof(float));
}

// One row of a tile, cell by cell, where its max rises or a segment ends inside the tile.
// With dirty (a V row that is not finite), runs also stop at the cells the row does not
// see: 0*inf is no zero, and another sequence's overflow must not reach this row.
void reduce_row_runs(fattn_rows & st, int m, const float * s, const float * mask, float * P, const float * V,
                     int n_cells, int64_t DVp, bool dirty) {
    float * O = st.O + m*DVp;
    float Mr = st.M[m];
    int64_t c = st.count[m];
    int start = 0;
    for (int t = 0; t < n_cells; ++t) {
        if (mask[t] == -INFINITY) {
            if (dirty) {
                if (t > start) {
                    simd_gemm(O, P + start, V + start*DVp, 1, t - start, (int) DVp);
                }
                start = t + 1;
            }
            continue;
        }
        const bool boundary = c % SEGMENT == 0 && Mr != -INFINITY;
        const bool rise = !boundary && s[t] > Mr && Mr != -INFINITY;
        if (boundary || rise) {
            if (t > start) {
                simd_gemm(O, P + start, V + start*DVp, 1, t - start, (int) DVp);
            }
            start = t;
        }
        if (boundary) {
            fold_segment(st.GM[m], st.G + m*DVp, Mr, O, DVp);
            memset(O, 0, DVp*sizeof(float));
            Mr = -INFINITY;
        }
        if (s[t] > Mr) {
            if (Mr != -INFINITY) {
                ggml_vec_scale_f32((int) DVp, O, expf(Mr - s[t]));
            }
            Mr = s[t];
        }
        ++c;
    }
    if (n_cells > start) {
        simd_gemm(O, P + start, V + start*DVp, 1, n_cells - start, (int) DVp);
    }
    st.M[m] = Mr;
    st.count[m] = c;
    memset(P, 0, KV_TILE*sizeof(float));   // done: the tile's GEMM leaves this row alone
}

// Folds a tile of cells into the rows. In: S (n_rows x KV_TILE scores), mask
// (-inf where a cell is not visible to a row, and past n_cells), V (KV_TILE rows of
// DVp, the last column 1; rows no row sees are zero). P is scratch of S's size.
void reduce_tile(fattn_rows & st, int n_rows, const float * S, const float * mask, float * P, const float * V,
                 int n_cells, int64_t DVp, bool dirty) {
    bool runs[Q_TILE];
    int64_t counts[Q_TILE];
    float maxima[Q_TILE];
    for (int m = 0; m < n_rows; ++m) {
        const float * s  = S + m*KV_TILE;
        const float * mk = mask + m*KV_TILE;
        float * x = P + m*KV_TILE;
        float Mr = st.M[m];
        int64_t c = st.count[m];
        bool run = false;
        for (int t = 0; t < KV_TILE; ++t) {
            if (mk[t] == -INFINITY) {
                x[t] = -INFINITY;
                continue;
            }
            if (c % SEGMENT == 0 && Mr != -INFINITY) {
                run = true;
                Mr = -INFINITY;
            }
            if (s[t] > Mr) {
                run |= Mr != -INFINITY;
                Mr = s[t];
            }
            x[t] = s[t] - Mr;
            ++c;
        }
        runs[m] = run || dirty;
        counts[m] = c;
        maxima[m] = Mr;
    }
    // p = exp(s - M) for the whole tile at once: KV_TILE is a multiple of every SIMD width,
    // so each element takes the vector exp, the same function wherever it sits
    ggml_vec_soft_max_f32(n_rows*KV_TILE, P, P, 0.0f);
    for (int m = 0; m < n_rows; ++m) {
        const float * mk = mask + m*KV_TILE;
        float * p = P + m*KV_TILE;
        for (int t = 0; t < KV_TILE; ++t) {
            p[t] = mk[t] == -INFINITY ? 0.0f : p[t];
        }
        if (runs[m]) {
            reduce_row_runs(st, m, S + m*KV_TILE, mk, p, V, n_cells, DVp, dirty);
        } else {
            st.M[m] = maxima[m];
            st.count[m] = counts[m];
        }
    }
    if (!dirty) {
        simd_gemm(st.O, P, V, n_rows, KV_TILE, (int) DVp);
    }
}

// Folds an attention sink s into (M, S, O).
void add_sink(float s, int64_t DV, float & M, float & S, float * O) {
    float ms = 1.0f;
    float vs = 1.0f;
    if (s > M) {
        ms = expf(M - s);
        M = s;
        ggml_vec_scale_f32((int) DV, O, ms);
    } else {
        vs = expf(s - M);
    }
    S = S*ms + vs;
}

} // namespace
