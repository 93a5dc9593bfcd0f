/* One decode step of grouped-query attention in bf16: every row has one query position.
 *
 * out[b, 0, h, :] = softmax(bf16(q[b, h] . K[b, h / G]) * scaling, masked) @ V[b, h / G]
 *
 * with the roundings torch's bf16 path makes (scores and weights rounded to bf16, softmax and
 * accumulation in fp32), so values agree with decode_attention_forward's matmuls up to the
 * order of fp32 sums. At 32 rows x ~100 cached tokens torch spent ~0.33 ms per layer on this
 * (two batched matmuls, a softmax, masking, copies) for ~4 MFLOP of work; here it is one pass
 * over the cache that is already in cache memory.
 *
 * q: [B, H, D] contiguous. k, v: [B, KVH, L, D] with strides (sb, sh, sl, 1) in elements.
 * mask: [B, L] bytes (nonzero = attend) or NULL. out: [B, H, D] contiguous.
 * D % 32 == 0, D <= 256, at most 64 query heads per KV head.
 * Built by autodeco_cli/core/cpu_kernels.py with -fopenmp (torch's libgomp, torch's thread count). */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline uint16_t to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fff + ((u >> 16) & 1);
  return (uint16_t)(u >> 16);
}

static inline float bf16_round(float f) {
  uint32_t u = (uint32_t)to_bf16(f) << 16;
  float r;
  memcpy(&r, &u, 4);
  return r;
}

static inline __m512 load16(const uint16_t *p) { /* 16 bf16 -> 16 fp32 */
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

static inline __m512 round16(__m512 x) { /* to bf16 (nearest even) and back */
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(x)), 16));
}

/* exp for x <= 0 (scores minus their maximum): Cephes' expf polynomial, within ~2 ulp */
static inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

/* one KV head and the G query heads that share it; w: G x L scratch, acc: G x D scratch */
static void one_head_group(const uint16_t *q, const uint16_t *k, const uint16_t *v, const uint8_t *mask,
                           uint16_t *out, long G, long L, long D, long sl, float scaling, float *w, float *acc) {
  float best[64];
  for (long g = 0; g < G; g++) best[g] = -INFINITY;
  for (long l = 0; l < L; l++) { /* each key row is read once for all G queries */
    const uint16_t *kl = k + l * sl;
    int masked = mask && !mask[l];
    for (long g = 0; g < G; g++) {
      if (masked) { w[g * L + l] = -INFINITY; continue; }
      const uint16_t *qg = q + g * D;
      __m512 a = _mm512_setzero_ps();
      for (long d = 0; d < D; d += 32)
        a = _mm512_dpbf16_ps(a, (__m512bh)_mm512_loadu_si512(kl + d), (__m512bh)_mm512_loadu_si512(qg + d));
      float score = bf16_round(_mm512_reduce_add_ps(a)) * scaling;
      w[g * L + l] = score;
      if (score > best[g]) best[g] = score;
    }
  }
  for (long g = 0; g < G; g++) { /* softmax in fp32, weights rounded to bf16 */
    float *wg = w + g * L;
    __m512 shift = _mm512_set1_ps(best[g]), sum = _mm512_setzero_ps();
    for (long l = 0; l < L; l += 16) {
      __mmask16 in = L - l >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (L - l)) - 1);
      __m512 s = _mm512_maskz_loadu_ps(in, wg + l);
      __mmask16 live = in & _mm512_cmp_ps_mask(s, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ);
      __m512 e = _mm512_maskz_mov_ps(live, exp16(_mm512_sub_ps(s, shift)));
      _mm512_mask_storeu_ps(wg + l, in, e);
      sum = _mm512_add_ps(sum, e);
    }
    float total = _mm512_reduce_add_ps(sum);
    __m512 scale = _mm512_set1_ps(total > 0.f ? 1.0f / total : 0.f);
    for (long l = 0; l < L; l += 16) {
      __mmask16 in = L - l >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (L - l)) - 1);
      _mm512_mask_storeu_ps(wg + l, in, round16(_mm512_mul_ps(_mm512_maskz_loadu_ps(in, wg + l), scale)));
    }
  }
  long chunks = D / 16;
  for (long i = 0; i < G * D; i++) acc[i] = 0.f;
  for (long l = 0; l < L; l++) { /* each value row is read once for all G queries */
    const uint16_t *vl = v + l * sl;
    __m512 row[16];
    for (long c = 0; c < chunks; c++) row[c] = load16(vl + c * 16);
    for (long g = 0; g < G; g++) {
      float weight = w[g * L + l];
      if (weight == 0.f) continue;
      __m512 wv = _mm512_set1_ps(weight);
      for (long c = 0; c < chunks; c++)
        _mm512_storeu_ps(acc + g * D + c * 16, _mm512_fmadd_ps(wv, row[c], _mm512_loadu_ps(acc + g * D + c * 16)));
    }
  }
  for (long i = 0; i < G * D; i++) out[i] = to_bf16(acc[i]);
}

/* Returns 0, or -1 for shapes it does not take (the caller then uses torch). */
int autodeco_decode_attention_bf16(const uint16_t *q, const uint16_t *k, const uint16_t *v, const uint8_t *mask,
                                   uint16_t *out, long B, long H, long KVH, long L, long D, long sb, long sh,
                                   long sl, float scaling) {
  if (D % 32 || D > 256 || KVH < 1 || H % KVH || H / KVH > 64) return -1;
  long G = H / KVH, jobs = B * KVH;
  int threads = jobs * L * D < (1L << 16) ? 1 : omp_get_max_threads();
  int failed = 0;
#pragma omp parallel num_threads(threads)
  {
    float *w = malloc(sizeof(float) * G * ((L > 0 ? L : 1) + D));
#pragma omp for schedule(static)
    for (long job = 0; job < jobs; job++) {
      if (!w) {
#pragma omp atomic write
        failed = 1;
        continue;
      }
      long b = job / KVH, h = job % KVH;
      one_head_group(q + (b * H + h * G) * D, k + b * sb + h * sh, v + b * sb + h * sh, mask ? mask + b * L : 0,
                     out + (b * H + h * G) * D, G, L, D, sl, scaling, w, w + G * L);
    }
    free(w);
  }
  return failed ? -1 : 0;
}
