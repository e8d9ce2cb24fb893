// pyturbo: ARM NEON (AArch64) kernels of the turbo KV-cache types.
//
// Codes become centroid values with vqtbl: the codebook's bytes sit in one,
// two or four q registers (16, 32, 64 bytes for turbo2/3/4), and each code c
// is spread to the four byte indices 4c..4c+3 of its float. One vqtbl then
// gathers four whole floats. The scalar kernels in ../../turbo.c are the
// reference these must match. The trellis-coded turbo3t/turbo2t decode at the end.

#define GGML_COMMON_IMPL_C
#include "ggml-common.h"

#include "turbo-impl.h"
#include "turbo-quants.h"   // turbo-common.h with the codebooks
#include "ggml-cpu-impl.h"
#include "simd-mappings.h"

#include <assert.h>

#if defined(PYTURBO_TURBO_ARCH_ARM)

#include <arm_neon.h>

typedef struct { uint8x16_t t2; uint8x16x2_t t3; uint8x16x4_t t4; } turbo_tables;

static inline turbo_tables turbo_tables_load(void) {
    turbo_tables t;
    t.t2 = vld1q_u8((const uint8_t *) kvalues_turbo2);
    t.t3 = vld1q_u8_x2((const uint8_t *) kvalues_turbo3);
    t.t4 = vld1q_u8_x4((const uint8_t *) kvalues_turbo4);
    return t;
}

// Byte indices of the floats of codes 4q..4q+3 of c4 (= 4 * code).
static inline uint8x16_t turbo_float_bytes(uint8x16_t c4, int quarter) {
    static const uint8_t spread[4][16] = {
        { 0, 0, 0, 0,  1, 1, 1, 1,  2, 2, 2, 2,  3, 3, 3, 3},
        { 4, 4, 4, 4,  5, 5, 5, 5,  6, 6, 6, 6,  7, 7, 7, 7},
        { 8, 8, 8, 8,  9, 9, 9, 9, 10,10,10,10, 11,11,11,11},
        {12,12,12,12, 13,13,13,13, 14,14,14,14, 15,15,15,15},
    };
    static const uint8_t byte_of_float[16] = {0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3};
    return vaddq_u8(vqtbl1q_u8(c4, vld1q_u8(spread[quarter])), vld1q_u8(byte_of_float));
}

// 16 codes -> 16 values in v[0..3]
static inline void turbo2_lookup16(uint8x16_t codes, float32x4_t v[4], const turbo_tables * t) {
    const uint8x16_t c4 = vshlq_n_u8(codes, 2);
    for (int q = 0; q < 4; ++q) {
        v[q] = vreinterpretq_f32_u8(vqtbl1q_u8(t->t2, turbo_float_bytes(c4, q)));
    }
}

static inline void turbo3_lookup16(uint8x16_t codes, float32x4_t v[4], const turbo_tables * t) {
    const uint8x16_t c4 = vshlq_n_u8(codes, 2);
    for (int q = 0; q < 4; ++q) {
        v[q] = vreinterpretq_f32_u8(vqtbl2q_u8(t->t3, turbo_float_bytes(c4, q)));
    }
}

static inline void turbo4_lookup16(uint8x16_t codes, float32x4_t v[4], const turbo_tables * t) {
    const uint8x16_t c4 = vshlq_n_u8(codes, 2);
    for (int q = 0; q < 4; ++q) {
        v[q] = vreinterpretq_f32_u8(vqtbl4q_u8(t->t4, turbo_float_bytes(c4, q)));
    }
}

// value vector v holds elements 4v..4v+3
static inline void turbo2_values(const block_turbo2 * b, const turbo_tables * t, float32x4_t v[16]) {
    const uint8x16_t q    = vld1q_u8(b->qs);   // element 16g+l in bits 2g..2g+1 of byte l
    const uint8x16_t mask = vdupq_n_u8(3);
    turbo2_lookup16(vandq_u8(q, mask),                v +  0, t);
    turbo2_lookup16(vandq_u8(vshrq_n_u8(q, 2), mask), v +  4, t);
    turbo2_lookup16(vandq_u8(vshrq_n_u8(q, 4), mask), v +  8, t);
    turbo2_lookup16(vshrq_n_u8(q, 6),                 v + 12, t);
}

// code bit 2 of the 16 elements of group g: bits of qh[2g] (l < 8) and qh[2g+1]
static inline uint8x16_t turbo3_high(const uint8_t * qh) {
    static const uint8_t bit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t h = vcombine_u8(vdup_n_u8(qh[0]), vdup_n_u8(qh[1]));
    return vandq_u8(vtstq_u8(h, vld1q_u8(bit)), vdupq_n_u8(4));
}

static inline void turbo3_values(const block_turbo3 * b, const turbo_tables * t, float32x4_t v[16]) {
    const uint8x16_t q    = vld1q_u8(b->qs);
    const uint8x16_t mask = vdupq_n_u8(3);
    turbo3_lookup16(vorrq_u8(vandq_u8(q, mask),                turbo3_high(b->qh + 0)), v +  0, t);
    turbo3_lookup16(vorrq_u8(vandq_u8(vshrq_n_u8(q, 2), mask), turbo3_high(b->qh + 2)), v +  4, t);
    turbo3_lookup16(vorrq_u8(vandq_u8(vshrq_n_u8(q, 4), mask), turbo3_high(b->qh + 4)), v +  8, t);
    turbo3_lookup16(vorrq_u8(vshrq_n_u8(q, 6),                 turbo3_high(b->qh + 6)), v + 12, t);
}

static inline void turbo4_values(const block_turbo4 * b, const turbo_tables * t, float32x4_t v[16]) {
    const uint8x16_t q0   = vld1q_u8(b->qs);        // elements 0..15 low nibble, 32..47 high
    const uint8x16_t q1   = vld1q_u8(b->qs + 16);   // elements 16..31 low nibble, 48..63 high
    const uint8x16_t mask = vdupq_n_u8(15);
    turbo4_lookup16(vandq_u8(q0, mask), v +  0, t);
    turbo4_lookup16(vandq_u8(q1, mask), v +  4, t);
    turbo4_lookup16(vshrq_n_u8(q0, 4),  v +  8, t);
    turbo4_lookup16(vshrq_n_u8(q1, 4),  v + 12, t);
}

void pyturbo_pick_codes(const float * GGML_RESTRICT x, float inv_scale, const float * GGML_RESTRICT thr, int nthr, uint8_t * GGML_RESTRICT codes) {
    const float32x4_t s = vdupq_n_f32(inv_scale);
    for (int j = 0; j < QK_TURBO; j += 16) {
        uint32x4_t code[4];
        for (int q = 0; q < 4; ++q) {
            const float32x4_t y = vmulq_f32(vld1q_f32(x + j + 4*q), s);
            code[q] = vdupq_n_u32(0);
            for (int t = 0; t < nthr; ++t) {
                code[q] = vsubq_u32(code[q], vcgtq_f32(y, vdupq_n_f32(thr[t])));   // above = all ones = -1
            }
        }
        const uint16x8_t lo = vcombine_u16(vmovn_u32(code[0]), vmovn_u32(code[1]));
        const uint16x8_t hi = vcombine_u16(vmovn_u32(code[2]), vmovn_u32(code[3]));
        vst1q_u8(codes + j, vcombine_u8(vmovn_u16(lo), vmovn_u16(hi)));
    }
}

// 4 floats per vector, 16 vectors per block; value vector v holds elements 4v..4v+3.
#define TURBO_VEC       float32x4_t
#define TURBO_VEC_LANES 4
#define TURBO_VEC_ZERO  vdupq_n_f32(0.0f)
#define TURBO_VEC_SET1  vdupq_n_f32
#define TURBO_VEC_LOAD  vld1q_f32
#define TURBO_VEC_STORE vst1q_f32
#define TURBO_VEC_MUL   vmulq_f32
#define TURBO_VEC_FMA(a, b, c) vfmaq_f32(c, a, b)   // a*b + c
#define TURBO_VEC_SUM   vaddvq_f32

#include "../turbo-kernels.h"

TURBO_DEFINE_KERNELS(2)
TURBO_DEFINE_KERNELS(3)
TURBO_DEFINE_KERNELS(4)

// Trellis-coded types: 8 values per step from the 3 (turbo2t) or 4 (turbo3t) bytes at
// 1 + k*j whose bits 2.. hold their windows (see the x86 kernel); NEON has no gather,
// so the 8 table values are loaded one by one and scaled 4 at a time.
static inline void turbo_tcq_dequantize_neon(const uint8_t * GGML_RESTRICT x, size_t block_bytes, int k,
                                             const float * GGML_RESTRICT table, float * GGML_RESTRICT y, int64_t n) {
    const uint32_t mask = (64u << k) - 1;
    for (int64_t i = 0; i < n / QK_TURBO; ++i, x += block_bytes, y += QK_TURBO) {
        const uint16_t head = (uint16_t) (x[0] | x[1] << 8);
        const float32x4_t d = vdupq_n_f32(GGML_CPU_FP16_TO_FP32((ggml_fp16_t) ((head & 0x3FF) << 5)));
        for (int j = 0; j < QK_TURBO / 8; ++j) {
            const uint8_t * w = x + 1 + k*j;
            const uint32_t bits = (w[0] | (uint32_t) w[1] << 8 | (uint32_t) w[2] << 16 | (k == 3 ? (uint32_t) w[3] << 24 : 0u)) >> 2;
            float v[8];
            for (int l = 0; l < 8; ++l) {
                v[l] = table[(bits >> (k*l)) & mask];
            }
            vst1q_f32(y + 8*j,     vmulq_f32(vld1q_f32(v),     d));
            vst1q_f32(y + 8*j + 4, vmulq_f32(vld1q_f32(v + 4), d));
        }
    }
}

void pyturbo_dequantize_row_turbo3t(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) {
    assert(k % QK_TURBO3T == 0);
    turbo_tcq_dequantize_neon((const uint8_t *) x, sizeof(block_turbo3t), 3, kvalues_turbo3t, y, k);
}

void pyturbo_dequantize_row_turbo2t(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) {
    assert(k % QK_TURBO2T == 0);
    turbo_tcq_dequantize_neon((const uint8_t *) x, sizeof(block_turbo2t), 2, kvalues_turbo2t, y, k);
}

#endif // PYTURBO_TURBO_ARCH_ARM
