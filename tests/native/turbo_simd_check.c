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
// The trellis-coded types (turbo3t, turbo2t) get the same checks (their encoder is the
// reference's Viterbi search everywhere, so "codes" compares the CPU entry with it).
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

typedef void (*quantize_impl_t)(const float * x, void * y, int64_t k, turbo_pick_codes_t pick);
typedef void (*dequantize_t)(const void * x, float * y, int64_t k);
typedef void (*vec_dot_t)(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc);

typedef struct {
    const char *    name;
    size_t          block_bytes;
    quantize_impl_t quantize;
    dequantize_t    dequantize_simd, dequantize_generic;
    vec_dot_t       vec_dot_simd, vec_dot_generic;
} turbo_kernels;

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

// Digest of the reference quantizer's blocks for N_DIGEST_BLOCKS blocks of
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
    for (int done = 0; done < N_DIGEST_BLOCKS; done += N_ROWS*(N_PER_ROW/QK_TURBO)) {
        fill_rows(x);
        for (int r = 0; r < N_ROWS; ++r) {
            t->quantize(x + r*N_PER_ROW, q + r*row_bytes, N_PER_ROW, turbo_pick_codes_ref);
        }
        h = digest_bytes(h, q, N_ROWS*row_bytes);
    }
    rng_state = saved_state;
    return h;
}

static int check(const turbo_kernels * t, const float * x, const float * y) {
    static uint8_t q_simd[N_ROWS*N_PER_ROW], q_generic[N_ROWS*N_PER_ROW];
    static float   d_simd[N_PER_ROW], d_generic[N_PER_ROW];
    const size_t row_bytes = t->block_bytes*(N_PER_ROW/QK_TURBO);
    int failures = 0;

    for (int r = 0; r < N_ROWS; ++r) {
        t->quantize(x + r*N_PER_ROW, q_simd    + r*row_bytes, N_PER_ROW, pyturbo_pick_codes);
        t->quantize(x + r*N_PER_ROW, q_generic + r*row_bytes, N_PER_ROW, pyturbo_pick_codes_generic);
    }
    const int codes_equal = memcmp(q_simd, q_generic, N_ROWS*row_bytes) == 0;
    printf("%s codes: %s\n", t->name, codes_equal ? "identical" : "DIFFER");
    failures += !codes_equal;

    int values_equal = 1;
    double worst_dot = 0.0;
    for (int r = 0; r < N_ROWS; ++r) {
        const void * row = q_generic + r*row_bytes;
        t->dequantize_simd(row, d_simd, N_PER_ROW);
        t->dequantize_generic(row, d_generic, N_PER_ROW);
        values_equal &= memcmp(d_simd, d_generic, sizeof(d_simd)) == 0;

        float s_simd = 0.0f, s_generic = 0.0f;
        double norm = 0.0;
        t->vec_dot_simd   (N_PER_ROW, &s_simd,    0, row, 0, y, 0, 1);
        t->vec_dot_generic(N_PER_ROW, &s_generic, 0, row, 0, y, 0, 1);
        for (int j = 0; j < N_PER_ROW; ++j) {
            norm += fabs((double) d_generic[j]*y[j]);
        }
        const double err = norm > 0.0 ? fabs((double) s_simd - s_generic)/norm : fabs((double) s_simd - s_generic);
        worst_dot = err > worst_dot ? err : worst_dot;
    }
    printf("%s dequantize: %s\n", t->name, values_equal ? "identical" : "DIFFER");
    failures += !values_equal;
    const int dot_ok = worst_dot < 1e-5;
    printf("%s vec_dot: worst relative error %.2e %s\n", t->name, worst_dot, dot_ok ? "ok" : "TOO LARGE");
    failures += !dot_ok;
    printf("%s reference digest: %016llx\n", t->name, (unsigned long long) reference_digest(t));
    return failures;
}

// The trellis-coded types: the CPU backend's encoder (from_float) against the reference
// (same codes), the SIMD decoder against the scalar one (same values), vec_dot, digest.
typedef void (*quantize_row_t)(const float * x, void * y, int64_t k);

typedef struct {
    const char *   name;
    size_t         block_bytes;
    quantize_row_t quantize_cpu, quantize_ref;
    dequantize_t   dequantize_simd, dequantize_generic;
    vec_dot_t      vec_dot;
} tcq_kernels;

static int check_tcq(const tcq_kernels * t, const float * x, const float * y) {
    static uint8_t q_cpu[N_ROWS*N_PER_ROW], q_ref[N_ROWS*N_PER_ROW];
    static float   d_simd[N_PER_ROW], d_generic[N_PER_ROW];
    const size_t row_bytes = t->block_bytes*(N_PER_ROW/QK_TURBO);
    int failures = 0;

    for (int r = 0; r < N_ROWS; ++r) {
        t->quantize_cpu(x + r*N_PER_ROW, q_cpu + r*row_bytes, N_PER_ROW);
        t->quantize_ref(x + r*N_PER_ROW, q_ref + r*row_bytes, N_PER_ROW);
    }
    const int codes_equal = memcmp(q_cpu, q_ref, N_ROWS*row_bytes) == 0;
    printf("%s codes: %s\n", t->name, codes_equal ? "identical" : "DIFFER");
    failures += !codes_equal;

    int values_equal = 1;
    double worst_dot = 0.0;
    for (int r = 0; r < N_ROWS; ++r) {
        const void * row = q_ref + r*row_bytes;
        t->dequantize_simd(row, d_simd, N_PER_ROW);
        t->dequantize_generic(row, d_generic, N_PER_ROW);
        values_equal &= memcmp(d_simd, d_generic, sizeof(d_simd)) == 0;
        float s = 0.0f;
        double exact = 0.0, norm = 0.0;
        t->vec_dot(N_PER_ROW, &s, 0, row, 0, y, 0, 1);
        for (int j = 0; j < N_PER_ROW; ++j) {
            exact += (double) d_generic[j]*y[j];
            norm  += fabs((double) d_generic[j]*y[j]);
        }
        const double err = norm > 0.0 ? fabs(s - exact)/norm : fabs(s - exact);
        worst_dot = err > worst_dot ? err : worst_dot;
    }
    printf("%s dequantize: %s\n", t->name, values_equal ? "identical" : "DIFFER");
    failures += !values_equal;
    const int dot_ok = worst_dot < 1e-5;
    printf("%s vec_dot: worst relative error %.2e %s\n", t->name, worst_dot, dot_ok ? "ok" : "TOO LARGE");
    failures += !dot_ok;

    static float xd[N_ROWS*N_PER_ROW];
    const uint64_t saved_state = rng_state;
    uint64_t h = 0xcbf29ce484222325ull;
    rng_state = 0x2545f4914f6cdd1dull;
    for (int done = 0; done < N_DIGEST_BLOCKS / 4; done += N_ROWS*(N_PER_ROW/QK_TURBO)) {   // the Viterbi search is slower
        fill_rows(xd);
        for (int r = 0; r < N_ROWS; ++r) {
            t->quantize_ref(xd + r*N_PER_ROW, q_ref + r*row_bytes, N_PER_ROW);
        }
        h = digest_bytes(h, q_ref, N_ROWS*row_bytes);
    }
    rng_state = saved_state;
    printf("%s reference digest: %016llx\n", t->name, (unsigned long long) h);
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

    const turbo_kernels kernels[] = {
        {"turbo2", sizeof(block_turbo2), (quantize_impl_t) quantize_row_turbo2_impl,
         pyturbo_dequantize_row_turbo2, pyturbo_dequantize_row_turbo2_generic, ggml_vec_dot_turbo2_f32, ggml_vec_dot_turbo2_f32_generic},
        {"turbo3", sizeof(block_turbo3), (quantize_impl_t) quantize_row_turbo3_impl,
         pyturbo_dequantize_row_turbo3, pyturbo_dequantize_row_turbo3_generic, ggml_vec_dot_turbo3_f32, ggml_vec_dot_turbo3_f32_generic},
        {"turbo4", sizeof(block_turbo4), (quantize_impl_t) quantize_row_turbo4_impl,
         pyturbo_dequantize_row_turbo4, pyturbo_dequantize_row_turbo4_generic, ggml_vec_dot_turbo4_f32, ggml_vec_dot_turbo4_f32_generic},
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

    const tcq_kernels tcq[] = {
        {"turbo3t", sizeof(block_turbo3t), quantize_row_turbo3t, (quantize_row_t) quantize_row_turbo3t_ref,
         pyturbo_dequantize_row_turbo3t, pyturbo_dequantize_row_turbo3t_generic, ggml_vec_dot_turbo3t_f32},
        {"turbo2t", sizeof(block_turbo2t), quantize_row_turbo2t, (quantize_row_t) quantize_row_turbo2t_ref,
         pyturbo_dequantize_row_turbo2t, pyturbo_dequantize_row_turbo2t_generic, ggml_vec_dot_turbo2t_f32},
    };

    int failures = 0;
    for (size_t i = 0; i < sizeof(kernels)/sizeof(kernels[0]); ++i) {
        failures += check(&kernels[i], x, y);
    }
    for (size_t i = 0; i < sizeof(tcq)/sizeof(tcq[0]); ++i) {
        failures += check_tcq(&tcq[i], x, y);
    }
    printf("%d checks failed\n", failures);
    return failures != 0;
}
