// pyturbo: the encoder of the trellis-coded types turbo3t and turbo2t, as static functions
// (internal). Included by csrc/turbo-tcq.c (the reference, in ggml-base) and by
// csrc/cpu/turbo-tcq-cpu.c (the CPU backend's from_float, compiled with the backend's
// instruction sets, where the compiler vectorizes the Viterbi search).
// Both are built with -ffp-contract=off and every step is elementwise, so the two give the
// same blocks; tests/native/turbo_simd_check.c compares them.
//
// Encoding a block: scale it to unit variance, find the walk through the trellis whose
// reconstruction is closest to it (Viterbi, exact), then store the scale that keeps the
// block's L2 norm (the corrected norm, as the scalar turbo types do: a least-squares scale
// shrinks blocks, which biases attention outputs).
#pragma once

#include "turbo-common.h"

#include <assert.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>

// States that share their predecessors: the 2^6 values of a state's 6 older bits.
#define TCQ_GROUPS (1 << TURBO_TCQ_START_BITS)
#define TCQ_MAX_STATES TURBO3T_STATES

#if defined(__GNUC__)
#define TCQ_ALWAYS_INLINE inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define TCQ_ALWAYS_INLINE __forceinline
#else
#define TCQ_ALWAYS_INLINE inline
#endif

// A trellis: k bits per value, its table (2^(6+k) entries, by state), and the same
// table in the order the search reads it (below). Made once per row, not per block.
typedef struct {
    int           k;
    const float * values;
    float         by_branch[TCQ_MAX_STATES];    // [(j * K + c) * R + b] = values[(c * R + b) * K + j]
} tcq_trellis;

static void tcq_trellis_init(tcq_trellis * trellis, const float * values, int k) {
    const int n_branch = 1 << k;
    const int n_runs   = TCQ_GROUPS >> k;
    trellis->k      = k;
    trellis->values = values;
    for (int c = 0; c < n_branch; ++c) {
        for (int b = 0; b < n_runs; ++b) {
            for (int j = 0; j < n_branch; ++j) {
                trellis->by_branch[(j * n_branch + c) * n_runs + b] = values[(c * n_runs + b) * n_branch + j];
            }
        }
    }
}

// The walk: state s of value t costs best_{t-1}[s % 64] + (y[t] - values[s])^2, where
// best_t[g] is the cheapest walk to any state (g << k) | j, j < K = 2^k (the predecessors the
// states of group g share). Write g = c * R + b (R = 64 / K runs): its K predecessors' own
// groups are b * K + j, whatever c is. So one step, for every j and c, adds a row of R
// costs of groups b * K + j (kept in that "by branch" order, rows[t][j * R + b]) to R
// errors, and takes the minimum over j: contiguous runs the compiler vectorizes, with no
// gathers and no branch bookkeeping. Only the cheapest cost of every group and step is
// kept (64 x 64 floats); the walk back recomputes the K candidate costs of the state it
// is at, with the same operations, and takes the lowest branch among the cheapest, which
// is exactly the choice a forward pass keeping back-pointers would have made.
// k is a literal at both call sites (see tcq_viterbi), so the loop bounds are constants.
static TCQ_ALWAYS_INLINE float tcq_viterbi_k(const float * GGML_RESTRICT y, const tcq_trellis * GGML_RESTRICT trellis,
                                             const int k, uint16_t * GGML_RESTRICT states) {
    const int n_branch = 1 << k;
    const int n_runs   = TCQ_GROUPS >> k;
    const int n_states = TCQ_GROUPS << k;
    const float * GGML_RESTRICT values    = trellis->values;
    const float * GGML_RESTRICT by_branch = trellis->by_branch;

    float rows[QK_TURBO][TCQ_GROUPS];       // rows[t + 1]: best_t by branch; rows[0]: the free start
    float best[TCQ_GROUPS];                 // best_t in group order

    for (int g = 0; g < TCQ_GROUPS; ++g) {
        rows[0][g] = 0.0f;
    }
    for (int t = 0; t + 1 < QK_TURBO; ++t) {
        const float yt = y[t];
        for (int g = 0; g < TCQ_GROUPS; ++g) {
            best[g] = INFINITY;
        }
        for (int j = 0; j < n_branch; ++j) {
            const float * GGML_RESTRICT prev = rows[t] + j * n_runs;
            for (int c = 0; c < n_branch; ++c) {
                const float * GGML_RESTRICT tab = by_branch + (j * n_branch + c) * n_runs;
                float       * GGML_RESTRICT out = best + c * n_runs;
                for (int b = 0; b < n_runs; ++b) {
                    const float e    = yt - tab[b];
                    const float cost = prev[b] + e * e;
                    out[b] = cost < out[b] ? cost : out[b];
                }
            }
        }
        for (int j = 0; j < n_branch; ++j) {
            for (int b = 0; b < n_runs; ++b) {
                rows[t + 1][j * n_runs + b] = best[b * n_branch + j];
            }
        }
    }

    // The cost of state s at value t, from the kept minima of value t - 1.
#define TCQ_COST(t, s) (rows[t][((s) % n_branch) * n_runs + ((s) & (TCQ_GROUPS - 1)) / n_branch] + \
                        (y[t] - values[s]) * (y[t] - values[s]))
    int   last  = 0;
    float total = INFINITY;
    for (int s = 0; s < n_states; ++s) {
        const float cost = TCQ_COST(QK_TURBO - 1, s);
        if (cost < total) {             // ties keep the lower state
            total = cost;
            last  = s;
        }
    }
    states[QK_TURBO - 1] = (uint16_t) last;
    for (int t = QK_TURBO - 1; t > 0; --t) {
        const int g    = states[t] & (TCQ_GROUPS - 1);
        int       pick = g << k;
        float     pick_cost = TCQ_COST(t - 1, pick);
        for (int j = 1; j < n_branch; ++j) {
            const float cost = TCQ_COST(t - 1, (g << k) | j);
            if (cost < pick_cost) {     // ties keep the lower branch
                pick_cost = cost;
                pick      = (g << k) | j;
            }
        }
        states[t - 1] = (uint16_t) pick;
    }
#undef TCQ_COST
    return total;
}

// The best walk for unit-scale y: the trellis state of every value, and its squared error.
static float tcq_viterbi(const float * GGML_RESTRICT y, const tcq_trellis * GGML_RESTRICT trellis, uint16_t * GGML_RESTRICT states) {
    assert(trellis->k == 2 || trellis->k == 3);
    return trellis->k == 3 ? tcq_viterbi_k(y, trellis, 3, states) : tcq_viterbi_k(y, trellis, 2, states);
}

// Head bits of a positive scale: its fp16 with the mantissa rounded to 5 bits (half up,
// carrying into the exponent), kept finite and non-zero.
static uint16_t tcq_scale_bits(float d) {
    const uint32_t h = GGML_FP32_TO_FP16(d);
    uint32_t bits = (h + 16) >> 5;
    if (bits > 0x3DF) {
        bits = 0x3DF;   // exponent 30, mantissa 31: the largest finite scale
    }
    return (uint16_t) (bits == 0 ? 1 : bits);
}

static void tcq_put_bits(uint8_t * out, int pos, int n, unsigned value) {
    for (int b = 0; b < n; ++b) {
        out[(pos + b) >> 3] |= (uint8_t) (((value >> b) & 1u) << ((pos + b) & 7));
    }
}

static void tcq_quantize_block(const float * GGML_RESTRICT x, const tcq_trellis * GGML_RESTRICT trellis,
                               uint8_t * GGML_RESTRICT out, int block_bytes) {
    const float * values = trellis->values;
    const int     k      = trellis->k;
    memset(out, 0, block_bytes);
    float sumsq = 0.0f;
    for (int j = 0; j < QK_TURBO; ++j) {
        sumsq += x[j] * x[j];
    }
    if (sumsq == 0.0f) {
        return;                         // scale 0: an all-zero block
    }
    if (!isfinite(sumsq)) {
        tcq_put_bits(out, 0, 10, 0x3FF); // a NaN scale, so the damage stays visible
        return;
    }
    const float inv = sqrtf(QK_TURBO / sumsq);
    float    y[QK_TURBO];
    uint16_t states[QK_TURBO];
    for (int j = 0; j < QK_TURBO; ++j) {
        y[j] = x[j] * inv;
    }
    tcq_viterbi(y, trellis, states);

    float cc = 0.0f;
    for (int j = 0; j < QK_TURBO; ++j) {
        cc += values[states[j]] * values[states[j]];
    }
    const float d = cc > 0.0f ? sqrtf(sumsq / cc) : sqrtf(sumsq / QK_TURBO);

    tcq_put_bits(out, 0, 16 - TURBO_TCQ_START_BITS, tcq_scale_bits(d));
    tcq_put_bits(out, 16 - TURBO_TCQ_START_BITS, TURBO_TCQ_START_BITS, states[0] & (TCQ_GROUPS - 1));
    for (int i = 0; i < QK_TURBO; ++i) {
        tcq_put_bits(out, 16 + k * i, k, states[i] >> TURBO_TCQ_START_BITS);
    }
}
