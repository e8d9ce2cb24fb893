// pyturbo: dequantize and vec_dot of the turbo types, written once for every
// SIMD architecture (internal; included by arch/<arch>/turbo.c).
//
// The including file defines the vector operations (TURBO_VEC, TURBO_VEC_LANES,
// TURBO_VEC_ZERO, _SET1, _LOAD, _STORE, _MUL, _FMA(a, b, c) = a*b + c, _SUM), a
// turbo_tables type with turbo_tables_load(), and turboN_values(block, tables,
// out) giving the block's unscaled centroid values in QK_TURBO / TURBO_VEC_LANES
// vectors; TURBO_DEFINE_KERNELS(N) then defines pyturbo_dequantize_row_turboN
// and ggml_vec_dot_turboN_f32.
#pragma once

#define TURBO_VECS_PER_BLOCK (QK_TURBO / TURBO_VEC_LANES)

// dequantize and vec_dot for one type, from its turboN_values
#define TURBO_DEFINE_KERNELS(N)                                                                              \
void pyturbo_dequantize_row_turbo##N(const void * GGML_RESTRICT vx, float * GGML_RESTRICT y, int64_t k) {   \
    assert(k % QK_TURBO == 0);                                                                               \
    const block_turbo##N * GGML_RESTRICT x = (const block_turbo##N *) vx;                                    \
    const turbo_tables t = turbo_tables_load();                                                              \
    TURBO_VEC v[TURBO_VECS_PER_BLOCK];                                                                       \
    for (int64_t i = 0; i < k / QK_TURBO; ++i, y += QK_TURBO) {                                              \
        turbo##N##_values(x + i, &t, v);                                                                     \
        const TURBO_VEC d = TURBO_VEC_SET1(GGML_CPU_FP16_TO_FP32(x[i].d));                                   \
        for (int j = 0; j < TURBO_VECS_PER_BLOCK; ++j) {                                                     \
            TURBO_VEC_STORE(y + j*TURBO_VEC_LANES, TURBO_VEC_MUL(v[j], d));                                  \
        }                                                                                                    \
    }                                                                                                        \
}                                                                                                            \
                                                                                                             \
void ggml_vec_dot_turbo##N##_f32(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx,  \
                                 size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc) {             \
    assert(nrc == 1);                                                                                        \
    assert(n % QK_TURBO == 0);                                                                               \
    GGML_UNUSED(nrc); GGML_UNUSED(bs); GGML_UNUSED(bx); GGML_UNUSED(by);                                     \
    const block_turbo##N * GGML_RESTRICT x = (const block_turbo##N *) vx;                                    \
    const float * GGML_RESTRICT y = (const float *) vy;                                                      \
    const turbo_tables t = turbo_tables_load();                                                              \
    TURBO_VEC v[TURBO_VECS_PER_BLOCK];                                                                       \
    TURBO_VEC acc = TURBO_VEC_ZERO;                                                                          \
    for (int i = 0; i < n / QK_TURBO; ++i, y += QK_TURBO) {                                                  \
        turbo##N##_values(x + i, &t, v);                                                                     \
        TURBO_VEC block = TURBO_VEC_MUL(v[0], TURBO_VEC_LOAD(y));                                            \
        for (int j = 1; j < TURBO_VECS_PER_BLOCK; ++j) {                                                     \
            block = TURBO_VEC_FMA(v[j], TURBO_VEC_LOAD(y + j*TURBO_VEC_LANES), block);                       \
        }                                                                                                    \
        acc = TURBO_VEC_FMA(block, TURBO_VEC_SET1(GGML_CPU_FP16_TO_FP32(x[i].d)), acc);                      \
    }                                                                                                        \
    *s = TURBO_VEC_SUM(acc);                                                                                 \
}
