/* An LSD radix sort of 32-bit keys, ascending: 3 passes of 11 bits. Callers map their floats to keys whose order is
 * the one they want, count each key as they make it (radix_count), sort, and map back (the learned step's
 * descending probabilities, the soft top-p loss's descending logits). Included into a kernel's one source by
 * core/kernel_build.py; needs <stdint.h> and <string.h>. */
#define RADIX_BITS 11
#define RADIX_BUCKETS (1 << RADIX_BITS)
#define RADIX_MASK (RADIX_BUCKETS - 1)

typedef uint32_t radix_counts_t[3][RADIX_BUCKETS];

static inline void radix_count(radix_counts_t counts, uint32_t key) {
  counts[0][key & RADIX_MASK]++;
  counts[1][(key >> RADIX_BITS) & RADIX_MASK]++;
  counts[2][key >> (2 * RADIX_BITS)]++;
}

/* keys[0..n), each counted into `counts` (zeroed before), sorted ascending through `spare` ([n]); returns which of
 * the two buffers holds them (three passes: `spare`). */
static uint32_t *radix_sort(uint32_t *keys, uint32_t *spare, long n, radix_counts_t counts) {
  for (int pass = 0; pass < 3; pass++) {
    uint32_t total = 0;
    for (int d = 0; d < RADIX_BUCKETS; d++) {
      uint32_t c = counts[pass][d];
      counts[pass][d] = total;
      total += c;
    }
    int shift = pass * RADIX_BITS;
    for (long i = 0; i < n; i++) spare[counts[pass][(keys[i] >> shift) & RADIX_MASK]++] = keys[i];
    uint32_t *t = keys;
    keys = spare;
    spare = t;
  }
  return keys;
}
