// pyturbo: turbo2/3/4 as dequantize_kernel_t functions (ggml-cuda's qr=2
// convention: v.x is value iqs of block ib, v.y value iqs + QK_TURBO/2), so that
// the upstream templates of convert.cu (to f16/f32/bf16, contiguous or not),
// getrows.cu and the cuBLAS matrix multiplication take the turbo types as they
// take q5_0. Included at the end of ggml-cuda's dequantize.cuh (patches/0007).
#pragma once

#include "common.cuh"
#include "turbo-common.h"
#include "turbo-block.h"

static __device__ __forceinline__ void dequantize_turbo2(const void * vx, const int64_t ib, const int iqs, float2 & v) {
    const block_turbo2 * x = (const block_turbo2 *) vx + ib;
    turbo2_dequantize_pair(x, iqs, __half2float(x->d), kvalues_turbo2, &v.x, &v.y);
}

static __device__ __forceinline__ void dequantize_turbo3(const void * vx, const int64_t ib, const int iqs, float2 & v) {
    const block_turbo3 * x = (const block_turbo3 *) vx + ib;
    turbo3_dequantize_pair(x, iqs, __half2float(x->d), kvalues_turbo3, &v.x, &v.y);
}

static __device__ __forceinline__ void dequantize_turbo4(const void * vx, const int64_t ib, const int iqs, float2 & v) {
    const block_turbo4 * x = (const block_turbo4 *) vx + ib;
    turbo4_dequantize_pair(x, iqs, __half2float(x->d), kvalues_turbo4, &v.x, &v.y);
}
