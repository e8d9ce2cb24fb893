// pyturbo: SET_ROWS and CPY for the turbo KV-cache types on CUDA, and which
// turbo ops ggml-cuda runs (supports_op).
//
// Quantizing gives the codes and the scale of the CPU reference
// (csrc/turbo-quants.c) bit for bit: the block math is turbo-block.h, shared
// with the host test, and this file is compiled with IEEE single precision
// (-ftz=false -prec-div=true -prec-sqrt=true -fmad=false after ggml-cuda's
// -use_fast_math, csrc/cuda/pyturbo-cuda.cmake); turbo-block.h's _rn
// intrinsics alone would still flush subnormals to zero under fast math.
//
// One warp quantizes one block. The serial sums of the reference (the sum of
// squares, the least-squares scale of each re-pick, the final norm) fix the
// order of every float addition, so each lane runs them in full over the block
// held in shared memory (the same latency as one lane doing it), and the warp
// shares out only the picking of codes: lane l picks values l and l+32. The
// KV write of one decoded token is a handful of blocks per layer, so what
// counts is the latency of one block, about a fifth of a thread-per-block
// quantizer's.

#include "turbo-cuda.cuh"

#include "convert.cuh"
#include "turbo-common.h"
#include "turbo-block.h"

#define TURBO_QUANT_WARPS 4   // warps (= blocks quantized) per CUDA block
#define TURBO_DEQUANT_BLOCK_SIZE 256

template <ggml_type type> struct turbo_quant_traits;

template <> struct turbo_quant_traits<GGML_TYPE_TURBO2> {
    typedef block_turbo2 block_t;
    static constexpr int nthr = 3;
    static __device__ __forceinline__ const float * values() { return kvalues_turbo2; }
    static __device__ __forceinline__ const float * thr()    { return kthresh_turbo2; }
};

template <> struct turbo_quant_traits<GGML_TYPE_TURBO3> {
    typedef block_turbo3 block_t;
    static constexpr int nthr = 7;
    static __device__ __forceinline__ const float * values() { return kvalues_turbo3; }
    static __device__ __forceinline__ const float * thr()    { return kthresh_turbo3; }
};

template <> struct turbo_quant_traits<GGML_TYPE_TURBO4> {
    typedef block_turbo4 block_t;
    static constexpr int nthr = 15;
    static __device__ __forceinline__ const float * values() { return kvalues_turbo4; }
    static __device__ __forceinline__ const float * thr()    { return kthresh_turbo4; }
};

// The picker of turbo_quantize_block for a warp: lane l picks values l and
// l + 32 into the warp's shared codes. The syncs keep a lane from overwriting
// codes that another lane's sum still reads, and make the new codes visible to
// all lanes before they sum over them.
template <int nthr>
struct turbo_warp_picker {
    TURBO_HOST_DEVICE void pick(const float * x, float inv_scale, const float * thr, uint8_t * codes) const {
#ifdef __CUDA_ARCH__
        const int lane = threadIdx.x;
        const uint8_t c0 = (uint8_t) turbo_pick_code<nthr>(turbo_mul(x[lane],                inv_scale), thr);
        const uint8_t c1 = (uint8_t) turbo_pick_code<nthr>(turbo_mul(x[lane + QK_TURBO/2], inv_scale), thr);
        __syncwarp();
        codes[lane]              = c0;
        codes[lane + QK_TURBO/2] = c1;
        __syncwarp();
#else
        GGML_UNUSED(x); GGML_UNUSED(inv_scale); GGML_UNUSED(thr); GGML_UNUSED(codes);
#endif // __CUDA_ARCH__
    }
    TURBO_HOST_DEVICE void zero(uint8_t * codes) const {
#ifdef __CUDA_ARCH__
        __syncwarp();
        codes[threadIdx.x]              = 0;
        codes[threadIdx.x + QK_TURBO/2] = 0;
        __syncwarp();
#else
        GGML_UNUSED(codes);
#endif // __CUDA_ARCH__
    }
};

// Quantizes the block x (shared memory, all QK_TURBO values written and synced)
// into y, with the warp's shared codes as scratch. Every lane of the warp calls it.
template <ggml_type type>
static __device__ void turbo_quantize_block_warp(const float * x, uint8_t * codes, typename turbo_quant_traits<type>::block_t * y) {
    typedef turbo_quant_traits<type> traits;
    const float d = turbo_quantize_block(x, traits::values(), traits::thr(), codes, turbo_warp_picker<traits::nthr>());

    const int lane = threadIdx.x;
    if (lane == 0) {
        y->d = __float2half_rn(d);
    }
    if constexpr (type == GGML_TYPE_TURBO2) {
        if (lane < QK_TURBO2/4) {
            y->qs[lane] = turbo2_qs_byte(codes, lane);
        }
    } else if constexpr (type == GGML_TYPE_TURBO3) {
        if (lane < QK_TURBO3/4) {
            y->qs[lane] = turbo3_qs_byte(codes, lane);
        } else if (lane < QK_TURBO3/4 + QK_TURBO3/8) {
            y->qh[lane - QK_TURBO3/4] = turbo3_qh_byte(codes, lane - QK_TURBO3/4);
        }
    } else {
        static_assert(type == GGML_TYPE_TURBO4, "not a turbo type");
        y->qs[lane] = turbo4_qs_byte(codes, lane);
    }
}

// SET_ROWS: warp w of the grid quantizes block w of src0 (row-major over ne00/QK
// blocks, ne01 rows, ne02, ne03) into row src1[i01, i02 % ne11, i03 % ne12] of dst.
template <ggml_type type, typename src_t, typename idx_t>
static __global__ void __launch_bounds__(WARP_SIZE*TURBO_QUANT_WARPS)
k_turbo_set_rows(const char * __restrict__ src0, const char * __restrict__ src1, char * __restrict__ dst, const int64_t nblocks,
                 const int64_t nblocks_row, const int64_t ne01, const int64_t ne02, const int64_t ne11, const int64_t ne12,
                 const int64_t nb00, const int64_t nb01, const int64_t nb02, const int64_t nb03,
                 const int64_t nb10, const int64_t nb11, const int64_t nb12,
                 const int64_t nb1, const int64_t nb2, const int64_t nb3) {
    typedef typename turbo_quant_traits<type>::block_t block_t;
    __shared__ float   x_shared[TURBO_QUANT_WARPS][QK_TURBO];
    __shared__ uint8_t codes_shared[TURBO_QUANT_WARPS][QK_TURBO];

    const int64_t ib = (int64_t) blockIdx.x*TURBO_QUANT_WARPS + threadIdx.y;
    if (ib >= nblocks) {
        return;
    }

    const int64_t i00b = ib % nblocks_row;
    const int64_t i01  = (ib / nblocks_row) % ne01;
    const int64_t i02  = (ib / nblocks_row / ne01) % ne02;
    const int64_t i03  =  ib / nblocks_row / ne01 / ne02;

    const int64_t dst_row = *(const idx_t *) (src1 + i01*nb10 + (i02 % ne11)*nb11 + (i03 % ne12)*nb12);

    const char * x = src0 + i00b*QK_TURBO*nb00 + i01*nb01 + i02*nb02 + i03*nb03;
    float * x_warp = x_shared[threadIdx.y];
    x_warp[threadIdx.x]              = ggml_cuda_cast<float>(*(const src_t *) (x + threadIdx.x*nb00));
    x_warp[threadIdx.x + QK_TURBO/2] = ggml_cuda_cast<float>(*(const src_t *) (x + (threadIdx.x + QK_TURBO/2)*nb00));
    __syncwarp();

    block_t * y = (block_t *) (dst + dst_row*nb1 + i02*nb2 + i03*nb3) + i00b;
    turbo_quantize_block_warp<type>(x_warp, codes_shared[threadIdx.y], y);
}

// CPY to a turbo type: warp w quantizes the values w*QK .. w*QK + QK-1 of the
// flattened tensors; each value is read from wherever src holds it.
template <ggml_type type, typename src_t>
static __global__ void __launch_bounds__(WARP_SIZE*TURBO_QUANT_WARPS)
k_turbo_cpy_to(const char * __restrict__ src, char * __restrict__ dst, const int64_t nblocks,
               const int64_t ne00, const int64_t ne01, const int64_t ne02,
               const int64_t nb00, const int64_t nb01, const int64_t nb02, const int64_t nb03,
               const int64_t ne10, const int64_t ne11, const int64_t ne12,
               const int64_t nb10, const int64_t nb11, const int64_t nb12, const int64_t nb13) {
    typedef typename turbo_quant_traits<type>::block_t block_t;
    __shared__ float   x_shared[TURBO_QUANT_WARPS][QK_TURBO];
    __shared__ uint8_t codes_shared[TURBO_QUANT_WARPS][QK_TURBO];

    const int64_t ib = (int64_t) blockIdx.x*TURBO_QUANT_WARPS + threadIdx.y;
    if (ib >= nblocks) {
        return;
    }

    float * x_warp = x_shared[threadIdx.y];
#pragma unroll
    for (int half_block = 0; half_block < 2; ++half_block) {
        const int64_t i = ib*QK_TURBO + half_block*(QK_TURBO/2) + threadIdx.x;
        const int64_t i00 = i % ne00;
        const int64_t i01 = (i / ne00) % ne01;
        const int64_t i02 = (i / ne00 / ne01) % ne02;
        const int64_t i03 =  i / ne00 / ne01 / ne02;
        x_warp[half_block*(QK_TURBO/2) + threadIdx.x] =
            ggml_cuda_cast<float>(*(const src_t *) (src + i00*nb00 + i01*nb01 + i02*nb02 + i03*nb03));
    }
    __syncwarp();

    const int64_t i   = ib*QK_TURBO;
    const int64_t i10 = i % ne10;
    const int64_t i11 = (i / ne10) % ne11;
    const int64_t i12 = (i / ne10 / ne11) % ne12;
    const int64_t i13 =  i / ne10 / ne11 / ne12;
    block_t * y = (block_t *) (dst + (i10/QK_TURBO)*nb10 + i11*nb11 + i12*nb12 + i13*nb13);
    turbo_quantize_block_warp<type>(x_warp, codes_shared[threadIdx.y], y);
}

// CPY from a turbo type: one thread per value, d * codebook value as the CPU's
// dequantize_row_turboN gives it.
template <ggml_type type, typename dst_t>
static __global__ void k_turbo_cpy_from(const char * __restrict__ src, char * __restrict__ dst, const int64_t ne,
                                        const int64_t ne00, const int64_t ne01, const int64_t ne02,
                                        const int64_t nb00, const int64_t nb01, const int64_t nb02, const int64_t nb03,
                                        const int64_t ne10, const int64_t ne11, const int64_t ne12,
                                        const int64_t nb10, const int64_t nb11, const int64_t nb12, const int64_t nb13) {
    typedef typename turbo_quant_traits<type>::block_t block_t;

    const int64_t i = (int64_t) blockIdx.x*blockDim.x + threadIdx.x;
    if (i >= ne) {
        return;
    }

    const int64_t i00 = i % ne00;
    const int64_t i01 = (i / ne00) % ne01;
    const int64_t i02 = (i / ne00 / ne01) % ne02;
    const int64_t i03 =  i / ne00 / ne01 / ne02;
    const block_t * x = (const block_t *) (src + (i00/QK_TURBO)*nb00 + i01*nb01 + i02*nb02 + i03*nb03);
    const int j = i00 % QK_TURBO;

    int code;
    if constexpr (type == GGML_TYPE_TURBO2) {
        code = turbo2_code(x->qs, j);
    } else if constexpr (type == GGML_TYPE_TURBO3) {
        code = turbo3_code(x->qs, x->qh, j);
    } else {
        code = turbo4_code(x->qs, j);
    }
    const float value = turbo_mul(__half2float(x->d), turbo_quant_traits<type>::values()[code]);

    const int64_t i10 = i % ne10;
    const int64_t i11 = (i / ne10) % ne11;
    const int64_t i12 = (i / ne10 / ne11) % ne12;
    const int64_t i13 =  i / ne10 / ne11 / ne12;
    *(dst_t *) (dst + i10*nb10 + i11*nb11 + i12*nb12 + i13*nb13) = ggml_cuda_cast<dst_t>(value);
}

static int turbo_quant_grid(const int64_t nblocks) {
    const int64_t grid = (nblocks + TURBO_QUANT_WARPS - 1) / TURBO_QUANT_WARPS;
    GGML_ASSERT(grid <= INT_MAX);
    return (int) grid;
}

template <ggml_type type, typename src_t, typename idx_t>
static void turbo_set_rows_cuda(cudaStream_t stream, const ggml_tensor * src0, const ggml_tensor * src1, ggml_tensor * dst) {
    GGML_ASSERT(src0->ne[0] % QK_TURBO == 0);
    const int64_t nblocks_row = src0->ne[0] / QK_TURBO;
    const int64_t nblocks = nblocks_row*src0->ne[1]*src0->ne[2]*src0->ne[3];
    if (nblocks == 0) {
        return;
    }
    const dim3 block_dims(WARP_SIZE, TURBO_QUANT_WARPS, 1);
    k_turbo_set_rows<type, src_t, idx_t><<<turbo_quant_grid(nblocks), block_dims, 0, stream>>>(
        (const char *) src0->data, (const char *) src1->data, (char *) dst->data, nblocks,
        nblocks_row, src0->ne[1], src0->ne[2], src1->ne[1], src1->ne[2],
        src0->nb[0], src0->nb[1], src0->nb[2], src0->nb[3],
        src1->nb[0], src1->nb[1], src1->nb[2],
        dst->nb[1], dst->nb[2], dst->nb[3]);
    CUDA_CHECK(cudaGetLastError());
}

template <ggml_type type, typename src_t>
static void turbo_set_rows_cuda(cudaStream_t stream, const ggml_tensor * src0, const ggml_tensor * src1, ggml_tensor * dst) {
    if (src1->type == GGML_TYPE_I64) {
        turbo_set_rows_cuda<type, src_t, int64_t>(stream, src0, src1, dst);
    } else {
        GGML_ASSERT(src1->type == GGML_TYPE_I32);
        turbo_set_rows_cuda<type, src_t, int32_t>(stream, src0, src1, dst);
    }
}

template <ggml_type type>
static void turbo_set_rows_cuda(cudaStream_t stream, const ggml_tensor * src0, const ggml_tensor * src1, ggml_tensor * dst) {
    switch (src0->type) {
        case GGML_TYPE_F32: turbo_set_rows_cuda<type, float>(stream, src0, src1, dst); break;
        case GGML_TYPE_F16: turbo_set_rows_cuda<type, half >(stream, src0, src1, dst); break;
        default: GGML_ABORT("%s: rows of type %s", __func__, ggml_type_name(src0->type));
    }
}

void ggml_cuda_turbo_set_rows(cudaStream_t stream, ggml_tensor * dst) {
    const ggml_tensor * src0 = dst->src[0];
    const ggml_tensor * src1 = dst->src[1];
    switch (dst->type) {
        case GGML_TYPE_TURBO2: turbo_set_rows_cuda<GGML_TYPE_TURBO2>(stream, src0, src1, dst); break;
        case GGML_TYPE_TURBO3: turbo_set_rows_cuda<GGML_TYPE_TURBO3>(stream, src0, src1, dst); break;
        case GGML_TYPE_TURBO4: turbo_set_rows_cuda<GGML_TYPE_TURBO4>(stream, src0, src1, dst); break;
        default: GGML_ABORT("%s: %s is not a turbo type", __func__, ggml_type_name(dst->type));
    }
}

template <ggml_type type, typename src_t>
static void turbo_cpy_to_cuda(cudaStream_t stream, const ggml_tensor * src, ggml_tensor * dst) {
    GGML_ASSERT(dst->ne[0] % QK_TURBO == 0);
    const int64_t nblocks = ggml_nelements(dst) / QK_TURBO;
    if (nblocks == 0) {
        return;
    }
    const dim3 block_dims(WARP_SIZE, TURBO_QUANT_WARPS, 1);
    k_turbo_cpy_to<type, src_t><<<turbo_quant_grid(nblocks), block_dims, 0, stream>>>(
        (const char *) src->data, (char *) dst->data, nblocks,
        src->ne[0], src->ne[1], src->ne[2], src->nb[0], src->nb[1], src->nb[2], src->nb[3],
        dst->ne[0], dst->ne[1], dst->ne[2], dst->nb[0], dst->nb[1], dst->nb[2], dst->nb[3]);
    CUDA_CHECK(cudaGetLastError());
}

template <ggml_type type>
static void turbo_cpy_to_cuda(cudaStream_t stream, const ggml_tensor * src, ggml_tensor * dst) {
    switch (src->type) {
        case GGML_TYPE_F32:  turbo_cpy_to_cuda<type, float      >(stream, src, dst); break;
        case GGML_TYPE_F16:  turbo_cpy_to_cuda<type, half       >(stream, src, dst); break;
        case GGML_TYPE_BF16: turbo_cpy_to_cuda<type, nv_bfloat16>(stream, src, dst); break;
        default: GGML_ABORT("%s: %s to %s", __func__, ggml_type_name(src->type), ggml_type_name(dst->type));
    }
}

template <ggml_type type, typename dst_t>
static void turbo_cpy_from_cuda(cudaStream_t stream, const ggml_tensor * src, ggml_tensor * dst) {
    GGML_ASSERT(src->ne[0] % QK_TURBO == 0);
    const int64_t ne = ggml_nelements(src);
    if (ne == 0) {
        return;
    }
    const int64_t grid = (ne + TURBO_DEQUANT_BLOCK_SIZE - 1) / TURBO_DEQUANT_BLOCK_SIZE;
    GGML_ASSERT(grid <= INT_MAX);
    k_turbo_cpy_from<type, dst_t><<<(int) grid, TURBO_DEQUANT_BLOCK_SIZE, 0, stream>>>(
        (const char *) src->data, (char *) dst->data, ne,
        src->ne[0], src->ne[1], src->ne[2], src->nb[0], src->nb[1], src->nb[2], src->nb[3],
        dst->ne[0], dst->ne[1], dst->ne[2], dst->nb[0], dst->nb[1], dst->nb[2], dst->nb[3]);
    CUDA_CHECK(cudaGetLastError());
}

template <ggml_type type>
static void turbo_cpy_from_cuda(cudaStream_t stream, const ggml_tensor * src, ggml_tensor * dst) {
    switch (dst->type) {
        case GGML_TYPE_F32: turbo_cpy_from_cuda<type, float>(stream, src, dst); break;
        case GGML_TYPE_F16: turbo_cpy_from_cuda<type, half >(stream, src, dst); break;
        default: GGML_ABORT("%s: %s to %s", __func__, ggml_type_name(src->type), ggml_type_name(dst->type));
    }
}

static bool turbo_cpy_source_type(ggml_type type) {
    return type == GGML_TYPE_F32 || type == GGML_TYPE_F16 || type == GGML_TYPE_BF16;
}

bool ggml_cuda_turbo_cpy_supported(ggml_type src_type, ggml_type dst_type) {
    if (ggml_is_runtime_only_type(dst_type)) {
        return turbo_cpy_source_type(src_type);
    }
    if (ggml_is_runtime_only_type(src_type)) {
        return dst_type == GGML_TYPE_F32 || dst_type == GGML_TYPE_F16;
    }
    return false;
}

void ggml_cuda_turbo_cpy(cudaStream_t stream, const ggml_tensor * src, ggml_tensor * dst) {
    GGML_ASSERT(ggml_nelements(src) == ggml_nelements(dst));
    GGML_ASSERT(ggml_cuda_turbo_cpy_supported(src->type, dst->type));
    switch (dst->type) {
        case GGML_TYPE_TURBO2: turbo_cpy_to_cuda<GGML_TYPE_TURBO2>(stream, src, dst); return;
        case GGML_TYPE_TURBO3: turbo_cpy_to_cuda<GGML_TYPE_TURBO3>(stream, src, dst); return;
        case GGML_TYPE_TURBO4: turbo_cpy_to_cuda<GGML_TYPE_TURBO4>(stream, src, dst); return;
        default: break;
    }
    switch (src->type) {
        case GGML_TYPE_TURBO2: turbo_cpy_from_cuda<GGML_TYPE_TURBO2>(stream, src, dst); return;
        case GGML_TYPE_TURBO3: turbo_cpy_from_cuda<GGML_TYPE_TURBO3>(stream, src, dst); return;
        case GGML_TYPE_TURBO4: turbo_cpy_from_cuda<GGML_TYPE_TURBO4>(stream, src, dst); return;
        default: GGML_ABORT("%s: %s to %s", __func__, ggml_type_name(src->type), ggml_type_name(dst->type));
    }
}

int ggml_cuda_turbo_supports_op(const ggml_tensor * op) {
    switch (op->op) {
        case GGML_OP_SET_ROWS:
            if (!ggml_is_runtime_only_type(op->type)) {
                return -1;
            }
            return (op->src[0]->type == GGML_TYPE_F32 || op->src[0]->type == GGML_TYPE_F16) &&
                   (op->src[1]->type == GGML_TYPE_I32 || op->src[1]->type == GGML_TYPE_I64) &&
                   op->src[0]->ne[0] % QK_TURBO == 0;
        case GGML_OP_CPY:
            if (op->src[0]->type == op->src[1]->type ||
                    (!ggml_is_runtime_only_type(op->src[0]->type) && !ggml_is_runtime_only_type(op->src[1]->type))) {
                return -1; // a same-type copy is a memcpy, upstream's rules
            }
            // whole blocks on the turbo side
            return ggml_cuda_turbo_cpy_supported(op->src[0]->type, op->src[1]->type) &&
                   (ggml_is_runtime_only_type(op->src[0]->type) ? op->src[0] : op->src[1])->ne[0] % QK_TURBO == 0;
        case GGML_OP_GET_ROWS:
            if (!ggml_is_runtime_only_type(op->src[0]->type)) {
                return -1;
            }
            // getrows.cu with dequantize_turboN (patches/0007)
            return op->type == GGML_TYPE_F32 || op->type == GGML_TYPE_F16 || op->type == GGML_TYPE_BF16;
        case GGML_OP_MUL_MAT:
        case GGML_OP_MUL_MAT_ID: {
            const ggml_tensor * a = op->src[0];
            const ggml_tensor * b = op->src[1];
            if (!ggml_is_runtime_only_type(a->type)) {
                return -1;
            }
            // K*Q with flash attention off: cuBLAS on K converted to f16/f32 (convert.cu with
            // dequantize_turboN); the mmvq/mmq kernels have no turbo code and are kept off it
            return op->op == GGML_OP_MUL_MAT && b->type == GGML_TYPE_F32 && op->type == GGML_TYPE_F32 &&
                   a->nb[0] == ggml_type_size(a->type) && b->nb[0] == ggml_type_size(b->type);
        }
        default:
            return -1;
    }
}
