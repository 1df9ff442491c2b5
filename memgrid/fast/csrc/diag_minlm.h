/* minGRU and minLSTM (`mingru`, `minlstm`).
 * A section of diagonal.c, which includes its sections in order after the parts they share
 * (the layouts, Fill, the lane sums): not a header of its own. */

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
