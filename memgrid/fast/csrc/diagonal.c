/* The diagonal recurrences minGRU, minLSTM and the LRU on the CPU (memgrid/fast/diagonal.py
 * builds this file and calls it): forward and backward through time of every member, layer and step
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
 * The LRU's state is complex, its a_t a constant lambda per unit, and it reads its output
 * through a matrix (its section below).
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
#include <math.h>

#include "common.h"

enum { MINGRU = 0, MINLSTM = 1, LRU = 2 };

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

static void dforward_member(int arch, int K, int L, int T, int P, int B, int c, int S, REAL *Sp,
                            const REAL *xk, const uint8_t *mkk, REAL *Hk, REAL *Ak, REAL *scratch,
                            const REAL **X, REAL **O) {
    const int R = dgroups(arch) * c, Ra = aux_rows(arch, c);
    const int64_t cb = (int64_t)c * B;
    const int t0 = first_step(K, P, B, mkk), zeros = S == 2 ? 2 : t0 + 1;
    for (int i = 0; i < L; i++) memset(slot(Hk, i, 0, S, cb), 0, sizeof(REAL) * cb * zeros);
    for (int t = t0; t < T; t++) {
        int sp = S == 2 ? t % 2 : t, so = S == 2 ? (t + 1) % 2 : t + 1;
        const uint8_t *mk = t < P ? mkk + (int64_t)t * K * B : NULL;
        for (int i = 0; i < L; i++) {
            const int m = i == 0 ? 1 : c;
            const REAL *hp = slot(Hk, i, sp, S, cb);
            const REAL *in = i == 0 ? xk + (int64_t)t * K * B : slot(Hk, i - 1, so, S, cb);
            REAL *h = slot(Hk, i, so, S, cb);
            REAL *a = Ak ? Ak + ((int64_t)i * T + t) * Ra * B : scratch;
            for (int j = 0; j < m; j++) X[j] = in + (int64_t)j * B;
            for (int r = 0; r < R; r++) O[r] = a + (int64_t)r * B;
            gemm(R, m, dA(Sp, i, R, c), dbias(Sp, i, R, c), X, O, B);
            for (int64_t e = 0; e < cb; e += B) {
                const REAL *hpr = hp + e;
                REAL *hr = h + e;
                if (arch == MINGRU) {
                    REAL *zg = a + e, *gg = zg + cb;
                    SIMD for (int b = 0; b < B; b++) {
                        REAL zv = sigm_(zg[b]), pv = gg[b], gv = gpos_(pv);
                        REAL hv = zv < (REAL)0.5 ? hpr[b] + zv * (gv - hpr[b])       /* lerp */
                                                 : gv - (gv - hpr[b]) * (1 - zv);
                        zg[b] = zv;
                        gg[b] = pv >= 0 ? gv : -gv;   /* g > 0: its sign tells the branch */
                        hr[b] = mk ? hv * mk[b] : hv;
                    }
                } else {        /* f / (f + i) = (1 + e_i) / (2 + e_f + e_i), e = exp(-P) */
                    REAL *fg = a + e, *ig = fg + cb, *gg = ig + cb, *ug = gg + cb, *vg = ug + cb;
                    SIMD for (int b = 0; b < B; b++) {
                        REAL pf = -fg[b], pi = -ig[b], pv = gg[b], gv = gpos_(pv);
                        REAL ef = exp_(pf > 80 ? 80 : (pf < -80 ? -80 : pf));
                        REAL ei = exp_(pi > 80 ? 80 : (pi < -80 ? -80 : pi));
                        REAL inv = 1 / (2 + ef + ei);
                        REAL av = (1 + ei) * inv, qv = (1 + ef) * inv;
                        REAL hv = hpr[b] * av + gv * qv;
                        fg[b] = av; ig[b] = qv; ug[b] = ef * inv; vg[b] = ei * inv;
                        gg[b] = pv >= 0 ? gv : -gv;
                        hr[b] = mk ? hv * mk[b] : hv;
                    }
                }
            }
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
                             const REAL **Z, REAL **O) {
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
            const REAL *ga = i < L - 1 ? Gab + (int64_t)t * cb : NULL;
            const REAL *go = (i == L - 1 && t == T - 1) ? g_outk : NULL;
            REAL *gbt = i > 0 ? Gbe + (int64_t)t * cb : NULL;
            if (!ga && !go && !have_rec) {
                if (gbt) memset(gbt, 0, sizeof(REAL) * cb);
                continue;
            }
            const int cut = tbptt > 0 && t > 0 && (T - t) % tbptt == 0, rec = !cut && t > t0;
            const REAL *hp = Hi + (int64_t)t * cb;
            const uint8_t *mk = t < P ? mkk + (int64_t)t * K * B : NULL;
            const REAL *a = Ak + ((int64_t)i * T + t) * Ra * B;
            for (int64_t e = 0; e < cb; e += B) {
                const REAL *ga_ = ga ? ga + e : NULL, *go_ = go ? go + e : NULL, *hpr = hp + e;
                REAL *gr = grec + e, *g = gh + e;
                SIMD for (int b = 0; b < B; b++) {
                    REAL v = (ga_ ? ga_[b] : 0) + (go_ ? go_[b] : 0) + (have_rec ? gr[b] : 0);
                    g[b] = mk ? v * mk[b] : v;
                }
                if (arch == MINGRU) {
                    const REAL *zg = a + e, *gg = zg + cb;
                    REAL *pz = gp + e, *ph = pz + cb;
                    SIMD for (int b = 0; b < B; b++) {
                        REAL zv = zg[b], gs = gg[b], gv = gs < 0 ? -gs : gs;
                        REAL dg = gs < 0 ? gv * (1 - gv) : 1;
                        pz[b] = g[b] * (gv - hpr[b]) * (zv * (1 - zv));
                        ph[b] = g[b] * zv * dg;
                        gr[b] = g[b] * (1 - zv);
                    }
                } else {
                    const REAL *fg = a + e, *ig = fg + cb, *gg = ig + cb, *ug = gg + cb, *vg = ug + cb;
                    REAL *pf = gp + e, *pi = pf + cb, *ph = pi + cb;
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
            const REAL *in = i == 0 ? xk + (int64_t)t * K * B : Hin + (int64_t)(t + 1) * cb;
            for (int j = 0; j < m; j++) Z[j] = in + (int64_t)j * B;
            Z[m] = ones;
            wgrad(R, cols, Gp, Z, acc, B);
            if (gbt) {
                for (int j = 0; j < m; j++) O[j] = gbt + (int64_t)j * B;
                gemm(m, R, At, NULL, Gp, O, B);
            }
            have_rec = rec;
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
 * and P = [B_re; B_im; D] u_t (3c). */
static int64_t lru_layer_size(int m, int c) { return 3 * (int64_t)c + 3 * (int64_t)c * m + 2 * (int64_t)c * c; }
static int64_t lru_layer_offset(int i, int c) {
    return i == 0 ? 0 : lru_layer_size(1, c) + (int64_t)(i - 1) * lru_layer_size(c, c);
}

/* split, per layer (sized for m = c): Ain (3c, m), Aint (m, 3c), Cm = [c_re | -c_im] (c, 2c),
 * Cmt (2c, c), then per unit lambda's real and imaginary parts, gamma, |lambda|, its phase and
 * exp(nu) */
static int64_t lru_split_size(int c) { return 6 * (int64_t)c * c + 4 * (int64_t)c * c + 6 * (int64_t)c; }
static REAL *lru_Ain(REAL *Sp, int i, int c) { return Sp + i * lru_split_size(c); }
static REAL *lru_Aint(REAL *Sp, int i, int c) { return lru_Ain(Sp, i, c) + 3 * (int64_t)c * c; }
static REAL *lru_Cm(REAL *Sp, int i, int c) { return lru_Aint(Sp, i, c) + 3 * (int64_t)c * c; }
static REAL *lru_Cmt(REAL *Sp, int i, int c) { return lru_Cm(Sp, i, c) + 2 * (int64_t)c * c; }
static REAL *lru_units(REAL *Sp, int i, int c) { return lru_Cmt(Sp, i, c) + 2 * (int64_t)c * c; }

static void lru_split(const REAL *Wk, int L, int c, REAL *Sp) {
    for (int i = 0; i < L; i++) {
        const int m = i ? c : 1, R = 3 * c;
        const REAL *W = Wk + lru_layer_offset(i, c);
        const REAL *nu = W, *th = nu + c, *ga = th + c, *bre = ga + c, *bim = bre + (int64_t)c * m;
        const REAL *cre = bim + (int64_t)c * m, *cim = cre + (int64_t)c * c, *d = cim + (int64_t)c * c;
        REAL *Ain = lru_Ain(Sp, i, c), *Aint = lru_Aint(Sp, i, c), *Cm = lru_Cm(Sp, i, c);
        REAL *Cmt = lru_Cmt(Sp, i, c), *u = lru_units(Sp, i, c);
        for (int r = 0; r < c; r++)
            for (int j = 0; j < m; j++) {
                const REAL v[3] = {bre[(int64_t)r * m + j], bim[(int64_t)r * m + j], d[(int64_t)r * m + j]};
                for (int q = 0; q < 3; q++) {
                    Ain[(int64_t)(q * c + r) * m + j] = v[q];
                    Aint[(int64_t)j * R + q * c + r] = v[q];
                }
            }
        for (int r = 0; r < c; r++)
            for (int j = 0; j < c; j++) {
                Cm[(int64_t)r * 2 * c + j] = cre[(int64_t)r * c + j];
                Cm[(int64_t)r * 2 * c + c + j] = -cim[(int64_t)r * c + j];
                Cmt[(int64_t)j * c + r] = cre[(int64_t)r * c + j];
                Cmt[(int64_t)(c + j) * c + r] = -cim[(int64_t)r * c + j];
            }
        for (int r = 0; r < c; r++) {        /* lambda = |lambda| (cos ph + i sin ph) */
            const REAL en = exp((double)nu[r]), mod = exp(-(double)en), ph = exp((double)th[r]);
            u[r] = mod * (REAL)cos((double)ph);
            u[c + r] = mod * (REAL)sin((double)ph);
            u[2 * c + r] = exp((double)ga[r]);
            u[3 * c + r] = mod;
            u[4 * c + r] = ph;
            u[5 * c + r] = en;
        }
    }
}

/* Forward of one member (see dforward_member); Ak (L, T, 5c, B) with S = T + 1, else NULL and
 * scratch (L, 2, 2c, B) + (3c, B) holds two steps of states and the step's P. */
static void lru_forward_member(int K, int L, int T, int P, int B, int c, int S, REAL *Sp,
                               const REAL *xk, const uint8_t *mkk, REAL *Hk, REAL *Ak,
                               REAL *scratch, const REAL **X, REAL **O) {
    const int64_t cb = (int64_t)c * B;
    const int t0 = first_step(K, P, B, mkk), zeros = S == 2 ? 2 : t0 + 1;
    for (int i = 0; i < L; i++) memset(slot(Hk, i, 0, S, cb), 0, sizeof(REAL) * cb * zeros);
    if (!Ak) memset(scratch, 0, sizeof(REAL) * L * 4 * cb);
    for (int t = t0; t < T; t++) {
        int so = S == 2 ? (t + 1) % 2 : t + 1;
        const uint8_t *mk = t < P ? mkk + (int64_t)t * K * B : NULL;
        for (int i = 0; i < L; i++) {
            const int m = i == 0 ? 1 : c;
            const REAL *in = i == 0 ? xk + (int64_t)t * K * B : slot(Hk, i - 1, so, S, cb);
            REAL *y = slot(Hk, i, so, S, cb);
            REAL *z, *p;
            const REAL *zp;
            if (Ak) {
                z = Ak + ((int64_t)i * T + t) * 5 * cb;
                zp = t > t0 ? z - 5 * cb : NULL;
                p = z + 2 * cb;
            } else {
                z = scratch + ((int64_t)i * 2 + (t + 1) % 2) * 2 * cb;
                zp = scratch + ((int64_t)i * 2 + t % 2) * 2 * cb;
                p = scratch + (int64_t)L * 4 * cb;
            }
            for (int j = 0; j < m; j++) X[j] = in + (int64_t)j * B;
            for (int r = 0; r < 3 * c; r++) O[r] = p + (int64_t)r * B;
            gemm(3 * c, m, lru_Ain(Sp, i, c), NULL, X, O, B);
            const REAL *u = lru_units(Sp, i, c);
            for (int j = 0; j < c; j++) {
                const REAL lr = u[j], li = u[c + j], g = u[2 * c + j];
                const REAL *pr = p + (int64_t)j * B, *pi = pr + cb;
                const REAL *re0 = zp ? zp + (int64_t)j * B : NULL, *im0 = zp ? re0 + cb : NULL;
                REAL *re = z + (int64_t)j * B, *im = re + cb;
                SIMD for (int b = 0; b < B; b++) {
                    REAL a = re0 ? re0[b] : 0, bb = im0 ? im0[b] : 0;
                    REAL vr = lr * a - li * bb + g * pr[b], vi = lr * bb + li * a + g * pi[b];
                    re[b] = mk ? vr * mk[b] : vr;
                    im[b] = mk ? vi * mk[b] : vi;
                }
            }
            for (int j = 0; j < 2 * c; j++) X[j] = z + (int64_t)j * B;
            for (int j = 0; j < c; j++) O[j] = y + (int64_t)j * B;
            gemm(c, 2 * c, lru_Cm(Sp, i, c), NULL, X, O, B);
            for (int64_t e = 0; e < cb; e += B) {
                const REAL *du = p + 2 * cb + e;
                REAL *ye = y + e;
                if (mk) { SIMD for (int b = 0; b < B; b++) ye[b] = (ye[b] + du[b]) * mk[b]; }
                else    { SIMD for (int b = 0; b < B; b++) ye[b] = ye[b] + du[b]; }
            }
        }
    }
}

static int64_t lru_backward_scratch(int T, int B, int c) {
    const int64_t cb = (int64_t)c * B;
    return 2 * T * cb + 3 * cb + 2 * cb + 2 * cb + B + ((int64_t)3 * c * c + 2 * c * c + 3 * c) * VL;
}

/* Backward of one member (see dbackward_member), from lru_forward_member's Hk and Ak. */
static void lru_backward_member(int K, int L, int T, int P, int B, int c, int tbptt, REAL *Sp,
                                const REAL *xk, const uint8_t *mkk, const REAL *Hk, const REAL *Ak,
                                const REAL *g_outk, REAL *gWk, REAL *Gs, const REAL **Z, REAL **O) {
    const int64_t cb = (int64_t)c * B, S = T + 1;
    REAL *Gab = Gs, *Gbe = Gs + T * cb;
    REAL *gp = Gbe + T * cb, *gz = gp + 3 * cb, *grec = gz + 2 * cb, *ones = grec + 2 * cb;
    REAL *acc_in = ones + B, *acc_c = acc_in + (int64_t)3 * c * c * VL, *acc_u = acc_c + (int64_t)2 * c * c * VL;
    const REAL **Gp = Z + 2 * c;
    for (int b = 0; b < B; b++) ones[b] = 1;
    const int t0 = first_step(K, P, B, mkk);
    for (int i = L - 1; i >= 0; i--) {
        const int m = i == 0 ? 1 : c;
        const REAL *Hin = i > 0 ? Hk + (int64_t)(i - 1) * S * cb : NULL;
        const REAL *u = lru_units(Sp, i, c);
        memset(acc_in, 0, sizeof(REAL) * 3 * c * m * VL);
        memset(acc_c, 0, sizeof(REAL) * 2 * c * c * VL);
        memset(acc_u, 0, sizeof(REAL) * 3 * c * VL);          /* lambda's re, im, gamma */
        int have_rec = 0;
        for (int t = T - 1; t >= t0; t--) {
            const REAL *ga = i < L - 1 ? Gab + (int64_t)t * cb : NULL;
            const REAL *go = (i == L - 1 && t == T - 1) ? g_outk : NULL;
            REAL *gbt = i > 0 ? Gbe + (int64_t)t * cb : NULL;
            if (!ga && !go && !have_rec) {
                if (gbt) memset(gbt, 0, sizeof(REAL) * cb);
                continue;
            }
            const int cut = tbptt > 0 && t > 0 && (T - t) % tbptt == 0, rec = !cut && t > t0;
            const uint8_t *mk = t < P ? mkk + (int64_t)t * K * B : NULL;
            const REAL *z = Ak + ((int64_t)i * T + t) * 5 * cb, *p = z + 2 * cb;
            const REAL *zp = t > t0 ? z - 5 * cb : NULL;
            REAL *gy = gp + 2 * cb;                           /* P's rows: B_re u, B_im u, D u */
            for (int64_t e = 0; e < cb; e += B) {
                const REAL *ga_ = ga ? ga + e : NULL, *go_ = go ? go + e : NULL;
                REAL *g = gy + e;
                SIMD for (int b = 0; b < B; b++) {
                    REAL v = (ga_ ? ga_[b] : 0) + (go_ ? go_[b] : 0);
                    g[b] = mk ? v * mk[b] : v;
                }
            }
            /* y = Cm z + D u: Cm's gradient, then z's (from y and from step t + 1) */
            for (int j = 0; j < 2 * c; j++) Z[j] = z + (int64_t)j * B;
            for (int r = 0; r < c; r++) Gp[r] = gy + (int64_t)r * B;
            wgrad(c, 2 * c, Gp, Z, acc_c, B);
            for (int j = 0; j < 2 * c; j++) O[j] = gz + (int64_t)j * B;
            gemm(2 * c, c, lru_Cmt(Sp, i, c), NULL, Gp, O, B);
            for (int j = 0; j < c; j++) {
                const REAL lr = u[j], li = u[c + j], g = u[2 * c + j];
                REAL *gre = gz + (int64_t)j * B, *gim = gre + cb;
                REAL *rr = grec + (int64_t)j * B, *ri = rr + cb;
                REAL *pre = gp + (int64_t)j * B, *pim = pre + cb;
                const REAL *pr = p + (int64_t)j * B, *pi = pr + cb;
                const REAL *re0 = zp ? zp + (int64_t)j * B : NULL, *im0 = zp ? re0 + cb : NULL;
                REAL *al = acc_u + (int64_t)j * VL, *ai = acc_u + (int64_t)(c + j) * VL;
                REAL *ag = acc_u + (int64_t)(2 * c + j) * VL;
                /* lane l sums b = l, l + VL, ... in order: vectors of VL columns, then the rest */
                int b0 = 0;
#define LRU_GRAD(b, l)                                                                         \
    do {                                                                                       \
        REAL a = gre[b] + (have_rec ? rr[b] : 0), bb = gim[b] + (have_rec ? ri[b] : 0);        \
        if (mk) { a *= mk[b]; bb *= mk[b]; }                                                   \
        const REAL x0 = re0 ? re0[b] : 0, y0 = im0 ? im0[b] : 0;                               \
        al[l] += a * x0 + bb * y0;                  /* d/d lambda_re */                        \
        ai[l] += bb * x0 - a * y0;                  /* d/d lambda_im */                        \
        ag[l] += a * pr[b] + bb * pi[b];            /* d/d gamma */                            \
        pre[b] = g * a;                                                                        \
        pim[b] = g * bb;                                                                       \
        rr[b] = lr * a + li * bb;                   /* to z_{t-1} */                           \
        ri[b] = lr * bb - li * a;                                                              \
    } while (0)
                for (; b0 + VL <= B; b0 += VL) {
                    SIMD for (int l = 0; l < VL; l++) LRU_GRAD(b0 + l, l);
                }
                for (int b = b0; b < B; b++) LRU_GRAD(b, b % VL);
#undef LRU_GRAD
            }
            const REAL *in = i == 0 ? xk + (int64_t)t * K * B : Hin + (int64_t)(t + 1) * cb;
            for (int j = 0; j < m; j++) Z[j] = in + (int64_t)j * B;
            for (int r = 0; r < 3 * c; r++) Gp[r] = gp + (int64_t)r * B;
            wgrad(3 * c, m, Gp, Z, acc_in, B);
            if (gbt) {
                for (int j = 0; j < m; j++) O[j] = gbt + (int64_t)j * B;
                gemm(m, 3 * c, lru_Aint(Sp, i, c), NULL, Gp, O, B);
            }
            have_rec = rec;
        }
        /* lane sums, written in the cell's parameter order */
        REAL *gW = gWk + lru_layer_offset(i, c);
        REAL *gnu = gW, *gth = gnu + c, *gga = gth + c, *gbre = gga + c, *gbim = gbre + (int64_t)c * m;
        REAL *gcre = gbim + (int64_t)c * m, *gcim = gcre + (int64_t)c * c, *gd = gcim + (int64_t)c * c;
        for (int j = 0; j < c; j++) {
            REAL dl = 0, di = 0, dg = 0;
            for (int l = 0; l < VL; l++) {
                dl += acc_u[(int64_t)j * VL + l];
                di += acc_u[(int64_t)(c + j) * VL + l];
                dg += acc_u[(int64_t)(2 * c + j) * VL + l];
            }
            const REAL lr = u[j], li = u[c + j], g = u[2 * c + j], ph = u[4 * c + j], en = u[5 * c + j];
            gnu[j] = (dl * lr + di * li) * -en;                  /* d|lambda|/dnu = -|lambda| e^nu */
            gth[j] = (di * lr - dl * li) * ph;                   /* d phase/d theta = phase */
            gga[j] = dg * g;
        }
        for (int r = 0; r < 3 * c; r++)
            for (int j = 0; j < m; j++) {
                REAL s = 0;
                for (int l = 0; l < VL; l++) s += acc_in[((int64_t)r * m + j) * VL + l];
                REAL *dst = r < c ? gbre : r < 2 * c ? gbim : gd;
                dst[(int64_t)(r % c) * m + j] = s;
            }
        for (int r = 0; r < c; r++)
            for (int j = 0; j < 2 * c; j++) {
                REAL s = 0;
                for (int l = 0; l < VL; l++) s += acc_c[((int64_t)r * 2 * c + j) * VL + l];
                if (j < c) gcre[(int64_t)r * c + j] = s;
                else gcim[(int64_t)r * c + j - c] = -s;
            }
        if (i > 0) { REAL *tmp = Gab; Gab = Gbe; Gbe = tmp; }
    }
}

/* ------------------------------------------------------------------------------------------
 * Every cell of this file behind one interface: a member's weights, split weights, the rows
 * Aux keeps per layer and step, and the scratch of forward (evaluation) and backward. */
static int64_t layer_offset_of(int arch, int i, int c) {
    return arch == LRU ? lru_layer_offset(i, c) : dlayer_offset(arch, i, c);
}
static int aux_of(int arch, int c) { return arch == LRU ? 5 * c : aux_rows(arch, c); }
static int64_t split_of(int arch, int c) {
    return arch == LRU ? lru_split_size(c) : dsplit_size(dgroups(arch) * c, c);
}
static int64_t fwd_scratch_of(int arch, int L, int B, int c) {
    return arch == LRU ? (int64_t)(4 * L + 3) * c * B : (int64_t)aux_rows(arch, c) * B;
}
static int64_t bwd_scratch_of(int arch, int T, int B, int c) {
    return arch == LRU ? lru_backward_scratch(T, B, c) : dbackward_scratch(arch, T, B, c);
}
static int pointers_of(int arch, int c) { return arch == LRU ? 5 * c : c + 1 + dgroups(arch) * c; }
static void split_of_member(int arch, const REAL *Wk, int L, int c, REAL *Sp) {
    if (arch == LRU) lru_split(Wk, L, c, Sp);
    else dsplit(arch, Wk, L, c, Sp);
}
static void forward_of(int arch, int K, int L, int T, int P, int B, int c, int S, REAL *Sp,
                       const REAL *xk, const uint8_t *mkk, REAL *Hk, REAL *Ak, REAL *scratch,
                       const REAL **X, REAL **O) {
    if (arch == LRU) lru_forward_member(K, L, T, P, B, c, S, Sp, xk, mkk, Hk, Ak, scratch, X, O);
    else dforward_member(arch, K, L, T, P, B, c, S, Sp, xk, mkk, Hk, Ak, scratch, X, O);
}
static void backward_of(int arch, int K, int L, int T, int P, int B, int c, int tbptt, REAL *Sp,
                        const REAL *xk, const uint8_t *mkk, const REAL *Hk, const REAL *Ak,
                        const REAL *g_outk, REAL *gWk, REAL *Gs, const REAL **Z, REAL **O) {
    if (arch == LRU) lru_backward_member(K, L, T, P, B, c, tbptt, Sp, xk, mkk, Hk, Ak, g_outk, gWk, Gs, Z, O);
    else dbackward_member(arch, K, L, T, P, B, c, tbptt, Sp, xk, mkk, Hk, Ak, g_outk, gWk, Gs, Z, O);
}
/* the sizes of a layer's parameters, in the cell's order; returns how many */
static int param_sizes(int arch, int m, int c, int64_t *out) {
    if (arch == LRU) {
        const int64_t v[8] = {c, c, c, (int64_t)c * m, (int64_t)c * m, (int64_t)c * c, (int64_t)c * c, (int64_t)c * m};
        memcpy(out, v, sizeof v);
        return 8;
    }
    for (int g = 0; g < dgroups(arch); g++) {
        out[2 * g] = (int64_t)c * m;
        out[2 * g + 1] = c;
    }
    return 2 * dgroups(arch);
}

int NAME(memgrid_diag_forward)(int arch, int K, int L, int T, int P, int B, int c, int S,
                               const REAL *W, const REAL *x, const uint8_t *mask, REAL *H, REAL *Aux) {
    const int64_t wk = layer_offset_of(arch, L, c), cb = (int64_t)c * B;
    REAL *Sp = malloc(sizeof(REAL) * (split_of(arch, c) * L + fwd_scratch_of(arch, L, B, c)));
    const REAL **X = malloc(sizeof(REAL *) * pointers_of(arch, c));
    REAL **O = malloc(sizeof(REAL *) * pointers_of(arch, c));
    if (!Sp || !X || !O) { free(Sp); free(X); free(O); return 1; }
    REAL *scratch = Sp + split_of(arch, c) * L;
    for (int k = 0; k < K; k++) {
        split_of_member(arch, W + k * wk, L, c, Sp);
        forward_of(arch, K, L, T, P, B, c, S, Sp, x + (int64_t)k * B, mask + (int64_t)k * B,
                   H + (int64_t)k * L * S * cb, Aux ? Aux + (int64_t)k * L * T * aux_of(arch, c) * B : NULL,
                   scratch, X, O);
    }
    free(Sp); free(X); free(O);
    return 0;
}

int NAME(memgrid_diag_backward)(int arch, int K, int L, int T, int P, int B, int c, int tbptt,
                                const REAL *W, const REAL *x, const uint8_t *mask, const REAL *H,
                                const REAL *Aux, const REAL *g_out, REAL *gW) {
    const int64_t wk = layer_offset_of(arch, L, c), cb = (int64_t)c * B, S = T + 1;
    REAL *Sp = malloc(sizeof(REAL) * (split_of(arch, c) * L + bwd_scratch_of(arch, T, B, c)));
    const REAL **Z = malloc(sizeof(REAL *) * pointers_of(arch, c));
    REAL **O = malloc(sizeof(REAL *) * pointers_of(arch, c));
    if (!Sp || !Z || !O) { free(Sp); free(Z); free(O); return 1; }
    for (int k = 0; k < K; k++) {
        split_of_member(arch, W + k * wk, L, c, Sp);
        backward_of(arch, K, L, T, P, B, c, tbptt, Sp, x + (int64_t)k * B, mask + (int64_t)k * B,
                    H + (int64_t)k * L * S * cb, Aux + (int64_t)k * L * T * aux_of(arch, c) * B,
                    g_out + (int64_t)k * cb, gW + k * wk, Sp + split_of(arch, c) * L, Z, O);
    }
    free(Sp); free(Z); free(O);
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
           up16(B);
}

int NAME(memgrid_diag_train_step)(int arch, int K, int L, int T, int P, int B, int c, int tbptt,
                                  int linear, REAL *const *params, REAL *const *bufs, const REAL *lr,
                                  const REAL *mom, REAL *const *sqs, const REAL *adam, const REAL *x,
                                  const uint8_t *mask, const REAL *y, REAL *yhat, REAL *ws) {
    const int64_t cb = (int64_t)c * B, S = T + 1, hs = (int64_t)L * S * cb;
    const int64_t wk = layer_offset_of(arch, L, c);
    REAL *Sp = ws, *H = Sp + up16(split_of(arch, c) * L), *Aux = H + up16(hs);
    REAL *g_out = Aux + up16((int64_t)L * T * aux_of(arch, c) * B), *Wk = g_out + up16(cb);
    REAL *gW = Wk + up16(wk), *Gs = gW + up16(wk), *gy = Gs + up16(bwd_scratch_of(arch, T, B, c));
    const REAL **X = malloc(sizeof(REAL *) * pointers_of(arch, c));
    REAL **O = malloc(sizeof(REAL *) * pointers_of(arch, c));
    int64_t *sizes = malloc(sizeof(int64_t) * 8 * L);
    if (!X || !O || !sizes) { free(X); free(O); free(sizes); return 1; }
    int np = 0;                                     /* the layers' parameters, in order */
    for (int i = 0; i < L; i++) np += param_sizes(arch, i ? c : 1, c, sizes + np);
    const REAL *last = H + ((int64_t)(L - 1) * S + T) * cb;
    for (int k = 0; k < K; k++) {
        const REAL *xk = x + (int64_t)k * B, *yk = y + (int64_t)k * B;
        const uint8_t *mkk = mask + (int64_t)k * B;
        REAL *yh = yhat + (int64_t)k * B;
        Opt o = {0, lr[k], mom[k], 0, 0, 0, 0, 0, 0};
        if (sqs) {
            o.adam = 1;
            o.b2 = adam[0], o.ob2 = adam[1], o.eps = adam[2], o.c2 = adam[3];
            o.w1 = adam[4 + 2 * k], o.step = adam[5 + 2 * k];
        }
        for (int n = 0, e = 0; n < np; e += sizes[n], n++)
            memcpy(Wk + e, params[n] + k * sizes[n], sizeof(REAL) * sizes[n]);
        split_of_member(arch, Wk, L, c, Sp);
        forward_of(arch, K, L, T, P, B, c, (int)S, Sp, xk, mkk, H, Aux, NULL, X, O);
        readout_member(B, c, linear, params + np, bufs + np, sqs ? sqs + np : NULL, k, last, yk,
                       yh, gy, g_out, &o);
        backward_of(arch, K, L, T, P, B, c, tbptt, Sp, xk, mkk, H, Aux, g_out, gW, Gs, X, O);
        for (int n = 0, e = 0; n < np; e += sizes[n], n++) {
            REAL *p = params[n] + k * sizes[n], *bf = bufs[n] + k * sizes[n];
            REAL *q = sqs ? sqs[n] + k * sizes[n] : NULL;
            for (int64_t j = 0; j < sizes[n]; j++) update1(p + j, bf + j, q ? q + j : &no_sq, gW[e + j], &o);
        }
    }
    free(X); free(O); free(sizes);
    return 0;
}
