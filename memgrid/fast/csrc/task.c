/* The random memorization task's batch on the CPU, one call for all members (memgrid/task.py
 * builds, loads and calls this file): bitwise what make_batch's PyTorch path computes.
 *
 * Why: the PyTorch path is ~20 small int tensor ops, 0.3-0.45 ms a batch at K = 10, B = 128,
 * T = 15, mostly dispatch. Here every number is a few uint32 ops in loops over B that the
 * compiler vectorizes.
 *
 * Layouts (all contiguous):
 *   spec    (4, K)     int64    rows seed, position p, q_lo, q_hi
 *   x       (T, K, B)  float32  the sequences, right-aligned, zeros before each starts
 *   started (P, K, B)  uint8    1 where a sequence has started, for the first P = T - min(q_lo)
 *                               steps
 *   y       (K, B)     float32  the targets x[T - p_k, k, b]
 *   length  (K, B)     int64    each sequence's q
 * The caller ensures 0 <= P <= T and 1 <= p_k <= T.
 *
 * The hash compositions are those of task.py: key(), the counters' hashes hash32(c + CTR), and
 * uniform(key, step, b[, d]) with the step's and b's hashes shared by all steps d.
 */
#include <stdint.h>

#define CTR 0x85EBCA6Bu /* the offset `uniform` adds to a counter */
#define CHUNK 256       /* sequences per pass: the per-sequence scratch stays in L1 */

/* lowbias32; uint32 arithmetic is the mod 2^32 arithmetic of the PyTorch forms */
static inline uint32_t hash32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    return x ^ (x >> 16);
}

static inline uint32_t key(int64_t seed, uint32_t stream) {
    return hash32(hash32((uint32_t)seed ^ stream) + 0x9E3779B9u);
}

/* (h >> 8) * 2^-24 in float32, exact; h >> 8 < 2^24 fits int32 (a signed convert vectorizes) */
static inline float to_unit(uint32_t h) { return (float)(int32_t)(h >> 8) * 0x1p-24f; }

void memgrid_make_batch(int64_t K, int64_t B, int64_t T, int64_t P,
                        const int64_t *restrict spec, uint32_t stream, uint32_t len_stream,
                        int64_t step, float *restrict x, uint8_t *restrict started,
                        float *restrict y, int64_t *restrict length) {
    const int64_t *seed = spec, *pos = spec + K, *q_lo = spec + 2 * K, *q_hi = spec + 3 * K;
    const uint32_t hs = hash32((uint32_t)step + CTR);
    uint32_t h0[CHUNK];
    int32_t cut[CHUNK];
    for (int64_t k = 0; k < K; k++) {
        const uint32_t kd = hash32(key(seed[k], stream) ^ hs);
        const uint32_t kl = hash32(key(seed[k], len_stream) ^ hs);
        const int64_t lo = q_lo[k], span = q_hi[k] - lo + 1;
        const float fspan = (float)span;
        for (int64_t b0 = 0; b0 < B; b0 += CHUNK) {
            const int n = B - b0 < CHUNK ? (int)(B - b0) : CHUNK;
            int64_t *len = length + k * B + b0;
            for (int i = 0; i < n; i++) {
                const uint32_t hb = hash32((uint32_t)(b0 + i) + CTR);
                h0[i] = hash32(kd ^ hb);
                /* float32 product, as PyTorch's float32 tensor * int64 tensor; truncated */
                const int64_t j = (int64_t)(to_unit(hash32(kl ^ hb)) * fspan);
                const int64_t q = lo + (j < span - 1 ? j : span - 1);
                len[i] = q;
                /* for d in [0, T): d < q <=> d < cut */
                cut[i] = q < 0 ? 0 : (q > T ? (int32_t)T : (int32_t)q);
            }
            for (int64_t t = 0; t < T; t++) {
                const int32_t d = (int32_t)(T - 1 - t); /* distance from the end */
                const uint32_t hd = hash32((uint32_t)d + CTR);
                float *restrict xt = x + (t * K + k) * B + b0;
                if (t < P) {
                    uint8_t *restrict st = started + (t * K + k) * B + b0;
                    for (int i = 0; i < n; i++) {
                        const int s = d < cut[i];
                        st[i] = (uint8_t)s;
                        xt[i] = s ? to_unit(hash32(h0[i] ^ hd)) : 0.0f;
                    }
                } else {
                    for (int i = 0; i < n; i++)
                        xt[i] = to_unit(hash32(h0[i] ^ hd));
                }
            }
            const float *xp = x + ((T - pos[k]) * K + k) * B + b0;
            for (int i = 0; i < n; i++)
                y[k * B + b0 + i] = xp[i];
        }
    }
}
