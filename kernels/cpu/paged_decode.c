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
            /* Softmax per query head. */
            for (int h = 0; h < num_heads; h++) {
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
