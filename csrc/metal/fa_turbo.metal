// pyturbo: flash attention matrix kernels (prefill) over turbo KV caches.
//
// Instantiations of ggml's kernel_flash_attn_ext template (fa_common.metal), as
// kernels/fa_q4_0.metal and fa_q8_0.metal instantiate it, for the K/V pairs
// pyturbo's Metal supports_op accepts (turbo-metal.cpp): turboN/turboN and
// q8_0 K with a turboN V, head sizes 64, 128, 256 (DK == DV). A turbo block is
// 64 values, so nl = 64/16 = 4 calls of dequantize_turboN cover one block.
// Kernel names: kernel_flash_attn_ext_<K type>_dk<DK>_dv<DV> for one type,
// kernel_flash_attn_ext_<K type>_<V type>_dk<DK>_dv<DV> for a pair (the name
// builders in ggml-metal-device.cpp, patches/0008-turbo-metal.patch).

#include "common.h"
#include "dequantize.h"
#include "turbo-common.h"
#include "turbo-block.h"
#include "fa_common.metal"

#define FA_TYPES \
    half,   half4,     simdgroup_half8x8,  \
    half,   half4x4,   simdgroup_half8x8,  \
    half,   half4x4,   simdgroup_half8x8,  \
    float,             simdgroup_float8x8, \
    float,  float2,    simdgroup_float8x8, \
    float,  float4,    simdgroup_float8x8

typedef decltype(kernel_flash_attn_ext<FA_TYPES, half4x4, 1, dequantize_f16, half4x4, 1, dequantize_f16, 64, 64>) flash_attn_ext_t;

template [[host_name("kernel_flash_attn_ext_turbo2_dk64_dv64"        )]] kernel flash_attn_ext_t kernel_flash_attn_ext<FA_TYPES, block_turbo2, 4, dequantize_turbo2, block_turbo2, 4, dequantize_turbo2, 64, 64>;
template [[host_name("kernel_flash_attn_ext_turbo2_dk128_dv128"      )]] kernel flash_attn_ext_t kernel_flash_attn_ext<FA_TYPES, block_turbo2, 4, dequantize_turbo2, block_turbo2, 4, dequantize_turbo2, 128, 128>;
template [[host_name("kernel_flash_attn_ext_turbo2_dk256_dv256"      )]] kernel flash_attn_ext_t kernel_flash_attn_ext<FA_TYPES, block_turbo2, 4, dequantize_turbo2, block_turbo2, 4, dequantize_turbo2, 256, 256>;

template [[host_name("kernel_flash_attn_ext_turbo3_dk64_dv64"        )]] kernel flash_attn_ext_t kernel_flash_attn_ext<FA_TYPES, block_turbo3, 4, dequantize_turbo3, block_turbo3, 4, dequantize_turbo3, 64, 64>;
template [[host_name("kernel_flash_attn_ext_turbo3_dk128_dv128"      )]] kernel flash_attn_ext_t kernel_flash_attn_ext<FA_TYPES, block_turbo3, 4, dequantize_turbo3, block_turbo3, 4, dequantize_turbo3, 128, 128>;
template [[host_name("kernel_flash_attn_ext_turbo3_dk256_dv256"      )]] kernel flash_attn_ext_t kernel_flash_attn_ext<FA_TYPES, block_turbo3, 4, dequantize_turbo3, block_turbo3, 4, dequantize_turbo3, 256, 256>;

template [[host_name("kernel_flash_attn_ext_turbo4_dk64_dv64"        )]] kernel flash_attn_ext_t kernel_flash_attn_ext<FA_TYPES, block_turbo4, 4, dequantize_turbo4, block_turbo4, 4, dequantize_turbo4, 64, 64>;
template [[host_name("kernel_flash_attn_ext_turbo4_dk128_dv128"      )]] kernel flash_attn_ext_t kernel_flash_attn_ext<FA_TYPES, block_turbo4, 4, dequantize_turbo4, block_turbo4, 4, dequantize_turbo4, 128, 128>;
template [[host_name("kernel_flash_attn_ext_turbo4_dk256_dv256"      )]] kernel flash_attn_ext_t kernel_flash_attn_ext<FA_TYPES, block_turbo4, 4, dequantize_turbo4, block_turbo4, 4, dequantize_turbo4, 256, 256>;

template [[host_name("kernel_flash_attn_ext_q8_0_turbo2_dk64_dv64"   )]] kernel flash_attn_ext_t kernel_flash_attn_ext<FA_TYPES, block_q8_0, 2, dequantize_q8_0, block_turbo2, 4, dequantize_turbo2, 64, 64>;
template [[host_name("kernel_flash_attn_ext_q8_0_turbo2_dk128_dv128" )]] kernel flash_attn_ext_t kernel_flash_attn_ext<FA_TYPES, block_q8_0, 2, dequantize_q8_0, block_turbo2, 4, dequantize_turbo2, 128, 128>;
template [[host_name("kernel_flash_attn_ext_q8_0_turbo2_dk256_dv256" )]] kernel flash_attn_ext_t kernel_flash_attn_ext<FA_TYPES, block_q8_0, 2, dequantize_q8_0, block_turbo2, 4, dequantize_turbo2, 256, 256>;

template [[host_name("kernel_flash_attn_ext_q8_0_turbo3_dk64_dv64"   )]] kernel flash_attn_ext_t kernel_flash_attn_ext<FA_TYPES, block_q8_0, 2, dequantize_q8_0, block_turbo3, 4, dequantize_turbo3, 64, 64>;
template [[host_name("kernel_flash_attn_ext_q8_0_turbo3_dk128_dv128" )]] kernel flash_attn_ext_t kernel_flash_attn_ext<FA_TYPES, block_q8_0, 2, dequantize_q8_0, block_turbo3, 4, dequantize_turbo3, 128, 128>;
template [[host_name("kernel_flash_attn_ext_q8_0_turbo3_dk256_dv256" )]] kernel flash_attn_ext_t kernel_flash_attn_ext<FA_TYPES, block_q8_0, 2, dequantize_q8_0, block_turbo3, 4, dequantize_turbo3, 256, 256>;

template [[host_name("kernel_flash_attn_ext_q8_0_turbo4_dk64_dv64"   )]] kernel flash_attn_ext_t kernel_flash_attn_ext<FA_TYPES, block_q8_0, 2, dequantize_q8_0, block_turbo4, 4, dequantize_turbo4, 64, 64>;
template [[host_name("kernel_flash_attn_ext_q8_0_turbo4_dk128_dv128" )]] kernel flash_attn_ext_t kernel_flash_attn_ext<FA_TYPES, block_q8_0, 2, dequantize_q8_0, block_turbo4, 4, dequantize_turbo4, 128, 128>;
template [[host_name("kernel_flash_attn_ext_q8_0_turbo4_dk256_dv256" )]] kernel flash_attn_ext_t kernel_flash_attn_ext<FA_TYPES, block_q8_0, 2, dequantize_q8_0, block_turbo4, 4, dequantize_turbo4, 256, 256>;

#undef FA_TYPES
