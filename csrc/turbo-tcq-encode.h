// pyturbo: the encoder of the trellis-coded types turbo3t and turbo2t, as static functions
// (internal). Included by csrc/turbo-tcq.c (the reference, in ggml-base) and by
// csrc/cpu/turbo-tcq-cpu.c (the CPU backend's from_float, compiled with the backend's
// instruction sets, where the compiler vectorizes the Viterbi search about 4x further).
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

// The Viterbi costs are kept branch-major: state s lives at slot (s % K) * 64 + s / K
// (K = 2^k branches). The K predecessors of a state, (g << k) | j for its group g = s % 64,
// then sit at slots j * 64 + g, 64 apart, so the best predecessor of all 64 groups is an
// element-wise minimum of K rows of 64, and the new costs are written in contiguous runs:
// both vectorize without gathers.
static int tcq_slot(int state, int k) {
    return ((state & ((1 << k) - 1)) << TURBO_TCQ_START_BITS) | (state >> k);
}

static float tcq_viterbi(const float * GGML_RESTRICT y, const float * GGML_RESTRICT values, int k, uint16_t * GGML_RESTRICT states) {
    assert(k == 2 || k == 3);
    const int n_branch = 1 << k;
    const int n_states = TCQ_GROUPS << k;
    const int n_runs   = TCQ_GROUPS >> k;   // groups per branch row of the transposed minima

    float   table[TCQ_MAX_STATES];          // values[] by slot
    float   cost[TCQ_MAX_STATES];           // by slot
    float   best[TCQ_GROUPS];               // best predecessor cost per group
    float   best_by_slot[TCQ_GROUPS];       // the same, ordered as the slots read them
    uint8_t back[QK_TURBO][TCQ_GROUPS];     // the branch of each group's best predecessor

    for (int s = 0; s < n_states; ++s) {
        table[tcq_slot(s, k)] = values[s];
    }
    // The start bits are free: every state can begin the walk.
    for (int slot = 0; slot < n_states; ++slot) {
        const float e = y[0] - table[slot];
        cost[slot] = e * e;
    }
    for (int t = 1; t < QK_TURBO; ++t) {
        for (int g = 0; g < TCQ_GROUPS; ++g) {
            best[g] = cost[g];
            back[t][g] = 0;
        }
        for (int j = 1; j < n_branch; ++j) {
            for (int g = 0; g < TCQ_GROUPS; ++g) {
                const float c = cost[j * TCQ_GROUPS + g];
                const bool better = c < best[g];    // ties keep the lower branch
                best[g]    = better ? c : best[g];
                back[t][g] = better ? (uint8_t) j : back[t][g];
            }
        }
        // State (c << 6) | g, with g = b*K + a, sits at slot a*64 + c*(64/K) + b.
        for (int a = 0; a < n_branch; ++a) {
            for (int b = 0; b < n_runs; ++b) {
                best_by_slot[a * n_runs + b] = best[b * n_branch + a];
            }
        }
        for (int a = 0; a < n_branch; ++a) {
            for (int c = 0; c < n_branch; ++c) {
                float       * GGML_RESTRICT out  = cost  + a * TCQ_GROUPS + c * n_runs;
                const float * GGML_RESTRICT tab  = table + a * TCQ_GROUPS + c * n_runs;
                const float * GGML_RESTRICT prev = best_by_slot + a * n_runs;
                for (int b = 0; b < n_runs; ++b) {
                    const float e = y[t] - tab[b];
                    out[b] = prev[b] + e * e;
                }
            }
        }
    }

    int   last  = 0;
    float total = cost[tcq_slot(0, k)];
    for (int s = 1; s < n_states; ++s) {
        const float c = cost[tcq_slot(s, k)];
        if (c < total) {
            total = c;
            last  = s;
        }
    }
    states[QK_TURBO - 1] = (uint16_t) last;
    for (int t = QK_TURBO - 1; t > 0; --t) {
        const int g = states[t] & (TCQ_GROUPS - 1);
        states[t - 1] = (uint16_t) ((g << k) | back[t][g]);
    }
    return total;
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

// A Viterbi search: states[QK_TURBO] of the best walk for unit-scale y, and its squared error.
typedef float (*tcq_viterbi_t)(const float * GGML_RESTRICT y, const float * GGML_RESTRICT values, int k, uint16_t * GGML_RESTRICT states);

static void tcq_quantize_block(const float * GGML_RESTRICT x, const float * GGML_RESTRICT values, int k,
                               uint8_t * GGML_RESTRICT out, int block_bytes, tcq_viterbi_t viterbi) {
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
    viterbi(y, values, k, states);

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
