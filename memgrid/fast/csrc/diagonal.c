/* The diagonal recurrences minGRU and minLSTM on the CPU (memgrid/fast/diagonal.py builds
 * this file and calls it): forward and backward through time of every member, layer and step
 * in one call, and a whole training step of a pack in one call, as csrc/cells.c does for the
 * paper's cells, with its products, activations and optimizer (common.h).
 *
 * A layer of c units reads m inputs per step (m = 1 for layer 0, else c) through one affine
 * map per gate; its state is c numbers, h_t = a_t * h_{t-1} + b_t with a_t, b_t from the gates
 * (memgrid/cells.py defines the cells; this computes the same to float rounding):
 *   mingru  z = sigmoid(P_z), g = g+(P_h); h_t = lerp(h_{t-1}, g, z)
 *   minlstm f = sigmoid(P_f), i = sigmoid(P_i), g = g+(P_h); h_t = h_{t-1} f/(f+i) + g i/(f+i)
 * with g+(p) = p + 1/2 for p >= 0, sigmoid(p) below (Feng et al.'s log-space g), P = W x + b.
 *
 * Layouts (contiguous; REAL float or double):
 *   W    (K, sum over layers)  each member's parameters in the cell's order, layer after layer:
 *                              per gate (mingru z, h; minlstm f, i, h) w (c, m) then b (c)
 *   x    (T, K, B), mask (P, K, B) uint8, as csrc/cells.c's
 *   H    (K, L, S, c, B)       states: S = T + 1 (h_t at t + 1, slot 0 = 0) or 2 (evaluation)
 *   Aux  (K, L, T, aux, B)     what backward needs per layer and step (aux_rows below)
 * Every member is computed by the same loops whatever K, T or the other members are, steps
 * before a member's first started step are not computed, and every sum runs in a fixed order:
 * a member's numbers are bitwise those it gets alone (pack invariance). */
#include "common.h"

enum { MINGRU = 0, MINLSTM = 1 };

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

int NAME(memgrid_diag_forward)(int arch, int K, int L, int T, int P, int B, int c, int S,
                               const REAL *W, const REAL *x, const uint8_t *mask, REAL *H, REAL *Aux) {
    const int R = dgroups(arch) * c;
    const int64_t wk = dlayer_offset(arch, L, c), cb = (int64_t)c * B;
    REAL *Sp = malloc(sizeof(REAL) * (dsplit_size(R, c) * L + (int64_t)aux_rows(arch, c) * B));
    const REAL **X = malloc(sizeof(REAL *) * c);
    REAL **O = malloc(sizeof(REAL *) * R);
    if (!Sp || !X || !O) { free(Sp); free(X); free(O); return 1; }
    REAL *scratch = Sp + dsplit_size(R, c) * L;
    for (int k = 0; k < K; k++) {
        dsplit(arch, W + k * wk, L, c, Sp);
        dforward_member(arch, K, L, T, P, B, c, S, Sp, x + (int64_t)k * B, mask + (int64_t)k * B,
                        H + (int64_t)k * L * S * cb, Aux ? Aux + (int64_t)k * L * T * aux_rows(arch, c) * B : NULL,
                        scratch, X, O);
    }
    free(Sp); free(X); free(O);
    return 0;
}

int NAME(memgrid_diag_backward)(int arch, int K, int L, int T, int P, int B, int c, int tbptt,
                                const REAL *W, const REAL *x, const uint8_t *mask, const REAL *H,
                                const REAL *Aux, const REAL *g_out, REAL *gW) {
    const int R = dgroups(arch) * c;
    const int64_t wk = dlayer_offset(arch, L, c), cb = (int64_t)c * B, S = T + 1;
    REAL *Sp = malloc(sizeof(REAL) * (dsplit_size(R, c) * L + dbackward_scratch(arch, T, B, c)));
    const REAL **Z = malloc(sizeof(REAL *) * (c + 1 + R));
    REAL **O = malloc(sizeof(REAL *) * c);
    if (!Sp || !Z || !O) { free(Sp); free(Z); free(O); return 1; }
    for (int k = 0; k < K; k++) {
        dsplit(arch, W + k * wk, L, c, Sp);
        dbackward_member(arch, K, L, T, P, B, c, tbptt, Sp, x + (int64_t)k * B, mask + (int64_t)k * B,
                         H + (int64_t)k * L * S * cb, Aux + (int64_t)k * L * T * aux_rows(arch, c) * B,
                         g_out + (int64_t)k * cb, gW + k * wk, Sp + dsplit_size(R, c) * L, Z, O);
    }
    free(Sp); free(Z); free(O);
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * One training step of every member in one call, as csrc/cells.c's memgrid_train_step: the
 * parameters in memgrid.models.param_shapes' order (per layer and gate w, b; then w_out, b_out
 * with a linear readout), their momentum buffers (Adam: first moments), sqs and adam as there.
 * Per member: forward, the readout and the gradient of the mean absolute error, backward, the
 * update, each product and sum in a fixed order (pack invariance). */
int64_t NAME(memgrid_diag_train_scratch)(int arch, int L, int T, int B, int c) {
    const int R = dgroups(arch) * c;
    const int64_t cb = (int64_t)c * B, hs = (int64_t)L * (T + 1) * cb;
    return up16(dsplit_size(R, c) * L) + up16(hs) + up16((int64_t)L * T * aux_rows(arch, c) * B) + up16(cb) +
           2 * up16(dlayer_offset(arch, L, c)) + up16(dbackward_scratch(arch, T, B, c)) + up16(B);
}

int NAME(memgrid_diag_train_step)(int arch, int K, int L, int T, int P, int B, int c, int tbptt,
                                  int linear, REAL *const *params, REAL *const *bufs, const REAL *lr,
                                  const REAL *mom, REAL *const *sqs, const REAL *adam, const REAL *x,
                                  const uint8_t *mask, const REAL *y, REAL *yhat, REAL *ws) {
    const int G = dgroups(arch), R = G * c, np = 2 * G * L;     /* w_g, b_g per group and layer */
    const int64_t cb = (int64_t)c * B, S = T + 1, hs = (int64_t)L * S * cb;
    const int64_t wk = dlayer_offset(arch, L, c);
    REAL *Sp = ws, *H = Sp + up16(dsplit_size(R, c) * L), *Aux = H + up16(hs);
    REAL *g_out = Aux + up16((int64_t)L * T * aux_rows(arch, c) * B), *Wk = g_out + up16(cb), *gW = Wk + up16(wk);
    REAL *Gs = gW + up16(wk), *gy = Gs + up16(dbackward_scratch(arch, T, B, c));
    const REAL **X = malloc(sizeof(REAL *) * (c + 1 + R));
    REAL **O = malloc(sizeof(REAL *) * (R > c ? R : c));
    int64_t *sizes = malloc(sizeof(int64_t) * np);
    if (!X || !O || !sizes) { free(X); free(O); free(sizes); return 1; }
    for (int i = 0, n = 0; i < L; i++)
        for (int g = 0; g < G; g++) {
            sizes[n++] = (int64_t)c * (i ? c : 1);
            sizes[n++] = c;
        }
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
        dsplit(arch, Wk, L, c, Sp);
        dforward_member(arch, K, L, T, P, B, c, (int)S, Sp, xk, mkk, H, Aux, NULL, X, O);
        readout_member(B, c, linear, params + np, bufs + np, sqs ? sqs + np : NULL, k, last, yk,
                       yh, gy, g_out, &o);
        dbackward_member(arch, K, L, T, P, B, c, tbptt, Sp, xk, mkk, H, Aux, g_out, gW, Gs, X, O);
        for (int n = 0, e = 0; n < np; e += sizes[n], n++) {
            REAL *p = params[n] + k * sizes[n], *bf = bufs[n] + k * sizes[n];
            REAL *q = sqs ? sqs[n] + k * sizes[n] : NULL;
            for (int64_t j = 0; j < sizes[n]; j++) update1(p + j, bf + j, q ? q + j : &no_sq, gW[e + j], &o);
        }
    }
    free(X); free(O); free(sizes);
    return 0;
}
