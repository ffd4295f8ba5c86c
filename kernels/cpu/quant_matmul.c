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
 * The layout of the weights is described in quant_blocks.h.
 *
 * The matmul sums x * code over a group first and applies scale and offset once per group:
 *   sum_k x_k W_nk = sum_g scale_gn (sum_{k in g} x_k code_nk) + offset_gn (sum_{k in g} x_k)
 * Few rows (<= 4) unpack the codes in registers for each call; more rows unpack each block's
 * codes once into an L1 buffer shared by all row tiles. Per row both do the same operations in
 * the same order, so a row's result never depends on how many rows share the call.
 */
#include "quant_blocks.h"
#include "quant_q8a.h"

#define MAX_ROWS 4   /* rows per call of the few-rows path (codes unpacked in registers) */
#define ROW_TILE 6   /* rows per register tile of the many-rows path */
#define K_TILE 32    /* k's unpacked at once into the many-rows path's L1 buffer */
#define ROW_CHUNK 64 /* rows per work item of the many-rows path */
/* NOTE: the codes are read as one stream per thread; asking for each line this far ahead (the
   hardware prefetcher alone stops at page ends and ramps up slowly) made a one-row decode step
   of the bundled model 1.14-1.34x faster (4,096 bytes; 2,048-8,192 within noise of it; 2 cores,
   BENCHMARKS.md issue 14). Prefetches never fault, so reading past the last block is harmless. */
#define PREFETCH_BYTES 4096

/* Rows r < R of one 64-column block's results `acc` [R, 64] into out[r, 64b..] (the last block
   may be narrower than 64 columns: N is not padded in `out`). */
static inline void store_block(const float *acc, int R, int64_t b, int64_t N, float *out,
                               int64_t ldo) {
    const int64_t n0 = b * BLOCK_N;
    const int64_t width = N - n0 < BLOCK_N ? N - n0 : BLOCK_N;
    for (int r = 0; r < R; r++)
        memcpy(out + r * ldo + n0, acc + r * BLOCK_N, sizeof(float) * width);
}

#if defined(__AVX512F__)
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
            if (!((uintptr_t)p & 63)) _mm_prefetch((const char *)p + PREFETCH_BYTES, _MM_HINT_T0);
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

/* Rows r < R (R <= ROW_TILE, a constant after inlining) of `g` [R, 64] += x[r, k0 + k] *
   w[k, :] over the `kn` unpacked k's in `wbuf` [kn, 64] (g starts at zero when `first`). */
static inline __attribute__((always_inline)) void tile_rows_avx512(
    const int R, const float *restrict x, int64_t ldx, int64_t k0, int kn,
    const float *restrict wbuf, float *restrict g, int first)
{
    __m512 a[ROW_TILE][4];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < 4; c++)
            a[r][c] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(g + r * BLOCK_N + 16 * c);
    for (int k = 0; k < kn; k++) {
        const float *wk = wbuf + k * BLOCK_N;
        const __m512 v0 = _mm512_loadu_ps(wk), v1 = _mm512_loadu_ps(wk + 16);
        const __m512 v2 = _mm512_loadu_ps(wk + 32), v3 = _mm512_loadu_ps(wk + 48);
        for (int r = 0; r < R; r++) {
            const __m512 xv = _mm512_set1_ps(x[r * ldx + k0 + k]);
            a[r][0] = _mm512_fmadd_ps(xv, v0, a[r][0]);
            a[r][1] = _mm512_fmadd_ps(xv, v1, a[r][1]);
            a[r][2] = _mm512_fmadd_ps(xv, v2, a[r][2]);
            a[r][3] = _mm512_fmadd_ps(xv, v3, a[r][3]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < 4; c++) _mm512_storeu_ps(g + r * BLOCK_N + 16 * c, a[r][c]);
}

static inline void tile_rows(int R, const float *x, int64_t ldx, int64_t k0, int kn,
                             const float *wbuf, float *g, int first) {
    switch (R) { /* a constant R per call: the row loops unroll */
    case 1: tile_rows_avx512(1, x, ldx, k0, kn, wbuf, g, first); return;
    case 2: tile_rows_avx512(2, x, ldx, k0, kn, wbuf, g, first); return;
    case 3: tile_rows_avx512(3, x, ldx, k0, kn, wbuf, g, first); return;
    case 4: tile_rows_avx512(4, x, ldx, k0, kn, wbuf, g, first); return;
    case 5: tile_rows_avx512(5, x, ldx, k0, kn, wbuf, g, first); return;
    default: tile_rows_avx512(6, x, ldx, k0, kn, wbuf, g, first); return;
    }
}

/*
 * One 64-column block for R <= ROW_CHUNK rows. The few-rows path unpacks the codes again for
 * every 4 rows; here each k-tile of codes is unpacked once into `wbuf` (in L1) and shared by
 * all row tiles, so the FMAs, not the unpacking, set the pace. Per row the operations and
 * their order are those of block_rows_avx512: a row's result never depends on the others.
 */
static void block_many_rows_avx512(int R, const float *restrict x, int64_t ldx,
                                   const weight_t *w, int64_t b, const float *restrict sums,
                                   float *restrict acc, float *restrict gbuf,
                                   float *restrict wbuf) {
    const int64_t bytes_per_k = w->bits == 4 ? 32 : 64;
    const int groups = (int)(w->K / w->group);
    const uint8_t *p = w->codes + b * w->K * bytes_per_k;
    for (int i = 0; i < R * BLOCK_N; i++) acc[i] = 0.0f;
    for (int g = 0; g < groups; g++) {
        for (int64_t k0 = (int64_t)g * w->group; k0 < (int64_t)(g + 1) * w->group; k0 += K_TILE) {
            const int64_t k_end = (int64_t)(g + 1) * w->group;
            const int kn = (int)(k_end - k0 < K_TILE ? k_end - k0 : K_TILE);
            for (int k = 0; k < kn; k++, p += bytes_per_k) {
                __m512 v[4];
                if (!((uintptr_t)p & 63)) _mm_prefetch((const char *)p + PREFETCH_BYTES, _MM_HINT_T0);
                unpack_codes_avx512(p, w->bits, v);
                for (int c = 0; c < 4; c++) _mm512_storeu_ps(wbuf + k * BLOCK_N + 16 * c, v[c]);
            }
            const int first = k0 == (int64_t)g * w->group;
            for (int r0 = 0; r0 < R; r0 += ROW_TILE) {
                const int n = R - r0 < ROW_TILE ? R - r0 : ROW_TILE;
                tile_rows(n, x + r0 * ldx, ldx, k0, kn, wbuf, gbuf + r0 * BLOCK_N, first);
            }
        }
        const int64_t at = (int64_t)g * w->ld_scale + b * BLOCK_N;
        for (int c = 0; c < 4; c++) {
            const __m512 s = load_params(w->scales, w->half, at + 16 * c);
            const __m512 o = w->offsets ? load_params(w->offsets, w->half, at + 16 * c)
                                        : _mm512_setzero_ps();
            for (int r = 0; r < R; r++) {
                float *a = acc + r * BLOCK_N + 16 * c;
                const __m512 ga = _mm512_loadu_ps(gbuf + r * BLOCK_N + 16 * c);
                __m512 t = _mm512_fmadd_ps(ga, s, _mm512_loadu_ps(a));
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
#if defined(__AVX512F__)
    if (M > MAX_ROWS) { /* many rows: unpack once per block and k-tile, share across rows */
        const int64_t row_chunks = (M + ROW_CHUNK - 1) / ROW_CHUNK;
#pragma omp parallel for schedule(static) collapse(2)
        for (int64_t b = 0; b < n_blocks; b++) {
            for (int64_t rc = 0; rc < row_chunks; rc++) {
                float acc[ROW_CHUNK * BLOCK_N], gbuf[ROW_CHUNK * BLOCK_N];
                float wbuf[K_TILE * BLOCK_N];
                const int64_t m0 = rc * ROW_CHUNK;
                const int R = (int)(M - m0 < ROW_CHUNK ? M - m0 : ROW_CHUNK);
                block_many_rows_avx512(R, x + m0 * ldx, ldx, &w, b,
                                       sums ? sums + m0 * groups : NULL, acc, gbuf, wbuf);
                store_block(acc, R, b, N, out + m0 * ldo, ldo);
            }
        }
        free(sums);
        return 0;
    }
#endif
    const int64_t row_chunks = (M + MAX_ROWS - 1) / MAX_ROWS;
#pragma omp parallel for schedule(static) collapse(2)
    for (int64_t b = 0; b < n_blocks; b++) {
        for (int64_t rc = 0; rc < row_chunks; rc++) {
            float acc[MAX_ROWS * BLOCK_N];
            const int64_t m0 = rc * MAX_ROWS;
            const int R = (int)(M - m0 < MAX_ROWS ? M - m0 : MAX_ROWS);
            block_rows(R, x + m0 * ldx, ldx, &w, b, sums ? sums + m0 * groups : NULL, acc);
            store_block(acc, R, b, N, out + m0 * ldo, ldo);
        }
    }
    free(sums);
    return 0;
}

/*
 * triode_quant_matmul's call on integer dot products (quant_q8a.h): the same arguments and
 * weights, a different rounding (each row's activations to two int8 digits per group of the
 * weights' groups, about 15 bits). Where the CPU lacks AVX512-VNNI/VBMI, or the groups are not whole
 * multiples of 16, it is triode_quant_matmul itself (float32 activations).
 */
int triode_quant_matmul_q8a(const float *x, int64_t ldx, int64_t M, const uint8_t *codes,
                            int bits, const void *scales, const void *offsets, int half,
                            int group, int64_t N, int64_t K, float *out, int64_t ldo) {
#if TRIODE_HAS_Q8A
    const int64_t n_blocks = (N + BLOCK_N - 1) / BLOCK_N;
    const weight_t w = {codes, scales, offsets, bits, half, group, N, K, n_blocks * BLOCK_N};
    if (check(&w) || M <= 0) return -1;
    if (group % 16 == 0) {
        const int64_t groups = K / group;
        char *mem = (char *)malloc((size_t)(2 * M * K + 3 * 4 * M * groups));
        if (!mem) return -2;
        int8_t *digits = (int8_t *)(mem + 12 * M * groups);
        const q8a_acts_t acts = {digits, digits + M * K, (float *)mem, (float *)mem + M * groups,
                                 (int32_t *)mem + 2 * M * groups};
        const int64_t row_chunks = (M + Q8A_ROWS - 1) / Q8A_ROWS;
#pragma omp parallel
        {
            /* The rounding shared out too (one fork: the loop's end is the barrier). */
#pragma omp for schedule(static)
            for (int64_t rg = 0; rg < M * groups; rg++) {
                const int64_t m = rg / groups, g = rg % groups, at = m * K + g * group;
                q8a_quantize_group(x + m * ldx + g * group, group, acts.hi + at, acts.lo + at,
                                   acts.d + rg, offsets ? acts.sx + rg : NULL,
                                   bits == 8 ? acts.sq + rg : NULL);
            }
#pragma omp for schedule(static) collapse(2)
            for (int64_t b = 0; b < n_blocks; b++) {
                for (int64_t rc = 0; rc < row_chunks; rc++) {
                    float acc[Q8A_ROWS * BLOCK_N];
                    const int64_t m0 = rc * Q8A_ROWS;
                    const int R = (int)(M - m0 < Q8A_ROWS ? M - m0 : Q8A_ROWS);
                    const q8a_acts_t a = {acts.hi + m0 * K, acts.lo + m0 * K, acts.d + m0 * groups,
                                          acts.sx + m0 * groups, acts.sq + m0 * groups};
                    q8a_block_rows(R, &a, &w, b, acc);
                    store_block(acc, R, b, N, out + m0 * ldo, ldo);
                }
            }
        }
        free(mem);
        return 0;
    }
#endif
    return triode_quant_matmul(x, ldx, M, codes, bits, scales, offsets, half, group, N, K, out,
                               ldo);
}

/* 1 where triode_quant_matmul_q8a runs on integer dot products (else it is the float kernel). */
int triode_quant_q8a_is_native(void) { return TRIODE_HAS_Q8A; }

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
    const int64_t groups = K / group;
    /* One work item = one block's one group: its scales and offsets are loaded once. */
#pragma omp parallel for schedule(static) collapse(2)
    for (int64_t b = b0; b < b1; b++) {
        for (int64_t g = 0; g < groups; g++) {
            const int64_t at = g * w.ld_scale + b * BLOCK_N;
            const int64_t n0 = b * BLOCK_N;
            const int64_t width = n_end - n0 < BLOCK_N ? n_end - n0 : BLOCK_N;
#if defined(__AVX512F__)
            if (width == BLOCK_N) {
                __m512 s[4], o[4];
                for (int c = 0; c < 4; c++) {
                    s[c] = load_params(scales, half, at + 16 * c);
                    o[c] = offsets ? load_params(offsets, half, at + 16 * c) : _mm512_setzero_ps();
                }
                for (int64_t k = g * group; k < (g + 1) * group; k++) {
                    __m512 v[4];
                    unpack_codes_avx512(codes + (b * K + k) * bytes_per_k, bits, v);
                    uint16_t *dst = out + k * ldo + (n0 - n_start);
                    for (int c = 0; c < 4; c++) {
                        __m512 t = _mm512_mul_ps(v[c], s[c]);
                        if (offsets) t = _mm512_add_ps(t, o[c]);
                        _mm256_storeu_si256((__m256i *)(dst + 16 * c), bf16_of(t));
                    }
                }
                continue;
            }
#endif
            for (int64_t k = g * group; k < (g + 1) * group; k++) {
                float v[BLOCK_N];
                unpack_codes(codes + (b * K + k) * bytes_per_k, bits, v);
                uint16_t *dst = out + k * ldo + (n0 - n_start);
                for (int j = 0; j < width; j++) {
                    float t = param_at(scales, half, at + j) * v[j];
                    if (offsets) t = t + param_at(offsets, half, at + j);
                    dst[j] = bf16_of_float(t);
                }
            }
        }
    }
    return 0;
}
