/* The vocabulary-wide work of one learned decoding step, fused: per float32 row of raw logits
 * and its temperature T, the softmax of raw/T and either the top-p head's four features or,
 * given the row's P̂, the hard nucleus cut as logits (raw/T inside, -inf outside).
 *
 * In torch that step is about a dozen passes over [rows, vocab] (two softmaxes, two topk's,
 * a log, two dot products, compares and wheres), ~11 ms for 32 x 49152 rows on a 2-core Xeon.
 * Here each row is read once from memory and then walked two or three times while it sits in
 * the core's cache. It implements core/distribution.py's `distribution_features` and the hard
 * top-p of `decoding_logits` (see there for the definitions):
 *
 *   p_i = exp(raw_i / T - max_j raw_j / T) * (1 / sum)   (raw_i / T rounded as torch divides)
 *   features: max p, -sum p log(p + 1e-8), (sum p^2 - 1/V)+ / (V - 1), sum of the top 5 p
 *   nucleus: sorted descending (ties by id), keep while the mass before (a double-accumulated
 *            cumsum rounded to float, as torch's CPU cumsum) is below P̂, at least one; P̂ >= 1
 *            keeps all. The top `candidates` are selected by value in the first pass; a row
 *            whose nucleus may reach past them is radix-sorted in full, so the cut is the full
 *            sort's either way.
 *
 * exp and log are polynomial (Cephes' single precision, ~1 ulp), so p can differ from
 * torch.softmax's in the last bits; the cut is exact for the p computed here.
 *
 * Built by autodeco_cli/core/cpu_kernels.py with -fopenmp (torch's libgomp and thread count). */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MODE_FEATURES 0
#define MODE_CUT 1
#define MODE_PROBS 2
#define BLOCK 64

static inline float as_float(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static inline uint32_t as_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

/* Every multiply-add below is an explicit fma, so the vectorised loops and the scalar calls (a
 * row's top candidates) compute the same bits whatever the compiler contracts. */
#define FMA __builtin_fmaf

/* exp(x) for x <= 0 (or -inf): Cody-Waite reduction, Cephes' polynomial, then 2^n applied in
 * two halves so results down in the subnormals round once, as a correctly scaled product. */
static inline float exp_nonpositive(float x) {
  x = x < -104.0f ? -104.0f : x;
  float n = FMA(x, 1.44269504088896341f, 12582912.0f) - 12582912.0f; /* round to nearest */
  float r = FMA(n, -0.693359375f, x);
  r = FMA(n, 2.12194440e-4f, r);
  float z = r * r;
  float y = 1.9875691500e-4f;
  y = FMA(y, r, 1.3981999507e-3f);
  y = FMA(y, r, 8.3334519073e-3f);
  y = FMA(y, r, 4.1665795894e-2f);
  y = FMA(y, r, 1.6666665459e-1f);
  y = FMA(y, r, 5.0000001201e-1f);
  y = FMA(y, z, r) + 1.0f;
  int k = (int)n, half = k >> 1;
  return y * as_float((uint32_t)(half + 127) << 23) * as_float((uint32_t)(k - half + 127) << 23);
}

/* log(x) for normal positive x (here p + 1e-8): Cephes' logf, branch-free. */
static inline float log_positive(float x) {
  uint32_t bits = as_bits(x);
  float e = (float)((int)((bits >> 23) & 0xff) - 126);
  float m = as_float((bits & 0x807fffffu) | 0x3f000000u); /* in [0.5, 1) */
  int low = m < 0.707106781186547524f;
  e = low ? e - 1.0f : e;
  m = low ? m + m - 1.0f : m - 1.0f;
  float z = m * m;
  float y = 7.0376836292e-2f;
  y = FMA(y, m, -1.1514610310e-1f);
  y = FMA(y, m, 1.1676998740e-1f);
  y = FMA(y, m, -1.2420140846e-1f);
  y = FMA(y, m, 1.4249322787e-1f);
  y = FMA(y, m, -1.6668057665e-1f);
  y = FMA(y, m, 2.0000714765e-1f);
  y = FMA(y, m, -2.4999993993e-1f);
  y = FMA(y, m, 3.3333331174e-1f);
  y = y * m * z;
  y = FMA(e, -2.12194440e-4f, y);
  y = FMA(z, -0.5f, y);
  return FMA(e, 0.693359375f, m + y);
}

/* ---- selection of the largest values --------------------------------------------------------- */

static void swap(float *a, float *b) {
  float t = *a;
  *a = *b;
  *b = t;
}

/* Reorder v[0..n) so that v[0..k) hold the k largest values (Wirth's selection, descending). */
static void select_largest(float *v, long n, long k) {
  long lo = 0, hi = n - 1, target = k - 1;
  while (lo < hi) {
    float pivot = v[target];
    long i = lo, j = hi;
    do {
      while (v[i] > pivot) i++;
      while (pivot > v[j]) j--;
      if (i <= j) swap(v + i++, v + j--);
    } while (i <= j);
    if (j < target) lo = i;
    if (target < i) hi = j;
  }
}

static void sort_small_descending(float *v, long n) {
  for (long i = 1; i < n; i++) {
    float x = v[i];
    long j = i - 1;
    for (; j >= 0 && v[j] < x; j--) v[j + 1] = v[j];
    v[j + 1] = x;
  }
}

/* One pass over a raw row: its max, whether it holds NaN or +inf, and (k > 0) its k largest
 * values sorted descending into top[0..k), padded with -inf. `buffer` holds 2k + BLOCK floats.
 * A block is only looked into when its max beats the k-th largest so far. */
static int scan_row(const float *raw, long n, long k, float *top, float *buffer, float *max_out) {
  float threshold = -__builtin_inff(), row_max = -__builtin_inff();
  long held = 0;
  int bad = 0;
  for (long start = 0; start < n; start += BLOCK) {
    long end = start + BLOCK < n ? start + BLOCK : n;
    float block_max = -__builtin_inff();
    int block_bad = 0;
#pragma omp simd reduction(max : block_max) reduction(| : block_bad)
    for (long i = start; i < end; i++) {
      float x = raw[i];
      block_max = x > block_max ? x : block_max;
      block_bad |= (x != x) | (x == __builtin_inff());
    }
    bad |= block_bad;
    row_max = block_max > row_max ? block_max : row_max;
    if (k == 0 || !(block_max > threshold)) continue;
    for (long i = start; i < end; i++)
      if (raw[i] > threshold) buffer[held++] = raw[i];
    if (held >= 2 * k) {
      select_largest(buffer, held, k);
      held = k;
      float smallest = buffer[0];
      for (long i = 1; i < k; i++) smallest = buffer[i] < smallest ? buffer[i] : smallest;
      threshold = smallest;
    }
  }
  if (k > 0) {
    if (held > k) select_largest(buffer, held, k);
    long got = held < k ? held : k;
    for (long i = 0; i < got; i++) top[i] = buffer[i];
    for (long i = got; i < k; i++) top[i] = -__builtin_inff();
    sort_small_descending(top, k);
  }
  *max_out = row_max;
  return bad || row_max == -__builtin_inff();
}

/* ---- full sort (fallback rows) ---------------------------------------------------------------- */

#define BITS 11
#define BUCKETS (1 << BITS)
#define MASK (BUCKETS - 1)

/* p >= 0, so its bits order like the values: sort the complemented bits ascending (LSD radix). */
static void sort_probs_descending(const float *in, float *out, long n, uint32_t *a, uint32_t *b) {
  uint32_t counts[3][BUCKETS];
  memset(counts, 0, sizeof(counts));
  for (long i = 0; i < n; i++) {
    uint32_t key = ~as_bits(in[i]);
    a[i] = key;
    counts[0][key & MASK]++;
    counts[1][(key >> BITS) & MASK]++;
    counts[2][key >> (2 * BITS)]++;
  }
  for (int pass = 0; pass < 3; pass++) {
    uint32_t total = 0;
    for (int d = 0; d < BUCKETS; d++) {
      uint32_t c = counts[pass][d];
      counts[pass][d] = total;
      total += c;
    }
    int shift = pass * BITS;
    for (long i = 0; i < n; i++) b[counts[pass][(a[i] >> shift) & MASK]++] = a[i];
    uint32_t *t = a;
    a = b;
    b = t;
  }
  for (long i = 0; i < n; i++) out[i] = as_float(~a[i]);
}

/* ---- per row ----------------------------------------------------------------------------------- */

typedef struct {
  float *exps, *sorted, *top, *buffer; /* [n], [n], [k], [2k + BLOCK] */
  uint32_t *keys;                      /* [2n] */
  long n, k;
} scratch_t;

static int reserve(scratch_t *s, long n, long k) {
  if (s->exps && s->n >= n && s->k >= k) return 0;
  free(s->exps);
  free(s->keys);
  s->exps = malloc(sizeof(float) * (2 * n + 3 * k + BLOCK));
  s->keys = malloc(sizeof(uint32_t) * 2 * n);
  if (!s->exps || !s->keys) {
    free(s->exps);
    free(s->keys);
    s->exps = NULL;
    s->keys = NULL;
    return -1;
  }
  s->sorted = s->exps + n;
  s->top = s->sorted + n;
  s->buffer = s->top + k;
  s->n = n;
  s->k = k;
  return 0;
}

/* exps[i] = exp(raw[i] / t - max / t) and, when `scaled` is given, scaled[i] = raw[i] / t.
 * Returns the sum of the exps. */
static float exponentiate(const float *raw, float t, float max, float *exps, float *scaled, long n) {
  float shift = max / t, sum = 0.0f;
  if (scaled) {
#pragma omp simd reduction(+ : sum)
    for (long i = 0; i < n; i++) {
      float x = raw[i] / t;
      scaled[i] = x;
      exps[i] = exp_nonpositive(x - shift);
      sum += exps[i];
    }
  } else {
#pragma omp simd reduction(+ : sum)
    for (long i = 0; i < n; i++) {
      exps[i] = exp_nonpositive(raw[i] / t - shift);
      sum += exps[i];
    }
  }
  return sum;
}

static void features_row(const float *raw, float t, float max, const float *top, long n, float *exps, float *out) {
  float inverse = 1.0f / exponentiate(raw, t, max, exps, NULL, n);
  float squares = 0.0f, plogp = 0.0f;
#pragma omp simd reduction(+ : squares, plogp)
  for (long i = 0; i < n; i++) {
    float p = exps[i] * inverse;
    squares += p * p;
    plogp += p * log_positive(p + 1e-8f);
  }
  float shift = max / t, top5 = 0.0f;
  long k = n < 5 ? n : 5;
  for (long i = 0; i < k; i++) top5 += exp_nonpositive(top[i] / t - shift) * inverse;
  float variance = squares - (float)(1.0 / (double)n);
  out[0] = exp_nonpositive(top[0] / t - shift) * inverse;
  out[1] = -plogp;
  out[2] = (variance > 0.0f ? variance : 0.0f) / (float)(n - 1);
  out[3] = top5;
}

/* The nucleus over descending probabilities head[0..k): its size (0: it may reach past them). */
static long nucleus_size(const float *head, long k, float top_p) {
  double cumulative = 0.0;
  long size = 0;
  for (long i = 0; i < k; i++) {
    cumulative += head[i];
    if ((float)cumulative - head[i] < top_p) size = i + 1;
    else break; /* the mass before never falls along a sorted row */
  }
  return size == 0 ? 1 : size;
}

/* out holds raw/t; keep the nucleus of `size` tokens whose smallest probability is `cutoff`,
 * where `greater` of them are above it (the rest of the nucleus is the lowest ids at it). */
static void mask_row(float *out, const float *exps, float inverse, long n, float cutoff, long room, int tied) {
  const float minus_inf = -__builtin_inff();
  if (!tied) {
#pragma omp simd
    for (long i = 0; i < n; i++) out[i] = exps[i] * inverse >= cutoff ? out[i] : minus_inf;
    return;
  }
  for (long i = 0; i < n; i++) {
    float p = exps[i] * inverse;
    if (p > cutoff) continue;
    if (p == cutoff && room > 0) {
      room--;
      continue;
    }
    out[i] = minus_inf;
  }
}

static void cut_row(const float *raw, float t, float top_p, float max, long n, long k, scratch_t *s, float *out) {
  float inverse = 1.0f / exponentiate(raw, t, max, s->exps, out, n);
  if (top_p >= 1.0f) return; /* no cut */
  const float *head = s->top;
  long size = 0, length = k;
  if (k > 0) { /* k == 0: no candidates, every row sorted in full */
    float shift = max / t;
    for (long i = 0; i < k; i++) s->top[i] = exp_nonpositive(s->top[i] / t - shift) * inverse;
    size = nucleus_size(s->top, k, top_p);
    if (size == k) size = 0; /* every candidate counted: the nucleus may reach past them */
  }
  if (size == 0) {
#pragma omp simd
    for (long i = 0; i < n; i++) s->sorted[i] = s->exps[i] * inverse;
    sort_probs_descending(s->sorted, s->sorted, n, s->keys, s->keys + n); /* in place */
    head = s->sorted;
    length = n;
    size = nucleus_size(head, n, top_p);
  }
  float cutoff = head[size - 1];
  int tied = size < length && head[size] == cutoff;
  long greater = 0;
  while (greater < size && head[greater] > cutoff) greater++;
  mask_row(out, s->exps, inverse, n, cutoff, size - greater, tied);
}

/* mode 0: out [rows, 4] features; mode 1: out [rows, n] cut logits; mode 2: out [rows, n] probs.
 * temperature, top_p: [rows] (top_p only read in mode 1, already clamped by the caller).
 * Returns 0; -1 when out of memory; -2 when a row holds NaN or +inf or no finite logit (the
 * caller then takes torch's path for the whole batch). */
int autodeco_learned_step_f32(long mode, const float *raw, const float *temperature, const float *top_p, float *out,
                              long rows, long n, long candidates) {
  static scratch_t scratch;
#pragma omp threadprivate(scratch)
  long k = mode == MODE_FEATURES ? (n < 5 ? n : 5) : (candidates < n ? candidates : n);
  if (mode != MODE_CUT) k = mode == MODE_FEATURES ? k : 0;
  long select = (mode == MODE_CUT && k >= n) ? 0 : k;
  int status = 0;
  int threads = rows * n < (1L << 15) ? 1 : omp_get_max_threads();
#pragma omp parallel for schedule(static) num_threads(threads)
  for (long r = 0; r < rows; r++) {
    if (reserve(&scratch, n, k)) {
#pragma omp atomic write
      status = -1;
      continue;
    }
    const float *row = raw + r * n;
    float max;
    if (scan_row(row, n, select, scratch.top, scratch.buffer, &max)) {
#pragma omp atomic write
      status = -2;
      continue;
    }
    if (mode == MODE_FEATURES) {
      features_row(row, temperature[r], max, scratch.top, n, scratch.exps, out + r * 4);
    } else if (mode == MODE_CUT) {
      cut_row(row, temperature[r], top_p[r], max, n, select, &scratch, out + r * n);
    } else {
      float inverse = 1.0f / exponentiate(row, temperature[r], max, scratch.exps, NULL, n);
      for (long i = 0; i < n; i++) out[r * n + i] = scratch.exps[i] * inverse;
    }
  }
  return status;
}
