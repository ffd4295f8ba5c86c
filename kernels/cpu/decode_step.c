/*
 * A Llama-family decode step in one call: every layer of the model for M decode rows (one new
 * token per sequence), compiled at first use by kernels/cpu_decode_step.py.
 *
 * Why it exists: a small decode step of a small model is mostly overhead. In the module path
 * each layer is ~30 torch operations and 5 C calls dispatched from Python; for the bundled
 * 135M model with one row that is ~1,000 dispatches costing more than the matmuls themselves
 * (measured: a 12 ms step of which the quantized linears are ~3 ms). Here Python calls once a
 * step; the norms, RoPE, the KV-cache write, SiLU and the residual adds run in plain C, and the
 * matmuls and the attention are the engine's own kernels, called through function pointers
 * (triode_quant_matmul / triode_quant_matmul_tiles / triode_paged_decode_f32, _bf16 or _f16, or
 * any kernel with the same signature): the same code and the same numbers as the module path
 * for those parts.
 *
 * The KV cache may be float32, bfloat16 or float16 (model_t.kv_dtype); the new K/V are rounded
 * to it to nearest, ties to even, as torch's `.to(dtype)` does in the module path's cache
 * write, so both paths leave the same bits in the cache (triode_store_kv, tested against torch).
 *
 * The arithmetic is the module path's (engine/models/llama.py): float32 RMSNorm
 * w * (x * 1/sqrt(mean(x^2) + eps)), rotate-half RoPE x * cos + rotate(x) * sin, SiLU
 * x / (1 + exp(-x)). Sums (the norm's mean) may be added in another order than torch's, so
 * results agree to float rounding, not bit for bit (tests/kernels/test_decode_step.py).
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PARTS 4

typedef int (*matmul_fn)(const float *x, int64_t ldx, int64_t M, const uint8_t *codes, int bits,
                         const void *scales, const void *offsets, int half, int group, int64_t N,
                         int64_t K, float *out, int64_t ldo);

/* The caches are float32, or bf16 / IEEE half bits (uint16_t), as model_t.kv_dtype says. */
typedef int (*attention_fn)(const float *q, int64_t q_stride_t, int64_t q_stride_h,
                            const void *k_cache, const void *v_cache, int64_t stride_block,
                            int64_t stride_pos, int64_t stride_head, const int32_t *block_tables,
                            int64_t bt_stride, const int64_t *token_index,
                            const int64_t *seq_index, const int32_t *seq_lens, int64_t num_items,
                            float *out, int64_t out_stride_t, int64_t out_stride_h, int num_heads,
                            int num_kv_heads, int head_dim, int block_size, float scale);

/* Every field is 8 bytes wide (pointers, int64, double): the ctypes mirror has no padding. */
typedef struct {
    void *small;  /* matmul_fn for steps of at most max_small_rows rows */
    void *big;    /* matmul_fn for bigger steps (NULL: `small` for every step) */
    const void *codes, *scales, *offsets;
    int64_t bits, half, group, N, K;
    int64_t column; /* first output column of this part */
} part_t;

typedef struct {
    part_t parts[MAX_PARTS];
    int64_t num_parts, in_features, out_features, max_small_rows;
    const float *bias; /* NULL: none */
} linear_t;

typedef struct {
    const float *input_norm, *post_norm;
    linear_t qkv, o, gate_up, down;
    void *k_cache, *v_cache; /* of model_t.kv_dtype */
} layer_t;

enum { KV_FLOAT32 = 0, KV_BFLOAT16 = 1, KV_FLOAT16 = 2 };

typedef struct {
    int64_t hidden, intermediate, num_heads, num_kv_heads, head_dim, num_layers;
    int64_t block_size, max_positions;
    int64_t stride_block, stride_pos, stride_head; /* of every layer's K and V cache */
    double eps, scale;
    const float *rope_cos, *rope_sin, *final_norm;
    void *attention; /* attention_fn */
    int64_t split_heads; /* fewer rows than threads: one attention call per (row, KV head) */
    int64_t kv_dtype;    /* KV_FLOAT32, KV_BFLOAT16 or KV_FLOAT16; `attention` reads that */
    int64_t chunk_kernel; /* prompt chunks through chunk_attention.h (0: row by row, decode kernel) */
} model_t;

#include "chunk_attention.h"


/* float32 -> bfloat16 bits, to nearest, ties to even; NaN -> 0x7FC0 (torch's c10::BFloat16).
 * Integer operations only: -ffast-math may not assume away a NaN test done on the bits. */
static inline uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* float32 -> IEEE half bits, to nearest, ties to even (overflow: inf; NaN: sign | 0x7E00). */
static inline uint16_t to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520: past the largest */
    uint32_t r, rem, halfway;
    if (ax < 0x38800000u) { /* below 2^-14: a subnormal half, in units of 2^-24 */
        if (ax < 0x33000000u) return (uint16_t)sign; /* below 2^-25 */
        const uint32_t shift = 126u - (ax >> 23), m = (ax & 0x7fffffu) | 0x800000u;
        r = m >> shift;
        rem = m & ((1u << shift) - 1u);
        halfway = 1u << (shift - 1u);
    } else {
        r = (ax >> 13) - (112u << 10); /* rebias the exponent; a carry may reach inf: right */
        rem = ax & 0x1fffu;
        halfway = 0x1000u;
    }
    if (rem > halfway || (rem == halfway && (r & 1u))) r++;
    return (uint16_t)(sign | r);
}

/* dst[i] = src[i] in the cache's dtype, i < n. Exported for the tests (bits against torch). */
void triode_store_kv(const float *src, void *dst, int64_t n, int64_t kv_dtype) {
    if (kv_dtype == KV_BFLOAT16) {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = to_bf16(src[i]);
    } else if (kv_dtype == KV_FLOAT16) {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = to_f16(src[i]);
    } else {
        memcpy(dst, src, sizeof(float) * n);
    }
}

static int64_t kv_element_size(int64_t kv_dtype) {
    return kv_dtype == KV_FLOAT32 ? 4 : 2;
}

/* out[m, :] = x[m, :] W^T (+ bias), each part writing its own columns. */
static int run_linear(const linear_t *lin, const float *x, int64_t M, float *out) {
    for (int64_t p = 0; p < lin->num_parts; p++) {
        const part_t *part = &lin->parts[p];
        const matmul_fn fn =
            (matmul_fn)(M > lin->max_small_rows && part->big ? part->big : part->small);
        const int rc = fn(x, lin->in_features, M, (const uint8_t *)part->codes, (int)part->bits,
                          part->scales, part->offsets, (int)part->half, (int)part->group, part->N,
                          part->K, out + part->column, lin->out_features);
        if (rc != 0) return rc;
    }
    if (lin->bias) {
        for (int64_t m = 0; m < M; m++) {
            float *row = out + m * lin->out_features;
            for (int64_t n = 0; n < lin->out_features; n++) row[n] += lin->bias[n];
        }
    }
    return 0;
}

/* out[m] = w * (x[m] * 1/sqrt(mean(x[m]^2) + eps)) */
static void rms_norm(const float *x, const float *w, int64_t M, int64_t H, float eps, float *out) {
    for (int64_t m = 0; m < M; m++) {
        const float *xr = x + m * H;
        float *o = out + m * H;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < H; i++) sum += xr[i] * xr[i];
        const float r = 1.0f / sqrtf(sum / (float)H + eps);
#pragma omp simd
        for (int64_t i = 0; i < H; i++) o[i] = w[i] * (xr[i] * r);
    }
}

/* Rotate-half RoPE on `heads` heads of one row, in place, with this position's cos/sin. */
static void rope_row(float *v, int64_t heads, int64_t D, const float *cos, const float *sin) {
    const int64_t half = D / 2;
    for (int64_t h = 0; h < heads; h++) {
        float *x = v + h * D;
        float tmp[512];
        memcpy(tmp, x, sizeof(float) * D);
        for (int64_t d = 0; d < half; d++) {
            x[d] = tmp[d] * cos[d] + (-tmp[d + half]) * sin[d];
            x[d + half] = tmp[d + half] * cos[d + half] + tmp[d] * sin[d + half];
        }
    }
}

/*
 * Attention of the M rows' q (in `qkv`) over their contexts into `out` [M, q_size].
 * The kernel gives each sequence to one thread; with fewer rows than threads (one stream's
 * decode) it is called once per (row, KV head) instead, those calls spread over the threads
 * (a KV head's query group is a kernel call of its own: q, the caches and `out` offset to that
 * head, one KV head), so one sequence's context is read by every thread.
 */
static int decode_attention(const model_t *m, const layer_t *layer, const float *qkv,
                            int64_t qkv_width, const int32_t *tables, int64_t bt_stride,
                            const int32_t *seq_lens, int64_t M, const int64_t *index,
                            int64_t total_rows, float *out) {
    const attention_fn attend = (attention_fn)m->attention;
    const int64_t D = m->head_dim, q_size = m->num_heads * D;
    const int64_t group = m->num_heads / m->num_kv_heads;
    if (!m->split_heads || total_rows >= omp_get_max_threads() || m->num_kv_heads == 1)
        return attend(qkv, qkv_width, D, layer->k_cache, layer->v_cache, m->stride_block,
                      m->stride_pos, m->stride_head, tables, bt_stride, index, index, seq_lens,
                      M, out, q_size, D, (int)m->num_heads, (int)m->num_kv_heads, (int)D,
                      (int)m->block_size, (float)m->scale);
    static const int64_t first_item = 0; /* each call's q, tables and lens start at its row */
    const int64_t items = M * m->num_kv_heads;
    const int64_t head_bytes = m->stride_head * kv_element_size(m->kv_dtype);
    const char *k_cache = layer->k_cache, *v_cache = layer->v_cache;
    int rc = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(| : rc)
    for (int64_t i = 0; i < items; i++) {
        const int64_t r = index[i / m->num_kv_heads], kh = i % m->num_kv_heads;
        rc |= attend(qkv + r * qkv_width + kh * group * D, qkv_width, D,
                     k_cache + kh * head_bytes, v_cache + kh * head_bytes,
                     m->stride_block, m->stride_pos, m->stride_head, tables + r * bt_stride,
                     bt_stride, &first_item, &first_item, seq_lens + r, 1,
                     out + r * q_size + kh * group * D,
                     q_size, D, (int)group, 1, (int)D, (int)m->block_size, (float)m->scale);
    }
    return rc;
}

/*
 * The step's attention: decode rows (and, without the chunk kernel, every row) through the
 * decode kernel; the rows of each prompt chunk (chunks[2c] = first row, chunks[2c + 1] = rows,
 * one sequence at consecutive positions) through chunk_attention.h, CHUNK_ROWS rows and one
 * KV head per work item. `decode_rows` lists the rows outside every chunk (num_decode).
 */
static int attention(const model_t *m, const layer_t *layer, const float *qkv, int64_t qkv_width,
                     const int32_t *tables, int64_t bt_stride, const int32_t *seq_lens, int64_t M,
                     const int64_t *index, const int64_t *chunks, int64_t num_chunks,
                     const int64_t *decode_rows, int64_t num_decode, float *out) {
    if (!num_chunks || !m->chunk_kernel)
        return decode_attention(m, layer, qkv, qkv_width, tables, bt_stride, seq_lens, M, index,
                                M, out);
    int rc = 0;
    if (num_decode)
        rc = decode_attention(m, layer, qkv, qkv_width, tables, bt_stride, seq_lens, num_decode,
                              decode_rows, M, out);
    if (rc) return rc;
    const chunk_geometry_t geometry = {
        .k_cache = layer->k_cache, .v_cache = layer->v_cache, .kv_dtype = m->kv_dtype,
        .stride_block = m->stride_block, .stride_pos = m->stride_pos,
        .stride_head = m->stride_head, .block_size = m->block_size, .head_dim = m->head_dim,
        .group = m->num_heads / m->num_kv_heads, .scale = (float)m->scale,
    };
    const int64_t KVH = m->num_kv_heads, q_size = m->num_heads * m->head_dim;
    int64_t items = 0;
    for (int64_t c = 0; c < num_chunks; c++) items += (chunks[2 * c + 1] + CHUNK_ROWS - 1) / CHUNK_ROWS;
    items *= KVH;
    const int64_t work_floats = chunk_work_floats(&geometry);
#pragma omp parallel reduction(| : rc)
    {
        float *work = malloc(sizeof(float) * work_floats);
        if (!work) rc |= -100;
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < items; i++) {
            if (!work) continue;
            /* item i: KV head i % KVH of the (i / KVH)-th block of CHUNK_ROWS rows, counting
               the last (longest-context) blocks first so the big items start early */
            int64_t block = items / KVH - 1 - i / KVH, c = 0;
            while (block >= (chunks[2 * c + 1] + CHUNK_ROWS - 1) / CHUNK_ROWS) {
                block -= (chunks[2 * c + 1] + CHUNK_ROWS - 1) / CHUNK_ROWS;
                c++;
            }
            const int64_t first = chunks[2 * c] + block * CHUNK_ROWS;
            const int64_t left = chunks[2 * c] + chunks[2 * c + 1] - first;
            chunk_attention_item(&geometry, qkv, qkv_width, tables + first * bt_stride, seq_lens,
                                 first, left < CHUNK_ROWS ? left : CHUNK_ROWS, i % KVH, out,
                                 q_size, work);
        }
        free(work);
    }
    return rc;
}

/*
 * x [M, hidden]: the rows' embeddings in; the final-normed hidden states out.
 * positions/slots [M] int64 (slot < 0: do not write the cache), tables [M, bt_stride] int32,
 * seq_lens [M] int32 (context length including the new token). Returns 0, or the first
 * non-zero code of a kernel (-100: out of memory, -101: bad arguments).
 */
int triode_llama_decode(const model_t *m, const layer_t *layers, float *x, int64_t M,
                        const int64_t *positions, const int64_t *slots, const int32_t *tables,
                        int64_t bt_stride, const int32_t *seq_lens, const int64_t *chunks,
                        int64_t num_chunks) {
    const int64_t H = m->hidden, D = m->head_dim, I = m->intermediate;
    const int64_t q_size = m->num_heads * D, kv_size = m->num_kv_heads * D;
    const int64_t qkv_width = q_size + 2 * kv_size;
    if (M <= 0 || D > 512 || D % 2) return -101;
    if (m->kv_dtype != KV_FLOAT32 && m->kv_dtype != KV_BFLOAT16 && m->kv_dtype != KV_FLOAT16)
        return -101;
    const int64_t kv_elem = kv_element_size(m->kv_dtype);
    for (int64_t r = 0; r < M; r++)
        if (positions[r] < 0 || positions[r] >= m->max_positions) return -101;
    for (int64_t c = 0, next = 0; c < num_chunks; c++) { /* in order, inside [0, M), >= 2 rows */
        if (chunks[2 * c] < next || chunks[2 * c + 1] < 2 || chunks[2 * c] + chunks[2 * c + 1] > M)
            return -101;
        next = chunks[2 * c] + chunks[2 * c + 1];
    }
    float *h = malloc(sizeof(float) * M * H);
    float *tmp = malloc(sizeof(float) * M * H);
    float *qkv = malloc(sizeof(float) * M * qkv_width);
    float *attn = malloc(sizeof(float) * M * q_size);
    float *gate_up = malloc(sizeof(float) * M * 2 * I);
    float *act = malloc(sizeof(float) * M * I);
    int64_t *index = malloc(sizeof(int64_t) * M);
    int64_t *decode_rows = malloc(sizeof(int64_t) * M);
    int rc = 0;
    if (!h || !tmp || !qkv || !attn || !gate_up || !act || !index || !decode_rows) {
        rc = -100;
        goto done;
    }
    for (int64_t r = 0; r < M; r++) index[r] = r;
    int64_t num_decode = 0;
    for (int64_t r = 0, c = 0; r < M; r++) {
        if (c < num_chunks && r >= chunks[2 * c] + chunks[2 * c + 1]) c++;
        if (c < num_chunks && r >= chunks[2 * c]) continue;
        decode_rows[num_decode++] = r;
    }
    const float eps = (float)m->eps;

    for (int64_t l = 0; l < m->num_layers; l++) {
        const layer_t *layer = &layers[l];
        rms_norm(x, layer->input_norm, M, H, eps, h);
        if ((rc = run_linear(&layer->qkv, h, M, qkv))) goto done;
        for (int64_t r = 0; r < M; r++) {
            float *row = qkv + r * qkv_width;
            const float *cos = m->rope_cos + positions[r] * D, *sin = m->rope_sin + positions[r] * D;
            rope_row(row, m->num_heads + m->num_kv_heads, D, cos, sin); /* q and k heads */
            if (slots[r] < 0) continue;
            const int64_t block = slots[r] / m->block_size, pos = slots[r] % m->block_size;
            const int64_t at = block * m->stride_block + pos * m->stride_pos;
            char *k_cache = layer->k_cache, *v_cache = layer->v_cache;
            for (int64_t kh = 0; kh < m->num_kv_heads; kh++) {
                const int64_t offset = (at + kh * m->stride_head) * kv_elem;
                triode_store_kv(row + q_size + kh * D, k_cache + offset, D, m->kv_dtype);
                triode_store_kv(row + q_size + kv_size + kh * D, v_cache + offset, D, m->kv_dtype);
            }
        }
        rc = attention(m, layer, qkv, qkv_width, tables, bt_stride, seq_lens, M, index, chunks,
                       num_chunks, decode_rows, num_decode, attn);
        if (rc) goto done;
        if ((rc = run_linear(&layer->o, attn, M, tmp))) goto done;
        for (int64_t i = 0; i < M * H; i++) x[i] = x[i] + tmp[i];
        rms_norm(x, layer->post_norm, M, H, eps, h);
        if ((rc = run_linear(&layer->gate_up, h, M, gate_up))) goto done;
        for (int64_t r = 0; r < M; r++) {
            const float *g = gate_up + r * 2 * I, *u = g + I;
            float *a = act + r * I;
#pragma omp simd
            for (int64_t i = 0; i < I; i++) a[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
        }
        if ((rc = run_linear(&layer->down, act, M, tmp))) goto done;
        for (int64_t i = 0; i < M * H; i++) x[i] = x[i] + tmp[i];
    }
    rms_norm(x, m->final_norm, M, H, eps, h);
    memcpy(x, h, sizeof(float) * M * H);
done:
    free(h);
    free(tmp);
    free(qkv);
    free(attn);
    free(gate_up);
    free(act);
    free(index);
    free(decode_rows);
    return rc;
}
