// pyturbo: CPU kernels of the turbo KV-cache types, scalar reference versions.
//
// These are the *_generic functions of turbo-impl.h: the reference that the
// SIMD kernels in arch/<arch>/turbo.c must match, and the kernels themselves on
// targets without one. quantize_row_turboN (from_float) is shared: the block
// scale is computed by turbo-quants.c, only the code picker is per arch.
//
// vec_dot_type is F32: the query stays exact (no q8_0 rounding on top of a
// 2-4 bit key, which matters most for the fragile symmetric configurations),
// the FA scratch for Q already holds DK floats, and a centroid-table lookup
// times a float is as cheap as an int8 product once vectorised (the 8- and
// 16-entry tables fit one or two permute registers).

#define GGML_COMMON_IMPL_C
#include "ggml-common.h"

#include "turbo-impl.h"
#include "turbo-quants.h"   // includes turbo-common.h, here with the codebooks
#include "ggml-cpu-impl.h"
#include "simd-mappings.h"

#include <assert.h>

void quantize_row_turbo2(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k) {
    quantize_row_turbo2_impl(x, (block_turbo2 *) y, k, pyturbo_pick_codes);
}

void quantize_row_turbo3(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k) {
    quantize_row_turbo3_impl(x, (block_turbo3 *) y, k, pyturbo_pick_codes);
}

void quantize_row_turbo4(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k) {
    quantize_row_turbo4_impl(x, (block_turbo4 *) y, k, pyturbo_pick_codes);
}

void pyturbo_pick_codes_generic(const float * GGML_RESTRICT x, float inv_scale, const float * GGML_RESTRICT thr, int nthr, uint8_t * GGML_RESTRICT codes) {
    turbo_pick_codes_ref(x, inv_scale, thr, nthr, codes);
}

void pyturbo_dequantize_row_turbo2_generic(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) {
    dequantize_row_turbo2((const block_turbo2 *) x, y, k);
}

void pyturbo_dequantize_row_turbo3_generic(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) {
    dequantize_row_turbo3((const block_turbo3 *) x, y, k);
}

void pyturbo_dequantize_row_turbo4_generic(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) {
    dequantize_row_turbo4((const block_turbo4 *) x, y, k);
}

void ggml_vec_dot_turbo2_f32_generic(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc) {
    assert(nrc == 1);
    assert(n % QK_TURBO2 == 0);
    GGML_UNUSED(nrc); GGML_UNUSED(bs); GGML_UNUSED(bx); GGML_UNUSED(by);

    const block_turbo2 * GGML_RESTRICT x = (const block_turbo2 *) vx;
    const float        * GGML_RESTRICT y = (const float *) vy;
    const int nb = n / QK_TURBO2;

    float sumf = 0.0f;
    for (int i = 0; i < nb; ++i, y += QK_TURBO2) {
        float sum = 0.0f;
        for (int j = 0; j < QK_TURBO2/4; ++j) {
            const uint8_t q = x[i].qs[j];
            sum += kvalues_turbo2[(q >> 0) & 3] * y[j +  0]
                 + kvalues_turbo2[(q >> 2) & 3] * y[j + 16]
                 + kvalues_turbo2[(q >> 4) & 3] * y[j + 32]
                 + kvalues_turbo2[(q >> 6) & 3] * y[j + 48];
        }
        sumf += GGML_CPU_FP16_TO_FP32(x[i].d) * sum;
    }
    *s = sumf;
}

void ggml_vec_dot_turbo3_f32_generic(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc) {
    assert(nrc == 1);
    assert(n % QK_TURBO3 == 0);
    GGML_UNUSED(nrc); GGML_UNUSED(bs); GGML_UNUSED(bx); GGML_UNUSED(by);

    const block_turbo3 * GGML_RESTRICT x = (const block_turbo3 *) vx;
    const float        * GGML_RESTRICT y = (const float *) vy;
    const int nb = n / QK_TURBO3;

    float sumf = 0.0f;
    for (int i = 0; i < nb; ++i, y += QK_TURBO3) {
        float sum = 0.0f;
        for (int g = 0; g < 4; ++g) {           // element j = 16*g + l
            const int shift = 2*g;
            for (int l = 0; l < 16; ++l) {
                const int j  = 16*g + l;
                const int lo = (x[i].qs[l] >> shift) & 3;
                const int hi = (x[i].qh[j >> 3] >> (j & 7)) & 1;
                sum += kvalues_turbo3[(hi << 2) | lo] * y[j];
            }
        }
        sumf += GGML_CPU_FP16_TO_FP32(x[i].d) * sum;
    }
    *s = sumf;
}

void ggml_vec_dot_turbo4_f32_generic(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc) {
    assert(nrc == 1);
    assert(n % QK_TURBO4 == 0);
    GGML_UNUSED(nrc); GGML_UNUSED(bs); GGML_UNUSED(bx); GGML_UNUSED(by);

    const block_turbo4 * GGML_RESTRICT x = (const block_turbo4 *) vx;
    const float        * GGML_RESTRICT y = (const float *) vy;
    const int nb = n / QK_TURBO4;

    float sumf = 0.0f;
    for (int i = 0; i < nb; ++i, y += QK_TURBO4) {
        float sum = 0.0f;
        for (int j = 0; j < QK_TURBO4/2; ++j) {
            const uint8_t q = x[i].qs[j];
            sum += kvalues_turbo4[q & 0xf] * y[j] + kvalues_turbo4[q >> 4] * y[j + 32];
        }
        sumf += GGML_CPU_FP16_TO_FP32(x[i].d) * sum;
    }
    *s = sumf;
}
