// pyturbo: flash attention vector kernels (decoding, small batches) over turbo
// KV caches.
//
// Instantiations of ggml's kernel_flash_attn_ext_vec template
// (fa_vec_common.metal), as kernels/fa_vec_q4_0.metal and fa_vec_q8_0.metal
// instantiate it, for the K/V pairs pyturbo's Metal supports_op accepts
// (turbo-metal.cpp), head sizes 64, 128, 256 (DK == DV). A turbo block is 64
// values, so nl = 64/4 = 16 calls of dequantize_turboN_t4 cover one block.
//
// Which (queries per threadgroup, head elements per thread) variant the host
// asks for comes from ggml_metal_tuning::fa_vec_pick, keyed by the K type: its
// table has no turbo rows, so a turbo K always gets the baseline variant (the
// plain name); a q8_0 K gets q8_0's tuned variants, so the q8_0/turboN pairs
// have every variant fa_vec_q8_0.metal has at these head sizes.
// tests/test_metal.py runs the host's op encoder and checks both.

#include "common.h"
#include "dequantize.h"
#include "turbo-common.h"
#include "turbo-block.h"
#include "fa_vec_common.metal"

#define FA_TYPES \
           half4,  \
           half4,  \
           half4,  \
    float,         \
    float, float4, \
           float4

typedef decltype(kernel_flash_attn_ext_vec<FA_TYPES, half4, 1, dequantize_f16_t4, half4, 1, dequantize_f16_t4, 128, 128, 4>) flash_attn_ext_vec_t;

template [[host_name("kernel_flash_attn_ext_vec_turbo2_dk64_dv64"                )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_turbo2, 16, dequantize_turbo2_t4, block_turbo2, 16, dequantize_turbo2_t4, 64, 64, 2>;
template [[host_name("kernel_flash_attn_ext_vec_turbo2_dk128_dv128"              )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_turbo2, 16, dequantize_turbo2_t4, block_turbo2, 16, dequantize_turbo2_t4, 128, 128, 1>;
template [[host_name("kernel_flash_attn_ext_vec_turbo2_dk256_dv256"              )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_turbo2, 16, dequantize_turbo2_t4, block_turbo2, 16, dequantize_turbo2_t4, 256, 256, 1>;

template [[host_name("kernel_flash_attn_ext_vec_turbo3_dk64_dv64"                )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_turbo3, 16, dequantize_turbo3_t4, block_turbo3, 16, dequantize_turbo3_t4, 64, 64, 2>;
template [[host_name("kernel_flash_attn_ext_vec_turbo3_dk128_dv128"              )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_turbo3, 16, dequantize_turbo3_t4, block_turbo3, 16, dequantize_turbo3_t4, 128, 128, 1>;
template [[host_name("kernel_flash_attn_ext_vec_turbo3_dk256_dv256"              )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_turbo3, 16, dequantize_turbo3_t4, block_turbo3, 16, dequantize_turbo3_t4, 256, 256, 1>;

template [[host_name("kernel_flash_attn_ext_vec_turbo4_dk64_dv64"                )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_turbo4, 16, dequantize_turbo4_t4, block_turbo4, 16, dequantize_turbo4_t4, 64, 64, 2>;
template [[host_name("kernel_flash_attn_ext_vec_turbo4_dk128_dv128"              )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_turbo4, 16, dequantize_turbo4_t4, block_turbo4, 16, dequantize_turbo4_t4, 128, 128, 1>;
template [[host_name("kernel_flash_attn_ext_vec_turbo4_dk256_dv256"              )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_turbo4, 16, dequantize_turbo4_t4, block_turbo4, 16, dequantize_turbo4_t4, 256, 256, 1>;

template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo2_dk64_dv64"           )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo2, 16, dequantize_turbo2_t4, 64, 64, 2>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo2_dk64_dv64_q1_ne4"    )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo2, 16, dequantize_turbo2_t4, 64, 64, 4, 1>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo2_dk64_dv64_q2_ne2"    )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo2, 16, dequantize_turbo2_t4, 64, 64, 2, 2>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo2_dk64_dv64_q2_ne4"    )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo2, 16, dequantize_turbo2_t4, 64, 64, 4, 2>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo2_dk64_dv64_q4_ne2"    )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo2, 16, dequantize_turbo2_t4, 64, 64, 2, 4>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo2_dk64_dv64_q4_ne4"    )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo2, 16, dequantize_turbo2_t4, 64, 64, 4, 4>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo2_dk128_dv128"         )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo2, 16, dequantize_turbo2_t4, 128, 128, 1>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo2_dk128_dv128_q1_ne2"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo2, 16, dequantize_turbo2_t4, 128, 128, 2, 1>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo2_dk128_dv128_q1_ne4"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo2, 16, dequantize_turbo2_t4, 128, 128, 4, 1>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo2_dk128_dv128_q2_ne1"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo2, 16, dequantize_turbo2_t4, 128, 128, 1, 2>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo2_dk128_dv128_q2_ne2"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo2, 16, dequantize_turbo2_t4, 128, 128, 2, 2>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo2_dk128_dv128_q2_ne4"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo2, 16, dequantize_turbo2_t4, 128, 128, 4, 2>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo2_dk128_dv128_q4_ne1"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo2, 16, dequantize_turbo2_t4, 128, 128, 1, 4>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo2_dk128_dv128_q4_ne2"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo2, 16, dequantize_turbo2_t4, 128, 128, 2, 4>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo2_dk128_dv128_q4_ne4"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo2, 16, dequantize_turbo2_t4, 128, 128, 4, 4>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo2_dk256_dv256"         )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo2, 16, dequantize_turbo2_t4, 256, 256, 1>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo2_dk256_dv256_q1_ne2"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo2, 16, dequantize_turbo2_t4, 256, 256, 2, 1>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo2_dk256_dv256_q1_ne4"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo2, 16, dequantize_turbo2_t4, 256, 256, 4, 1>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo2_dk256_dv256_q2_ne1"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo2, 16, dequantize_turbo2_t4, 256, 256, 1, 2>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo2_dk256_dv256_q2_ne2"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo2, 16, dequantize_turbo2_t4, 256, 256, 2, 2>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo2_dk256_dv256_q2_ne4"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo2, 16, dequantize_turbo2_t4, 256, 256, 4, 2>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo2_dk256_dv256_q4_ne1"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo2, 16, dequantize_turbo2_t4, 256, 256, 1, 4>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo2_dk256_dv256_q4_ne2"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo2, 16, dequantize_turbo2_t4, 256, 256, 2, 4>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo2_dk256_dv256_q4_ne4"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo2, 16, dequantize_turbo2_t4, 256, 256, 4, 4>;

template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo3_dk64_dv64"           )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo3, 16, dequantize_turbo3_t4, 64, 64, 2>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo3_dk64_dv64_q1_ne4"    )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo3, 16, dequantize_turbo3_t4, 64, 64, 4, 1>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo3_dk64_dv64_q2_ne2"    )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo3, 16, dequantize_turbo3_t4, 64, 64, 2, 2>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo3_dk64_dv64_q2_ne4"    )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo3, 16, dequantize_turbo3_t4, 64, 64, 4, 2>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo3_dk64_dv64_q4_ne2"    )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo3, 16, dequantize_turbo3_t4, 64, 64, 2, 4>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo3_dk64_dv64_q4_ne4"    )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo3, 16, dequantize_turbo3_t4, 64, 64, 4, 4>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo3_dk128_dv128"         )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo3, 16, dequantize_turbo3_t4, 128, 128, 1>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo3_dk128_dv128_q1_ne2"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo3, 16, dequantize_turbo3_t4, 128, 128, 2, 1>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo3_dk128_dv128_q1_ne4"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo3, 16, dequantize_turbo3_t4, 128, 128, 4, 1>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo3_dk128_dv128_q2_ne1"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo3, 16, dequantize_turbo3_t4, 128, 128, 1, 2>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo3_dk128_dv128_q2_ne2"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo3, 16, dequantize_turbo3_t4, 128, 128, 2, 2>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo3_dk128_dv128_q2_ne4"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo3, 16, dequantize_turbo3_t4, 128, 128, 4, 2>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo3_dk128_dv128_q4_ne1"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo3, 16, dequantize_turbo3_t4, 128, 128, 1, 4>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo3_dk128_dv128_q4_ne2"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo3, 16, dequantize_turbo3_t4, 128, 128, 2, 4>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo3_dk128_dv128_q4_ne4"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo3, 16, dequantize_turbo3_t4, 128, 128, 4, 4>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo3_dk256_dv256"         )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo3, 16, dequantize_turbo3_t4, 256, 256, 1>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo3_dk256_dv256_q1_ne2"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo3, 16, dequantize_turbo3_t4, 256, 256, 2, 1>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo3_dk256_dv256_q1_ne4"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo3, 16, dequantize_turbo3_t4, 256, 256, 4, 1>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo3_dk256_dv256_q2_ne1"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo3, 16, dequantize_turbo3_t4, 256, 256, 1, 2>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo3_dk256_dv256_q2_ne2"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo3, 16, dequantize_turbo3_t4, 256, 256, 2, 2>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo3_dk256_dv256_q2_ne4"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo3, 16, dequantize_turbo3_t4, 256, 256, 4, 2>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo3_dk256_dv256_q4_ne1"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo3, 16, dequantize_turbo3_t4, 256, 256, 1, 4>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo3_dk256_dv256_q4_ne2"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo3, 16, dequantize_turbo3_t4, 256, 256, 2, 4>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo3_dk256_dv256_q4_ne4"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo3, 16, dequantize_turbo3_t4, 256, 256, 4, 4>;

template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo4_dk64_dv64"           )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo4, 16, dequantize_turbo4_t4, 64, 64, 2>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo4_dk64_dv64_q1_ne4"    )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo4, 16, dequantize_turbo4_t4, 64, 64, 4, 1>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo4_dk64_dv64_q2_ne2"    )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo4, 16, dequantize_turbo4_t4, 64, 64, 2, 2>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo4_dk64_dv64_q2_ne4"    )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo4, 16, dequantize_turbo4_t4, 64, 64, 4, 2>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo4_dk64_dv64_q4_ne2"    )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo4, 16, dequantize_turbo4_t4, 64, 64, 2, 4>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo4_dk64_dv64_q4_ne4"    )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo4, 16, dequantize_turbo4_t4, 64, 64, 4, 4>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo4_dk128_dv128"         )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo4, 16, dequantize_turbo4_t4, 128, 128, 1>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo4_dk128_dv128_q1_ne2"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo4, 16, dequantize_turbo4_t4, 128, 128, 2, 1>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo4_dk128_dv128_q1_ne4"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo4, 16, dequantize_turbo4_t4, 128, 128, 4, 1>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo4_dk128_dv128_q2_ne1"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo4, 16, dequantize_turbo4_t4, 128, 128, 1, 2>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo4_dk128_dv128_q2_ne2"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo4, 16, dequantize_turbo4_t4, 128, 128, 2, 2>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo4_dk128_dv128_q2_ne4"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo4, 16, dequantize_turbo4_t4, 128, 128, 4, 2>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo4_dk128_dv128_q4_ne1"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo4, 16, dequantize_turbo4_t4, 128, 128, 1, 4>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo4_dk128_dv128_q4_ne2"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo4, 16, dequantize_turbo4_t4, 128, 128, 2, 4>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo4_dk128_dv128_q4_ne4"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo4, 16, dequantize_turbo4_t4, 128, 128, 4, 4>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo4_dk256_dv256"         )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo4, 16, dequantize_turbo4_t4, 256, 256, 1>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo4_dk256_dv256_q1_ne2"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo4, 16, dequantize_turbo4_t4, 256, 256, 2, 1>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo4_dk256_dv256_q1_ne4"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo4, 16, dequantize_turbo4_t4, 256, 256, 4, 1>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo4_dk256_dv256_q2_ne1"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo4, 16, dequantize_turbo4_t4, 256, 256, 1, 2>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo4_dk256_dv256_q2_ne2"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo4, 16, dequantize_turbo4_t4, 256, 256, 2, 2>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo4_dk256_dv256_q2_ne4"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo4, 16, dequantize_turbo4_t4, 256, 256, 4, 2>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo4_dk256_dv256_q4_ne1"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo4, 16, dequantize_turbo4_t4, 256, 256, 1, 4>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo4_dk256_dv256_q4_ne2"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo4, 16, dequantize_turbo4_t4, 256, 256, 2, 4>;
template [[host_name("kernel_flash_attn_ext_vec_q8_0_turbo4_dk256_dv256_q4_ne4"  )]] kernel flash_attn_ext_vec_t kernel_flash_attn_ext_vec<FA_TYPES, block_q8_0, 8, dequantize_q8_0_t4, block_turbo4, 16, dequantize_turbo4_t4, 256, 256, 4, 4>;

#undef FA_TYPES
