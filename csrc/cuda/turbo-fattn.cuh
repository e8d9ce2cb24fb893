// pyturbo: the turbo types in ggml-cuda's flash-attention vector kernel
// (fattn-vec.cuh): the K*Q dot of a turbo K row and the dequantization of V.
// Included by fattn-common.cuh, whose get_vec_dot_KQ / get_dequantize_V return
// these for GGML_TYPE_TURBO2/3/4 (patches/0007).
//
// K*Q: as for the other quantized K types, the kernel hands over Q as q8_1
// (Q_q8: four int8 per int, Q_ds: the scale of each 32-value q8_1 block), and
// each of the nthreads threads of a row takes the ints k_KQ_0 + its index. Per
// int the four codes of the same K values are looked up in the codebook scaled
// to 16 bits and multiplied with dp4a (turbo_dot4_k16, turbo-block.h).
//
// V: ne consecutive values from i0, as floats (or halves where the kernel
// accumulates in f16), d * codebook value as on the CPU.
#pragma once

#include "common.cuh"
#include "turbo-common.h"
#include "turbo-block.h"

template <ggml_type type> struct turbo_fattn_traits;

template <> struct turbo_fattn_traits<GGML_TYPE_TURBO2> {
    typedef block_turbo2 block_t;
    static constexpr int nvals = 4;
    static __device__ __forceinline__ const float * values() { return kvalues_turbo2; }
};

template <> struct turbo_fattn_traits<GGML_TYPE_TURBO3> {
    typedef block_turbo3 block_t;
    static constexpr int nvals = 8;
    static __device__ __forceinline__ const float * values() { return kvalues_turbo3; }
};

template <> struct turbo_fattn_traits<GGML_TYPE_TURBO4> {
    typedef block_turbo4 block_t;
    static constexpr int nvals = 16;
    static __device__ __forceinline__ const float * values() { return kvalues_turbo4; }
};

// Codes of values j..j+3 (j % 4 == 0) of a block, in the bytes of an int. The
// blocks are 2-byte aligned (18/26/34 bytes), so are qs + j%16 and qs + j%32.
template <ggml_type type>
static __device__ __forceinline__ uint32_t turbo_fattn_codes4(const typename turbo_fattn_traits<type>::block_t * x, const int j) {
    uint32_t qs4;
    if constexpr (type == GGML_TYPE_TURBO2) {
        ggml_cuda_memcpy_1<sizeof(qs4), 2>(&qs4, x->qs + j % 16);
        return turbo2_codes4(qs4, j);
    } else if constexpr (type == GGML_TYPE_TURBO3) {
        ggml_cuda_memcpy_1<sizeof(qs4), 2>(&qs4, x->qs + j % 16);
        return turbo3_codes4(qs4, x->qh[j / 8], j);
    } else {
        static_assert(type == GGML_TYPE_TURBO4, "not a turbo type");
        ggml_cuda_memcpy_1<sizeof(qs4), 2>(&qs4, x->qs + j % 32);
        return turbo4_codes4(qs4, j);
    }
}

template <ggml_type type>
static __device__ __forceinline__ turbo_k16_planes turbo_fattn_k16_planes() {
    if constexpr (type == GGML_TYPE_TURBO2) {
        return turbo2_k16_planes;
    } else if constexpr (type == GGML_TYPE_TURBO3) {
        return turbo3_k16_planes;
    } else {
        return turbo4_k16_planes;
    }
}

template <ggml_type type, int D, int nthreads>
static __device__ __forceinline__ float vec_dot_fattn_vec_KQ_turbo(
    const char * __restrict__ K_c, const void * __restrict__ Q_v, const int * __restrict__ Q_q8, const void * __restrict__ Q_ds_v) {
    typedef typename turbo_fattn_traits<type>::block_t block_t;
    const block_t * K = (const block_t *) K_c;
    GGML_UNUSED(Q_v);

    const turbo_k16_planes planes = turbo_fattn_k16_planes<type>();

    float sum = 0.0f;

#pragma unroll
    for (int k_KQ_0 = 0; k_KQ_0 < int(D/sizeof(int)); k_KQ_0 += nthreads) {
        const int k_KQ = k_KQ_0 + (nthreads == WARP_SIZE ? threadIdx.x : threadIdx.x % nthreads);

        const int ib = k_KQ / (QK_TURBO/4);      // K block of the four values
        const int j  = 4*(k_KQ % (QK_TURBO/4));  // their index in it

        const uint32_t codes4 = turbo_fattn_codes4<type>(K + ib, j);
        const int sumi = turbo_dot4_k16<turbo_fattn_traits<type>::nvals>(codes4, Q_q8[k_KQ_0/nthreads], planes);

        const float Q_d = ((const float2 *) Q_ds_v)[k_KQ_0/nthreads].x;
        sum += __half2float(K[ib].d) * Q_d * (float) sumi;
    }

    // the codebook was scaled by 2^13 (exact in float)
    return sum * (1.0f / (1 << TURBO_K16_SHIFT));
}

template <int D, int nthreads>
static __device__ __forceinline__ float vec_dot_fattn_vec_KQ_turbo2(
    const char * __restrict__ K_c, const void * __restrict__ Q_v, const int * __restrict__ Q_q8, const void * __restrict__ Q_ds_v) {
    return vec_dot_fattn_vec_KQ_turbo<GGML_TYPE_TURBO2, D, nthreads>(K_c, Q_v, Q_q8, Q_ds_v);
}

template <int D, int nthreads>
static __device__ __forceinline__ float vec_dot_fattn_vec_KQ_turbo3(
    const char * __restrict__ K_c, const void * __restrict__ Q_v, const int * __restrict__ Q_q8, const void * __restrict__ Q_ds_v) {
    return vec_dot_fattn_vec_KQ_turbo<GGML_TYPE_TURBO3, D, nthreads>(K_c, Q_v, Q_q8, Q_ds_v);
}

template <int D, int nthreads>
static __device__ __forceinline__ float vec_dot_fattn_vec_KQ_turbo4(
    const char * __restrict__ K_c, const void * __restrict__ Q_v, const int * __restrict__ Q_q8, const void * __restrict__ Q_ds_v) {
    return vec_dot_fattn_vec_KQ_turbo<GGML_TYPE_TURBO4, D, nthreads>(K_c, Q_v, Q_q8, Q_ds_v);
}

template <ggml_type type, typename T, int ne>
static __device__ __forceinline__ void dequantize_V_turbo(const void * __restrict__ vx, void * __restrict__ dst, const int64_t i0) {
    typedef typename turbo_fattn_traits<type>::block_t block_t;
    static_assert(ne == 2 || ne == 4, "bad ne");

    const block_t * x = (const block_t *) vx + i0 / QK_TURBO;
    const int j = i0 % QK_TURBO;
    const float d = __half2float(x->d);
    const float * values = turbo_fattn_traits<type>::values();

    float v[ne];
    if constexpr (ne == 4) {
        const uint32_t codes4 = turbo_fattn_codes4<type>(x, j);
#pragma unroll
        for (int l = 0; l < ne; ++l) {
            v[l] = d * values[(codes4 >> (8*l)) & 0xFF];
        }
    } else {
#pragma unroll
        for (int l = 0; l < ne; ++l) {
            int code;
            if constexpr (type == GGML_TYPE_TURBO2) {
                code = turbo2_code(x->qs, j + l);
            } else if constexpr (type == GGML_TYPE_TURBO3) {
                code = turbo3_code(x->qs, x->qh, j + l);
            } else {
                code = turbo4_code(x->qs, j + l);
            }
            v[l] = d * values[code];
        }
    }

    if constexpr (std::is_same_v<T, float>) {
#pragma unroll
        for (int l = 0; l < ne; ++l) {
            ((float *) dst)[l] = v[l];
        }
    } else if constexpr (std::is_same_v<T, half>) {
#pragma unroll
        for (int l = 0; l < ne; l += 2) {
            ((half2 *) dst)[l/2] = __floats2half2_rn(v[l], v[l + 1]);
        }
    } else {
        static_assert(std::is_same_v<T, void>, "unsupported type");
    }
}

template <typename T, int ne>
static __device__ __forceinline__ void dequantize_V_turbo2(const void * __restrict__ vx, void * __restrict__ dst, const int64_t i0) {
    dequantize_V_turbo<GGML_TYPE_TURBO2, T, ne>(vx, dst, i0);
}

template <typename T, int ne>
static __device__ __forceinline__ void dequantize_V_turbo3(const void * __restrict__ vx, void * __restrict__ dst, const int64_t i0) {
    dequantize_V_turbo<GGML_TYPE_TURBO3, T, ne>(vx, dst, i0);
}

template <typename T, int ne>
static __device__ __forceinline__ void dequantize_V_turbo4(const void * __restrict__ vx, void * __restrict__ dst, const int64_t i0) {
    dequantize_V_turbo<GGML_TYPE_TURBO4, T, ne>(vx, dst, i0);
}
