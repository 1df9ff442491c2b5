/* The LRU with complex and with real lambda (`lru`, `lru_ring`, `lru_real`).
 * A section of diagonal.c, which includes its sections in order after the parts they share
 * (the layouts, Fill, the lane sums): not a header of its own. */

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
