// pyturbo: turbo2/turbo3/turbo4 K and V in ggml's scalar and coopmat1 flash-attention
// shaders: views of the K (binding 1) and V (binding 2) buffers as turbo blocks and the
// dequantize4 bodies that flash_attn_dequant.glsl's switch on FaTypeK / FaTypeV calls
// (patches/0011 adds the case labels). iqs is a multiple of 4: four neighbouring values,
// whose codes sit in four neighbouring bytes (and, for turbo3, one nibble of qh).

layout (binding = 1) readonly buffer K_PACKED_TURBO2 { block_turbo2_packed16 data[]; } k_packed_turbo2;
layout (binding = 2) readonly buffer V_PACKED_TURBO2 { block_turbo2_packed16 data[]; } v_packed_turbo2;
layout (binding = 1) readonly buffer K_PACKED_TURBO3 { block_turbo3_packed16 data[]; } k_packed_turbo3;
layout (binding = 2) readonly buffer V_PACKED_TURBO3 { block_turbo3_packed16 data[]; } v_packed_turbo3;
layout (binding = 1) readonly buffer K_PACKED_TURBO4 { block_turbo4_packed16 data[]; } k_packed_turbo4;
layout (binding = 2) readonly buffer V_PACKED_TURBO4 { block_turbo4_packed16 data[]; } v_packed_turbo4;

// Bytes b .. b+3 of a block's qs (b a multiple of 4) as one uint, byte k in bits 8k .. 8k+7.
#define TURBO_QS_BYTES4(BUF, b) \
    (uint(BUF.data[a_offset + ib].qs[(b) / 2u]) | (uint(BUF.data[a_offset + ib].qs[(b) / 2u + 1u]) << 16))

#define TURBO_SCALED4(BUF, VALUES, c0, c1, c2, c3) \
    return FLOAT_TYPE(BUF.data[a_offset + ib].d) * FLOAT_TYPEV4(VALUES[c0], VALUES[c1], VALUES[c2], VALUES[c3]);

#define FA_DEQUANT4_TURBO2(BUF) {                                                                 \
    const uint q = TURBO_QS_BYTES4(BUF, iqs % 16u) >> (2u * (iqs / 16u));                         \
    TURBO_SCALED4(BUF, kvalues_turbo2, q & 3u, (q >> 8) & 3u, (q >> 16) & 3u, (q >> 24) & 3u)     \
}

#define FA_DEQUANT4_TURBO3(BUF) {                                                                 \
    const uint q = TURBO_QS_BYTES4(BUF, iqs % 16u) >> (2u * (iqs / 16u));                         \
    const uint h = (uint(BUF.data[a_offset + ib].qh[iqs / 16u]) >> (8u * ((iqs / 8u) % 2u) + iqs % 8u)) << 2; \
    TURBO_SCALED4(BUF, kvalues_turbo3, (q & 3u) | (h & 4u), ((q >> 8) & 3u) | ((h >> 1) & 4u),    \
                  ((q >> 16) & 3u) | ((h >> 2) & 4u), ((q >> 24) & 3u) | ((h >> 3) & 4u))         \
}

#define FA_DEQUANT4_TURBO4(BUF) {                                                                 \
    const uint q = TURBO_QS_BYTES4(BUF, iqs % 32u) >> (4u * (iqs / 32u));                         \
    TURBO_SCALED4(BUF, kvalues_turbo4, q & 15u, (q >> 8) & 15u, (q >> 16) & 15u, (q >> 24) & 15u) \
}

#define PYTURBO_FA_DEQUANT4_CASES_K                                 \
    case GGML_TYPE_TURBO2: FA_DEQUANT4_TURBO2(k_packed_turbo2)      \
    case GGML_TYPE_TURBO3: FA_DEQUANT4_TURBO3(k_packed_turbo3)      \
    case GGML_TYPE_TURBO4: FA_DEQUANT4_TURBO4(k_packed_turbo4)

#define PYTURBO_FA_DEQUANT4_CASES_V                                 \
    case GGML_TYPE_TURBO2: FA_DEQUANT4_TURBO2(v_packed_turbo2)      \
    case GGML_TYPE_TURBO3: FA_DEQUANT4_TURBO3(v_packed_turbo3)      \
    case GGML_TYPE_TURBO4: FA_DEQUANT4_TURBO4(v_packed_turbo4)
