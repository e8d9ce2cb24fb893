// pyturbo: per-block math of the turbo KV-cache types for Metal: code lookup,
// the dequantize helpers in the two forms ggml's Metal templates call (16 and 4
// consecutive values), and the quantizer.
//
// Written once and compiled twice: as Metal by the kernels in this folder, and
// as host C++ by tests/test_metal_shim.py, through the stand-in <metal_stdlib>
// in tests/native/metal-host/ (address spaces become nothing, half a 16-bit
// float), which requires these functions to give csrc/turbo-quants.c's bytes
// and values bit for bit. Include after ggml-common.h (GGML_COMMON_DECL_METAL
// and GGML_COMMON_IMPL_METAL) and turbo-common.h.
//
// The quantizer repeats turbo-quants.c's arithmetic operation for operation:
// the same sums in the same order, and division and square root through
// precise::, which are correctly rounded in every math mode (plain / and sqrt
// are not under Metal's default fast math). Fast math still lets the Metal
// compiler fuse or reorder the sums; where it does, a block's scale can differ
// from the CPU's in its last bit and, rarely, a code with it (the host test
// pins the source's arithmetic; on a Mac, test-backend-ops compares with a
// tolerance). Compiling ggml's quantize library with fast math off would take
// that freedom away, for every other type's kernels in it too.

#pragma once

// ---- codes ------------------------------------------------------------------
// Element j (0..QK_TURBO-1) of a block; layouts as documented in turbo-common.h.

static inline uchar turbo2_code(device const block_turbo2 * xb, short j) {
    return (xb->qs[j % 16] >> (2*(j / 16))) & 3;
}

static inline uchar turbo3_code(device const block_turbo3 * xb, short j) {
    const uchar lo = (xb->qs[j % 16] >> (2*(j / 16))) & 3;
    const uchar hi = (xb->qh[j / 8] >> (j % 8)) & 1;
    return (hi << 2) | lo;
}

static inline uchar turbo4_code(device const block_turbo4 * xb, short j) {
    return j < QK_TURBO4/2 ? (xb->qs[j] & 0xf) : (xb->qs[j - QK_TURBO4/2] >> 4);
}

// ---- dequantize ---------------------------------------------------------------
// dequantize_turboN:    elements [16*il, 16*il + 16), il = 0..3, into a 4x4
//                       matrix (column c holds elements 4c..4c+3), as
//                       kernel_get_rows_q, kernel_cpy_q_f32 and the flash
//                       attention matrix kernels call it (nl = 4).
// dequantize_turboN_t4: elements [4*il, 4*il + 4), il = 0..15, as the flash
//                       attention vector kernels call it (nl = 16).
// A value is d * kvalues_turboN[code], the single rounding of the CPU's
// dequantize_row_turboN.

#define TURBO_DEQUANTIZE_FORMS(N)                                                                     \
template <typename type4x4>                                                                           \
void dequantize_turbo##N(device const block_turbo##N * xb, short il, thread type4x4 & reg) {          \
    const float d = xb->d;                                                                            \
    for (short i = 0; i < 16; ++i) {                                                                  \
        reg[i/4][i%4] = d*kvalues_turbo##N[turbo##N##_code(xb, 16*il + i)];                           \
    }                                                                                                 \
}                                                                                                     \
                                                                                                      \
template <typename type4>                                                                             \
void dequantize_turbo##N##_t4(device const block_turbo##N * xb, short il, thread type4 & reg) {       \
    const float d = xb->d;                                                                            \
    for (short i = 0; i < 4; ++i) {                                                                   \
        reg[i] = d*kvalues_turbo##N[turbo##N##_code(xb, 4*il + i)];                                   \
    }                                                                                                 \
}

TURBO_DEQUANTIZE_FORMS(2)
TURBO_DEQUANTIZE_FORMS(3)
TURBO_DEQUANTIZE_FORMS(4)

#undef TURBO_DEQUANTIZE_FORMS

// ---- quantize -----------------------------------------------------------------

// codes[j] = the number of thresholds below x[j]*inv_scale (turbo_pick_codes_ref)
static inline void turbo_pick_codes(device const float * x, float inv_scale, constant const float * thr, short nthr, thread uchar * codes) {
    for (short j = 0; j < QK_TURBO; ++j) {
        const float y = x[j]*inv_scale;
        uchar code = 0;
        for (short t = 0; t < nthr; ++t) {
            code += y > thr[t] ? 1 : 0;
        }
        codes[j] = code;
    }
}

// Picks the codes of one block and returns its scale d (turbo_quantize_block in
// turbo-quants.c, step for step).
static inline float turbo_quantize_block(device const float * x, constant const float * values, constant const float * thr, short nthr, thread uchar * codes) {
    float sumsq = 0.0f;
    for (short j = 0; j < QK_TURBO; ++j) {
        sumsq += x[j]*x[j];
    }
    if (!(sumsq > 0.0f)) {
        // all zero (or NaN): code 0 with a zero scale dequantizes to 0
        for (short j = 0; j < QK_TURBO; ++j) {
            codes[j] = 0;
        }
        return sumsq == 0.0f ? 0.0f : sumsq;
    }

    // first pick: the block scaled to unit variance, sigma = ||x|| / sqrt(QK)
    turbo_pick_codes(x, precise::sqrt(precise::divide((float) QK_TURBO, sumsq)), thr, nthr, codes);

    // re-picks at the least-squares scale of the current codes
    for (short r = 0; r < TURBO_LSQ_REPICKS; ++r) {
        float xc = 0.0f;
        float cc = 0.0f;
        for (short j = 0; j < QK_TURBO; ++j) {
            const float c = values[codes[j]];
            xc += x[j]*c;
            cc += c*c;
        }
        const float d = precise::divide(xc, cc);
        if (!(d > 0.0f)) {
            break;
        }
        turbo_pick_codes(x, precise::divide(1.0f, d), thr, nthr, codes);
    }

    // corrected norm: d * ||values[codes]|| == ||x||
    float cc = 0.0f;
    for (short j = 0; j < QK_TURBO; ++j) {
        cc += values[codes[j]]*values[codes[j]];
    }
    return precise::sqrt(precise::divide(sumsq, cc));
}

// The quantize helpers of kernel_cpy_f32_q and kernel_set_rows_q: one block of
// QK_TURBO floats from src into dst.
static inline void quantize_turbo2(device const float * src, device block_turbo2 & dst) {
    uchar codes[QK_TURBO2];
    dst.d = (half) turbo_quantize_block(src, kvalues_turbo2, kthresh_turbo2, 3, codes);
    for (short j = 0; j < QK_TURBO2/4; ++j) {
        dst.qs[j] = codes[j] | (codes[j + 16] << 2) | (codes[j + 32] << 4) | (codes[j + 48] << 6);
    }
}

static inline void quantize_turbo3(device const float * src, device block_turbo3 & dst) {
    uchar codes[QK_TURBO3];
    dst.d = (half) turbo_quantize_block(src, kvalues_turbo3, kthresh_turbo3, 7, codes);
    for (short j = 0; j < QK_TURBO3/4; ++j) {
        dst.qs[j] = (codes[j] & 3) | ((codes[j + 16] & 3) << 2) | ((codes[j + 32] & 3) << 4) | ((codes[j + 48] & 3) << 6);
    }
    for (short j = 0; j < QK_TURBO3/8; ++j) {
        uchar h = 0;
        for (short b = 0; b < 8; ++b) {
            h |= (codes[8*j + b] >> 2) << b;
        }
        dst.qh[j] = h;
    }
}

static inline void quantize_turbo4(device const float * src, device block_turbo4 & dst) {
    uchar codes[QK_TURBO4];
    dst.d = (half) turbo_quantize_block(src, kvalues_turbo4, kthresh_turbo4, 15, codes);
    for (short j = 0; j < QK_TURBO4/2; ++j) {
        dst.qs[j] = codes[j] | (codes[j + 32] << 4);
    }
}
