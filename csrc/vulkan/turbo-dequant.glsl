// pyturbo: turbo2/turbo3/turbo4 and turbo3t/turbo2t values for ggml's dequantizing shaders
// (get_rows_quant, copy_from_quant): dequantize/dequantize4 give codebook (or trellis
// table) values, get_dm the block scale, so each shader's v * d is the CPU's
// d * kvalues[code], one float product. Included at the end of dequant_funcs.glsl
// (patches/0011), which declares data_a.

#if defined(DATA_A_TURBO2) || defined(DATA_A_TURBO3) || defined(DATA_A_TURBO4)

// value j of block ib, unscaled
float turbo_value(uint ib, uint j, uint a_offset) {
#if defined(DATA_A_TURBO2)
    return kvalues_turbo2[turbo2_code(uint(data_a[a_offset + ib].qs[j % 16u]), j)];
#elif defined(DATA_A_TURBO3)
    return kvalues_turbo3[turbo3_code(uint(data_a[a_offset + ib].qs[j % 16u]),
                                      uint(data_a[a_offset + ib].qh[j / 8u]), j)];
#else
    return kvalues_turbo4[turbo4_code(uint(data_a[a_offset + ib].qs[j % 32u]), j)];
#endif
}

vec2 get_dm(uint ib, uint a_offset) {
    return vec2(float(data_a[a_offset + ib].d), 0);
}

#elif defined(DATA_A_TURBO3T) || defined(DATA_A_TURBO2T)

// value j of block ib, unscaled: the table entry of its trellis state
float turbo_value(uint ib, uint j, uint a_offset) {
    const uint bit  = 16u - TURBO_TCQ_START_BITS + TURBO_TCQ_K * j;
    const uint byte = bit / 8u;
    const uint lo = uint(data_a[a_offset + ib].b[byte]);
    // the last window of turbo2t ends at the block's last bit
    const uint hi = byte + 1u < TURBO_TCQ_BYTES ? uint(data_a[a_offset + ib].b[byte + 1u]) : 0u;
    return TURBO_TCQ_VALUES[turbo_tcq_window(lo, hi, bit, TURBO_TCQ_K)];
}

vec2 get_dm(uint ib, uint a_offset) {
    return vec2(turbo_tcq_scale(uint(data_a[a_offset + ib].b[0]) | (uint(data_a[a_offset + ib].b[1]) << 8)), 0);
}

#endif

#if defined(DATA_A_TURBO2) || defined(DATA_A_TURBO3) || defined(DATA_A_TURBO4) || \
    defined(DATA_A_TURBO3T) || defined(DATA_A_TURBO2T)

// values iqs and iqs + 1 of block ib (QUANT_R 1)
vec2 dequantize(uint ib, uint iqs, uint a_offset) {
    return vec2(turbo_value(ib, iqs, a_offset), turbo_value(ib, iqs + 1u, a_offset));
}

vec4 dequantize4(uint ib, uint iqs, uint a_offset) {
    return vec4(turbo_value(ib, iqs, a_offset), turbo_value(ib, iqs + 1u, a_offset),
                turbo_value(ib, iqs + 2u, a_offset), turbo_value(ib, iqs + 3u, a_offset));
}

#endif
