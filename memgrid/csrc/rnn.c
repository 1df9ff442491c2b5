/* The packed tanh RNN stack on the CPU, forward and backward through time, one call for all
 * members, layers and steps (memgrid/kernels.py builds and loads this file; models.py calls it).
 *
 * Why: at c = 5..20 a step of a layer is a (c x m+1+c) @ (m+1+c x B) product per member, too
 * small for MKL to run near the machine's rate, and eager PyTorch pays ~5 us of dispatch per op
 * on each of ~8 ops per layer and step. Here a member's whole stack stays in L1/L2, the
 * products keep their sums in vector registers (GCC/Clang vector extensions, no intrinsics),
 * and tanh and the mask are applied in the same pass.
 *
 * Layouts (all contiguous; REAL is float or double, one build each):
 *   W    (K, sum_i c * cols_i)   fused [W_ih | b_ih + b_hh | W_hh] of layer i, rows of cols_i =
 *                                m_i + 1 + c, m_0 = 1, m_i = c; the layers one after another
 *   x    (K, T, B)               inputs, right-aligned
 *   mask (K, P, B)               1 where a sequence has started, for the first P steps
 *   H    (K, L, S, c, B)         states: S = T + 1 keeps all steps (H[.., t + 1] = h_t,
 *                                H[.., 0] = 0); S = 2 keeps two (evaluation, no backward)
 *   gW   like W                  gradients, written (not accumulated)
 *   gx   (K, T, B) or NULL
 *
 * Every member is computed by the same loops whatever K, T or the other members are, and every
 * sum runs in a fixed order, so a member's numbers are bitwise those it gets alone (pack
 * invariance). Padded leading steps are masked to exact zeros and are summed last in
 * backward, so a longer pack adds only exact zeros.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef REAL
#define REAL float
#endif
#ifndef NAME
#define NAME(x) x##_f32
#endif

#if defined(__GNUC__)
#define SIMD _Pragma("GCC ivdep")
#else
#define SIMD
#endif

/* tanh(a) = (e - 1) / (e + 1), e = exp(2a), with exp by range reduction and a polynomial, in
 * plain arithmetic so that the compiler vectorizes it. Absolute error: ~1e-7 (float), ~1e-16
 * (double), as float rounding of tanh itself near +-1. */
#define CLAMP ((REAL)20)
static inline REAL tanh_(REAL a) {
    REAL y = a > CLAMP ? CLAMP : (a < -CLAMP ? -CLAMP : a);
    y = 2 * y;
    REAL n = __builtin_floor(y * (REAL)1.4426950408889634 + (REAL)0.5);
    REAL r = y - n * (REAL)0.693145751953125 - n * (REAL)1.428606820309417232e-06;
    /* exp(r), |r| <= 0.35: Horner over Taylor terms up to r^13 (double) / r^7 (float) */
    REAL p;
    if (sizeof(REAL) == 8) {
        p = (REAL)1 / 6227020800 * r + (REAL)1 / 479001600;
        p = p * r + (REAL)1 / 39916800;
        p = p * r + (REAL)1 / 3628800;
        p = p * r + (REAL)1 / 362880;
        p = p * r + (REAL)1 / 40320;
        p = p * r + (REAL)1 / 5040;
    } else {
        p = (REAL)1 / 5040;
    }
    p = p * r + (REAL)1 / 720;
    p = p * r + (REAL)1 / 120;
    p = p * r + (REAL)1 / 24;
    p = p * r + (REAL)1 / 6;
    p = p * r + (REAL)0.5;
    p = p * r + 1;
    p = p * r + 1;
    REAL s;
    if (sizeof(REAL) == 8) {
        int64_t bits = ((int64_t)n + 1023) << 52;
        memcpy(&s, &bits, sizeof s);
    } else {
        int32_t bits = ((int32_t)n + 127) << 23;
        memcpy(&s, &bits, sizeof s);
    }
    REAL e = p * s;
    return (e - 1) / (e + 1);
}

/* tanh of n values, for the tests */
void NAME(memgrid_tanh)(const REAL *a, REAL *out, int64_t n) {
    SIMD for (int64_t i = 0; i < n; i++) out[i] = tanh_(a[i]);
}

/* ------------------------------------------------------------------------------------------
 * Small products on registers. A vector is 64 bytes (16 floats, 8 doubles); a block of output
 * is NR rows x 2 vectors of batch columns, its sums kept in registers over the whole reduction.
 * Each output element is summed in the order of the reduction index, whatever the block. */

typedef REAL vec __attribute__((vector_size(64)));
typedef REAL vecu __attribute__((vector_size(64), aligned(sizeof(REAL))));
#define VL ((int)(64 / sizeof(REAL)))
#define BW (2 * VL)                      /* batch columns per block */
static inline vec ld(const REAL *p) { return *(const vecu *)p; }
static inline void st(REAL *p, vec v) { *(vecu *)p = v; }
static inline vec bc(REAL s) { return (vec){0} + s; }
/* keeps a loaded vector in a register: without it gcc loads it again for every use */
#if defined(__GNUC__) && defined(__x86_64__)
#define KEEP(v) __asm__("" : "+v"(v))
#elif defined(__GNUC__) && defined(__aarch64__)
#define KEEP(v) __asm__("" : "+w"(v))
#else
#define KEEP(v) (void)0
#endif

/* O[o][b] = init[o] + sum_s A[o][s] X[s][b] for o < nout, A (nout, ns) contiguous. */
#define GEMM_ROWS(NR)                                                                          \
    static inline void gemm_rows##NR(const REAL *A, int ns, const REAL *init,                  \
                                     const REAL *const *X, REAL *const *O, int B) {            \
        int b0 = 0;                                                                            \
        for (; b0 + BW <= B; b0 += BW) {                                                       \
            vec a0[NR], a1[NR];                                                                \
            for (int q = 0; q < NR; q++) a0[q] = a1[q] = bc(init ? init[q] : 0);              \
            for (int s = 0; s < ns; s++) {                                                     \
                vec x0 = ld(X[s] + b0), x1 = ld(X[s] + b0 + VL);                               \
                KEEP(x0);                                                                      \
                KEEP(x1);                                                                      \
                for (int q = 0; q < NR; q++) {                                                 \
                    vec w = bc(A[q * ns + s]);                                                 \
                    a0[q] += w * x0;                                                           \
                    a1[q] += w * x1;                                                           \
                }                                                                              \
            }                                                                                  \
            for (int q = 0; q < NR; q++) { st(O[q] + b0, a0[q]); st(O[q] + b0 + VL, a1[q]); } \
        }                                                                                      \
        for (; b0 < B; b0++)                                                                   \
            for (int q = 0; q < NR; q++) {                                                     \
                REAL a = init ? init[q] : 0;                                                   \
                for (int s = 0; s < ns; s++) a += A[q * ns + s] * X[s][b0];                    \
                O[q][b0] = a;                                                                  \
            }                                                                                  \
    }
GEMM_ROWS(4)
GEMM_ROWS(2)
GEMM_ROWS(1)

static void gemm(int nout, int ns, const REAL *A, const REAL *init, const REAL *const *X,
                 REAL *const *O, int B) {
    int o = 0;
    for (; o + 4 <= nout; o += 4) gemm_rows4(A + (int64_t)o * ns, ns, init ? init + o : 0, X, O + o, B);
    for (; o + 2 <= nout; o += 2) gemm_rows2(A + (int64_t)o * ns, ns, init ? init + o : 0, X, O + o, B);
    for (; o < nout; o++) gemm_rows1(A + (int64_t)o * ns, ns, init ? init + o : 0, X, O + o, B);
}

/* acc[r][j][lane] += sum over b = lane (mod VL) of G[r][b] Z[j][b], for r < nr, j < nj: the
 * weight gradient's lane-wise partial sums, in the order of b, then of the calls. */
#define WGRAD_BLOCK(NR, NJ)                                                                    \
    static inline void wgrad##NR##NJ(const REAL *const *G, const REAL *const *Z, REAL *acc,    \
                                     int nj, int B) {                                          \
        vec a[NR][NJ];                                                                         \
        for (int q = 0; q < NR; q++)                                                           \
            for (int u = 0; u < NJ; u++) a[q][u] = ld(acc + ((int64_t)q * nj + u) * VL);      \
        int b0 = 0;                                                                            \
        for (; b0 + VL <= B; b0 += VL) {                                                       \
            vec z[NJ], g[NR];                                                                  \
            for (int u = 0; u < NJ; u++) { z[u] = ld(Z[u] + b0); KEEP(z[u]); }                \
            for (int q = 0; q < NR; q++) { g[q] = ld(G[q] + b0); KEEP(g[q]); }                \
            for (int q = 0; q < NR; q++)                                                       \
                for (int u = 0; u < NJ; u++) a[q][u] += g[q] * z[u];                           \
        }                                                                                      \
        for (int q = 0; q < NR; q++)                                                           \
            for (int u = 0; u < NJ; u++) st(acc + ((int64_t)q * nj + u) * VL, a[q][u]);       \
        for (; b0 < B; b0++)                                                                   \
            for (int q = 0; q < NR; q++)                                                       \
                for (int u = 0; u < NJ; u++)                                                   \
                    acc[((int64_t)q * nj + u) * VL + b0 % VL] += G[q][b0] * Z[u][b0];          \
    }
WGRAD_BLOCK(4, 4)
WGRAD_BLOCK(4, 1)
WGRAD_BLOCK(2, 4)
WGRAD_BLOCK(2, 1)
WGRAD_BLOCK(1, 4)
WGRAD_BLOCK(1, 1)

static void wgrad(int nr, int nj, const REAL *const *G, const REAL *const *Z, REAL *acc, int B) {
    int r = 0;
    for (; r + 4 <= nr; r += 4) {
        int j = 0;
        for (; j + 4 <= nj; j += 4) wgrad44(G + r, Z + j, acc + ((int64_t)r * nj + j) * VL, nj, B);
        for (; j < nj; j++) wgrad41(G + r, Z + j, acc + ((int64_t)r * nj + j) * VL, nj, B);
    }
    for (; r + 2 <= nr; r += 2) {
        int j = 0;
        for (; j + 4 <= nj; j += 4) wgrad24(G + r, Z + j, acc + ((int64_t)r * nj + j) * VL, nj, B);
        for (; j < nj; j++) wgrad21(G + r, Z + j, acc + ((int64_t)r * nj + j) * VL, nj, B);
    }
    for (; r < nr; r++) {
        int j = 0;
        for (; j + 4 <= nj; j += 4) wgrad14(G + r, Z + j, acc + ((int64_t)r * nj + j) * VL, nj, B);
        for (; j < nj; j++) wgrad11(G + r, Z + j, acc + ((int64_t)r * nj + j) * VL, nj, B);
    }
}

/* ------------------------------------------------------------------------------------------ */

static int64_t layer_offset(int i, int c) {  /* start of layer i's fused weights in a member */
    return i == 0 ? 0 : (int64_t)c * (2 + c) + (int64_t)(i - 1) * c * (2 * c + 1);
}

/* Layer i's weights split for the products: A (c, m + c) = [W_ih | W_hh], bias (c),
 * At (m + c, c) = A transposed. */
static void split_weights(const REAL *W, int m, int c, REAL *A, REAL *bias, REAL *At) {
    int cols = m + 1 + c, n = m + c;
    for (int r = 0; r < c; r++) {
        bias[r] = W[(int64_t)r * cols + m];
        for (int j = 0; j < n; j++) {
            REAL w = W[(int64_t)r * cols + (j < m ? j : j + 1)];
            A[(int64_t)r * n + j] = w;
            if (At) At[(int64_t)j * c + r] = w;
        }
    }
}

static REAL *state(REAL *H, int i, int s, int S, int64_t cb) {   /* h^i at slot s */
    return H + ((int64_t)i * S + s) * cb;
}

static int64_t split_size(int c) { return (int64_t)c * 2 * c + c + (int64_t)2 * c * c; }

int NAME(memgrid_rnn_forward)(int K, int L, int T, int P, int B, int c, int S,
                              const REAL *W, const REAL *x, const REAL *mask, REAL *H) {
    const int64_t wk = layer_offset(L, c), cb = (int64_t)c * B, ws = split_size(c);
    REAL *A = malloc(sizeof(REAL) * ws * L);
    const REAL **X = malloc(sizeof(REAL *) * 2 * c);
    REAL **O = malloc(sizeof(REAL *) * c);
    if (!A || !X || !O) { free(A); free(X); free(O); return 1; }
    for (int k = 0; k < K; k++) {
        const REAL *Wk = W + k * wk, *xk = x + (int64_t)k * T * B, *mkk = mask + (int64_t)k * P * B;
        REAL *Hk = H + (int64_t)k * L * S * cb;
        for (int i = 0; i < L; i++) {
            int m = i == 0 ? 1 : c;
            split_weights(Wk + layer_offset(i, c), m, c, A + i * ws, A + i * ws + (int64_t)c * (m + c), NULL);
            memset(state(Hk, i, 0, S, cb), 0, sizeof(REAL) * cb);                 /* h_{-1} = 0 */
        }
        for (int t = 0; t < T; t++) {            /* the layers advance together, so that two */
            int sp = S == 2 ? t % 2 : t, so = S == 2 ? (t + 1) % 2 : t + 1;   /* slots do */
            const REAL *mk = t < P ? mkk + (int64_t)t * B : NULL;
            for (int i = 0; i < L; i++) {
                const int m = i == 0 ? 1 : c;
                const REAL *hp = state(Hk, i, sp, S, cb);
                const REAL *in = i == 0 ? xk + (int64_t)t * B : state(Hk, i - 1, so, S, cb);
                REAL *h = state(Hk, i, so, S, cb);
                for (int j = 0; j < m; j++) X[j] = in + (int64_t)j * B;
                for (int j = 0; j < c; j++) X[m + j] = hp + (int64_t)j * B;
                for (int r = 0; r < c; r++) O[r] = h + (int64_t)r * B;
                gemm(c, m + c, A + i * ws, A + i * ws + (int64_t)c * (m + c), X, O, B);
                for (int64_t e = 0; e < cb; e += B) {
                    REAL *o = h + e;
                    if (mk) { SIMD for (int b = 0; b < B; b++) o[b] = tanh_(o[b]) * mk[b]; }
                    else    { SIMD for (int b = 0; b < B; b++) o[b] = tanh_(o[b]); }
                }
            }
        }
    }
    free(A); free(X); free(O);
    return 0;
}

/* Backward through time. g_out (K, c, B): gradient on the last layer's last state.
 * tbptt > 0 stops the gradient between steps t - 1 and t where (T - t) % tbptt == 0. */
int NAME(memgrid_rnn_backward)(int K, int L, int T, int P, int B, int c, int tbptt,
                               const REAL *W, const REAL *x, const REAL *mask, const REAL *H,
                               const REAL *g_out, REAL *gW, REAL *gx) {
    const int64_t wk = layer_offset(L, c), cb = (int64_t)c * B, S = T + 1, ws = split_size(c);
    const int cmax = 2 * c + 1;
    REAL *G = malloc(sizeof(REAL) * (T * cb + 2 * cb + B + (int64_t)c * cmax * VL + ws));
    const REAL **Z = malloc(sizeof(REAL *) * (cmax + c));
    REAL **O = malloc(sizeof(REAL *) * 2 * c);
    if (!G || !Z || !O) { free(G); free(Z); free(O); return 1; }
    const REAL **Gp = Z + cmax;
    REAL *gp = G + T * cb, *grec = gp + cb, *ones = grec + cb, *acc = ones + B, *A = acc + (int64_t)c * cmax * VL;
    for (int b = 0; b < B; b++) ones[b] = 1;
    for (int r = 0; r < c; r++) Gp[r] = gp + (int64_t)r * B;
    for (int k = 0; k < K; k++) {
        const REAL *Wk = W + k * wk, *xk = x + (int64_t)k * T * B, *mkk = mask + (int64_t)k * P * B;
        const REAL *Hk = H + (int64_t)k * L * S * cb;
        REAL *gWk = gW + k * wk;
        for (int i = L - 1; i >= 0; i--) {
            const int m = i == 0 ? 1 : c, cols = m + 1 + c;
            REAL *At = A + (int64_t)c * (m + c) + c;
            split_weights(Wk + layer_offset(i, c), m, c, A, A + (int64_t)c * (m + c), At);
            const REAL *Hi = Hk + (int64_t)i * S * cb;
            const REAL *Hin = i > 0 ? Hk + (int64_t)(i - 1) * S * cb : NULL;
            memset(acc, 0, sizeof(REAL) * c * cols * VL);
            int have_rec = 0;
            for (int t = T - 1; t >= 0; t--) {
                /* gradient on h_t: from the layer above (G[t]), the next step, the output */
                const REAL *ga = i < L - 1 ? G + (int64_t)t * cb : NULL;
                const REAL *go = (i == L - 1 && t == T - 1) ? g_out + (int64_t)k * cb : NULL;
                REAL *gxt = (i == 0 && gx) ? gx + (int64_t)k * T * B + (int64_t)t * B : NULL;
                if (!ga && !go && !have_rec) {            /* nothing reaches this step */
                    if (i > 0) memset(G + (int64_t)t * cb, 0, sizeof(REAL) * cb);
                    else if (gxt) memset(gxt, 0, sizeof(REAL) * B);
                    continue;
                }
                const REAL *h = Hi + (int64_t)(t + 1) * cb;
                const REAL *mk = t < P ? mkk + (int64_t)t * B : NULL;
                for (int64_t e = 0; e < cb; e += B) {     /* gp = gh (1 - h^2) mask */
                    const REAL *ga_ = ga ? ga + e : NULL, *go_ = go ? go + e : NULL, *gr = grec + e;
                    const REAL *he = h + e;
                    REAL *g = gp + e;
                    SIMD for (int b = 0; b < B; b++) {
                        REAL s = (ga_ ? ga_[b] : 0) + (go_ ? go_[b] : 0) + (have_rec ? gr[b] : 0);
                        REAL d = s * (1 - he[b] * he[b]);
                        g[b] = mk ? d * mk[b] : d;
                    }
                }
                /* weight gradient, columns [input; 1; h_{t-1}] */
                const REAL *in = i == 0 ? xk + (int64_t)t * B : Hin + (int64_t)(t + 1) * cb;
                const REAL *hp = Hi + (int64_t)t * cb;
                for (int j = 0; j < m; j++) Z[j] = in + (int64_t)j * B;
                Z[m] = ones;
                for (int j = 0; j < c; j++) Z[m + 1 + j] = hp + (int64_t)j * B;
                wgrad(c, cols, Gp, Z, acc, B);
                /* gradients on the input (G[t] for the layer below, or gx) and on h_{t-1} */
                int cut = tbptt > 0 && t > 0 && (T - t) % tbptt == 0, rec = !cut && t > 0;
                int need_in = i > 0 || gxt;
                for (int j = 0; j < m; j++) O[j] = i > 0 ? G + (int64_t)t * cb + (int64_t)j * B : gxt;
                for (int j = 0; j < c; j++) O[m + j] = grec + (int64_t)j * B;
                if (need_in && rec) gemm(m + c, c, At, NULL, Gp, O, B);
                else if (need_in) gemm(m, c, At, NULL, Gp, O, B);
                else if (rec) gemm(c, c, At + (int64_t)m * c, NULL, Gp, O + m, B);
                have_rec = rec;
            }
            REAL *gWi = gWk + layer_offset(i, c);
            for (int64_t e = 0; e < (int64_t)c * cols; e++) {
                REAL s = 0;
                for (int l = 0; l < VL; l++) s += acc[e * VL + l];
                gWi[e] = s;
            }
        }
    }
    free(G); free(Z); free(O);
    return 0;
}
