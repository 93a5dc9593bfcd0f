/* The largest of a row's values: a partial selection of the k largest (Wirth's), offered a block at a time, and a
 * full descending sort of non-negative floats for rows whose k largest do not settle the question (included into
 * the kernel's one source by core/kernel_build.py). Needs BLOCK, as_float and as_bits (cephes_f32.h), radix_sort.h,
 * lanes16.h, <stdint.h> and <string.h>. */

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

/* Keeps buffer[0..*held) to the k largest so far once it holds 2k (*threshold: the k-th of them). */
static void settle(long k, float *buffer, long *held, float *threshold) {
  if (*held < 2 * k) return;
  select_largest(buffer, *held, k);
  *held = k;
  float smallest = buffer[0];
  for (long i = 1; i < k; i++) smallest = buffer[i] < smallest ? buffer[i] : smallest;
  *threshold = smallest;
}

/* The k largest offered so far: among buffer[0..held) (2k + BLOCK floats), all above threshold once k are held. */
typedef struct {
  float *buffer, threshold;
  long k, held;
} offered_t;

/* Offers the 16 values at v to the k largest so far, buffer[0..*held) (2k + BLOCK floats), once k are held: those
 * above *threshold, by one compare and a compressing store (the pass it replaced, a horizontal max per block and a
 * branch per value, timed at ~45% of the cut). Inlined into the loops over a row's blocks. */
static inline __attribute__((always_inline)) void offer16(const float *v, long k, float *buffer, long *held,
                                                          float *threshold) {
  f32x16 values = v16_load(v);
  mask16 above = v16_cmp(values, v16_set1(*threshold), _CMP_GT_OQ);
  if (!above) return;
  v16_compress_store(buffer + *held, above, values);
  *held += __builtin_popcount(above);
  settle(k, buffer, held, threshold);
}

/* Offers values[start..end) likewise: every value while fewer than k are held (the threshold is -inf until then),
 * then 16 at a time, then the rest one by one. */
static void offer(const float *values, long start, long end, long k, float *buffer, long *held, float *threshold) {
  long i = start;
  for (; i < end && *held < k; i++) buffer[(*held)++] = values[i];
  settle(k, buffer, held, threshold);
  for (; i + 16 <= end; i += 16) offer16(values + i, k, buffer, held, threshold);
  for (; i < end; i++)
    if (values[i] > *threshold) {
      buffer[(*held)++] = values[i];
      settle(k, buffer, held, threshold);
    }
}

/* Offers values[start..end) to `offered`. */
static inline __attribute__((always_inline)) void offer_to(offered_t *offered, const float *values, long start,
                                                           long end) {
  if (end - start == 16 && offered->held >= offered->k)
    offer16(values + start, offered->k, offered->buffer, &offered->held, &offered->threshold);
  else
    offer(values, start, end, offered->k, offered->buffer, &offered->held, &offered->threshold);
}

/* The k largest of what was offered, sorted descending into top[0..k), +0's after them where fewer were. */
static void take_largest(long k, float *top, float *buffer, long held) {
  if (held > k) select_largest(buffer, held, k);
  for (long i = 0; i < k; i++) top[i] = i < held ? buffer[i] : 0.0f;
  sort_small_descending(top, k);
}

/* The k largest of values[0..n) sorted descending into top[0..k) (n >= k). `buffer` holds
 * 2k + BLOCK floats. */
static void largest(const float *values, long n, long k, float *top, float *buffer) {
  float threshold = -__builtin_inff();
  long held = 0;
  for (long start = 0; start < n; start += BLOCK) offer(values, start, start + BLOCK < n ? start + BLOCK : n, k,
                                                        buffer, &held, &threshold);
  take_largest(k, top, buffer, held);
}

/* Full sort (fallback rows). p >= 0, so its bits order like the values: the complemented bits sorted ascending. */
static void sort_probs_descending(const float *in, float *out, long n, uint32_t *a, uint32_t *b) {
  radix_counts_t counts;
  memset(counts, 0, sizeof(counts));
  for (long i = 0; i < n; i++) radix_count(counts, a[i] = ~as_bits(in[i]));
  const uint32_t *sorted = radix_sort(a, b, n, counts);
  for (long i = 0; i < n; i++) out[i] = as_float(~sorted[i]);
}
