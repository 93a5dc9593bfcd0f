/* Single-precision exp and log as Cephes' polynomials with explicit fused multiply-adds, for kernels that need the
 * same bits from their vectorised loops and their scalar calls (included into the kernel's one source by
 * core/kernel_build.py). Needs <stdint.h> and <string.h>. */
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
#ifdef __AVX512F__
  e = low ? e - 1.0f : e;
  m = low ? m + m - 1.0f : m - 1.0f;
#else
  /* The same bits as bit masks (x - 0 and m + 0 are exact): gcc 12 keeps these selects as branches on AVX2 and the
   * loops that take a log per lane scalar ("control flow in loop"). AVX-512 keeps the selects, which it vectorises. */
  e = e - as_float(as_bits(1.0f) & -(uint32_t)low);
  m = (m + as_float(as_bits(m) & -(uint32_t)low)) - 1.0f;
#endif
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
