/* The small ops of a float32 llama-family decode layer, one pass each, giving the bits torch's ops give.
 *
 * The float32 lean step keeps torch's linears and attention (their bits are transformers', which the float32 path
 * keeps), but ran each RMSNorm as 7 torch ops, the residual adds as one more each, and the rotation of queries and
 * keys as a join, 5 elementwise ops, a split and the cache's append: at one row ~0.4 ms of dispatch a layer on a
 * 2-core EPYC, ~19% of a step (reports/engine-speed.md). Here each is one call. Every value is rounded where torch rounds it: each product
 * and sum once (built with -ffp-contract=off), RMSNorm's mean of squares summed in the order of torch's vectorized
 * sum (decode_rows.h). core/cpu_kernels.py checks both against torch, bit for bit, before they are used.
 *
 * add_rms_norm: hidden[r] = hidden[r] + delta[r] (delta may be NULL: no add), then
 *   normed[r] = weight * (hidden[r] * (1 / sqrt(sum(hidden[r]^2) / n + eps)))
 * rope: q [B, H*D] and k [B, KVH*D] rotated, out = x * cos + rotate_half(x) * sin, into q_out [B, H, D] and
 *   k_out [B, KVH, D], or the keys, with the values as they are, into a KV cache's new column
 *
 * From ~16k values a call, rows are split over the OpenMP threads; each worker runs under the calling thread's MXCSR,
 * so a row's bits do not depend on the thread that computed it (torch's pool threads keep the flush mode they were
 * started with).
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#include "decode_rows.h"

static void norm_row(float *h, const float *d, const float *weight, float *out, long n, float eps, long lanes,
                     float *squares) {
  if (d)
    for (long k = 0; k < n; k++) h[k] = h[k] + d[k];
  for (long k = 0; k < n; k++) squares[k] = h[k] * h[k];
  float variance = (lanes == 8 ? torch_row_sum8(squares, n) : torch_row_sum16(squares, n)) / (float)n;
  float scale = 1.0f / sqrtf(variance + eps);
  for (long k = 0; k < n; k++) out[k] = weight[k] * (h[k] * scale);
}

/* Returns 0, or -1 for a row longer than its scratch or a lane count torch does not use. */
int autodeco_decode_ops_f32(float *hidden, const float *delta, const float *weight, float *normed, long rows, long n,
                            float eps, long lanes) {
  enum { MAX_N = 16384 };
  if (n > MAX_N || (lanes != 8 && lanes != 16)) return -1;
  unsigned csr = _mm_getcsr();
#pragma omp parallel num_threads(row_threads(rows, n))
  {
    unsigned own = _mm_getcsr();
    _mm_setcsr(csr);
    float squares[MAX_N];
#pragma omp for schedule(static)
    for (long r = 0; r < rows; r++)
      norm_row(hidden + r * n, delta ? delta + r * n : 0, weight, normed + r * n, n, eps, lanes, squares);
    _mm_setcsr(own);
  }
  return 0;
}

static inline void rotate_row(const float *x, const float *cos, const float *sin, float *out, long D) {
  long half = D / 2;
  for (long i = 0; i < half; i++) out[i] = x[i] * cos[i] + -x[i + half] * sin[i];
  for (long i = half; i < D; i++) out[i] = x[i] * cos[i] + x[i - half] * sin[i];
}

/* q [B, H*D], k and v [B, KVH*D], rows qs and ks elements apart; cos, sin [B, D] with row stride cs; q_out [B, H, D];
 * the rotated keys to k_out and, unless v is NULL, the values to v_out: row 0, head 0 there, rows sb and heads sh
 * elements apart (a tensor of their own, or the new column of a KV cache's views). */
long autodeco_rope_f32(const float *q, const float *k, const float *v, long qs, long ks, const float *cos,
                       const float *sin, long cs, float *q_out, float *k_out, float *v_out, long B, long H, long KVH,
                       long D, long sb, long sh) {
  if (D % 2) return -1;
  unsigned csr = _mm_getcsr();
#pragma omp parallel num_threads(row_threads(B, (H + 2 * KVH) * D))
  {
    unsigned own = _mm_getcsr();
    _mm_setcsr(csr);
#pragma omp for schedule(static)
    for (long b = 0; b < B; b++) {
      const float *c = cos + b * cs, *s = sin + b * cs;
      for (long h = 0; h < H; h++) rotate_row(q + b * qs + h * D, c, s, q_out + (b * H + h) * D, D);
      for (long h = 0; h < KVH; h++) {
        rotate_row(k + b * ks + h * D, c, s, k_out + b * sb + h * sh, D);
        if (v) memcpy(v_out + b * sb + h * sh, v + b * ks + h * D, D * sizeof(float));
      }
    }
    _mm_setcsr(own);
  }
  return 0;
}
