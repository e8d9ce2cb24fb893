// pyturbo: turbo2/turbo3/turbo4 K and V in ggml's scalar and coopmat1 flash-attention
// shaders: views of the K (binding 1) and V (binding 2) buffers as turbo blocks and the
// dequantize4 bodies that flash_attn_dequant.glsl's switch on FaTypeK / FaTypeV calls
// (patches/0011 adds the case labels). iqs is a multiple of 4: four neighbouring values,
// whose codes sit in four neighbouring bytes (and, for turbo3, one nibble of qh); the
// trellis types' four states lie in one run of 6 + 4k bits of the block's bit string.

layout (binding = 1) readonly buffer K_PACKED_TURBO2 { block_turbo2_packed16 data[]; } k_packed_turbo2;
layout (binding = 2) readonly buffer V_PACKED_TURBO2 { block_turbo2_packed16 data[]; } v_packed_turbo2;
layout (binding = 1) readonly buffer K_PACKED_TURBO3 { block_turbo3_packed16 data[]; } k_packed_turbo3;
layout (binding = 2) readonly buffer V_PACKED_TURBO3 { block_turbo3_packed16 data[]; } v_packed_turbo3;
layout (binding = 1) readonly buffer K_PACKED_TURBO4 { block_turbo4_packed16 data[]; } k_packed_turbo4;
layout (binding = 2) readonly buffer V_PACKED_TURBO4 { block_turbo4_packed16 data[]; } v_packed_turbo4;
layout (binding = 1) readonly buffer K_PACKED_TURBO3T { block_turbo3t_packed16 data[]; } k_packed_turbo3t;
layout (binding = 2) readonly buffer V_PACKED_TURBO3T { block_turbo3t_packed16 data[]; } v_packed_turbo3t;
layout (binding = 1) readonly buffer K_PACKED_TURBO2T { block_turbo2t_packed16 data[]; } k_packed_turbo2t;
layout (binding = 2) readonly buffer V_PACKED_TURBO2T { block_turbo2t_packed16 data[]; } v_packed_turbo2t;

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

// The trellis tables in shared memory, as fp16 pairs (kvalues_turbo_tcq_fp16x2: turbo3t's
// 512 entries, then turbo2t's 256). Indexing a constant array by a computed state makes
// llvmpipe's compiler lower every lookup into a chain of selects (a decode pipeline took
// 2.5 minutes to build instead of 19 s), and a GPU would serve it from slow local memory.
// fa_type_needs_shmem lists the trellis types (patches/0011), so flash attention's main
// calls this before init_iq_shmem, whose barrier covers these writes too.
shared uint turbo_tcq_fa_table[384];

void pyturbo_fa_init_shmem(uvec3 wgsize) {
    for (uint i = gl_LocalInvocationIndex.x; i < 384u; i += wgsize.x) {
        turbo_tcq_fa_table[i] = kvalues_turbo_tcq_fp16x2[i];
    }
}

#define TURBO3T_FA_TABLE 0u
#define TURBO2T_FA_TABLE 512u

// Entry `state` of the table that starts at entry `first`.
float turbo_tcq_fa_value(uint first, uint state) {
    const uint i = first + state;
    return unpackHalf2x16(turbo_tcq_fa_table[i / 2u] >> (16u * (i % 2u))).x;
}

// 16-bit word i of a trellis block, 0 past its end (the last values' run may end in the
// block's last word or the one before).
#define TURBO_TCQ_WORD(BUF, N_WORDS, i) ((i) < (N_WORDS) ? uint(BUF.data[a_offset + ib].words[i]) : 0u)

// Values iqs .. iqs+3: their 6 + 4k bits start at bit 10 + k*iqs, at most bit 15 of a word,
// so they lie in that word and the next two.
#define FA_DEQUANT4_TCQ(BUF, N_WORDS, K, TABLE) {                                                 \
    const uint bit = 16u - TURBO_TCQ_START_BITS + (K) * iqs;                                      \
    const uint word = bit / 16u, shift = bit % 16u;                                               \
    const uint lo = TURBO_TCQ_WORD(BUF, N_WORDS, word) | (TURBO_TCQ_WORD(BUF, N_WORDS, word + 1u) << 16); \
    const uint run = (lo >> shift) | (shift > 0u ? TURBO_TCQ_WORD(BUF, N_WORDS, word + 2u) << (32u - shift) : 0u); \
    const uint mask = (TURBO_TCQ_GROUPS << (K)) - 1u;                                             \
    return FLOAT_TYPE(turbo_tcq_scale(uint(BUF.data[a_offset + ib].words[0]))) *                  \
           FLOAT_TYPEV4(turbo_tcq_fa_value(TABLE, run & mask), turbo_tcq_fa_value(TABLE, (run >> (K)) & mask), \
                        turbo_tcq_fa_value(TABLE, (run >> (2u * (K))) & mask),                    \
                        turbo_tcq_fa_value(TABLE, (run >> (3u * (K))) & mask));                   \
}

#define FA_DEQUANT4_TURBO3T(BUF) FA_DEQUANT4_TCQ(BUF, TURBO3T_BYTES / 2, 3u, TURBO3T_FA_TABLE)
#define FA_DEQUANT4_TURBO2T(BUF) FA_DEQUANT4_TCQ(BUF, TURBO2T_BYTES / 2, 2u, TURBO2T_FA_TABLE)

#define PYTURBO_FA_DEQUANT4_CASES_K                                 \
    case GGML_TYPE_TURBO2: FA_DEQUANT4_TURBO2(k_packed_turbo2)      \
    case GGML_TYPE_TURBO3: FA_DEQUANT4_TURBO3(k_packed_turbo3)      \
    case GGML_TYPE_TURBO4: FA_DEQUANT4_TURBO4(k_packed_turbo4)      \
    case GGML_TYPE_TURBO3T: FA_DEQUANT4_TURBO3T(k_packed_turbo3t)   \
    case GGML_TYPE_TURBO2T: FA_DEQUANT4_TURBO2T(k_packed_turbo2t)

#define PYTURBO_FA_DEQUANT4_CASES_V                                 \
    case GGML_TYPE_TURBO2: FA_DEQUANT4_TURBO2(v_packed_turbo2)      \
    case GGML_TYPE_TURBO3: FA_DEQUANT4_TURBO3(v_packed_turbo3)      \
    case GGML_TYPE_TURBO4: FA_DEQUANT4_TURBO4(v_packed_turbo4)      \
    case GGML_TYPE_TURBO3T: FA_DEQUANT4_TURBO3T(v_packed_turbo3t)   \
    case GGML_TYPE_TURBO2T: FA_DEQUANT4_TURBO2T(v_packed_turbo2t)
