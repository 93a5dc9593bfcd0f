/* y[M, O] = x[M, I] @ w[O, I]^T for 1 <= M <= 8 rows: bf16 in and out, fp32 accumulation.
 *
 * A decode step of one or a few rows reads every weight once and does almost no arithmetic
 * with it, so its speed is how fast the weights stream from memory. oneDNN's bf16 kernels (and
 * its prepacked layout) reached ~11 GB/s on one core of the AVX512-BF16 CPU we measured, half of
 * what a plain sequential read gets. Reading each weight row front to back, once for all M
 * inputs, with two independent accumulator chains per input, streams at the read rate.
 *
 * Built at run time by autodeco_cli/cpu_gemv.py with -fopenmp: torch's own libgomp is already
 * loaded (same soname), so the kernel shares torch's OpenMP threads and thread count. */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

static inline uint16_t to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN */
  u += 0x7fff + ((u >> 16) & 1);                                             /* round to nearest even */
  return (uint16_t)(u >> 16);
}

#define LOAD(p) ((__m512bh)_mm512_loadu_si512((const void *)(p)))
#define LOAD_TAIL(mask, p) ((__m512bh)_mm512_maskz_loadu_epi16((mask), (const void *)(p)))

#define ROWS_KERNEL(M)                                                                          \
  static void rows_##M(const uint16_t *x, const uint16_t *w, uint16_t *y, long I, long O,       \
                       long o0, long o1) {                                                      \
    long blocks = I / 32, rem = I % 32;                                                         \
    __mmask32 tail = rem ? (((__mmask32)1 << rem) - 1) : 0;                                     \
    for (long o = o0; o < o1; o++) {                                                            \
      const uint16_t *row = w + o * I;                                                          \
      __m512 a[M], b[M];                                                                        \
      for (int m = 0; m < M; m++) a[m] = b[m] = _mm512_setzero_ps();                            \
      long k = 0;                                                                               \
      for (; k + 2 <= blocks; k += 2) {                                                         \
        __m512bh w0 = LOAD(row + k * 32), w1 = LOAD(row + k * 32 + 32);                         \
        for (int m = 0; m < M; m++) {                                                           \
          a[m] = _mm512_dpbf16_ps(a[m], w0, LOAD(x + m * I + k * 32));                          \
          b[m] = _mm512_dpbf16_ps(b[m], w1, LOAD(x + m * I + k * 32 + 32));                     \
        }                                                                                       \
      }                                                                                         \
      for (; k < blocks; k++) {                                                                 \
        __m512bh w0 = LOAD(row + k * 32);                                                       \
        for (int m = 0; m < M; m++) a[m] = _mm512_dpbf16_ps(a[m], w0, LOAD(x + m * I + k * 32)); \
      }                                                                                         \
      if (rem) {                                                                                \
        __m512bh w0 = LOAD_TAIL(tail, row + blocks * 32);                                       \
        for (int m = 0; m < M; m++)                                                             \
          a[m] = _mm512_dpbf16_ps(a[m], w0, LOAD_TAIL(tail, x + m * I + blocks * 32));           \
      }                                                                                         \
      for (int m = 0; m < M; m++) y[m * O + o] = to_bf16(_mm512_reduce_add_ps(_mm512_add_ps(a[m], b[m]))); \
    }                                                                                           \
  }

ROWS_KERNEL(1)
ROWS_KERNEL(2)
ROWS_KERNEL(3)
ROWS_KERNEL(4)
ROWS_KERNEL(5)
ROWS_KERNEL(6)
ROWS_KERNEL(7)
ROWS_KERNEL(8)

typedef void (*rows_fn)(const uint16_t *, const uint16_t *, uint16_t *, long, long, long, long);
static const rows_fn KERNELS[9] = {0, rows_1, rows_2, rows_3, rows_4, rows_5, rows_6, rows_7, rows_8};

/* Returns 0, or -1 when M is out of range (the caller then uses torch). */
int autodeco_gemv_bf16(const uint16_t *x, const uint16_t *w, uint16_t *y, long M, long I, long O) {
  if (M < 1 || M > 8) return -1;
  rows_fn f = KERNELS[M];
  int threads = omp_get_max_threads();
  /* below ~0.5 MB of weights a parallel region costs more than it saves */
  if (threads <= 1 || O * I < (1L << 18)) {
    f(x, w, y, I, O, 0, O);
    return 0;
  }
#pragma omp parallel num_threads(threads)
  {
    long t = omp_get_thread_num(), n = omp_get_num_threads();
    long chunk = (O + n - 1) / n, o0 = t * chunk, o1 = o0 + chunk < O ? o0 + chunk : O;
    if (o0 < o1) f(x, w, y, I, O, o0, o1);
  }
  return 0;
}
