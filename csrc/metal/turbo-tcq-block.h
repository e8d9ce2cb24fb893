// pyturbo: per-block math of the trellis-coded types turbo3t and turbo2t for Metal: the
// state of a value, the dequantize helpers in the two forms ggml's Metal templates call
// (16 and 4 consecutive values), and the encoder (one thread, one block).
//
// Written once and compiled twice, like turbo-block.h: as Metal, and as host C++ through
// the stand-in <metal_stdlib> in tests/native/metal-host/, where tests/test_metal.py
// requires csrc/turbo-tcq.c's bytes and values bit for bit. Include after turbo-block.h.
//
// The format is csrc/turbo-common.h's: value i = scale * kvalues_turboNt[state_i], state_i
// the 6+k bits of the block's bit string at 10 + k*i. The encoder is the reference's exact
// Viterbi search (csrc/turbo-tcq-encode.h) with the same operations, order and tie-breaking;
// Metal's fast math may still fuse its multiply-adds (see turbo-block.h), which can turn a
// near-tie the other way.
//
// Not yet called by ggml-metal's kernels: turbo-metal.cpp's supports_op does not list these
// types, so their ops run on the CPU backend.

#pragma once

#define TURBO_TCQ_GROUPS (1 << TURBO_TCQ_START_BITS)

// ---- state and scale ------------------------------------------------------------

static inline short turbo_tcq_state(device const uchar * b, short block_bytes, short k, short i) {
    const short bit  = 16 - TURBO_TCQ_START_BITS + k*i;
    const short byte = bit >> 3;
    const uint word = b[byte] | (byte + 1 < block_bytes ? (uint) b[byte + 1] << 8 : 0u);
    return (short) ((word >> (bit & 7)) & ((TURBO_TCQ_GROUPS << k) - 1));
}

// head bits 0-9 are fp16 bits 5..14 of a positive scale
static inline float turbo_tcq_scale(device const uchar * b) {
    const ushort head = (ushort) (b[0] | (b[1] << 8));
    return (float) as_type<half>((ushort) ((head & 0x3FF) << 5));
}

// ---- dequantize -----------------------------------------------------------------
// As turbo-block.h's forms: elements [16*il, 16*il + 16) into a 4x4 matrix, or
// [4*il, 4*il + 4) into a 4-vector. A value is d * kvalues_turboNt[state].

#define TURBO_TCQ_DEQUANTIZE_FORMS(N, K)                                                                \
template <typename type4x4>                                                                             \
void dequantize_turbo##N(device const block_turbo##N * xb, short il, thread type4x4 & reg) {            \
    device const uchar * b = (device const uchar *) xb;                                                 \
    const float d = turbo_tcq_scale(b);                                                                 \
    for (short i = 0; i < 16; ++i) {                                                                    \
        reg[i/4][i%4] = d*kvalues_turbo##N[turbo_tcq_state(b, sizeof(block_turbo##N), K, 16*il + i)];   \
    }                                                                                                   \
}                                                                                                       \
                                                                                                        \
template <typename type4>                                                                               \
void dequantize_turbo##N##_t4(device const block_turbo##N * xb, short il, thread type4 & reg) {         \
    device const uchar * b = (device const uchar *) xb;                                                 \
    const float d = turbo_tcq_scale(b);                                                                 \
    for (short i = 0; i < 4; ++i) {                                                                     \
        reg[i] = d*kvalues_turbo##N[turbo_tcq_state(b, sizeof(block_turbo##N), K, 4*il + i)];           \
    }                                                                                                   \
}

TURBO_TCQ_DEQUANTIZE_FORMS(3t, 3)
TURBO_TCQ_DEQUANTIZE_FORMS(2t, 2)

#undef TURBO_TCQ_DEQUANTIZE_FORMS

// ---- quantize -------------------------------------------------------------------

// The best walk for unit-scale values y (tcq_viterbi, natural state order).
static inline void turbo_tcq_viterbi(thread const float * y, constant const float * values, short k, thread ushort * states) {
    const short n_branch = 1 << k;
    const short n_states = TURBO_TCQ_GROUPS << k;
    float cost[TURBO3T_STATES];
    float next[TURBO3T_STATES];
    float best[TURBO_TCQ_GROUPS];
    uchar back[QK_TURBO][TURBO_TCQ_GROUPS];

    for (short s = 0; s < n_states; ++s) {
        const float e = y[0] - values[s];
        cost[s] = e*e;
    }
    for (short t = 1; t < QK_TURBO; ++t) {
        for (short g = 0; g < TURBO_TCQ_GROUPS; ++g) {   // predecessors of group g: (g << k) | j
            best[g] = cost[g << k];
            back[t][g] = 0;
            for (short j = 1; j < n_branch; ++j) {
                const float c = cost[(g << k) | j];
                if (c < best[g]) {
                    best[g] = c;
                    back[t][g] = (uchar) j;
                }
            }
        }
        for (short s = 0; s < n_states; ++s) {
            const float e = y[t] - values[s];
            next[s] = best[s & (TURBO_TCQ_GROUPS - 1)] + e*e;
        }
        for (short s = 0; s < n_states; ++s) {
            cost[s] = next[s];
        }
    }
    short last = 0;
    for (short s = 1; s < n_states; ++s) {
        if (cost[s] < cost[last]) {
            last = s;
        }
    }
    states[QK_TURBO - 1] = (ushort) last;
    for (short t = QK_TURBO - 1; t > 0; --t) {
        const short g = states[t] & (TURBO_TCQ_GROUPS - 1);
        states[t - 1] = (ushort) ((g << k) | back[t][g]);
    }
}

static inline void turbo_tcq_put_bits(device uchar * out, short pos, short n, uint value) {
    for (short b = 0; b < n; ++b) {
        out[(pos + b) >> 3] |= (uchar) (((value >> b) & 1u) << ((pos + b) & 7));
    }
}

// One block of QK_TURBO floats from src into out (block_bytes bytes), as tcq_quantize_block.
static inline void turbo_tcq_quantize(device const float * src, constant const float * values, short k,
                                      device uchar * out, short block_bytes) {
    for (short b = 0; b < block_bytes; ++b) {
        out[b] = 0;
    }
    float sumsq = 0.0f;
    for (short j = 0; j < QK_TURBO; ++j) {
        sumsq += src[j]*src[j];
    }
    if (sumsq == 0.0f) {
        return;
    }
    if (!(sumsq - sumsq == 0.0f)) {                   // infinite or NaN
        turbo_tcq_put_bits(out, 0, 10, 0x3FF);
        return;
    }
    const float inv = precise::sqrt(precise::divide((float) QK_TURBO, sumsq));
    float  y[QK_TURBO];
    ushort states[QK_TURBO];
    for (short j = 0; j < QK_TURBO; ++j) {
        y[j] = src[j]*inv;
    }
    turbo_tcq_viterbi(y, values, k, states);

    float cc = 0.0f;
    for (short j = 0; j < QK_TURBO; ++j) {
        cc += values[states[j]]*values[states[j]];
    }
    const float d = cc > 0.0f ? precise::sqrt(precise::divide(sumsq, cc)) : precise::sqrt(precise::divide(sumsq, (float) QK_TURBO));
    uint bits = ((uint) as_type<ushort>((half) d) + 16u) >> 5;   // 5-bit mantissa, half up
    bits = bits > 0x3DFu ? 0x3DFu : bits == 0 ? 1u : bits;

    turbo_tcq_put_bits(out, 0, 16 - TURBO_TCQ_START_BITS, bits);
    turbo_tcq_put_bits(out, 16 - TURBO_TCQ_START_BITS, TURBO_TCQ_START_BITS, states[0] & (TURBO_TCQ_GROUPS - 1));
    for (short i = 0; i < QK_TURBO; ++i) {
        turbo_tcq_put_bits(out, 16 + k*i, k, states[i] >> TURBO_TCQ_START_BITS);
    }
}

// The quantize helpers of kernel_cpy_f32_q and kernel_set_rows_q.
static inline void quantize_turbo3t(device const float * src, device block_turbo3t & dst) {
    turbo_tcq_quantize(src, kvalues_turbo3t, 3, (device uchar *) &dst, sizeof(block_turbo3t));
}

static inline void quantize_turbo2t(device const float * src, device block_turbo2t & dst) {
    turbo_tcq_quantize(src, kvalues_turbo2t, 2, (device uchar *) &dst, sizeof(block_turbo2t));
}
