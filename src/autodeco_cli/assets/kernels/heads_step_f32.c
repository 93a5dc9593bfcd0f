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
 * On CPUs with AMX (the caller hands over `autodeco_amx_matmul_f32`) both heads' first layers take a bf16 hidden
 * state's part of their sums on AMX tiles, each float32 weight packed as the sum of two bf16 (its high and next 8
 * significant bits, within 2^-17 of it; the caller packs them): the same 1.2 MB read, and none of the float32
 * multiply-adds that held both MLPs at 176 us for 32 rows, warm (56 us on tiles; 2-vCPU Xeon, reports/engine-speed.md).
 * The tiles' sums run in one order per row whatever the batch, as above, and the top-p head's further inputs
 * (T̂ and the features, float32) are added to them in order, then the bias.
 *
 * Built by autodeco_cli/core/cpu_kernels.py with -fopenmp (torch's libgomp and thread count). */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lanes16.h"

#define LANES 16
#define UNITS 32 /* hidden units per task: a task's weights (UNITS rows of W1) stay in L1/L2 across its rows */
#define GROUP 4  /* rows per task: each weight vector loaded once for them */

/* The lanes added as a fixed tree (the compiler's expansion of the reduction: halves, then quarters, ...),
 * the same for every row and call of this build. */
static inline float lanes_sum(f32x16 acc) { return v16_reduce_add(acc); }

/* out[g] = w . x[g] for GROUP rows (x[g] may repeat: each row's sum uses only its own lanes). */
static void dots(const float *w, const float *const x[GROUP], long n, float out[GROUP]) {
  f32x16 a0 = v16_zero(), a1 = a0, a2 = a0, a3 = a0;
  long k = 0;
  for (; k + LANES <= n; k += LANES) {
    f32x16 v = v16_load(w + k);
    a0 = v16_fmadd(v, v16_load(x[0] + k), a0);
    a1 = v16_fmadd(v, v16_load(x[1] + k), a1);
    a2 = v16_fmadd(v, v16_load(x[2] + k), a2);
    a3 = v16_fmadd(v, v16_load(x[3] + k), a3);
  }
  if (k < n) {
    mask16 m = (mask16)((1u << (n - k)) - 1u);
    f32x16 v = v16_maskz_load(m, w + k);
    a0 = v16_fmadd(v, v16_maskz_load(m, x[0] + k), a0);
    a1 = v16_fmadd(v, v16_maskz_load(m, x[1] + k), a1);
    a2 = v16_fmadd(v, v16_maskz_load(m, x[2] + k), a2);
    a3 = v16_fmadd(v, v16_maskz_load(m, x[3] + k), a3);
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

typedef struct {
  const float *w1, *b1, *w2, *b2; /* w1: [width, n], b1: [width]; w2: [width], b2: [1] */
  float scale;
} head_t;

/* hidden[r * width + j] = relu(W1[j] . x_r + b1[j]) for the `rows` rows, x_r = x[r * stride .. r * stride + n);
 * with `done` (from AMX tiles): that sum over x_r's first `in` values is done[r * done_stride + j], the rest added
 * to it in order. */
static void first_layer(const float *x, long stride, long n, const float *done, long done_stride, long in,
                        const head_t *head, float *hidden, long rows, long width) {
  if (done) {
#pragma omp for schedule(static)
    for (long r = 0; r < rows; r++)
      for (long j = 0; j < width; j++) {
        float v = done[r * done_stride + j];
        for (long k = in; k < n; k++) v = fmaf(head->w1[j * n + k], x[r * stride + k], v);
        v += head->b1[j];
        hidden[r * width + j] = v > 0.0f ? v : 0.0f;
      }
    return;
  }
  long groups = (rows + GROUP - 1) / GROUP, chunks = (width + UNITS - 1) / UNITS;
  /* tasks by chunk first: each thread reads its own share of W1 */
#pragma omp for schedule(static)
  for (long task = 0; task < chunks * groups; task++) {
    long chunk = task / groups, first = (task % groups) * GROUP;
    const float *rows_x[GROUP];
    for (int g = 0; g < GROUP; g++) rows_x[g] = x + (first + g < rows ? first + g : first) * stride;
    long end = (chunk + 1) * UNITS < width ? (chunk + 1) * UNITS : width;
    for (long j = chunk * UNITS; j < end; j++) {
      float d[GROUP];
      dots(head->w1 + j * n, rows_x, n, d);
      for (int g = 0; g < GROUP && first + g < rows; g++) {
        float v = d[g] + head->b1[j];
        hidden[(first + g) * width + j] = v > 0.0f ? v : 0.0f;
      }
    }
  }
}

/* One head: out[r] = its value for row r (first_layer's arguments). Returns 0, or -1 when out of memory. */
static int mlp(const float *x, long stride, long n, const float *done, long done_stride, long in, const head_t *head,
               float *out, long rows, long width) {
  float *h = malloc(sizeof(float) * rows * width);
  if (!h) return -1;
#pragma omp parallel
  {
    first_layer(x, stride, n, done, done_stride, in, head, h, rows, width);
#pragma omp for schedule(static)
    for (long first = 0; first < rows; first += GROUP) {
      const float *rows_h[GROUP];
      for (int g = 0; g < GROUP; g++) rows_h[g] = h + (first + g < rows ? first + g : first) * width;
      float d[GROUP];
      dots(head->w2, rows_h, width, d);
      for (int g = 0; g < GROUP && first + g < rows; g++)
        out[first + g] = 1.0f / (1.0f + expf(-(d[g] + head->b2[0]))) * head->scale;
    }
  }
  free(h);
  return 0;
}

/* y[M, O] = x[M, I] @ w^T in float32 from weights packed into AMX tiles (amx_matmul_bf16.c); 0 or -1 */
typedef long (*amx_f32_t)(const uint16_t *x, const uint16_t *p, float *y, long M, long I, long O);

/* Both heads' first layers on the bf16 hidden rows, [rows, 2 width] (the temperature head's units, then the top-p
 * head's), from `packed`: [2 width, 2 in] weights, each row [its high bf16 parts, its low ones], so the rows are
 * given twice over. NULL when out of memory. */
static float *first_layers_on_tiles(amx_f32_t amx, const uint16_t *packed, const uint16_t *hidden, long rows,
                                    long in, long width) {
  float *done = malloc(sizeof(float) * rows * 2 * width);
  uint16_t *twice = malloc(sizeof(uint16_t) * rows * 2 * in);
  int ok = done && twice;
  for (long r = 0; ok && r < rows; r++) {
    memcpy(twice + r * 2 * in, hidden + r * in, sizeof(uint16_t) * in);
    memcpy(twice + r * 2 * in + in, hidden + r * in, sizeof(uint16_t) * in);
  }
  ok = ok && amx(twice, packed, done, rows, 2 * in, 2 * width) == 0;
  free(twice);
  if (!ok) {
    free(done);
    done = NULL;
  }
  return done;
}

typedef int (*learned_step_t)(long mode, const float *raw, const float *temperature, const float *top_p, float *out,
                              long rows, long n, long candidates, const float *maxima);

/* out: [rows, 2], each row's (T̂, P̂). logits: [rows, vocab] float32, and maxima: NULL or their 16-wide blocks'
 * maxima (the learned-step kernel's, which it then reads instead of the rows for their max and live blocks).
 * features: the learned-step kernel (mode 0 gives [rows, 4] features at the T̂'s clamped to min_temperature), or
 * NULL for heads without features.
 * amx, packed: the AMX matmul and both first layers packed for it (first_layers_on_tiles), or NULL; taken for bf16
 * rows. t_*: the temperature head's layers (T̂ = its value x t_scale), p_*: the top-p head's (input width in + 5,
 * or in + 1 without features). Returns 0; -1 when out of memory; the learned-step kernel's -2 when a row of
 * logits holds NaN or +inf or no finite value (the caller then takes torch's path). */
int autodeco_heads_step_f32(const void *hidden, long hidden_bf16, const float *logits, const float *maxima, long vocab,
                            learned_step_t features, float min_temperature, amx_f32_t amx, const uint16_t *packed,
                            const float *t_w1, const float *t_b1, const float *t_w2, const float *t_b2,
                            float t_scale, const float *p_w1, const float *p_b1, const float *p_w2,
                            const float *p_b2, float *out, long rows, long in, long width) {
  const head_t t_head = {t_w1, t_b1, t_w2, t_b2, t_scale}, p_head = {p_w1, p_b1, p_w2, p_b2, 1.0f};
  /* each row's top-p head input [hidden, T̂, features]: the temperature head reads its first `in` values */
  long extras = 1 + (features ? 4 : 0), stride = in + extras;
  float *x = malloc(sizeof(float) * rows * (stride + 7)), *done = NULL;
  if (x && amx && hidden_bf16) done = first_layers_on_tiles(amx, packed, (const uint16_t *)hidden, rows, in, width);
  if (!x || (amx && hidden_bf16 && !done)) {
    free(x);
    return -1;
  }
  float *t = x + rows * stride, *clamped = t + rows, *p = clamped + rows, *f = p + rows;
  int threads = rows > 1 ? omp_get_max_threads() : 1;
  if (!done) { /* the tiles' sums need no float32 copy of the hidden state */
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long r = 0; r < rows; r++) hidden_row(hidden, hidden_bf16, r, in, x + r * stride);
  }
  int status = mlp(x, stride, in, done, 2 * width, in, &t_head, t, rows, width);
  if (!status && features) {
    for (long r = 0; r < rows; r++) clamped[r] = t[r] < min_temperature ? min_temperature : t[r];
    status = features(0, logits, clamped, NULL, f, rows, vocab, 0, maxima);
  }
  for (long r = 0; !status && r < rows; r++) {
    x[r * stride + in] = t[r];
    for (long k = 1; k < extras; k++) x[r * stride + in + k] = f[r * 4 + k - 1];
  }
  if (!status) status = mlp(x, stride, stride, done ? done + width : NULL, 2 * width, in, &p_head, p, rows, width);
  for (long r = 0; !status && r < rows; r++) {
    out[2 * r] = t[r];
    out[2 * r + 1] = p[r];
  }
  free(x);
  free(done);
  return status;
}
