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
 * minLSTM or the LRU. Each family of cells is a section in a file of its own (diag_*.h),
 * included below in order.
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

/* Forward of a causal depthwise convolution of width W (Mamba's, minLM's) at step t, channel
 * j, before its bias: pj = the sum over k from 0 of w[k] tap_k, its taps oldest first: the
 * masked inputs of steps t - W + 1 .. t - 1 (xm0 + tt rb in training, the ring's rows
 * ring0 + (tt mod W) cb in evaluation; none before t0), then x, its own. */
static inline void conv_taps(int W, int j, int t, int t0, int B, int64_t cb, const REAL *x,
                             const REAL *w, const REAL *xm0, int64_t rb, const REAL *ring0,
                             REAL *pj) {
    SIMD for (int b = 0; b < B; b++) pj[b] = 0;
    for (int k = 0; k < W; k++) {
        const int tt = t - (W - 1) + k;
        if (tt < t0) continue;
        const REAL *tap = k == W - 1 ? x
                        : (xm0 ? xm0 + tt * rb : ring0 + (int64_t)(tt % W) * cb) + (int64_t)j * B;
        SIMD for (int b = 0; b < B; b++) pj[b] += w[k] * tap[b];
    }
}

/* Backward of a causal depthwise convolution of width W (Mamba's, minLM's) at step t, channel
 * j, from g, the gradient on its output: its weight's and bias's lane sums (acc: w (c, W),
 * then b (c)), with x its own tap's input and xm0 + tt rb the masked input of an earlier step
 * tt, and the gradient to those inputs, added to their steps' rows of the ring pend (W steps
 * of (c, B)), each taken where its step is reached. */
static inline void conv_taps_grad(int W, int c, int j, int t, int t0, int B, int64_t cb,
                                  const REAL *g, const REAL *x, const REAL *w, const REAL *xm0,
                                  int64_t rb, REAL *pend, REAL *acc) {
    lanes_dot(acc + ((int64_t)c * W + j) * VL, g, NULL, B);                   /* b */
    lanes_dot(acc + ((int64_t)j * W + W - 1) * VL, g, x, B);
    for (int k = 0; k < W - 1; k++) {
        const int tt = t - (W - 1) + k;
        if (tt < t0) continue;
        REAL *pk = pend + (int64_t)(tt % W) * cb + (int64_t)j * B;
        lanes_dot(acc + ((int64_t)j * W + k) * VL, g, xm0 + tt * rb, B);
        SIMD for (int b = 0; b < B; b++) pk[b] += g[b] * w[k];
    }
}

#include "diag_minlm.h"
#include "diag_lru.h"
#include "diag_ssm.h"
#include "diag_minlm_block.h"
#include "diag_lru_block.h"

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
