// Holds the CUDA block math of the trellis-coded types (csrc/cuda/turbo-tcq-block.h,
// compiled here as host C++) to the CPU reference (csrc/turbo-tcq.c, as built into a
// libggml-base) bit for bit, for turbo3t and turbo2t:
//
//   fp16        the header's fp32 -> fp16 rounding against ggml's, on a sweep of floats
//   blocks      the encoder's blocks on random rows at scales 1e-6..1e4 and on edge
//               cases (zeros, a constant block, a lone spike, subnormal squares,
//               squares that overflow, infinities)
//   dequantize  every value of every block, as the qr=2 pairs of convert.cu
//
// Built and run by tests/test_cuda_host.py (-ffp-contract=off, like ggml).
// Prints one line per type and check; exits 1 on any mismatch.

#define GGML_COMMON_DECL_CPP
#define GGML_COMMON_IMPL_CPP
#include "ggml-common.h"
#include "turbo-common.h"
#include "turbo-tcq.h"
#include "turbo-block.h"
#include "turbo-tcq-block.h"
#include "random-blocks.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <vector>

namespace {

constexpr int N_RANDOM_BLOCKS = 3000;   // the serial Viterbi search is ~30k steps a block

block_rng rng = {0x2b992ddfa23249d6ull};

// Random blocks at scales from 1e-6 to 1e4, then the edge cases.
std::vector<float> make_blocks() {
    std::vector<float> x = rng.blocks(N_RANDOM_BLOCKS, 0);
    const float inf = std::numeric_limits<float>::infinity();
    for (int edge = 0; edge < 7; ++edge) {
        for (int j = 0; j < QK_TURBO; ++j) {
            float v = 0.0f;
            switch (edge) {
                case 0: v = 0.0f; break;                                            // zeros
                case 1: v = 0.37f; break;                                           // constant
                case 2: v = j == 17 ? -5.0f : 0.0f; break;                          // a lone spike
                case 3: v = (j % 2 ? 1.0f : -1.0f)*1e-20f*(float) (j + 1); break;   // subnormal squares
                case 4: v = (j % 3 ? 1.0f : -1.0f)*3e18f*(float) (j + 1); break;    // squares overflow to inf
                case 5: v = j == 40 ? inf : rng.gaussish(); break;                  // an infinity
                case 6: v = j == 5 ? 1e30f : (float) j*1e-30f; break;               // huge spike over tiny values
            }
            x.push_back(v);
        }
    }
    return x;
}

int check_fp16() {
    int differ = 0, checked = 0;
    for (uint32_t bits = 0x33000000u; bits < 0x47900000u; bits += 0x1F3u, ++checked) {   // 2^-25 .. past 65520
        float f;
        memcpy(&f, &bits, sizeof(f));
        differ += turbo_fp16_bits(f) != ggml_fp32_to_fp16(f);
        differ += turbo_fp16_value(turbo_fp16_bits(f)) != ggml_fp16_to_fp32(ggml_fp32_to_fp16(f));
    }
    printf("fp16 rounding: %s (%d floats, %d differ)\n", differ ? "DIFFER" : "identical", checked, differ);
    return differ != 0;
}

struct tcq_type {
    const char * name;
    int k;
    size_t block_bytes;
    const float * values;
    void (*quantize_ref)(const float * x, void * y, int64_t n);
    void (*dequantize_ref)(const void * x, float * y, int64_t n);
};

void quantize_ref_turbo3t(const float * x, void * y, int64_t n) { quantize_row_turbo3t_ref(x, (block_turbo3t *) y, n); }
void quantize_ref_turbo2t(const float * x, void * y, int64_t n) { quantize_row_turbo2t_ref(x, (block_turbo2t *) y, n); }
void dequantize_ref_turbo3t(const void * x, float * y, int64_t n) { dequantize_row_turbo3t((const block_turbo3t *) x, y, n); }
void dequantize_ref_turbo2t(const void * x, float * y, int64_t n) { dequantize_row_turbo2t((const block_turbo2t *) x, y, n); }

int check_type(const tcq_type & t, const std::vector<float> & x) {
    const size_t n_blocks = x.size() / QK_TURBO;
    std::vector<uint8_t> ref(n_blocks*t.block_bytes), ours(n_blocks*t.block_bytes);
    t.quantize_ref(x.data(), ref.data(), (int64_t) x.size());
    size_t blocks_differ = 0;
    for (size_t b = 0; b < n_blocks; ++b) {
        turbo_tcq_quantize_block(x.data() + b*QK_TURBO, t.values, t.k, ours.data() + b*t.block_bytes, (int) t.block_bytes);
        blocks_differ += memcmp(ours.data() + b*t.block_bytes, ref.data() + b*t.block_bytes, t.block_bytes) != 0;
    }
    printf("%s blocks: %s (%zu blocks, %zu differ)\n", t.name, blocks_differ ? "DIFFER" : "identical", n_blocks, blocks_differ);

    std::vector<float> ref_values(x.size());
    t.dequantize_ref(ref.data(), ref_values.data(), (int64_t) x.size());
    size_t values_differ = 0;
    for (size_t b = 0; b < n_blocks; ++b) {
        const uint8_t * block = ref.data() + b*t.block_bytes;
        const float d = turbo_tcq_scale_of(turbo_tcq_head(block));
        for (int j = 0; j < QK_TURBO/2; ++j) {
            float v0, v1;
            turbo_tcq_dequantize_pair(block, (int) t.block_bytes, t.k, j, d, t.values, &v0, &v1);
            const float r0 = ref_values[b*QK_TURBO + j], r1 = ref_values[b*QK_TURBO + j + QK_TURBO/2];
            values_differ += memcmp(&v0, &r0, sizeof(v0)) != 0;   // bitwise: NaN scales must match too
            values_differ += memcmp(&v1, &r1, sizeof(v1)) != 0;
        }
    }
    printf("%s dequantize: %s (%zu values differ)\n", t.name, values_differ ? "DIFFER" : "identical", values_differ);
    return (blocks_differ != 0) + (values_differ != 0);
}

} // namespace

int main() {
    const std::vector<float> x = make_blocks();
    const tcq_type types[] = {
        { "turbo3t", 3, sizeof(block_turbo3t), kvalues_turbo3t, quantize_ref_turbo3t, dequantize_ref_turbo3t },
        { "turbo2t", 2, sizeof(block_turbo2t), kvalues_turbo2t, quantize_ref_turbo2t, dequantize_ref_turbo2t },
    };
    int failures = check_fp16();
    for (const tcq_type & t : types) {
        failures += check_type(t, x);
    }
    printf("%d checks failed\n", failures);
    return failures ? 1 : 0;
}
