/*
 * Quantized matmul on AMX tiles for steps of more than a few rows: out[M, N] = x[M, K] @ W^T
 * with W in quant_matmul.c's layout. Compiled by kernels/cpu_quant_tiles.py (kernels.cpu_build).
 *
 * Why: the direct kernel (quant_matmul.c) multiplies in float32 FMAs, so its cost grows with
 * every row; the dense path de-quantizes the whole matrix into a bf16 scratch in memory and
 * then runs a GEMM over it. Here each thread de-quantizes one 64-column block at a time into
 * a small bf16 panel (in AMX's pair-interleaved layout; it stays in L1/L2) and multiplies it
 * with every row of x on AMX tiles (TDPBF16PS: 16 x 16 x 32 multiply-adds per instruction), so
 * the weights are decoded once per call whatever the row count, and never written to memory.
 *
 * Numbers: the dense path's roundings. Each weight is rounded once to bf16 from float32
 * `scale * code` (+ `offset`, rounded again, as gguf computes it); x is rounded to bf16;
 * products are summed in float32, and (unlike the dense GEMM) the sums are not rounded to bf16.
 *
 * NOTE: up to ~16 rows the time is the de-quantization (measured: ~80% at 8 rows; the multiply
 * and add per weight ~20% of it, the pair interleave ~15%). Multiplying the codes themselves
 * (exact small integers in bf16) and applying scales to each group's sums would decode ~3x
 * cheaper but round differently from the dense path; not done yet.
 *
 * Without AMX-BF16 (or off Linux) this file compiles to stubs that report "unavailable" and
 * the caller keeps the other kernels. On Linux a process must ask the kernel for AMX state
 * before its first tile instruction (arch_prctl ARCH_REQ_XCOMP_PERM): `triode_tiles_init`.
 */
#if defined(__linux__)
#define _GNU_SOURCE
#endif
#include "quant_blocks.h"

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && defined(__linux__)
#define HAVE_TILES 1
#include <sys/syscall.h>
#include <unistd.h>
#endif

#define TILE_ROWS 16 /* rows of x per tile; k pairs per weight tile */
#define TILE_K 32    /* bf16 values per tile row */

#if defined(HAVE_TILES)
#define ARCH_GET_XCOMP_PERM 0x1022
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

typedef struct {
    uint8_t palette;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((aligned(64))) tile_config_t;

/*
 * Tiles 0-3: out (rows x 16 floats); 4: x (rows x 32 bf16); 5-7: weights (16 pairs x 16
 * columns). With whole tiles of 16 rows (rows == 16), tile 5 holds a second tile of x instead.
 */
static void configure(int rows) {
    tile_config_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.palette = 1;
    for (int t = 0; t < 5; t++) {
        cfg.rows[t] = (uint8_t)rows;
        cfg.colsb[t] = 64;
    }
    for (int t = 5; t < 8; t++) {
        cfg.rows[t] = TILE_ROWS;
        cfg.colsb[t] = 64;
    }
    _tile_loadconfig(&cfg);
}

/*
 * De-quantize block b (64 columns) into `panel`: four [K/2][16][2] bf16 matrices (columns
 * 16t..16t+15), row k/2 holding (W[n, k], W[n, k+1]) for each of the 16 columns.
 */
/* NOTE: each thread reads its blocks' codes as one stream; asking for each line this far ahead
   made a 16-row decode step of the bundled model 1.11x faster (median of alternations in one
   process, 2 cores). Prefetches never fault: reading past the last block is harmless. */
#define PREFETCH_BYTES 4096

static void decode_panel(const weight_t *w, int64_t b, uint16_t *panel) {
    const int64_t bytes_per_k = w->bits == 4 ? 32 : 64;
    const int64_t half_k = w->K / 2;
    const uint8_t *p = w->codes + b * w->K * bytes_per_k;
    /* idx_lo interleaves columns 0..15 of two rows of 32 bf16; idx_hi columns 16..31. */
    uint16_t lo[32], hi[32];
    for (int i = 0; i < 16; i++) {
        lo[2 * i] = (uint16_t)i;
        lo[2 * i + 1] = (uint16_t)(32 + i);
        hi[2 * i] = (uint16_t)(16 + i);
        hi[2 * i + 1] = (uint16_t)(48 + i);
    }
    const __m512i idx_lo = _mm512_loadu_si512(lo), idx_hi = _mm512_loadu_si512(hi);
    int64_t g_loaded = -1; /* the group whose scales and offsets are in s, o */
    __m512 s[4], o[4];
    for (int c = 0; c < 4; c++) s[c] = o[c] = _mm512_setzero_ps();
    for (int64_t kp = 0; kp < half_k; kp++) {
        __m512i rows[2][2]; /* [k, k+1][columns 0..31, 32..63] as bf16 */
        for (int j = 0; j < 2; j++) {
            const int64_t k = 2 * kp + j;
            if (k / w->group != g_loaded) {
                g_loaded = k / w->group;
                const int64_t at = g_loaded * w->ld_scale + b * BLOCK_N;
                for (int c = 0; c < 4; c++) {
                    s[c] = load_params(w->scales, w->half, at + 16 * c);
                    o[c] = w->offsets ? load_params(w->offsets, w->half, at + 16 * c)
                                      : _mm512_setzero_ps();
                }
            }
            __m512 v[4];
            const uint8_t *codes_k = p + k * bytes_per_k;
            if (!((uintptr_t)codes_k & 63)) /* see PREFETCH_BYTES */
                _mm_prefetch((const char *)codes_k + PREFETCH_BYTES, _MM_HINT_T0);
            unpack_codes_avx512(codes_k, w->bits, v);
            for (int c = 0; c < 4; c++) {
                v[c] = _mm512_mul_ps(v[c], s[c]);
                if (w->offsets) v[c] = _mm512_add_ps(v[c], o[c]);
            }
            /* cvtne2ps_pbh(a, b): b's values in the low half, a's in the high half. */
            rows[j][0] = (__m512i)_mm512_cvtne2ps_pbh(v[1], v[0]);
            rows[j][1] = (__m512i)_mm512_cvtne2ps_pbh(v[3], v[2]);
        }
        for (int h = 0; h < 2; h++) {
            uint16_t *dst = panel + (2 * h * half_k + kp) * TILE_K;
            _mm512_storeu_si512(dst, _mm512_permutex2var_epi16(rows[0][h], idx_lo, rows[1][h]));
            _mm512_storeu_si512(dst + half_k * TILE_K,
                                _mm512_permutex2var_epi16(rows[0][h], idx_hi, rows[1][h]));
        }
    }
}

/* Tile t into out rows [r0, r0 + valid) x columns [c0, c0 + 16) (via `spill` at the edges). */
#define STORE_TILE(t, r0, valid, c0)                                                       \
    do {                                                                                   \
        if ((c0) < N && (valid) > 0) {                                                     \
            if ((valid) == TILE_ROWS && (c0) + 16 <= N) {                                  \
                _tile_stored(t, out + (r0) * ldo + (c0), ldo * (int64_t)sizeof(float));    \
            } else {                                                                       \
                _tile_stored(t, spill, 16 * sizeof(float));                                \
                const int64_t cols = N - (c0) < 16 ? N - (c0) : 16;                        \
                for (int r = 0; r < (valid); r++)                                          \
                    memcpy(out + ((r0) + r) * ldo + (c0), spill + 16 * r, sizeof(float) * cols); \
            }                                                                              \
        }                                                                                  \
    } while (0)

static inline int rows_left(int64_t M, int64_t m0) {
    return M - m0 <= 0 ? 0 : (int)(M - m0 < TILE_ROWS ? M - m0 : TILE_ROWS);
}

static __thread uint16_t *panel_buffer;
static __thread int64_t panel_capacity;

static uint16_t *thread_panel(int64_t K) {
    const int64_t need = 64 * K; /* 64 columns x K bf16 */
    if (panel_capacity < need) {
        free(panel_buffer);
        panel_buffer = (uint16_t *)aligned_alloc(64, sizeof(uint16_t) * need);
        panel_capacity = panel_buffer ? need : 0;
    }
    return panel_buffer;
}
#endif /* HAVE_TILES */

/* 0 when this build has the tile kernel and the OS lets this process use AMX tiles. */
int triode_tiles_init(void) {
#if defined(HAVE_TILES)
    unsigned long features = 0;
    if (syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &features) == 0 &&
        (features & (1UL << XFEATURE_XTILEDATA)))
        return 0;
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) return -2;
    return 0;
#else
    return -3;
#endif
}

/*
 * out[m, n] (row stride ldo) = sum_k x[m, k] W[n, k] for m < M, n < N, in bf16 x bf16 -> float32
 * (see the top of the file). K must be a multiple of 32. Returns 0, or a negative code.
 */
int triode_quant_matmul_tiles(const float *x, int64_t ldx, int64_t M, const uint8_t *codes,
                              int bits, const void *scales, const void *offsets, int half,
                              int group, int64_t N, int64_t K, float *out, int64_t ldo) {
#if defined(HAVE_TILES)
    const int64_t n_blocks = (N + BLOCK_N - 1) / BLOCK_N;
    const weight_t w = {codes, scales, offsets, bits, half, group, N, K, n_blocks * BLOCK_N};
    if (check(&w) || M <= 0 || K % TILE_K) return -1;
    /* Up to 16 rows: one tile of M rows. More: pairs of 16-row tiles (x padded with zeros). */
    const int rows = M < TILE_ROWS ? (int)M : TILE_ROWS;
    const int64_t m_pad = M <= TILE_ROWS ? M : (M + 2 * TILE_ROWS - 1) / (2 * TILE_ROWS) * (2 * TILE_ROWS);
    /* x as bf16, zero rows up to a whole number of tiles */
    uint16_t *xb = (uint16_t *)aligned_alloc(64, sizeof(uint16_t) * m_pad * K);
    if (!xb) return -2;
    for (int64_t m = 0; m < m_pad; m++) {
        uint16_t *dst = xb + m * K;
        if (m >= M) {
            memset(dst, 0, sizeof(uint16_t) * K);
            continue;
        }
        for (int64_t k = 0; k < K; k += 16)
            _mm256_storeu_si256((__m256i *)(dst + k),
                                (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + m * ldx + k)));
    }
    const int64_t half_k = K / 2, ldxb = K * (int64_t)sizeof(uint16_t);
    int status = 0;
#pragma omp parallel
    {
        uint16_t *panel = thread_panel(K);
        float spill[TILE_ROWS * 16];
        if (panel) {
            configure(rows);
        } else {
#pragma omp atomic write
            status = -2;
        }
#pragma omp for schedule(static)
        for (int64_t b = 0; b < n_blocks; b++) {
            if (!panel) continue;
            decode_panel(&w, b, panel);
            const int64_t n0 = b * BLOCK_N;
            if (M <= TILE_ROWS) { /* one tile of rows against the four column tiles */
                _tile_zero(0);
                _tile_zero(1);
                _tile_zero(2);
                _tile_zero(3);
                for (int64_t kc = 0; kc < half_k; kc += TILE_ROWS) {
                    const uint16_t *pk = panel + kc * TILE_K;
                    _tile_loadd(4, xb + 2 * kc, ldxb);
                    _tile_loadd(5, pk, 64);
                    _tile_loadd(6, pk + half_k * TILE_K, 64);
                    _tile_loadd(7, pk + 2 * half_k * TILE_K, 64);
                    _tile_dpbf16ps(0, 4, 5);
                    _tile_loadd(5, pk + 3 * half_k * TILE_K, 64);
                    _tile_dpbf16ps(1, 4, 6);
                    _tile_dpbf16ps(2, 4, 7);
                    _tile_dpbf16ps(3, 4, 5);
                }
                STORE_TILE(0, 0, rows, n0);
                STORE_TILE(1, 0, rows, n0 + 16);
                STORE_TILE(2, 0, rows, n0 + 32);
                STORE_TILE(3, 0, rows, n0 + 48);
                continue;
            }
            /* 32 rows x 32 columns per pass: two tiles of x, two of weights, four sums. */
            for (int64_t m0 = 0; m0 < M; m0 += 2 * TILE_ROWS) {
                for (int h = 0; h < 2; h++) {
                    const uint16_t *ph = panel + 2 * h * half_k * TILE_K;
                    _tile_zero(0);
                    _tile_zero(1);
                    _tile_zero(2);
                    _tile_zero(3);
                    for (int64_t kc = 0; kc < half_k; kc += TILE_ROWS) {
                        const uint16_t *pk = ph + kc * TILE_K;
                        _tile_loadd(4, xb + m0 * K + 2 * kc, ldxb);
                        _tile_loadd(5, xb + (m0 + TILE_ROWS) * K + 2 * kc, ldxb);
                        _tile_loadd(6, pk, 64);
                        _tile_loadd(7, pk + half_k * TILE_K, 64);
                        _tile_dpbf16ps(0, 4, 6);
                        _tile_dpbf16ps(1, 4, 7);
                        _tile_dpbf16ps(2, 5, 6);
                        _tile_dpbf16ps(3, 5, 7);
                    }
                    const int64_t c0 = n0 + 32 * h;
                    const int top = rows_left(M, m0), bottom = rows_left(M, m0 + TILE_ROWS);
                    STORE_TILE(0, m0, top, c0);
                    STORE_TILE(1, m0, top, c0 + 16);
                    STORE_TILE(2, m0 + TILE_ROWS, bottom, c0);
                    STORE_TILE(3, m0 + TILE_ROWS, bottom, c0 + 16);
                }
            }
        }
        if (panel) _tile_release();
    }
    free(xb);
    return status;
#else
    (void)x, (void)ldx, (void)M, (void)codes, (void)bits, (void)scales, (void)offsets;
    (void)half, (void)group, (void)N, (void)K, (void)out, (void)ldo;
    return -3;
#endif
}
