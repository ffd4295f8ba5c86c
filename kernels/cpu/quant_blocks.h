/*
 * Quantized weights' block layout and the helpers shared by kernels/cpu/quant_matmul.c (the
 * matmul and the bf16 de-quantizer; kernels.cpu_build hashes this header into the build key).
 *
 * Layout: columns (output features) in blocks of 64; block b holds, for every k, the codes of
 * columns 64b..64b+63 contiguously:
 *   4-bit: 32 bytes per k; byte j = code(col j) | code(col j + 32) << 4   (codes 0..15)
 *   8-bit: 64 bytes per k; byte j = code(col j)                          (int8)
 * scales/offsets: [K / group, N_padded], float32, or float16 where every value is exactly a
 * half (Q4_0/Q4_1/Q8_0 files store half scales: half the bytes, the same numbers); N is padded
 * to a multiple of 64 with zeros. W[n, k] = scale[k / group, n] * code[n, k] + offset[k / group, n].
 */
#ifndef TRIODE_QUANT_BLOCKS_H
#define TRIODE_QUANT_BLOCKS_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define BLOCK_N 64

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
#endif

static inline int check(const weight_t *w) {
    if ((w->bits != 4 && w->bits != 8) || w->group <= 0 || w->K % w->group || w->N <= 0) return -1;
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

#endif /* TRIODE_QUANT_BLOCKS_H */
