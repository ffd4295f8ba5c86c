/*
 * Causal attention of a prompt chunk's rows over the paged KV cache, a block of rows at a time
 * (included by decode_step.c; the fused step's prompt rows).
 *
 * Why: row by row through the decode kernel, every row of a chunk re-reads its whole context
 * and reduces each dot product across a vector; a chunk of n rows after c cached tokens reads
 * n * c + n^2 / 2 positions. Here a work item is (chunk, KV head, up to CHUNK_ROWS rows): a tile
 * of TILE positions is read once (widened to float32, K transposed to [dim][position]) and
 * used by every query head of those rows, whose 16 scores per tile are 16 lanes of one FMA
 * chain per dimension (no horizontal sums); softmax is online (running max and sum per query
 * head, flash-attention style), so nothing of size context is stored.
 *
 * Numbers: the same math as the decode kernel and torch's SDPA (scores scaled, softmax over
 * the row's positions 0..its own, probabilities times V), summed in another order, so equal
 * to float rounding (tests/kernels/test_decode_step.py against the module path).
 *
 * NOTE: built with -ffast-math (finite math assumed): no infinities here; the running max
 * starts at a large finite negative and masked lanes are zeroed, not set to -inf.
 */
#ifndef TRIODE_CHUNK_ATTENTION_H
#define TRIODE_CHUNK_ATTENTION_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kv_elements.h"

#define CHUNK_ROWS 16 /* query rows per work item */
#define TILE 16       /* cache positions per step: one 512-bit vector of float32 scores */
#define NO_MAX (-1e30f)

#if defined(__AVX512F__)
#include <immintrin.h>

/* e^x for x <= 0 (scores minus their running max), ~1 ulp: x = n ln2 + r, e^r by the classic
 * degree-6 minimax polynomial, times 2^n by scalef (which also gives 0 far below -87). */
static inline __m512 chunk_exp512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-88.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    const __m512 y = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(y, n);
}

/* One query head's update by one tile (D % 16 == 0): 16 scores as 16 lanes, eight FMA chains
 * over the dimensions; the online-softmax rescale; probabilities times V, four chains. */
static inline void chunk_tile_avx512(const float *q, const float *kt, const float *v, int64_t D,
                                     int64_t valid, float scale, float *run_max, float *run_sum,
                                     float *o) {
    __m512 a[8];
    for (int u = 0; u < 8; u++) a[u] = _mm512_setzero_ps();
    int64_t d = 0;
    for (; d + 8 <= D; d += 8)
        for (int u = 0; u < 8; u++)
            a[u] = _mm512_fmadd_ps(_mm512_set1_ps(q[d + u]), _mm512_loadu_ps(kt + (d + u) * TILE),
                                   a[u]);
    for (; d < D; d++)
        a[0] = _mm512_fmadd_ps(_mm512_set1_ps(q[d]), _mm512_loadu_ps(kt + d * TILE), a[0]);
    const __m512 sum4 = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
    const __m512 sum8 = _mm512_add_ps(_mm512_add_ps(a[4], a[5]), _mm512_add_ps(a[6], a[7]));
    const __m512 s = _mm512_mul_ps(_mm512_add_ps(sum4, sum8), _mm512_set1_ps(scale));
    const __mmask16 live = (__mmask16)((1u << valid) - 1u);
    const float tile_max = _mm512_mask_reduce_max_ps(live, s);
    const float new_max = *run_max > tile_max ? *run_max : tile_max;
    const float correction = *run_max == new_max ? 1.0f : expf(*run_max - new_max);
    const __m512 p = _mm512_maskz_mov_ps(live, chunk_exp512(_mm512_sub_ps(s, _mm512_set1_ps(new_max))));
    *run_sum = *run_sum * correction + _mm512_reduce_add_ps(p);
    *run_max = new_max;
    float pt[TILE];
    _mm512_storeu_ps(pt, p);
    const __m512 c = _mm512_set1_ps(correction);
    int64_t j = 0;
    for (; j + 64 <= D; j += 64) {
        __m512 o0 = _mm512_mul_ps(_mm512_loadu_ps(o + j), c);
        __m512 o1 = _mm512_mul_ps(_mm512_loadu_ps(o + j + 16), c);
        __m512 o2 = _mm512_mul_ps(_mm512_loadu_ps(o + j + 32), c);
        __m512 o3 = _mm512_mul_ps(_mm512_loadu_ps(o + j + 48), c);
        for (int64_t t = 0; t < valid; t++) {
            const __m512 w = _mm512_set1_ps(pt[t]);
            const float *vt = v + t * D + j;
            o0 = _mm512_fmadd_ps(w, _mm512_loadu_ps(vt), o0);
            o1 = _mm512_fmadd_ps(w, _mm512_loadu_ps(vt + 16), o1);
            o2 = _mm512_fmadd_ps(w, _mm512_loadu_ps(vt + 32), o2);
            o3 = _mm512_fmadd_ps(w, _mm512_loadu_ps(vt + 48), o3);
        }
        _mm512_storeu_ps(o + j, o0);
        _mm512_storeu_ps(o + j + 16, o1);
        _mm512_storeu_ps(o + j + 32, o2);
        _mm512_storeu_ps(o + j + 48, o3);
    }
    for (; j < D; j += 16) {
        __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(o + j), c);
        for (int64_t t = 0; t < valid; t++)
            acc = _mm512_fmadd_ps(_mm512_set1_ps(pt[t]), _mm512_loadu_ps(v + t * D + j), acc);
        _mm512_storeu_ps(o + j, acc);
    }
}
#endif

/* dst[0..D) = the cache's D elements at element `offset`, widened to float32 (kv_elements.h:
 * the decode kernel's own loads, 16 at a time where AVX-512 is there). */
static inline void chunk_load_row(const void *cache, int64_t kv_dtype, int64_t offset, float *dst,
                                  int64_t D) {
    const int kind = (int)kv_dtype;
    const char *row = kv_at(cache, offset, kind);
    int64_t d = 0;
#if defined(__AVX512F__)
    for (; d + 16 <= D; d += 16) _mm512_storeu_ps(dst + d, kv_load16(row, d, kind));
#endif
    for (; d < D; d++) dst[d] = kv_load1(row, d, kind);
}

typedef struct {
    const void *k_cache, *v_cache;
    int64_t kv_dtype, stride_block, stride_pos, stride_head, block_size;
    int64_t head_dim, group; /* query heads per KV head */
    float scale;
} chunk_geometry_t;

/* Floats of work memory one item needs. */
static inline int64_t chunk_work_floats(const chunk_geometry_t *g) {
    const int64_t D = g->head_dim, QV = CHUNK_ROWS * g->group;
    return 2 * D * TILE + QV * D + 2 * QV + D;
}

/*
 * Rows [first, first + rows) of one sequence (consecutive positions; row r attends to cache
 * positions 0 .. lens[r] - 1, its own included), KV head kh. q of row r, query head h at
 * q + r * q_stride + h * D; the output of (r, h) at out + r * out_stride + h * D.
 */
static void chunk_attention_item(const chunk_geometry_t *g, const float *q, int64_t q_stride,
                                 const int32_t *table, const int32_t *lens, int64_t first,
                                 int64_t rows, int64_t kh, float *out, int64_t out_stride,
                                 float *work) {
    const int64_t D = g->head_dim, G = g->group, QV = rows * G;
    float *kt = work;          /* [D][TILE]: the tile's K, transposed */
    float *v = kt + D * TILE;  /* [TILE][D] */
    float *acc = v + TILE * D; /* [QV][D]: unnormalized outputs */
    float *run_max = acc + CHUNK_ROWS * G * D, *run_sum = run_max + QV;
    float *krow = run_sum + QV; /* [D] */
    memset(acc, 0, sizeof(float) * QV * D);
    for (int64_t i = 0; i < QV; i++) {
        run_max[i] = NO_MAX;
        run_sum[i] = 0.0f;
    }
    const int64_t end = lens[first + rows - 1]; /* positions the last row reads */
    for (int64_t t0 = 0; t0 < end; t0 += TILE) {
        const int64_t T = end - t0 < TILE ? end - t0 : TILE;
        for (int64_t t = 0; t < TILE; t++) {
            if (t < T) {
                const int64_t p = t0 + t;
                const int64_t at = (int64_t)table[p / g->block_size] * g->stride_block +
                                   (p % g->block_size) * g->stride_pos + kh * g->stride_head;
                chunk_load_row(g->k_cache, g->kv_dtype, at, krow, D);
                for (int64_t d = 0; d < D; d++) kt[d * TILE + t] = krow[d];
                chunk_load_row(g->v_cache, g->kv_dtype, at, v + t * D, D);
            } else {
                for (int64_t d = 0; d < D; d++) kt[d * TILE + t] = 0.0f;
                memset(v + t * D, 0, sizeof(float) * D);
            }
        }
        for (int64_t r = 0; r < rows; r++) {
            const int64_t len = lens[first + r];
            if (len <= t0) continue; /* this tile lies after the row's position */
            const int64_t valid = len - t0 < T ? len - t0 : T;
            for (int64_t h = 0; h < G; h++) {
                const int64_t i = r * G + h;
                const float *qv = q + (first + r) * q_stride + (kh * G + h) * D;
#if defined(__AVX512F__)
                if (D % 16 == 0) {
                    chunk_tile_avx512(qv, kt, v, D, valid, g->scale, run_max + i, run_sum + i,
                                      acc + i * D);
                    continue;
                }
#endif
                float s0[TILE] = {0}, s1[TILE] = {0};
                int64_t d = 0;
                for (; d + 1 < D; d += 2) {
                    const float qa = qv[d], qb = qv[d + 1];
                    const float *ka = kt + d * TILE, *kb = ka + TILE;
#pragma omp simd
                    for (int t = 0; t < TILE; t++) {
                        s0[t] += qa * ka[t];
                        s1[t] += qb * kb[t];
                    }
                }
                for (; d < D; d++)
                    for (int t = 0; t < TILE; t++) s0[t] += qv[d] * kt[d * TILE + t];
                float s[TILE], tile_max = NO_MAX;
                for (int t = 0; t < TILE; t++) {
                    s[t] = (s0[t] + s1[t]) * g->scale;
                    if (t < valid && s[t] > tile_max) tile_max = s[t];
                }
                const float new_max = run_max[i] > tile_max ? run_max[i] : tile_max;
                const float correction = expf(run_max[i] - new_max);
                float p[TILE], tile_sum = 0.0f;
#pragma omp simd reduction(+ : tile_sum)
                for (int t = 0; t < TILE; t++) {
                    p[t] = t < valid ? expf(s[t] - new_max) : 0.0f;
                    tile_sum += p[t];
                }
                run_sum[i] = run_sum[i] * correction + tile_sum;
                run_max[i] = new_max;
                float *o = acc + i * D;
                if (correction != 1.0f) {
#pragma omp simd
                    for (int64_t e = 0; e < D; e++) o[e] *= correction;
                }
                for (int64_t t = 0; t < valid; t++) {
                    const float pt = p[t];
                    const float *vt = v + t * D;
#pragma omp simd
                    for (int64_t e = 0; e < D; e++) o[e] += pt * vt[e];
                }
            }
        }
    }
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t h = 0; h < G; h++) {
            const int64_t i = r * G + h;
            const float inv = 1.0f / run_sum[i];
            float *dst = out + (first + r) * out_stride + (kh * G + h) * D;
            for (int64_t e = 0; e < D; e++) dst[e] = acc[i * D + e] * inv;
        }
    }
}

#endif
