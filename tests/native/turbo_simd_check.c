// Checks the SIMD turbo kernels (csrc/cpu/arch/<arch>/turbo.c, as compiled for
// the -m flags of this build) against the scalar reference (csrc/cpu/turbo.c):
// identical codes from the code picker, identical dequantized values, and
// vec_dot within float rounding. Built and run by tests/test_cpu_kernels.py,
// linked against a build's libggml-base (the block scale lives there), and by
// tests/test_neon_qemu.py, cross-compiled for AArch64 from the sources and run
// under qemu.
//
// Also prints a digest of what the reference quantizer makes of many blocks:
// equal digests on two platforms mean equal codes and scales there (the tests
// compare an AArch64 build with the host's library).
//
// The trellis-coded types (turbo3t, turbo2t) get the same checks ("codes" compares the CPU
// backend's encoder with the reference's Viterbi search in ggml-base).
//
// Prints one line per type and check; exits 1 on any mismatch.

#define GGML_COMMON_DECL_C
#include "ggml-common.h"
#include "turbo-common.h"

#include "ggml-cpu.h"
#include "turbo-impl.h"
#include "turbo-quants.h"
#include "turbo-tcq.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define N_PER_ROW 512
#define N_ROWS    64
#define N_DIGEST_BLOCKS 16384   // ~1 in 5000 blocks shows a difference in rounding

typedef void (*quantize_row_t)(const float * x, void * y, int64_t k);
typedef void (*dequantize_t)(const void * x, float * y, int64_t k);
typedef void (*vec_dot_t)(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc);

// quantize and quantize_generic must make the same blocks; quantize_ref makes the digest's.
// A type with one dot product leaves vec_dot_generic NULL.
typedef struct {
    const char *   name;
    size_t         block_bytes;
    quantize_row_t quantize, quantize_generic, quantize_ref;
    int            digest_blocks;
    dequantize_t   dequantize_simd, dequantize_generic;
    vec_dot_t      vec_dot_simd, vec_dot_generic;
} turbo_kernels;

// The scalar types' quantizer with each code picker: SIMD, generic, ggml-base's reference.
#define TURBO_QUANTIZERS(type)                                                                                \
    static void type##_simd(const float * x, void * y, int64_t k)    { quantize_row_##type##_impl(x, y, k, pyturbo_pick_codes); } \
    static void type##_generic(const float * x, void * y, int64_t k) { quantize_row_##type##_impl(x, y, k, pyturbo_pick_codes_generic); } \
    static void type##_ref(const float * x, void * y, int64_t k)     { quantize_row_##type##_impl(x, y, k, turbo_pick_codes_ref); }
TURBO_QUANTIZERS(turbo2)
TURBO_QUANTIZERS(turbo3)
TURBO_QUANTIZERS(turbo4)

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static float uniform01(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float) ((rng_state >> 40) + 0.5) / (float) (1ull << 24);
}

// Roughly normal values with per-row scale, a few outliers, one zero block per row.
static void fill_rows(float * x) {
    for (int r = 0; r < N_ROWS; ++r) {
        const float scale = 0.01f + 4.0f*uniform01();
        for (int j = 0; j < N_PER_ROW; ++j) {
            float g = 0.0f;
            for (int u = 0; u < 4; ++u) {
                g += uniform01() - 0.5f;
            }
            x[r*N_PER_ROW + j] = scale*g*1.7320508f;
        }
        x[r*N_PER_ROW + (int) (uniform01()*N_PER_ROW)] *= 12.0f;
        memset(x + r*N_PER_ROW + 64*(r % (N_PER_ROW/64)), 0, 64*sizeof(float));
    }
    // Blocks that exercise the edges of the block math: constant, a single
    // spike (every other value zero), tiny values whose squares are subnormal.
    float * special = x + (N_ROWS - 1)*N_PER_ROW;
    for (int j = 0; j < QK_TURBO; ++j) {
        special[j]              = 0.37f;
        special[QK_TURBO + j]   = j == 17 ? -5.0f : 0.0f;
        special[2*QK_TURBO + j] = (j % 2 ? 1.0f : -1.0f)*1e-20f*(float) (j + 1);
    }
}

// FNV-1a over bytes
static uint64_t digest_bytes(uint64_t h, const uint8_t * p, size_t n) {
    for (size_t i = 0; i < n; ++i) {
        h = (h ^ p[i])*0x100000001b3ull;
    }
    return h;
}

// Digest of the reference quantizer's blocks for t->digest_blocks blocks of
// fill_rows data. Integer arithmetic and single roundings make the data the
// same everywhere; the digest then differs only where the quantizer rounds
// differently (fused multiply-adds in the block scale, for one).
static uint64_t reference_digest(const turbo_kernels * t) {
    static float x[N_ROWS*N_PER_ROW];
    static uint8_t q[N_ROWS*N_PER_ROW];
    const uint64_t saved_state = rng_state;
    const size_t row_bytes = t->block_bytes*(N_PER_ROW/QK_TURBO);
    uint64_t h = 0xcbf29ce484222325ull;
    rng_state = 0x2545f4914f6cdd1dull;
    for (int done = 0; done < t->digest_blocks; done += N_ROWS*(N_PER_ROW/QK_TURBO)) {
        fill_rows(x);
        for (int r = 0; r < N_ROWS; ++r) {
            t->quantize_ref(x + r*N_PER_ROW, q + r*row_bytes, N_PER_ROW);
        }
        h = digest_bytes(h, q, N_ROWS*row_bytes);
    }
    rng_state = saved_state;
    return h;
}

// The worst error of a dot product over the rows, relative to the sum of |products|,
// against the exact (double) dot of the decoded values.
static double worst_dot_error(vec_dot_t vec_dot, const uint8_t * rows, size_t row_bytes, dequantize_t dequantize,
                              const float * y) {
    static float d[N_PER_ROW];
    double worst = 0.0;
    for (int r = 0; r < N_ROWS; ++r) {
        const void * row = rows + r*row_bytes;
        float s = 0.0f;
        double exact = 0.0, norm = 0.0;
        vec_dot(N_PER_ROW, &s, 0, row, 0, y, 0, 1);
        dequantize(row, d, N_PER_ROW);
        for (int j = 0; j < N_PER_ROW; ++j) {
            exact += (double) d[j]*y[j];
            norm  += fabs((double) d[j]*y[j]);
        }
        const double err = norm > 0.0 ? fabs(s - exact)/norm : fabs(s - exact);
        worst = err > worst ? err : worst;
    }
    return worst;
}

static int check(const turbo_kernels * t, const float * x, const float * y) {
    static uint8_t q_simd[N_ROWS*N_PER_ROW], q_generic[N_ROWS*N_PER_ROW];
    static float   d_simd[N_PER_ROW], d_generic[N_PER_ROW];
    const size_t row_bytes = t->block_bytes*(N_PER_ROW/QK_TURBO);
    int failures = 0;

    for (int r = 0; r < N_ROWS; ++r) {
        t->quantize(x + r*N_PER_ROW, q_simd + r*row_bytes, N_PER_ROW);
        t->quantize_generic(x + r*N_PER_ROW, q_generic + r*row_bytes, N_PER_ROW);
    }
    const int codes_equal = memcmp(q_simd, q_generic, N_ROWS*row_bytes) == 0;
    printf("%s codes: %s\n", t->name, codes_equal ? "identical" : "DIFFER");
    failures += !codes_equal;

    int values_equal = 1;
    for (int r = 0; r < N_ROWS; ++r) {
        t->dequantize_simd(q_generic + r*row_bytes, d_simd, N_PER_ROW);
        t->dequantize_generic(q_generic + r*row_bytes, d_generic, N_PER_ROW);
        values_equal &= memcmp(d_simd, d_generic, sizeof(d_simd)) == 0;
    }
    printf("%s dequantize: %s\n", t->name, values_equal ? "identical" : "DIFFER");
    failures += !values_equal;

    double worst_dot = worst_dot_error(t->vec_dot_simd, q_generic, row_bytes, t->dequantize_generic, y);
    if (t->vec_dot_generic) {
        const double worst_generic = worst_dot_error(t->vec_dot_generic, q_generic, row_bytes, t->dequantize_generic, y);
        worst_dot = worst_generic > worst_dot ? worst_generic : worst_dot;
    }
    const int dot_ok = worst_dot < 1e-5;
    printf("%s vec_dot: worst relative error %.2e %s\n", t->name, worst_dot, dot_ok ? "ok" : "TOO LARGE");
    failures += !dot_ok;
    printf("%s reference digest: %016llx\n", t->name, (unsigned long long) reference_digest(t));
    return failures;
}

int main(void) {
    static float x[N_ROWS*N_PER_ROW], y[N_PER_ROW];
#if !defined(PYTURBO_TURBO_ARCH_ARM)
    ggml_cpu_init();   // fills the fp16 conversion table the kernels may use
#endif   // NEON converts fp16 in hardware (simd-mappings.h): no table, and no libggml-cpu to link under qemu
    fill_rows(x);
    for (int j = 0; j < N_PER_ROW; ++j) {
        y[j] = uniform01()*2.0f - 1.0f;
    }

    // The trellis-coded types: the CPU backend's encoder (from_float) against the reference's,
    // whose Viterbi search is slower, so a quarter of the digest blocks.
    const turbo_kernels kernels[] = {
        {"turbo2", sizeof(block_turbo2), turbo2_simd, turbo2_generic, turbo2_ref, N_DIGEST_BLOCKS,
         pyturbo_dequantize_row_turbo2, pyturbo_dequantize_row_turbo2_generic, ggml_vec_dot_turbo2_f32, ggml_vec_dot_turbo2_f32_generic},
        {"turbo3", sizeof(block_turbo3), turbo3_simd, turbo3_generic, turbo3_ref, N_DIGEST_BLOCKS,
         pyturbo_dequantize_row_turbo3, pyturbo_dequantize_row_turbo3_generic, ggml_vec_dot_turbo3_f32, ggml_vec_dot_turbo3_f32_generic},
        {"turbo4", sizeof(block_turbo4), turbo4_simd, turbo4_generic, turbo4_ref, N_DIGEST_BLOCKS,
         pyturbo_dequantize_row_turbo4, pyturbo_dequantize_row_turbo4_generic, ggml_vec_dot_turbo4_f32, ggml_vec_dot_turbo4_f32_generic},
        {"turbo3t", sizeof(block_turbo3t), quantize_row_turbo3t, (quantize_row_t) quantize_row_turbo3t_ref,
         (quantize_row_t) quantize_row_turbo3t_ref, N_DIGEST_BLOCKS / 4,
         pyturbo_dequantize_row_turbo3t, pyturbo_dequantize_row_turbo3t_generic, ggml_vec_dot_turbo3t_f32, NULL},
        {"turbo2t", sizeof(block_turbo2t), quantize_row_turbo2t, (quantize_row_t) quantize_row_turbo2t_ref,
         (quantize_row_t) quantize_row_turbo2t_ref, N_DIGEST_BLOCKS / 4,
         pyturbo_dequantize_row_turbo2t, pyturbo_dequantize_row_turbo2t_generic, ggml_vec_dot_turbo2t_f32, NULL},
    };

#if defined(PYTURBO_TURBO_ARCH_X86)
#if defined(__AVX512F__)
    printf("simd: x86 AVX-512\n");
#else
    printf("simd: x86 AVX2\n");
#endif
#elif defined(PYTURBO_TURBO_ARCH_ARM)
    printf("simd: ARM NEON\n");
#else
    printf("simd: none (generic kernels only)\n");
#endif

    int failures = 0;
    for (size_t i = 0; i < sizeof(kernels)/sizeof(kernels[0]); ++i) {
        failures += check(&kernels[i], x, y);
    }
    printf("%d checks failed\n", failures);
    return failures != 0;
}
