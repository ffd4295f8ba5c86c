/*
 * The small-step quantized matmul on integer dot products (included by quant_matmul.c, whose
 * entry point triode_quant_matmul_q8a uses it where the CPU has AVX512-VNNI and AVX512-VBMI).
 *
 * Why: at one to a few rows the float kernel is bound by instructions, not memory: every 64
 * weights cost about 12 instructions of unpacking (bytes to int32 to float) and 4 FMAs. Here
 * `vpdpbusd` multiplies 64 unsigned weight bytes by 64 int8 activations and sums each 4 into
 * an int32 lane, so per group of k's the integer sums are exact and cost one instruction per
 * 64 weights and row.
 *
 * The activations are rounded once per call, per row and group, to two int8 digits:
 *   t = x * (127 / max|x_g|),  hi = round(t),  lo = round((t - hi) * 254),
 *   x ~ d_g * (254 hi + lo),   d_g = max|x_g| / (127 * 254)
 * NOTE: one int8 digit (llama.cpp's Q8 activations) was measured too coarse for the bundled
 * model: its activations have outliers (a group's max is often 50-100x its median), so one
 * digit costs ~2% RMS error per linear and top-1 agreement with the float model fell to 90%
 * over the accuracy test's text (the bar is 97%). Two digits (15-16 bits) cost a second
 * `vpdpbusd` per 64 weights and keep the float kernel's agreement. Then
 *   sum_k x_k W_nk ~ scale_gn * d_g * (254 sum_k code_nk hi_k + sum_k code_nk lo_k)
 *                    + offset_gn * (sum_k x_k)
 * with the offsets' term on the exact float sums of x.
 *
 * The codes keep quant_blocks.h's layout (no second copy of the weights): `vpdpbusd` needs the
 * codes of 4 consecutive k's of one column in one 32-bit lane, and one `vpermt2b` (a byte
 * gather over two registers) turns 4 k's of a 64-column block into that order:
 *   4-bit: 4 k's are 128 bytes = 2 registers; two gathers give the bytes of columns 0..15
 *          (low nibbles) / 32..47 (high nibbles) and 16..31 / 48..63;
 *   8-bit: 4 k's are 4 registers; two gathers pair k0/k1 and k2/k3, two more give each
 *          column's 4 bytes. int8 codes are made unsigned by adding 128 (a bit flip), and
 *          128 * sum_k xq_k is taken off once per group.
 * Per row the operations and their order do not depend on the other rows of the call.
 */
#ifndef TRIODE_QUANT_Q8A_H
#define TRIODE_QUANT_Q8A_H

#include "quant_blocks.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && \
    defined(__AVX512VBMI__)
#define TRIODE_HAS_Q8A 1
#define Q8A_ROWS 2 /* rows per work item (the codes are unpacked once for them; 2 sets of
                      sums per row: more rows would not fit the 32 registers) */

/* Activations of M rows rounded per group: x[m, k] ~ d[m, g] * (254 hi[m, k] + lo[m, k]). */
typedef struct {
    int8_t *hi, *lo; /* [M, K] */
    float *d;        /* [M, groups] */
    float *sx;       /* [M, groups]: float sums of x (the offsets' term) */
    int32_t *sq;     /* [M, groups]: sums of 254 hi + lo (the 8-bit codes' +128) */
} q8a_acts_t;

/* One row's group of `group` (a multiple of 16) values; the sums only where asked for. */
static inline void q8a_quantize_group(const float *restrict x, int group, int8_t *restrict hi,
                                      int8_t *restrict lo, float *d, float *sx, int32_t *sq) {
    __m512 amax = _mm512_setzero_ps(), sum = _mm512_setzero_ps();
    for (int i = 0; i < group; i += 16) {
        const __m512 v = _mm512_loadu_ps(x + i);
        amax = _mm512_max_ps(amax, _mm512_abs_ps(v));
        sum = _mm512_add_ps(sum, v);
    }
    const float a = _mm512_reduce_max_ps(amax);
    if (sx) *sx = _mm512_reduce_add_ps(sum);
    if (!(a > 0.0f)) { /* all zeros */
        memset(hi, 0, (size_t)group);
        memset(lo, 0, (size_t)group);
        *d = 0.0f;
        if (sq) *sq = 0;
        return;
    }
    /* NOTE: rounded to nearest even, in this order: the tests redo exactly this in torch. */
    const __m512 inv = _mm512_set1_ps(127.0f / a), digit = _mm512_set1_ps(254.0f);
    __m512i s = _mm512_setzero_si512();
    for (int i = 0; i < group; i += 16) {
        const __m512 t = _mm512_mul_ps(_mm512_loadu_ps(x + i), inv);
        const __m512i h = _mm512_cvtps_epi32(t);
        const __m512i l = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_sub_ps(t, _mm512_cvtepi32_ps(h)), digit));
        if (sq) /* 254 h + l */
            s = _mm512_add_epi32(
                s, _mm512_add_epi32(_mm512_sub_epi32(_mm512_slli_epi32(h, 8), _mm512_slli_epi32(h, 1)), l));
        _mm_storeu_si128((__m128i *)(hi + i), _mm512_cvtepi32_epi8(h));
        _mm_storeu_si128((__m128i *)(lo + i), _mm512_cvtepi32_epi8(l));
    }
    *d = a / (127.0f * 254.0f);
    if (sq) *sq = _mm512_reduce_add_epi32(s);
}

/* Gather indices: byte 4i + t of the result takes k-row t's byte of column i (see above). */
static inline __m512i q8a_index4(int column0) {
    uint8_t idx[64];
    for (int i = 0; i < 16; i++)
        for (int t = 0; t < 4; t++) idx[4 * i + t] = (uint8_t)(t * 32 + column0 + i);
    return _mm512_loadu_si512(idx);
}

static inline __m512i q8a_index_pairs(int column0) { /* byte 2i + t: row t, column i */
    uint8_t idx[64];
    for (int i = 0; i < 32; i++)
        for (int t = 0; t < 2; t++) idx[2 * i + t] = (uint8_t)(t * 64 + column0 + i);
    return _mm512_loadu_si512(idx);
}

static inline __m512i q8a_index_quads(int pair0) { /* byte 4i + t from the pairs' registers */
    uint8_t idx[64];
    for (int i = 0; i < 16; i++)
        for (int t = 0; t < 4; t++)
            idx[4 * i + t] = (uint8_t)((t < 2 ? 0 : 64) + pair0 + 2 * i + (t & 1));
    return _mm512_loadu_si512(idx);
}

/*
 * One 64-column block for R <= Q8A_ROWS rows (a constant after inlining): acc[r, 0..63].
 * `a`'s arrays start at the first row's values.
 */
static inline __attribute__((always_inline)) void q8a_block(
    const int R, const q8a_acts_t *a, const weight_t *w, int64_t b, float *restrict acc)
{
    const int groups = (int)(w->K / w->group);
    const int64_t K = w->K;
    const int is4 = w->bits == 4;
    const uint8_t *p = w->codes + b * K * (is4 ? 32 : 64);
    const __m512i lo = _mm512_set1_epi8(0x0F), flip = _mm512_set1_epi8((char)0x80);
    const __m512i i0 = is4 ? q8a_index4(0) : q8a_index_pairs(0);
    const __m512i i1 = is4 ? q8a_index4(16) : q8a_index_pairs(32);
    const __m512i j0 = q8a_index_quads(0), j1 = q8a_index_quads(32);
    for (int i = 0; i < R * BLOCK_N; i++) acc[i] = 0.0f;
    for (int g = 0; g < groups; g++) {
        __m512i ih[Q8A_ROWS][4], il[Q8A_ROWS][4];
        for (int r = 0; r < R; r++)
            for (int c = 0; c < 4; c++) ih[r][c] = il[r][c] = _mm512_setzero_si512();
        for (int64_t k = (int64_t)g * w->group; k < (int64_t)(g + 1) * w->group; k += 4) {
            __m512i c[4];
            if (is4) {
                const __m512i A = _mm512_loadu_si512(p), B = _mm512_loadu_si512(p + 64);
                const __m512i P0 = _mm512_permutex2var_epi8(A, i0, B);
                const __m512i P1 = _mm512_permutex2var_epi8(A, i1, B);
                c[0] = _mm512_and_si512(P0, lo);
                c[1] = _mm512_and_si512(P1, lo);
                c[2] = _mm512_and_si512(_mm512_srli_epi16(P0, 4), lo);
                c[3] = _mm512_and_si512(_mm512_srli_epi16(P1, 4), lo);
                p += 128;
            } else {
                const __m512i R0 = _mm512_loadu_si512(p), R1 = _mm512_loadu_si512(p + 64);
                const __m512i R2 = _mm512_loadu_si512(p + 128), R3 = _mm512_loadu_si512(p + 192);
                const __m512i A0 = _mm512_permutex2var_epi8(R0, i0, R1); /* columns 0..31 */
                const __m512i A1 = _mm512_permutex2var_epi8(R0, i1, R1); /* columns 32..63 */
                const __m512i B0 = _mm512_permutex2var_epi8(R2, i0, R3);
                const __m512i B1 = _mm512_permutex2var_epi8(R2, i1, R3);
                c[0] = _mm512_xor_si512(_mm512_permutex2var_epi8(A0, j0, B0), flip);
                c[1] = _mm512_xor_si512(_mm512_permutex2var_epi8(A0, j1, B0), flip);
                c[2] = _mm512_xor_si512(_mm512_permutex2var_epi8(A1, j0, B1), flip);
                c[3] = _mm512_xor_si512(_mm512_permutex2var_epi8(A1, j1, B1), flip);
                p += 256;
            }
            for (int r = 0; r < R; r++) {
                int32_t four_hi, four_lo;
                memcpy(&four_hi, a->hi + r * K + k, sizeof(four_hi));
                memcpy(&four_lo, a->lo + r * K + k, sizeof(four_lo));
                const __m512i xh = _mm512_set1_epi32(four_hi), xl = _mm512_set1_epi32(four_lo);
                for (int cc = 0; cc < 4; cc++) {
                    ih[r][cc] = _mm512_dpbusd_epi32(ih[r][cc], c[cc], xh);
                    il[r][cc] = _mm512_dpbusd_epi32(il[r][cc], c[cc], xl);
                }
            }
        }
        const int64_t at = (int64_t)g * w->ld_scale + b * BLOCK_N;
        for (int cc = 0; cc < 4; cc++) {
            const __m512 s = load_params(w->scales, w->half, at + 16 * cc);
            const __m512 o = w->offsets ? load_params(w->offsets, w->half, at + 16 * cc)
                                        : _mm512_setzero_ps();
            for (int r = 0; r < R; r++) {
                const int rg = r * groups + g;
                const __m512i h = ih[r][cc]; /* 254 h = 256 h - 2 h, exactly */
                __m512i dot = _mm512_add_epi32(
                    _mm512_sub_epi32(_mm512_slli_epi32(h, 8), _mm512_slli_epi32(h, 1)), il[r][cc]);
                if (!is4) dot = _mm512_sub_epi32(dot, _mm512_set1_epi32(128 * a->sq[rg]));
                float *out = acc + r * BLOCK_N + 16 * cc;
                const __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(a->d[rg]));
                __m512 v = _mm512_fmadd_ps(t, s, _mm512_loadu_ps(out));
                if (w->offsets) v = _mm512_fmadd_ps(_mm512_set1_ps(a->sx[rg]), o, v);
                _mm512_storeu_ps(out, v);
            }
        }
    }
}

static inline void q8a_block_rows(int R, const q8a_acts_t *a, const weight_t *w, int64_t b,
                                  float *acc) {
    switch (R) { /* a constant R per call: the row loops unroll */
    case 1: q8a_block(1, a, w, b, acc); return;
    default: q8a_block(2, a, w, b, acc); return;
    }
}
#else
#define TRIODE_HAS_Q8A 0
#endif

#endif /* TRIODE_QUANT_Q8A_H */
