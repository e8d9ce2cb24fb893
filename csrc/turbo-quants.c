// pyturbo: reference quantizer / dequantizer for turbo2, turbo3, turbo4.
//
// A block of QK_TURBO values (already rotated by llama.cpp's Hadamard
// transform) is coded as one fp16 scale d plus one Lloyd-Max code per value:
// x[j] ~ d * kvalues_turboN[code[j]]. No rotation happens here.
//
// Codes: picked against the fixed thresholds of turbo-common.h after scaling
// the block to unit variance, then re-picked TURBO_LSQ_REPICKS times at the
// least-squares scale of the previous codes (each re-pick lowers the block's
// squared error). Scale: the corrected norm, so the dequantized block keeps the
// input's L2 norm (the least-squares scale shrinks blocks, which biases
// attention outputs). Every other quantizer of these types (CPU from_float,
// later CUDA/Metal) must reproduce these codes exactly.
//
// On SmolLM2-135M this gave the lowest KLD of the three scales measured (corrected
// norm, least squares, both) as V behind a q8_0 K, the configuration we
// recommend (docs/results/kld-smollm2.md).

#define GGML_COMMON_IMPL_C
#include "ggml-common.h"

#include "turbo-quants.h"
#include "ggml-impl.h"

#include <assert.h>
#include <math.h>
#include <string.h>

bool ggml_is_runtime_only_type(enum ggml_type type) {
    return type == GGML_TYPE_TURBO2 || type == GGML_TYPE_TURBO3 || type == GGML_TYPE_TURBO4 ||
           type == GGML_TYPE_TURBO3T || type == GGML_TYPE_TURBO2T;
}

void turbo_pick_codes_ref(const float * GGML_RESTRICT x, float inv_scale, const float * GGML_RESTRICT thr, int nthr, uint8_t * GGML_RESTRICT codes) {
    for (int j = 0; j < QK_TURBO; ++j) {
        const float y = x[j] * inv_scale;
        int code = 0;   // the number of thresholds below y
        for (int t = 0; t < nthr; ++t) {
            code += y > thr[t];
        }
        codes[j] = (uint8_t) code;
    }
}

// Least-squares scale of a block for its codes: d = <x, c> / <c, c>.
static float turbo_lsq_scale(const float * x, const float * values, const uint8_t * codes) {
    float xc = 0.0f;
    float cc = 0.0f;
    for (int j = 0; j < QK_TURBO; ++j) {
        const float c = values[codes[j]];
        xc += x[j] * c;
        cc += c * c;
    }
    return xc / cc;  // cc > 0: no centroid is zero; xc >= 0: codes follow the signs of x
}

// Picks the codes of one block and returns its scale d.
static float turbo_quantize_block(const float * x, const float * values, const float * thr, int nthr, uint8_t * codes, turbo_pick_codes_t pick) {
    float sumsq = 0.0f;
    for (int j = 0; j < QK_TURBO; ++j) {
        sumsq += x[j] * x[j];
    }
    if (!(sumsq > 0.0f)) {
        // all zero (or NaN): code 0 with a zero scale dequantizes to 0
        memset(codes, 0, QK_TURBO);
        return sumsq == 0.0f ? 0.0f : sumsq;
    }

    // First pick: scale the block to unit variance, sigma = ||x|| / sqrt(QK).
    pick(x, sqrtf(QK_TURBO / sumsq), thr, nthr, codes);

    // Re-pick at the least-squares scale of the current codes.
    for (int r = 0; r < TURBO_LSQ_REPICKS; ++r) {
        const float d = turbo_lsq_scale(x, values, codes);
        if (!(d > 0.0f)) {
            break;
        }
        pick(x, 1.0f / d, thr, nthr, codes);
    }

    // Corrected norm: d * ||values[codes]|| == ||x||.
    float cc = 0.0f;
    for (int j = 0; j < QK_TURBO; ++j) {
        cc += values[codes[j]] * values[codes[j]];
    }
    return sqrtf(sumsq / cc);
}

void quantize_row_turbo2_ref(const float * GGML_RESTRICT x, block_turbo2 * GGML_RESTRICT y, int64_t k) {
    quantize_row_turbo2_impl(x, y, k, turbo_pick_codes_ref);
}

void quantize_row_turbo2_impl(const float * GGML_RESTRICT x, block_turbo2 * GGML_RESTRICT y, int64_t k, turbo_pick_codes_t pick) {
    assert(k % QK_TURBO2 == 0);
    const int64_t nb = k / QK_TURBO2;
    uint8_t codes[QK_TURBO2];

    for (int64_t i = 0; i < nb; ++i) {
        const float d = turbo_quantize_block(x + i*QK_TURBO2, kvalues_turbo2, kthresh_turbo2, 3, codes, pick);
        y[i].d = GGML_FP32_TO_FP16(d);
        for (int j = 0; j < QK_TURBO2/4; ++j) {
            y[i].qs[j] = codes[j] | (codes[j + 16] << 2) | (codes[j + 32] << 4) | (codes[j + 48] << 6);
        }
    }
}

void quantize_row_turbo3_ref(const float * GGML_RESTRICT x, block_turbo3 * GGML_RESTRICT y, int64_t k) {
    quantize_row_turbo3_impl(x, y, k, turbo_pick_codes_ref);
}

void quantize_row_turbo3_impl(const float * GGML_RESTRICT x, block_turbo3 * GGML_RESTRICT y, int64_t k, turbo_pick_codes_t pick) {
    assert(k % QK_TURBO3 == 0);
    const int64_t nb = k / QK_TURBO3;
    uint8_t codes[QK_TURBO3];

    for (int64_t i = 0; i < nb; ++i) {
        const float d = turbo_quantize_block(x + i*QK_TURBO3, kvalues_turbo3, kthresh_turbo3, 7, codes, pick);
        y[i].d = GGML_FP32_TO_FP16(d);
        for (int j = 0; j < QK_TURBO3/4; ++j) {
            y[i].qs[j] = (codes[j] & 3) | ((codes[j + 16] & 3) << 2) | ((codes[j + 32] & 3) << 4) | ((codes[j + 48] & 3) << 6);
        }
        for (int j = 0; j < QK_TURBO3/8; ++j) {
            uint8_t h = 0;
            for (int b = 0; b < 8; ++b) {
                h |= (uint8_t) ((codes[8*j + b] >> 2) << b);
            }
            y[i].qh[j] = h;
        }
    }
}

void quantize_row_turbo4_ref(const float * GGML_RESTRICT x, block_turbo4 * GGML_RESTRICT y, int64_t k) {
    quantize_row_turbo4_impl(x, y, k, turbo_pick_codes_ref);
}

void quantize_row_turbo4_impl(const float * GGML_RESTRICT x, block_turbo4 * GGML_RESTRICT y, int64_t k, turbo_pick_codes_t pick) {
    assert(k % QK_TURBO4 == 0);
    const int64_t nb = k / QK_TURBO4;
    uint8_t codes[QK_TURBO4];

    for (int64_t i = 0; i < nb; ++i) {
        const float d = turbo_quantize_block(x + i*QK_TURBO4, kvalues_turbo4, kthresh_turbo4, 15, codes, pick);
        y[i].d = GGML_FP32_TO_FP16(d);
        for (int j = 0; j < QK_TURBO4/2; ++j) {
            y[i].qs[j] = codes[j] | (codes[j + 32] << 4);
        }
    }
}

void dequantize_row_turbo2(const block_turbo2 * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) {
    assert(k % QK_TURBO2 == 0);
    const int64_t nb = k / QK_TURBO2;

    for (int64_t i = 0; i < nb; ++i) {
        const float d = GGML_FP16_TO_FP32(x[i].d);
        for (int j = 0; j < QK_TURBO2/4; ++j) {
            const uint8_t q = x[i].qs[j];
            y[j +  0] = d * kvalues_turbo2[(q >> 0) & 3];
            y[j + 16] = d * kvalues_turbo2[(q >> 2) & 3];
            y[j + 32] = d * kvalues_turbo2[(q >> 4) & 3];
            y[j + 48] = d * kvalues_turbo2[(q >> 6) & 3];
        }
        y += QK_TURBO2;
    }
}

void dequantize_row_turbo3(const block_turbo3 * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) {
    assert(k % QK_TURBO3 == 0);
    const int64_t nb = k / QK_TURBO3;

    for (int64_t i = 0; i < nb; ++i) {
        const float d = GGML_FP16_TO_FP32(x[i].d);
        for (int j = 0; j < QK_TURBO3; ++j) {
            const int lo = (x[i].qs[j % 16] >> (2*(j / 16))) & 3;
            const int hi = (x[i].qh[j / 8] >> (j % 8)) & 1;
            y[j] = d * kvalues_turbo3[(hi << 2) | lo];
        }
        y += QK_TURBO3;
    }
}

void dequantize_row_turbo4(const block_turbo4 * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) {
    assert(k % QK_TURBO4 == 0);
    const int64_t nb = k / QK_TURBO4;

    for (int64_t i = 0; i < nb; ++i) {
        const float d = GGML_FP16_TO_FP32(x[i].d);
        for (int j = 0; j < QK_TURBO4/2; ++j) {
            y[j +  0] = d * kvalues_turbo4[x[i].qs[j] & 0xf];
            y[j + 32] = d * kvalues_turbo4[x[i].qs[j] >> 4];
        }
        y += QK_TURBO4;
    }
}

typedef void (*turbo_quantize_row_t)(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);

static size_t turbo_quantize_rows(enum ggml_type type, turbo_quantize_row_t quantize_row,
                                  const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row) {
    const size_t row_size = ggml_row_size(type, n_per_row);
    char * out = (char *) dst;
    for (int64_t row = 0; row < nrows; ++row) {
        quantize_row(src + row*n_per_row, out, n_per_row);
        out += row_size;
    }
    return nrows * row_size;
}

size_t quantize_turbo2(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row, const float * imatrix) {
    GGML_UNUSED(imatrix);
    return turbo_quantize_rows(GGML_TYPE_TURBO2, (turbo_quantize_row_t) quantize_row_turbo2_ref, src, dst, nrows, n_per_row);
}

size_t quantize_turbo3(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row, const float * imatrix) {
    GGML_UNUSED(imatrix);
    return turbo_quantize_rows(GGML_TYPE_TURBO3, (turbo_quantize_row_t) quantize_row_turbo3_ref, src, dst, nrows, n_per_row);
}

size_t quantize_turbo4(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row, const float * imatrix) {
    GGML_UNUSED(imatrix);
    return turbo_quantize_rows(GGML_TYPE_TURBO4, (turbo_quantize_row_t) quantize_row_turbo4_ref, src, dst, nrows, n_per_row);
}
