/* The diagonal recurrences minGRU, minLSTM, the LRU and the selective SSM, bare and in their
 * published blocks, on the CPU (memgrid/fast/diagonal.py builds this file and calls it): forward and backward through time of every member, layer and step
 * in one call, and a whole training step of a pack in one call, as csrc/cells.c does for the
 * paper's cells, with its products, activations and optimizer (common.h).
 *
 * A layer of c units reads m inputs per step (m = 1 for layer 0, else c); its state is a
 * diagonal recurrence, h_t = a_t * h_{t-1} + b_t, a_t and b_t from the inputs alone
 * (memgrid/cells.py defines the cells; this computes the same to float rounding). minGRU and
 * minLSTM read each gate through an affine map:
 *   mingru  z = sigmoid(P_z), g = g+(P_h); h_t = lerp(h_{t-1}, g, z)
 *   minlstm f = sigmoid(P_f), i = sigmoid(P_i), g = g+(P_h); h_t = h_{t-1} f/(f+i) + g i/(f+i)
 * with g+(p) = p + 1/2 for p >= 0, sigmoid(p) below (Feng et al.'s log-space g), P = W x + b.
 * The LRU's state is complex (real in the LRU with real lambda), its a_t a constant lambda per
 * unit, and it reads its output through a matrix; the SSM's a_t = exp(delta_t A) are selective;
 * the blocks put projections, a convolution, norms and a feedforward or a GLU around minGRU,
 * minLSTM or the LRU (their sections below).
 *
 * Layouts (contiguous; REAL float or double):
 *   W    (K, sum over layers)  each member's parameters in the cell's order, layer after layer
 *                              (mingru, minlstm: per gate z, h / f, i, h w (c, m) then b (c))
 *   x    (T, K, B), mask (P, K, B) uint8, as csrc/cells.c's
 *   H    (K, L, S, c, B)       outputs (minGRU, minLSTM: their states): S = T + 1 (step t at
 *                              t + 1, slot 0 = 0) or 2 (evaluation)
 *   Aux  (K, L, T, aux, B)     what backward needs per layer and step (aux_rows below)
 * Every member is computed by the same loops whatever K, T or the other members are, steps
 * before a member's first started step are not computed, and every sum runs in a fixed order:
 * a member's numbers are bitwise those it gets alone (pack invariance). */
#include <float.h>
#include <math.h>

#include "common.h"

/* Decays far below 1 (exp(delta A) of the selective SSM, |lambda|^t) make products below the
 * smallest normal number, which x86 computes 100 times slower: each exported function flushes
 * them to zero while it runs (FTZ, DAZ), a difference of less than 1e-38 from the definition. */
#if defined(__x86_64__) && defined(__SSE__)
#include <xmmintrin.h>
#define FLUSH_BEGIN unsigned int csr_ = _mm_getcsr(); _mm_setcsr(csr_ | 0x8040)
#define FLUSH_END _mm_setcsr(csr_)
#else
#define FLUSH_BEGIN (void)0
#define FLUSH_END (void)0
#endif

enum { MINGRU = 0, MINLSTM = 1, LRU = 2, MAMBA = 3, S6_BARE = 4, LRU_REAL = 5, MINGRU_BLOCK = 6,
       MINLSTM_BLOCK = 7, LRU_BLOCK = 8, MAMBA_CPLX = 9 };
#define IS_LRU(arch) ((arch) == LRU || (arch) == LRU_REAL)
#define IS_SSM(arch) ((arch) == MAMBA || (arch) == S6_BARE || (arch) == MAMBA_CPLX)
#define IS_BLOCK(arch) ((arch) == MINGRU_BLOCK || (arch) == MINLSTM_BLOCK)

/* What reaches step t of layer i going backward, in every cell's backward: the gradient from
 * the layer above (ga) and from the output (go: the last layer's last step), where the
 * gradient to the layer below goes (gbt), the step's mask (mk, NULL: every sequence started),
 * whether truncated backpropagation cuts the recurrence between steps t - 1 and t (cut), and
 * whether the gradient goes on to step t - 1 (rec). skip: nothing reaches the step (gbt, where
 * there is one, is then zero). */
typedef struct { const REAL *ga, *go; REAL *gbt; const uint8_t *mk; int skip, cut, rec; } StepIn;
static inline StepIn step_in(int i, int L, int t, int T, int t0, int P, int K, int B, int64_t cb,
                             int tbptt, int have_rec, const REAL *Gab, REAL *Gbe,
                             const REAL *g_outk, const uint8_t *mkk) {
    StepIn s;
    s.ga = i < L - 1 ? Gab + (int64_t)t * cb : NULL;
    s.go = (i == L - 1 && t == T - 1) ? g_outk : NULL;
    s.gbt = i > 0 ? Gbe + (int64_t)t * cb : NULL;
    s.mk = t < P ? mkk + (int64_t)t * K * B : NULL;
    s.skip = !s.ga && !s.go && !have_rec;
    if (s.skip && s.gbt) memset(s.gbt, 0, sizeof(REAL) * cb);
    s.cut = tbptt > 0 && t > 0 && (T - t) % tbptt == 0;
    s.rec = !s.cut && t > t0;
    return s;
}

/* A row that is absent (the state before a sequence's first step, a gradient that does not
 * reach a step, the mask of a step that every sequence has started) is read from a Fill: a
 * row of zeros or a mask of ones, the numbers it stands for, so that no loop tests a pointer.
 * A loop that tests one is compiled to masked loads, and on x86 a masked load from near
 * address 0, its lanes all off, takes a microcode assist at every vector: many times the
 * loop's arithmetic. */
typedef struct { const REAL *zero; const uint8_t *one; } Fill;
static int64_t fill_size(int B) { return up16(B) + up16((B + (int64_t)sizeof(REAL) - 1) / (int64_t)sizeof(REAL)); }
static Fill fill_at(REAL *p, int B) {
    Fill f;
    memset(p, 0, sizeof(REAL) * B);
    memset(p + up16(B), 1, B);
    f.zero = p;
    f.one = (const uint8_t *)(p + up16(B));
    return f;
}
static inline const REAL *row_or0(const REAL *p, int64_t at, const Fill *f) { return p ? p + at : f->zero; }
static inline const uint8_t *mask_or1(const uint8_t *mk, const Fill *f) { return mk ? mk : f->one; }

/* STEP(b, l) for every column b, with its lane l = b mod VL: whole vectors of VL columns, their
 * lanes side by side, then the rest, so that lane l meets b = l, l + VL, ... in order */
#define LANES(B, STEP)                                                                         \
    do {                                                                                       \
        int b0_ = 0;                                                                           \
        for (; b0_ + VL <= (B); b0_ += VL) {                                                   \
            SIMD for (int l_ = 0; l_ < VL; l_++) STEP(b0_ + l_, l_);                           \
        }                                                                                      \
        for (int b_ = b0_; b_ < (B); b_++) STEP(b_, b_ % VL);                                  \
    } while (0)

/* lane l of acc += u[b] v[b] over b = l, l + VL, ... in order (v NULL: ones) */
static inline void lanes_dot(REAL *acc, const REAL *u, const REAL *v, int B) {
    REAL a[VL];                          /* the lanes in registers across the loop, not memory */
    memcpy(a, acc, sizeof a);
#define DOT_(b, l) (a[l] += u[b] * v[b])
#define SUM_(b, l) (a[l] += u[b])
    if (v) LANES(B, DOT_);
    else LANES(B, SUM_);
#undef DOT_
#undef SUM_
    memcpy(acc, a, sizeof a);
}
static inline REAL lanes_total(const REAL *acc) {
    REAL s = 0;
    for (int l = 0; l < VL; l++) s += acc[l];
    return s;
}

static int dgroups(int arch) { return arch == MINGRU ? 2 : 3; }
/* rows kept per layer and step for backward: mingru z, signed g; minlstm a = f / (f + i),
 * q = i / (f + i), u = e_f / (2 + e_f + e_i), v = e_i / (2 + e_f + e_i), signed g */
static int aux_rows(int arch, int c) { return arch == MINGRU ? 2 * c : 5 * c; }

/* a layer's parameters, in the cell's order: per group g (mingru: z, h; minlstm: f, i, h)
 * w_g (c, m) then b_g (c) */
static int64_t dlayer_size(int arch, int m, int c) { return (int64_t)dgroups(arch) * c * (m + 1); }
static int64_t dlayer_offset(int arch, int i, int c) {
    return i == 0 ? 0 : dlayer_size(arch, 1, c) + (int64_t)(i - 1) * dlayer_size(arch, c, c);
}

/* split weights of a layer: A (R, m) groups stacked, bias (R), At (m, R); sized for m = c */
static int64_t dsplit_size(int R, int c) { return (int64_t)R * c * 2 + R; }
static REAL *dA(REAL *Sp, int i, int R, int c) { return Sp + i * dsplit_size(R, c); }
static REAL *dbias(REAL *Sp, int i, int R, int c) { return dA(Sp, i, R, c) + (int64_t)R * c; }
static REAL *dAt(REAL *Sp, int i, int R, int c) { return dbias(Sp, i, R, c) + R; }

static void dsplit(int arch, const REAL *Wk, int L, int c, REAL *Sp) {
    const int G = dgroups(arch), R = G * c;
    for (int i = 0; i < L; i++) {
        const int m = i ? c : 1;
        const REAL *W = Wk + dlayer_offset(arch, i, c);
        REAL *A = dA(Sp, i, R, c), *bias = dbias(Sp, i, R, c), *At = dAt(Sp, i, R, c);
        for (int g = 0; g < G; g++) {
            const REAL *w = W + (int64_t)g * c * (m + 1), *b = w + (int64_t)c * m;
            for (int r = 0; r < c; r++) {
                bias[g * c + r] = b[r];
                for (int j = 0; j < m; j++) {
                    A[(int64_t)(g * c + r) * m + j] = w[(int64_t)r * m + j];
                    At[(int64_t)j * R + g * c + r] = w[(int64_t)r * m + j];
                }
            }
        }
    }
}

static inline REAL gpos_(REAL p) { return p >= 0 ? p + (REAL)0.5 : sigm_(p); }

/* One unit's row of a step of minGRU (gru) or minLSTM: from the gates' pre-activations in
 * a's rows (mingru z, h; minlstm f, i, h; each cb apart), h_t = hv * mk from h_{t-1} (hp); a's
 * rows become what backward needs (aux_rows). */
static inline __attribute__((always_inline)) void drecur_row(int arch, REAL *a, int64_t cb, int B,
                                                             const REAL *hpr, REAL *hr,
                                                             const uint8_t *mk) {
    if (arch == MINGRU) {
        REAL *zg = a, *gg = zg + cb;
        SIMD for (int b = 0; b < B; b++) {
            REAL zv = sigm_(zg[b]), pv = gg[b], gv = gpos_(pv);
            REAL hv = zv < (REAL)0.5 ? hpr[b] + zv * (gv - hpr[b])       /* lerp */
                                     : gv - (gv - hpr[b]) * (1 - zv);
            zg[b] = zv;
            gg[b] = pv >= 0 ? gv : -gv;   /* g > 0: its sign tells the branch */
            hr[b] = hv * mk[b];
        }
    } else {        /* f / (f + i) = (1 + e_i) / (2 + e_f + e_i), e = exp(-P) */
        REAL *fg = a, *ig = fg + cb, *gg = ig + cb, *ug = gg + cb, *vg = ug + cb;
        SIMD for (int b = 0; b < B; b++) {
            REAL pf = -fg[b], pi = -ig[b], pv = gg[b], gv = gpos_(pv);
            REAL ef = exp_(pf > 80 ? 80 : (pf < -80 ? -80 : pf));
            REAL ei = exp_(pi > 80 ? 80 : (pi < -80 ? -80 : pi));
            REAL inv = 1 / (2 + ef + ei);
            REAL av = (1 + ei) * inv, qv = (1 + ef) * inv;
            REAL hv = hpr[b] * av + gv * qv;
            fg[b] = av; ig[b] = qv; ug[b] = ef * inv; vg[b] = ei * inv;
            gg[b] = pv >= 0 ? gv : -gv;
            hr[b] = hv * mk[b];
        }
    }
}

/* Its backward: g, the gradient on h_t (masked), onto the gates' pre-activations (gp's rows, cb
 * apart, in a's order) and onto h_{t-1} (gr), from drecur_row's rows a and h_{t-1} (hpr). */
static inline __attribute__((always_inline)) void drecur_grad_row(int arch, const REAL *a,
                                                                  int64_t cb, int B,
                                                                  const REAL *hpr, const REAL *g,
                                                                  REAL *gp, REAL *gr) {
    if (arch == MINGRU) {
        const REAL *zg = a, *gg = zg + cb;
        REAL *pz = gp, *ph = pz + cb;
        SIMD for (int b = 0; b < B; b++) {
            REAL zv = zg[b], gs = gg[b], gv = gs < 0 ? -gs : gs;
            REAL dg = gs < 0 ? gv * (1 - gv) : 1;
            pz[b] = g[b] * (gv - hpr[b]) * (zv * (1 - zv));
            ph[b] = g[b] * zv * dg;
            gr[b] = g[b] * (1 - zv);
        }
    } else {
        const REAL *fg = a, *ig = fg + cb, *gg = ig + cb, *ug = gg + cb, *vg = ug + cb;
        REAL *pf = gp, *pi = pf + cb, *ph = pi + cb;
        SIMD for (int b = 0; b < B; b++) {
            REAL av = fg[b], qv = ig[b], gs = gg[b], gv = gs < 0 ? -gs : gs;
            REAL dg = gs < 0 ? gv * (1 - gv) : 1;
            REAL dd = g[b] * (hpr[b] - gv);
            pf[b] = dd * av * ug[b];
            pi[b] = -(dd * qv * vg[b]);
            ph[b] = g[b] * qv * dg;
            gr[b] = g[b] * av;
        }
    }
}

static void dforward_member(int arch, int K, int L, int T, int P, int B, int c, int S, REAL *Sp,
                            const REAL *xk, const uint8_t *mkk, REAL *Hk, REAL *Ak, REAL *scratch,
                            const REAL **X, REAL **O, const Fill *f) {
    const int R = dgroups(arch) * c, Ra = aux_rows(arch, c);
    const int64_t cb = (int64_t)c * B;
    const int t0 = first_step(K, P, B, mkk), zeros = S == 2 ? 2 : t0 + 1;
    for (int i = 0; i < L; i++) memset(slot(Hk, i, 0, S, cb), 0, sizeof(REAL) * cb * zeros);
    for (int t = t0; t < T; t++) {
        int sp = S == 2 ? t % 2 : t, so = S == 2 ? (t + 1) % 2 : t + 1;
        const uint8_t *mk = mask_or1(t < P ? mkk + (int64_t)t * K * B : NULL, f);
        for (int i = 0; i < L; i++) {
            const int m = i == 0 ? 1 : c;
            const REAL *hp = slot(Hk, i, sp, S, cb);
            const REAL *in = i == 0 ? xk + (int64_t)t * K * B : slot(Hk, i - 1, so, S, cb);
            REAL *h = slot(Hk, i, so, S, cb);
            REAL *a = Ak ? Ak + ((int64_t)i * T + t) * Ra * B : scratch;
            for (int j = 0; j < m; j++) X[j] = in + (int64_t)j * B;
            for (int r = 0; r < R; r++) O[r] = a + (int64_t)r * B;
            gemm(R, m, dA(Sp, i, R, c), dbias(Sp, i, R, c), X, O, B);
            for (int64_t e = 0; e < cb; e += B) drecur_row(arch, a + e, cb, B, hp + e, h + e, mk);
        }
    }
}

static int64_t dbackward_scratch(int arch, int T, int B, int c) {
    const int R = dgroups(arch) * c;
    const int64_t cb = (int64_t)c * B;
    return 2 * T * cb + (int64_t)R * B + 2 * cb + B + (int64_t)R * (c + 1) * VL;
}

static void dbackward_member(int arch, int K, int L, int T, int P, int B, int c, int tbptt,
                             REAL *Sp, const REAL *xk, const uint8_t *mkk, const REAL *Hk,
                             const REAL *Ak, const REAL *g_outk, REAL *gWk, REAL *Gs,
                             const REAL **Z, REAL **O, const Fill *f) {
    const int G = dgroups(arch), R = G * c, Ra = aux_rows(arch, c);
    const int64_t cb = (int64_t)c * B, S = T + 1;
    const REAL **Gp = Z + c + 1;
    REAL *Gab = Gs, *Gbe = Gs + T * cb;         /* gradients on a layer's outputs: from above, to below */
    REAL *gp = Gbe + T * cb, *gh = gp + (int64_t)R * B, *grec = gh + cb, *ones = grec + cb;
    REAL *acc = ones + B;
    for (int b = 0; b < B; b++) ones[b] = 1;
    for (int r = 0; r < R; r++) Gp[r] = gp + (int64_t)r * B;
    const int t0 = first_step(K, P, B, mkk);
    for (int i = L - 1; i >= 0; i--) {
        const int m = i == 0 ? 1 : c, cols = m + 1;
        const REAL *At = dAt(Sp, i, R, c);
        const REAL *Hi = Hk + (int64_t)i * S * cb;
        const REAL *Hin = i > 0 ? Hk + (int64_t)(i - 1) * S * cb : NULL;
        memset(acc, 0, sizeof(REAL) * R * cols * VL);
        int have_rec = 0;
        for (int t = T - 1; t >= t0; t--) {
            const StepIn st = step_in(i, L, t, T, t0, P, K, B, cb, tbptt, have_rec, Gab, Gbe,
                                      g_outk, mkk);
            if (st.skip) continue;
            const REAL *hp = Hi + (int64_t)t * cb;
            const REAL *a = Ak + ((int64_t)i * T + t) * Ra * B;
            for (int64_t e = 0; e < cb; e += B) {
                const REAL *ga_ = row_or0(st.ga, e, f), *go_ = row_or0(st.go, e, f);
                const REAL *hpr = hp + e, *gr0 = have_rec ? grec + e : f->zero;
                const uint8_t *mk = mask_or1(st.mk, f);
                REAL *gr = grec + e, *g = gh + e;
                SIMD for (int b = 0; b < B; b++) g[b] = (ga_[b] + go_[b] + gr0[b]) * mk[b];
                drecur_grad_row(arch, a + e, cb, B, hpr, g, gp + e, gr);
            }
            const REAL *in = i == 0 ? xk + (int64_t)t * K * B : Hin + (int64_t)(t + 1) * cb;
            for (int j = 0; j < m; j++) Z[j] = in + (int64_t)j * B;
            Z[m] = ones;
            wgrad(R, cols, Gp, Z, acc, B);
            if (st.gbt) {
                for (int j = 0; j < m; j++) O[j] = st.gbt + (int64_t)j * B;
                gemm(m, R, At, NULL, Gp, O, B);
            }
            have_rec = st.rec;
        }
        /* lane sums, written in the cell's parameter order: w_g (c, m), b_g (c) per group */
        REAL *gWi = gWk + dlayer_offset(arch, i, c);
        for (int r = 0; r < R; r++) {
            const int g = r / c, q = r % c;
            REAL *w = gWi + (int64_t)g * c * (m + 1), *bb = w + (int64_t)c * m;
            for (int j = 0; j <= m; j++) {
                REAL s = 0;
                for (int l = 0; l < VL; l++) s += acc[((int64_t)r * cols + j) * VL + l];
                if (j < m) w[(int64_t)q * m + j] = s;
                else bb[q] = s;
            }
        }
        if (i > 0) { REAL *tmp = Gab; Gab = Gbe; Gbe = tmp; }   /* what went below comes from above */
    }
}

/* ------------------------------------------------------------------------------------------
 * The LRU (Orvieto et al. 2023; lru, lru_ring: the same computation, another init): c complex
 * states (re, im), z_t = lambda z_{t-1} + gamma (B u_t), y_t = Re(C z_t) + D u_t, with
 * lambda = exp(-exp(nu) + i exp(theta)), gamma = exp(gamma_log) per unit. A layer's parameters,
 * in the cell's order: nu_log (c), theta_log (c), gamma_log (c), b_re (c, m), b_im (c, m),
 * c_re (c, c), c_im (c, c), d (c, m). Per layer and step Aux keeps 5c rows: z_t (re, im: 2c)
 * and P = [B_re; B_im; D] u_t (3c).
 * Its layout, split, forward and backward compute the LRU with real lambda too (its section
 * below): they take n, the numbers of a unit's state, 2 (re, im) here and 1 there. */
static int lru_n(int arch) { return arch == LRU ? 2 : 1; }

/* a layer's parameters: nu_log, theta_log (n = 2), gamma_log (c each), n B's (c, m), n C's
 * (c, c), d (c, m) */
static int64_t lru_layer_size(int n, int m, int c) {
    return (int64_t)(n + 1) * c * (m + 1) + (int64_t)n * c * c;
}
static int64_t lru_layer_offset(int n, int i, int c) {
    return i == 0 ? 0 : lru_layer_size(n, 1, c) + (int64_t)(i - 1) * lru_layer_size(n, c, c);
}
/* Aux's rows per layer and step: the state (n c), then P = [B's; D] u ((n + 1) c) */
static int lru_rows(int n, int c) { return (2 * n + 1) * c; }

/* split weights of a layer (sized for m = c): Ain = [B's; D] ((n + 1) c, m), Aint (m,
 * (n + 1) c), Cm (c, n c) = [c_re | -c_im] (real lambda: C), Cmt (n c, c), then u: per unit
 * lambda's real and imaginary parts, gamma, |lambda|, its phase and exp(nu) (real lambda:
 * lambda, 0, gamma, lambda, 0, exp(nu)) */
typedef struct { REAL *Ain, *Aint, *Cm, *Cmt, *u; } LruSplit;
static int64_t lru_split_size(int n, int c) { return (int64_t)(4 * n + 2) * c * c + 6 * c; }
static LruSplit lru_at(REAL *Sp, int n, int i, int c) {
    const int64_t in = (int64_t)(n + 1) * c * c, out = (int64_t)n * c * c;
    LruSplit s;
    s.Ain = Sp + i * lru_split_size(n, c);
    s.Aint = s.Ain + in;
    s.Cm = s.Aint + in;
    s.Cmt = s.Cm + out;
    s.u = s.Cmt + out;
    return s;
}

/* a layer's split weights from its parameters W (m inputs) */
static void lru_split_layer(int n, const REAL *W, int m, int c, LruSplit s) {
    const int R = (n + 1) * c;
    const REAL *nu = W, *th = n == 2 ? nu + c : NULL;
    const REAL *ga = nu + (int64_t)n * c, *bs = ga + c, *cs = bs + (int64_t)n * c * m;
    const REAL *d = cs + (int64_t)n * c * c;
    for (int q = 0; q <= n; q++) {                      /* the B's rows, then D's */
        const REAL *w = q < n ? bs + (int64_t)q * c * m : d;
        for (int r = 0; r < c; r++)
            for (int j = 0; j < m; j++) {
                s.Ain[(int64_t)(q * c + r) * m + j] = w[(int64_t)r * m + j];
                s.Aint[(int64_t)j * R + q * c + r] = w[(int64_t)r * m + j];
            }
    }
    for (int q = 0; q < n; q++) {                       /* Re(C z) = c_re re - c_im im */
        const REAL *w = cs + (int64_t)q * c * c;
        for (int r = 0; r < c; r++)
            for (int j = 0; j < c; j++) {
                const REAL v = q ? -w[(int64_t)r * c + j] : w[(int64_t)r * c + j];
                s.Cm[(int64_t)r * n * c + q * c + j] = v;
                s.Cmt[(int64_t)(q * c + j) * c + r] = v;
            }
    }
    for (int r = 0; r < c; r++) {        /* lambda = |lambda| (cos ph + i sin ph) */
        const REAL en = exp((double)nu[r]), mod = exp(-(double)en);
        const REAL ph = th ? exp((double)th[r]) : 0;
        s.u[r] = th ? mod * (REAL)cos((double)ph) : mod;
        s.u[c + r] = th ? mod * (REAL)sin((double)ph) : 0;
        s.u[2 * c + r] = exp((double)ga[r]);
        s.u[3 * c + r] = mod;
        s.u[4 * c + r] = ph;
        s.u[5 * c + r] = en;
    }
}

static void lru_split(int n, const REAL *Wk, int L, int c, REAL *Sp) {
    for (int i = 0; i < L; i++) lru_split_layer(n, Wk + lru_layer_offset(n, i, c), i ? c : 1, c, lru_at(Sp, n, i, c));
}

/* Step t of unit j: its state z (its rows cb apart: re, im) from the step before, zp (NULL:
 * zero), and P's rows p (B_re u, B_im u), masked by mk; u the layer's (LruSplit) */
static inline void lru_unit_step(const REAL *u, int j, int c, int64_t cb, int B, const REAL *p,
                                 const REAL *zp, REAL *z, const uint8_t *mk, const Fill *f) {
    const REAL lr = u[j], li = u[c + j], g = u[2 * c + j];
    const REAL *pr = p + (int64_t)j * B, *pi = pr + cb;
    const REAL *re0 = row_or0(zp, (int64_t)j * B, f), *im0 = row_or0(zp, (int64_t)j * B + cb, f);
    REAL *re = z + (int64_t)j * B, *im = re + cb;
    mk = mask_or1(mk, f);
    SIMD for (int b = 0; b < B; b++) {
        REAL a = re0[b], bb = im0[b];
        REAL vr = lr * a - li * bb + g * pr[b], vi = lr * bb + li * a + g * pi[b];
        re[b] = vr * mk[b];
        im[b] = vi * mk[b];
    }
}

/* Backward of step t of unit j (the rows as lru_unit_step's): from the gradient on its state
 * from y (gz) and from step t + 1 (grec, where have_rec), masked by mk, P's gradient (gp), the
 * gradient to step t - 1 (grec, in place) and the lane sums of the gradients of lambda and
 * gamma (acc: rows lambda_re, lambda_im, gamma of c units each, VL lanes per unit) */
static inline void lru_unit_grad(const REAL *u, int j, int c, int64_t cb, int B, const REAL *gz,
                                 REAL *grec, int have_rec, const uint8_t *mk, const REAL *p,
                                 const REAL *zp, REAL *gp, REAL *acc, const Fill *f) {
    const REAL lr = u[j], li = u[c + j], g = u[2 * c + j];
    const REAL *gre = gz + (int64_t)j * B, *gim = gre + cb, *pr = p + (int64_t)j * B, *pi = pr + cb;
    const REAL *re0 = row_or0(zp, (int64_t)j * B, f), *im0 = row_or0(zp, (int64_t)j * B + cb, f);
    REAL *rr = grec + (int64_t)j * B, *ri = rr + cb, *pre = gp + (int64_t)j * B, *pim = pre + cb;
    const REAL *rr0 = have_rec ? rr : f->zero, *ri0 = have_rec ? ri : f->zero;
    mk = mask_or1(mk, f);
    REAL al[VL], ai[VL], ag[VL];                     /* the lanes, as in lanes_dot */
    memcpy(al, acc + (int64_t)j * VL, sizeof al);
    memcpy(ai, acc + (int64_t)(c + j) * VL, sizeof ai);
    memcpy(ag, acc + (int64_t)(2 * c + j) * VL, sizeof ag);
#define LRU_GRAD(b, l)                                                                         \
    do {                                                                                       \
        REAL a = (gre[b] + rr0[b]) * mk[b], bb = (gim[b] + ri0[b]) * mk[b];                    \
        const REAL x0 = re0[b], y0 = im0[b];                                                   \
        al[l] += a * x0 + bb * y0;                  /* d/d lambda_re */                        \
        ai[l] += bb * x0 - a * y0;                  /* d/d lambda_im */                        \
        ag[l] += a * pr[b] + bb * pi[b];            /* d/d gamma */                            \
        pre[b] = g * a;                                                                        \
        pim[b] = g * bb;                                                                       \
        rr[b] = lr * a + li * bb;                   /* to z_{t-1} */                           \
        ri[b] = lr * bb - li * a;                                                              \
    } while (0)
    LANES(B, LRU_GRAD);
#undef LRU_GRAD
    memcpy(acc + (int64_t)j * VL, al, sizeof al);
    memcpy(acc + (int64_t)(c + j) * VL, ai, sizeof ai);
    memcpy(acc + (int64_t)(2 * c + j) * VL, ag, sizeof ag);
}

/* ------------------------------------------------------------------------------------------
 * The LRU with real lambda (lru_real): c real states, x_t = lambda x_{t-1} + gamma (B u_t),
 * y_t = C x_t + D u_t, with lambda = exp(-exp(nu)), gamma = exp(gamma_log) per unit. A layer's
 * parameters, in the cell's order: nu_log (c), gamma_log (c), b (c, m), c (c, c), d (c, m): the
 * LRU's without theta_log and the imaginary parts. Per layer and step Aux keeps 3c rows: x_t
 * (c) and P = [B; D] u_t (2c). The LRU's layout, split, forward and backward compute it with
 * n = 1, with these steps of a unit in place of lru_unit_step and lru_unit_grad. */
static inline void lru_real_unit_step(const REAL *u, int j, int c, int B, const REAL *p,
                                      const REAL *xp, REAL *x, const uint8_t *mk, const Fill *f) {
    const REAL lam = u[j], g = u[2 * c + j];
    const REAL *pb = p + (int64_t)j * B, *x0 = row_or0(xp, (int64_t)j * B, f);
    REAL *xj = x + (int64_t)j * B;
    if (mk) { SIMD for (int b = 0; b < B; b++) xj[b] = (lam * x0[b] + g * pb[b]) * mk[b]; }
    else    { SIMD for (int b = 0; b < B; b++) xj[b] = lam * x0[b] + g * pb[b]; }
}

static inline void lru_real_unit_grad(const REAL *u, int j, int c, int B, const REAL *gx,
                                      REAL *grec, int have_rec, const uint8_t *mk, const REAL *p,
                                      const REAL *xp, REAL *gp, REAL *acc, const Fill *f) {
    const REAL lam = u[j], g = u[2 * c + j];
    const REAL *gj = gx + (int64_t)j * B, *pb = p + (int64_t)j * B;
    const REAL *x0 = row_or0(xp, (int64_t)j * B, f);
    REAL *rj = grec + (int64_t)j * B, *gb = gp + (int64_t)j * B;
    const REAL *rj0 = have_rec ? rj : f->zero;
    REAL *al = acc + (int64_t)j * VL, *ag = acc + (int64_t)(2 * c + j) * VL;
#define LRU_REAL_GRAD(b, l)                                                                    \
    do {                                                                                       \
        REAL a = gj[b] + rj0[b];                                                               \
        if (mk) a *= mk[b];                                                                    \
        al[l] += a * x0[b];                         /* d/d lambda */                           \
        ag[l] += a * pb[b];                         /* d/d gamma */                            \
        gb[b] = g * a;                                                                         \
        rj[b] = lam * a;                            /* to x_{t-1} */                           \
    } while (0)
    LANES(B, LRU_REAL_GRAD);
#undef LRU_REAL_GRAD
}

/* ------------------------------------------------------------------------------------------
 * Forward and backward of a member of the LRU (n = 2) or of the LRU with real lambda (n = 1). */

/* Forward of one member (see dforward_member); Ak (L, T, lru_rows, B) with S = T + 1, else NULL
 * and scratch (L, 2, n c, B) + ((n + 1) c, B) holds two steps of states and the step's P. */
static void lru_forward_member(int n, int K, int L, int T, int P, int B, int c, int S, REAL *Sp,
                               const REAL *xk, const uint8_t *mkk, REAL *Hk, REAL *Ak,
                               REAL *scratch, const REAL **X, REAL **O, const Fill *f) {
    const int64_t cb = (int64_t)c * B, zb = n * cb, rb = (int64_t)lru_rows(n, c) * B;
    const int t0 = first_step(K, P, B, mkk), zeros = S == 2 ? 2 : t0 + 1;
    for (int i = 0; i < L; i++) memset(slot(Hk, i, 0, S, cb), 0, sizeof(REAL) * cb * zeros);
    if (!Ak) memset(scratch, 0, sizeof(REAL) * L * 2 * zb);
    for (int t = t0; t < T; t++) {
        int so = S == 2 ? (t + 1) % 2 : t + 1;
        const uint8_t *mk = t < P ? mkk + (int64_t)t * K * B : NULL;
        for (int i = 0; i < L; i++) {
            const int m = i == 0 ? 1 : c;
            const LruSplit s = lru_at(Sp, n, i, c);
            const REAL *in = i == 0 ? xk + (int64_t)t * K * B : slot(Hk, i - 1, so, S, cb);
            REAL *y = slot(Hk, i, so, S, cb);
            REAL *z, *p;
            const REAL *zp;
            if (Ak) {
                z = Ak + ((int64_t)i * T + t) * rb;
                zp = t > t0 ? z - rb : NULL;
                p = z + zb;
            } else {
                z = scratch + ((int64_t)i * 2 + (t + 1) % 2) * zb;
                zp = scratch + ((int64_t)i * 2 + t % 2) * zb;
                p = scratch + (int64_t)L * 2 * zb;
            }
            for (int j = 0; j < m; j++) X[j] = in + (int64_t)j * B;
            for (int r = 0; r < (n + 1) * c; r++) O[r] = p + (int64_t)r * B;
            gemm((n + 1) * c, m, s.Ain, NULL, X, O, B);
            for (int j = 0; j < c; j++) {
                if (n == 2) lru_unit_step(s.u, j, c, cb, B, p, zp, z, mk, f);
                else lru_real_unit_step(s.u, j, c, B, p, zp, z, mk, f);
            }
            for (int j = 0; j < n * c; j++) X[j] = z + (int64_t)j * B;
            for (int j = 0; j < c; j++) O[j] = y + (int64_t)j * B;
            gemm(c, n * c, s.Cm, NULL, X, O, B);
            for (int64_t e = 0; e < cb; e += B) {
                const REAL *du = p + zb + e;
                REAL *ye = y + e;
                if (mk) { SIMD for (int b = 0; b < B; b++) ye[b] = (ye[b] + du[b]) * mk[b]; }
                else    { SIMD for (int b = 0; b < B; b++) ye[b] = ye[b] + du[b]; }
            }
        }
    }
}

static int64_t lru_backward_scratch(int n, int T, int B, int c) {
    const int64_t cb = (int64_t)c * B;
    return 2 * T * cb + (int64_t)(3 * n + 1) * cb + ((int64_t)(2 * n + 1) * c * c + 3 * c) * VL;
}

/* A layer's gradients from backward's lane sums, written in the cell's parameter order from
 * gW on: acc_u (lambda's re, im, gamma; c x VL each), acc_in (P's rows (n + 1) c x m) and
 * acc_c (Cm's c x n c) */
static void lru_lane_sums(int n, const LruSplit *s, const REAL *acc_u, const REAL *acc_in,
                          const REAL *acc_c, int m, int c, REAL *gW) {
    const int R = (n + 1) * c;
    REAL *gnu = gW, *gth = n == 2 ? gnu + c : NULL;
    REAL *gga = gnu + (int64_t)n * c, *gbs = gga + c, *gcs = gbs + (int64_t)n * c * m;
    REAL *gd = gcs + (int64_t)n * c * c;
    for (int j = 0; j < c; j++) {
        const REAL dl = lanes_total(acc_u + (int64_t)j * VL);
        const REAL di = lanes_total(acc_u + (int64_t)(c + j) * VL);
        const REAL dg = lanes_total(acc_u + (int64_t)(2 * c + j) * VL);
        const REAL lr = s->u[j], li = s->u[c + j], en = s->u[5 * c + j];
        gnu[j] = (gth ? dl * lr + di * li : dl * lr) * -en;   /* d|lambda|/dnu: -|lambda| e^nu */
        if (gth) gth[j] = (di * lr - dl * li) * s->u[4 * c + j];   /* d phase/d theta = phase */
        gga[j] = dg * s->u[2 * c + j];
    }
    for (int r = 0; r < R; r++) {
        REAL *dst = r < n * c ? gbs + (int64_t)(r / c) * c * m : gd;
        for (int j = 0; j < m; j++)
            dst[(int64_t)(r % c) * m + j] = lanes_total(acc_in + ((int64_t)r * m + j) * VL);
    }
    for (int r = 0; r < c; r++)
        for (int j = 0; j < n * c; j++) {
            const REAL sum = lanes_total(acc_c + ((int64_t)r * n * c + j) * VL);
            gcs[(int64_t)(j / c) * c * c + (int64_t)r * c + j % c] = j < c ? sum : -sum;
        }
}

/* Backward of one member (see dbackward_member), from lru_forward_member's Hk and Ak. */
static void lru_backward_member(int n, int K, int L, int T, int P, int B, int c, int tbptt,
                                REAL *Sp, const REAL *xk, const uint8_t *mkk, const REAL *Hk,
                                const REAL *Ak, const REAL *g_outk, REAL *gWk, REAL *Gs,
                                const REAL **Z, REAL **O, const Fill *f) {
    const int R = (n + 1) * c;                                  /* P's rows */
    const int64_t cb = (int64_t)c * B, S = T + 1, zb = n * cb, rb = (int64_t)lru_rows(n, c) * B;
    REAL *Gab = Gs, *Gbe = Gs + T * cb;
    REAL *gp = Gbe + T * cb, *gz = gp + (int64_t)R * B, *grec = gz + zb;
    REAL *acc_in = grec + zb, *acc_c = acc_in + (int64_t)R * c * VL;
    REAL *acc_u = acc_c + (int64_t)n * c * c * VL;
    const REAL **Gp = Z + n * c;
    const int t0 = first_step(K, P, B, mkk);
    for (int i = L - 1; i >= 0; i--) {
        const int m = i == 0 ? 1 : c;
        const REAL *Hin = i > 0 ? Hk + (int64_t)(i - 1) * S * cb : NULL;
        const LruSplit s = lru_at(Sp, n, i, c);
        memset(acc_in, 0, sizeof(REAL) * R * m * VL);
        memset(acc_c, 0, sizeof(REAL) * n * c * c * VL);
        memset(acc_u, 0, sizeof(REAL) * 3 * c * VL);          /* lambda's re, im, gamma */
        int have_rec = 0;
        for (int t = T - 1; t >= t0; t--) {
            const StepIn st = step_in(i, L, t, T, t0, P, K, B, cb, tbptt, have_rec, Gab, Gbe,
                                      g_outk, mkk);
            if (st.skip) continue;
            const REAL *z = Ak + ((int64_t)i * T + t) * rb, *p = z + zb;
            const REAL *zp = t > t0 ? z - rb : NULL;
            REAL *gy = gp + zb;                               /* P's rows: the B's u, D u */
            for (int64_t e = 0; e < cb; e += B) {
                const REAL *ga_ = row_or0(st.ga, e, f), *go_ = row_or0(st.go, e, f);
                const uint8_t *mk = mask_or1(st.mk, f);
                REAL *g = gy + e;
                SIMD for (int b = 0; b < B; b++) g[b] = (ga_[b] + go_[b]) * mk[b];
            }
            /* y = Cm z + D u: Cm's gradient, then z's (from y and from step t + 1) */
            for (int j = 0; j < n * c; j++) Z[j] = z + (int64_t)j * B;
            for (int r = 0; r < c; r++) Gp[r] = gy + (int64_t)r * B;
            wgrad(c, n * c, Gp, Z, acc_c, B);
            for (int j = 0; j < n * c; j++) O[j] = gz + (int64_t)j * B;
            gemm(n * c, c, s.Cmt, NULL, Gp, O, B);
            for (int j = 0; j < c; j++) {
                if (n == 2)
                    lru_unit_grad(s.u, j, c, cb, B, gz, grec, have_rec, st.mk, p, zp, gp, acc_u, f);
                else
                    lru_real_unit_grad(s.u, j, c, B, gz, grec, have_rec, st.mk, p, zp, gp, acc_u, f);
            }
            const REAL *in = i == 0 ? xk + (int64_t)t * K * B : Hin + (int64_t)(t + 1) * cb;
            for (int j = 0; j < m; j++) Z[j] = in + (int64_t)j * B;
            for (int r = 0; r < R; r++) Gp[r] = gp + (int64_t)r * B;
            wgrad(R, m, Gp, Z, acc_in, B);
            if (st.gbt) {
                for (int j = 0; j < m; j++) O[j] = st.gbt + (int64_t)j * B;
                gemm(m, R, s.Aint, NULL, Gp, O, B);
            }
            have_rec = st.rec;
        }
        lru_lane_sums(n, &s, acc_u, acc_in, acc_c, m, c, gWk + lru_layer_offset(n, i, c));
        if (i > 0) { REAL *tmp = Gab; Gab = Gbe; Gbe = tmp; }
    }
}

/* ------------------------------------------------------------------------------------------
 * The selective SSM (Gu and Dao 2023; memgrid/cells.py: `mamba`, Mamba's block around it, and
 * `s6_bare`, the SSM behind an affine input projection). n = S6N state numbers per channel,
 * r = ceil(c / 16) (memgrid.cells._dt_rank), a convolution of CONVW taps (mamba), all from
 * memgrid/cells.py (the build's -D flags). A layer's parameters, in the cell's order:
 *   mamba    w_in (2c, m), b_in (2c), w_conv (c, CONVW), b_conv (c), then the SSM's
 *   s6_bare  w_in (c, m), b_in (c), then the SSM's
 *   SSM's    w_x (r + 2n, c), w_dt (c, r), b_dt (c), a_log (c, n), d (c)
 * Per step: P = W_in u + b_in; mamba: x, z = P, v = silu(conv(window, x) + b_conv), the
 * window (the last CONVW - 1 x's, zero before a sequence starts) its state; s6_bare: v = P.
 * dbc = W_x v; delta = softplus(W_dt dbc[:r] + b_dt); B, C = dbc[r:r+n], dbc[r+n:];
 * h_js = exp(delta_j A_js) h_js + delta_j v_j B_s, A = -exp(a_log); y_j = C . h_j + D_j v_j;
 * out = y * silu(z) (mamba) or y. Aux keeps per layer and step the rows of SSM_ROWS.
 * mamba_complex is mamba with a complex SSM: A = -exp(a_log) + i a_im (a_im (c, n), its last
 * parameter), B and C complex (2n rows of W_x each, real and imaginary parts side by side),
 * h_js = exp(delta_j A_js) h_js + delta_j v_j B_s, y_j = 2 Re(C . h_j) + D_j v_j. */
#ifndef S6N
#define S6N 4
#endif
#ifndef CONVW
#define CONVW 4
#endif
static int ssm_rank(int c) { return (c + 15) / 16; }
static int ssm_conv(int arch) { return arch == MAMBA || arch == MAMBA_CPLX; }  /* the block */
static int ssm_cx(int arch) { return arch == MAMBA_CPLX; }                       /* complex */
static int ssm_in(int arch, int c) { return ssm_conv(arch) ? 2 * c : c; }      /* P's rows */
static int ssm_nx(int arch, int c) { return ssm_rank(c) + (ssm_cx(arch) ? 4 : 2) * S6N; }  /* W_x's */

/* Aux's rows per layer and step, as offsets in units of B: P (mamba: x then z), xm = x masked
 * (what enters the window) and pv (the convolution's pre-activation) for mamba, v (s6_bare:
 * P itself), dbc, dt (delta's pre-activation), delta, h and e = exp(delta A) (c n each,
 * channel-major; complex: the real parts' c n rows, then the imaginary parts'), y */
typedef struct { int P, xm, pv, v, dbc, dt, delta, h, e, y, rows; } SsmRows;
static SsmRows ssm_rows(int arch, int c) {
    SsmRows o;
    const int mb = ssm_conv(arch), hn = (ssm_cx(arch) ? 2 : 1) * S6N;
    o.P = 0;
    o.xm = o.P + ssm_in(arch, c);             /* mamba only, as pv */
    o.pv = o.xm + c;
    o.v = mb ? o.pv + c : o.P;                /* s6_bare: v is P */
    o.dbc = o.v + c;
    o.dt = o.dbc + ssm_nx(arch, c);
    o.delta = o.dt + c;
    o.h = o.delta + c;
    o.e = o.h + c * hn;
    o.y = o.e + c * hn;
    o.rows = o.y + c;
    return o;
}

static int64_t ssm_layer_size(int arch, int m, int c) {
    const int r = ssm_rank(c), pin = ssm_in(arch, c);
    return (int64_t)pin * (m + 1) + (ssm_conv(arch) ? (int64_t)c * (CONVW + 1) : 0) +
           (int64_t)ssm_nx(arch, c) * c + (int64_t)c * r + c + (int64_t)c * S6N + c +
           (ssm_cx(arch) ? (int64_t)c * S6N : 0);
}
static int64_t ssm_layer_offset(int arch, int i, int c) {
    return i == 0 ? 0 : ssm_layer_size(arch, 1, c) + (int64_t)(i - 1) * ssm_layer_size(arch, c, c);
}

/* split weights of a layer (sized for m = c): Ain (pin, m), bias (pin), Aint (m, pin), Wx
 * (nx, c), Wxt (c, nx), Wdt (c, r), bdt (c), Wdtt (r, c), A = -exp(a_log) (c, n), D (c),
 * wconv (c, CONVW), bconv (c), Aim = a_im (c, n; complex) */
typedef struct { REAL *Ain, *bias, *Aint, *Wx, *Wxt, *Wdt, *bdt, *Wdtt, *A, *D, *wconv, *bconv, *Aim; } SsmSplit;
static int64_t ssm_split_size(int arch, int c) {
    const int r = ssm_rank(c), pin = ssm_in(arch, c), nx = ssm_nx(arch, c);
    return (int64_t)pin * c * 2 + pin + (int64_t)nx * c * 2 + (int64_t)c * r * 2 + c +
           (int64_t)c * S6N + c + (int64_t)c * CONVW + c + (int64_t)c * S6N;
}
static SsmSplit ssm_at(REAL *Sp, int arch, int i, int c) {
    const int r = ssm_rank(c), pin = ssm_in(arch, c), nx = ssm_nx(arch, c);
    SsmSplit s;
    s.Ain = Sp + i * ssm_split_size(arch, c);
    s.bias = s.Ain + (int64_t)pin * c;
    s.Aint = s.bias + pin;
    s.Wx = s.Aint + (int64_t)c * pin;
    s.Wxt = s.Wx + (int64_t)nx * c;
    s.Wdt = s.Wxt + (int64_t)c * nx;
    s.bdt = s.Wdt + (int64_t)c * r;
    s.Wdtt = s.bdt + c;
    s.A = s.Wdtt + (int64_t)r * c;
    s.D = s.A + (int64_t)c * S6N;
    s.wconv = s.D + c;
    s.bconv = s.wconv + (int64_t)c * CONVW;
    s.Aim = s.bconv + c;
    return s;
}

static void ssm_split(int arch, const REAL *Wk, int L, int c, REAL *Sp) {
    const int r = ssm_rank(c), pin = ssm_in(arch, c), nx = ssm_nx(arch, c);
    for (int i = 0; i < L; i++) {
        const int m = i ? c : 1;
        const REAL *W = Wk + ssm_layer_offset(arch, i, c);
        SsmSplit s = ssm_at(Sp, arch, i, c);
        const REAL *win = W, *bin = win + (int64_t)pin * m, *p = bin + pin;
        for (int q = 0; q < pin; q++) {
            s.bias[q] = bin[q];
            for (int j = 0; j < m; j++) {
                s.Ain[(int64_t)q * m + j] = win[(int64_t)q * m + j];
                s.Aint[(int64_t)j * pin + q] = win[(int64_t)q * m + j];
            }
        }
        if (ssm_conv(arch)) {
            memcpy(s.wconv, p, sizeof(REAL) * c * CONVW);
            memcpy(s.bconv, p + (int64_t)c * CONVW, sizeof(REAL) * c);
            p += (int64_t)c * (CONVW + 1);
        }
        for (int q = 0; q < nx; q++)
            for (int j = 0; j < c; j++) {
                s.Wx[(int64_t)q * c + j] = p[(int64_t)q * c + j];
                s.Wxt[(int64_t)j * nx + q] = p[(int64_t)q * c + j];
            }
        p += (int64_t)nx * c;
        for (int q = 0; q < c; q++)
            for (int j = 0; j < r; j++) {
                s.Wdt[(int64_t)q * r + j] = p[(int64_t)q * r + j];
                s.Wdtt[(int64_t)j * c + q] = p[(int64_t)q * r + j];
            }
        p += (int64_t)c * r;
        memcpy(s.bdt, p, sizeof(REAL) * c);
        p += c;
        for (int e = 0; e < c * S6N; e++) s.A[e] = -(REAL)exp((double)p[e]);
        p += (int64_t)c * S6N;
        memcpy(s.D, p, sizeof(REAL) * c);
        if (ssm_cx(arch)) memcpy(s.Aim, p + c, sizeof(REAL) * c * S6N);
    }
}

static inline REAL silu_(REAL a) { return a * sigm_(a); }
/* log(1 + u) for u in [0, 1], in plain arithmetic (the compiler vectorizes it): 2 atanh(s),
 * s = u / (2 + u) <= 1/3, by its series to s^35 (double) or s^17 (float) */
static inline REAL log1p_unit(REAL u) {
    const REAL s = u / (2 + u), s2 = s * s;
    REAL p = 0;
    for (int k = sizeof(REAL) == 8 ? 17 : 8; k >= 1; k--) p = p * s2 + (REAL)1 / (2 * k + 1);
    return 2 * s * (p * s2 + 1);
}
static inline REAL softplus_(REAL a) {    /* torch's: the identity above 20, else log(1 + e^a) */
    const REAL na = a > 0 ? -a : a;                       /* -|a| */
    return a > 20 ? a : (a > 0 ? a : 0) + log1p_unit(exp_(na < -80 ? -80 : na));
}

/* sin(x) and cos(x) in plain arithmetic (the compiler vectorizes it), for the complex SSM's
 * phase: x = k pi/2 + r, |r| <= pi/4, with pi/2 in three parts of which k times the first two
 * are exact (Cody and Waite), Taylor polynomials in r to r^15 and r^16 (double) or r^9 and
 * r^10 (float), and the quadrant k mod 4 picking and signing them. */
static const double SIN_T[7] = {-1.0 / 6, 1.0 / 120, -1.0 / 5040, 1.0 / 362880, -1.0 / 39916800,
                                1.0 / 6227020800, -1.0 / 1307674368000};
static const double COS_T[8] = {-1.0 / 2, 1.0 / 24, -1.0 / 720, 1.0 / 40320, -1.0 / 3628800,
                                1.0 / 479001600, -1.0 / 87178291200, 1.0 / 20922789888000};
static inline void sincos_(REAL x, REAL *sn, REAL *cs) {
    const int dbl = sizeof(REAL) == 8, ns = dbl ? 7 : 4, nc = dbl ? 8 : 5;
    const REAL k = __builtin_floor(x * (REAL)0.63661977236758134308 + (REAL)0.5);
    REAL r = x - k * (dbl ? (REAL)1.57079632673412561417 : (REAL)1.5703125);
    r -= k * (dbl ? (REAL)6.07710050630396597660e-11 : (REAL)4.837512969970703125e-4);
    r -= k * (dbl ? (REAL)2.02226624879595063154e-21 : (REAL)7.54978995489188216e-8);
    const REAL r2 = r * r;
    REAL ps = (REAL)SIN_T[ns - 1], pc = (REAL)COS_T[nc - 1];
    for (int j = ns - 2; j >= 0; j--) ps = ps * r2 + (REAL)SIN_T[j];
    for (int j = nc - 2; j >= 0; j--) pc = pc * r2 + (REAL)COS_T[j];
    const REAL s0 = r + r * r2 * ps, c0 = 1 + r2 * pc;
    const int64_t q = (int64_t)k;
    const REAL s1 = q & 1 ? c0 : s0, c1 = q & 1 ? s0 : c0;
    *sn = q & 2 ? -s1 : s1;
    *cs = (q + 1) & 2 ? -c1 : c1;
}

/* Forward of one member: Hk (L, S, c, B) the outputs; Ak (L, T, rows, B) with S = T + 1, else
 * NULL and scratch holds (L, 2, rows, B): two steps' rows per layer, and the window's last
 * CONVW - 1 masked x's are those steps' and a ring of (L, CONVW, c, B). */
static void ssm_forward_member(int arch, int K, int L, int T, int P, int B, int c, int S,
                               REAL *Sp, const REAL *xk, const uint8_t *mkk, REAL *Hk, REAL *Ak,
                               REAL *scratch, const REAL **X, REAL **O, const Fill *f) {
    const SsmRows o = ssm_rows(arch, c);
    const int r = ssm_rank(c), pin = ssm_in(arch, c), nx = ssm_nx(arch, c), cx = ssm_cx(arch);
    const int nb = (nx - r) / 2, cn = c * S6N;         /* B's rows (C's too); h's real rows */
    const int64_t cb = (int64_t)c * B, rb = (int64_t)o.rows * B;
    const int t0 = first_step(K, P, B, mkk), zeros = S == 2 ? 2 : t0 + 1;
    REAL *ring = Ak ? NULL : scratch + (int64_t)L * 2 * rb;       /* evaluation: xm's ring */
    for (int i = 0; i < L; i++) memset(slot(Hk, i, 0, S, cb), 0, sizeof(REAL) * cb * zeros);
    if (!Ak) memset(scratch, 0, sizeof(REAL) * (L * 2 * rb + (int64_t)L * CONVW * cb));
    for (int t = t0; t < T; t++) {
        int so = S == 2 ? (t + 1) % 2 : t + 1;
        const uint8_t *mk = mask_or1(t < P ? mkk + (int64_t)t * K * B : NULL, f);
        for (int i = 0; i < L; i++) {
            const int m = i == 0 ? 1 : c;
            const SsmSplit s = ssm_at(Sp, arch, i, c);
            const REAL *in = i == 0 ? xk + (int64_t)t * K * B : slot(Hk, i - 1, so, S, cb);
            REAL *out = slot(Hk, i, so, S, cb);
            REAL *a = Ak ? Ak + ((int64_t)i * T + t) * rb : scratch + ((int64_t)i * 2 + (t + 1) % 2) * rb;
            const REAL *ap = Ak ? (t > t0 ? a - rb : NULL) : scratch + ((int64_t)i * 2 + t % 2) * rb;
            for (int j = 0; j < m; j++) X[j] = in + (int64_t)j * B;
            for (int q = 0; q < pin; q++) O[q] = a + (int64_t)(o.P + q) * B;
            gemm(pin, m, s.Ain, s.bias, X, O, B);
            REAL *v = a + (int64_t)o.v * B;
            if (ssm_conv(arch)) {
                const REAL *x = a + (int64_t)o.P * B;
                REAL *xm = a + (int64_t)o.xm * B, *pv = a + (int64_t)o.pv * B;
                const REAL *tap[CONVW];                         /* oldest first; NULL: zeros */
                for (int j = 0; j < c; j++) {
                    for (int k = 0; k < CONVW - 1; k++) {
                        const int tt = t - (CONVW - 1) + k;
                        const REAL *src = NULL;
                        if (tt >= t0)
                            src = Ak ? Ak + ((int64_t)i * T + tt) * rb + (int64_t)o.xm * B
                                     : ring + ((int64_t)i * CONVW + tt % CONVW) * cb;
                        tap[k] = src ? src + (int64_t)j * B : NULL;
                    }
                    tap[CONVW - 1] = x + (int64_t)j * B;
                    const REAL *w = s.wconv + (int64_t)j * CONVW, bc = s.bconv[j];
                    REAL *pj = pv + (int64_t)j * B, *vj = v + (int64_t)j * B, *xmj = xm + (int64_t)j * B;
                    const REAL *xj = x + (int64_t)j * B;
                    SIMD for (int b = 0; b < B; b++) pj[b] = 0;
                    for (int k = 0; k < CONVW; k++)                 /* summed over k from 0 */
                        if (tap[k]) { SIMD for (int b = 0; b < B; b++) pj[b] += w[k] * tap[k][b]; }
                    SIMD for (int b = 0; b < B; b++) {
                        pj[b] += bc;
                        vj[b] = silu_(pj[b]);
                        xmj[b] = xj[b] * mk[b];
                    }
                }
                if (!Ak) memcpy(ring + ((int64_t)i * CONVW + t % CONVW) * cb, xm, sizeof(REAL) * cb);
            }
            /* dbc = W_x v; delta = softplus(W_dt dbc[:r] + b_dt) */
            REAL *dbc = a + (int64_t)o.dbc * B, *dt = a + (int64_t)o.dt * B, *de = a + (int64_t)o.delta * B;
            for (int j = 0; j < c; j++) X[j] = v + (int64_t)j * B;
            for (int q = 0; q < nx; q++) O[q] = dbc + (int64_t)q * B;
            gemm(nx, c, s.Wx, NULL, X, O, B);
            for (int j = 0; j < r; j++) X[j] = dbc + (int64_t)j * B;
            for (int q = 0; q < c; q++) O[q] = dt + (int64_t)q * B;
            gemm(c, r, s.Wdt, s.bdt, X, O, B);
            SIMD for (int64_t e = 0; e < cb; e++) de[e] = softplus_(dt[e]);
            /* the scan, y, the gate */
            const REAL *Bs = dbc + (int64_t)r * B, *Cs = Bs + (int64_t)nb * B;
            REAL *h = a + (int64_t)o.h * B, *y = a + (int64_t)o.y * B;
            const REAL *hp = ap ? ap + (int64_t)o.h * B : NULL;
            for (int j = 0; j < c; j++) {
                const REAL *dj = de + (int64_t)j * B, *vj = v + (int64_t)j * B;
                REAL *yj = y + (int64_t)j * B;
                SIMD for (int b = 0; b < B; b++) yj[b] = s.D[j] * vj[b];
                for (int q = 0; cx && q < S6N; q++) {      /* complex: h = a h' + delta v B */
                    const int jq = j * S6N + q;
                    const REAL Are = s.A[jq], Aim = s.Aim[jq];
                    const REAL *rp = row_or0(hp, (int64_t)jq * B, f);
                    const REAL *ip = row_or0(hp, (int64_t)(cn + jq) * B, f);
                    const REAL *Bre = Bs + (int64_t)2 * q * B, *Bim = Bre + B;
                    const REAL *Cre = Cs + (int64_t)2 * q * B, *Cim = Cre + B;
                    REAL *hre = h + (int64_t)jq * B, *him = h + (int64_t)(cn + jq) * B;
                    REAL *er = a + (int64_t)(o.e + jq) * B, *ei = a + (int64_t)(o.e + cn + jq) * B;
                    SIMD for (int b = 0; b < B; b++) {
                        REAL da = dj[b] * Are, sn, cs;
                        REAL dec = exp_(da < -80 ? -80 : da);
                        sincos_(dj[b] * Aim, &sn, &cs);
                        REAL ar = dec * cs, ai = dec * sn, dv = dj[b] * vj[b];
                        er[b] = ar;
                        ei[b] = ai;
                        REAL re = (ar * rp[b] - ai * ip[b] + dv * Bre[b]) * mk[b];
                        REAL im = (ar * ip[b] + ai * rp[b] + dv * Bim[b]) * mk[b];
                        hre[b] = re;
                        him[b] = im;
                        yj[b] += 2 * (Cre[b] * re - Cim[b] * im);
                    }
                }
                for (int q = 0; !cx && q < S6N; q++) {
                    const REAL A = s.A[j * S6N + q];
                    const REAL *hpq = row_or0(hp, (int64_t)(j * S6N + q) * B, f);
                    const REAL *Bq = Bs + (int64_t)q * B, *Cq = Cs + (int64_t)q * B;
                    REAL *hq = h + (int64_t)(j * S6N + q) * B, *eq = hq + (int64_t)S6N * cb;
                    SIMD for (int b = 0; b < B; b++) {
                        REAL da = dj[b] * A;
                        REAL e = exp_(da < -80 ? -80 : da);
                        eq[b] = e;
                        REAL hv = (e * hpq[b] + dj[b] * vj[b] * Bq[b]) * mk[b];
                        hq[b] = hv;
                        yj[b] += Cq[b] * hv;
                    }
                }
                REAL *oj = out + (int64_t)j * B;
                if (ssm_conv(arch)) {
                    const REAL *zj = a + (int64_t)(o.P + c + j) * B;
                    SIMD for (int b = 0; b < B; b++) oj[b] = yj[b] * silu_(zj[b]) * mk[b];
                } else {
                    SIMD for (int b = 0; b < B; b++) oj[b] = yj[b] * mk[b];
                }
            }
        }
    }
}

static int64_t ssm_backward_scratch(int arch, int T, int B, int c) {
    const int r = ssm_rank(c), pin = ssm_in(arch, c), nx = ssm_nx(arch, c);
    const int64_t cb = (int64_t)c * B, hn = (ssm_cx(arch) ? 2 : 1) * S6N;
    return 2 * T * cb + (int64_t)pin * B + 4 * cb + (int64_t)nx * B + 2 * hn * cb +
           (int64_t)CONVW * cb + B +
           ((int64_t)pin * (c + 1) + (int64_t)nx * c + (int64_t)c * (r + 1) + (int64_t)c * S6N + c +
            (int64_t)c * (CONVW + 1) + (ssm_cx(arch) ? (int64_t)c * S6N : 0)) * VL;
}

/* Backward of one member (see dbackward_member), from ssm_forward_member's Hk and Ak. The
 * convolution's taps of earlier steps pass their gradient back through `pend`, a ring of
 * CONVW steps' (c, B), each added to that step's x where it is reached. */
static void ssm_backward_member(int arch, int K, int L, int T, int P, int B, int c, int tbptt,
                                REAL *Sp, const REAL *xk, const uint8_t *mkk, const REAL *Hk,
                                const REAL *Ak, const REAL *g_outk, REAL *gWk, REAL *Gs,
                                const REAL **Z, REAL **O, const Fill *f) {
    const SsmRows o = ssm_rows(arch, c);
    const int r = ssm_rank(c), pin = ssm_in(arch, c), nx = ssm_nx(arch, c), mb = ssm_conv(arch);
    const int cx = ssm_cx(arch), nb = (nx - r) / 2, cn = c * S6N;
    const int64_t cb = (int64_t)c * B, S = T + 1, rb = (int64_t)o.rows * B;
    const int64_t hb = (int64_t)(cx ? 2 : 1) * S6N * cb;      /* h's rows (real: e's offset) */
    REAL *Gab = Gs, *Gbe = Gs + T * cb;
    REAL *gP = Gbe + T * cb, *gy = gP + (int64_t)pin * B, *gv = gy + cb, *gdt = gv + cb;
    REAL *tmp = gdt + cb, *gdbc = tmp + cb, *gh = gdbc + (int64_t)nx * B, *grec = gh + hb;
    REAL *pend = grec + hb, *ones = pend + (int64_t)CONVW * cb;
    REAL *acc_in = ones + B, *acc_x = acc_in + (int64_t)pin * (c + 1) * VL;
    REAL *acc_dt = acc_x + (int64_t)nx * c * VL, *acc_A = acc_dt + (int64_t)c * (r + 1) * VL;
    REAL *acc_D = acc_A + (int64_t)c * S6N * VL, *acc_conv = acc_D + (int64_t)c * VL;
    REAL *acc_Aim = acc_conv + (int64_t)c * (CONVW + 1) * VL;           /* complex: a_im's */
    const REAL **Gp = Z + c + 1;
    for (int b = 0; b < B; b++) ones[b] = 1;
    const int t0 = first_step(K, P, B, mkk);
    for (int i = L - 1; i >= 0; i--) {
        const int m = i == 0 ? 1 : c;
        const SsmSplit s = ssm_at(Sp, arch, i, c);
        const REAL *Hin = i > 0 ? Hk + (int64_t)(i - 1) * S * cb : NULL;
        memset(acc_in, 0, sizeof(REAL) * (acc_Aim - acc_in + (cx ? (int64_t)cn * VL : 0)));
        memset(pend, 0, sizeof(REAL) * CONVW * cb);
        int have_rec = 0;
        for (int t = T - 1; t >= t0; t--) {
            const StepIn st = step_in(i, L, t, T, t0, P, K, B, cb, tbptt, have_rec, Gab, Gbe,
                                      g_outk, mkk);
            if (st.skip) continue;
            const REAL *a = Ak + ((int64_t)i * T + t) * rb, *ap = t > t0 ? a - rb : NULL;
            const REAL *v = a + (int64_t)o.v * B, *dbc = a + (int64_t)o.dbc * B;
            const REAL *de = a + (int64_t)o.delta * B, *dt = a + (int64_t)o.dt * B;
            const REAL *h = a + (int64_t)o.h * B, *hp = ap ? ap + (int64_t)o.h * B : NULL;
            const REAL *y = a + (int64_t)o.y * B;
            const REAL *Bs = dbc + (int64_t)r * B, *Cs = Bs + (int64_t)nb * B;
            const uint8_t *mk = mask_or1(st.mk, f);
            /* the output: y (gated by silu(z) in mamba) */
            for (int j = 0; j < c; j++) {
                const REAL *ga_ = row_or0(st.ga, (int64_t)j * B, f), *go_ = row_or0(st.go, (int64_t)j * B, f);
                const REAL *yj = y + (int64_t)j * B, *vj = v + (int64_t)j * B;
                REAL *gyj = gy + (int64_t)j * B, *gvj = gv + (int64_t)j * B;
                const REAL Dj = s.D[j];
                if (mb) {
                    const REAL *zj = a + (int64_t)(o.P + c + j) * B;
                    REAL *gzj = gP + (int64_t)(c + j) * B;
                    SIMD for (int b = 0; b < B; b++) {
                        REAL g = (ga_[b] + go_[b]) * mk[b], sz = sigm_(zj[b]);
                        gyj[b] = g * (zj[b] * sz);
                        gzj[b] = g * yj[b] * (sz * (1 + zj[b] * (1 - sz)));
                        gvj[b] = gyj[b] * Dj;
                    }
                } else {
                    SIMD for (int b = 0; b < B; b++) {
                        gyj[b] = (ga_[b] + go_[b]) * mk[b];
                        gvj[b] = gyj[b] * Dj;
                    }
                }
                lanes_dot(acc_D + (int64_t)j * VL, gyj, vj, B);
            }
            /* the scan: h_jq = e h'_jq + delta_j v_j B_q, e = exp(delta_j A_jq); y_j += C_q h_jq */
            memset(gdbc + (int64_t)r * B, 0, sizeof(REAL) * 2 * nb * B);
            memset(tmp, 0, sizeof(REAL) * cb);                       /* tmp: delta's gradient */
            for (int j = 0; j < c; j++) {
                const REAL *dj = de + (int64_t)j * B, *vj = v + (int64_t)j * B, *gyj = gy + (int64_t)j * B;
                REAL *gdj = tmp + (int64_t)j * B, *gvj = gv + (int64_t)j * B;
                /* complex: h = a h' + delta v B, a = exp(delta (A_re + i A_im)); y_j += 2 Re(C h).
                 * gh keeps a_re's and a_im's gradients over delta (u, w), grec h's real and
                 * imaginary parts' */
                for (int q = 0; cx && q < S6N; q++) {
                    const int jq = j * S6N + q;
                    const REAL Are = s.A[jq], Aim = s.Aim[jq];
                    const REAL *hre = h + (int64_t)jq * B, *him = h + (int64_t)(cn + jq) * B;
                    const REAL *rp = row_or0(hp, (int64_t)jq * B, f);
                    const REAL *ip = row_or0(hp, (int64_t)(cn + jq) * B, f);
                    const REAL *er = a + (int64_t)(o.e + jq) * B, *ei = a + (int64_t)(o.e + cn + jq) * B;
                    const REAL *Bre = Bs + (int64_t)2 * q * B, *Bim = Bre + B;
                    const REAL *Cre = Cs + (int64_t)2 * q * B, *Cim = Cre + B;
                    REAL *gBre = gdbc + (int64_t)(r + 2 * q) * B, *gBim = gBre + B;
                    REAL *gCre = gdbc + (int64_t)(r + nb + 2 * q) * B, *gCim = gCre + B;
                    REAL *gu = gh + (int64_t)jq * B, *gw = gh + (int64_t)(cn + jq) * B;
                    REAL *rr = grec + (int64_t)jq * B, *ri = grec + (int64_t)(cn + jq) * B;
                    const REAL *rr0 = have_rec ? rr : f->zero, *ri0 = have_rec ? ri : f->zero;
                    SIMD for (int b = 0; b < B; b++) {
                        REAL gre = (2 * gyj[b] * Cre[b] + rr0[b]) * mk[b];
                        REAL gim = (ri0[b] - 2 * gyj[b] * Cim[b]) * mk[b];
                        const REAL ar = er[b], ai = ei[b], r0 = rp[b], i0 = ip[b], dv = dj[b] * vj[b];
                        gCre[b] += 2 * gyj[b] * hre[b];
                        gCim[b] -= 2 * gyj[b] * him[b];
                        REAL gar = gre * r0 + gim * i0, gai = gim * r0 - gre * i0;
                        REAL u = gar * ar + gai * ai, w = gai * ar - gar * ai;
                        REAL gdv = gre * Bre[b] + gim * Bim[b];
                        gdj[b] += Are * u + Aim * w + gdv * vj[b];
                        gvj[b] += gdv * dj[b];
                        gBre[b] += gre * dv;
                        gBim[b] += gim * dv;
                        gu[b] = u;
                        gw[b] = w;
                        rr[b] = gre * ar + gim * ai;                 /* to h_{t-1} */
                        ri[b] = gim * ar - gre * ai;
                    }
                    lanes_dot(acc_A + (int64_t)jq * VL, gu, dj, B);
                    lanes_dot(acc_Aim + (int64_t)jq * VL, gw, dj, B);
                }
                for (int q = 0; !cx && q < S6N; q++) {
                    const int jq = j * S6N + q;
                    const REAL A = s.A[jq];
                    const REAL *hq = h + (int64_t)jq * B, *hpq = row_or0(hp, (int64_t)jq * B, f);
                    const REAL *eq = hq + hb;
                    const REAL *Bq = Bs + (int64_t)q * B, *Cq = Cs + (int64_t)q * B;
                    REAL *gB = gdbc + (int64_t)(r + q) * B, *gC = gdbc + (int64_t)(r + S6N + q) * B;
                    REAL *ghq = gh + (int64_t)jq * B, *rq = grec + (int64_t)jq * B;
                    const REAL *rq0 = have_rec ? rq : f->zero;
                    SIMD for (int b = 0; b < B; b++) {
                        REAL gv_ = (gyj[b] * Cq[b] + rq0[b]) * mk[b];
                        const REAL e = eq[b], h0 = hpq[b];
                        gC[b] += gyj[b] * hq[b];
                        gdj[b] += gv_ * (h0 * e * A + vj[b] * Bq[b]);
                        gvj[b] += gv_ * dj[b] * Bq[b];
                        gB[b] += gv_ * dj[b] * vj[b];
                        ghq[b] = gv_ * h0 * e;                      /* A's gradient / delta */
                        rq[b] = gv_ * e;                             /* to h_{t-1} */
                    }
                    lanes_dot(acc_A + (int64_t)jq * VL, ghq, dj, B);
                }
            }
            /* delta = softplus(dt), dt = W_dt dbc[:r] + b_dt; dbc = W_x v */
            SIMD for (int64_t e = 0; e < cb; e++) gdt[e] = tmp[e] * (dt[e] > 20 ? 1 : sigm_(dt[e]));
            for (int j = 0; j < r; j++) Z[j] = dbc + (int64_t)j * B;
            Z[r] = ones;
            for (int q = 0; q < c; q++) Gp[q] = gdt + (int64_t)q * B;
            wgrad(c, r + 1, Gp, Z, acc_dt, B);
            for (int j = 0; j < r; j++) O[j] = gdbc + (int64_t)j * B;
            gemm(r, c, s.Wdtt, NULL, Gp, O, B);
            for (int j = 0; j < c; j++) Z[j] = v + (int64_t)j * B;
            for (int q = 0; q < nx; q++) Gp[q] = gdbc + (int64_t)q * B;
            wgrad(nx, c, Gp, Z, acc_x, B);
            for (int j = 0; j < c; j++) O[j] = tmp + (int64_t)j * B;
            gemm(c, nx, s.Wxt, NULL, Gp, O, B);
            SIMD for (int64_t e = 0; e < cb; e++) gv[e] += tmp[e];
            /* v: mamba's convolution (its taps of earlier steps through `pend`), or P itself */
            if (mb) {
                const REAL *pv = a + (int64_t)o.pv * B, *x = a + (int64_t)o.P * B;
                REAL *cur = pend + (int64_t)(t % CONVW) * cb;
                for (int j = 0; j < c; j++) {
                    const REAL *w = s.wconv + (int64_t)j * CONVW, *pj = pv + (int64_t)j * B;
                    REAL *gvj = gv + (int64_t)j * B, *gxj = gP + (int64_t)j * B, *cj = cur + (int64_t)j * B;
                    SIMD for (int b = 0; b < B; b++) {
                        REAL sp = sigm_(pj[b]);
                        gvj[b] *= sp * (1 + pj[b] * (1 - sp));      /* now the pre-activation's */
                        gxj[b] = gvj[b] * w[CONVW - 1] + cj[b] * mk[b];
                        cj[b] = 0;
                    }
                    lanes_dot(acc_conv + ((int64_t)c * CONVW + j) * VL, gvj, NULL, B);   /* b_conv */
                    lanes_dot(acc_conv + ((int64_t)j * CONVW + CONVW - 1) * VL, gvj, x + (int64_t)j * B, B);
                    for (int k = 0; k < CONVW - 1; k++) {
                        const int tt = t - (CONVW - 1) + k;
                        if (tt < t0) continue;
                        const REAL *xm = Ak + ((int64_t)i * T + tt) * rb + (int64_t)(o.xm + j) * B;
                        REAL *pk = pend + (int64_t)(tt % CONVW) * cb + (int64_t)j * B;
                        lanes_dot(acc_conv + ((int64_t)j * CONVW + k) * VL, gvj, xm, B);
                        SIMD for (int b = 0; b < B; b++) pk[b] += gvj[b] * w[k];
                    }
                }
            } else {
                memcpy(gP, gv, sizeof(REAL) * cb);
            }
            /* P = W_in u + b_in */
            const REAL *in = i == 0 ? xk + (int64_t)t * K * B : Hin + (int64_t)(t + 1) * cb;
            for (int j = 0; j < m; j++) Z[j] = in + (int64_t)j * B;
            Z[m] = ones;
            for (int q = 0; q < pin; q++) Gp[q] = gP + (int64_t)q * B;
            wgrad(pin, m + 1, Gp, Z, acc_in, B);
            if (st.gbt) {
                for (int j = 0; j < m; j++) O[j] = st.gbt + (int64_t)j * B;
                gemm(m, pin, s.Aint, NULL, Gp, O, B);
            }
            if (st.cut) memset(pend, 0, sizeof(REAL) * CONVW * cb);   /* the window's gradient too */
            have_rec = st.rec;
        }
        /* lane sums, written in the cell's parameter order */
        REAL *gW = gWk + ssm_layer_offset(arch, i, c);
        for (int q = 0; q < pin; q++)
            for (int j = 0; j <= m; j++) {
                REAL sum = lanes_total(acc_in + ((int64_t)q * (m + 1) + j) * VL);
                if (j < m) gW[(int64_t)q * m + j] = sum;
                else gW[(int64_t)pin * m + q] = sum;
            }
        gW += (int64_t)pin * (m + 1);
        if (mb) {
            for (int e = 0; e < c * CONVW; e++) gW[e] = lanes_total(acc_conv + (int64_t)e * VL);
            for (int j = 0; j < c; j++) gW[c * CONVW + j] = lanes_total(acc_conv + ((int64_t)c * CONVW + j) * VL);
            gW += (int64_t)c * (CONVW + 1);
        }
        for (int e = 0; e < nx * c; e++) gW[e] = lanes_total(acc_x + (int64_t)e * VL);
        gW += (int64_t)nx * c;
        for (int q = 0; q < c; q++)
            for (int j = 0; j <= r; j++) {
                REAL sum = lanes_total(acc_dt + ((int64_t)q * (r + 1) + j) * VL);
                if (j < r) gW[(int64_t)q * r + j] = sum;
                else gW[(int64_t)c * r + q] = sum;
            }
        gW += (int64_t)c * r + c;
        for (int e = 0; e < c * S6N; e++) gW[e] = lanes_total(acc_A + (int64_t)e * VL) * s.A[e];
        gW += (int64_t)c * S6N;
        for (int j = 0; j < c; j++) gW[j] = lanes_total(acc_D + (int64_t)j * VL);
        if (cx)
            for (int e = 0; e < cn; e++) gW[c + e] = lanes_total(acc_Aim + (int64_t)e * VL);
        if (i > 0) { REAL *t_ = Gab; Gab = Gbe; Gbe = t_; }
    }
}

/* ------------------------------------------------------------------------------------------
 * minGRU and minLSTM in their published block (memgrid/cells.py: `mingru_block` and
 * `minlstm_block`, one layer of minLM with its convolution). Per step, from the layer's input u:
 *   x = W_in u + b_in;  pc = conv(window, x) + b_conv;  x2 = W_mix pc + b_mix + x;
 *   n1 = RMSNorm(x2; g1);  h = the rnn's step on W_g n1 (drecur_row; gates without biases);
 *   x3 = h + x2;  n2 = RMSNorm(x3; g2);  f1 = W_f1 n2 + b_f1;  out = W_f2 gelu(f1) + b_f2 + x3
 * The window holds the last BCONV - 1 masked x's (zero before a sequence starts), oldest first;
 * RMSNorm(x; g) = x rsqrt(mean_j x_j^2 + eps) g with eps the type's; gelu(f) = f Phi(f) (the
 * exact GELU, common.h's phi_); the feedforward has F = BFF c rows. A layer's parameters, in the cell's order:
 *   w_in (c, m), b_in (c), w_conv (c, BCONV), b_conv (c), w_mix (c, c), b_mix (c), norm_rnn (c),
 *   the gates' w (c, c) each (mingru h, z; minlstm h, f, i), norm_ff (c), w_ff1 (F, c),
 *   b_ff1 (F), w_ff2 (c, F), b_ff2 (c).
 * H holds out; Aux per layer and step the rows of BlkRows. */
#ifndef BCONV
#define BCONV 3
#endif
#ifndef BFF
#define BFF 4
#endif
#define RMS_EPS (sizeof(REAL) == 8 ? (REAL)DBL_EPSILON : (REAL)FLT_EPSILON)

static int blk_base(int arch) { return arch == MINGRU_BLOCK ? MINGRU : MINLSTM; }
/* the group (drecur_row's row order: mingru z, h; minlstm f, i, h) of the cell's gate q */
static int blk_group(int arch, int q) { return q == 0 ? dgroups(blk_base(arch)) - 1 : q - 1; }

static inline REAL sqrt_(REAL v) {
    return sizeof(REAL) == 8 ? (REAL)__builtin_sqrt((double)v) : (REAL)__builtin_sqrtf((float)v);
}

/* Aux's rows per layer and step, in units of B: x, xm = x masked (what enters the window), pc,
 * x2, r1 (RMSNorm's rsqrt, one row), n1, the gates (drecur_row's aux_rows), h, x3, r2, n2,
 * f1, ph = Phi(f1) and a1 = gelu(f1) = f1 ph (F each) */
typedef struct { int x, xm, pc, x2, r1, n1, g, h, x3, r2, n2, f1, ph, a1, rows; } BlkRows;
static BlkRows blk_rows(int arch, int c) {
    BlkRows o;
    o.x = 0;
    o.xm = o.x + c;
    o.pc = o.xm + c;
    o.x2 = o.pc + c;
    o.r1 = o.x2 + c;
    o.n1 = o.r1 + 1;
    o.g = o.n1 + c;
    o.h = o.g + aux_rows(blk_base(arch), c);
    o.x3 = o.h + c;
    o.r2 = o.x3 + c;
    o.n2 = o.r2 + 1;
    o.f1 = o.n2 + c;
    o.ph = o.f1 + BFF * c;
    o.a1 = o.ph + BFF * c;
    o.rows = o.a1 + BFF * c;
    return o;
}

static int64_t blk_layer_size(int arch, int m, int c) {
    const int64_t G = dgroups(blk_base(arch)), F = (int64_t)BFF * c;
    return (int64_t)c * (m + 1) + (int64_t)c * (BCONV + 1) + (int64_t)c * (c + 1) + c +
           G * c * c + c + F * (c + 1) + c * (F + 1);
}
static int64_t blk_layer_offset(int arch, int i, int c) {
    return i == 0 ? 0 : blk_layer_size(arch, 1, c) + (int64_t)(i - 1) * blk_layer_size(arch, c, c);
}

/* split weights of a layer (sized for m = c), each matrix with its transpose where backward
 * multiplies by it: Win (c, m), bin, Wint (m, c), wconv (c, BCONV), bconv, Wmix (c, c), bmix,
 * Wmixt, g1, Wg (G c, c) in drecur_row's group order, Wgt (c, G c), g2, Wf1 (F, c), bf1, Wf1t
 * (c, F), Wf2 (c, F), bf2, Wf2t (F, c) */
typedef struct {
    REAL *Win, *bin, *Wint, *wconv, *bconv, *Wmix, *bmix, *Wmixt, *g1, *Wg, *Wgt, *g2, *Wf1, *bf1,
        *Wf1t, *Wf2, *bf2, *Wf2t;
} BlkSplit;
static int64_t blk_split_size(int arch, int c) {
    const int64_t G = dgroups(blk_base(arch)), F = (int64_t)BFF * c;
    return 3 * (int64_t)c * c + c + (int64_t)c * (BCONV + 1) + 3 * (int64_t)c * c + c + c +
           2 * G * c * c + c + 3 * F * c + F + c + F * c;
}
static BlkSplit blk_at(REAL *Sp, int arch, int i, int c) {
    const int64_t G = dgroups(blk_base(arch)), F = (int64_t)BFF * c, cc = (int64_t)c * c;
    BlkSplit s;
    s.Win = Sp + i * blk_split_size(arch, c);
    s.bin = s.Win + cc;
    s.Wint = s.bin + c;
    s.wconv = s.Wint + cc;
    s.bconv = s.wconv + (int64_t)c * BCONV;
    s.Wmix = s.bconv + c;
    s.bmix = s.Wmix + cc;
    s.Wmixt = s.bmix + c;
    s.g1 = s.Wmixt + cc;
    s.Wg = s.g1 + c;
    s.Wgt = s.Wg + G * cc;
    s.g2 = s.Wgt + G * cc;
    s.Wf1 = s.g2 + c;
    s.bf1 = s.Wf1 + F * c;
    s.Wf1t = s.bf1 + F;
    s.Wf2 = s.Wf1t + F * c;
    s.bf2 = s.Wf2 + F * c;
    s.Wf2t = s.bf2 + c;
    return s;
}

/* w (r, k) into A (r, k) and its transpose At (k, r) */
static const REAL *blk_matrix(const REAL *w, int r, int k, REAL *A, REAL *At) {
    for (int q = 0; q < r; q++)
        for (int j = 0; j < k; j++) {
            A[(int64_t)q * k + j] = w[(int64_t)q * k + j];
            At[(int64_t)j * r + q] = w[(int64_t)q * k + j];
        }
    return w + (int64_t)r * k;
}
static const REAL *blk_vector(const REAL *w, int n, REAL *v) {
    memcpy(v, w, sizeof(REAL) * n);
    return w + n;
}

static void blk_split(int arch, const REAL *Wk, int L, int c, REAL *Sp) {
    const int G = dgroups(blk_base(arch)), F = BFF * c;
    for (int i = 0; i < L; i++) {
        const int m = i ? c : 1;
        const REAL *p = Wk + blk_layer_offset(arch, i, c);
        BlkSplit s = blk_at(Sp, arch, i, c);
        p = blk_matrix(p, c, m, s.Win, s.Wint);
        p = blk_vector(p, c, s.bin);
        p = blk_vector(p, c * BCONV, s.wconv);
        p = blk_vector(p, c, s.bconv);
        p = blk_matrix(p, c, c, s.Wmix, s.Wmixt);
        p = blk_vector(p, c, s.bmix);
        p = blk_vector(p, c, s.g1);
        for (int q = 0; q < G; q++) {               /* the cell's gate q: rows of group g */
            const int g = blk_group(arch, q);
            for (int r = 0; r < c; r++)
                for (int j = 0; j < c; j++) {
                    const REAL v = p[((int64_t)q * c + r) * c + j];
                    s.Wg[((int64_t)g * c + r) * c + j] = v;
                    s.Wgt[(int64_t)j * G * c + (int64_t)g * c + r] = v;
                }
        }
        p += (int64_t)G * c * c;
        p = blk_vector(p, c, s.g2);
        p = blk_matrix(p, F, c, s.Wf1, s.Wf1t);
        p = blk_vector(p, F, s.bf1);
        p = blk_matrix(p, c, F, s.Wf2, s.Wf2t);
        blk_vector(p, c, s.bf2);
    }
}

static inline void in_rows(const REAL **X, const REAL *p, int n, int B) {
    for (int j = 0; j < n; j++) X[j] = p + (int64_t)j * B;
}
static inline void out_rows(REAL **O, REAL *p, int n, int B) {
    for (int j = 0; j < n; j++) O[j] = p + (int64_t)j * B;
}

/* n = x rsqrt(mean_j x_j^2 + eps) g over the c rows of x (c, B), per column; r (B): the rsqrt */
static void blk_rms(const REAL *x, const REAL *g, REAL *r, REAL *n, int c, int B) {
    SIMD for (int b = 0; b < B; b++) r[b] = 0;
    for (int j = 0; j < c; j++) {
        const REAL *xj = x + (int64_t)j * B;
        SIMD for (int b = 0; b < B; b++) r[b] += xj[b] * xj[b];
    }
    SIMD for (int b = 0; b < B; b++) r[b] = 1 / sqrt_(r[b] / c + RMS_EPS);
    for (int j = 0; j < c; j++) {
        const REAL *xj = x + (int64_t)j * B, gj = g[j];
        REAL *nj = n + (int64_t)j * B;
        SIMD for (int b = 0; b < B; b++) nj[b] = xj[b] * r[b] * gj;
    }
}

/* Its backward: gn (c, B), the gradient on n, added onto gx (c, B), and g's gradient added to
 * its lanes (acc, c x VL); tmp and s: B each of scratch. With n_j = x_j r g_j,
 * dr/dx_k = -r^3 x_k / c. */
static void blk_rms_grad(const REAL *x, const REAL *g, const REAL *r, const REAL *gn, REAL *gx,
                         REAL *acc, REAL *tmp, REAL *s, int c, int B) {
    SIMD for (int b = 0; b < B; b++) s[b] = 0;
    for (int j = 0; j < c; j++) {
        const REAL *xj = x + (int64_t)j * B, *gnj = gn + (int64_t)j * B, gj = g[j];
        SIMD for (int b = 0; b < B; b++) {
            tmp[b] = xj[b] * r[b];
            s[b] += gnj[b] * gj * xj[b];
        }
        lanes_dot(acc + (int64_t)j * VL, gnj, tmp, B);
    }
    for (int j = 0; j < c; j++) {
        const REAL *xj = x + (int64_t)j * B, *gnj = gn + (int64_t)j * B, gj = g[j];
        REAL *gxj = gx + (int64_t)j * B;
        SIMD for (int b = 0; b < B; b++)
            gxj[b] += gnj[b] * gj * r[b] - xj[b] * (r[b] * r[b] * r[b]) * s[b] / c;
    }
}

/* Forward of one member, as ssm_forward_member's: Hk (L, S, c, B) the outputs; Ak (L, T, rows,
 * B) with S = T + 1, else NULL and scratch holds (L, 2, rows, B), two steps' rows per layer, and
 * a ring of the window's masked x's (L, BCONV, c, B). */
static void blk_forward_member(int arch, int K, int L, int T, int P, int B, int c, int S,
                               REAL *Sp, const REAL *xk, const uint8_t *mkk, REAL *Hk, REAL *Ak,
                               REAL *scratch, const REAL **X, REAL **O, const Fill *f) {
    const BlkRows o = blk_rows(arch, c);
    const int base = blk_base(arch), R = dgroups(base) * c, F = BFF * c;
    const int64_t cb = (int64_t)c * B, rb = (int64_t)o.rows * B;
    const int t0 = first_step(K, P, B, mkk), zeros = S == 2 ? 2 : t0 + 1;
    REAL *ring = Ak ? NULL : scratch + (int64_t)L * 2 * rb;
    for (int i = 0; i < L; i++) memset(slot(Hk, i, 0, S, cb), 0, sizeof(REAL) * cb * zeros);
    if (!Ak) memset(scratch, 0, sizeof(REAL) * (L * 2 * rb + (int64_t)L * BCONV * cb));
    for (int t = t0; t < T; t++) {
        const int so = S == 2 ? (t + 1) % 2 : t + 1;
        const uint8_t *mk = mask_or1(t < P ? mkk + (int64_t)t * K * B : NULL, f);
        for (int i = 0; i < L; i++) {
            const int m = i == 0 ? 1 : c;
            const BlkSplit s = blk_at(Sp, arch, i, c);
            const REAL *in = i == 0 ? xk + (int64_t)t * K * B : slot(Hk, i - 1, so, S, cb);
            REAL *out = slot(Hk, i, so, S, cb);
            REAL *a = Ak ? Ak + ((int64_t)i * T + t) * rb : scratch + ((int64_t)i * 2 + (t + 1) % 2) * rb;
            const REAL *ap = Ak ? (t > t0 ? a - rb : NULL) : scratch + ((int64_t)i * 2 + t % 2) * rb;
            REAL *x = a + (int64_t)o.x * B, *xm = a + (int64_t)o.xm * B, *pc = a + (int64_t)o.pc * B;
            REAL *x2 = a + (int64_t)o.x2 * B, *n1 = a + (int64_t)o.n1 * B, *gt = a + (int64_t)o.g * B;
            REAL *h = a + (int64_t)o.h * B, *x3 = a + (int64_t)o.x3 * B, *n2 = a + (int64_t)o.n2 * B;
            REAL *f1 = a + (int64_t)o.f1 * B, *ph = a + (int64_t)o.ph * B, *a1 = a + (int64_t)o.a1 * B;
            const REAL *hp = ap ? ap + (int64_t)o.h * B : NULL;
            /* x = W_in u + b_in, and x masked, what enters the window */
            in_rows(X, in, m, B);
            out_rows(O, x, c, B);
            gemm(c, m, s.Win, s.bin, X, O, B);
            for (int j = 0; j < c; j++) {
                const REAL *xj = x + (int64_t)j * B;
                REAL *xmj = xm + (int64_t)j * B;
                SIMD for (int b = 0; b < B; b++) xmj[b] = xj[b] * mk[b];
            }
            /* pc = the causal depthwise convolution of the window and x, summed over k from 0 */
            for (int j = 0; j < c; j++) {
                const REAL *tap[BCONV];                         /* oldest first; NULL: zeros */
                for (int k = 0; k < BCONV - 1; k++) {
                    const int tt = t - (BCONV - 1) + k;
                    const REAL *src = NULL;
                    if (tt >= t0)
                        src = Ak ? Ak + ((int64_t)i * T + tt) * rb + (int64_t)o.xm * B
                                 : ring + ((int64_t)i * BCONV + tt % BCONV) * cb;
                    tap[k] = src ? src + (int64_t)j * B : NULL;
                }
                tap[BCONV - 1] = x + (int64_t)j * B;
                const REAL *w = s.wconv + (int64_t)j * BCONV, bcj = s.bconv[j];
                REAL *pj = pc + (int64_t)j * B;
                SIMD for (int b = 0; b < B; b++) pj[b] = 0;
                for (int k = 0; k < BCONV; k++)
                    if (tap[k]) { SIMD for (int b = 0; b < B; b++) pj[b] += w[k] * tap[k][b]; }
                SIMD for (int b = 0; b < B; b++) pj[b] += bcj;
            }
            if (!Ak) memcpy(ring + ((int64_t)i * BCONV + t % BCONV) * cb, xm, sizeof(REAL) * cb);
            /* x2 = W_mix pc + b_mix + x; n1 = RMSNorm(x2); the rnn's step on its gates */
            in_rows(X, pc, c, B);
            out_rows(O, x2, c, B);
            gemm(c, c, s.Wmix, s.bmix, X, O, B);
            SIMD for (int64_t e = 0; e < cb; e++) x2[e] += x[e];
            blk_rms(x2, s.g1, a + (int64_t)o.r1 * B, n1, c, B);
            in_rows(X, n1, c, B);
            out_rows(O, gt, R, B);
            gemm(R, c, s.Wg, NULL, X, O, B);
            for (int64_t e = 0; e < cb; e += B) drecur_row(base, gt + e, cb, B, row_or0(hp, e, f), h + e, mk);
            /* x3 = h + x2; n2 = RMSNorm(x3); out = W_f2 gelu(W_f1 n2 + b_f1) + b_f2 + x3 */
            SIMD for (int64_t e = 0; e < cb; e++) x3[e] = h[e] + x2[e];
            blk_rms(x3, s.g2, a + (int64_t)o.r2 * B, n2, c, B);
            in_rows(X, n2, c, B);
            out_rows(O, f1, F, B);
            gemm(F, c, s.Wf1, s.bf1, X, O, B);
            SIMD for (int64_t e = 0; e < (int64_t)F * B; e++) {
                ph[e] = phi_(f1[e]);
                a1[e] = f1[e] * ph[e];
            }
            in_rows(X, a1, F, B);
            out_rows(O, out, c, B);
            gemm(c, F, s.Wf2, s.bf2, X, O, B);
            for (int j = 0; j < c; j++) {
                const REAL *x3j = x3 + (int64_t)j * B;
                REAL *oj = out + (int64_t)j * B;
                SIMD for (int b = 0; b < B; b++) oj[b] = (oj[b] + x3j[b]) * mk[b];
            }
        }
    }
}

/* lane sums of an affine map's gradient, acc (r, k + 1, VL), into gW as w (r, k) then b (r) */
static REAL *blk_lane_affine(const REAL *acc, int r, int k, REAL *gW) {
    for (int q = 0; q < r; q++)
        for (int j = 0; j <= k; j++) {
            const REAL sum = lanes_total(acc + ((int64_t)q * (k + 1) + j) * VL);
            if (j < k) gW[(int64_t)q * k + j] = sum;
            else gW[(int64_t)r * k + q] = sum;
        }
    return gW + (int64_t)r * (k + 1);
}
static REAL *blk_lane_vector(const REAL *acc, int n, REAL *gW) {
    for (int j = 0; j < n; j++) gW[j] = lanes_total(acc + (int64_t)j * VL);
    return gW + n;
}

/* rows of backward's scratch (in units of B), then the lanes of its sums */
static int64_t blk_grad_rows(int arch, int c) {
    return (int64_t)(12 + dgroups(blk_base(arch)) + BCONV) * c + 2 * (int64_t)BFF * c + 2;
}
static int64_t blk_acc_size(int arch, int c) {
    const int64_t G = dgroups(blk_base(arch)), F = (int64_t)BFF * c;
    return ((int64_t)c * (c + 1) * 2 + (int64_t)c * (BCONV + 1) + 2 * c + G * c * c +
            F * (c + 1) + c * (F + 1)) * VL;
}
static int64_t blk_backward_scratch(int arch, int T, int B, int c) {
    return 2 * T * (int64_t)c * B + blk_grad_rows(arch, c) * B + blk_acc_size(arch, c);
}

/* Backward of one member (see dbackward_member), from blk_forward_member's Hk and Ak. The
 * window's taps of earlier steps pass their gradient back through `pend`, as in
 * ssm_backward_member. */
static void blk_backward_member(int arch, int K, int L, int T, int P, int B, int c, int tbptt,
                                REAL *Sp, const REAL *xk, const uint8_t *mkk, const REAL *Hk,
                                const REAL *Ak, const REAL *g_outk, REAL *gWk, REAL *Gs,
                                const REAL **Z, REAL **O, const Fill *f) {
    const BlkRows o = blk_rows(arch, c);
    const int base = blk_base(arch), G = dgroups(base), R = G * c, F = BFF * c;
    const int64_t cb = (int64_t)c * B, S = T + 1, rb = (int64_t)o.rows * B, FB = (int64_t)F * B;
    REAL *Gab = Gs, *Gbe = Gs + T * cb;
    REAL *gO = Gbe + T * cb, *ga1 = gO + cb, *gf1 = ga1 + FB, *gn2 = gf1 + FB, *gx3 = gn2 + cb;
    REAL *gh = gx3 + cb, *gp = gh + cb, *grec = gp + (int64_t)R * B, *gn1 = grec + cb;
    REAL *gx2 = gn1 + cb, *gpc = gx2 + cb, *gx = gpc + cb, *tmp = gx + cb, *sum = tmp + cb;
    REAL *pend = sum + cb, *ones = pend + (int64_t)BCONV * cb;
    REAL *acc_in = Gs + 2 * T * cb + blk_grad_rows(arch, c) * B;        /* sized for m = c */
    REAL *acc_conv = acc_in + (int64_t)c * (c + 1) * VL;
    REAL *acc_mix = acc_conv + (int64_t)c * (BCONV + 1) * VL;
    REAL *acc_g1 = acc_mix + (int64_t)c * (c + 1) * VL, *acc_gate = acc_g1 + (int64_t)c * VL;
    REAL *acc_g2 = acc_gate + (int64_t)R * c * VL, *acc_f1 = acc_g2 + (int64_t)c * VL;
    REAL *acc_f2 = acc_f1 + (int64_t)F * (c + 1) * VL;
    const REAL **Gp = Z + F + 1;                           /* gradient rows; Z: input rows */
    for (int b = 0; b < B; b++) ones[b] = 1;
    const int t0 = first_step(K, P, B, mkk);
    for (int i = L - 1; i >= 0; i--) {
        const int m = i == 0 ? 1 : c;
        const BlkSplit s = blk_at(Sp, arch, i, c);
        const REAL *Hin = i > 0 ? Hk + (int64_t)(i - 1) * S * cb : NULL;
        memset(acc_in, 0, sizeof(REAL) * blk_acc_size(arch, c));
        memset(pend, 0, sizeof(REAL) * BCONV * cb);
        int have_rec = 0;
        for (int t = T - 1; t >= t0; t--) {
            const StepIn st = step_in(i, L, t, T, t0, P, K, B, cb, tbptt, have_rec, Gab, Gbe,
                                      g_outk, mkk);
            if (st.skip) continue;
            const REAL *a = Ak + ((int64_t)i * T + t) * rb, *ap = t > t0 ? a - rb : NULL;
            const REAL *x = a + (int64_t)o.x * B, *pc = a + (int64_t)o.pc * B;
            const REAL *x2 = a + (int64_t)o.x2 * B, *r1 = a + (int64_t)o.r1 * B;
            const REAL *n1 = a + (int64_t)o.n1 * B, *gt = a + (int64_t)o.g * B;
            const REAL *x3 = a + (int64_t)o.x3 * B, *r2 = a + (int64_t)o.r2 * B;
            const REAL *n2 = a + (int64_t)o.n2 * B, *f1 = a + (int64_t)o.f1 * B;
            const REAL *ph = a + (int64_t)o.ph * B, *a1 = a + (int64_t)o.a1 * B;
            const REAL *hp = ap ? ap + (int64_t)o.h * B : NULL;
            const uint8_t *mk = mask_or1(st.mk, f);
            /* out = (W_f2 a1 + b_f2 + x3) mk */
            for (int j = 0; j < c; j++) {
                const REAL *ga_ = row_or0(st.ga, (int64_t)j * B, f), *go_ = row_or0(st.go, (int64_t)j * B, f);
                REAL *gj = gO + (int64_t)j * B;
                SIMD for (int b = 0; b < B; b++) gj[b] = (ga_[b] + go_[b]) * mk[b];
            }
            in_rows(Z, a1, F, B);
            Z[F] = ones;
            in_rows(Gp, gO, c, B);
            wgrad(c, F + 1, Gp, Z, acc_f2, B);
            out_rows(O, ga1, F, B);
            gemm(F, c, s.Wf2t, NULL, Gp, O, B);
            /* a1 = f1 ph: gelu'(f) = ph + f exp(-f^2 / 2) / sqrt(2 pi) */
            SIMD for (int64_t e = 0; e < FB; e++) {
                const REAL v = f1[e], q = -(v * v) * (REAL)0.5;
                gf1[e] = ga1[e] * (ph[e] + v * exp_(q < -80 ? -80 : q) * (REAL)0.3989422804014327);
            }
            /* f1 = W_f1 n2 + b_f1; n2 = RMSNorm(x3); out's x3 */
            in_rows(Z, n2, c, B);
            Z[c] = ones;
            in_rows(Gp, gf1, F, B);
            wgrad(F, c + 1, Gp, Z, acc_f1, B);
            out_rows(O, gn2, c, B);
            gemm(c, F, s.Wf1t, NULL, Gp, O, B);
            memcpy(gx3, gO, sizeof(REAL) * cb);
            blk_rms_grad(x3, s.g2, r2, gn2, gx3, acc_g2, tmp, sum, c, B);
            /* x3 = h + x2; h: the rnn's step (drecur_grad_row), its gates W_g n1 */
            for (int64_t e = 0; e < cb; e += B) {
                const REAL *gr0 = have_rec ? grec + e : f->zero, *gxe = gx3 + e;
                REAL *g = gh + e;
                SIMD for (int b = 0; b < B; b++) g[b] = (gxe[b] + gr0[b]) * mk[b];
                drecur_grad_row(base, gt + e, cb, B, row_or0(hp, e, f), g, gp + e, grec + e);
            }
            in_rows(Z, n1, c, B);
            in_rows(Gp, gp, R, B);
            wgrad(R, c, Gp, Z, acc_gate, B);
            out_rows(O, gn1, c, B);
            gemm(c, R, s.Wgt, NULL, Gp, O, B);
            /* n1 = RMSNorm(x2); x2 = W_mix pc + b_mix + x */
            memcpy(gx2, gx3, sizeof(REAL) * cb);
            blk_rms_grad(x2, s.g1, r1, gn1, gx2, acc_g1, tmp, sum, c, B);
            in_rows(Z, pc, c, B);
            Z[c] = ones;
            in_rows(Gp, gx2, c, B);
            wgrad(c, c + 1, Gp, Z, acc_mix, B);
            out_rows(O, gpc, c, B);
            gemm(c, c, s.Wmixt, NULL, Gp, O, B);
            /* pc = conv(window, x) + b_conv: x's own tap here, the earlier taps through pend */
            REAL *cur = pend + (int64_t)(t % BCONV) * cb;
            for (int j = 0; j < c; j++) {
                const REAL *w = s.wconv + (int64_t)j * BCONV, *gpj = gpc + (int64_t)j * B;
                const REAL *gx2j = gx2 + (int64_t)j * B;
                REAL *gxj = gx + (int64_t)j * B, *cj = cur + (int64_t)j * B;
                SIMD for (int b = 0; b < B; b++) {
                    gxj[b] = gx2j[b] + gpj[b] * w[BCONV - 1] + cj[b] * mk[b];
                    cj[b] = 0;
                }
                lanes_dot(acc_conv + ((int64_t)c * BCONV + j) * VL, gpj, NULL, B);   /* b_conv */
                lanes_dot(acc_conv + ((int64_t)j * BCONV + BCONV - 1) * VL, gpj, x + (int64_t)j * B, B);
                for (int k = 0; k < BCONV - 1; k++) {
                    const int tt = t - (BCONV - 1) + k;
                    if (tt < t0) continue;
                    const REAL *xm = Ak + ((int64_t)i * T + tt) * rb + (int64_t)(o.xm + j) * B;
                    REAL *pk = pend + (int64_t)(tt % BCONV) * cb + (int64_t)j * B;
                    lanes_dot(acc_conv + ((int64_t)j * BCONV + k) * VL, gpj, xm, B);
                    SIMD for (int b = 0; b < B; b++) pk[b] += gpj[b] * w[k];
                }
            }
            /* x = W_in u + b_in */
            const REAL *in = i == 0 ? xk + (int64_t)t * K * B : Hin + (int64_t)(t + 1) * cb;
            in_rows(Z, in, m, B);
            Z[m] = ones;
            in_rows(Gp, gx, c, B);
            wgrad(c, m + 1, Gp, Z, acc_in, B);
            if (st.gbt) {
                out_rows(O, st.gbt, m, B);
                gemm(m, c, s.Wint, NULL, Gp, O, B);
            }
            if (st.cut) memset(pend, 0, sizeof(REAL) * BCONV * cb);   /* the window's gradient too */
            have_rec = st.rec;
        }
        /* lane sums, written in the cell's parameter order */
        REAL *gW = gWk + blk_layer_offset(arch, i, c);
        gW = blk_lane_affine(acc_in, c, m, gW);
        for (int e = 0; e < c * BCONV; e++) gW[e] = lanes_total(acc_conv + (int64_t)e * VL);
        for (int j = 0; j < c; j++) gW[c * BCONV + j] = lanes_total(acc_conv + ((int64_t)c * BCONV + j) * VL);
        gW += (int64_t)c * (BCONV + 1);
        gW = blk_lane_affine(acc_mix, c, c, gW);
        gW = blk_lane_vector(acc_g1, c, gW);
        for (int q = 0; q < G; q++) {
            const int g = blk_group(arch, q);
            for (int r = 0; r < c; r++)
                for (int j = 0; j < c; j++)
                    gW[((int64_t)q * c + r) * c + j] = lanes_total(acc_gate + (((int64_t)g * c + r) * c + j) * VL);
        }
        gW += (int64_t)G * c * c;
        gW = blk_lane_vector(acc_g2, c, gW);
        gW = blk_lane_affine(acc_f1, F, c, gW);
        blk_lane_affine(acc_f2, c, F, gW);
        if (i > 0) { REAL *t_ = Gab; Gab = Gbe; Gbe = t_; }
    }
}

/* ------------------------------------------------------------------------------------------
 * The LRU in its paper's sequence layer (memgrid/cells.py: `lru_block`). Per step, from the
 * layer's input x:
 *   u = W_in x + b_in;  v = LayerNorm(u; g, beta);  z = lambda z + gamma (B v) (lru_unit_step);
 *   y = Re(C z) + D v;  q = gelu(y);  out = u + (W_1 q + b_1) sigmoid(W_2 q + b_2)
 * LayerNorm over the c channels, eps LNEPS; gelu the tanh approximation, y (1 + tanh(k0 (y +
 * k1 y^3))) / 2. A layer's parameters, in the cell's order: w_in (c, m), b_in (c), norm_w (c),
 * norm_b (c), the LRU's on c inputs (nu_log, theta_log, gamma_log, b_re, b_im, c_re, c_im, d),
 * w_glu1 (c, c), b_glu1 (c), w_glu2 (c, c), b_glu2 (c). H holds out; Aux per layer and step
 * the rows of LbRows. */
#ifndef LNEPS
#define LNEPS 1e-5
#endif
#define GELU_K0 ((REAL)0.79788456080286535588)          /* sqrt(2 / pi) */
#define GELU_K1 ((REAL)0.044715)

/* Aux's rows per layer and step, in units of B: u, du = u - its mean, r (LayerNorm's rsqrt,
 * one row), v, P = [B_re; B_im; D] v (3c), z (re, im: 2c), y, th (gelu's tanh), q, o1 = W_1 q
 * + b_1, sg = sigmoid(W_2 q + b_2) */
typedef struct { int u, du, r, v, P, z, y, th, q, o1, sg, rows; } LbRows;
static LbRows lb_rows(int c) {
    LbRows o;
    o.u = 0;
    o.du = o.u + c;
    o.r = o.du + c;
    o.v = o.r + 1;
    o.P = o.v + c;
    o.z = o.P + 3 * c;
    o.y = o.z + 2 * c;
    o.th = o.y + c;
    o.q = o.th + c;
    o.o1 = o.q + c;
    o.sg = o.o1 + c;
    o.rows = o.sg + c;
    return o;
}

static int64_t lb_layer_size(int m, int c) {
    return (int64_t)c * (m + 1) + 2 * c + lru_layer_size(2, c, c) + 2 * (int64_t)c * (c + 1);
}
static int64_t lb_layer_offset(int i, int c) {
    return i == 0 ? 0 : lb_layer_size(1, c) + (int64_t)(i - 1) * lb_layer_size(c, c);
}

/* split weights of a layer (sized for m = c): Win (c, m), bin, Wint (m, c), gn, bn (the
 * LayerNorm's), the LRU's (LruSplit, on c inputs), Wglu = [W_1; W_2] (2c, c), bglu (2c),
 * Wglut (c, 2c) */
typedef struct { REAL *Win, *bin, *Wint, *gn, *bn, *Wglu, *bglu, *Wglut; LruSplit lru; } LbSplit;
static int64_t lb_split_size(int c) {
    return 2 * (int64_t)c * c + 3 * c + lru_split_size(2, c) + 4 * (int64_t)c * c + 2 * c;
}
static LbSplit lb_at(REAL *Sp, int i, int c) {
    const int64_t cc = (int64_t)c * c;
    LbSplit s;
    s.Win = Sp + i * lb_split_size(c);
    s.bin = s.Win + cc;
    s.Wint = s.bin + c;
    s.gn = s.Wint + cc;
    s.bn = s.gn + c;
    s.lru = lru_at(s.bn + c, 2, 0, c);
    s.Wglu = s.bn + c + lru_split_size(2, c);
    s.bglu = s.Wglu + 2 * cc;
    s.Wglut = s.bglu + 2 * c;
    return s;
}

static void lb_split(const REAL *Wk, int L, int c, REAL *Sp) {
    for (int i = 0; i < L; i++) {
        const int m = i ? c : 1;
        const REAL *p = Wk + lb_layer_offset(i, c);
        LbSplit s = lb_at(Sp, i, c);
        p = blk_matrix(p, c, m, s.Win, s.Wint);
        p = blk_vector(p, c, s.bin);
        p = blk_vector(p, c, s.gn);
        p = blk_vector(p, c, s.bn);
        lru_split_layer(2, p, c, c, s.lru);
        p += lru_layer_size(2, c, c);
        for (int q = 0; q < 2; q++) {                    /* W_1, b_1, then W_2, b_2 */
            for (int r = 0; r < c; r++)
                for (int j = 0; j < c; j++) {
                    const REAL v = p[(int64_t)r * c + j];
                    s.Wglu[((int64_t)q * c + r) * c + j] = v;
                    s.Wglut[(int64_t)j * 2 * c + (int64_t)q * c + r] = v;
                }
            p += (int64_t)c * c;
            p = blk_vector(p, c, s.bglu + (int64_t)q * c);
        }
    }
}

/* v = (u - mean) rsqrt(var + eps) g + beta over the c rows of u, per column: du = u - mean,
 * r (B) the rsqrt */
static void lb_norm(const REAL *u, const REAL *g, const REAL *beta, REAL *du, REAL *r, REAL *v,
                    int c, int B) {
    SIMD for (int b = 0; b < B; b++) r[b] = 0;
    for (int j = 0; j < c; j++) {
        const REAL *uj = u + (int64_t)j * B;
        SIMD for (int b = 0; b < B; b++) r[b] += uj[b];
    }
    SIMD for (int b = 0; b < B; b++) r[b] = r[b] / c;                    /* the mean */
    for (int j = 0; j < c; j++) {
        const REAL *uj = u + (int64_t)j * B;
        REAL *dj = du + (int64_t)j * B;
        SIMD for (int b = 0; b < B; b++) dj[b] = uj[b] - r[b];
    }
    SIMD for (int b = 0; b < B; b++) r[b] = 0;
    for (int j = 0; j < c; j++) {
        const REAL *dj = du + (int64_t)j * B;
        SIMD for (int b = 0; b < B; b++) r[b] += dj[b] * dj[b];
    }
    SIMD for (int b = 0; b < B; b++) r[b] = 1 / sqrt_(r[b] / c + (REAL)LNEPS);
    for (int j = 0; j < c; j++) {
        const REAL *dj = du + (int64_t)j * B, gj = g[j], bj = beta[j];
        REAL *vj = v + (int64_t)j * B;
        SIMD for (int b = 0; b < B; b++) vj[b] = dj[b] * r[b] * gj + bj;
    }
}

/* Its backward: gv (c, B) onto gu (added), g's and beta's lane sums (acc_g, acc_b: c x VL);
 * with xh = du r, gxh = gv g: gu += r (gxh - mean(gxh) - xh mean(gxh xh)); m1, m2: B each */
static void lb_norm_grad(const REAL *du, const REAL *r, const REAL *g, const REAL *gv, REAL *gu,
                         REAL *acc_g, REAL *acc_b, REAL *m1, REAL *m2, REAL *tmp, int c, int B) {
    SIMD for (int b = 0; b < B; b++) { m1[b] = 0; m2[b] = 0; }
    for (int j = 0; j < c; j++) {
        const REAL *dj = du + (int64_t)j * B, *gvj = gv + (int64_t)j * B, gj = g[j];
        SIMD for (int b = 0; b < B; b++) {
            const REAL xh = dj[b] * r[b], gx = gvj[b] * gj;
            tmp[b] = xh;
            m1[b] += gx;
            m2[b] += gx * xh;
        }
        lanes_dot(acc_g + (int64_t)j * VL, gvj, tmp, B);
        lanes_dot(acc_b + (int64_t)j * VL, gvj, NULL, B);
    }
    for (int j = 0; j < c; j++) {
        const REAL *dj = du + (int64_t)j * B, *gvj = gv + (int64_t)j * B, gj = g[j];
        REAL *guj = gu + (int64_t)j * B;
        SIMD for (int b = 0; b < B; b++)
            guj[b] += r[b] * (gvj[b] * gj - m1[b] / c - dj[b] * r[b] * (m2[b] / c));
    }
}

/* Forward of one member, as blk_forward_member's: Ak (L, T, rows, B) with S = T + 1, else NULL
 * and scratch holds (L, 2, rows, B), two steps' rows per layer. */
static void lb_forward_member(int K, int L, int T, int P, int B, int c, int S, REAL *Sp,
                              const REAL *xk, const uint8_t *mkk, REAL *Hk, REAL *Ak,
                              REAL *scratch, const REAL **X, REAL **O, const Fill *f) {
    const LbRows o = lb_rows(c);
    const int64_t cb = (int64_t)c * B, rb = (int64_t)o.rows * B;
    const int t0 = first_step(K, P, B, mkk), zeros = S == 2 ? 2 : t0 + 1;
    for (int i = 0; i < L; i++) memset(slot(Hk, i, 0, S, cb), 0, sizeof(REAL) * cb * zeros);
    if (!Ak) memset(scratch, 0, sizeof(REAL) * L * 2 * rb);
    for (int t = t0; t < T; t++) {
        const int so = S == 2 ? (t + 1) % 2 : t + 1;
        const uint8_t *mk0 = t < P ? mkk + (int64_t)t * K * B : NULL, *mk = mask_or1(mk0, f);
        for (int i = 0; i < L; i++) {
            const int m = i == 0 ? 1 : c;
            const LbSplit s = lb_at(Sp, i, c);
            const REAL *in = i == 0 ? xk + (int64_t)t * K * B : slot(Hk, i - 1, so, S, cb);
            REAL *out = slot(Hk, i, so, S, cb);
            REAL *a = Ak ? Ak + ((int64_t)i * T + t) * rb : scratch + ((int64_t)i * 2 + (t + 1) % 2) * rb;
            const REAL *ap = Ak ? (t > t0 ? a - rb : NULL) : scratch + ((int64_t)i * 2 + t % 2) * rb;
            REAL *u = a + (int64_t)o.u * B, *v = a + (int64_t)o.v * B, *Pv = a + (int64_t)o.P * B;
            REAL *z = a + (int64_t)o.z * B, *y = a + (int64_t)o.y * B, *th = a + (int64_t)o.th * B;
            REAL *q = a + (int64_t)o.q * B, *o1 = a + (int64_t)o.o1 * B, *sg = a + (int64_t)o.sg * B;
            /* u = W_in x + b_in; v = LayerNorm(u) */
            in_rows(X, in, m, B);
            out_rows(O, u, c, B);
            gemm(c, m, s.Win, s.bin, X, O, B);
            lb_norm(u, s.gn, s.bn, a + (int64_t)o.du * B, a + (int64_t)o.r * B, v, c, B);
            /* the LRU on v: z, then y = Re(C z) + D v */
            in_rows(X, v, c, B);
            out_rows(O, Pv, 3 * c, B);
            gemm(3 * c, c, s.lru.Ain, NULL, X, O, B);
            for (int j = 0; j < c; j++)
                lru_unit_step(s.lru.u, j, c, cb, B, Pv, ap ? ap + (int64_t)o.z * B : NULL, z, mk0, f);
            in_rows(X, z, 2 * c, B);
            out_rows(O, y, c, B);
            gemm(c, 2 * c, s.lru.Cm, NULL, X, O, B);
            const REAL *dv = Pv + 2 * cb;
            SIMD for (int64_t e = 0; e < cb; e++) {
                const REAL ye = y[e] + dv[e];
                y[e] = ye;
                th[e] = tanh_(GELU_K0 * (ye + GELU_K1 * (ye * ye * ye)));
                q[e] = (REAL)0.5 * ye * (1 + th[e]);
            }
            /* out = u + (W_1 q + b_1) sigmoid(W_2 q + b_2) */
            in_rows(X, q, c, B);
            out_rows(O, o1, 2 * c, B);                       /* o1, then sg's pre-activation */
            gemm(2 * c, c, s.Wglu, s.bglu, X, O, B);
            for (int j = 0; j < c; j++) {
                const REAL *uj = u + (int64_t)j * B, *o1j = o1 + (int64_t)j * B;
                REAL *sj = sg + (int64_t)j * B, *oj = out + (int64_t)j * B;
                SIMD for (int b = 0; b < B; b++) {
                    sj[b] = sigm_(sj[b]);
                    oj[b] = (uj[b] + o1j[b] * sj[b]) * mk[b];
                }
            }
        }
    }
}

/* rows of backward's scratch (in units of B), then the lanes of its sums */
static int64_t lb_grad_rows(int c) { return 14 * (int64_t)c + 4; }
static int64_t lb_acc_size(int c) {
    return ((int64_t)c * (c + 1) + 2 * c + 3 * (int64_t)c * c + 2 * (int64_t)c * c + 3 * c +
            2 * (int64_t)c * (c + 1)) * VL;
}
static int64_t lb_backward_scratch(int T, int B, int c) {
    return 2 * T * (int64_t)c * B + lb_grad_rows(c) * B + lb_acc_size(c);
}

/* Backward of one member (see dbackward_member), from lb_forward_member's Hk and Ak. */
static void lb_backward_member(int K, int L, int T, int P, int B, int c, int tbptt, REAL *Sp,
                               const REAL *xk, const uint8_t *mkk, const REAL *Hk, const REAL *Ak,
                               const REAL *g_outk, REAL *gWk, REAL *Gs, const REAL **Z, REAL **O,
                               const Fill *f) {
    const LbRows o = lb_rows(c);
    const int64_t cb = (int64_t)c * B, S = T + 1, rb = (int64_t)o.rows * B;
    REAL *Gab = Gs, *Gbe = Gs + T * cb;
    REAL *gO = Gbe + T * cb, *gglu = gO + cb, *gq = gglu + 2 * cb, *gz = gq + cb;
    REAL *grec = gz + 2 * cb, *gP = grec + 2 * cb, *gv = gP + 3 * cb, *gu = gv + cb;
    REAL *m1 = gu + cb, *m2 = m1 + B, *tmp = m2 + B, *ones = tmp + B;
    REAL *acc_in = Gs + 2 * T * cb + lb_grad_rows(c) * B;            /* sized for m = c */
    REAL *acc_g = acc_in + (int64_t)c * (c + 1) * VL, *acc_b = acc_g + (int64_t)c * VL;
    REAL *acc_P = acc_b + (int64_t)c * VL, *acc_c = acc_P + 3 * (int64_t)c * c * VL;
    REAL *acc_u = acc_c + 2 * (int64_t)c * c * VL, *acc_glu = acc_u + 3 * (int64_t)c * VL;
    const REAL **Gp = Z + 2 * c + 1;                       /* gradient rows; Z: input rows */
    for (int b = 0; b < B; b++) ones[b] = 1;
    const int t0 = first_step(K, P, B, mkk);
    for (int i = L - 1; i >= 0; i--) {
        const int m = i == 0 ? 1 : c;
        const LbSplit s = lb_at(Sp, i, c);
        const REAL *Hin = i > 0 ? Hk + (int64_t)(i - 1) * S * cb : NULL;
        memset(acc_in, 0, sizeof(REAL) * lb_acc_size(c));
        int have_rec = 0;
        for (int t = T - 1; t >= t0; t--) {
            const StepIn st = step_in(i, L, t, T, t0, P, K, B, cb, tbptt, have_rec, Gab, Gbe,
                                      g_outk, mkk);
            if (st.skip) continue;
            const REAL *a = Ak + ((int64_t)i * T + t) * rb, *ap = t > t0 ? a - rb : NULL;
            const REAL *du = a + (int64_t)o.du * B, *r = a + (int64_t)o.r * B;
            const REAL *v = a + (int64_t)o.v * B, *Pv = a + (int64_t)o.P * B;
            const REAL *z = a + (int64_t)o.z * B, *y = a + (int64_t)o.y * B;
            const REAL *th = a + (int64_t)o.th * B, *q = a + (int64_t)o.q * B;
            const REAL *o1 = a + (int64_t)o.o1 * B, *sg = a + (int64_t)o.sg * B;
            const uint8_t *mk = mask_or1(st.mk, f);
            /* out = (u + o1 sg) mk */
            for (int j = 0; j < c; j++) {
                const REAL *ga_ = row_or0(st.ga, (int64_t)j * B, f), *go_ = row_or0(st.go, (int64_t)j * B, f);
                const REAL *o1j = o1 + (int64_t)j * B, *sj = sg + (int64_t)j * B;
                REAL *gj = gO + (int64_t)j * B, *g1 = gglu + (int64_t)j * B, *g2 = g1 + cb;
                SIMD for (int b = 0; b < B; b++) {
                    const REAL g = (ga_[b] + go_[b]) * mk[b];
                    gj[b] = g;
                    g1[b] = g * sj[b];
                    g2[b] = g * o1j[b] * (sj[b] * (1 - sj[b]));
                }
            }
            /* [o1; sg's pre-activation] = Wglu q + bglu; q = gelu(y) */
            in_rows(Z, q, c, B);
            Z[c] = ones;
            in_rows(Gp, gglu, 2 * c, B);
            wgrad(2 * c, c + 1, Gp, Z, acc_glu, B);
            out_rows(O, gq, c, B);
            gemm(c, 2 * c, s.Wglut, NULL, Gp, O, B);
            REAL *gy = gP + 2 * cb;                           /* y's gradient is D v's */
            SIMD for (int64_t e = 0; e < cb; e++) {
                const REAL ye = y[e], t_ = th[e];
                gy[e] = gq[e] * ((REAL)0.5 * (1 + t_) + (REAL)0.5 * ye * (1 - t_ * t_) * GELU_K0 *
                                 (1 + 3 * GELU_K1 * (ye * ye)));
            }
            /* y = Cm z + D v: Cm's gradient, then z's (from y and from step t + 1) */
            in_rows(Z, z, 2 * c, B);
            in_rows(Gp, gy, c, B);
            wgrad(c, 2 * c, Gp, Z, acc_c, B);
            out_rows(O, gz, 2 * c, B);
            gemm(2 * c, c, s.lru.Cmt, NULL, Gp, O, B);
            for (int j = 0; j < c; j++)
                lru_unit_grad(s.lru.u, j, c, cb, B, gz, grec, have_rec, st.mk, Pv,
                              ap ? ap + (int64_t)o.z * B : NULL, gP, acc_u, f);
            /* P = [B_re; B_im; D] v; v = LayerNorm(u) */
            in_rows(Z, v, c, B);
            in_rows(Gp, gP, 3 * c, B);
            wgrad(3 * c, c, Gp, Z, acc_P, B);
            out_rows(O, gv, c, B);
            gemm(c, 3 * c, s.lru.Aint, NULL, Gp, O, B);
            memcpy(gu, gO, sizeof(REAL) * cb);
            lb_norm_grad(du, r, s.gn, gv, gu, acc_g, acc_b, m1, m2, tmp, c, B);
            /* u = W_in x + b_in */
            const REAL *in = i == 0 ? xk + (int64_t)t * K * B : Hin + (int64_t)(t + 1) * cb;
            in_rows(Z, in, m, B);
            Z[m] = ones;
            in_rows(Gp, gu, c, B);
            wgrad(c, m + 1, Gp, Z, acc_in, B);
            if (st.gbt) {
                out_rows(O, st.gbt, m, B);
                gemm(m, c, s.Wint, NULL, Gp, O, B);
            }
            have_rec = st.rec;
        }
        /* lane sums, written in the cell's parameter order */
        REAL *gW = gWk + lb_layer_offset(i, c);
        gW = blk_lane_affine(acc_in, c, m, gW);
        gW = blk_lane_vector(acc_g, c, gW);
        gW = blk_lane_vector(acc_b, c, gW);
        lru_lane_sums(2, &s.lru, acc_u, acc_P, acc_c, c, c, gW);
        gW += lru_layer_size(2, c, c);
        gW = blk_lane_affine(acc_glu, c, c, gW);
        blk_lane_affine(acc_glu + (int64_t)c * (c + 1) * VL, c, c, gW);
        if (i > 0) { REAL *t_ = Gab; Gab = Gbe; Gbe = t_; }
    }
}

/* ------------------------------------------------------------------------------------------
 * Every cell of this file behind one interface: a member's weights, split weights, the rows
 * Aux keeps per layer and step, and the scratch of forward (evaluation) and backward. */
static int64_t layer_offset_of(int arch, int i, int c) {
    return IS_LRU(arch) ? lru_layer_offset(lru_n(arch), i, c)
         : IS_SSM(arch) ? ssm_layer_offset(arch, i, c)
         : IS_BLOCK(arch) ? blk_layer_offset(arch, i, c)
         : arch == LRU_BLOCK ? lb_layer_offset(i, c) : dlayer_offset(arch, i, c);
}
static int aux_of(int arch, int c) {
    return IS_LRU(arch) ? lru_rows(lru_n(arch), c)
         : IS_SSM(arch) ? ssm_rows(arch, c).rows
         : IS_BLOCK(arch) ? blk_rows(arch, c).rows
         : arch == LRU_BLOCK ? lb_rows(c).rows : aux_rows(arch, c);
}
static int64_t split_of(int arch, int c) {
    return IS_LRU(arch) ? lru_split_size(lru_n(arch), c)
         : IS_SSM(arch) ? ssm_split_size(arch, c)
         : IS_BLOCK(arch) ? blk_split_size(arch, c)
         : arch == LRU_BLOCK ? lb_split_size(c) : dsplit_size(dgroups(arch) * c, c);
}
static int64_t fwd_scratch_of(int arch, int L, int B, int c) {
    if (IS_LRU(arch)) return (int64_t)(2 * L + 1) * lru_n(arch) * c * B + (int64_t)c * B;
    if (IS_SSM(arch)) return (int64_t)L * (2 * ssm_rows(arch, c).rows + CONVW * c) * B;
    if (IS_BLOCK(arch)) return (int64_t)L * (2 * blk_rows(arch, c).rows + BCONV * c) * B;
    if (arch == LRU_BLOCK) return (int64_t)L * 2 * lb_rows(c).rows * B;
    return (int64_t)aux_rows(arch, c) * B;
}
static int64_t bwd_scratch_of(int arch, int T, int B, int c) {
    return IS_LRU(arch) ? lru_backward_scratch(lru_n(arch), T, B, c)
         : IS_SSM(arch) ? ssm_backward_scratch(arch, T, B, c)
         : IS_BLOCK(arch) ? blk_backward_scratch(arch, T, B, c)
         : arch == LRU_BLOCK ? lb_backward_scratch(T, B, c) : dbackward_scratch(arch, T, B, c);
}
static int pointers_of(int arch, int c) {
    if (IS_LRU(arch)) return lru_rows(lru_n(arch), c);
    if (IS_SSM(arch)) return 2 * c + 1 + ssm_nx(arch, c) + ssm_in(arch, c);
    if (IS_BLOCK(arch)) return 2 * (BFF * c + 1) + dgroups(blk_base(arch)) * c;   /* Z, then Gp */
    if (arch == LRU_BLOCK) return 5 * c + 1;                                       /* Z, then Gp */
    return c + 1 + dgroups(arch) * c;
}
static void split_of_member(int arch, const REAL *Wk, int L, int c, REAL *Sp) {
    if (IS_LRU(arch)) lru_split(lru_n(arch), Wk, L, c, Sp);
    else if (IS_SSM(arch)) ssm_split(arch, Wk, L, c, Sp);
    else if (IS_BLOCK(arch)) blk_split(arch, Wk, L, c, Sp);
    else if (arch == LRU_BLOCK) lb_split(Wk, L, c, Sp);
    else dsplit(arch, Wk, L, c, Sp);
}
static void forward_of(int arch, int K, int L, int T, int P, int B, int c, int S, REAL *Sp,
                       const REAL *xk, const uint8_t *mkk, REAL *Hk, REAL *Ak, REAL *scratch,
                       const REAL **X, REAL **O, const Fill *f) {
    if (IS_LRU(arch))
        lru_forward_member(lru_n(arch), K, L, T, P, B, c, S, Sp, xk, mkk, Hk, Ak, scratch, X, O, f);
    else if (IS_SSM(arch)) ssm_forward_member(arch, K, L, T, P, B, c, S, Sp, xk, mkk, Hk, Ak, scratch, X, O, f);
    else if (IS_BLOCK(arch)) blk_forward_member(arch, K, L, T, P, B, c, S, Sp, xk, mkk, Hk, Ak, scratch, X, O, f);
    else if (arch == LRU_BLOCK) lb_forward_member(K, L, T, P, B, c, S, Sp, xk, mkk, Hk, Ak, scratch, X, O, f);
    else dforward_member(arch, K, L, T, P, B, c, S, Sp, xk, mkk, Hk, Ak, scratch, X, O, f);
}
static void backward_of(int arch, int K, int L, int T, int P, int B, int c, int tbptt, REAL *Sp,
                        const REAL *xk, const uint8_t *mkk, const REAL *Hk, const REAL *Ak,
                        const REAL *g_outk, REAL *gWk, REAL *Gs, const REAL **Z, REAL **O,
                        const Fill *f) {
    if (IS_LRU(arch))
        lru_backward_member(lru_n(arch), K, L, T, P, B, c, tbptt, Sp, xk, mkk, Hk, Ak, g_outk, gWk,
                            Gs, Z, O, f);
    else if (IS_SSM(arch))
        ssm_backward_member(arch, K, L, T, P, B, c, tbptt, Sp, xk, mkk, Hk, Ak, g_outk, gWk, Gs, Z, O, f);
    else if (IS_BLOCK(arch))
        blk_backward_member(arch, K, L, T, P, B, c, tbptt, Sp, xk, mkk, Hk, Ak, g_outk, gWk, Gs, Z, O, f);
    else if (arch == LRU_BLOCK)
        lb_backward_member(K, L, T, P, B, c, tbptt, Sp, xk, mkk, Hk, Ak, g_outk, gWk, Gs, Z, O, f);
    else dbackward_member(arch, K, L, T, P, B, c, tbptt, Sp, xk, mkk, Hk, Ak, g_outk, gWk, Gs, Z, O, f);
}
#define MAX_PARAMS 20           /* a layer's parameters at most (lru_block's 16) */
/* the sizes of a layer's parameters, in the cell's order; returns how many (MAX_PARAMS at most) */
static int param_sizes(int arch, int m, int c, int64_t *out) {
    if (IS_LRU(arch)) {               /* nu_log, theta_log (LRU), gamma_log, B's, C's, d */
        const int n = lru_n(arch);
        int k = 0;
        for (int q = 0; q <= n; q++) out[k++] = c;
        for (int q = 0; q < n; q++) out[k++] = (int64_t)c * m;
        for (int q = 0; q < n; q++) out[k++] = (int64_t)c * c;
        out[k++] = (int64_t)c * m;
        return k;
    }
    if (IS_SSM(arch)) {
        const int r = ssm_rank(c), pin = ssm_in(arch, c), nx = ssm_nx(arch, c);
        int n = 0;
        out[n++] = (int64_t)pin * m;
        out[n++] = pin;
        if (ssm_conv(arch)) {
            out[n++] = (int64_t)c * CONVW;
            out[n++] = c;
        }
        out[n++] = (int64_t)nx * c;
        out[n++] = (int64_t)c * r;
        out[n++] = c;
        out[n++] = (int64_t)c * S6N;
        out[n++] = c;
        if (ssm_cx(arch)) out[n++] = (int64_t)c * S6N;
        return n;
    }
    if (arch == LRU_BLOCK) {       /* w_in, b_in, the LayerNorm's, the LRU's, the GLU's */
        int n = 0;
        out[n++] = (int64_t)c * m;
        for (int k = 0; k < 3; k++) out[n++] = c;
        n += param_sizes(LRU, c, c, out + n);
        for (int k = 0; k < 2; k++) {
            out[n++] = (int64_t)c * c;
            out[n++] = c;
        }
        return n;
    }
    if (IS_BLOCK(arch)) {
        const int F = BFF * c;
        const int64_t sz[] = {(int64_t)c * m, c, (int64_t)c * BCONV, c, (int64_t)c * c, c, c};
        int n = 0;
        for (int k = 0; k < 7; k++) out[n++] = sz[k];
        for (int q = 0; q < dgroups(blk_base(arch)); q++) out[n++] = (int64_t)c * c;
        out[n++] = c;
        out[n++] = (int64_t)F * c;
        out[n++] = F;
        out[n++] = (int64_t)c * F;
        out[n++] = c;
        return n;
    }
    for (int g = 0; g < dgroups(arch); g++) {
        out[2 * g] = (int64_t)c * m;
        out[2 * g + 1] = c;
    }
    return 2 * dgroups(arch);
}

/* phi_ of n numbers (what tests/test_diagonal.py holds to the normal distribution function) */
int NAME(memgrid_diag_phi)(int64_t n, const REAL *x, REAL *out) {
    SIMD for (int64_t e = 0; e < n; e++) out[e] = phi_(x[e]);
    return 0;
}

/* sincos_ of n numbers (what tests/test_diagonal.py holds to sin and cos) */
int NAME(memgrid_diag_sincos)(int64_t n, const REAL *x, REAL *sn, REAL *cs) {
    SIMD for (int64_t e = 0; e < n; e++) sincos_(x[e], sn + e, cs + e);
    return 0;
}

/* Rows of Aux per layer and step, for the caller's buffer */
int NAME(memgrid_diag_aux_rows)(int arch, int c) { return aux_of(arch, c); }

int NAME(memgrid_diag_forward)(int arch, int K, int L, int T, int P, int B, int c, int S,
                               const REAL *W, const REAL *x, const uint8_t *mask, REAL *H, REAL *Aux) {
    FLUSH_BEGIN;
    const int64_t wk = layer_offset_of(arch, L, c), cb = (int64_t)c * B;
    const int64_t sp = split_of(arch, c) * L, fs = fwd_scratch_of(arch, L, B, c);
    REAL *Sp = malloc(sizeof(REAL) * (sp + fs + fill_size(B)));
    const REAL **X = malloc(sizeof(REAL *) * pointers_of(arch, c));
    REAL **O = malloc(sizeof(REAL *) * pointers_of(arch, c));
    if (!Sp || !X || !O) { free(Sp); free(X); free(O); FLUSH_END; return 1; }
    REAL *scratch = Sp + sp;
    const Fill f = fill_at(scratch + fs, B);
    for (int k = 0; k < K; k++) {
        split_of_member(arch, W + k * wk, L, c, Sp);
        forward_of(arch, K, L, T, P, B, c, S, Sp, x + (int64_t)k * B, mask + (int64_t)k * B,
                   H + (int64_t)k * L * S * cb, Aux ? Aux + (int64_t)k * L * T * aux_of(arch, c) * B : NULL,
                   scratch, X, O, &f);
    }
    free(Sp); free(X); free(O);
    FLUSH_END;
    return 0;
}

int NAME(memgrid_diag_backward)(int arch, int K, int L, int T, int P, int B, int c, int tbptt,
                                const REAL *W, const REAL *x, const uint8_t *mask, const REAL *H,
                                const REAL *Aux, const REAL *g_out, REAL *gW) {
    FLUSH_BEGIN;
    const int64_t wk = layer_offset_of(arch, L, c), cb = (int64_t)c * B, S = T + 1;
    const int64_t sp = split_of(arch, c) * L, bs = bwd_scratch_of(arch, T, B, c);
    REAL *Sp = malloc(sizeof(REAL) * (sp + bs + fill_size(B)));
    const REAL **Z = malloc(sizeof(REAL *) * pointers_of(arch, c));
    REAL **O = malloc(sizeof(REAL *) * pointers_of(arch, c));
    if (!Sp || !Z || !O) { free(Sp); free(Z); free(O); FLUSH_END; return 1; }
    const Fill f = fill_at(Sp + sp + bs, B);
    for (int k = 0; k < K; k++) {
        split_of_member(arch, W + k * wk, L, c, Sp);
        backward_of(arch, K, L, T, P, B, c, tbptt, Sp, x + (int64_t)k * B, mask + (int64_t)k * B,
                    H + (int64_t)k * L * S * cb, Aux + (int64_t)k * L * T * aux_of(arch, c) * B,
                    g_out + (int64_t)k * cb, gW + k * wk, Sp + sp, Z, O, &f);
    }
    free(Sp); free(Z); free(O);
    FLUSH_END;
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * One training step of every member in one call, as csrc/cells.c's memgrid_train_step: the
 * parameters in memgrid.models.param_shapes' order (each layer's in the cell's order; then
 * w_out, b_out with a linear readout), their momentum buffers (Adam: first moments), sqs and
 * adam as there. Per member: forward, the readout and the gradient of the mean absolute error,
 * backward, the update, each product and sum in a fixed order (pack invariance). */
int64_t NAME(memgrid_diag_train_scratch)(int arch, int L, int T, int B, int c) {
    const int64_t cb = (int64_t)c * B, hs = (int64_t)L * (T + 1) * cb;
    return up16(split_of(arch, c) * L) + up16(hs) + up16((int64_t)L * T * aux_of(arch, c) * B) +
           up16(cb) + 2 * up16(layer_offset_of(arch, L, c)) + up16(bwd_scratch_of(arch, T, B, c)) +
           up16(B) + fill_size(B);
}

int NAME(memgrid_diag_train_step)(int arch, int K, int L, int T, int P, int B, int c, int tbptt,
                                  int linear, REAL *const *params, REAL *const *bufs, const REAL *lr,
                                  const REAL *mom, REAL *const *sqs, const REAL *adam, const REAL *x,
                                  const uint8_t *mask, const REAL *y, REAL *yhat, REAL *ws) {
    FLUSH_BEGIN;
    const int64_t cb = (int64_t)c * B, S = T + 1, hs = (int64_t)L * S * cb;
    const int64_t wk = layer_offset_of(arch, L, c);
    REAL *Sp = ws, *H = Sp + up16(split_of(arch, c) * L), *Aux = H + up16(hs);
    REAL *g_out = Aux + up16((int64_t)L * T * aux_of(arch, c) * B), *Wk = g_out + up16(cb);
    REAL *gW = Wk + up16(wk), *Gs = gW + up16(wk), *gy = Gs + up16(bwd_scratch_of(arch, T, B, c));
    const Fill f = fill_at(gy + up16(B), B);
    const REAL **X = malloc(sizeof(REAL *) * pointers_of(arch, c));
    REAL **O = malloc(sizeof(REAL *) * pointers_of(arch, c));
    int64_t *sizes = malloc(sizeof(int64_t) * MAX_PARAMS * L);
    if (!X || !O || !sizes) { free(X); free(O); free(sizes); FLUSH_END; return 1; }
    int np = 0;                                     /* the layers' parameters, in order */
    for (int i = 0; i < L; i++) np += param_sizes(arch, i ? c : 1, c, sizes + np);
    const REAL *last = H + ((int64_t)(L - 1) * S + T) * cb;
    for (int k = 0; k < K; k++) {
        const REAL *xk = x + (int64_t)k * B, *yk = y + (int64_t)k * B;
        const uint8_t *mkk = mask + (int64_t)k * B;
        REAL *yh = yhat + (int64_t)k * B;
        const Opt o = member_opt(k, lr, mom, sqs ? adam : NULL);
        for (int n = 0, e = 0; n < np; e += sizes[n], n++)
            memcpy(Wk + e, params[n] + k * sizes[n], sizeof(REAL) * sizes[n]);
        split_of_member(arch, Wk, L, c, Sp);
        forward_of(arch, K, L, T, P, B, c, (int)S, Sp, xk, mkk, H, Aux, NULL, X, O, &f);
        readout_member(B, c, linear, params + np, bufs + np, sqs ? sqs + np : NULL, k, last, yk,
                       yh, gy, g_out, &o);
        backward_of(arch, K, L, T, P, B, c, tbptt, Sp, xk, mkk, H, Aux, g_out, gW, Gs, X, O, &f);
        for (int n = 0, e = 0; n < np; e += sizes[n], n++) {
            REAL *p = params[n] + k * sizes[n], *bf = bufs[n] + k * sizes[n];
            REAL *q = sqs ? sqs[n] + k * sizes[n] : NULL;
            for (int64_t j = 0; j < sizes[n]; j++) update1(p + j, bf + j, q ? q + j : &no_sq, gW[e + j], &o);
        }
    }
    free(X); free(O); free(sizes);
    FLUSH_END;
    return 0;
}
