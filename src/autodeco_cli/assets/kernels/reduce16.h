/* Sixteen vectors reduced at once by a lane-wise OP through a transposing tree of 15 OPs (instead of 16 horizontal
 * reductions): lane 4k + m of the result reduces v[k + 4m]'s lanes. REDUCE16(name, OP) defines the function `name`
 * (the decode attention's sums, the learned step's block maxima). Included into a kernel's one source by
 * core/kernel_build.py; needs lanes16.h before it. */

/* OUT[i] = OP of IN[2i] and IN[2i + 1] shuffled two ways, for i < N */
#define REDUCE16_PAIRS(OP, SHUFFLE, OUT, IN, N, LOW, HIGH) \
  for (int i = 0; i < (N); i++)                            \
  (OUT)[i] = OP(SHUFFLE((IN)[2 * i], (IN)[2 * i + 1], LOW), SHUFFLE((IN)[2 * i], (IN)[2 * i + 1], HIGH))

#define REDUCE16(NAME, OP)                                                         \
  static inline f32x16 NAME(const f32x16 *v) {                                     \
    f32x16 t[8], u[4], w[2];                                                       \
    REDUCE16_PAIRS(OP, v16_shuffle_f32x4, t, v, 8, 0x44, 0xEE);                    \
    REDUCE16_PAIRS(OP, v16_shuffle_f32x4, u, t, 4, 0x88, 0xDD);                    \
    REDUCE16_PAIRS(OP, v16_shuffle_ps, w, u, 2, 0x44, 0xEE);                       \
    return OP(v16_shuffle_ps(w[0], w[1], 0x88), v16_shuffle_ps(w[0], w[1], 0xDD)); \
  }
