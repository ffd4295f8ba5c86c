/*
 * Paged attention for decode tokens on the CPU, compiled at first use by kernels/cpu_decode.py
 * with the system C compiler and OpenMP. Three entry points, one per KV-cache element type:
 * triode_paged_decode_f32, _bf16 and _f16 (bfloat16 / IEEE binary16 bits). q, out, the sums and
 * the softmax are float32 in all three; a 16-bit cache value is widened to float32 as it is
 * loaded, so a 16-bit cache halves the bytes read (the kernel waits on DRAM, see below).
 *
 * Why it exists: in pure torch every decode step must first gather each sequence's K/V out of
 * the paged cache into a padded tensor, then run attention over the copy, so the cache is read,
 * written and read again. This kernel reads K and V once, straight through the block table.
 *
 * One work item = one sequence, all heads: its blocks are read in order, whole (a block holds
 * every KV head of block_size positions contiguously), with the next block prefetched. Two
 * passes: scores (q.k) for the whole context, softmax, then the probability-weighted sum of V.
 *
 * With AVX-512 and head_dim % 16 == 0 (every Llama-family model), each pass walks the context
 * 16 positions at a time and uses every KV head of those positions (a position's heads are one
 * contiguous row) before moving on, with the rows PREFETCH_AHEAD positions further already
 * requested; a GQA group's query heads share each K/V row they read; the scores of 16 positions
 * are reduced together by one transpose tree (hsum16) rather than one horizontal sum per dot.
 * NOTE: with many sequences the context no longer fits any cache and the kernel waits on DRAM:
 * walking KV head by KV head (one pass per head over a third of each row) and without prefetch
 * it read 12.7 GB/s on this 2-core Xeon; position-major with prefetch 18.4 GB/s (1.45x; 100
 * sequences of 200-700 positions x 30 layers; `sum` streams 25 GB/s), bit for bit the same sums.
 * Other shapes and CPUs take the plain loops below.
 *
 * The loops are written once over a `kind` (kv_kind): every entry point inlines them with its
 * kind as a constant, so each gets its own straight-line copy (no per-load branch) and the
 * float32 one is the same code, and the same numbers, as before the 16-bit kinds existed.
 * Strides are in elements of the cache's type.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_HEADS 128
#define MAX_HEAD_DIM 256
#include "kv_elements.h"

ALWAYS_INLINE float dot(const float *restrict a, const char *restrict b, int n, int kind) {
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int i = 0; i < n; i++) acc += a[i] * kv_load1(b, i, kind);
    return acc;
}

static inline void prefetch_block(const char *c, int64_t bytes) {
    for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off, 0, 0);
}

/* Softmax of each of `rows` rows of `len` scores, in place. */
static void softmax_rows(float *scores, int rows, int64_t len) {
    for (int h = 0; h < rows; h++) {
        float *s = scores + h * len;
        float m = -INFINITY;
        for (int64_t p = 0; p < len; p++) m = s[p] > m ? s[p] : m;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t p = 0; p < len; p++) { s[p] = expf(s[p] - m); sum += s[p]; }
        const float inv = 1.0f / sum;
#pragma omp simd
        for (int64_t p = 0; p < len; p++) s[p] *= inv;
    }
}

/* The arguments of one call (the entry points' parameters; caches untyped, see `kind`). */
typedef struct {
    const float *q;
    int64_t q_stride_t, q_stride_h;
    const void *k_cache, *v_cache;
    int64_t stride_block, stride_pos, stride_head;
    const int32_t *block_tables;
    int64_t bt_stride;
    const int64_t *token_index, *seq_index;
    const int32_t *seq_lens;
    int64_t num_items;
    float *out;
    int64_t out_stride_t, out_stride_h;
    int num_heads, num_kv_heads, head_dim, block_size;
    float scale;
} decode_args;

#if defined(__AVX512F__)
#include <immintrin.h>
#define HAVE_AVX512_PATH 1
#define MAX_GROUP 8

/* The 16 horizontal sums of v[0..15] as one vector (lane j = sum of v[j]'s lanes): a transpose
   tree of 15 adds and 30 shuffles instead of 16 separate horizontal reductions. */
static inline __m512 hsum16(const __m512 v[16]) {
    __m512 w[8], x[4];
    for (int i = 0; i < 8; i++)
        w[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                             _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; i++) {
        const __m512d a = _mm512_castps_pd(w[2 * i]), b = _mm512_castps_pd(w[2 * i + 1]);
        x[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    const __m512 z0 = _mm512_add_ps(_mm512_shuffle_f32x4(x[0], x[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                    _mm512_shuffle_f32x4(x[0], x[1], _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512 z1 = _mm512_add_ps(_mm512_shuffle_f32x4(x[2], x[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                    _mm512_shuffle_f32x4(x[2], x[3], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(z0, z1, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(z0, z1, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* Position p's row (every KV head) of a cache, read through the block table. */
ALWAYS_INLINE const char *position_row(const decode_args *a, const void *cache,
                                       const int32_t *table, int64_t p, int kind) {
    return kv_at(cache,
                 (int64_t)table[p / a->block_size] * a->stride_block +
                     (p % a->block_size) * a->stride_pos,
                 kind);
}

/* Prefetch (into L2) bytes [lo, hi) of the rows of positions [p, end) of one cache: issued
   PREFETCH_AHEAD positions before they are used, so the DRAM latency of the next rows overlaps
   the arithmetic on the current ones. NOTE: the distance is in positions, so a 16-bit cache
   requests half the bytes ahead (its rows are half as long) and keeps the same lead in time. */
#define PREFETCH_AHEAD 32
ALWAYS_INLINE void prefetch_rows(const decode_args *a, const void *cache, const int32_t *table,
                                 int64_t p, int64_t end, int64_t lo, int64_t hi, int kind) {
    for (; p < end; p++) {
        const char *row = position_row(a, cache, table, p, kind);
        const char *c = (const char *)((uintptr_t)(row + lo) & ~(uintptr_t)63);
        for (; c < row + hi; c += 64) _mm_prefetch(c, _MM_HINT_T1);
    }
}

/* The first PREFETCH_AHEAD positions' rows, whole. */
ALWAYS_INLINE void prefetch_start(const decode_args *a, const void *cache, const int32_t *table,
                                  int64_t len, int kind) {
    const int64_t row_bytes = (int64_t)a->num_kv_heads * a->stride_head * kv_bytes(kind);
    prefetch_rows(a, cache, table, 0, len < PREFETCH_AHEAD ? len : PREFETCH_AHEAD, 0, row_bytes,
                  kind);
}

/* KV head kh's part of the 16 rows PREFETCH_AHEAD positions after p0: called once per head
   while the rows of p0 are used. NOTE: one head's part at a time (32-64 lines), not the 16
   rows whole: a burst of ~100-200 prefetches exhausts the line fill buffers and stalls the
   arithmetic behind it (half the samples of the kernel sat on a prefetch); spread out, the
   waits overlap the arithmetic (1.08x float32, 1.14x bfloat16 with the tiles below). */
ALWAYS_INLINE void prefetch_head(const decode_args *a, const void *cache, const int32_t *table,
                                 int64_t p0, int64_t len, int kh, int kind) {
    const int64_t ahead = p0 + PREFETCH_AHEAD, end = ahead + 16 < len ? ahead + 16 : len;
    const int64_t lo = (int64_t)kh * a->stride_head * kv_bytes(kind);
    prefetch_rows(a, cache, table, ahead, end, lo, lo + (int64_t)a->head_dim * kv_bytes(kind),
                  kind);
}

/* Point rows[0..n) at positions [p0, p0 + n). */
ALWAYS_INLINE int next_rows(const decode_args *a, const void *cache, const int32_t *table,
                            int64_t p0, int64_t len, const char *rows[16], int kind) {
    const int n = (len - p0 < 16) ? (int)(len - p0) : 16;
    for (int j = 0; j < n; j++) rows[j] = position_row(a, cache, table, p0 + j, kind);
    return n;
}

/* scores[h * len + p] = scale * q_h . k_p for every query head h over positions [0, len), read
   through the block table 16 positions at a time, all KV heads of those positions together
   (the group of query heads of a KV head shares each K row); head_dim % 16 == 0. */
ALWAYS_INLINE void scores_avx512(const decode_args *a, const float *q, const int32_t *table,
                                 int64_t len, float *scores, int kind) {
    const int group = a->num_heads / a->num_kv_heads;
    const __m512 vscale = _mm512_set1_ps(a->scale);
    prefetch_start(a, a->k_cache, table, len, kind);
    for (int64_t p0 = 0; p0 < len; p0 += 16) {
        const char *rows[16];
        const int n = next_rows(a, a->k_cache, table, p0, len, rows, kind);
        for (int kh = 0; kh < a->num_kv_heads; kh++) {
            const int64_t off = (int64_t)kh * a->stride_head;
            prefetch_head(a, a->k_cache, table, p0, len, kh, kind);
            for (int g = 0; g < group; g++) {
                const int h = kh * group + g;
                const float *qg = q + h * a->q_stride_h;
                __m512 acc[16];
                for (int j = 0; j < 16; j++) acc[j] = _mm512_setzero_ps();
                for (int d = 0; d < a->head_dim; d += 16) {
                    const __m512 qv = _mm512_loadu_ps(qg + d);
                    for (int j = 0; j < n; j++)
                        acc[j] = _mm512_fmadd_ps(qv, kv_load16(rows[j], off + d, kind), acc[j]);
                }
                const __mmask16 mask = (__mmask16)((1u << n) - 1u);
                _mm512_mask_storeu_ps(scores + h * len + p0, mask,
                                      _mm512_mul_ps(hsum16(acc), vscale));
            }
        }
    }
}

/* The group of KV head kh: ak[g * head_dim + d ..] += sum_j pr[g * len + j] * v_j[off + d ..]
   for g < group over T chunks of 16 dims from d, the group x T accumulators in registers.
   NOTE: each accumulator is a chain of n dependent FMAs; T chunks at once give the core
   group x T independent chains (a GQA group of 3 alone: 3, too few to hide the FMA latency).
   Each accumulator still adds its terms in position order: the same sums bit for bit. */
ALWAYS_INLINE void weighted_tile(const float *pr, int64_t len, int group, const char *rows[16],
                                 int n, int64_t off, float *ak, int head_dim, int d, int T,
                                 int kind) {
    __m512 r[MAX_GROUP][4];
    for (int g = 0; g < group; g++)
        for (int t = 0; t < T; t++) r[g][t] = _mm512_loadu_ps(ak + g * head_dim + d + 16 * t);
    for (int j = 0; j < n; j++) {
        __m512 v[4];
        for (int t = 0; t < T; t++) v[t] = kv_load16(rows[j], off + d + 16 * t, kind);
        for (int g = 0; g < group; g++) {
            const __m512 p = _mm512_set1_ps(pr[g * len + j]);
            for (int t = 0; t < T; t++) r[g][t] = _mm512_fmadd_ps(p, v[t], r[g][t]);
        }
    }
    for (int g = 0; g < group; g++)
        for (int t = 0; t < T; t++) _mm512_storeu_ps(ak + g * head_dim + d + 16 * t, r[g][t]);
}

/* out_h = sum_p prob[h][p] * v_p for every head, 16 positions at a time (all KV heads of those
   positions together), a few chunks of 16 dims at a time with a group's accumulators in
   registers between chunks kept in `acc` [num_heads * head_dim]. */
ALWAYS_INLINE void weighted_sum_avx512(const decode_args *a, const float *probs,
                                       const int32_t *table, int64_t len, float *acc, int kind) {
    const int group = a->num_heads / a->num_kv_heads, head_dim = a->head_dim;
    memset(acc, 0, sizeof(float) * (size_t)(a->num_heads * head_dim));
    prefetch_start(a, a->v_cache, table, len, kind);
    for (int64_t p0 = 0; p0 < len; p0 += 16) {
        const char *rows[16];
        const int n = next_rows(a, a->v_cache, table, p0, len, rows, kind);
        for (int kh = 0; kh < a->num_kv_heads; kh++) {
            const int64_t off = (int64_t)kh * a->stride_head;
            prefetch_head(a, a->v_cache, table, p0, len, kh, kind);
            const float *pr = probs + (int64_t)kh * group * len + p0;
            float *ak = acc + (int64_t)kh * group * head_dim;
            if (head_dim % 64 == 0 && group <= 4) {
                /* 4 chunks x a group of 1-4 (constant, so the accumulators stay in registers) */
                for (int d = 0; d < head_dim; d += 64) {
                    switch (group) {
                    case 1: weighted_tile(pr, len, 1, rows, n, off, ak, head_dim, d, 4, kind); break;
                    case 2: weighted_tile(pr, len, 2, rows, n, off, ak, head_dim, d, 4, kind); break;
                    case 3: weighted_tile(pr, len, 3, rows, n, off, ak, head_dim, d, 4, kind); break;
                    default: weighted_tile(pr, len, 4, rows, n, off, ak, head_dim, d, 4, kind);
                    }
                }
            } else {
                for (int d = 0; d < head_dim; d += 16)
                    weighted_tile(pr, len, group, rows, n, off, ak, head_dim, d, 1, kind);
            }
        }
    }
}
#endif

/* Work item i: token token_index[i]'s attention over sequence seq_index[i]'s context, with
   `scores` (num_heads * len floats) and `acc` (num_heads * head_dim) as scratch. */
ALWAYS_INLINE void decode_item(const decode_args *a, int64_t i, float *scores, float *acc,
                               int kind) {
    const int num_heads = a->num_heads, head_dim = a->head_dim, block_size = a->block_size;
    const int group = num_heads / a->num_kv_heads;
    const int64_t seq = a->seq_index[i], len = a->seq_lens[seq], t = a->token_index[i];
    const float *qt = a->q + t * a->q_stride_t;
    const int32_t *table = a->block_tables + seq * a->bt_stride;
    float *out = a->out + t * a->out_stride_t;
#ifdef HAVE_AVX512_PATH
    if (head_dim % 16 == 0 && group <= MAX_GROUP) {
        scores_avx512(a, qt, table, len, scores, kind);
        softmax_rows(scores, num_heads, len);
        weighted_sum_avx512(a, scores, table, len, acc, kind);
        for (int h = 0; h < num_heads; h++)
            memcpy(out + (int64_t)h * a->out_stride_h, acc + h * head_dim,
                   sizeof(float) * head_dim);
        return;
    }
#endif
    /* A block holds block_size positions x all KV heads, contiguous: prefetch it whole while
       the previous block is being used (DRAM latency, not bandwidth, is what hurts here). */
    const int64_t block_bytes = (int64_t)block_size * a->stride_pos * kv_bytes(kind);
    const int64_t num_blocks = (len + block_size - 1) / block_size;
    /* Pass 1: scores[h * len + p] = scale * q_h . k_p (head h reads KV head h / group) */
    prefetch_block(kv_at(a->k_cache, (int64_t)table[0] * a->stride_block, kind), block_bytes);
    for (int64_t b = 0; b < num_blocks; b++) {
        if (b + 1 < num_blocks)
            prefetch_block(kv_at(a->k_cache, (int64_t)table[b + 1] * a->stride_block, kind),
                           block_bytes);
        const int64_t base = (int64_t)table[b] * a->stride_block, start = b * block_size;
        const int64_t n = (len - start < block_size) ? len - start : block_size;
        for (int64_t j = 0; j < n; j++) {
            for (int h = 0; h < num_heads; h++) {
                const char *k =
                    kv_at(a->k_cache, base + j * a->stride_pos + (h / group) * a->stride_head, kind);
                scores[h * len + start + j] =
                    a->scale * dot(qt + h * a->q_stride_h, k, head_dim, kind);
            }
        }
    }
    softmax_rows(scores, num_heads, len);
    /* Pass 2: out_h = sum_p prob[h][p] * v_p */
    memset(acc, 0, sizeof(float) * num_heads * head_dim);
    prefetch_block(kv_at(a->v_cache, (int64_t)table[0] * a->stride_block, kind), block_bytes);
    for (int64_t b = 0; b < num_blocks; b++) {
        if (b + 1 < num_blocks)
            prefetch_block(kv_at(a->v_cache, (int64_t)table[b + 1] * a->stride_block, kind),
                           block_bytes);
        const int64_t base = (int64_t)table[b] * a->stride_block, start = b * block_size;
        const int64_t n = (len - start < block_size) ? len - start : block_size;
        for (int64_t j = 0; j < n; j++) {
            for (int h = 0; h < num_heads; h++) {
                const char *v =
                    kv_at(a->v_cache, base + j * a->stride_pos + (h / group) * a->stride_head, kind);
                const float w = scores[h * len + start + j];
                float *ah = acc + h * head_dim;
#pragma omp simd
                for (int d = 0; d < head_dim; d++) ah[d] += w * kv_load1(v, d, kind);
            }
        }
    }
    for (int h = 0; h < num_heads; h++)
        memcpy(out + (int64_t)h * a->out_stride_h, acc + h * head_dim, sizeof(float) * head_dim);
}

typedef void (*item_fn)(const decode_args *a, int64_t i, float *scores, float *acc);

/* Every work item, spread over the OpenMP threads (one sequence each, dynamically), each
   thread with its own scratch. 0, or -1 for unsupported shapes, -2 when memory ran out. */
static int decode_items(const decode_args *a, item_fn item) {
    const int group = a->num_heads / a->num_kv_heads;
    if (a->num_heads > MAX_HEADS || a->head_dim > MAX_HEAD_DIM ||
        group * a->num_kv_heads != a->num_heads)
        return -1;
    int failed = 0;
#pragma omp parallel
    {
        float *scores = NULL;
        int64_t capacity = 0;
        float acc[MAX_HEADS * MAX_HEAD_DIM];
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < a->num_items; i++) {
            const int64_t len = a->seq_lens[a->seq_index[i]];
            if (len <= 0) continue;
            if ((int64_t)a->num_heads * len > capacity) {
                free(scores);
                capacity = (int64_t)a->num_heads * len;
                scores = (float *)malloc(sizeof(float) * capacity);
                if (!scores) { failed = 1; capacity = 0; continue; }
            }
            item(a, i, scores, acc);
        }
        free(scores);
    }
    return failed ? -2 : 0;
}

/* One exported entry point per cache element type ELEM (kind KIND): the same signature, the
   caches typed. Its item function inlines the loops above with KIND as a constant. */
#define PAGED_DECODE_ENTRY(NAME, ELEM, KIND)                                                      \
    static void NAME##_item(const decode_args *a, int64_t i, float *scores, float *acc) {         \
        decode_item(a, i, scores, acc, KIND);                                                     \
    }                                                                                             \
    int NAME(const float *q, int64_t q_stride_t, int64_t q_stride_h, const ELEM *k_cache,         \
             const ELEM *v_cache, int64_t stride_block, int64_t stride_pos, int64_t stride_head,  \
             const int32_t *block_tables, int64_t bt_stride, const int64_t *token_index,          \
             const int64_t *seq_index, const int32_t *seq_lens, int64_t num_items, float *out,    \
             int64_t out_stride_t, int64_t out_stride_h, int num_heads, int num_kv_heads,         \
             int head_dim, int block_size, float scale) {                                         \
        const decode_args a = {q, q_stride_t, q_stride_h, k_cache, v_cache, stride_block,         \
                               stride_pos, stride_head, block_tables, bt_stride, token_index,     \
                               seq_index, seq_lens, num_items, out, out_stride_t, out_stride_h,   \
                               num_heads, num_kv_heads, head_dim, block_size, scale};             \
        return decode_items(&a, NAME##_item);                                                     \
    }

PAGED_DECODE_ENTRY(triode_paged_decode_f32, float, KV_F32)
PAGED_DECODE_ENTRY(triode_paged_decode_bf16, uint16_t, KV_BF16)
PAGED_DECODE_ENTRY(triode_paged_decode_f16, uint16_t, KV_F16)
