/* What the C kernels of memgrid/fast/csrc share: the REAL type of a build, exp, tanh, sigmoid
 * and the normal distribution function (GELU's) in plain arithmetic, the small products on registers and their weight gradients,
 * the mask's first started step, the optimizer's update and the readout's part of a
 * training step. cells.c (RNN, LSTM, GRU) and diagonal.c (the diagonal cells) include it; every
 * function is static, so each build has its own copy. */
#ifndef MEMGRID_COMMON_H
#define MEMGRID_COMMON_H
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

/* exp(y) for |y| <= 80, by range reduction and a polynomial, in plain arithmetic so that the
 * compiler vectorizes it; tanh(a) = (e - 1) / (e + 1) with e = exp(2a), sigmoid(a) =
 * 1 / (1 + exp(-a)). Absolute error: ~1e-7 (float), ~1e-16 (double), as float rounding of the
 * functions themselves near +-1. */
static inline REAL exp_(REAL y) {
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
    return p * s;
}

static inline REAL tanh_(REAL a) {
    REAL y = a > 20 ? 20 : (a < -20 ? -20 : a);
    REAL e = exp_(2 * y);
    return (e - 1) / (e + 1);
}

static inline REAL sigm_(REAL a) {
    REAL y = a > 80 ? 80 : (a < -80 ? -80 : a);        /* sigmoid(-80) = 2e-35 */
    return 1 / (1 + exp_(-y));
}

/* Phi(f) = (1 + erf(f / sqrt 2)) / 2, the normal distribution function (exact GELU is f Phi(f)),
 * in plain arithmetic: with a = |f| / sqrt 2, erfc(a) = exp(-a^2) R(a), and R (erfcx) a
 * polynomial in t = (a - 2) / (a + 2), the Chebyshev interpolant of erfcx on a in [0, 6] (double,
 * degree 18) or [0, 4.5] (float, degree 8) in powers of t, computed at 50 digits; past those a,
 * erfc(a) / 2 is below the type's resolution at 1 and taken as 0. Absolute error: ~1e-7 (float),
 * ~4e-16 (double). */
static const double PHI_R64[19] = {
    0.25539567631050567819, -0.42718584741396844366, 0.24165819424248841519,
    -0.078978581014514443667, 0.0037328924037371263606, 0.0069974616957490915449,
    -0.0008471432692713995463, -0.00098197633993106665625, 0.000043556383312241366983,
    0.00017435576719854634107, 0.000027515317118999834415, -0.000027560014780430619619,
    -0.000013905270202521905397, 1.3769617051341949905e-6, 3.5948379967050097133e-6,
    1.0906179544364116756e-6, -2.7033114860953208694e-7, -2.6309014605978400837e-7,
    -5.3455270212448943529e-8,
};
static const double PHI_R32[9] = {
    0.2553956824273425108, -0.427185785633967632, 0.24165762108455637291,
    -0.078981567951784544229, 0.0037386845393790879725, 0.007036095781790940524,
    -0.0008257102687737389987, -0.0011060651090752301593, -0.0002035987102726958206,
};
static inline REAL phi_(REAL f) {
    const int dbl = sizeof(REAL) == 8;
    const REAL top = dbl ? 6 : (REAL)4.5, a0 = (f < 0 ? -f : f) * (REAL)0.70710678118654752440;
    const REAL a = a0 > top ? top : a0;
    const REAL t = (a - 2) / (a + 2);
    REAL p = 0;
    if (dbl)
        for (int k = 18; k >= 0; k--) p = p * t + (REAL)PHI_R64[k];
    else
        for (int k = 8; k >= 0; k--) p = p * t + (REAL)PHI_R32[k];
    const REAL q = a0 > top ? 0 : (REAL)0.5 * exp_(-(a * a)) * p;          /* erfc(a) / 2 */
    return f >= 0 ? 1 - q : q;
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
/* KEEP(s): a scalar made opaque to the compiler, so that it is rounded on its own and never
 * fused into a multiply-add (the optimizer's updates, in torch's roundings).
 * KEEPV(v): keeps a loaded vector in a register (without it gcc loads it again for every use),
 * only where one register holds the 64 bytes (AVX-512); elsewhere gcc splits each vector into
 * the machine's own, lane by lane (on AVX2, HALVES below does it by hand), which changes no
 * sum: a vector, in registers or not, is the same 16 floats (8 doubles) on every machine. */
#if defined(__GNUC__) && defined(__x86_64__)
#define KEEP(s) __asm__("" : "+v"(s))
#elif defined(__GNUC__) && defined(__aarch64__)
#define KEEP(s) __asm__("" : "+w"(s))
#else
#define KEEP(s) (void)0
#endif
#if defined(__GNUC__) && defined(__x86_64__) && defined(__AVX512F__)
#define KEEPV(v) __asm__("" : "+v"(v))
#else
#define KEEPV(v) (void)0
#endif

/* AVX2 without AVX-512 (most laptops; AMD before Zen 4): gcc lowers the 64-byte vectors above
 * to spills and lane shuffles: its products 5-20x below what the halves get
 * (benchmarks/products.c), a training step 2.4-7.8x (benchmarks/throughput.py --vectors). There the blocks below hold each vector as its two 32-byte halves, in blocks
 * small enough that their sums stay in the 16 registers, with explicit fused multiply-adds (the
 * one rounding per product that the 64-byte vectors get): every element is summed in the same
 * order and the same roundings, so the numbers are bitwise those of the 64-byte vectors
 * (tests/test_kernels.py builds both). -DMEMGRID_NO_HALVES builds the 64-byte vectors. */
#if defined(__GNUC__) && defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__) && \
    !defined(__AVX512F__) && !defined(MEMGRID_NO_HALVES)
#define HALVES 1
#include <immintrin.h>
#define IS_float 1
#define IS_double 2
#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
typedef REAL hvec __attribute__((vector_size(32)));
typedef REAL hvecu __attribute__((vector_size(32), aligned(sizeof(REAL))));
#define HL ((int)(32 / sizeof(REAL)))
static inline hvec hld(const REAL *p) { return *(const hvecu *)p; }
static inline void hst(REAL *p, hvec v) { *(hvecu *)p = v; }
#if CAT(IS_, REAL) == IS_float
static inline hvec hbc(REAL s) { return (hvec)_mm256_set1_ps(s); }
static inline hvec hfma(hvec a, hvec b, hvec c) {     /* a * b + c, rounded once */
    return (hvec)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
}
#else
static inline hvec hbc(REAL s) { return (hvec)_mm256_set1_pd(s); }
static inline hvec hfma(hvec a, hvec b, hvec c) {
    return (hvec)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)c);
}
#endif
#endif

/* O[o][b] = init[o] + sum_s A[o][s] X[s][b] for o < nout, A (nout, ns) contiguous. The scalar
 * loop does the columns after the last whole block. */
#define GEMM_TAIL(NR)                                                                          \
    for (; b0 < B; b0++)                                                                       \
        for (int q = 0; q < NR; q++) {                                                         \
            REAL a = init ? init[q] : 0;                                                       \
            for (int s = 0; s < ns; s++) a += A[q * ns + s] * X[s][b0];                        \
            O[q][b0] = a;                                                                      \
        }
#ifdef HALVES
/* a block of BW columns as two of 2 halves each: NR rows x 2 halves of sums in registers */
#define GEMM_ROWS(NR)                                                                          \
    static inline void gemm_rows##NR(const REAL *A, int ns, const REAL *init,                  \
                                     const REAL *const *X, REAL *const *O, int B) {            \
        int b0 = 0;                                                                            \
        for (; b0 + BW <= B; b0 += BW)                                                         \
            for (int c0 = b0; c0 < b0 + BW; c0 += 2 * HL) {                                    \
                hvec a0[NR], a1[NR];                                                           \
                for (int q = 0; q < NR; q++) a0[q] = a1[q] = hbc(init ? init[q] : 0);         \
                for (int s = 0; s < ns; s++) {                                                 \
                    hvec x0 = hld(X[s] + c0), x1 = hld(X[s] + c0 + HL);                        \
                    for (int q = 0; q < NR; q++) {                                             \
                        hvec w = hbc(A[q * ns + s]);                                           \
                        a0[q] = hfma(w, x0, a0[q]);                                            \
                        a1[q] = hfma(w, x1, a1[q]);                                            \
                    }                                                                          \
                }                                                                              \
                for (int q = 0; q < NR; q++) { hst(O[q] + c0, a0[q]); hst(O[q] + c0 + HL, a1[q]); } \
            }                                                                                  \
        GEMM_TAIL(NR)                                                                          \
    }
#else
#define GEMM_ROWS(NR)                                                                          \
    static inline void gemm_rows##NR(const REAL *A, int ns, const REAL *init,                  \
                                     const REAL *const *X, REAL *const *O, int B) {            \
        int b0 = 0;                                                                            \
        for (; b0 + BW <= B; b0 += BW) {                                                       \
            vec a0[NR], a1[NR];                                                                \
            for (int q = 0; q < NR; q++) a0[q] = a1[q] = bc(init ? init[q] : 0);              \
            for (int s = 0; s < ns; s++) {                                                     \
                vec x0 = ld(X[s] + b0), x1 = ld(X[s] + b0 + VL);                               \
                KEEPV(x0);                                                                     \
                KEEPV(x1);                                                                     \
                for (int q = 0; q < NR; q++) {                                                 \
                    vec w = bc(A[q * ns + s]);                                                 \
                    a0[q] += w * x0;                                                           \
                    a1[q] += w * x1;                                                           \
                }                                                                              \
            }                                                                                  \
            for (int q = 0; q < NR; q++) { st(O[q] + b0, a0[q]); st(O[q] + b0 + VL, a1[q]); } \
        }                                                                                      \
        GEMM_TAIL(NR)                                                                          \
    }
#endif
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
 * weight gradient's lane-wise partial sums, in the order of b, then of the calls. The scalar
 * loop adds the columns after the last whole vector. */
#define WGRAD_TAIL(NR, NJ)                                                                     \
    for (; b0 < B; b0++)                                                                       \
        for (int q = 0; q < NR; q++)                                                           \
            for (int u = 0; u < NJ; u++)                                                       \
                acc[((int64_t)q * nj + u) * VL + b0 % VL] += G[q][b0] * Z[u][b0];
#ifdef HALVES
/* each half of the lanes on its own: NR x NJ halves of sums in registers */
#define WGRAD_BLOCK(NR, NJ)                                                                    \
    static inline void wgrad##NR##NJ(const REAL *const *G, const REAL *const *Z, REAL *acc,    \
                                     int nj, int B) {                                          \
        int b0 = 0;                                                                            \
        for (int h = 0; h < VL; h += HL) {                                                     \
            hvec a[NR][NJ];                                                                    \
            for (int q = 0; q < NR; q++)                                                       \
                for (int u = 0; u < NJ; u++) a[q][u] = hld(acc + ((int64_t)q * nj + u) * VL + h); \
            for (b0 = 0; b0 + VL <= B; b0 += VL) {                                             \
                hvec z[NJ], g[NR];                                                             \
                for (int u = 0; u < NJ; u++) z[u] = hld(Z[u] + b0 + h);                        \
                for (int q = 0; q < NR; q++) g[q] = hld(G[q] + b0 + h);                        \
                for (int q = 0; q < NR; q++)                                                   \
                    for (int u = 0; u < NJ; u++) a[q][u] = hfma(g[q], z[u], a[q][u]);         \
            }                                                                                  \
            for (int q = 0; q < NR; q++)                                                       \
                for (int u = 0; u < NJ; u++) hst(acc + ((int64_t)q * nj + u) * VL + h, a[q][u]); \
        }                                                                                      \
        WGRAD_TAIL(NR, NJ)                                                                     \
    }
#define WJ 2                              /* columns of a block: 4 x 2 halves of sums */
#else
#define WGRAD_BLOCK(NR, NJ)                                                                    \
    static inline void wgrad##NR##NJ(const REAL *const *G, const REAL *const *Z, REAL *acc,    \
                                     int nj, int B) {                                          \
        vec a[NR][NJ];                                                                         \
        for (int q = 0; q < NR; q++)                                                           \
            for (int u = 0; u < NJ; u++) a[q][u] = ld(acc + ((int64_t)q * nj + u) * VL);      \
        int b0 = 0;                                                                            \
        for (; b0 + VL <= B; b0 += VL) {                                                       \
            vec z[NJ], g[NR];                                                                  \
            for (int u = 0; u < NJ; u++) { z[u] = ld(Z[u] + b0); KEEPV(z[u]); }                \
            for (int q = 0; q < NR; q++) { g[q] = ld(G[q] + b0); KEEPV(g[q]); }                \
            for (int q = 0; q < NR; q++)                                                       \
                for (int u = 0; u < NJ; u++) a[q][u] += g[q] * z[u];                           \
        }                                                                                      \
        for (int q = 0; q < NR; q++)                                                           \
            for (int u = 0; u < NJ; u++) st(acc + ((int64_t)q * nj + u) * VL, a[q][u]);       \
        WGRAD_TAIL(NR, NJ)                                                                     \
    }
#define WJ 4                              /* columns of a block: 4 x 4 vectors of sums */
#endif
#define WGRAD_BLOCKS(NJ) WGRAD_BLOCK(4, NJ) WGRAD_BLOCK(2, NJ) WGRAD_BLOCK(1, NJ)
#define WGRAD_BLOCKS_(NJ) WGRAD_BLOCKS(NJ)
WGRAD_BLOCKS_(WJ)
WGRAD_BLOCKS(1)
#define WCALL_(NR, NJ) wgrad##NR##NJ
#define WCALL(NR, NJ) WCALL_(NR, NJ)

static void wgrad(int nr, int nj, const REAL *const *G, const REAL *const *Z, REAL *acc, int B) {
    for (int r = 0; r < nr;) {
        const int rows = nr - r >= 4 ? 4 : nr - r >= 2 ? 2 : 1;
        int j = 0;
        for (; j + WJ <= nj; j += WJ) {
            REAL *ar = acc + ((int64_t)r * nj + j) * VL;
            if (rows == 4) WCALL(4, WJ)(G + r, Z + j, ar, nj, B);
            else if (rows == 2) WCALL(2, WJ)(G + r, Z + j, ar, nj, B);
            else WCALL(1, WJ)(G + r, Z + j, ar, nj, B);
        }
        for (; j < nj; j++) {
            REAL *ar = acc + ((int64_t)r * nj + j) * VL;
            if (rows == 4) wgrad41(G + r, Z + j, ar, nj, B);
            else if (rows == 2) wgrad21(G + r, Z + j, ar, nj, B);
            else wgrad11(G + r, Z + j, ar, nj, B);
        }
        r += rows;
    }
}

static REAL *slot(REAL *H, int i, int s, int S, int64_t cb) {   /* h^i (or cell^i) at slot s */
    return H + ((int64_t)i * S + s) * cb;
}

/* A member's first step where one of its sequences has started (mask (P, K, B) as above, mkk
 * the member's column): steps before it are masked for every sequence, so computing them would
 * only add exact zeros. */
static int first_step(int K, int P, int B, const uint8_t *mkk) {
    int t = 0;
    for (; t < P; t++) {
        const uint8_t *mk = mkk + (int64_t)t * K * B;
        int any = 0;
        for (int b = 0; b < B; b++) any |= mk[b];
        if (any) break;
    }
    return t;
}

/* The optimizer of one step, for member k: SGD with momentum, or Adam (adam != 0). Adam's
 * coefficients are those of memgrid.train.PackTrainer._adam, rounded to REAL there. */
typedef struct {
    int adam;
    REAL lr, mom;                   /* SGD */
    REAL w1, step, b2, ob2, c2, eps; /* Adam: 1 - b1, lr / (1 - b1^t), b2, 1 - b2, sqrt(1 - b2^t) */
} Opt;

/* member k's optimizer: SGD at lr[k] with momentum mom[k], or Adam where `adam` holds
 * {b2, 1 - b2, eps, sqrt(1 - b2^t), then per member 1 - b1 and lr / (1 - b1^t)} (mom: b1) */
static inline Opt member_opt(int k, const REAL *lr, const REAL *mom, const REAL *adam) {
    Opt o = {0, lr[k], mom[k], 0, 0, 0, 0, 0, 0};
    if (adam) {
        o.adam = 1;
        o.b2 = adam[0], o.ob2 = adam[1], o.eps = adam[2], o.c2 = adam[3];
        o.w1 = adam[4 + 2 * k], o.step = adam[5 + 2 * k];
    }
    return o;
}

static REAL no_sq;    /* SGD has no second moments: its updates get this, and never touch it */

/* one parameter's update, each product and sum rounded on its own, in torch's order:
 * SGD:  buf = mom buf + g; p -= lr buf
 * Adam: m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g g; p -= step m / (sqrt(v) / c2 + eps) */
static inline void update1(REAL *p, REAL *buf, REAL *sq, REAL g, const Opt *o) {
    if (!o->adam) {
        REAL b = *buf * o->mom;
        KEEP(b);
        b = b + g;
        *buf = b;
        REAL u = b * o->lr;
        KEEP(u);
        *p = *p - u;
        return;
    }
    REAL m = *buf * o->mom, gm = g * o->w1;          /* o->mom holds b1 */
    KEEP(m); KEEP(gm);
    m = m + gm;
    *buf = m;
    REAL gg = g * g;
    KEEP(gg);
    gg = gg * o->ob2;
    KEEP(gg);
    REAL v = *sq * o->b2;
    KEEP(v);
    v = v + gg;
    *sq = v;
    REAL d = sizeof(REAL) == 4 ? (REAL)__builtin_sqrtf((float)v) : (REAL)__builtin_sqrt((double)v);
    d = d / o->c2;
    KEEP(d);
    d = d + o->eps;
    REAL u = m / d;
    KEEP(u);
    u = u * o->step;
    KEEP(u);
    *p = *p - u;
}

static int64_t up16(int64_t n) { return (n + 15) / 16 * 16; }      /* 64-byte multiples */

/* The readout of member k and its part of the step: yhat (B) from the last layer's last
 * state (c, B) (the sum over units, or w_out . h + b_out: out[0] = w_out (K, c), out[1] = b_out
 * (K), summed over j from 0); the gradient of the mean absolute error onto that state, g_out
 * (c, B); with the linear readout, the update of w_out and b_out (their momentum buffers and
 * second moments in bufs, sqs likewise). gy: B REALs of scratch. */
static void readout_member(int B, int c, int linear, REAL *const *out, REAL *const *bufs,
                           REAL *const *sqs, int k, const REAL *last, const REAL *yk, REAL *yh,
                           REAL *gy, REAL *g_out, const Opt *o) {
    REAL *wo = linear ? out[0] + (int64_t)k * c : NULL;
    for (int b = 0; b < B; b++) {          /* the readout, summed over j from 0 */
        REAL a = 0;
        for (int j = 0; j < c; j++) {
            REAL v = linear ? wo[j] * last[(int64_t)j * B + b] : last[(int64_t)j * B + b];
            KEEP(v);
            a = a + v;
        }
        yh[b] = linear ? a + out[1][k] : a;
    }
    /* d mean|yhat - y| / d yhat = sgn(yhat - y) / B */
    const REAL inv = (REAL)1 / B;
    for (int b = 0; b < B; b++) {
        REAL d = yh[b] - yk[b];
        gy[b] = d > 0 ? inv : (d < 0 ? -inv : 0);
    }
    for (int j = 0; j < c; j++) {          /* onto the last states */
        REAL *go = g_out + (int64_t)j * B;
        if (linear) { for (int b = 0; b < B; b++) go[b] = gy[b] * wo[j]; }
        else        { for (int b = 0; b < B; b++) go[b] = gy[b]; }
    }
    if (linear) {                          /* w_out, b_out: the update on their gradients */
        REAL *vo = bufs[0] + (int64_t)k * c, gb = 0;
        REAL *qo = sqs ? sqs[0] + (int64_t)k * c : NULL;
        for (int j = 0; j < c; j++) {
            REAL s = 0;
            for (int b = 0; b < B; b++) s += gy[b] * last[(int64_t)j * B + b];
            update1(wo + j, vo + j, qo ? qo + j : &no_sq, s, o);
        }
        for (int b = 0; b < B; b++) gb += gy[b];
        update1(out[1] + k, bufs[1] + k, sqs ? sqs[1] + k : &no_sq, gb, o);
    }
}

#endif
