/* Sixteen float32 (or int32) lanes as one value: an AVX-512 register, or, on CPUs with AVX2 and FMA only, a pair of
 * AVX2 registers. One kernel source then serves both (core/kernel_build.py builds it for the best this CPU has).
 * Every operation is lane-wise IEEE arithmetic or a fixed movement of lanes, and the one horizontal sum takes gcc's
 * tree for _mm512_reduce_add_ps, so a kernel computes the same bits on either. Under AVX-512 each name is the
 * intrinsic itself: that build's code is what it was before this header. Included into a kernel's one source by
 * core/kernel_build.py; needs <immintrin.h> and <stdint.h>. */

typedef uint16_t mask16; /* bit j: lane j */

#ifdef __AVX512F__

typedef __m512 f32x16;
typedef __m512i i32x16;
#define v16_load _mm512_loadu_ps
#define v16_maskz_load _mm512_maskz_loadu_ps
#define v16_store _mm512_storeu_ps
#define v16_set1 _mm512_set1_ps
#define v16_zero _mm512_setzero_ps
#define v16_add _mm512_add_ps
#define v16_mul _mm512_mul_ps
#define v16_max _mm512_max_ps
#define v16_fmadd _mm512_fmadd_ps
#define v16_cmp _mm512_cmp_ps_mask
#define v16_mask_mov _mm512_mask_mov_ps
#define v16_compress_store _mm512_mask_compressstoreu_ps
#define v16_reduce_add _mm512_reduce_add_ps
#define v16_shuffle_f32x4 _mm512_shuffle_f32x4
#define v16_shuffle_ps _mm512_shuffle_ps
#define v16_permute _mm512_permutexvar_ps
#define i16_set1 _mm512_set1_epi32
#define i16_setr _mm512_setr_epi32
#define i16_mullo _mm512_mullo_epi32
#define i16_add _mm512_add_epi32
#define i16_compress_store _mm512_mask_compressstoreu_epi32
/* 16 bf16 at p widened to float32 (exactly: the high half of the bits) */
#define v16_from_bf16(p) \
  _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))

#else /* AVX2 and FMA: lanes 0-7 in lo, 8-15 in hi */

typedef struct {
  __m256 lo, hi;
} f32x16;
typedef struct {
  __m256i lo, hi;
} i32x16;

static inline f32x16 v16_pair(__m256 lo, __m256 hi) {
  f32x16 v = {lo, hi};
  return v;
}
static inline i32x16 i16_pair(__m256i lo, __m256i hi) {
  i32x16 v = {lo, hi};
  return v;
}
/* the lanes of 8 mask bits as all-ones / all-zeros 32-bit lanes */
static inline __m256i lanes_of(unsigned bits) {
  const __m256i each = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)bits), each), each);
}
static inline f32x16 v16_load(const float *p) { return v16_pair(_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)); }
/* masked lanes read as +0 and are not touched in memory, as _mm512_maskz_loadu_ps */
static inline f32x16 v16_maskz_load(mask16 m, const float *p) {
  return v16_pair(_mm256_maskload_ps(p, lanes_of(m & 0xFF)), _mm256_maskload_ps(p + 8, lanes_of(m >> 8)));
}
static inline void v16_store(float *p, f32x16 v) {
  _mm256_storeu_ps(p, v.lo);
  _mm256_storeu_ps(p + 8, v.hi);
}
static inline f32x16 v16_set1(float x) { return v16_pair(_mm256_set1_ps(x), _mm256_set1_ps(x)); }
static inline f32x16 v16_zero(void) { return v16_pair(_mm256_setzero_ps(), _mm256_setzero_ps()); }
static inline f32x16 v16_add(f32x16 a, f32x16 b) {
  return v16_pair(_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi));
}
static inline f32x16 v16_mul(f32x16 a, f32x16 b) {
  return v16_pair(_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi));
}
static inline f32x16 v16_max(f32x16 a, f32x16 b) {
  return v16_pair(_mm256_max_ps(a.lo, b.lo), _mm256_max_ps(a.hi, b.hi));
}
static inline f32x16 v16_fmadd(f32x16 a, f32x16 b, f32x16 c) {
  return v16_pair(_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi));
}
/* a macro: the predicate must be a constant */
#define v16_cmp(a, b, predicate)                                                       \
  __extension__({                                                                      \
    f32x16 a_ = (a), b_ = (b);                                                         \
    (mask16)(_mm256_movemask_ps(_mm256_cmp_ps(a_.lo, b_.lo, predicate)) |              \
             _mm256_movemask_ps(_mm256_cmp_ps(a_.hi, b_.hi, predicate)) << 8);         \
  })
/* lanes of m from a, the others from src */
static inline f32x16 v16_mask_mov(f32x16 src, mask16 m, f32x16 a) {
  return v16_pair(_mm256_blendv_ps(src.lo, a.lo, _mm256_castsi256_ps(lanes_of(m & 0xFF))),
                  _mm256_blendv_ps(src.hi, a.hi, _mm256_castsi256_ps(lanes_of(m >> 8))));
}
/* the lanes of m, in order, to p on */
static inline void v16_compress_store(float *p, mask16 m, f32x16 v) {
  float lanes[16];
  v16_store(lanes, v);
  for (unsigned bits = m; bits; bits &= bits - 1) *p++ = lanes[__builtin_ctz(bits)];
}
static inline void i16_compress_store(void *p, mask16 m, i32x16 v) {
  int32_t lanes[16], *to = (int32_t *)p;
  _mm256_storeu_si256((__m256i *)lanes, v.lo);
  _mm256_storeu_si256((__m256i *)(lanes + 8), v.hi);
  for (unsigned bits = m; bits; bits &= bits - 1) *to++ = lanes[__builtin_ctz(bits)];
}
/* gcc's _mm512_reduce_add_ps: the halves, then the quarters, then lanes 2-3 onto 0-1, then lane 1 onto lane 0 */
static inline float v16_reduce_add(f32x16 v) {
  __m256 half = _mm256_add_ps(v.hi, v.lo);
  __m128 quarter = _mm_add_ps(_mm256_extractf128_ps(half, 1), _mm256_extractf128_ps(half, 0));
  __m128 pairs = _mm_add_ps(quarter, _mm_shuffle_ps(quarter, quarter, _MM_SHUFFLE(1, 0, 3, 2)));
  return _mm_cvtss_f32(pairs) + _mm_cvtss_f32(_mm_shuffle_ps(pairs, pairs, _MM_SHUFFLE(1, 1, 1, 1)));
}
/* 128-bit lanes (a's imm[1:0], a's imm[3:2], b's imm[5:4], b's imm[7:6]), as _mm512_shuffle_f32x4 */
#define v16_shuffle_f32x4(a, b, imm)                                                          \
  __extension__({                                                                             \
    f32x16 a_ = (a), b_ = (b);                                                                \
    v16_pair(_mm256_permute2f128_ps(a_.lo, a_.hi, ((imm) & 3) | (((imm) >> 2) & 3) << 4),     \
             _mm256_permute2f128_ps(b_.lo, b_.hi, (((imm) >> 4) & 3) | (((imm) >> 6) & 3) << 4)); \
  })
/* within each 128-bit lane, as _mm512_shuffle_ps */
#define v16_shuffle_ps(a, b, imm)                                                                  \
  __extension__({                                                                                  \
    f32x16 a_ = (a), b_ = (b);                                                                     \
    v16_pair(_mm256_shuffle_ps(a_.lo, b_.lo, imm), _mm256_shuffle_ps(a_.hi, b_.hi, imm));          \
  })
/* lane j of the result: v's lane index[j] (0-15), as _mm512_permutexvar_ps */
static inline __m256 pick8(f32x16 v, __m256i index) {
  __m256i within = _mm256_and_si256(index, _mm256_set1_epi32(7));
  __m256 high = _mm256_castsi256_ps(_mm256_cmpgt_epi32(index, _mm256_set1_epi32(7)));
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(v.lo, within), _mm256_permutevar8x32_ps(v.hi, within), high);
}
static inline f32x16 v16_permute(i32x16 index, f32x16 v) {
  return v16_pair(pick8(v, index.lo), pick8(v, index.hi));
}
static inline i32x16 i16_set1(int x) { return i16_pair(_mm256_set1_epi32(x), _mm256_set1_epi32(x)); }
static inline i32x16 i16_setr(int a, int b, int c, int d, int e, int f, int g, int h, int i, int j, int k, int l,
                              int m, int n, int o, int p) {
  return i16_pair(_mm256_setr_epi32(a, b, c, d, e, f, g, h), _mm256_setr_epi32(i, j, k, l, m, n, o, p));
}
static inline i32x16 i16_mullo(i32x16 a, i32x16 b) {
  return i16_pair(_mm256_mullo_epi32(a.lo, b.lo), _mm256_mullo_epi32(a.hi, b.hi));
}
static inline i32x16 i16_add(i32x16 a, i32x16 b) {
  return i16_pair(_mm256_add_epi32(a.lo, b.lo), _mm256_add_epi32(a.hi, b.hi));
}
static inline f32x16 v16_from_bf16(const uint16_t *p) {
  __m256i lo = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
  __m256i hi = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p + 8)));
  return v16_pair(_mm256_castsi256_ps(_mm256_slli_epi32(lo, 16)), _mm256_castsi256_ps(_mm256_slli_epi32(hi, 16)));
}

#endif
