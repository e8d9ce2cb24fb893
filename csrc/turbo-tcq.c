// pyturbo: reference encoder and decoder of the trellis-coded types turbo3t and turbo2t
// (the format is described in turbo-tcq.h and turbo-common.h; the encoder itself is in
// turbo-tcq-encode.h, shared with the CPU backend). Every other encoder of these types
// must reproduce these blocks exactly: this file is built with -ffp-contract=off for that
// reason (csrc/pyturbo-kernels.cmake).

#define GGML_COMMON_IMPL_C
#include "ggml-common.h"

#include "turbo-tcq.h"
#include "ggml-impl.h"

#include <assert.h>
#include <math.h>
#include <string.h>

#include "turbo-tcq-encode.h"

float turbo_tcq_viterbi(const float * GGML_RESTRICT y, const float * GGML_RESTRICT values, int k, uint16_t * GGML_RESTRICT states) {
    tcq_trellis trellis;
    tcq_trellis_init(&trellis, values, k);
    return tcq_viterbi(y, &trellis, states);
}

int turbo_tcq_state(const uint8_t * GGML_RESTRICT block, int block_bytes, int k, int i) {
    const int bit  = 16 - TURBO_TCQ_START_BITS + k * i;
    const int byte = bit >> 3;
    // the window spans at most two bytes; the last one of turbo2t ends exactly at the block's end
    const unsigned word = block[byte] | (byte + 1 < block_bytes ? (unsigned) block[byte + 1] << 8 : 0u);
    return (int) ((word >> (bit & 7)) & ((TCQ_GROUPS << k) - 1));
}

float turbo_tcq_scale(uint16_t head) {
    return GGML_FP16_TO_FP32((ggml_fp16_t) ((head & 0x3FF) << 5));
}

static void tcq_dequantize_block(const uint8_t * block, int block_bytes, int k, const float * values, float * y) {
    const float d = turbo_tcq_scale((uint16_t) (block[0] | block[1] << 8));
    for (int i = 0; i < QK_TURBO; ++i) {
        y[i] = d * values[turbo_tcq_state(block, block_bytes, k, i)];
    }
}

void quantize_row_turbo3t_ref(const float * GGML_RESTRICT x, block_turbo3t * GGML_RESTRICT y, int64_t k) {
    assert(k % QK_TURBO3T == 0);
    tcq_trellis trellis;
    tcq_trellis_init(&trellis, kvalues_turbo3t, 3);
    for (int64_t i = 0; i < k / QK_TURBO3T; ++i) {
        tcq_quantize_block(x + i * QK_TURBO3T, &trellis, (uint8_t *) (y + i), sizeof(block_turbo3t));
    }
}

void quantize_row_turbo2t_ref(const float * GGML_RESTRICT x, block_turbo2t * GGML_RESTRICT y, int64_t k) {
    assert(k % QK_TURBO2T == 0);
    tcq_trellis trellis;
    tcq_trellis_init(&trellis, kvalues_turbo2t, 2);
    for (int64_t i = 0; i < k / QK_TURBO2T; ++i) {
        tcq_quantize_block(x + i * QK_TURBO2T, &trellis, (uint8_t *) (y + i), sizeof(block_turbo2t));
    }
}

void dequantize_row_turbo3t(const block_turbo3t * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) {
    assert(k % QK_TURBO3T == 0);
    for (int64_t i = 0; i < k / QK_TURBO3T; ++i) {
        tcq_dequantize_block((const uint8_t *) (x + i), sizeof(block_turbo3t), 3, kvalues_turbo3t, y + i * QK_TURBO3T);
    }
}

void dequantize_row_turbo2t(const block_turbo2t * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) {
    assert(k % QK_TURBO2T == 0);
    for (int64_t i = 0; i < k / QK_TURBO2T; ++i) {
        tcq_dequantize_block((const uint8_t *) (x + i), sizeof(block_turbo2t), 2, kvalues_turbo2t, y + i * QK_TURBO2T);
    }
}

size_t quantize_turbo3t(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row, const float * imatrix) {
    GGML_UNUSED(imatrix);
    quantize_row_turbo3t_ref(src, (block_turbo3t *) dst, nrows * n_per_row);
    return nrows * ggml_row_size(GGML_TYPE_TURBO3T, n_per_row);
}

size_t quantize_turbo2t(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row, const float * imatrix) {
    GGML_UNUSED(imatrix);
    quantize_row_turbo2t_ref(src, (block_turbo2t *) dst, nrows * n_per_row);
    return nrows * ggml_row_size(GGML_TYPE_TURBO2T, n_per_row);
}

bool turbo_tcq_validate_row(enum ggml_type type, const void * data, size_t nbytes) {
    const size_t block_bytes = ggml_type_size(type);
    const uint8_t * bytes = (const uint8_t *) data;
    for (size_t i = 0; i < nbytes / block_bytes; ++i) {
        const unsigned head = bytes[i * block_bytes] | bytes[i * block_bytes + 1] << 8;
        if (((head >> 5) & 0x1F) == 0x1F) {     // exponent all ones: an infinite or NaN scale
            GGML_LOG_ERROR("%s: found a non-finite scale in %s block %zu\n", __func__, ggml_type_name(type), i);
            return false;
        }
    }
    return true;
}
