// pyturbo: x86 SIMD kernels of the turbo KV-cache types (AVX-512F, else AVX2).
//
// A block's codes become centroid values by a permute with the codebook held in
// a register: AVX-512 permutexvar looks up 16 lanes in a 16-entry table (turbo4
// directly; turbo2/turbo3 tables are repeated 4x/2x so stray high index bits
// select the same value), AVX2 permutevar8x32 looks up 8 lanes in an 8-entry
// table (turbo4: two lookups and a blend on bit 3 of the code). Values come out
// unscaled; callers multiply by the block scale once. The scalar kernels in
// ../../turbo.c are the reference these must match. The trellis-coded types turbo3t and
// turbo2t decode by AVX2 gathers from their 512/256-entry tables (at the end).

#define GGML_COMMON_IMPL_C
#include "ggml-common.h"

#include "turbo-impl.h"
#include "turbo-quants.h"   // turbo-common.h with the codebooks
#include "ggml-cpu-impl.h"
#include "simd-mappings.h"

#include <assert.h>
#include <string.h>

#if defined(PYTURBO_TURBO_ARCH_X86)

#include <immintrin.h>

#if defined(__AVX512F__)

// 16 floats per vector, 4 vectors per block; value vector v holds elements 16v..16v+15.
#define TURBO_VEC       __m512
#define TURBO_VEC_LANES 16
#define TURBO_VEC_ZERO  _mm512_setzero_ps()
#define TURBO_VEC_SET1  _mm512_set1_ps
#define TURBO_VEC_LOAD  _mm512_loadu_ps
#define TURBO_VEC_STORE _mm512_storeu_ps
#define TURBO_VEC_MUL   _mm512_mul_ps
#define TURBO_VEC_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)   // a*b + c
#define TURBO_VEC_SUM   _mm512_reduce_add_ps

// A table of n (power of two <= 16) floats repeated to fill 16 lanes.
static inline __m512 turbo_table(const float * values, int n) {
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512  head = _mm512_maskz_loadu_ps((__mmask16) ((1u << n) - 1), values);
    return _mm512_permutexvar_ps(_mm512_and_si512(lane, _mm512_set1_epi32(n - 1)), head);
}

static inline __m512i turbo_bytes16(const uint8_t * p) {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *) p));
}

typedef struct { __m512 t2, t3, t4; } turbo_tables;

static inline turbo_tables turbo_tables_load(void) {
    turbo_tables t = { turbo_table(kvalues_turbo2, 4), turbo_table(kvalues_turbo3, 8), turbo_table(kvalues_turbo4, 16) };
    return t;
}

static inline void turbo2_values(const block_turbo2 * b, const turbo_tables * t, __m512 v[4]) {
    const __m512i q = turbo_bytes16(b->qs);   // element 16g+l in bits 2g..2g+1 of byte l
    v[0] = _mm512_permutexvar_ps(q, t->t2);
    v[1] = _mm512_permutexvar_ps(_mm512_srli_epi32(q, 2), t->t2);
    v[2] = _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), t->t2);
    v[3] = _mm512_permutexvar_ps(_mm512_srli_epi32(q, 6), t->t2);
}

static inline __m512 turbo3_group(__m512i lo, const uint8_t * qh, __m512 table) {
    uint16_t high;                            // bit l: high bit of element l of this group
    memcpy(&high, qh, sizeof(high));
    const __m512i code = _mm512_mask_or_epi32(lo, (__mmask16) high, lo, _mm512_set1_epi32(4));
    return _mm512_permutexvar_ps(code, table);
}

static inline void turbo3_values(const block_turbo3 * b, const turbo_tables * t, __m512 v[4]) {
    const __m512i q     = turbo_bytes16(b->qs);
    const __m512i three = _mm512_set1_epi32(3);
    v[0] = turbo3_group(_mm512_and_si512(q, three),                      b->qh + 0, t->t3);
    v[1] = turbo3_group(_mm512_and_si512(_mm512_srli_epi32(q, 2), three), b->qh + 2, t->t3);
    v[2] = turbo3_group(_mm512_and_si512(_mm512_srli_epi32(q, 4), three), b->qh + 4, t->t3);
    v[3] = turbo3_group(_mm512_and_si512(_mm512_srli_epi32(q, 6), three), b->qh + 6, t->t3);
}

static inline void turbo4_values(const block_turbo4 * b, const turbo_tables * t, __m512 v[4]) {
    const __m512i q0 = turbo_bytes16(b->qs);        // elements 0..15 low nibble, 32..47 high
    const __m512i q1 = turbo_bytes16(b->qs + 16);   // elements 16..31 low nibble, 48..63 high
    v[0] = _mm512_permutexvar_ps(q0, t->t4);        // permutexvar reads index bits 0..3 only
    v[1] = _mm512_permutexvar_ps(q1, t->t4);
    v[2] = _mm512_permutexvar_ps(_mm512_srli_epi32(q0, 4), t->t4);
    v[3] = _mm512_permutexvar_ps(_mm512_srli_epi32(q1, 4), t->t4);
}

void pyturbo_pick_codes(const float * GGML_RESTRICT x, float inv_scale, const float * GGML_RESTRICT thr, int nthr, uint8_t * GGML_RESTRICT codes) {
    const __m512 s = _mm512_set1_ps(inv_scale);
    for (int j = 0; j < QK_TURBO; j += 16) {
        const __m512 y = _mm512_mul_ps(_mm512_loadu_ps(x + j), s);
        __m512i code = _mm512_setzero_si512();
        for (int t = 0; t < nthr; ++t) {
            const __mmask16 above = _mm512_cmp_ps_mask(y, _mm512_set1_ps(thr[t]), _CMP_GT_OQ);
            code = _mm512_mask_add_epi32(code, above, code, _mm512_set1_epi32(1));
        }
        _mm_storeu_si128((__m128i *) (codes + j), _mm512_cvtepi32_epi8(code));
    }
}

#else // AVX2

// 8 floats per vector, 8 vectors per block; value vector v holds elements 8v..8v+7.
#define TURBO_VEC       __m256
#define TURBO_VEC_LANES 8
#define TURBO_VEC_ZERO  _mm256_setzero_ps()
#define TURBO_VEC_SET1  _mm256_set1_ps
#define TURBO_VEC_LOAD  _mm256_loadu_ps
#define TURBO_VEC_STORE _mm256_storeu_ps
#define TURBO_VEC_MUL   _mm256_mul_ps
#define TURBO_VEC_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)

static inline float TURBO_VEC_SUM(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

typedef struct { __m256 t2, t3, t4lo, t4hi; } turbo_tables;

static inline turbo_tables turbo_tables_load(void) {
    const __m128 t2 = _mm_loadu_ps(kvalues_turbo2);
    turbo_tables t = {
        _mm256_set_m128(t2, t2),            // repeated: index bit 2 may be set
        _mm256_loadu_ps(kvalues_turbo3),
        _mm256_loadu_ps(kvalues_turbo4),
        _mm256_loadu_ps(kvalues_turbo4 + 8),
    };
    return t;
}

static inline __m256i turbo_bytes8(const uint8_t * p) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *) p));
}

static inline void turbo2_values(const block_turbo2 * b, const turbo_tables * t, __m256 v[8]) {
    for (int h = 0; h < 2; ++h) {
        const __m256i q = turbo_bytes8(b->qs + 8*h);   // elements 16g+8h+l, g = 0..3
        v[0 + h] = _mm256_permutevar8x32_ps(t->t2, q);
        v[2 + h] = _mm256_permutevar8x32_ps(t->t2, _mm256_srli_epi32(q, 2));
        v[4 + h] = _mm256_permutevar8x32_ps(t->t2, _mm256_srli_epi32(q, 4));
        v[6 + h] = _mm256_permutevar8x32_ps(t->t2, _mm256_srli_epi32(q, 6));
    }
}

// code bit 2 of the 8 elements whose high bits are the bits of one qh byte
static inline __m256i turbo3_high(uint8_t qh) {
    const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i set = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(qh), bit), bit);
    return _mm256_and_si256(set, _mm256_set1_epi32(4));
}

static inline void turbo3_values(const block_turbo3 * b, const turbo_tables * t, __m256 v[8]) {
    const __m256i three = _mm256_set1_epi32(3);
    for (int h = 0; h < 2; ++h) {
        const __m256i q = turbo_bytes8(b->qs + 8*h);
        for (int g = 0; g < 4; ++g) {
            __m256i code = _mm256_and_si256(_mm256_srlv_epi32(q, _mm256_set1_epi32(2*g)), three);
            code = _mm256_or_si256(code, turbo3_high(b->qh[2*g + h]));
            v[2*g + h] = _mm256_permutevar8x32_ps(t->t3, code);
        }
    }
}

// 16-entry lookup: the low 3 bits index both halves, bit 3 picks one
static inline __m256 turbo4_lookup(__m256i code, const turbo_tables * t) {
    const __m256 lo = _mm256_permutevar8x32_ps(t->t4lo, code);
    const __m256 hi = _mm256_permutevar8x32_ps(t->t4hi, code);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(code, 28)));
}

static inline void turbo4_values(const block_turbo4 * b, const turbo_tables * t, __m256 v[8]) {
    for (int h = 0; h < 4; ++h) {
        const __m256i q = turbo_bytes8(b->qs + 8*h);    // elements 8h+l low nibble, 32+8h+l high
        v[h]     = turbo4_lookup(q, t);
        v[4 + h] = turbo4_lookup(_mm256_srli_epi32(q, 4), t);
    }
}

void pyturbo_pick_codes(const float * GGML_RESTRICT x, float inv_scale, const float * GGML_RESTRICT thr, int nthr, uint8_t * GGML_RESTRICT codes) {
    const __m256 s = _mm256_set1_ps(inv_scale);
    for (int j = 0; j < QK_TURBO; j += 16) {
        __m256i code[2];
        for (int h = 0; h < 2; ++h) {
            const __m256 y = _mm256_mul_ps(_mm256_loadu_ps(x + j + 8*h), s);
            code[h] = _mm256_setzero_si256();
            for (int t = 0; t < nthr; ++t) {
                const __m256 above = _mm256_cmp_ps(y, _mm256_set1_ps(thr[t]), _CMP_GT_OQ);
                code[h] = _mm256_sub_epi32(code[h], _mm256_castps_si256(above));   // above = -1
            }
        }
        // 16 x int32 -> 16 x uint8; packs work per 128-bit lane, the permute restores the order
        const __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(code[0], code[1]), 0xd8);
        const __m128i b = _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
        _mm_storeu_si128((__m128i *) (codes + j), b);
    }
}

#endif // AVX-512 / AVX2

#include "../turbo-kernels.h"   // TURBO_DEFINE_KERNELS, from the TURBO_VEC_* operations above

TURBO_DEFINE_KERNELS(2)
TURBO_DEFINE_KERNELS(3)
TURBO_DEFINE_KERNELS(4)

// Trellis-coded types: 8 values per step. Value i's state is the window of 6+k bits at
// bit 10+k*i of the block, so the windows of values 8j..8j+7 all lie in the 3 bytes
// (turbo2t) or 4 bytes (turbo3t) from byte 1 + k*j, starting at bit 2: one broadcast,
// a per-lane variable shift and a mask give the 8 states, a gather the 8 table values.
static inline void turbo_tcq_dequantize_avx2(const uint8_t * GGML_RESTRICT x, size_t block_bytes, int k,
                                             const float * GGML_RESTRICT table, float * GGML_RESTRICT y, int64_t n) {
    const __m256i step  = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i shift = _mm256_add_epi32(_mm256_set1_epi32(2), _mm256_mullo_epi32(step, _mm256_set1_epi32(k)));
    const __m256i mask  = _mm256_set1_epi32((64 << k) - 1);
    for (int64_t i = 0; i < n / QK_TURBO; ++i, x += block_bytes, y += QK_TURBO) {
        const uint16_t head = (uint16_t) (x[0] | x[1] << 8);
        const __m256 d = _mm256_set1_ps(GGML_CPU_FP16_TO_FP32((ggml_fp16_t) ((head & 0x3FF) << 5)));
        for (int j = 0; j < QK_TURBO / 8; ++j) {
            const uint8_t * w = x + 1 + k*j;   // the last turbo2t window ends at the block's last byte
            const uint32_t bits = w[0] | (uint32_t) w[1] << 8 | (uint32_t) w[2] << 16 | (k == 3 ? (uint32_t) w[3] << 24 : 0u);
            const __m256i state = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int) bits), shift), mask);
            _mm256_storeu_ps(y + 8*j, _mm256_mul_ps(_mm256_i32gather_ps(table, state, 4), d));
        }
    }
}

void pyturbo_dequantize_row_turbo3t(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) {
    assert(k % QK_TURBO3T == 0);
    turbo_tcq_dequantize_avx2((const uint8_t *) x, sizeof(block_turbo3t), 3, kvalues_turbo3t, y, k);
}

void pyturbo_dequantize_row_turbo2t(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) {
    assert(k % QK_TURBO2T == 0);
    turbo_tcq_dequantize_avx2((const uint8_t *) x, sizeof(block_turbo2t), 2, kvalues_turbo2t, y, k);
}

#endif // PYTURBO_TURBO_ARCH_X86
