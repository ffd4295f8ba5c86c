/*
 * Weight-only quantized matmuls for the CPU: out[M, N] = x[M, K] @ W^T, W held as 4-bit or 8-bit
 * integer codes with a scale (and optional offset) per group of `group` inputs:
 *   W[n, k] = scale[k / group, n] * code[n, k] + offset[k / group, n].
 * Compiled at first use by kernels/cpu_quant.py (kernels.cpu_build) with OpenMP.
 *
 * Why it exists: a decode step of a small model reads every weight once per token, so the
 * bytes of the weights are the speed, and 4-bit codes are an eighth of float32. Activations,
 * scales and offsets stay float32 (no bf16 rounding), so a GGUF file's numbers are used as they
 * are. For steps with many rows the engine instead de-quantizes into a bf16 scratch matrix and
 * runs a dense bf16 GEMM (AMX / AVX512-BF16 through oneDNN): `triode_quant_dequant_bf16`.
 *
 * Layout: columns (output features) in blocks of 64; block b holds, for every k, the codes of
 * columns 64b..64b+63 contiguously:
 *   4-bit: 32 bytes per k; byte j = code(col j) | code(col j + 32) << 4   (codes 0..15)
 *   8-bit: 64 bytes per k; byte j = code(col j)                          (int8)
 * scales/offsets: [K / group, N_padded], float32, or float16 where every value is exactly a
 * half (Q4_0/Q4_1/Q8_0 files store half scales: half the bytes, the same numbers); N is padded
 * to a multiple of 64 with zeros.
 *
 * The matmul sums x * code over a group first and applies scale and offset once per group:
 *   sum_k x_k W_nk = sum_g scale_gn (sum_{k in g} x_k code_nk) + offset_gn (sum_{k in g} x_k)
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define BLOCK_N 64
#define MAX_ROWS 4

typedef struct {
    const uint8_t *codes;
    const void *scales;
    const void *offsets; /* NULL: symmetric */
    int bits;            /* 4 or 8 */
    int half;            /* scales/offsets are float16 */
    int group;
    int64_t N, K, ld_scale;
} weight_t;

static inline float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            bits = sign | (exp << 23) | ((man & 0x3FF) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7F800000 | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof(f));
    return f;
}

static inline float param_at(const void *base, int half, int64_t i) {
    return half ? half_to_float(((const uint16_t *)base)[i]) : ((const float *)base)[i];
}

/* Codes of 64 columns at one k as 64 floats, columns in order. */
static inline void unpack_codes(const uint8_t *restrict p, int bits, float *restrict w) {
    if (bits == 4) {
        for (int j = 0; j < 32; j++) {
            w[j] = (float)(p[j] & 0x0F);
            w[j + 32] = (float)(p[j] >> 4);
        }
    } else {
        const int8_t *s = (const int8_t *)p;
        for (int j = 0; j < 64; j++) w[j] = (float)s[j];
    }
}

#if defined(__AVX512F__)
static inline void unpack_codes_avx512(const uint8_t *p, int bits, __m512 w[4]) {
    if (bits == 4) {
        const __m512i low = _mm512_set1_epi32(0x0F);
        const __m512i a = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
        const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + 16)));
        w[0] = _mm512_cvtepi32_ps(_mm512_and_si512(a, low));
        w[1] = _mm512_cvtepi32_ps(_mm512_and_si512(b, low));
        w[2] = _mm512_cvtepi32_ps(_mm512_srli_epi32(a, 4));
        w[3] = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
    } else {
        for (int c = 0; c < 4; c++)
            w[c] = _mm512_cvtepi32_ps(
                _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 16 * c))));
    }
}

static inline __m512 load_params(const void *base, int half, int64_t i) {
    if (half) return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)base + i)));
    return _mm512_loadu_ps((const float *)base + i);
}

/* One 64-column block, R rows of x (R <= MAX_ROWS, a constant after inlining). */
static inline __attribute__((always_inline)) void block_rows_avx512(
    const int R, const float *restrict x, int64_t ldx, const weight_t *w, int64_t b,
    const float *restrict sums, float *restrict acc)
{
    const int64_t bytes_per_k = w->bits == 4 ? 32 : 64;
    const int groups = (int)(w->K / w->group);
    const uint8_t *p = w->codes + b * w->K * bytes_per_k;
    for (int i = 0; i < R * BLOCK_N; i++) acc[i] = 0.0f;
    for (int g = 0; g < groups; g++) {
        __m512 gacc[MAX_ROWS][4];
        for (int r = 0; r < R; r++)
            for (int c = 0; c < 4; c++) gacc[r][c] = _mm512_setzero_ps();
        for (int k = g * w->group; k < (g + 1) * w->group; k++, p += bytes_per_k) {
            __m512 v[4];
            unpack_codes_avx512(p, w->bits, v);
            for (int r = 0; r < R; r++) {
                const __m512 xv = _mm512_set1_ps(x[r * ldx + k]);
                for (int c = 0; c < 4; c++) gacc[r][c] = _mm512_fmadd_ps(xv, v[c], gacc[r][c]);
            }
        }
        const int64_t at = (int64_t)g * w->ld_scale + b * BLOCK_N;
        for (int c = 0; c < 4; c++) {
            const __m512 s = load_params(w->scales, w->half, at + 16 * c);
            const __m512 o = w->offsets ? load_params(w->offsets, w->half, at + 16 * c)
                                        : _mm512_setzero_ps();
            for (int r = 0; r < R; r++) {
                float *a = acc + r * BLOCK_N + 16 * c;
                __m512 t = _mm512_fmadd_ps(gacc[r][c], s, _mm512_loadu_ps(a));
                if (w->offsets) t = _mm512_fmadd_ps(_mm512_set1_ps(sums[r * groups + g]), o, t);
                _mm512_storeu_ps(a, t);
            }
        }
    }
}
#endif

/* Portable version of the same block computation. */
static void block_rows_generic(int R, const float *restrict x, int64_t ldx, const weight_t *w,
                               int64_t b, const float *restrict sums, float *restrict acc) {
    const int64_t bytes_per_k = w->bits == 4 ? 32 : 64;
    const int groups = (int)(w->K / w->group);
    const uint8_t *p = w->codes + b * w->K * bytes_per_k;
    float v[BLOCK_N], gacc[MAX_ROWS][BLOCK_N];
    memset(acc, 0, sizeof(float) * BLOCK_N * R);
    for (int g = 0; g < groups; g++) {
        memset(gacc, 0, sizeof(gacc));
        for (int k = g * w->group; k < (g + 1) * w->group; k++, p += bytes_per_k) {
            unpack_codes(p, w->bits, v);
            for (int r = 0; r < R; r++) {
                const float xv = x[r * ldx + k];
                for (int j = 0; j < BLOCK_N; j++) gacc[r][j] += xv * v[j];
            }
        }
        const int64_t at = (int64_t)g * w->ld_scale + b * BLOCK_N;
        for (int j = 0; j < BLOCK_N; j++) {
            const float s = param_at(w->scales, w->half, at + j);
            const float o = w->offsets ? param_at(w->offsets, w->half, at + j) : 0.0f;
            for (int r = 0; r < R; r++) {
                acc[r * BLOCK_N + j] += gacc[r][j] * s;
                if (w->offsets) acc[r * BLOCK_N + j] += sums[r * groups + g] * o;
            }
        }
    }
}

static inline void block_rows(int R, const float *x, int64_t ldx, const weight_t *w, int64_t b,
                              const float *sums, float *acc) {
#if defined(__AVX512F__)
    switch (R) { /* a constant R per call: the row loops unroll */
    case 1: block_rows_avx512(1, x, ldx, w, b, sums, acc); return;
    case 2: block_rows_avx512(2, x, ldx, w, b, sums, acc); return;
    case 3: block_rows_avx512(3, x, ldx, w, b, sums, acc); return;
    default: block_rows_avx512(4, x, ldx, w, b, sums, acc); return;
    }
#else
    block_rows_generic(R, x, ldx, w, b, sums, acc);
#endif
}

static int check(const weight_t *w) {
    if ((w->bits != 4 && w->bits != 8) || w->group <= 0 || w->K % w->group || w->N <= 0) return -1;
    return 0;
}

/*
 * out[m, n] (row stride ldo) = sum_k x[m, k] W[n, k] for m < M, n < N; x rows have stride ldx.
 * Returns 0, or a negative code for arguments the kernel cannot take.
 */
int triode_quant_matmul(const float *x, int64_t ldx, int64_t M, const uint8_t *codes, int bits,
                        const void *scales, const void *offsets, int half, int group, int64_t N,
                        int64_t K, float *out, int64_t ldo) {
    const int64_t n_blocks = (N + BLOCK_N - 1) / BLOCK_N;
    const weight_t w = {codes, scales, offsets, bits, half, group, N, K, n_blocks * BLOCK_N};
    if (check(&w) || M <= 0) return -1;
    const int groups = (int)(K / group);
    float *sums = NULL;
    if (offsets) { /* per-row sums of x over each group, for the offsets */
        sums = (float *)malloc(sizeof(float) * M * groups);
        if (!sums) return -2;
        for (int64_t m = 0; m < M; m++)
            for (int g = 0; g < groups; g++) {
                float s = 0.0f;
                for (int k = g * group; k < (g + 1) * group; k++) s += x[m * ldx + k];
                sums[m * groups + g] = s;
            }
    }
    const int64_t row_chunks = (M + MAX_ROWS - 1) / MAX_ROWS;
#pragma omp parallel for schedule(static) collapse(2)
    for (int64_t b = 0; b < n_blocks; b++) {
        for (int64_t rc = 0; rc < row_chunks; rc++) {
            float acc[MAX_ROWS * BLOCK_N];
            const int64_t m0 = rc * MAX_ROWS;
            const int R = (int)(M - m0 < MAX_ROWS ? M - m0 : MAX_ROWS);
            block_rows(R, x + m0 * ldx, ldx, &w, b, sums ? sums + m0 * groups : NULL, acc);
            const int64_t n0 = b * BLOCK_N;
            const int64_t width = N - n0 < BLOCK_N ? N - n0 : BLOCK_N;
            for (int r = 0; r < R; r++)
                memcpy(out + (m0 + r) * ldo + n0, acc + r * BLOCK_N, sizeof(float) * width);
        }
    }
    free(sums);
    return 0;
}

static inline uint16_t bf16_of_float(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    u += 0x7FFF + ((u >> 16) & 1); /* round to nearest even (weights are finite) */
    return (uint16_t)(u >> 16);
}

#if defined(__AVX512F__)
static inline __m256i bf16_of(__m512 v) {
#if defined(__AVX512BF16__)
    return (__m256i)_mm512_cvtneps_pbh(v);
#else
    __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    u = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(u, 16));
#endif
}
#endif

/*
 * W^T as bf16, k-major: out[k * ldo + (n - n_start)] for n in [n_start, n_end), n_start a
 * multiple of 64. Each value is rounded once from float32 `scale * code` (+ `offset`, a second
 * float32 rounding, as gguf computes it).
 */
int triode_quant_dequant_bf16(const uint8_t *codes, int bits, const void *scales,
                              const void *offsets, int half, int group, int64_t N, int64_t K,
                              int64_t n_start, int64_t n_end, uint16_t *out, int64_t ldo) {
    const int64_t n_blocks = (N + BLOCK_N - 1) / BLOCK_N;
    const weight_t w = {codes, scales, offsets, bits, half, group, N, K, n_blocks * BLOCK_N};
    if (check(&w) || n_start % BLOCK_N || n_start < 0 || n_end > N || n_end <= n_start) return -1;
    const int64_t bytes_per_k = bits == 4 ? 32 : 64;
    const int64_t b0 = n_start / BLOCK_N, b1 = (n_end + BLOCK_N - 1) / BLOCK_N;
#pragma omp parallel for schedule(static) collapse(2)
    for (int64_t b = b0; b < b1; b++) {
        for (int64_t k = 0; k < K; k++) {
            const uint8_t *p = codes + (b * K + k) * bytes_per_k;
            const int64_t at = (k / group) * w.ld_scale + b * BLOCK_N;
            const int64_t n0 = b * BLOCK_N;
            const int64_t width = n_end - n0 < BLOCK_N ? n_end - n0 : BLOCK_N;
            uint16_t *dst = out + k * ldo + (n0 - n_start);
#if defined(__AVX512F__)
            if (width == BLOCK_N) {
                __m512 v[4];
                unpack_codes_avx512(p, bits, v);
                for (int c = 0; c < 4; c++) {
                    __m512 t = _mm512_mul_ps(v[c], load_params(scales, half, at + 16 * c));
                    if (offsets) t = _mm512_add_ps(t, load_params(offsets, half, at + 16 * c));
                    _mm256_storeu_si256((__m256i *)(dst + 16 * c), bf16_of(t));
                }
                continue;
            }
#endif
            float v[BLOCK_N];
            unpack_codes(p, bits, v);
            for (int j = 0; j < width; j++) {
                float t = param_at(scales, half, at + j) * v[j];
                if (offsets) t = t + param_at(offsets, half, at + j);
                dst[j] = bf16_of_float(t);
            }
        }
    }
    return 0;
}
