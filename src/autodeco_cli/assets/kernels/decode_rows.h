/* What the decode ops kernels (bf16 and float32) share: torch's order for a float row's sum, and how many threads a
 * call's rows get. Needs <omp.h> and <string.h>. */
static inline long ceil_log2(long x) {
  long r = 0;
  while ((1L << r) < x) r++;
  return r;
}

/* torch's cascade_sum of a contiguous fp32 row (vectorized_inner_sum -> row_sum -> multi_row_sum)
 * with vectors of LANES floats (GCC vector types: each + is one IEEE add per lane, like torch's) */
#define TORCH_ROW_SUM(NAME, LANES)                                                                  \
  typedef float NAME##_vec __attribute__((vector_size(4 * LANES)));                                 \
  static inline NAME##_vec NAME##_load(const float *x) {                                            \
    NAME##_vec v;                                                                                   \
    memcpy(&v, x, sizeof v);                                                                        \
    return v;                                                                                       \
  }                                                                                                 \
  static float NAME(const float *x, long n) {                                                       \
    long vectors = n / LANES, ilp_rows = vectors / 4;                                               \
    NAME##_vec acc[4][4], zero = {0};                                                               \
    for (int a = 0; a < 4; a++)                                                                     \
      for (int k = 0; k < 4; k++) acc[a][k] = zero;                                                 \
    long level_power = ceil_log2(ilp_rows) / 4;                                                     \
    if (level_power < 4) level_power = 4;                                                           \
    long level_step = 1L << level_power, level_mask = level_step - 1, i = 0;                        \
    while (i + level_step <= ilp_rows) {                                                            \
      for (long j = 0; j < level_step; ++j, ++i)                                                    \
        for (int k = 0; k < 4; k++) acc[0][k] += NAME##_load(x + (i * 4 + k) * LANES);              \
      for (long j = 1; j < 4; ++j) {                                                                \
        for (int k = 0; k < 4; k++) {                                                               \
          acc[j][k] += acc[j - 1][k];                                                               \
          acc[j - 1][k] = zero;                                                                     \
        }                                                                                           \
        if ((i & (level_mask << (j * level_power))) != 0) break;                                    \
      }                                                                                             \
    }                                                                                               \
    for (; i < ilp_rows; ++i)                                                                       \
      for (int k = 0; k < 4; k++) acc[0][k] += NAME##_load(x + (i * 4 + k) * LANES);                \
    for (int j = 1; j < 4; ++j)                                                                     \
      for (int k = 0; k < 4; k++) acc[0][k] += acc[j][k];                                           \
    NAME##_vec partial = acc[0][0];                                                                 \
    for (long v = ilp_rows * 4; v < vectors; ++v) partial += NAME##_load(x + v * LANES);            \
    for (int k = 1; k < 4; k++) partial += acc[0][k];                                               \
    float total = 0.f;                                                                              \
    for (long k = vectors * LANES; k < n; k++) total += x[k];                                       \
    for (int k = 0; k < LANES; k++) total += partial[k];                                            \
    return total;                                                                                   \
  }

/* Threads for `rows` rows of `per_row` values: one below ~16k values, where a fork costs what it saves. */
static inline int row_threads(long rows, long per_row) {
  long threads = omp_get_max_threads();
  return rows < 2 || rows * per_row < (1L << 14) ? 1 : (int)(threads < rows ? threads : rows);
}

TORCH_ROW_SUM(torch_row_sum8, 8)
TORCH_ROW_SUM(torch_row_sum16, 16)
