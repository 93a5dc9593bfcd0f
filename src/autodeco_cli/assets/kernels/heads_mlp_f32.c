/* One AutoDeco head at a decode step, for a batch of rows: value = sigmoid(w2 . relu(W1 x + b1) + b2) * scale,
 * where x is the row's last hidden state (bf16 or float32), followed for the top-p head by its T̂ and its
 * distribution features. Float32 weights, as torch's nn.Linear holds them ([out, in], row-major).
 *
 * Why not torch's linears: at one to a few rows, right after the model's forward has pushed everything out of
 * the caches, each of the heads' dozen small torch ops (the hidden state's conversion, two matmuls per head,
 * relu, sigmoid, the concatenation of the top-p head's input) costs 10-70 us, and the first matmul reads its
 * 0.6 MB of weights on one core (reports/engine-speed.md). Here a head is one call: both cores read half the
 * first layer's weights each, and nothing else touches memory.
 *
 * Every dot product runs in one fixed order, whatever the batch or the thread count: 16 lanes (element k
 * into lane k % 16, the tail masked), fused multiply-adds, the lanes added as a fixed tree, then the bias. So a
 * row's value does not depend on its batch-mates. It is not torch's order (MKL's sums are blocked otherwise),
 * so values differ from `forward`'s in the last bits; the caller only takes this path where the hidden state
 * is already bf16-rounded, which moves them far more.
 *
 * Built by autodeco_cli/core/cpu_kernels.py with -fopenmp (torch's libgomp and thread count). */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 16
#define UNITS 32 /* hidden units per task: a task's weights (UNITS rows of W1) stay in L1/L2 across its rows */
#define GROUP 4  /* rows per task: each weight vector loaded once for them */

/* The lanes added as a fixed tree (the compiler's expansion of the reduction: halves, then quarters, ...),
 * the same for every row and call of this build. */
static inline float lanes_sum(__m512 acc) { return _mm512_reduce_add_ps(acc); }

/* out[g] = w . x[g] for GROUP rows (x[g] may repeat: each row's sum uses only its own lanes). */
static void dots(const float *w, const float *const x[GROUP], long n, float out[GROUP]) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  long k = 0;
  for (; k + LANES <= n; k += LANES) {
    __m512 v = _mm512_loadu_ps(w + k);
    a0 = _mm512_fmadd_ps(v, _mm512_loadu_ps(x[0] + k), a0);
    a1 = _mm512_fmadd_ps(v, _mm512_loadu_ps(x[1] + k), a1);
    a2 = _mm512_fmadd_ps(v, _mm512_loadu_ps(x[2] + k), a2);
    a3 = _mm512_fmadd_ps(v, _mm512_loadu_ps(x[3] + k), a3);
  }
  if (k < n) {
    __mmask16 m = (__mmask16)((1u << (n - k)) - 1u);
    __m512 v = _mm512_maskz_loadu_ps(m, w + k);
    a0 = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(m, x[0] + k), a0);
    a1 = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(m, x[1] + k), a1);
    a2 = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(m, x[2] + k), a2);
    a3 = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(m, x[3] + k), a3);
  }
  out[0] = lanes_sum(a0);
  out[1] = lanes_sum(a1);
  out[2] = lanes_sum(a2);
  out[3] = lanes_sum(a3);
}

static void input_row(const void *hidden, long bf16, const float *temperature, const float *features, long n_features,
                      long r, long in, float *x) {
  if (bf16) {
    const uint16_t *h = (const uint16_t *)hidden + r * in;
    for (long k = 0; k < in; k++) {
      uint32_t bits = (uint32_t)h[k] << 16; /* bf16 -> float32 is exact: the high half of the bits */
      memcpy(x + k, &bits, 4);
    }
  } else {
    memcpy(x, (const float *)hidden + r * in, sizeof(float) * in);
  }
  long k = in;
  if (temperature) x[k++] = temperature[r];
  for (long f = 0; f < n_features; f++) x[k++] = features[r * n_features + f];
}

/* hidden: [rows, in] (bf16 when hidden_bf16, else float32); temperature: [rows] or NULL (the T̂ head);
 * features: [rows, n_features] (n_features 0: none); w1: [width, in + extras], b1: [width]; w2: [width],
 * b2: [1]; out: [rows]. Returns 0, or -1 when out of memory. */
int autodeco_heads_mlp_f32(const void *hidden, long hidden_bf16, const float *temperature, const float *features,
                           long n_features, const float *w1, const float *b1, const float *w2, const float *b2,
                           float scale, float *out, long rows, long in, long width) {
  long n = in + (temperature ? 1 : 0) + n_features;
  float *x = malloc(sizeof(float) * (rows * n + rows * width));
  if (!x) return -1;
  float *h = x + rows * n;
  long groups = (rows + GROUP - 1) / GROUP, chunks = (width + UNITS - 1) / UNITS;
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (long r = 0; r < rows; r++) input_row(hidden, hidden_bf16, temperature, features, n_features, r, in, x + r * n);
    /* tasks by chunk first: each thread reads its own share of W1 */
#pragma omp for schedule(static)
    for (long task = 0; task < chunks * groups; task++) {
      long chunk = task / groups, first = (task % groups) * GROUP;
      const float *rows_x[GROUP];
      for (int g = 0; g < GROUP; g++) rows_x[g] = x + (first + g < rows ? first + g : first) * n;
      long end = (chunk + 1) * UNITS < width ? (chunk + 1) * UNITS : width;
      for (long j = chunk * UNITS; j < end; j++) {
        float d[GROUP];
        dots(w1 + j * n, rows_x, n, d);
        for (int g = 0; g < GROUP && first + g < rows; g++) {
          float v = d[g] + b1[j];
          h[(first + g) * width + j] = v > 0.0f ? v : 0.0f;
        }
      }
    }
#pragma omp for schedule(static)
    for (long first = 0; first < rows; first += GROUP) {
      const float *rows_h[GROUP];
      for (int g = 0; g < GROUP; g++) rows_h[g] = h + (first + g < rows ? first + g : first) * width;
      float d[GROUP];
      dots(w2, rows_h, width, d);
      for (int g = 0; g < GROUP && first + g < rows; g++) out[first + g] = 1.0f / (1.0f + expf(-(d[g] + b2[0]))) * scale;
    }
  }
  free(x);
  return 0;
}
