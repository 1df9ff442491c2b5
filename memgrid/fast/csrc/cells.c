/* The packed RNN, LSTM and GRU stacks on the CPU, forward and backward through time, one call
 * for all members, layers and steps (memgrid/fast/kernels.py builds and loads this file;
 * memgrid/fast/stack.py calls it).
 *
 * Why: at c = 5..20 a step of a layer is a (R x m+1+c) @ (m+1+c x B) product per member, too
 * small for MKL to run near the machine's rate, and eager PyTorch pays ~5 us of dispatch per op
 * on each of ~8-25 ops per layer and step. Here a member's whole stack stays in L1/L2, the
 * products keep their sums in vector registers (GCC/Clang vector extensions; on AVX2 without
 * AVX-512, their halves with intrinsics), and the gates' nonlinearities and the mask are
 * applied in one pass.
 *
 * Layouts (all contiguous; REAL is float or double, one build each; R = c rows for rnn, 4c for
 * lstm and gru, see "The cells" below):
 *   W    (K, sum_i R * cols_i)   fused [W_ih | b | W_hh] of layer i (memgrid/fast/layout.py),
 *                                cols_i = m_i + 1 + c, m_0 = 1, m_i = c; layers one after another
 *   x    (T, K, B)               inputs, right-aligned, time-major (as memgrid.task makes them)
 *   mask (P, K, B) uint8         1 where a sequence has started, for the first P steps
 *   H    (K, L, S, c, B)         states: S = T + 1 keeps all steps (H[.., t + 1] = h_t,
 *                                H[.., 0] = 0); S = 2 keeps two (evaluation, no backward)
 *   Cs   like H                  lstm: the cells (else NULL)
 *   Aux  (K, L, T, aux_rows, B)  lstm, gru with S = T + 1: gates kept for backward (else NULL)
 *   gW   like W                  gradients, written (not accumulated)
 *   gx   (T, K, B) or NULL
 *
 * Every member is computed by the same loops whatever K, T or the other members are, and every
 * sum runs in a fixed order, so a member's numbers are bitwise those it gets alone (pack
 * invariance). Padded leading steps are masked to exact zeros and are summed last in
 * backward, so a longer pack adds only exact zeros; a member's leading steps where none of its
 * sequences has started (a longer member sets the pack's T) are not computed at all: its
 * states there are zeros, and forward and backward start at its first started step, as they
 * do for the member alone.
 */
#include "common.h"

/* tanh or sigmoid of n values, for the tests */
void NAME(memgrid_act)(int sigmoid, const REAL *a, REAL *out, int64_t n) {
    if (sigmoid) { SIMD for (int64_t i = 0; i < n; i++) out[i] = sigm_(a[i]); }
    else         { SIMD for (int64_t i = 0; i < n; i++) out[i] = tanh_(a[i]); }
}

/* ------------------------------------------------------------------------------------------
 * The cells, numbered and with their fused rows as the table of memgrid/fast/layout.py says
 * (FUSED): arch 0 rnn, R = c rows (h); 1 lstm, R = 4c (i, f, o, g); 2 gru, R = 4c (r, z, xn,
 * hn, with the zero blocks described there). */
enum { RNN = 0, LSTM = 1, GRU = 2 };

static int rows_of(int arch, int c) { return arch == RNN ? c : 4 * c; }

/* per layer and step, what forward keeps for backward: the R activations (lstm: i, f, o, g
 * after their nonlinearities; gru: r, z, n, and hn before it), and for lstm tanh(cell) */
static int aux_rows(int arch, int c) { return arch == RNN ? 0 : rows_of(arch, c) + (arch == LSTM ? c : 0); }

static int64_t layer_offset(int i, int R, int c) {  /* start of layer i's weights in a member */
    return i == 0 ? 0 : (int64_t)R * (2 + c) + (int64_t)(i - 1) * R * (2 * c + 1);
}

/* A layer's weights split for the products: A (R, m + c) = [W_ih | W_hh], bias (R), and
 * At (m + c, R) = A transposed (for backward). A member's layers lie one after another in its
 * split weights, layer i at i * split_size(R, c) (sized for m = c). */
static int64_t split_size(int R, int c) { return (int64_t)R * 2 * c + R + (int64_t)2 * c * R; }
static REAL *split_A(REAL *Sp, int i, int R, int c) { return Sp + i * split_size(R, c); }
static REAL *split_bias(REAL *Sp, int i, int R, int c) { return split_A(Sp, i, R, c) + (int64_t)R * ((i ? c : 1) + c); }
static REAL *split_At(REAL *Sp, int i, int R, int c) { return split_bias(Sp, i, R, c) + R; }

static void transpose_A(REAL *Sp, int i, int R, int c) {
    const int n = (i ? c : 1) + c;
    const REAL *A = split_A(Sp, i, R, c);
    REAL *At = split_At(Sp, i, R, c);
    for (int r = 0; r < R; r++)
        for (int j = 0; j < n; j++) At[(int64_t)j * R + r] = A[(int64_t)r * n + j];
}

/* from a member's fused weights Wk (the layout of memgrid/fast/layout.py) */
static void split_fused(const REAL *Wk, int L, int R, int c, REAL *Sp) {
    for (int i = 0; i < L; i++) {
        const int m = i ? c : 1, cols = m + 1 + c, n = m + c;
        const REAL *W = Wk + layer_offset(i, R, c);
        REAL *A = split_A(Sp, i, R, c), *bias = split_bias(Sp, i, R, c);
        for (int r = 0; r < R; r++) {
            bias[r] = W[(int64_t)r * cols + m];
            for (int j = 0; j < n; j++) A[(int64_t)r * n + j] = W[(int64_t)r * cols + (j < m ? j : j + 1)];
        }
        transpose_A(Sp, i, R, c);
    }
}

/* Forward of one member through all layers and steps, from its split weights Sp. xk: its
 * inputs (step t at xk + t K B), mkk its mask (likewise). Hk (L, S, c, B): states, S = T + 1
 * (h_t at t + 1, slot 0 = 0) or 2 (evaluation: the last state at T % 2). Ck like Hk: lstm
 * cells (else NULL). Ak (L, T, aux_rows, B) with S = T + 1 for lstm/gru (else NULL); scratch
 * (aux_rows, B) where Ak is NULL. X, O: 2c and R pointers. */
static void forward_member(int arch, int K, int L, int T, int P, int B, int c, int S, REAL *Sp,
                           const REAL *xk, const uint8_t *mkk, REAL *Hk, REAL *Ck, REAL *Ak,
                           REAL *scratch, const REAL **X, REAL **O) {
    const int R = rows_of(arch, c), Ra = aux_rows(arch, c);
    const int64_t cb = (int64_t)c * B;
    const int t0 = first_step(K, P, B, mkk), zeros = S == 2 ? 2 : t0 + 1;
    for (int i = 0; i < L; i++) {    /* h_{-1} = 0, and the states of the steps not computed */
        memset(slot(Hk, i, 0, S, cb), 0, sizeof(REAL) * cb * zeros);
        if (Ck) memset(slot(Ck, i, 0, S, cb), 0, sizeof(REAL) * cb * zeros);
    }
    for (int t = t0; t < T; t++) {           /* the layers advance together, so that two */
        int sp = S == 2 ? t % 2 : t, so = S == 2 ? (t + 1) % 2 : t + 1;   /* slots do */
        const uint8_t *mk = t < P ? mkk + (int64_t)t * K * B : NULL;
        for (int i = 0; i < L; i++) {
            const int m = i == 0 ? 1 : c;
            const REAL *hp = slot(Hk, i, sp, S, cb);
            const REAL *in = i == 0 ? xk + (int64_t)t * K * B : slot(Hk, i - 1, so, S, cb);
            REAL *h = slot(Hk, i, so, S, cb);
            REAL *a = arch == RNN ? h : (Ak ? Ak + ((int64_t)i * T + t) * Ra * B : scratch);
            for (int j = 0; j < m; j++) X[j] = in + (int64_t)j * B;
            for (int j = 0; j < c; j++) X[m + j] = hp + (int64_t)j * B;
            for (int r = 0; r < R; r++) O[r] = a + (int64_t)r * B;
            gemm(R, m + c, split_A(Sp, i, R, c), split_bias(Sp, i, R, c), X, O, B);
            for (int64_t e = 0; e < cb; e += B) {
                REAL *hr = h + e;
                if (arch == RNN) {
                    if (mk) { SIMD for (int b = 0; b < B; b++) hr[b] = tanh_(hr[b]) * mk[b]; }
                    else    { SIMD for (int b = 0; b < B; b++) hr[b] = tanh_(hr[b]); }
                } else if (arch == LSTM) {
                    REAL *ig = a + e, *fg = ig + cb, *og = fg + cb, *gg = og + cb, *tc = gg + cb;
                    const REAL *cp = slot(Ck, i, sp, S, cb) + e;
                    REAL *cn = slot(Ck, i, so, S, cb) + e;
                    SIMD for (int b = 0; b < B; b++) {
                        REAL iv = sigm_(ig[b]), fv = sigm_(fg[b]), ov = sigm_(og[b]), gv = tanh_(gg[b]);
                        REAL cell = fv * cp[b] + iv * gv;
                        if (mk) cell *= mk[b];         /* so tanh(cell) and h are 0 there too */
                        REAL tv = tanh_(cell);
                        ig[b] = iv; fg[b] = fv; og[b] = ov; gg[b] = gv;
                        cn[b] = cell; tc[b] = tv; hr[b] = ov * tv;
                    }
                } else {
                    REAL *rg = a + e, *zg = rg + cb, *ng = zg + cb, *hn = ng + cb;
                    const REAL *hpr = hp + e;
                    SIMD for (int b = 0; b < B; b++) {
                        REAL rv = sigm_(rg[b]), zv = sigm_(zg[b]);
                        REAL nv = tanh_(ng[b] + rv * hn[b]);
                        REAL hv = nv + zv * (hpr[b] - nv);
                        rg[b] = rv; zg[b] = zv; ng[b] = nv;
                        hr[b] = mk ? hv * mk[b] : hv;
                    }
                }
            }
        }
    }
}

/* Scratch of backward_member, in REALs */
static int64_t backward_scratch(int arch, int T, int B, int c) {
    const int R = rows_of(arch, c);
    const int64_t cb = (int64_t)c * B;
    return T * cb + (int64_t)R * B + 3 * cb + B + (int64_t)R * (2 * c + 1) * VL;
}

/* Backward of one member through time, from forward_member's Hk, Ck, Ak (S = T + 1) and its
 * split weights Sp (with At). g_outk (c, B): gradient on the last layer's last state. gWk: the
 * gradient of its fused weights, written. gxk (step t at gxk + t K B) or NULL. tbptt > 0
 * stops the gradient between steps t - 1 and t where (T - t) % tbptt == 0. G: scratch of
 * backward_scratch(); Z, O: 2c + 1 + R and 2c pointers. */
static void backward_member(int arch, int K, int L, int T, int P, int B, int c, int tbptt,
                            REAL *Sp, const REAL *xk, const uint8_t *mkk, const REAL *Hk,
                            const REAL *Ck, const REAL *Ak, const REAL *g_outk, REAL *gWk,
                            REAL *gxk, REAL *G, const REAL **Z, REAL **O) {
    const int R = rows_of(arch, c), Ra = aux_rows(arch, c), cmax = 2 * c + 1;
    const int64_t cb = (int64_t)c * B, S = T + 1;
    const REAL **Gp = Z + cmax;
    REAL *gp = G + T * cb, *gh = gp + (int64_t)R * B, *grec = gh + cb, *aux = grec + cb;
    REAL *ones = aux + cb, *acc = ones + B;
    for (int b = 0; b < B; b++) ones[b] = 1;
    for (int r = 0; r < R; r++) Gp[r] = gp + (int64_t)r * B;
    const int t0 = first_step(K, P, B, mkk);     /* steps before t0: zero states, no gradient */
    if (gxk)
        for (int t = 0; t < t0; t++) memset(gxk + (int64_t)t * K * B, 0, sizeof(REAL) * B);
    for (int i = L - 1; i >= 0; i--) {
        const int m = i == 0 ? 1 : c, cols = m + 1 + c;
        const REAL *At = split_At(Sp, i, R, c);
        const REAL *Hi = Hk + (int64_t)i * S * cb;
        const REAL *Hin = i > 0 ? Hk + (int64_t)(i - 1) * S * cb : NULL;
        memset(acc, 0, sizeof(REAL) * R * cols * VL);
        int have_rec = 0;                     /* a gradient from step t + 1 (and its cell) */
        for (int t = T - 1; t >= t0; t--) {
            /* gradient on h_t: from the layer above (G[t]), the next step, the output */
            const REAL *ga = i < L - 1 ? G + (int64_t)t * cb : NULL;
            const REAL *go = (i == L - 1 && t == T - 1) ? g_outk : NULL;
            REAL *gxt = (i == 0 && gxk) ? gxk + (int64_t)t * K * B : NULL;
            if (!ga && !go && !have_rec) {            /* nothing reaches this step */
                if (i > 0) memset(G + (int64_t)t * cb, 0, sizeof(REAL) * cb);
                else if (gxt) memset(gxt, 0, sizeof(REAL) * B);
                continue;
            }
            const int cut = tbptt > 0 && t > 0 && (T - t) % tbptt == 0, rec = !cut && t > t0;
            const REAL *h = Hi + (int64_t)(t + 1) * cb, *hp = Hi + (int64_t)t * cb;
            const uint8_t *mk = t < P ? mkk + (int64_t)t * K * B : NULL;
            const REAL *a = Ak ? Ak + ((int64_t)i * T + t) * Ra * B : NULL;
            for (int64_t e = 0; e < cb; e += B) {
                const REAL *ga_ = ga ? ga + e : NULL, *go_ = go ? go + e : NULL, *gr = grec + e;
                REAL *g = gh + e;
                SIMD for (int b = 0; b < B; b++)
                    g[b] = (ga_ ? ga_[b] : 0) + (go_ ? go_[b] : 0) + (have_rec ? gr[b] : 0);
                if (arch == RNN) {                 /* gp = gh (1 - h^2) mask */
                    const REAL *he = h + e;
                    REAL *p = gp + e;
                    SIMD for (int b = 0; b < B; b++) {
                        REAL d = g[b] * (1 - he[b] * he[b]);
                        p[b] = mk ? d * mk[b] : d;
                    }
                } else if (arch == LSTM) {         /* aux: the cell gradient, to step t - 1 */
                    const REAL *ig = a + e, *fg = ig + cb, *og = fg + cb, *gg = og + cb, *tc = gg + cb;
                    const REAL *cp = Ck + ((int64_t)i * S + t) * cb + e;
                    REAL *pi = gp + e, *pf = pi + cb, *po = pf + cb, *pg = po + cb, *gc = aux + e;
                    SIMD for (int b = 0; b < B; b++) {
                        REAL gcv = g[b] * og[b] * (1 - tc[b] * tc[b]) + (have_rec ? gc[b] : 0);
                        if (mk) gcv *= mk[b];
                        pi[b] = gcv * gg[b] * ig[b] * (1 - ig[b]);
                        pf[b] = gcv * cp[b] * fg[b] * (1 - fg[b]);
                        po[b] = g[b] * tc[b] * og[b] * (1 - og[b]);
                        pg[b] = gcv * ig[b] * (1 - gg[b] * gg[b]);
                        gc[b] = gcv * fg[b];
                    }
                } else {                           /* aux: the direct path h_{t-1} -> h_t */
                    const REAL *rg = a + e, *zg = rg + cb, *ng = zg + cb, *hn = ng + cb, *hpr = hp + e;
                    REAL *pr = gp + e, *pz = pr + cb, *pn = pz + cb, *ph = pn + cb, *d = aux + e;
                    SIMD for (int b = 0; b < B; b++) {
                        REAL gv = mk ? g[b] * mk[b] : g[b];
                        REAL gan = gv * (1 - zg[b]) * (1 - ng[b] * ng[b]);
                        d[b] = gv * zg[b];
                        pn[b] = gan;
                        ph[b] = gan * rg[b];
                        pz[b] = gv * (hpr[b] - ng[b]) * zg[b] * (1 - zg[b]);
                        pr[b] = gan * hn[b] * rg[b] * (1 - rg[b]);
                    }
                }
            }
            /* weight gradient, columns [input; 1; h_{t-1}] */
            const REAL *in = i == 0 ? xk + (int64_t)t * K * B : Hin + (int64_t)(t + 1) * cb;
            for (int j = 0; j < m; j++) Z[j] = in + (int64_t)j * B;
            Z[m] = ones;
            for (int j = 0; j < c; j++) Z[m + 1 + j] = hp + (int64_t)j * B;
            wgrad(R, cols, Gp, Z, acc, B);
            /* gradients on the input (G[t] for the layer below, or gx) and on h_{t-1} */
            int need_in = i > 0 || gxt;
            for (int j = 0; j < m; j++) O[j] = i > 0 ? G + (int64_t)t * cb + (int64_t)j * B : gxt;
            for (int j = 0; j < c; j++) O[m + j] = grec + (int64_t)j * B;
            if (need_in && rec) gemm(m + c, R, At, NULL, Gp, O, B);
            else if (need_in) gemm(m, R, At, NULL, Gp, O, B);
            else if (rec) gemm(c, R, At + (int64_t)m * R, NULL, Gp, O + m, B);
            if (arch == GRU && rec)
                SIMD for (int64_t e = 0; e < cb; e++) grec[e] += aux[e];
            have_rec = rec;
        }
        REAL *gWi = gWk + layer_offset(i, R, c);
        for (int64_t e = 0; e < (int64_t)R * cols; e++) {
            REAL s = 0;
            for (int l = 0; l < VL; l++) s += acc[e * VL + l];
            gWi[e] = s;
        }
    }
}

/* Forward of all members: H (K, L, S, c, B), Cs like H (lstm, else NULL), Aux (K, L, T,
 * aux_rows, B) with S = T + 1 for lstm/gru (else NULL); see forward_member. */
int NAME(memgrid_cell_forward)(int arch, int K, int L, int T, int P, int B, int c, int S,
                               const REAL *W, const REAL *x, const uint8_t *mask, REAL *H, REAL *Cs,
                               REAL *Aux) {
    const int R = rows_of(arch, c), Ra = aux_rows(arch, c);
    const int64_t wk = layer_offset(L, R, c), cb = (int64_t)c * B;
    REAL *Sp = malloc(sizeof(REAL) * (split_size(R, c) * L + (int64_t)(Ra ? Ra : 1) * B));
    const REAL **X = malloc(sizeof(REAL *) * 2 * c);
    REAL **O = malloc(sizeof(REAL *) * R);
    if (!Sp || !X || !O) { free(Sp); free(X); free(O); return 1; }
    REAL *scratch = Sp + split_size(R, c) * L;       /* activations when Aux is not kept */
    for (int k = 0; k < K; k++) {
        split_fused(W + k * wk, L, R, c, Sp);
        forward_member(arch, K, L, T, P, B, c, S, Sp, x + (int64_t)k * B, mask + (int64_t)k * B,
                       H + (int64_t)k * L * S * cb, Cs ? Cs + (int64_t)k * L * S * cb : NULL,
                       Aux ? Aux + (int64_t)k * L * T * Ra * B : NULL, scratch, X, O);
    }
    free(Sp); free(X); free(O);
    return 0;
}

/* Backward of all members, from forward's H, Cs, Aux (S = T + 1); g_out (K, c, B), gW like W
 * (written), gx (T, K, B) or NULL; see backward_member. */
int NAME(memgrid_cell_backward)(int arch, int K, int L, int T, int P, int B, int c, int tbptt,
                                const REAL *W, const REAL *x, const uint8_t *mask, const REAL *H,
                                const REAL *Cs, const REAL *Aux, const REAL *g_out, REAL *gW,
                                REAL *gx) {
    const int R = rows_of(arch, c), Ra = aux_rows(arch, c);
    const int64_t wk = layer_offset(L, R, c), cb = (int64_t)c * B, S = T + 1;
    REAL *Sp = malloc(sizeof(REAL) * (split_size(R, c) * L + backward_scratch(arch, T, B, c)));
    const REAL **Z = malloc(sizeof(REAL *) * (2 * c + 1 + R));
    REAL **O = malloc(sizeof(REAL *) * 2 * c);
    if (!Sp || !Z || !O) { free(Sp); free(Z); free(O); return 1; }
    for (int k = 0; k < K; k++) {
        split_fused(W + k * wk, L, R, c, Sp);
        backward_member(arch, K, L, T, P, B, c, tbptt, Sp, x + (int64_t)k * B, mask + (int64_t)k * B,
                        H + (int64_t)k * L * S * cb, Cs ? Cs + (int64_t)k * L * S * cb : NULL,
                        Aux ? Aux + (int64_t)k * L * T * Ra * B : NULL, g_out + (int64_t)k * cb,
                        gW + k * wk, gx ? gx + (int64_t)k * B : NULL, Sp + split_size(R, c) * L, Z, O);
    }
    free(Sp); free(Z); free(O);
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * One training step of every member, in one call: forward, the readout, the gradient of the
 * mean absolute error, backward, and SGD with momentum on the parameters in place, member by
 * member (its states stay in L2). This is what memgrid.train.PackTrainer's step does with
 * torch ops (the forward and backward above, memgrid/fast/layout.py's fuse/unfuse_grad, the loss's
 * autograd and torch._foreach SGD or Adam), bitwise for the `sum` readout: the same products in
 * the same order, and the update's products and sums rounded one by one as torch's are (no
 * FMA). */

/* The torch row (w_ih, w_hh, b_ih, b_hh of torch.nn, gate order i, f, g, o / r, z, n) of the
 * fused row r; *parts: 1 it holds W_ih's columns and b_ih, 2 W_hh's and b_hh, 3 both (the bias
 * b_ih + b_hh). */
static int torch_row(int arch, int c, int r, int *parts) {
    const int q = r / c, o = r % c;
    *parts = 3;
    if (arch == LSTM) {                                  /* i, f, o, g <- i, f, g, o */
        static const int from[4] = {0, 1, 3, 2};
        return from[q] * c + o;
    }
    if (arch == GRU && q >= 2) {                         /* xn <- W_in, b_in; hn <- W_hn, b_hn */
        *parts = q == 2 ? 1 : 2;
        return 2 * c + o;
    }
    return r;
}

static int gates_of(int arch) { return arch == RNN ? 1 : arch == LSTM ? 4 : 3; }

/* member k's split weights from the torch-layout parameters p[4 i + 0..3] = w_ih, w_hh, b_ih,
 * b_hh of layer i, each (K, ...) contiguous */
static void split_params(int arch, int L, int c, REAL *const *p, int k, REAL *Sp) {
    const int R = rows_of(arch, c), TR = gates_of(arch) * c;
    for (int i = 0; i < L; i++) {
        const int m = i ? c : 1, n = m + c;
        const REAL *wi = p[4 * i] + (int64_t)k * TR * m, *wh = p[4 * i + 1] + (int64_t)k * TR * c;
        const REAL *bi = p[4 * i + 2] + (int64_t)k * TR, *bh = p[4 * i + 3] + (int64_t)k * TR;
        REAL *A = split_A(Sp, i, R, c), *bias = split_bias(Sp, i, R, c);
        for (int r = 0; r < R; r++) {
            int parts, tr = torch_row(arch, c, r, &parts);
            for (int j = 0; j < m; j++) A[(int64_t)r * n + j] = parts & 1 ? wi[(int64_t)tr * m + j] : 0;
            for (int j = 0; j < c; j++) A[(int64_t)r * n + m + j] = parts & 2 ? wh[(int64_t)tr * c + j] : 0;
            bias[r] = parts == 3 ? bi[tr] + bh[tr] : parts == 1 ? bi[tr] : bh[tr];
        }
        transpose_A(Sp, i, R, c);
    }
}

/* the optimizer on member k's torch-layout parameters from the gradient of its fused weights
 * gWk; sqs: Adam's second moments, laid out as bufs (NULL for SGD) */
static void update_fused(int arch, int L, int c, REAL *const *p, REAL *const *bufs,
                         REAL *const *sqs, int k, const REAL *gWk, const Opt *o) {
    const int R = rows_of(arch, c), TR = gates_of(arch) * c;
    const int64_t qs = sqs ? 1 : 0;                      /* SGD: every q is no_sq */
    for (int i = 0; i < L; i++) {
        const int m = i ? c : 1, cols = m + 1 + c;
        const int64_t off[4] = {(int64_t)k * TR * m, (int64_t)k * TR * c, (int64_t)k * TR, (int64_t)k * TR};
        REAL *w[4], *b[4], *q[4];
        for (int j = 0; j < 4; j++) {
            w[j] = p[4 * i + j] + off[j];
            b[j] = bufs[4 * i + j] + off[j];
            q[j] = sqs ? sqs[4 * i + j] + off[j] : &no_sq;
        }
        const REAL *g = gWk + layer_offset(i, R, c);
        for (int r = 0; r < R; r++) {
            int parts, tr = torch_row(arch, c, r, &parts);
            const REAL *gr = g + (int64_t)r * cols;
            if (parts & 1) {
                for (int j = 0; j < m; j++) {
                    const int64_t e = (int64_t)tr * m + j;
                    update1(w[0] + e, b[0] + e, q[0] + e * qs, gr[j], o);
                }
                update1(w[2] + tr, b[2] + tr, q[2] + tr * qs, gr[m], o);
            }
            if (parts & 2) {
                for (int j = 0; j < c; j++) {
                    const int64_t e = (int64_t)tr * c + j;
                    update1(w[1] + e, b[1] + e, q[1] + e * qs, gr[m + 1 + j], o);
                }
                update1(w[3] + tr, b[3] + tr, q[3] + tr * qs, gr[m], o);
            }
        }
    }
}


/* REALs of the workspace of memgrid_train_step (independent of K) */
int64_t NAME(memgrid_train_scratch)(int arch, int L, int T, int B, int c) {
    const int R = rows_of(arch, c), Ra = aux_rows(arch, c);
    const int64_t cb = (int64_t)c * B, hs = (int64_t)L * (T + 1) * cb;
    return up16(split_size(R, c) * L) + up16(hs) + (arch == LSTM ? up16(hs) : 0) +
           up16((int64_t)L * T * Ra * B) + up16(cb) + up16(layer_offset(L, R, c)) +
           up16(backward_scratch(arch, T, B, c));
}

/* params, bufs: 4 L (+ 2 with a linear readout: w_out (K, c), b_out (K)) pointers to the
 * (K, ...) contiguous parameters and momentum buffers (Adam: first moments), in
 * memgrid.models.param_shapes' order; lr, mom (K); sqs: NULL for SGD, or Adam's second moments
 * laid out as bufs, with adam = {b2, 1 - b2, eps, sqrt(1 - b2^t), then per member 1 - b1 and
 * lr / (1 - b1^t)} (mom holds b1); x (T, K, B), mask (P, K, B) as in forward; y (K, B) the
 * targets; yhat (K, B): the outputs, written; ws: memgrid_train_scratch() REALs. */
int NAME(memgrid_train_step)(int arch, int K, int L, int T, int P, int B, int c, int tbptt,
                             int linear, REAL *const *params, REAL *const *bufs, const REAL *lr,
                             const REAL *mom, REAL *const *sqs, const REAL *adam, const REAL *x,
                             const uint8_t *mask, const REAL *y, REAL *yhat, REAL *ws) {
    const int R = rows_of(arch, c), Ra = aux_rows(arch, c);
    const int64_t cb = (int64_t)c * B, S = T + 1, hs = (int64_t)L * S * cb;
    REAL *Sp = ws, *H = Sp + up16(split_size(R, c) * L), *Cs = arch == LSTM ? H + up16(hs) : NULL;
    REAL *Aux = H + up16(hs) * (arch == LSTM ? 2 : 1), *g_out = Aux + up16((int64_t)L * T * Ra * B);
    REAL *gW = g_out + up16(cb), *G = gW + up16(layer_offset(L, R, c));
    const REAL **X = malloc(sizeof(REAL *) * (2 * c + 1 + R));
    REAL **O = malloc(sizeof(REAL *) * (R > 2 * c ? R : 2 * c));
    if (!X || !O) { free(X); free(O); return 1; }
    const REAL *last = H + ((int64_t)(L - 1) * S + T) * cb;      /* the last layer's h_T */
    for (int k = 0; k < K; k++) {
        const REAL *xk = x + (int64_t)k * B, *yk = y + (int64_t)k * B;
        const uint8_t *mkk = mask + (int64_t)k * B;
        REAL *yh = yhat + (int64_t)k * B;
        const Opt o = member_opt(k, lr, mom, sqs ? adam : NULL);
        split_params(arch, L, c, params, k, Sp);
        forward_member(arch, K, L, T, P, B, c, (int)S, Sp, xk, mkk, H, Cs, Ra ? Aux : NULL, NULL, X, O);
        readout_member(B, c, linear, params + 4 * L, bufs + 4 * L, sqs ? sqs + 4 * L : NULL, k,
                       last, yk, yh, G, g_out, &o);      /* G: free until backward */
        backward_member(arch, K, L, T, P, B, c, tbptt, Sp, xk, mkk, H, Cs, Ra ? Aux : NULL, g_out,
                        gW, NULL, G, X, O);
        update_fused(arch, L, c, params, bufs, sqs, k, gW, &o);
    }
    free(X); free(O);
    return 0;
}
