/* y[M, O] = x[M, I] @ w[O, I]^T (+ bias) with AMX-BF16 tiles: bf16 in and out, fp32 accumulation,
 * on weights packed once (`autodeco_amx_pack_bf16`) into the tiles' layout.
 *
 * A decode step of 1-64 rows does a few multiply-adds per weight, which AMX does far faster than
 * memory delivers the weights; what counts is streaming each weight once per call for all rows.
 * oneDNN's brg_matmul on its prepacked weights read the default model's at ~10 GB/s at 32 rows on
 * a 2-vCPU Xeon, where this kernel reads ~14.5 (2 threads; reports/engine-speed.md, "Our own AMX
 * matmul").
 *
 * The packed layout is [O/16][I/32] tiles of weights (16 pairs of inputs x 16 outputs, each pair
 * interleaved as the dot product wants it), so a thread reads its output blocks front to back as
 * contiguous stripes of 16 outputs, two stripes at a time. Up to 32 rows share each weight tile;
 * more rows take further passes over the stripes, which then come from L2, and past ROW_BLOCK
 * rows the inputs are taken in blocks that stay in L2 (prompts of thousands of tokens).
 *
 * Built at run time with -fopenmp (torch's libgomp, torch's thread count, like gemv_bf16.c). The
 * process must have asked Linux for the tile state first (`autodeco_amx_bf16_init`), and every
 * thread loads its own tile configuration at each call (oneDNN may have loaded another). */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#define PASS_ROWS 32
#define ROW_BLOCK 128
#define BLOCK_ELEMS 512 /* one B tile: 16 rows of 32 bf16 */
#define TILE_BYTES (2 * BLOCK_ELEMS)

typedef struct {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} tile_config;

/* 0 when this process may use the tile registers (asks Linux; asking again is harmless). */
long autodeco_amx_bf16_init(void) {
  return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) ? -1 : 0;
}

long autodeco_amx_packed_elems(long I, long O) { return (O + 15) / 16 * ((I + 31) / 32) * BLOCK_ELEMS; }

/* One tile: out[pair][n][j] = w[o0 + n][k0 + 2 pair + j], zero past O and I. */
static void pack_tile(const uint16_t *w, uint16_t *tile, long I, long O, long o0, long k0) {
  if (o0 + 16 <= O && k0 + 32 <= I) {
    /* a whole tile is a 16 x 16 transpose of input pairs (32-bit words): one gather of the 16
     * rows' pair per output line (at load, the default model's 270 MB took ~0.1 s element by
     * element) */
    const __m512i rows = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                            _mm512_set1_epi32((int)I));
    for (long pair = 0; pair < 16; pair++)
      _mm512_storeu_si512(tile + pair * 32, _mm512_i32gather_epi32(rows, w + o0 * I + k0 + 2 * pair, 2));
    return;
  }
  for (long pair = 0; pair < 16; pair++)
    for (long n = 0; n < 16; n++)
      for (long j = 0; j < 2; j++) {
        long o = o0 + n, k = k0 + 2 * pair + j;
        tile[(pair * 16 + n) * 2 + j] = (o < O && k < I) ? w[o * I + k] : 0;
      }
}

/* w [O, I] -> p [O/16][I/32][16 input pairs][16 outputs][2], zero past O and I. */
long autodeco_amx_pack_bf16(const uint16_t *w, uint16_t *p, long I, long O) {
  long blocks = (O + 15) / 16, depth = (I + 31) / 32;
#pragma omp parallel for
  for (long nb = 0; nb < blocks; nb++)
    for (long kb = 0; kb < depth; kb++) pack_tile(w, p + (nb * depth + kb) * BLOCK_ELEMS, I, O, nb * 16, kb * 32);
  return 0;
}

/* Tiles: accumulators 0-3 for (row group, output block) (0,0) (0,1) (1,0) (1,1); inputs of row
 * groups 0 and 1 in 4 and 5; weights of output blocks 0 and 1 in 6 and 7. Four independent
 * accumulators keep the dot products' latency hidden, and each loaded tile serves two of them. */
static void configure(long rows) {
  tile_config c;
  memset(&c, 0, sizeof c);
  c.palette = 1;
  for (int g = 0; g < 2; g++) {
    long r = rows - 16 * g;
    r = r < 0 ? 0 : (r > 16 ? 16 : r);
    c.rows[2 * g] = c.rows[2 * g + 1] = c.rows[4 + g] = (uint8_t)r;
    c.colsb[2 * g] = c.colsb[2 * g + 1] = c.colsb[4 + g] = r ? 64 : 0;
  }
  c.rows[6] = c.rows[7] = 16;
  c.colsb[6] = c.colsb[7] = 64;
  /* gcc 12's _tile_loadconfig tells the compiler it reads 8 bytes of `c`, so the stores above may be dropped as
   * dead (then the load faults): this says all of `c` is read */
  __asm__ volatile("" : : "r"(&c) : "memory");
  _tile_loadconfig(&c);
}

/* acc[G][N][16][16] = x[16 G rows, depth * 32] @ N stripes of packed weights (the second
 * `depth` tiles after the first); x's rows are `row_bytes` apart. G = N = 2 is `two_by_two`. */
#define STRIPES(G, N)                                                                                 \
  static void stripes_##G##_##N(const uint16_t *x, long row_bytes, const uint16_t *b, long depth, float *acc) { \
    const uint16_t *x1 = x + 16 * row_bytes / 2, *b1 = b + depth * BLOCK_ELEMS;                              \
    _tile_zero(0);                                                                                    \
    if (N > 1) _tile_zero(1);                                                                         \
    if (G > 1) _tile_zero(2);                                                                         \
    for (long kb = 0; kb < depth; kb++) {                                                             \
      _tile_loadd(4, x + kb * 32, row_bytes);                                                            \
      _tile_loadd(6, b + kb * BLOCK_ELEMS, 64);                                                       \
      _tile_dpbf16ps(0, 4, 6);                                                                        \
      if (N > 1) {                                                                                    \
        _tile_loadd(7, b1 + kb * BLOCK_ELEMS, 64);                                                    \
        _tile_dpbf16ps(1, 4, 7);                                                                      \
      }                                                                                               \
      if (G > 1) {                                                                                    \
        _tile_loadd(5, x1 + kb * 32, row_bytes);                                                         \
        _tile_dpbf16ps(2, 5, 6);                                                                      \
      }                                                                                               \
    }                                                                                                 \
    _tile_stored(0, acc, 64);                                                                         \
    if (N > 1) _tile_stored(1, acc + 256, 64);                                                        \
    if (G > 1) _tile_stored(2, acc + 512, 64);                                                        \
  }

STRIPES(1, 1)
STRIPES(1, 2)
STRIPES(2, 1)

/* Two row groups x two stripes (17 rows and more), STRIPES' sums in its order, with each tile reloaded as soon as
 * its last reader has issued. Tile registers are not renamed: a load into a tile waits for the dot products still
 * reading it, and a dot product for its tiles' loads, so STRIPES' loop adds the dot products' time to the
 * stream's (2 threads, the default model's linears: 32 rows ~1.25x the time of one row). A call of 17-32 rows
 * (one pass, so every weight comes from memory) also prefetches the weights 1.5 stripes ahead into L2, where the
 * hardware prefetcher, paced by the stalled loads, falls behind; later passes over stripes already in L2 gained
 * nothing from it (64-512 rows). Bits unchanged; reports/engine-speed.md, "The AMX matmul at 17-32 rows". */
static inline __attribute__((always_inline)) void two_by_two(const uint16_t *x, long row_bytes, const uint16_t *b,
                                                             long depth, float *acc, int prefetch) {
  const uint16_t *x1 = x + 16 * row_bytes / 2, *b1 = b + depth * BLOCK_ELEMS;
  const char *ahead = (const char *)b + depth * TILE_BYTES * 3 / 2; /* a stripe is `depth` tiles */
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, x, row_bytes);
  _tile_loadd(5, x1, row_bytes);
  _tile_loadd(6, b, 64);
  _tile_loadd(7, b1, 64);
  for (long kb = 0; kb < depth; kb++) {
    if (prefetch)
      for (long line = 0; line < 2 * TILE_BYTES; line += 64)
        _mm_prefetch(ahead + 2 * kb * TILE_BYTES + line, _MM_HINT_T1);
    int more = kb + 1 < depth;
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(2, 5, 6);
    if (more) _tile_loadd(6, b + (kb + 1) * BLOCK_ELEMS, 64);
    _tile_dpbf16ps(1, 4, 7);
    if (more) _tile_loadd(4, x + (kb + 1) * 32, row_bytes);
    _tile_dpbf16ps(3, 5, 7);
    if (more) {
      _tile_loadd(5, x1 + (kb + 1) * 32, row_bytes);
      _tile_loadd(7, b1 + (kb + 1) * BLOCK_ELEMS, 64);
    }
  }
  _tile_stored(0, acc, 64);
  _tile_stored(1, acc + 256, 64);
  _tile_stored(2, acc + 512, 64);
  _tile_stored(3, acc + 768, 64);
}

static void stripes_2_2(const uint16_t *x, long row_bytes, const uint16_t *b, long depth, float *acc) {
  two_by_two(x, row_bytes, b, depth, acc, 0);
}

static void stripes_2_2_streaming(const uint16_t *x, long row_bytes, const uint16_t *b, long depth, float *acc) {
  two_by_two(x, row_bytes, b, depth, acc, 1);
}

typedef void (*stripes_fn)(const uint16_t *, long, const uint16_t *, long, float *);
static const stripes_fn KERNELS[2][2] = {{stripes_1_1, stripes_1_2}, {stripes_2_1, stripes_2_2}};

static void store(const float *acc, long rows, const uint16_t *bias, uint16_t *y, long O, long o0) {
  long width = O - o0 < 16 ? O - o0 : 16;
  __mmask16 mask = (__mmask16)((1u << width) - 1);
  __m512 b = _mm512_setzero_ps();
  if (bias) /* bf16 -> fp32: the same bits, 16 places up */
    b = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, bias + o0)), 16));
  for (long r = 0; r < rows; r++) {
    __m256bh v = _mm512_cvtneps_pbh(_mm512_add_ps(_mm512_loadu_ps(acc + r * 16), b));
    _mm256_mask_storeu_epi16(y + r * O + o0, mask, (__m256i)v);
  }
}

/* The same rows as float32, no bias: the sums as the tiles hold them (the heads' first layers, which go on in
 * float32). */
static void store_f32(const float *acc, long rows, float *y, long O, long o0) {
  long width = O - o0 < 16 ? O - o0 : 16;
  __mmask16 mask = (__mmask16)((1u << width) - 1);
  for (long r = 0; r < rows; r++) _mm512_mask_storeu_ps(y + r * O + o0, mask, _mm512_loadu_ps(acc + r * 16));
}

/* output blocks [nb0, nb1), two at a time, for all M rows: blocks of ROW_BLOCK rows, each in
 * passes of at most PASS_ROWS (as even as they can be, so most calls configure the tiles once);
 * x has `stride` bf16 per row; the output goes to y (bf16, + bias) or, with y32, to y32 (float32) */
static void blocks(const uint16_t *x, long stride, const uint16_t *p, const uint16_t *bias, uint16_t *y, float *y32,
                   long M, long depth, long O, long nb0, long nb1) {
  float acc[4 * 256] __attribute__((aligned(64)));
  long block = M < ROW_BLOCK ? M : ROW_BLOCK, passes = (block + PASS_ROWS - 1) / PASS_ROWS;
  long per_pass = (block + passes - 1) / passes, configured = -1;
  for (long r0 = 0; r0 < M; r0 += ROW_BLOCK) {
    long r1 = r0 + ROW_BLOCK < M ? r0 + ROW_BLOCK : M;
    for (long nb = nb0; nb < nb1; nb += 2) {
      long n = nb + 1 < nb1 ? 2 : 1;
      for (long m0 = r0; m0 < r1; m0 += per_pass) {
        long rows = r1 - m0 < per_pass ? r1 - m0 : per_pass, groups = (rows + 15) / 16;
        if (rows != configured) configure(configured = rows);
        stripes_fn kernel = passes == 1 && groups == 2 && n == 2 ? stripes_2_2_streaming : KERNELS[groups - 1][n - 1];
        kernel(x + m0 * stride, stride * 2, p + nb * depth * BLOCK_ELEMS, depth, acc);
        for (long g = 0; g < groups; g++) {
          long r = rows - 16 * g < 16 ? rows - 16 * g : 16;
          for (long j = 0; j < n; j++) {
            if (y32)
              store_f32(acc + (g * 2 + j) * 256, r, y32 + (m0 + 16 * g) * O, O, (nb + j) * 16);
            else
              store(acc + (g * 2 + j) * 256, r, bias, y + (m0 + 16 * g) * O, O, (nb + j) * 16);
          }
        }
      }
    }
  }
  _tile_release();
}

/* Returns 0, or -1 when scratch memory for a padded input could not be had. */
static int matmul(const uint16_t *x, const uint16_t *p, const uint16_t *bias, uint16_t *y, float *y32, long M, long I,
                  long O) {
  long depth = (I + 31) / 32, stride = depth * 32, nblocks = (O + 15) / 16;
  uint16_t *padded = NULL;
  if (stride != I) { /* the last input tile would read past each row: zero-pad a copy */
    padded = calloc((size_t)(M * stride), 2);
    if (!padded) return -1;
    for (long m = 0; m < M; m++) memcpy(padded + m * stride, x + m * I, (size_t)I * 2);
    x = padded;
  }
  int threads = omp_get_max_threads();
  if (threads > nblocks) threads = (int)nblocks;
  if (threads <= 1 || O * I < (1L << 16)) {
    blocks(x, stride, p, bias, y, y32, M, depth, O, 0, nblocks);
  } else {
#pragma omp parallel num_threads(threads)
    {
      long t = omp_get_thread_num(), n = omp_get_num_threads();
      long nb0 = nblocks * t / n, nb1 = nblocks * (t + 1) / n;
      if (nb0 < nb1) blocks(x, stride, p, bias, y, y32, M, depth, O, nb0, nb1);
    }
  }
  free(padded);
  return 0;
}

int autodeco_amx_matmul_bf16(const uint16_t *x, const uint16_t *p, const uint16_t *bias, uint16_t *y, long M,
                             long I, long O) {
  return matmul(x, p, bias, y, NULL, M, I, O);
}

/* y[M, O] = x @ w^T in float32 (no bias, no rounding to bf16): each sum as the tiles accumulate it, in the order
 * the bf16 output's is. A helper (`autodeco_amx_matmul_f32`), handed to the heads' step kernel as a function. */
long autodeco_amx_matmul_f32(const uint16_t *x, const uint16_t *p, float *y, long M, long I, long O) {
  return matmul(x, p, NULL, NULL, y, M, I, O);
}
