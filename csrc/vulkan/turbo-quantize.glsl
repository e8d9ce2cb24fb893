// pyturbo: the turbo2/turbo3/turbo4 quantizer for ggml's copy_to_quant shader (SET_ROWS,
// the KV write, and CPY f32/f16 -> turbo): one invocation codes one block, the same steps
// as csrc/turbo-quants.c's turbo_quantize_block. Every sum runs in the reference's order
// and every result is `precise` (no fused multiply-add, no reordering), so on a device whose
// float division and square root round correctly (IEEE, as llvmpipe's do) the codes and
// scales equal the CPU's bit for bit; elsewhere Vulkan allows them 2.5 ulp, and a value
// at a threshold may take the neighbouring code. Included by copy_to_quant.comp
// (patches/0011), which declares data_s and data_q.

#if defined(DATA_A_TURBO2) || defined(DATA_A_TURBO3) || defined(DATA_A_TURBO4)

#if defined(DATA_A_TURBO2)
#define TURBO_N_THRESH 3
#define TURBO_THRESH kthresh_turbo2
#define TURBO_VALUES kvalues_turbo2
#elif defined(DATA_A_TURBO3)
#define TURBO_N_THRESH 7
#define TURBO_THRESH kthresh_turbo3
#define TURBO_VALUES kvalues_turbo3
#else
#define TURBO_N_THRESH 15
#define TURBO_THRESH kthresh_turbo4
#define TURBO_VALUES kvalues_turbo4
#endif

// The code of every value at this scale: how many thresholds lie below x * inv_scale
// (ties go to the lower code).
void turbo_pick_codes(const float x[QUANT_K_TURBO], float inv_scale, inout uint codes[QUANT_K_TURBO]) {
    [[unroll]] for (uint j = 0; j < QUANT_K_TURBO; ++j) {
        precise const float y = x[j] * inv_scale;
        uint code = 0;
        [[unroll]] for (uint t = 0; t < TURBO_N_THRESH; ++t) {
            code += y > TURBO_THRESH[t] ? 1u : 0u;
        }
        codes[j] = code;
    }
}

// sum_j values[codes[j]]^2, in order
float turbo_code_energy(const uint codes[QUANT_K_TURBO]) {
    precise float cc = 0.0;
    [[unroll]] for (uint j = 0; j < QUANT_K_TURBO; ++j) {
        precise const float c = TURBO_VALUES[codes[j]];
        cc += c * c;
    }
    return cc;
}

// Picks the codes of one block and returns its scale d (turbo_quantize_block).
float turbo_quantize_block(const float x[QUANT_K_TURBO], inout uint codes[QUANT_K_TURBO]) {
    precise float sumsq = 0.0;
    [[unroll]] for (uint j = 0; j < QUANT_K_TURBO; ++j) {
        sumsq += x[j] * x[j];
    }
    if (!(sumsq > 0.0)) {
        // all zero (or NaN): code 0 with a zero scale dequantizes to 0
        [[unroll]] for (uint j = 0; j < QUANT_K_TURBO; ++j) {
            codes[j] = 0;
        }
        return sumsq == 0.0 ? 0.0 : sumsq;
    }
    // first pick at unit variance, then re-picks at the least-squares scale of the codes
    precise const float unit = sqrt(float(QUANT_K_TURBO) / sumsq);
    turbo_pick_codes(x, unit, codes);
    for (uint r = 0; r < TURBO_LSQ_REPICKS; ++r) {
        precise float xc = 0.0;
        [[unroll]] for (uint j = 0; j < QUANT_K_TURBO; ++j) {
            xc += x[j] * TURBO_VALUES[codes[j]];
        }
        precise const float d = xc / turbo_code_energy(codes);
        if (!(d > 0.0)) {
            break;
        }
        precise const float inv = 1.0 / d;
        turbo_pick_codes(x, inv, codes);
    }
    // the corrected norm: d * ||values[codes]|| == ||x||
    precise const float d = sqrt(sumsq / turbo_code_energy(codes));
    return d;
}

void quantize(uint dst_idx, uint src_idx) {
    float x[QUANT_K_TURBO];
    [[unroll]] for (uint j = 0; j < QUANT_K_TURBO; ++j) {
        x[j] = float(data_s[src_idx + j]);
    }
    uint codes[QUANT_K_TURBO];
    data_q[dst_idx].d = float16_t(turbo_quantize_block(x, codes));
#if defined(DATA_A_TURBO4)
    [[unroll]] for (uint j = 0; j < QUANT_K_TURBO / 2; ++j) {
        data_q[dst_idx].qs[j] = uint8_t(codes[j] | (codes[j + 32] << 4));
    }
#else
    [[unroll]] for (uint j = 0; j < QUANT_K_TURBO / 4; ++j) {
        data_q[dst_idx].qs[j] = uint8_t((codes[j] & 3u) | ((codes[j + 16] & 3u) << 2) |
                                        ((codes[j + 32] & 3u) << 4) | ((codes[j + 48] & 3u) << 6));
    }
#endif
#if defined(DATA_A_TURBO3)
    [[unroll]] for (uint j = 0; j < QUANT_K_TURBO / 8; ++j) {
        uint h = 0;
        [[unroll]] for (uint b = 0; b < 8; ++b) {
            h |= (codes[8 * j + b] >> 2) << b;
        }
        data_q[dst_idx].qh[j] = uint8_t(h);
    }
#endif
}

#endif

#include "turbo-tcq-quantize.glsl" // turbo3t, turbo2t
