/* A bf16 decode step's decoder layers and final norm in one call: the same kernel calls, in the same
 * order and with the same arguments, that engine/lean_kernels.KernelLayers makes one by one from Python.
 *
 * Why: at a decode step each layer makes ~9 kernel calls, and from Python each paid 10-20 us of
 * interpreter time whose data the streamed weights had just evicted (reports/engine-speed.md, "The lean
 * body's small ops"): ~3-7 ms of a 32-row step. The kernels are the checked ones (their libraries'
 * functions, handed over as addresses), so the values are theirs bit for bit.
 */
#include <stdint.h>

typedef int (*matmul_fn)(const uint16_t *, const uint16_t *, const uint16_t *, uint16_t *, long, long, long);
typedef int (*norm_fn)(uint16_t *, const uint16_t *, const uint16_t *, uint16_t *, long, long, float, long);
typedef long (*rope_fn)(const uint16_t *, const uint16_t *, const uint16_t *, long, long, const uint16_t *,
                        const uint16_t *, long, uint16_t *, uint16_t *, uint16_t *, long, long, long, long, long, long);
typedef int (*attention_fn)(const uint16_t *, const uint16_t *, const uint16_t *, const uint8_t *, uint16_t *, long,
                            long, long, long, long, long, long, long, float);
typedef long (*silu_fn)(const uint16_t *, const uint16_t *, long, const float *, uint16_t *, long, long);

/* functions[]: the kernels, in this order */
enum { F_MATMUL, F_NORM, F_ROPE, F_ATTENTION, F_SILU, F_COUNT };
/* a layer's fixed fields (pointers to its weights, packed as the AMX kernel packs them; biases may be 0) */
enum { W_IN_NORM, W_POST_NORM, W_QKV, W_QKV_BIAS, W_O, W_O_BIAS, W_GATE_UP, W_GATE_UP_BIAS, W_DOWN, W_DOWN_BIAS,
       W_COUNT };
/* a layer's fields for this step: its cache views after the new column was opened */
enum { C_KEYS, C_VALUES, C_LENGTH, C_SB, C_SH, C_SL, C_COUNT };
/* a layer's floats */
enum { S_IN_EPS, S_POST_EPS, S_SCALING, S_COUNT };
/* sizes[] */
enum { Z_ROWS, Z_HIDDEN, Z_HEADS, Z_KV_HEADS, Z_DIM, Z_INTER, Z_LANES, Z_COS_STRIDE, Z_COUNT };

/* Returns 0; or 1 + 8 * layer + op for the first call that failed (op: 0 q|k|v, 1 o, 2 gate|up, 3 down, the AMX
 * kernel's scratch; 4 a norm, 5 the rotation, 6 the attention), the step then being left half done.
 *
 * hidden [rows, hidden] (the embeddings; becomes the residual stream), normed [rows, hidden] (the final norm's
 * output), scratch of decode_layers_scratch(sizes) values, keep [rows, length] bytes or 0 (no padding). */
int autodeco_decode_layers_bf16(const long *functions, const long *weights, const long *caches, const float *scalars,
                                const long *sizes, long layers, uint16_t *hidden, uint16_t *normed,
                                const uint16_t *cos, const uint16_t *sin, const uint8_t *keep, const float *silu,
                                const uint16_t *final_norm, float final_eps, uint16_t *scratch) {
  matmul_fn matmul = (matmul_fn)functions[F_MATMUL];
  norm_fn norm = (norm_fn)functions[F_NORM];
  rope_fn rope = (rope_fn)functions[F_ROPE];
  attention_fn attention = (attention_fn)functions[F_ATTENTION];
  silu_fn silu_mul = (silu_fn)functions[F_SILU];
  long rows = sizes[Z_ROWS], n = sizes[Z_HIDDEN], H = sizes[Z_HEADS], KVH = sizes[Z_KV_HEADS], D = sizes[Z_DIM];
  long inter = sizes[Z_INTER], lanes = sizes[Z_LANES], cs = sizes[Z_COS_STRIDE], width = (H + 2 * KVH) * D;
  uint16_t *qkv = scratch, *queries = qkv + rows * width, *attended = queries + rows * H * D;
  uint16_t *delta = attended + rows * H * D, *gate_up = delta + rows * n, *act = gate_up + rows * 2 * inter;

  if (norm(hidden, 0, (const uint16_t *)weights[W_IN_NORM], normed, rows, n, scalars[S_IN_EPS], lanes)) return 1 + 4;
  for (long i = 0; i < layers; i++) {
    const long *w = weights + i * W_COUNT, *c = caches + i * C_COUNT;
    const float *s = scalars + i * S_COUNT;
    int fail = 1 + 8 * (int)i;
    uint16_t *keys = (uint16_t *)c[C_KEYS], *values = (uint16_t *)c[C_VALUES];
    long column = (c[C_LENGTH] - 1) * c[C_SL];
    if (matmul(normed, (const uint16_t *)w[W_QKV], (const uint16_t *)w[W_QKV_BIAS], qkv, rows, n, width)) return fail;
    if (rope(qkv, qkv + H * D, qkv + (H + KVH) * D, width, width, cos, sin, cs, queries, keys + column,
             values + column, rows, H, KVH, D, c[C_SB], c[C_SH]))
      return fail + 5;
    if (attention(queries, keys, values, keep, attended, rows, H, KVH, c[C_LENGTH], D, c[C_SB], c[C_SH], c[C_SL],
                  s[S_SCALING]))
      return fail + 6;
    if (matmul(attended, (const uint16_t *)w[W_O], (const uint16_t *)w[W_O_BIAS], delta, rows, H * D, n))
      return fail + 1;
    if (norm(hidden, delta, (const uint16_t *)w[W_POST_NORM], normed, rows, n, s[S_POST_EPS], lanes)) return fail + 4;
    if (matmul(normed, (const uint16_t *)w[W_GATE_UP], (const uint16_t *)w[W_GATE_UP_BIAS], gate_up, rows, n,
               2 * inter))
      return fail + 2;
    silu_mul(gate_up, gate_up + inter, 2 * inter, silu, act, rows, inter);
    if (matmul(act, (const uint16_t *)w[W_DOWN], (const uint16_t *)w[W_DOWN_BIAS], delta, rows, inter, n))
      return fail + 3;
    int last = i + 1 == layers;
    const uint16_t *next = last ? final_norm : (const uint16_t *)weights[(i + 1) * W_COUNT + W_IN_NORM];
    if (norm(hidden, delta, next, normed, rows, n, last ? final_eps : scalars[(i + 1) * S_COUNT + S_IN_EPS], lanes))
      return fail + 4;
  }
  return 0;
}

/* How many bf16 values the scratch holds (q|k|v, queries, attended, a delta, gate|up, SiLU * up). */
long autodeco_decode_layers_scratch(const long *sizes) {
  long rows = sizes[Z_ROWS], H = sizes[Z_HEADS], KVH = sizes[Z_KV_HEADS], D = sizes[Z_DIM];
  return rows * ((H + 2 * KVH) * D + 2 * H * D + sizes[Z_HIDDEN] + 3 * sizes[Z_INTER]);
}
