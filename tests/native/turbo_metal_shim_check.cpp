// Runs the Metal per-block math of the turbo types (csrc/metal/turbo-block.h),
// compiled as host C++ through the stand-in <metal_stdlib> in metal-host/,
// against pyturbo's reference (csrc/turbo-quants.c, from the libggml-base it is
// linked with; csrc/turbo-tcq.c for the trellis-coded types of turbo-tcq-block.h):
// the quantize helpers must write the same bytes, and the
// dequantize helpers (16-value and 4-value forms, float and half results) the
// same values, bit for bit. Built and run by tests/test_metal_shim.py.
//
// Prints one line per type and check; exits 1 on any mismatch.

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

// Metal's view of the block structs and tables; <metal_stdlib> is the stand-in
#define GGML_COMMON_DECL_METAL
#define GGML_COMMON_IMPL_METAL
#include "ggml-common.h"
#include "turbo-common.h"
#include "turbo-block.h"
#include "turbo-tcq-block.h"

// csrc/turbo-quants.c, declared here: its header would bring ggml.h in after
// the stand-in's address-space macros
extern "C" {
void quantize_row_turbo2_ref(const float * x, void * y, int64_t k);
void quantize_row_turbo3_ref(const float * x, void * y, int64_t k);
void quantize_row_turbo4_ref(const float * x, void * y, int64_t k);
void dequantize_row_turbo2(const void * x, float * y, int64_t k);
void dequantize_row_turbo3(const void * x, float * y, int64_t k);
void dequantize_row_turbo4(const void * x, float * y, int64_t k);
void quantize_row_turbo3t_ref(const float * x, void * y, int64_t k);
void quantize_row_turbo2t_ref(const float * x, void * y, int64_t k);
void dequantize_row_turbo3t(const void * x, float * y, int64_t k);
void dequantize_row_turbo2t(const void * x, float * y, int64_t k);
}

namespace {

constexpr int N_BLOCKS = 20000;

uint64_t rng_state = 0x853c49e6748fea9bull;

float uniform01() {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float) ((rng_state >> 40) + 0.5) / (float) (1ull << 24);
}

// Mostly near-normal blocks with a per-block scale over 12 decades and the odd
// outlier; every 97th block is one of the edge cases of the block math.
std::vector<float> make_blocks() {
    std::vector<float> x((size_t) N_BLOCKS*QK_TURBO);
    for (int b = 0; b < N_BLOCKS; ++b) {
        float * block = x.data() + (size_t) b*QK_TURBO;
        const float scale = std::pow(10.0f, -8.0f + 12.0f*uniform01());
        for (int j = 0; j < QK_TURBO; ++j) {
            float g = 0.0f;
            for (int u = 0; u < 4; ++u) {
                g += uniform01() - 0.5f;
            }
            block[j] = scale*g*1.7320508f;
        }
        block[(int) (uniform01()*QK_TURBO)] *= 1.0f + 15.0f*uniform01();
        if (b % 97 != 0) {
            continue;
        }
        for (int j = 0; j < QK_TURBO; ++j) {
            switch ((b/97) % 6) {
                case 0: block[j] = 0.0f; break;                                       // zero block: scale 0
                case 1: block[j] = 0.37f; break;                                      // constant
                case 2: block[j] = j == 17 ? -5.0f : 0.0f; break;                     // single spike
                case 3: block[j] = (j % 2 ? 1.0f : -1.0f)*1e-20f*(float) (j + 1); break;   // subnormal squares
                case 4: block[j] = (j % 3 ? 1.0f : -1.0f)*4.0e5f; break;             // scale beyond half: infinity
                case 5: block[j] = (float) (j % 8) - 3.5f; break;                     // values on a grid (ties)
            }
        }
    }
    return x;
}

using dequantize_row_t = void (*)(const void *, float *, int64_t);

int bits_differ(float a, float b) {
    uint32_t ua, ub;
    std::memcpy(&ua, &a, 4);
    std::memcpy(&ub, &b, 4);
    return ua != ub;
}

int bits_differ(half a, half b) {
    uint16_t ua, ub;
    std::memcpy(&ua, &a, 2);
    std::memcpy(&ub, &b, 2);
    return ua != ub;
}

template <typename block_t, void (*quantize_metal)(device const float *, device block_t &),
          void (*dequantize16_f)(device const block_t *, short, thread float4x4 &),
          void (*dequantize16_h)(device const block_t *, short, thread half4x4 &),
          void (*dequantize4_f)(device const block_t *, short, thread float4 &),
          void (*dequantize4_h)(device const block_t *, short, thread half4 &)>
int check(const char * name, const std::vector<float> & x, void (*quantize_ref)(const float *, void *, int64_t),
          dequantize_row_t dequantize_ref) {
    std::vector<block_t> q_ref(N_BLOCKS), q_metal(N_BLOCKS);
    quantize_ref(x.data(), q_ref.data(), (int64_t) x.size());
    int blocks_differ = 0;
    for (int b = 0; b < N_BLOCKS; ++b) {
        quantize_metal(x.data() + (size_t) b*QK_TURBO, q_metal[b]);
        blocks_differ += std::memcmp(&q_metal[b], &q_ref[b], sizeof(block_t)) != 0;
    }
    std::printf("%s quantize: %d of %d blocks differ\n", name, blocks_differ, N_BLOCKS);

    // dequantize the reference's blocks both ways
    std::vector<float> y_ref(x.size());
    dequantize_ref(q_ref.data(), y_ref.data(), (int64_t) x.size());
    int values_differ = 0, halves_differ = 0, nonfinite = 0;
    for (int b = 0; b < N_BLOCKS; ++b) {
        const float * ref = y_ref.data() + (size_t) b*QK_TURBO;
        for (short il = 0; il < QK_TURBO/16; ++il) {
            float4x4 rf;
            half4x4  rh;
            dequantize16_f(&q_ref[b], il, rf);
            dequantize16_h(&q_ref[b], il, rh);
            for (int i = 0; i < 16; ++i) {
                const float want = ref[16*il + i];
                values_differ += bits_differ(rf[i/4][i%4], want);
                halves_differ += bits_differ(rh[i/4][i%4], (half) want);
                nonfinite += !std::isfinite(want);
            }
        }
        for (short il = 0; il < QK_TURBO/4; ++il) {
            float4 rf;
            half4  rh;
            dequantize4_f(&q_ref[b], il, rf);
            dequantize4_h(&q_ref[b], il, rh);
            for (int i = 0; i < 4; ++i) {
                const float want = ref[4*il + i];
                values_differ += bits_differ(rf[i], want);
                halves_differ += bits_differ(rh[i], (half) want);
            }
        }
    }
    std::printf("%s dequantize: %d float and %d half values differ (%d values not finite)\n",
                name, values_differ, halves_differ, nonfinite);
    return (blocks_differ != 0) + (values_differ != 0) + (halves_differ != 0);
}

} // namespace

int main() {
    const std::vector<float> x = make_blocks();
    int failures = 0;
    failures += check<block_turbo2, quantize_turbo2, dequantize_turbo2<float4x4>, dequantize_turbo2<half4x4>,
                      dequantize_turbo2_t4<float4>, dequantize_turbo2_t4<half4>>("turbo2", x, quantize_row_turbo2_ref, dequantize_row_turbo2);
    failures += check<block_turbo3, quantize_turbo3, dequantize_turbo3<float4x4>, dequantize_turbo3<half4x4>,
                      dequantize_turbo3_t4<float4>, dequantize_turbo3_t4<half4>>("turbo3", x, quantize_row_turbo3_ref, dequantize_row_turbo3);
    failures += check<block_turbo4, quantize_turbo4, dequantize_turbo4<float4x4>, dequantize_turbo4<half4x4>,
                      dequantize_turbo4_t4<float4>, dequantize_turbo4_t4<half4>>("turbo4", x, quantize_row_turbo4_ref, dequantize_row_turbo4);
    failures += check<block_turbo3t, quantize_turbo3t, dequantize_turbo3t<float4x4>, dequantize_turbo3t<half4x4>,
                      dequantize_turbo3t_t4<float4>, dequantize_turbo3t_t4<half4>>("turbo3t", x, quantize_row_turbo3t_ref, dequantize_row_turbo3t);
    failures += check<block_turbo2t, quantize_turbo2t, dequantize_turbo2t<float4x4>, dequantize_turbo2t<half4x4>,
                      dequantize_turbo2t_t4<float4>, dequantize_turbo2t_t4<half4>>("turbo2t", x, quantize_row_turbo2t_ref, dequantize_row_turbo2t);
    std::printf("%d checks failed\n", failures);
    return failures != 0;
}
