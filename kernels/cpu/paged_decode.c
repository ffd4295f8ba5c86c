/*
 * Paged attention for decode tokens on the CPU (float32), compiled at first use by
 * kernels/cpu_decode.py with the system C compiler and OpenMP.
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
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_HEADS 128
#define MAX_HEAD_DIM 256

static inline float dot(const float *restrict a, const float *restrict b, int n) {
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int i = 0; i < n; i++) acc += a[i] * b[i];
    return acc;
}

static inline void prefetch_block(const float *p, int64_t bytes) {
    const char *c = (const char *)p;
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

/* Prefetch (into L2) the `num_kv_heads` head rows of positions [p, p + n) of one cache, read
   through the block table: issued PREFETCH_AHEAD positions before they are used, so the DRAM
   latency of the next rows overlaps the arithmetic on the current ones. */
#define PREFETCH_AHEAD 32
static inline void prefetch_positions(const float *cache, const int32_t *table,
                                      int64_t stride_block, int64_t stride_pos, int block_size,
                                      int64_t p, int64_t end, int64_t row_bytes) {
    for (; p < end; p++) {
        const char *row = (const char *)(cache + (int64_t)table[p / block_size] * stride_block +
                                         (p % block_size) * stride_pos);
        for (int64_t off = 0; off < row_bytes; off += 64) _mm_prefetch(row + off, _MM_HINT_T1);
    }
}

/* scores[h * len + p] = scale * q_h . k_p for every query head h over positions [0, len), read
   through the block table 16 positions at a time, all KV heads of those positions together
   (the group of query heads of a KV head shares each K row); head_dim % 16 == 0. */
static void scores_avx512(const float *q, int64_t q_stride_h, int num_kv_heads, int group,
                          const float *k_cache, const int32_t *table, int64_t stride_block,
                          int64_t stride_pos, int64_t stride_head, int block_size, int64_t len,
                          int head_dim, float scale, float *scores) {
    const __m512 vscale = _mm512_set1_ps(scale);
    const int64_t row_bytes = (int64_t)num_kv_heads * stride_head * (int64_t)sizeof(float);
    prefetch_positions(k_cache, table, stride_block, stride_pos, block_size, 0,
                       len < PREFETCH_AHEAD ? len : PREFETCH_AHEAD, row_bytes);
    for (int64_t p0 = 0; p0 < len; p0 += 16) {
        const int n = (len - p0 < 16) ? (int)(len - p0) : 16;
        const int64_t ahead = p0 + PREFETCH_AHEAD;
        if (ahead < len)
            prefetch_positions(k_cache, table, stride_block, stride_pos, block_size, ahead,
                               ahead + 16 < len ? ahead + 16 : len, row_bytes);
        const float *rows[16];
        for (int j = 0; j < n; j++) {
            const int64_t p = p0 + j;
            rows[j] = k_cache + (int64_t)table[p / block_size] * stride_block +
                      (p % block_size) * stride_pos;
        }
        for (int kh = 0; kh < num_kv_heads; kh++) {
            const int64_t off = (int64_t)kh * stride_head;
            for (int g = 0; g < group; g++) {
                const int h = kh * group + g;
                const float *qg = q + h * q_stride_h;
                __m512 acc[16];
                for (int j = 0; j < 16; j++) acc[j] = _mm512_setzero_ps();
                for (int d = 0; d < head_dim; d += 16) {
                    const __m512 qv = _mm512_loadu_ps(qg + d);
                    for (int j = 0; j < n; j++)
                        acc[j] = _mm512_fmadd_ps(qv, _mm512_loadu_ps(rows[j] + off + d), acc[j]);
                }
                const __mmask16 mask = (__mmask16)((1u << n) - 1u);
                _mm512_mask_storeu_ps(scores + h * len + p0, mask,
                                      _mm512_mul_ps(hsum16(acc), vscale));
            }
        }
    }
}

/* out_h = sum_p prob[h][p] * v_p for every head, 16 positions at a time (all KV heads of those
   positions together), 16 dims at a time with a group's accumulators in registers between
   chunks kept in `acc` [num_heads * head_dim]. */
static void weighted_sum_avx512(const float *probs, int num_kv_heads, int group,
                                const float *v_cache, const int32_t *table, int64_t stride_block,
                                int64_t stride_pos, int64_t stride_head, int block_size,
                                int64_t len, int head_dim, float *acc) {
    const int64_t row_bytes = (int64_t)num_kv_heads * stride_head * (int64_t)sizeof(float);
    memset(acc, 0, sizeof(float) * (size_t)(num_kv_heads * group * head_dim));
    prefetch_positions(v_cache, table, stride_block, stride_pos, block_size, 0,
                       len < PREFETCH_AHEAD ? len : PREFETCH_AHEAD, row_bytes);
    for (int64_t p0 = 0; p0 < len; p0 += 16) {
        const int n = (len - p0 < 16) ? (int)(len - p0) : 16;
        const int64_t ahead = p0 + PREFETCH_AHEAD;
        if (ahead < len)
            prefetch_positions(v_cache, table, stride_block, stride_pos, block_size, ahead,
                               ahead + 16 < len ? ahead + 16 : len, row_bytes);
        const float *rows[16];
        for (int j = 0; j < n; j++) {
            const int64_t p = p0 + j;
            rows[j] = v_cache + (int64_t)table[p / block_size] * stride_block +
                      (p % block_size) * stride_pos;
        }
        for (int kh = 0; kh < num_kv_heads; kh++) {
            const int64_t off = (int64_t)kh * stride_head;
            const float *pr = probs + (int64_t)kh * group * len + p0;
            float *a = acc + (int64_t)kh * group * head_dim;
            for (int d = 0; d < head_dim; d += 16) {
                __m512 r[MAX_GROUP];
                for (int g = 0; g < group; g++) r[g] = _mm512_loadu_ps(a + g * head_dim + d);
                for (int j = 0; j < n; j++) {
                    const __m512 v = _mm512_loadu_ps(rows[j] + off + d);
                    for (int g = 0; g < group; g++)
                        r[g] = _mm512_fmadd_ps(_mm512_set1_ps(pr[g * len + j]), v, r[g]);
                }
                for (int g = 0; g < group; g++) _mm512_storeu_ps(a + g * head_dim + d, r[g]);
            }
        }
    }
}
#endif

int triode_paged_decode_f32(
    const float *q, int64_t q_stride_t, int64_t q_stride_h,
    const float *k_cache, const float *v_cache,
    int64_t stride_block, int64_t stride_pos, int64_t stride_head,
    const int32_t *block_tables, int64_t bt_stride,
    const int64_t *token_index, const int64_t *seq_index, const int32_t *seq_lens,
    int64_t num_items, float *out, int64_t out_stride_t, int64_t out_stride_h,
    int num_heads, int num_kv_heads, int head_dim, int block_size, float scale)
{
    const int group = num_heads / num_kv_heads;
    if (num_heads > MAX_HEADS || head_dim > MAX_HEAD_DIM || group * num_kv_heads != num_heads)
        return -1;
    /* A block holds block_size positions x all KV heads, contiguous: prefetch it whole while
       the previous block is being used (DRAM latency, not bandwidth, is what hurts here). */
    const int64_t block_bytes = (int64_t)block_size * stride_pos * (int64_t)sizeof(float);
    int failed = 0;
#pragma omp parallel
    {
        float *scores = NULL;
        int64_t capacity = 0;
        float acc[MAX_HEADS * MAX_HEAD_DIM];
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < num_items; i++) {
            const int64_t seq = seq_index[i];
            const int64_t len = seq_lens[seq];
            const int64_t t = token_index[i];
            if (len <= 0) continue;
            if ((int64_t)num_heads * len > capacity) {
                free(scores);
                capacity = (int64_t)num_heads * len;
                scores = (float *)malloc(sizeof(float) * capacity);
                if (!scores) { failed = 1; capacity = 0; continue; }
            }
            const float *qt = q + t * q_stride_t;
            const int32_t *table = block_tables + seq * bt_stride;
            const int64_t num_blocks = (len + block_size - 1) / block_size;

#ifdef HAVE_AVX512_PATH
            if (head_dim % 16 == 0 && group <= MAX_GROUP) {
                scores_avx512(qt, q_stride_h, num_kv_heads, group, k_cache, table, stride_block,
                              stride_pos, stride_head, block_size, len, head_dim, scale, scores);
                softmax_rows(scores, num_heads, len);
                weighted_sum_avx512(scores, num_kv_heads, group, v_cache, table, stride_block,
                                    stride_pos, stride_head, block_size, len, head_dim, acc);
                for (int h = 0; h < num_heads; h++)
                    memcpy(out + t * out_stride_t + (int64_t)h * out_stride_h, acc + h * head_dim,
                           sizeof(float) * head_dim);
                continue;
            }
#endif
            /* Pass 1: scores[h * len + p] = scale * q_h . k_p (head h reads KV head h / group) */
            prefetch_block(k_cache + (int64_t)table[0] * stride_block, block_bytes);
            for (int64_t b = 0; b < num_blocks; b++) {
                if (b + 1 < num_blocks)
                    prefetch_block(k_cache + (int64_t)table[b + 1] * stride_block, block_bytes);
                const float *kb = k_cache + (int64_t)table[b] * stride_block;
                const int64_t start = b * block_size;
                const int64_t n = (len - start < block_size) ? len - start : block_size;
                for (int64_t j = 0; j < n; j++) {
                    for (int h = 0; h < num_heads; h++) {
                        const float *k = kb + j * stride_pos + (h / group) * stride_head;
                        scores[h * len + start + j] = scale * dot(qt + h * q_stride_h, k, head_dim);
                    }
                }
            }
            softmax_rows(scores, num_heads, len);
            /* Pass 2: out_h = sum_p prob[h][p] * v_p */
            memset(acc, 0, sizeof(float) * num_heads * head_dim);
            prefetch_block(v_cache + (int64_t)table[0] * stride_block, block_bytes);
            for (int64_t b = 0; b < num_blocks; b++) {
                if (b + 1 < num_blocks)
                    prefetch_block(v_cache + (int64_t)table[b + 1] * stride_block, block_bytes);
                const float *vb = v_cache + (int64_t)table[b] * stride_block;
                const int64_t start = b * block_size;
                const int64_t n = (len - start < block_size) ? len - start : block_size;
                for (int64_t j = 0; j < n; j++) {
                    for (int h = 0; h < num_heads; h++) {
                        const float *v = vb + j * stride_pos + (h / group) * stride_head;
                        const float w = scores[h * len + start + j];
                        float *a = acc + h * head_dim;
#pragma omp simd
                        for (int d = 0; d < head_dim; d++) a[d] += w * v[d];
                    }
                }
            }
            for (int h = 0; h < num_heads; h++)
                memcpy(out + t * out_stride_t + (int64_t)h * out_stride_h, acc + h * head_dim,
                       sizeof(float) * head_dim);
        }
        free(scores);
    }
    return failed ? -2 : 0;
}
