// pyturbo: CPU-backend functions of the trellis-coded types turbo3t and turbo2t.
//
// from_float is the reference encoder (csrc/turbo-tcq-encode.h) compiled here, with the
// instruction sets of this CPU backend: its Viterbi search runs over contiguous rows in a
// layout made for it, so the compiler vectorizes it (docs/results/tcq-encode-speed.md has
// the time per block) and the blocks stay identical (no contraction into FMAs,
// csrc/pyturbo-kernels.cmake). The scalar decoder below is the
// reference the SIMD decoders of arch/<arch>/turbo.c must match; the dot product decodes a
// block with the fastest decoder of this build.

#define GGML_COMMON_IMPL_C
#include "ggml-common.h"

#include "turbo-impl.h"
#include "turbo-tcq.h"      // turbo-common.h, here with the tables
#include "ggml-impl.h"

#include "turbo-tcq-encode.h"

void quantize_row_turbo3t(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k) {
    assert(k % QK_TURBO3T == 0);
    tcq_trellis trellis;
    tcq_trellis_init(&trellis, kvalues_turbo3t, 3);
    for (int64_t i = 0; i < k / QK_TURBO3T; ++i) {
        tcq_quantize_block(x + i * QK_TURBO3T, &trellis, (uint8_t *) y + i * sizeof(block_turbo3t), sizeof(block_turbo3t));
    }
}

void quantize_row_turbo2t(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k) {
    assert(k % QK_TURBO2T == 0);
    tcq_trellis trellis;
    tcq_trellis_init(&trellis, kvalues_turbo2t, 2);
    for (int64_t i = 0; i < k / QK_TURBO2T; ++i) {
        tcq_quantize_block(x + i * QK_TURBO2T, &trellis, (uint8_t *) y + i * sizeof(block_turbo2t), sizeof(block_turbo2t));
    }
}

void pyturbo_dequantize_row_turbo3t_generic(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) {
    dequantize_row_turbo3t((const block_turbo3t *) x, y, k);
}

void pyturbo_dequantize_row_turbo2t_generic(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) {
    dequantize_row_turbo2t((const block_turbo2t *) x, y, k);
}

// Only K without flash attention takes this path; flash attention decodes whole tiles.
static float tcq_vec_dot(int n, const uint8_t * x, size_t block_bytes,
                         void (*decode)(const void * GGML_RESTRICT, float * GGML_RESTRICT, int64_t),
                         const float * GGML_RESTRICT y) {
    float values[QK_TURBO];
    float sum = 0.0f;
    for (int i = 0; i < n / QK_TURBO; ++i, y += QK_TURBO) {
        decode(x + i * block_bytes, values, QK_TURBO);
        for (int j = 0; j < QK_TURBO; ++j) {
            sum += values[j] * y[j];
        }
    }
    return sum;
}

void ggml_vec_dot_turbo3t_f32(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc) {
    assert(nrc == 1);
    assert(n % QK_TURBO3T == 0);
    GGML_UNUSED(nrc); GGML_UNUSED(bs); GGML_UNUSED(bx); GGML_UNUSED(by);
    *s = tcq_vec_dot(n, (const uint8_t *) vx, sizeof(block_turbo3t), pyturbo_dequantize_row_turbo3t, (const float *) vy);
}

void ggml_vec_dot_turbo2t_f32(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc) {
    assert(nrc == 1);
    assert(n % QK_TURBO2T == 0);
    GGML_UNUSED(nrc); GGML_UNUSED(bs); GGML_UNUSED(bx); GGML_UNUSED(by);
    *s = tcq_vec_dot(n, (const uint8_t *) vx, sizeof(block_turbo2t), pyturbo_dequantize_row_turbo2t, (const float *) vy);
}
