// pyturbo: the CUDA ops of the turbo KV-cache types that ggml-cuda calls into
// (patches/0007-turbo-cuda.patch adds the calls; the code is csrc/cuda/turbo-cuda.cu).
#pragma once

#include "common.cuh"

// Whether the CUDA backend runs op, for the ops that read or write a turbo
// tensor and that pyturbo decides: 1 or 0. -1 for every other op (FLASH_ATTN_EXT
// included: fattn.cu knows the turbo types), which ggml-cuda's own rules decide.
int ggml_cuda_turbo_supports_op(const ggml_tensor * op);

// SET_ROWS into a turbo tensor (the KV-cache write): dst->src[0] rows (F32 or
// F16) quantized with the CPU reference's codes into the rows of dst named by
// dst->src[1] (I32 or I64).
void ggml_cuda_turbo_set_rows(cudaStream_t stream, ggml_tensor * dst);

// CPY between a turbo type and F32/F16/BF16 (to turbo) or F32/F16 (from turbo),
// any strides on either side: the K-shift reads the cache as F32 and writes it back.
bool ggml_cuda_turbo_cpy_supported(ggml_type src_type, ggml_type dst_type);
void ggml_cuda_turbo_cpy(cudaStream_t stream, const ggml_tensor * src, ggml_tensor * dst);
