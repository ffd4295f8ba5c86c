/*
 * KV-cache elements: float32, or bfloat16 / IEEE binary16 bits, widened to float32 as they are
 * read. Shared by paged_decode.c (the decode kernel) and chunk_attention.h (the fused step's
 * prompt chunks), so both read a 16-bit cache the same way. `kind` values equal
 * model_t.kv_dtype's in decode_step.c (0 float32, 1 bfloat16, 2 float16).
 */
#ifndef TRIODE_KV_ELEMENTS_H
#define TRIODE_KV_ELEMENTS_H

#include <stdint.h>
#include <string.h>

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* The cache's element type. */
enum kv_kind { KV_F32, KV_BF16, KV_F16 };

ALWAYS_INLINE int64_t kv_bytes(int kind) { return kind == KV_F32 ? 4 : 2; }

/* Element `index` (in elements of the cache's type) of a cache, as a byte pointer. */
ALWAYS_INLINE const char *kv_at(const void *cache, int64_t index, int kind) {
    return (const char *)cache + index * kv_bytes(kind);
}

/* IEEE binary16 -> float32, exactly (every half is a float): normals rebias the exponent,
   subnormals are mantissa * 2^-24 (a normal float32), infinities and NaNs keep their bits. */
ALWAYS_INLINE float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
    uint32_t bits;
    if (exponent == 0x1fu) {
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else if (exponent != 0) {
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    } else {
        const float magnitude = (float)mantissa * 0x1p-24f;
        memcpy(&bits, &magnitude, sizeof bits);
        bits |= sign;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Element i of the row at p, widened to float32. */
ALWAYS_INLINE float kv_load1(const char *p, int64_t i, int kind) {
    if (kind == KV_F32) return ((const float *)p)[i];
    const uint16_t h = ((const uint16_t *)p)[i];
    if (kind == KV_F16) return half_to_float(h);
    const uint32_t bits = (uint32_t)h << 16; /* bfloat16 = the top half of a float32 */
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

#if defined(__AVX512F__)
#include <immintrin.h>

/* 16 elements of the row at p (in elements of the cache's type), widened to float32. */
ALWAYS_INLINE __m512 kv_load16(const char *p, int64_t i, int kind) {
    if (kind == KV_F32) return _mm512_loadu_ps((const float *)p + i);
    const __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i));
    if (kind == KV_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
#endif

#endif
