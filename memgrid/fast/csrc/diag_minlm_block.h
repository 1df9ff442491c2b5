/* minGRU and minLSTM in their published block (`mingru_block`, `minlstm_block`).
 * A section of diagonal.c, which includes its sections in order after the parts they share
 * (the layouts, Fill, the lane sums): not a header of its own. */

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
            const REAL *xm0 = Ak ? Ak + (int64_t)i * T * rb + (int64_t)o.xm * B : NULL;
            const REAL *ring0 = Ak ? NULL : ring + (int64_t)i * BCONV * cb;
            for (int j = 0; j < c; j++) {
                const REAL *w = s.wconv + (int64_t)j * BCONV, bcj = s.bconv[j];
                REAL *pj = pc + (int64_t)j * B;
                conv_taps(BCONV, j, t, t0, B, cb, x + (int64_t)j * B, w, xm0, rb, ring0, pj);
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
                conv_taps_grad(BCONV, c, j, t, t0, B, cb, gpj, x + (int64_t)j * B, w,
                               Ak + (int64_t)i * T * rb + (int64_t)(o.xm + j) * B, rb, pend,
                               acc_conv);
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
