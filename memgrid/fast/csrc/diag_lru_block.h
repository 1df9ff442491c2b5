/* The LRU in its paper's sequence layer (`lru_block`).
 * A section of diagonal.c, which includes its sections in order after the parts they share
 * (the layouts, Fill, the lane sums): not a header of its own. */

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
