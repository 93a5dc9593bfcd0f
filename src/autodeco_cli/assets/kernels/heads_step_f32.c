/* The AutoDeco heads at a decode step, for a batch of rows, in one call: T̂ from the temperature head, the
 * top-p head's distribution features of softmax(logits / T̂) (through the learned-step kernel, whose function
 * the caller hands over), then P̂ from the top-p head. Each head is an MLP on float32 weights as torch's
 * nn.Linear holds them ([out, in], row-major): value = sigmoid(w2 . relu(W1 x + b1) + b2) * scale, where x is
 * the row's last hidden state (bf16 or float32), followed for the top-p head by T̂ and the features.
 *
 * Why not torch's ops: at one to a few rows, right after the model's forward has pushed everything out of
 * the caches, each of the heads' dozen small torch ops (the hidden state's conversion, two matmuls per head,
 * relu, sigmoid, the clamp, the concatenations) and each Python call between them costs 5-70 us, and torch's
 * first matmul reads its 0.6 MB of weights on one core (reports/engine-speed.md). Here both cores read half
 * of each first layer's weights, and nothing else runs between the heads.
 *
 * Every dot product runs in one fixed order, whatever the batch or the thread count: 16 lanes (element k
 * into lane k % 16, the tail masked), fused multiply-adds, the lanes added as a fixed tree, then the bias. So a
 * row's values do not depend on its batch-mates. It is not torch's order (MKL's sums are blocked otherwise),
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

/* Row r of the hidden state as float32 into x (bf16 -> float32 is exact: the high half of the bits). */
static void hidden_row(const void *hidden, long bf16, long r, long in, float *x) {
  if (!bf16) {
    memcpy(x, (const float *)hidden + r * in, sizeof(float) * in);
    return;
  }
  const uint16_t *h = (const uint16_t *)hidden + r * in;
  for (long k = 0; k < in; k++) {
    uint32_t bits = (uint32_t)h[k] << 16;
    memcpy(x + k, &bits, 4);
  }
}

/* One head: out[r] = its value for row r, whose input is x[r * stride .. r * stride + n).
 * w1: [width, n], b1: [width]; w2: [width], b2: [1]. Returns 0, or -1 when out of memory. */
static int mlp(const float *x, long stride, long n, const float *w1, const float *b1, const float *w2,
               const float *b2, float scale, float *out, long rows, long width) {
  float *h = malloc(sizeof(float) * rows * width);
  if (!h) return -1;
  long groups = (rows + GROUP - 1) / GROUP, chunks = (width + UNITS - 1) / UNITS;
#pragma omp parallel
  {
    /* tasks by chunk first: each thread reads its own share of W1 */
#pragma omp for schedule(static)
    for (long task = 0; task < chunks * groups; task++) {
      long chunk = task / groups, first = (task % groups) * GROUP;
      const float *rows_x[GROUP];
      for (int g = 0; g < GROUP; g++) rows_x[g] = x + (first + g < rows ? first + g : first) * stride;
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
      for (int g = 0; g < GROUP && first + g < rows; g++)
        out[first + g] = 1.0f / (1.0f + expf(-(d[g] + b2[0]))) * scale;
    }
  }
  free(h);
  return 0;
}

typedef int (*learned_step_t)(long mode, const float *raw, const float *temperature, const float *top_p, float *out,
                              long rows, long n, long candidates);

/* out: [rows, 2], each row's (T̂, P̂). logits: [rows, vocab] float32. features: the learned-step kernel (mode 0
 * gives [rows, 4] features at the T̂'s clamped to min_temperature), or NULL for heads without features.
 * t_*: the temperature head's layers (T̂ = its value x t_scale), p_*: the top-p head's (input width in + 5, or
 * in + 1 without features). Returns 0; -1 when out of memory; the learned-step kernel's -2 when a row of
 * logits holds NaN or +inf or no finite value (the caller then takes torch's path). */
int autodeco_heads_step_f32(const void *hidden, long hidden_bf16, const float *logits, long vocab,
                            learned_step_t features, float min_temperature, const float *t_w1, const float *t_b1,
                            const float *t_w2, const float *t_b2, float t_scale, const float *p_w1,
                            const float *p_b1, const float *p_w2, const float *p_b2, float *out, long rows, long in,
                            long width) {
  /* each row's top-p head input [hidden, T̂, features]: the temperature head reads its first `in` values */
  long extras = 1 + (features ? 4 : 0), stride = in + extras;
  float *x = malloc(sizeof(float) * rows * (stride + 7));
  if (!x) return -1;
  float *t = x + rows * stride, *clamped = t + rows, *p = clamped + rows, *f = p + rows;
  int threads = rows > 1 ? omp_get_max_threads() : 1;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long r = 0; r < rows; r++) hidden_row(hidden, hidden_bf16, r, in, x + r * stride);
  int status = mlp(x, stride, in, t_w1, t_b1, t_w2, t_b2, t_scale, t, rows, width);
  if (!status && features) {
    for (long r = 0; r < rows; r++) clamped[r] = t[r] < min_temperature ? min_temperature : t[r];
    status = features(0, logits, clamped, NULL, f, rows, vocab, 0);
  }
  for (long r = 0; !status && r < rows; r++) {
    x[r * stride + in] = t[r];
    for (long k = 1; k < extras; k++) x[r * stride + in + k] = f[r * 4 + k - 1];
  }
  if (!status) status = mlp(x, stride, stride, p_w1, p_b1, p_w2, p_b2, 1.0f, p, rows, width);
  for (long r = 0; !status && r < rows; r++) {
    out[2 * r] = t[r];
    out[2 * r + 1] = p[r];
  }
  free(x);
  return status;
}
