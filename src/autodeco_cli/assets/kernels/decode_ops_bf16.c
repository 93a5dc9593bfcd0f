/* The small ops of a bf16 llama-family decode layer, one pass each, giving the bits torch's ops give.
 *
 * A decode step ran each of these as 5-12 torch ops (~3-10 us each at 1-32 rows, mostly dispatch):
 * the residual add and RMSNorm, the rotation of queries and keys with the KV-cache append, and
 * SiLU(gate) * up. Here each is one call. Every value is rounded where torch rounds it: bf16 ops
 * compute in fp32 and round to nearest even once; RMSNorm's mean of squares is an fp32 sum in the
 * order of torch's vectorized inner sum (ATen SumKernel.cpp: 4 accumulators of `lanes` floats,
 * cascaded every 16+ vectors, then the scalar tail, then the lanes in order; torch 2.x serves it
 * from its AVX2 kernel: 8 lanes). core/cpu_decode_ops.py checks all three against torch, bit for
 * bit, before they are used. Built with -ffp-contract=off: a fused multiply-add would round once
 * where torch rounds twice.
 *
 * add_rms_norm: hidden[r] = bf16(hidden[r] + delta[r]) (delta may be NULL: no add), then
 *   normed[r] = bf16(weight * bf16(hidden[r] * (1 / sqrt(sum(hidden[r]^2) / n + eps))))
 * rope_append: joined = [q heads, k heads] of a row; out = bf16(bf16(x * cos) + bf16(rotate_half(x) * sin));
 *   queries to q_out [B, H, D], keys and values (as they are) into one cache column per row and KV head
 * silu_mul: out = bf16(silu[gate] * up), silu[] torch's own SiLU of each of the 65536 bf16 values,
 *           two tables side by side: computed with subnormals kept, then flushed (torch.set_flush_denormal),
 *           the one read chosen by the calling thread's MXCSR (FTZ or DAZ), as torch's own SiLU would be
 *
 * From ~16k values a call, rows are split over the OpenMP threads (at 32 rows of the default model the three
 * took ~1.9 ms of a step on one core); each worker runs under the calling thread's MXCSR, so a row's bits do
 * not depend on the thread that computed it (the pool's threads keep the flush mode they were started with).
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

static inline float from_bf16(uint16_t b) {
  uint32_t u = (uint32_t)b << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* c10::BFloat16's round_to_nearest_even */
static inline uint16_t to_bf16(float f) {
  if (isnan(f)) return 0x7fc0;
  uint32_t u;
  memcpy(&u, &f, 4);
  return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

static inline float round_bf16(float f) { return from_bf16(to_bf16(f)); }

/* the same 16 at a time */
static inline __m512 load16(const uint16_t *p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

static inline __m512i rne16(__m512 x) { /* 16 bf16 bit patterns in the low halves of 32-bit lanes */
  __m512i bits = _mm512_castps_si512(x);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  return _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), _mm512_set1_epi32(0x7fc0));
}

static inline void store16(uint16_t *p, __m512 x) {
  _mm256_storeu_si256((__m256i *)p, _mm512_cvtepi32_epi16(rne16(x)));
}

static inline __m512 round16(__m512 x) { return _mm512_castsi512_ps(_mm512_slli_epi32(rne16(x), 16)); }

#include "decode_rows.h"

static void norm_row(uint16_t *h, const uint16_t *d, const uint16_t *weight, uint16_t *out, long n, float eps,
                     long lanes, float *squares) {
  long k = 0;
  for (; k + 16 <= n; k += 16) {
    __m512 f = load16(h + k);
    if (d) {
      f = round16(_mm512_add_ps(f, load16(d + k)));
      store16(h + k, f);
    }
    _mm512_storeu_ps(squares + k, _mm512_mul_ps(f, f));
  }
  for (; k < n; k++) {
    if (d) h[k] = to_bf16(from_bf16(h[k]) + from_bf16(d[k]));
    float f = from_bf16(h[k]);
    squares[k] = f * f;
  }
  float variance = (lanes == 8 ? torch_row_sum8(squares, n) : torch_row_sum16(squares, n)) / (float)n;
  float scale = 1.0f / sqrtf(variance + eps);
  __m512 scales = _mm512_set1_ps(scale);
  for (k = 0; k + 16 <= n; k += 16)
    store16(out + k, _mm512_mul_ps(load16(weight + k), round16(_mm512_mul_ps(load16(h + k), scales))));
  for (; k < n; k++) out[k] = to_bf16(from_bf16(weight[k]) * round_bf16(from_bf16(h[k]) * scale));
}

/* Returns 0, or -1 for a row longer than its scratch or a lane count torch does not use. */
int autodeco_decode_ops_bf16(uint16_t *hidden, const uint16_t *delta, const uint16_t *weight, uint16_t *normed,
                             long rows, long n, float eps, long lanes) {
  enum { MAX_N = 16384 };
  if (n > MAX_N || (lanes != 8 && lanes != 16)) return -1;
  unsigned csr = _mm_getcsr();
#pragma omp parallel num_threads(row_threads(rows, n))
  {
    unsigned own = _mm_getcsr();
    _mm_setcsr(csr);
    float squares[MAX_N];
#pragma omp for schedule(static)
    for (long r = 0; r < rows; r++) norm_row(hidden + r * n, delta ? delta + r * n : 0, weight, normed + r * n, n,
                                             eps, lanes, squares);
    _mm_setcsr(own);
  }
  return 0;
}

static inline void rotate_row(const uint16_t *x, const uint16_t *cos, const uint16_t *sin, uint16_t *out, long D) {
  long half = D / 2;
  if (half % 16 == 0) {
    __m512i sign = _mm512_set1_epi32((int)0x80000000u);
    for (long i = 0; i < D; i += 16) {
      __m512 other = load16(i < half ? x + i + half : x + i - half);
      if (i < half) other = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(other), sign));
      __m512 a = round16(_mm512_mul_ps(load16(x + i), load16(cos + i)));
      store16(out + i, _mm512_add_ps(a, round16(_mm512_mul_ps(other, load16(sin + i)))));
    }
    return;
  }
  for (long i = 0; i < D; i++) {
    float rotated = i < half ? -from_bf16(x[i + half]) : from_bf16(x[i - half]);
    out[i] = to_bf16(round_bf16(from_bf16(x[i]) * from_bf16(cos[i])) + round_bf16(rotated * from_bf16(sin[i])));
  }
}

/* q [B, H*D], k and v [B, KVH*D], rows qs and kvs elements apart (views of one q|k|v output may
 * be passed); cos, sin [B, D] with row stride cs; q_out [B, H, D]; k_col, v_col: the new cache
 * column of row 0, head 0, rows sb and heads sh elements apart. */
long autodeco_rope_append(const uint16_t *q, const uint16_t *k, const uint16_t *v, long qs, long kvs,
                          const uint16_t *cos, const uint16_t *sin, long cs, uint16_t *q_out, uint16_t *k_col,
                          uint16_t *v_col, long B, long H, long KVH, long D, long sb, long sh) {
  if (D % 2) return -1;
  unsigned csr = _mm_getcsr();
#pragma omp parallel num_threads(row_threads(B, (H + 2 * KVH) * D))
  {
    unsigned own = _mm_getcsr();
    _mm_setcsr(csr);
#pragma omp for schedule(static)
    for (long b = 0; b < B; b++) {
      const uint16_t *c = cos + b * cs, *s = sin + b * cs;
      for (long h = 0; h < H; h++) rotate_row(q + b * qs + h * D, c, s, q_out + (b * H + h) * D, D);
      for (long h = 0; h < KVH; h++) {
        rotate_row(k + b * kvs + h * D, c, s, k_col + b * sb + h * sh, D);
        memcpy(v_col + b * sb + h * sh, v + b * kvs + h * D, D * sizeof(uint16_t));
      }
    }
    _mm_setcsr(own);
  }
  return 0;
}

/* out [rows, n] contiguous; gate and up [rows, n], rows `stride` elements apart (views of one
 * gate|up output may be passed); silu: 65536 floats, torch's bf16 SiLU of each bf16 bit pattern */
long autodeco_silu_mul(const uint16_t *gate, const uint16_t *up, long stride, const float *silu, uint16_t *out,
                       long rows, long n) {
  unsigned csr = _mm_getcsr();
  if (csr & 0x8040) silu += 65536; /* FTZ (bit 15) or DAZ (bit 6): the flushed table */
#pragma omp parallel num_threads(row_threads(rows, n))
  {
    unsigned own = _mm_getcsr();
    _mm_setcsr(csr);
#pragma omp for schedule(static)
    for (long r = 0; r < rows; r++) {
      const uint16_t *g = gate + r * stride, *u = up + r * stride;
      uint16_t *o = out + r * n;
      long i = 0;
      for (; i + 16 <= n; i += 16) {
        __m512i bits = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(g + i)));
        store16(o + i, _mm512_mul_ps(_mm512_i32gather_ps(bits, silu, 4), load16(u + i)));
      }
      for (; i < n; i++) o[i] = to_bf16(silu[g[i]] * from_bf16(u[i]));
    }
    _mm_setcsr(own);
  }
  return 0;
}
