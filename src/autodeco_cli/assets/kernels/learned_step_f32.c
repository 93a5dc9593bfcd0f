/* The vocabulary-wide work of one learned decoding step, fused: per float32 row of raw logits
 * and its temperature T, the softmax of raw/T and either the top-p head's four features or,
 * given the row's P̂, the hard nucleus cut as logits (raw/T inside, -inf outside).
 *
 * In torch that step is about a dozen passes over [rows, vocab] (two softmaxes, two topk's,
 * a log, two dot products, compares and wheres), ~11 ms for 32 x 49152 rows on a 2-core Xeon.
 * Here each row is read from memory once and then walked a few times while it sits in the
 * core's cache. It implements core/distribution.py's `distribution_features` and the hard top-p
 * of `decoding_logits` (see there for the definitions):
 *
 *   p_i = e_i / sum_j e_j,  e_i = exp(raw_i / T - max_j raw_j / T)
 *   features: max p, -sum p log(p + 1e-8), (sum p^2 - 1/V)+ / (V - 1), sum of the top 5 p
 *   nucleus: p sorted descending (ties by id), kept while the mass before (a double-accumulated
 *            cumsum rounded to float, as torch's CPU cumsum) is below P̂, at least one; P̂ >= 1
 *            keeps all. The largest `candidates` e's are selected in one pass; a row whose
 *            nucleus may reach past them is radix-sorted in full, so the cut is the full
 *            sort's either way. Kept tokens get raw / T exactly as torch divides. The sampler takes
 *            the cut narrowed to its 64-token blocks that hold a kept token (autodeco_nucleus_f32).
 *
 * exp and log are polynomials (Cephes' single precision, ~1 ulp), so p can differ from
 * torch.softmax's in the last bits; the cut is exact for the p computed here (every comparison
 * is on the e's and p's themselves, never on raw values, so nothing assumes the exp monotone).
 * Subnormal results are flushed to zero (probabilities below 1.2e-38; a kept logit raw / T below
 * that in magnitude would read 0), for speed and so every thread computes the same p's.
 *
 * Built by autodeco_cli/core/cpu_kernels.py with -fopenmp (torch's libgomp and thread count).
 * AUTODECO_KERNEL_REFERENCE builds the plain version of the shortcuts below (every block walked,
 * every log taken, the top 5 selected in a pass of their own), which the tests hold it to bit
 * for bit. */
#include <omp.h>
#include <stdint.h>
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#define MODE_FEATURES 0
#define MODE_CUT 1
#define MODE_PROBS 2
#define MODE_NUCLEUS 3
#define BLOCK 64

#include "lanes16.h"
#include "cephes_f32.h"
#include "radix_sort.h"
#include "largest_values.h"
#include "reduce16.h"

/* ---- per row ----------------------------------------------------------------------------------- */

typedef struct {
  float *exps, *sorted, *top, *buffer; /* [n], [n], [k], [2k + BLOCK] */
  uint32_t *keys;                      /* [2n] */
  int32_t *live;                       /* [n / LANES + 1]: the blocks `exponentiate` computed */
  uint8_t *subs;                       /* [n / BLOCK + 1]: per BLOCK, a bit per LANES-wide block computed */
  long n, k;
} scratch_t;

static int reserve(scratch_t *s, long n, long k) {
  if (s->exps && s->n >= n && s->k >= k) return 0;
  free(s->exps);
  free(s->keys);
  s->exps = malloc(sizeof(float) * (2 * n + 3 * k + BLOCK));
  s->keys = malloc(sizeof(uint32_t) * (2 * n + n / 16 + 1) + n / BLOCK + 1);
  if (!s->exps || !s->keys) {
    free(s->exps);
    free(s->keys);
    s->exps = NULL;
    s->keys = NULL;
    return -1;
  }
  s->live = (int32_t *)(s->keys + 2 * n);
  s->subs = (uint8_t *)(s->live + n / 16 + 1);
  s->sorted = s->exps + n;
  s->top = s->sorted + n;
  s->buffer = s->top + k;
  s->n = n;
  s->k = k;
  return 0;
}

/* The sums below run in blocks of LANES with one accumulator per lane (element i into lane
 * i % LANES, the tail into lane 0, then the lanes summed in order), written out so a block can be
 * skipped. That is the order gcc 12 gave the `omp simd reduction` loops they replace: on 1,080
 * test rows (features, probabilities and cuts; 5 to 49,152 tokens) the outputs were bit for bit
 * those loops'. */
#define LANES 16
/* exp_nonpositive(x) below this is under 2^-126 (e^-88 ~ 6e-39), which the flush makes +0. */
#define FLUSHED_BELOW -88.0f
/* The features count only the tokens whose exponent is at least this; the others' e's are each under
 * e^-30 ~ 9.4e-14 of the max's (which is 1), so together, even over 256k tokens, they weigh under 2.4e-8
 * of the sum: below half an ulp of a float32 sum that is at least 1. Left out, they move the entropy by at
 * most 2.4e-8 x 18.5 (-log(1e-8)) ~ 4.4e-7 (8.5e-8 at SmolLM2's 49,152 tokens) and the other features by
 * less, within the ~1 ulp this kernel's exp already differs from torch's by. At the heads' usual T̂ most of
 * a row lies below: on the default model's rows 12% of the 16-wide blocks reach -30, 57% reach -88. The cut
 * and the probabilities keep every e the float32 range holds (FLUSHED_BELOW). */
#define FEATURES_FLOOR -30.0f

static float lanes_sum(const float *lane) {
  float sum = 0.0f;
  for (int j = 0; j < LANES; j++) sum += lane[j];
  return sum;
}

/* +0 where `below`, else e (a float the exp gave). For AVX2 as a bit mask: gcc 12 keeps a select around the inlined
 * exp as a branch there and leaves the loop scalar ("control flow in loop"), ~230 us a row of the cut instead of
 * tens; the mask gives the same bits. AVX-512 keeps the select, which its masked stores vectorise. */
#ifdef __AVX512F__
#define ZERO_WHERE(below, e) ((below) ? 0.0f : (e))
#else
#define ZERO_WHERE(below, e) as_float(as_bits(e) & -(uint32_t) !(below))
#endif

/* The largest raw whose exponent raw / t - shift is below `floor`, or -inf. Division and
 * subtraction round monotonically, so every raw up to it has such an exponent too. */
static float zero_up_to(float t, float shift, float max, float floor) {
  float cut = max + floor * t;
  for (int tries = 0; tries < 4; tries++) {
    if (cut / t - shift < floor) return cut;
    cut -= (cut < 0.0f ? -cut : cut) * 0x1p-20f + t;
  }
  return -__builtin_inff();
}

/* The 16-wide blocks of raw[0..body) with a raw above `dead`, in order, into live; returns how
 * many. Listing them first keeps the exp loop free of a data-dependent branch per block (whether a
 * block is dead follows no pattern along a row, and each mispredicted skip cost the loop its
 * overlap of one block's latency with the next). With `blocks` (each block's max) the row itself is
 * not read: a block is live where its max is above `dead`. */
static long live_blocks(const float *raw, long body, float dead, int32_t *live, const float *blocks) {
  long count = 0;
#ifndef AUTODECO_KERNEL_REFERENCE
  if (blocks) {
    const i32x16 step = i16_set1(16 * LANES);
    i32x16 starts = i16_mullo(i16_setr(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), i16_set1(LANES));
    long b = 0, count_blocks = body / LANES;
    for (; b + LANES <= count_blocks; b += LANES, starts = i16_add(starts, step)) {
      mask16 above = v16_cmp(v16_load(blocks + b), v16_set1(dead), _CMP_GT_OQ);
      i16_compress_store(live + count, above, starts);
      count += __builtin_popcount(above);
    }
    for (; b < count_blocks; b++) {
      live[count] = (int32_t)(b * LANES);
      count += blocks[b] > dead;
    }
    return count;
  }
#endif
  for (long b = 0; b < body; b += LANES) {
    live[count] = (int32_t)b;
#ifdef AUTODECO_KERNEL_REFERENCE
    count++;
    (void)raw, (void)dead, (void)blocks;
#else
    count += v16_cmp(v16_load(raw + b), v16_set1(dead), _CMP_GT_OQ) != 0;
#endif
  }
  return count;
}

/* Folds v[0..n) into *max (x > max ? x : max); returns whether one of them is NaN or +inf. */
static int fold_max(const float *v, long n, float *max_io) {
  float max = *max_io;
  int bad = 0;
#pragma omp simd reduction(max : max) reduction(| : bad)
  for (long i = 0; i < n; i++) {
    float x = v[i];
    max = x > max ? x : max;
    bad |= (x != x) | (x == __builtin_inff());
  }
  *max_io = max;
  return bad;
}

/* The row's max, and whether it holds NaN or +inf or no finite value (1: refuse the batch). With `blocks` (its
 * 16-wide blocks' maxima, `autodeco_widen_bf16`'s: NaN counted as +inf) only those and the tail past the last
 * whole block are read: the same max (up to the sign of a zero max, which moves no exponent), the same verdict. */
static int row_max(const float *raw, const float *blocks, long n, float *max_out) {
  long read_from = blocks ? n - n % LANES : 0;
  *max_out = -__builtin_inff();
  int bad = blocks ? fold_max(blocks, n / LANES, max_out) : 0;
  bad |= fold_max(raw + read_from, n - read_from, max_out);
  return bad || *max_out == -__builtin_inff();
}

/* Insert x into top[0..k), kept descending, if it beats the last. */
static inline void keep_largest(float *top, long k, float x) {
  if (!(x > top[k - 1])) return;
  long i = k - 1;
  for (; i > 0 && top[i - 1] < x; i--) top[i] = top[i - 1];
  top[i] = x;
}

/* exps[i] = exp(raw[i] / t - max / t) with torch's roundings of the quotient and the difference
 * (one division each: the exps then differ from torch's only by the exp itself), and +0 where that
 * exponent is below `floor` (FLUSHED_BELOW: where the flush makes it +0 anyway); returns the sum.
 * A block whose every raw is at most `zero_up_to` is all +0, and adding +0 changes no lane:
 * at a low T most of a row's blocks are, so only the others are computed, listed in `live`
 * (`*count` of them). The dead ones are zeroed only with `zero_dead`: the features never read them.
 * With `top` (k >= 1 floats), the k largest e's, descending, are kept on the way: the dead blocks'
 * +0's can only be among them as the zeros `top` starts from.
 * `ahead` (or NULL) is the next row this thread reads: its lines are prefetched along the way, so
 * that row's first reads (its max, or its live blocks) find it in this core's cache instead of waiting on memory. */
static float exponentiate(const float *raw, const float *maxima, float t, float max, float floor, float *exps,
                          long n, const float *ahead, int32_t *live, long *count, int zero_dead, float *top, long k,
                          offered_t *offered) {
  float shift = max / t, lane[LANES] = {0.0f};
  long body = n - n % LANES, blocks = live_blocks(raw, body, zero_up_to(t, shift, max, floor), live, maxima);
  long lines = body / LANES, per_block = blocks ? (lines + blocks - 1) / blocks : 0, prefetched = 0, zeroed = 0;
  /* With block maxima the next row is not read in full for its max: fetched ahead in full, it pays only where this
   * row is read in much of its length too (its live blocks at T̂ are like this one's). */
  if (maxima && 4 * blocks < lines) ahead = NULL;
  for (long i = 0; i < k; i++) top[i] = 0.0f;
  for (long i = 0; i < blocks; i++) {
    long b = live[i];
    for (long j = 0; ahead && j < per_block && prefetched < lines; j++, prefetched++)
      _mm_prefetch((const char *)(ahead + prefetched * LANES), _MM_HINT_T1);
    for (; zero_dead && zeroed < b; zeroed++) exps[zeroed] = 0.0f;
#pragma omp simd
    for (int j = 0; j < LANES; j++) {
      float exponent = raw[b + j] / t - shift;
      exps[b + j] = ZERO_WHERE(exponent < floor, exp_nonpositive(exponent));
      lane[j] += exps[b + j];
    }
    zeroed = b + LANES;
    if (k) {
      mask16 above = v16_cmp(v16_load(exps + b), v16_set1(top[k - 1]), _CMP_GT_OQ);
      for (; above; above &= above - 1) keep_largest(top, k, exps[b + __builtin_ctz(above)]);
    }
    if (offered) offer_to(offered, exps, b, b + LANES); /* from L1, just written: a pass of its own read L2 */
  }
  for (; zero_dead && zeroed < body; zeroed++) exps[zeroed] = 0.0f;
  for (long i = body; i < n; i++) {
    float exponent = raw[i] / t - shift;
    exps[i] = ZERO_WHERE(exponent < floor, exp_nonpositive(exponent));
    lane[0] += exps[i];
    if (k) keep_largest(top, k, exps[i]);
  }
  if (offered) offer_to(offered, exps, body, n);
  *count = blocks;
  return lanes_sum(lane);
}

/* p + 1e-8f rounds to 1e-8f for every p below this: half an ulp of 1e-8f (a tie would round up,
 * to even, as 1e-8f's last bit is odd). */
#define UNDER_THE_FLOOR 0x1p-51f

/* Sum p^2 and sum p log(p + 1e-8) into squares, plogp, over the `count` blocks in `live` and the
 * tail: the other blocks' e's are +0, which add +0 and -0 (0 times a negative log) and change no
 * lane. In a block whose every p is below UNDER_THE_FLOOR each log is log(1e-8f), the same
 * polynomial on the same input, so it is taken once per row: past a row's likely tokens most
 * blocks are such. */
static void moments(const float *exps, float inverse, long n, const int32_t *live, long count, float *squares,
                    float *plogp) {
  /* The lanes live in registers: as arrays they went through memory, a store and a load per block
   * on the loop's critical path, longer than a block under the floor takes. */
  const f32x16 scale = v16_set1(inverse), under = v16_set1(UNDER_THE_FLOOR);
  const f32x16 log_floor = v16_set1(log_positive(1e-8f));
  f32x16 sq = v16_zero(), pl = v16_zero();
  for (long i = 0; i < count; i++) {
    f32x16 p = v16_mul(v16_load(exps + live[i]), scale);
    sq = v16_fmadd(p, p, sq);
#ifndef AUTODECO_KERNEL_REFERENCE
    if (!v16_cmp(p, under, _CMP_GE_OQ)) {
      pl = v16_fmadd(p, log_floor, pl);
      continue;
    }
#else
    (void)under, (void)log_floor;
#endif
    float shifted[LANES], logs[LANES];
    v16_store(shifted, v16_add(p, v16_set1(1e-8f)));
#pragma omp simd
    for (int j = 0; j < LANES; j++) logs[j] = log_positive(shifted[j]);
    pl = v16_fmadd(p, v16_load(logs), pl);
  }
  float sq_lanes[LANES], pl_lanes[LANES];
  v16_store(sq_lanes, sq);
  v16_store(pl_lanes, pl);
  for (long i = n - n % LANES; i < n; i++) {
    float p = exps[i] * inverse;
    sq_lanes[0] = FMA(p, p, sq_lanes[0]);
    pl_lanes[0] = FMA(p, log_positive(p + 1e-8f), pl_lanes[0]);
  }
  *squares = lanes_sum(sq_lanes);
  *plogp = lanes_sum(pl_lanes);
}

static void features_row(const float *raw, const float *maxima, float t, float max, long n, scratch_t *s, float *out,
                         const float *ahead) {
  long k = n < 5 ? n : 5, blocks;
#ifdef AUTODECO_KERNEL_REFERENCE
  float sum =
      exponentiate(raw, maxima, t, max, FEATURES_FLOOR, s->exps, n, ahead, s->live, &blocks, 1, s->top, 0, NULL);
  float inverse = 1.0f / sum;
  largest(s->exps, n, k, s->top, s->buffer);
#else
  float sum =
      exponentiate(raw, maxima, t, max, FEATURES_FLOOR, s->exps, n, ahead, s->live, &blocks, 0, s->top, k, NULL);
  float inverse = 1.0f / sum;
#endif
  float squares, plogp;
  moments(s->exps, inverse, n, s->live, blocks, &squares, &plogp);
  float top5 = 0.0f;
  for (long i = 0; i < k; i++) top5 += s->top[i] * inverse;
  float variance = squares - (float)(1.0 / (double)n);
  out[0] = s->top[0] * inverse;
  out[1] = -plogp;
  out[2] = (variance > 0.0f ? variance : 0.0f) / (float)(n - 1);
  out[3] = top5;
}

/* The nucleus over descending probabilities head[0..k): its size (k: it may reach past them). */
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

/* out = raw / t where kept, -inf elsewhere: the tokens at or above `cutoff`, except that of those
 * at it only the first `room` (by id) are kept when `tied`. Blocks with no kept token are only
 * filled, so the division runs on a few blocks. */
static void mask_row(const float *raw, float t, const float *exps, float inverse, long n, float cutoff, long room,
                     int tied, float *out) {
  const float minus_inf = -__builtin_inff();
  for (long start = 0; start < n; start += BLOCK) {
    long end = start + BLOCK < n ? start + BLOCK : n;
    int any = 0;
#pragma omp simd reduction(| : any)
    for (long i = start; i < end; i++) any |= exps[i] * inverse >= cutoff;
    if (!any) {
      for (long i = start; i < end; i++) out[i] = minus_inf;
      continue;
    }
#ifndef __AVX512F__
    /* Untied, a token is kept where p >= cutoff, as a bit mask over a division taken for every lane: gcc 12 keeps
     * the select below as a branch on AVX2, and the loop scalar. AVX-512 vectorises the select. */
    if (!tied) {
      for (long i = start; i < end; i++) {
        uint32_t keep = -(uint32_t)(exps[i] * inverse >= cutoff);
        out[i] = as_float((as_bits(raw[i] / t) & keep) | (as_bits(minus_inf) & ~keep));
      }
      continue;
    }
#endif
    for (long i = start; i < end; i++) {
      float p = exps[i] * inverse;
      int keep = p > cutoff || (p == cutoff && (!tied || room-- > 0));
      out[i] = keep ? raw[i] / t : minus_inf;
    }
  }
}

/* A row's nucleus: p = e * inverse, kept where above cutoff, or at it for the first `room` by id when tied. */
typedef struct {
  float inverse, cutoff;
  long room;
  int tied, dense; /* dense: every e of the row is in exps, the dead blocks' +0's too */
} cut_t;

/* Zeroes exps[0..n) outside the `count` blocks in `live` and the tail. */
static void zero_dead_blocks(float *exps, const int32_t *live, long count, long n) {
  long zeroed = 0, body = n - n % LANES;
  for (long i = 0; i < count; zeroed = live[i++] + LANES)
    for (; zeroed < live[i]; zeroed++) exps[zeroed] = 0.0f;
  for (; zeroed < body; zeroed++) exps[zeroed] = 0.0f;
}

/* Exponentiates the row (its dead blocks zeroed only with `zero_dead`) and finds its nucleus at top_p < 1: among
 * the largest `k` e's (from the live blocks: the dead ones' +0's can only be among them as zeros), or, where the
 * nucleus may reach past them, in a full sort (which zeroes the dead blocks first). */
static cut_t find_cut(const float *raw, const float *maxima, float t, float top_p, float max, long n, long k,
                      scratch_t *s, const float *ahead, int zero_dead, long *blocks) {
  cut_t cut = {0.0f, 0.0f, 0, 0, zero_dead};
  /* the largest k e's gathered as they are computed (the dead blocks' +0's can only be among them as zeros) */
  offered_t offered = {s->buffer, -__builtin_inff(), k, 0};
  cut.inverse = 1.0f / exponentiate(raw, maxima, t, max, FLUSHED_BELOW, s->exps, n, ahead, s->live, blocks,
                                    zero_dead, NULL, 0, k > 0 ? &offered : NULL);
  const float *head = s->top;
  long size = 0, length = k;
  if (k > 0) { /* k == 0: no candidates, every row sorted in full */
    take_largest(k, s->top, s->buffer, offered.held);
    for (long i = 0; i < k; i++) s->top[i] *= cut.inverse;
    size = nucleus_size(s->top, k, top_p);
  }
  if (size == k) { /* every candidate counted (or none taken): the nucleus may reach past them */
    if (!cut.dense) zero_dead_blocks(s->exps, s->live, *blocks, n);
    cut.dense = 1;
#pragma omp simd
    for (long i = 0; i < n; i++) s->sorted[i] = s->exps[i] * cut.inverse;
    sort_probs_descending(s->sorted, s->sorted, n, s->keys, s->keys + n); /* in place */
    head = s->sorted;
    length = n;
    size = nucleus_size(head, n, top_p);
  }
  cut.cutoff = head[size - 1];
  cut.tied = size < length && head[size] == cut.cutoff;
  long greater = 0;
  while (greater < size && head[greater] > cut.cutoff) greater++;
  cut.room = size - greater;
  return cut;
}

static void cut_row(const float *raw, const float *maxima, float t, float top_p, float max, long n, long k,
                    scratch_t *s, float *out, const float *ahead) {
  if (top_p >= 1.0f) { /* no cut */
    for (long i = 0; i < n; i++) out[i] = raw[i] / t;
    return;
  }
  long blocks;
  cut_t cut = find_cut(raw, maxima, t, top_p, max, n, k, s, ahead, 1, &blocks);
  mask_row(raw, t, s->exps, cut.inverse, n, cut.cutoff, cut.room, cut.tied, out);
}

/* ---- the nucleus as its blocks ------------------------------------------------------------------ */

/* The row's BLOCK-wide blocks that hold a kept token with raw / t above -inf, as the cut (mask_row) writes them,
 * to staged[0..count x BLOCK) in order, and their indices to ids; returns count. The walk visits only blocks
 * with a computed e at or above the cutoff: a block without one holds no kept token (cutoff > 0; a row keeping
 * p = 0 tokens is made dense first), and no tie there takes room. *wide where a kept raw / t is +inf (its e's are
 * NaN then, raw / t - max / t being inf - inf) or nothing is kept. */
static long nucleus_row(const float *raw, const float *maxima, float t, float top_p, float max, long n, long k,
                        scratch_t *s, const float *ahead, float *staged, int32_t *ids, int *wide) {
  long blocks, count = n / BLOCK, kept = 0;
  if (top_p >= 1.0f) { /* every token kept: the blocks with a raw above -inf */
    for (long b = 0; b < count; b++) {
      float *to = staged + kept * BLOCK, top = -__builtin_inff();
      for (long j = 0; j < BLOCK; j++) {
        to[j] = raw[b * BLOCK + j] / t;
        top = to[j] > top ? to[j] : top;
      }
      *wide |= top == __builtin_inff();
      if (top > -__builtin_inff()) ids[kept++] = (int32_t)b;
    }
    return kept;
  }
  cut_t cut = find_cut(raw, maxima, t, top_p, max, n, k, s, ahead, 0, &blocks);
  if (!cut.dense && !(cut.cutoff > 0.0f)) {
    zero_dead_blocks(s->exps, s->live, blocks, n);
    cut.dense = 1;
  }
  memset(s->subs, cut.dense ? 0xF : 0, count);
  for (long i = 0; !cut.dense && i < blocks; i++) s->subs[s->live[i] / BLOCK] |= 1 << (s->live[i] % BLOCK / LANES);
  const f32x16 inverse = v16_set1(cut.inverse), cutoff = v16_set1(cut.cutoff);
  for (long b = 0; b < count; b++) {
    int any = 0, finite = 0, subs = s->subs[b];
    for (int q = 0; q < BLOCK / LANES; q++)
      if (subs >> q & 1) {
        f32x16 p = v16_mul(v16_load(s->exps + b * BLOCK + q * LANES), inverse);
        any |= v16_cmp(p, cutoff, _CMP_GE_OQ) != 0;
      }
    if (!any) continue;
    float *to = staged + kept * BLOCK;
    for (long j = 0; j < BLOCK; j++) {
      long i = b * BLOCK + j;
      float p = subs >> (j / LANES) & 1 ? s->exps[i] * cut.inverse : 0.0f;
      int keep = p > cut.cutoff || (p == cut.cutoff && (!cut.tied || cut.room-- > 0));
      to[j] = keep ? raw[i] / t : -__builtin_inff();
      finite |= to[j] > -__builtin_inff();
      *wide |= to[j] == __builtin_inff();
    }
    if (finite) ids[kept++] = (int32_t)b;
  }
  *wide |= kept == 0; /* as nucleus_blocks leaves such a row (its softmax is NaN either way) */
  return kept;
}

/* A row's `count` staged blocks (out[0..count x BLOCK), ids ascending) spread to their places in the whole row of
 * n, -inf elsewhere: from the last down, so no block lands on one still to move. */
static void spread_row(float *out, const int32_t *ids, long count, long n) {
  long to = n / BLOCK - 1;
  for (long j = count - 1; j >= -1; j--, to--) {
    for (long stop = j >= 0 ? ids[j] : -1; to > stop; to--)
      for (long i = 0; i < BLOCK; i++) out[to * BLOCK + i] = -__builtin_inff();
    if (j >= 0 && to != j) memmove(out + to * BLOCK, out + j * BLOCK, sizeof(float) * BLOCK);
  }
}

/* The rows of one call: for mode 3 (MODE_NUCLEUS) row r's kept blocks are staged at out + r n, their indices at
 * ids + r n / BLOCK, their count in counts[r]; wide[r] as nucleus_row sets it. */
static int each_row(long mode, const float *raw, const float *temperature, const float *top_p, float *out, long rows,
                    long n, long candidates, const float *maxima, int32_t *ids, long *counts, int *wide) {
  static scratch_t scratch;
#pragma omp threadprivate(scratch)
  long k = mode == MODE_FEATURES ? (n < 5 ? n : 5) : (mode != MODE_PROBS && candidates < n ? candidates : 0);
  int status = 0;
  int threads = rows * n < (1L << 15) ? 1 : omp_get_max_threads();
#pragma omp parallel num_threads(threads)
  {
    /* Subnormal results flushed to zero, whatever the calling thread's mode: at a low T̂ most of
     * a row's exps and p^2 underflow, and without the flush each one costs a microcode assist
     * (vLLM's threads run without it; torch.set_flush_denormal only sets the calling thread).
     * It also makes the p's the same on every thread. Inputs are read as they are (no DAZ). */
    unsigned int mode_before = _mm_getcsr();
    _mm_setcsr((mode_before | 0x8000u) & ~0x0040u);
    /* Rows dealt out in turn: a row's cost follows its T (the live blocks and logs), and the heads'
     * T̂ differ along a batch, so its halves can carry unequal work (three real steps: 487 -> 409 us
     * per call dealt in turn). `ahead` is this thread's next row, fetched along this one's live blocks (with
     * block maxima only where they are many: see `exponentiate`). */
    long stride = omp_get_num_threads();
#pragma omp for schedule(static, 1)
    for (long r = 0; r < rows; r++) {
      const float *row = raw + r * n, *ahead = r + stride < rows ? row + stride * n : NULL;
      const float *blocks = maxima ? maxima + r * (n / LANES) : NULL;
      float max;
      if (reserve(&scratch, n, k)) {
#pragma omp atomic write
        status = -1;
        continue;
      }
      if (row_max(row, blocks, n, &max)) {
#pragma omp atomic write
        status = -2;
        continue;
      }
      if (mode == MODE_FEATURES) {
        features_row(row, blocks, temperature[r], max, n, &scratch, out + r * 4, ahead);
      } else if (mode == MODE_CUT) {
        cut_row(row, blocks, temperature[r], top_p[r], max, n, k, &scratch, out + r * n, ahead);
      } else if (mode == MODE_NUCLEUS) {
        counts[r] = nucleus_row(row, blocks, temperature[r], top_p[r], max, n, k, &scratch, ahead, out + r * n,
                                ids + r * (n / BLOCK), wide + r);
      } else {
        long live;
        float inverse = 1.0f / exponentiate(row, blocks, temperature[r], max, FLUSHED_BELOW, scratch.exps, n, ahead,
                                            scratch.live, &live, 1, NULL, 0, NULL);
        for (long i = 0; i < n; i++) out[r * n + i] = scratch.exps[i] * inverse;
      }
    }
    _mm_setcsr(mode_before);
  }
  return status;
}

/* mode 0: out [rows, 4] features; mode 1: out [rows, n] cut logits; mode 2: out [rows, n] probs.
 * temperature, top_p: [rows] (top_p only read in mode 1; temperature already clamped). maxima: NULL, or
 * [rows, n / 16] each 16-wide block's max (`autodeco_widen_bf16`'s), from which the row's max and its live
 * blocks come without reading the row: the outputs are the same bits either way.
 * Returns 0; -1 when out of memory; -2 when a row holds NaN or +inf or no finite logit (the
 * caller then takes torch's path for the whole batch). */
int autodeco_learned_step_f32(long mode, const float *raw, const float *temperature, const float *top_p, float *out,
                              long rows, long n, long candidates, const float *maxima) {
  return each_row(mode, raw, temperature, top_p, out, rows, n, candidates, maxima, NULL, NULL, NULL);
}

/* The cut of mode 1 narrowed to the BLOCK-wide blocks that hold a kept token, as the sampler samples it (a softmax
 * over those blocks gives each kept token the whole row's probability, engine/sampler.py's `nucleus_blocks`):
 * without writing the rows' -inf's or reading them back. out: room for [rows, n] floats; ids: [rows, n / BLOCK].
 * Returns the width W: where 2 W BLOCK <= n, out holds [rows, W BLOCK] (each row's kept blocks in order, then
 * -inf) and ids [rows, W] (their block indices, 0 past a row's own); otherwise, or where a kept raw / t is +inf,
 * out holds mode 1's whole cut [rows, n] and W = n / BLOCK. -1, -2 as mode 1; -3 where n is no multiple of BLOCK. */
long autodeco_nucleus_f32(const float *raw, const float *temperature, const float *top_p, const float *maxima,
                          float *out, int32_t *ids, long rows, long n, long candidates) {
  if (n % BLOCK) return -3;
  long per_row = n / BLOCK, width = 0, *counts = malloc(sizeof(long) * rows);
  int *wide = calloc(rows, sizeof(int)), whole = 0;
  int status = counts && wide ? each_row(MODE_NUCLEUS, raw, temperature, top_p, out, rows, n, candidates, maxima,
                                         ids, counts, wide)
                              : -1;
  for (long r = 0; !status && r < rows; r++) {
    width = counts[r] > width ? counts[r] : width;
    whole |= wide[r];
  }
  if (!status && (whole || 2 * width * BLOCK > n)) {
#pragma omp parallel for if (rows * n >= (1L << 15))
    for (long r = 0; r < rows; r++) spread_row(out + r * n, ids + r * per_row, counts[r], n);
    width = per_row;
  } else if (!status) { /* row by row in order: each moves down, onto rows already moved */
    for (long r = 0; r < rows; r++) {
      memmove(out + r * width * BLOCK, out + r * n, sizeof(float) * counts[r] * BLOCK);
      for (long i = counts[r] * BLOCK; i < width * BLOCK; i++) out[r * width * BLOCK + i] = -__builtin_inff();
      memmove(ids + r * width, ids + r * per_row, sizeof(int32_t) * counts[r]);
      for (long j = counts[r]; j < width; j++) ids[r * width + j] = 0;
    }
  }
  free(counts);
  free(wide);
  return status ? status : width;
}

/* Maxima of 16 vectors at once, in order: lane k of the result is the max of v[k]'s lanes (the tree leaves
 * v[k + 4m]'s in lane 4k + m; a permutation puts them in order). */
REDUCE16(max16_tree, v16_max)
static inline f32x16 max16(const f32x16 *v) {
  return v16_permute(i16_setr(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), max16_tree(v));
}

/* out [rows, n] = in [rows, n] bf16 widened to float32 (exactly, as torch's .float()), and maxima [rows, n / 16]
 * each 16-wide block's max, NaN counted as +inf (either makes the learned step refuse the row): one pass over
 * the LM head's bf16 logits that spares the learned step's each read of a float32 row for its max and live
 * blocks. Sixteen blocks' maxima at a time come from one tree of maxes (max16). */
long autodeco_widen_bf16(const uint16_t *in, float *out, float *maxima, long rows, long n) {
  long per_row = n / LANES, chunks = per_row / LANES;
  int threads = rows * n < (1L << 15) ? 1 : omp_get_max_threads();
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long r = 0; r < rows; r++) {
    const uint16_t *src = in + r * n;
    float *dst = out + r * n, *m = maxima + r * per_row;
    const f32x16 inf = v16_set1(__builtin_inff());
    for (long c = 0; c < chunks; c++) {
      f32x16 v[LANES];
      for (int j = 0; j < LANES; j++) {
        long at = (c * LANES + j) * LANES;
        f32x16 x = v16_from_bf16(src + at);
        v16_store(dst + at, x);
        v[j] = v16_mask_mov(x, v16_cmp(x, x, _CMP_UNORD_Q), inf);
      }
      v16_store(m + c * LANES, max16(v));
    }
    for (long b = chunks * LANES; b < per_row; b++) {
      float max = -__builtin_inff();
      for (int j = 0; j < LANES; j++) {
        uint32_t bits = (uint32_t)src[b * LANES + j] << 16;
        float x = as_float(bits);
        dst[b * LANES + j] = x;
        max = x != x ? __builtin_inff() : (x > max ? x : max);
      }
      m[b] = max;
    }
    for (long i = per_row * LANES; i < n; i++) dst[i] = as_float((uint32_t)src[i] << 16);
  }
  return 0;
}
