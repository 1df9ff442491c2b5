/* The selective SSM, real and complex, bare and in Mamba's block (`s6_bare`, `mamba`,
 * their `_lin` inits, `mamba_complex`).
 * A section of diagonal.c, which includes its sections in order after the parts they share
 * (the layouts, Fill, the lane sums): not a header of its own. */

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
                const REAL *xm0 = Ak ? Ak + (int64_t)i * T * rb + (int64_t)o.xm * B : NULL;
                const REAL *ring0 = Ak ? NULL : ring + (int64_t)i * CONVW * cb;
                for (int j = 0; j < c; j++) {
                    const REAL *w = s.wconv + (int64_t)j * CONVW, bc = s.bconv[j];
                    REAL *pj = pv + (int64_t)j * B, *vj = v + (int64_t)j * B, *xmj = xm + (int64_t)j * B;
                    const REAL *xj = x + (int64_t)j * B;
                    conv_taps(CONVW, j, t, t0, B, cb, xj, w, xm0, rb, ring0, pj);
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
                    conv_taps_grad(CONVW, c, j, t, t0, B, cb, gvj, x + (int64_t)j * B, w,
                                   Ak + (int64_t)i * T * rb + (int64_t)(o.xm + j) * B, rb, pend,
                                   acc_conv);
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
