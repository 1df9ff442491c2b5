"""The paper cells' stack, RNN, LSTM and GRU, over all layers and steps: forward and
backward through time, by the C kernel on the CPU or by PyTorch ops elsewhere.

Every parameter is stacked over the pack, ``[K, ...]``, with torch's names and shapes behind
the K (``w_ih.0`` is ``weight_ih_l0``: ``(K, G*c, in)``; G = 1, 4, 3 gates). The cell
equations and gate orders are those of ``torch.nn.RNN`` (tanh), ``torch.nn.LSTM`` (i, f, g, o)
and ``torch.nn.GRU`` (r, z, n), so member k with torch's weights computes what the torch module
computes. ``torch.nn.RNN`` cannot be vmapped, hence the hand-written cells.

Layout: the state is ``(K, c, B)`` and the recurrence is ``W_hh @ h``, a batched matmul over K
(5-7x faster in MKL than ``(K, B, c) @ W`` at these sizes).

Speed (``benchmarks/README.md``): a layer's step (:func:`_step`) is ONE batched matmul ``W @ z``
of the fused weights ``W = [W_ih | b | W_hh]`` `(K, R, m+1+c)` (their layout:
memgrid.fast.layout) and the column ``z = [x_t; 1; h_{t-1}]``, written in place into per-step
buffers that are reused from step to step (:class:`BufferPool`), and backpropagation through time
is written by hand (:class:`_Stack`): per step one matmul for the weight gradient, one for the
state gradient and a few in-place elementwise ops, instead of autograd's graph of ~10 nodes
per step.

On the CPU memgrid goes further: :class:`_CellKernel` runs the whole stack, forward and
backward through time, in one call of the C kernel (memgrid.fast.kernels), 1.6-2.9x faster,
and bitwise pack-invariant on every CPU; and training takes the kernel's whole step instead
(``memgrid.train.PackTrainer._kernel_step``: forward, loss gradient, backward and SGD in one
call, bitwise what autograd around :class:`_CellKernel` gives). CUDA, and machines without a
C compiler, take the PyTorch path.
"""

from __future__ import annotations

import threading
import weakref

import torch

from . import kernels
from .layout import fuse, fused_rows, fwd_weights, unfuse_grad



# tanh(a) = 2 sigmoid(2a) - 1. torch's CPU tanh is 4-6x slower than its sigmoid (2.6 vs 0.45 ns
# per float32 on an AMD EPYC, benchmarks/README.md), and every tanh sits on the critical path.
# The 2 goes into the fused weights' rows that feed a tanh (free inside the matmul), the - 1
# into one `add`. The result differs from tanh by float rounding (< 2e-7 absolute in float32).
_NEG1, _ZERO = torch.tensor(-1.0), torch.tensor(0.0)


def _tanh_from_sigmoid_(s: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out = 2 s - 1, for s = sigmoid(2a): tanh(a)."""
    return torch.add(_NEG1, s, alpha=2, out=out)


def _tanh(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out = tanh(x) as 2 sigmoid(2x) - 1 (three fast ops instead of one slow one)."""
    torch.mul(x, 2, out=out)
    return _tanh_from_sigmoid_(out.sigmoid_(), out)


class BufferPool:
    """Free buffer sets of one shape, handed to the next call of that shape. A step's buffers
    are large; fresh ones cost page faults every step (a 20 MB copy: 10-30 ms instead of ~2), and
    reusing them keeps a pack's memory at what one step needs. Holds one shape's sets at a time."""

    def __init__(self, keep: int = 1):
        self.key, self.free, self.keep = None, [], keep
        self.lock = threading.Lock()

    def take(self, key, make):
        with self.lock:
            if key != self.key:
                self.key, self.free = key, []
            if self.free:
                return self.free.pop()
        return make()

    def give(self, key, bufs) -> None:
        with self.lock:
            if key == self.key and len(self.free) < self.keep:
                self.free.append(bufs)


_FWD, _BWD, _INF = BufferPool(), BufferPool(), BufferPool()
_KFWD, _KINF = BufferPool(), BufferPool()      # the C kernel's buffers, training and evaluation


# ---------------------------------------------------------------------------------------------
# One step of one layer, forward: z `(K, m+1+c, B)` = [x_t; 1; h_{t-1}] -> h_t written into
# `h_out` `(K, c, B)`. `act` `(K, R, B)` receives the gates (kept for backward when training).


def _step(arch: str, W, z, h_out, act, c: int, mask, negmask=None, gates=None, cell_prev=None,
          cell_out=None, tc_out=None) -> None:
    """`W`: the forward weights (layout.fwd_weights). `mask` `(K, 1, B)` (None after the first
    P steps): 0 where a sequence has not started, so that h (and an lstm's cell) stays 0 there;
    `negmask` = -mask (rnn). `gates`: views of `act` made once (lstm: i, f, o, g; gru: r, z, n,
    hn, r|z), else sliced here. lstm: `cell_prev` -> `cell_out`, and tanh(cell) into
    `tc_out`."""
    torch.bmm(W, z, out=act)
    if arch == "rnn":
        if mask is None:
            _tanh_from_sigmoid_(torch.sigmoid(act, out=h_out), h_out)
        else:           # h = (2 sigmoid(2a) - 1) * mask: it stays 0 until the sequence starts
            torch.addcmul(negmask, act.sigmoid_(), mask, value=2, out=h_out)
    elif arch == "lstm":
        ig, fg, og, gg = gates[:4] if gates else (act[:, :c], act[:, c:2 * c],
                                                   act[:, 2 * c:3 * c], act[:, 3 * c:])
        act.sigmoid_()                            # i, f, o, and sigmoid(2 g)
        _tanh_from_sigmoid_(gg, gg)
        torch.mul(fg, cell_prev, out=cell_out)
        cell_out.addcmul_(ig, gg)
        if mask is not None:
            cell_out.mul_(mask)                   # so tanh(cell) and h are 0 there as well
        _tanh(cell_out, tc_out)
        torch.mul(og, tc_out, out=h_out)
    else:  # gru
        r, zg, n, hn, rz = gates if gates else (act[:, :c], act[:, c:2 * c], act[:, 2 * c:3 * c],
                                                act[:, 3 * c:], act[:, :2 * c])
        rz.sigmoid_()                             # n = tanh(xn + r * hn): xn, hn come doubled
        _tanh_from_sigmoid_(n.addcmul_(r, hn).sigmoid_(), n)
        torch.sub(z[:, -c:], n, out=h_out)        # h = n + z * (h_prev - n)
        h_out.mul_(zg).add_(n)
        if mask is not None:
            h_out.mul_(mask)


def _cut(tbptt: int, T: int, t: int) -> bool:
    """True where backpropagation stops between steps t - 1 and t."""
    return bool(tbptt) and t > 0 and (T - t) % tbptt == 0


def _zrows(i: int, c: int) -> tuple[int, int]:
    """Rows of the slots that layer i reads: [input; 1; own state]."""
    return (0, 2 + c) if i == 0 else (2 + (i - 1) * (c + 1), 2 + i * (c + 1) + c)


class _FwdBufs:
    """Forward buffers of one shape, and views of them made once (a view costs ~2 us of
    Python; a step of a small pack is ~10 ops of ~10 us).

    Slots `s = 0..T+L-1`, each `(K, 2 + L(c+1), B)`: rows [x; 1] then per layer [h^i; 1].
    Layer i's step t reads slot t + i, rows [x or h^{i-1}; 1; h^i_{t-1}] (one contiguous
    slice), and writes h^i_t into slot t + i + 1: the layers' inputs are never copied.
    Zero-filled once; the ones rows and the initial states (never written) stay.
    lstm/gru keep each step's gates `(K, R, B)`, lstm its cells and their tanh `(K, c, B)`.
    """

    def __init__(self, arch, T, L, K, c, B, like):
        rows = 2 + L * (c + 1)
        self.slots = [like.new_zeros(K, rows, B) for _ in range(T + L)]
        for s in self.slots:
            s[:, 1] = 1
            for i in range(L - 1):
                s[:, 2 + i * (c + 1) + c] = 1
        self.x = [s[:, 0] for s in self.slots[:T]]
        R = fused_rows(arch, c)
        one = like.new_empty(K, R, B)
        self.z, self.zT, self.h, self.act, self.gates = [], [], [], [], []
        self.cells = self.tcs = None
        if arch == "lstm":
            self.cells = [[like.new_zeros(K, c, B) for _ in range(T + 1)] for _ in range(L)]
            self.tcs = [[like.new_empty(K, c, B) for _ in range(T)] for _ in range(L)]
        for i in range(L):
            lo, hi = _zrows(i, c)
            z = [self.slots[t + i][:, lo:hi] for t in range(T)]
            self.z.append(z)
            self.zT.append([v.transpose(1, 2) for v in z])
            self.h.append([self.slots[t + i + 1][:, hi - c:hi] for t in range(T)])
            acts = [one] * T if arch == "rnn" else [like.new_empty(K, R, B) for _ in range(T)]
            self.act.append(acts)
            # gate views: lstm (i, f, o, g, i|f|o); gru (r, z, n, hn, r|z); rnn none
            if arch == "lstm":
                self.gates.append([(a[:, :c], a[:, c:2 * c], a[:, 2 * c:3 * c], a[:, 3 * c:], a[:, :3 * c])
                                   for a in acts])
            elif arch == "gru":
                self.gates.append([(a[:, :c], a[:, c:2 * c], a[:, 2 * c:3 * c], a[:, 3 * c:], a[:, :2 * c])
                                   for a in acts])


class _BwdBufs:
    """Backward buffers of one shape, with their views: per layer and step the gradient on
    the layer's column z (rows [input; 1; own state], or only the state for layer 0 when x
    needs none), and scratch for one step."""

    def __init__(self, arch, T, L, K, c, B, rows0, like):
        R = fused_rows(arch, c)
        e = like.new_empty
        self.gW = [e(K, R, (1 if i == 0 else c) + 1 + c) for i in range(L)]
        self.gZ = [[e(K, rows0 if i == 0 else 2 * c + 1, B) for _ in range(T)] for i in range(L)]
        self.g_in = [[g[:, :c] for g in gz] for gz in self.gZ]       # to the layer below
        self.g_rec = [[g[:, -c:] for g in gz] for gz in self.gZ]     # to the step before
        self.gp, self.gh, self.t1, self.t2 = e(K, R, B), e(K, c, B), e(K, c, B), e(K, c, B)
        gp = self.gp
        self.gp_views = (gp[:, :c], gp[:, c:2 * c], gp[:, 2 * c:3 * c], gp[:, 3 * c:], gp[:, :3 * c])
        self.gr = [e(K, c, B), e(K, c, B)]
        self.gc, self.gc_next, self.d = e(K, c, B), e(K, c, B), e(K, 3 * c, B)
        d = self.d
        self.d_views = (d[:, :c], d[:, c:2 * c], d[:, 2 * c:])


class _Stack(torch.autograd.Function):
    """The whole stack over all steps, with backpropagation through time by hand.

    Pack invariance: every op works on one step's slices, each member's numbers come from the
    same kernels whatever K is, and weight gradients are summed over the steps from the last to
    the first, so a longer pack's padded steps (whose gradients are exact zeros) come last and
    change nothing: a point's gradients are bitwise those it gets alone, in any pack.
    """

    @staticmethod
    def forward(ctx, arch, tbptt, x, mask, *params):
        L = len(params) // 4
        K, B, T = x.shape
        c = params[1].shape[-1]
        P = mask.shape[0]
        Ws = [fuse(arch, *params[4 * i:4 * i + 4]) for i in range(L)]
        Wf = [fwd_weights(arch, W, c) for W in Ws]
        like = Ws[0]
        key = ("stack", arch, T, L, K, c, B, like.dtype, like.device)
        bufs = _FWD.take(key, lambda: _FwdBufs(arch, T, L, K, c, B, like))
        masks = mask.unbind(0)
        for t, xt in enumerate(x.unbind(2)):
            bufs.x[t].copy_(xt)
        negm = mask.neg().unbind(0) if arch == "rnn" else None
        for i in range(L):
            W, Z, H, A = Wf[i], bufs.z[i], bufs.h[i], bufs.act[i]
            G = bufs.gates[i] if arch != "rnn" else None
            cells, tcs = (bufs.cells[i], bufs.tcs[i]) if arch == "lstm" else (None, None)
            for t in range(T):
                mk = t < P
                _step(arch, W, Z[t], H[t], A[t], c, masks[t] if mk else None,
                      negm[t] if mk and negm else None, G[t] if G else None,
                      cells[t] if cells else None, cells[t + 1] if cells else None,
                      tcs[t] if tcs else None)
        out = bufs.h[L - 1][T - 1].clone()
        ctx.arch, ctx.tbptt, ctx.c, ctx.T, ctx.key = arch, tbptt, c, T, key
        ctx.bufs, ctx.Ws, ctx.masks = bufs, Ws, masks
        weakref.finalize(ctx, _FWD.give, key, bufs)   # the graph is gone: reuse the buffers
        return out

    @staticmethod
    def backward(ctx, g_out):
        arch, tbptt, c, T = ctx.arch, ctx.tbptt, ctx.c, ctx.T
        fb, Ws, masks = ctx.bufs, ctx.Ws, ctx.masks
        L = len(Ws)
        K, R, _ = Ws[0].shape
        B = g_out.shape[-1]
        P = len(masks)
        need_x = bool(ctx.needs_input_grad[2])
        rows0 = Ws[0].shape[-1] if need_x else c
        bkey = ctx.key + (need_x,)
        bb = _BWD.take(bkey, lambda: _BwdBufs(arch, T, L, K, c, B, rows0, Ws[0]))
        gp, gh_buf, t1, t2 = bb.gp, bb.gh, bb.t1, bb.t2
        bmm, add, mul, addcmul = torch.bmm, torch.add, torch.mul, torch.addcmul
        tanh_bw = torch.ops.aten.tanh_backward.grad_input
        sig_bw = torch.ops.aten.sigmoid_backward.grad_input
        g_out = g_out.contiguous()
        grads = [None] * (4 * L)
        g_above = None                             # gradient on h^i_t from layer i + 1
        gx = None
        for i in reversed(range(L)):
            W, gW, gZ, g_rec = Ws[i], bb.gW[i], bb.gZ[i], bb.g_rec[i]
            Z, ZT, H = fb.z[i], fb.zT[i], fb.h[i]
            m = W.shape[-1] - 1 - c
            Wt = (W if (i > 0 or need_x) else W[:, :, m + 1:]).transpose(1, 2)   # (K, rows, R)
            gW.zero_()
            have_gc = False
            grec = None                            # gradient on h_t from step t + 1
            for t in range(T - 1, -1, -1):
                if g_above is not None:            # gradient on h_t
                    gh = g_above[t] if grec is None else add(g_above[t], grec, out=gh_buf)
                else:
                    gh = g_out if t == T - 1 else grec
                mk = masks[t] if t < P else None
                if gh is None and not have_gc:
                    gZ[t].zero_()                  # nothing reaches this step (tbptt)
                    continue
                if arch == "rnn":
                    tanh_bw(gh, H[t], grad_input=gp)
                    if mk is not None:
                        gp.mul_(mk)
                elif arch == "lstm":
                    ig, fg, og, gg, ifo = fb.gates[i][t]
                    tc, gc, gc_next = fb.tcs[i][t], bb.gc, bb.gc_next
                    di, df, do = bb.d_views
                    if gh is not None:             # gc = gc_next + gh * o * (1 - tanh(c)^2)
                        mul(gh, og, out=t1)
                        tanh_bw(t1, tc, grad_input=gc)
                        if have_gc:
                            gc.add_(gc_next)
                    else:
                        gc.copy_(gc_next)
                    if mk is not None:
                        gc.mul_(mk)
                    mul(gc, gg, out=di)
                    mul(gc, fb.cells[i][t], out=df)
                    if gh is not None:
                        mul(gh, tc, out=do)
                    else:
                        do.zero_()
                    sig_bw(bb.d, ifo, grad_input=bb.gp_views[4])
                    mul(gc, ig, out=t1)                          # d/d g
                    tanh_bw(t1, gg, grad_input=bb.gp_views[3])
                else:  # gru
                    r, zg, n, hn, _ = fb.gates[i][t]
                    gr_, gz_, gan, ghn, _ = bb.gp_views
                    if mk is not None:
                        gh = mul(gh, mk, out=gh_buf)
                    mul(gh, zg, out=t1)                          # direct path to h_{t-1}
                    torch.sub(gh, t1, out=t2)                    # d/d n = gh * (1 - z)
                    tanh_bw(t2, n, grad_input=gan)
                    mul(gan, r, out=ghn)                         # d/d hn
                    torch.sub(Z[t][:, -c:], n, out=t2)           # d/d z = gh * (h_prev - n)
                    t2.mul_(gh)
                    sig_bw(t2, zg, grad_input=gz_)
                    addcmul(_ZERO, gan, hn, value=0.5, out=t2)   # d/d r (hn is doubled)
                    sig_bw(t2, r, grad_input=gr_)
                gW.baddbmm_(gp, ZT[t])
                bmm(Wt, gp, out=gZ[t])
                if tbptt and _cut(tbptt, T, t):
                    grec, have_gc = None, False
                    continue
                grec = g_rec[t]
                if arch == "gru":                  # plus the direct path h_{t-1} -> h_t
                    grec = add(grec, t1, out=bb.gr[t % 2])
                elif arch == "lstm":
                    mul(bb.gc, fb.gates[i][t][1], out=bb.gc_next)
                    have_gc = True
            grads[4 * i:4 * i + 4] = unfuse_grad(arch, gW, m, c)
            if i > 0:
                g_above = bb.g_in[i]
            elif need_x:
                gx = torch.stack([g[:, 0] for g in gZ], 2)           # (K, B, T)
        _BWD.give(bkey, bb)
        return (None, None, gx, None, *grads)


def _kernel_weights(arch: str, flat: list[torch.Tensor]) -> torch.Tensor:
    """The fused weights of all layers, member by member: `(K, sum_i R * (m_i + 1 + c))`,
    contiguous (a new tensor)."""
    L, K = len(flat) // 4, flat[0].shape[0]
    return torch.cat([fuse(arch, *flat[4 * i:4 * i + 4]).reshape(K, -1) for i in range(L)], 1)


class _CellKernel(torch.autograd.Function):
    """The stack by the C kernel (csrc/cells.c): forward and backward through time in one call
    each. The same function and gradients as :class:`_Stack`."""

    @staticmethod
    def forward(ctx, lib, arch, tbptt, x, mask, *params):
        L, c = len(params) // 4, params[1].shape[-1]
        W = _kernel_weights(arch, params)
        xt = x.detach().permute(2, 0, 1).contiguous()     # (T, K, B): memgrid.task's memory
        key = (arch, xt.shape, L, c, xt.dtype)
        bufs = _KFWD.take(key, lambda: kernels.buffers(arch, xt, L, c, keep=True))
        kernels.forward(lib, arch, W, xt, mask, bufs)
        ctx.stash = lib, arch, tbptt, W, xt, mask, bufs
        weakref.finalize(ctx, _KFWD.give, key, bufs)  # the graph is gone: reuse the buffers
        return bufs[0][:, L - 1, -1].clone()

    @staticmethod
    def backward(ctx, g_out):
        lib, arch, tbptt, W, xt, mask, bufs = ctx.stash
        need_x = bool(ctx.needs_input_grad[3])
        gW, gx = kernels.backward(lib, arch, W, xt, mask, bufs, g_out.contiguous(), tbptt, need_x)
        K, L, _, c, _ = bufs[0].shape
        R = fused_rows(arch, c)
        grads, at = [], 0
        for i in range(L):
            m = 1 if i == 0 else c
            n = R * (m + 1 + c)
            grads += unfuse_grad(arch, gW[:, at:at + n].reshape(K, R, m + 1 + c), m, c)
            at += n
        return (None, None, None, None if gx is None else gx.permute(1, 2, 0), None, *grads)


@torch.no_grad()
def stack_states(arch: str, flat: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor | None:
    """Every layer's states h_t of every member, `(K, L, T, c, B)`, for inputs `x` `(K, B, T)`
    that all start at step 0 (no mask), by the C kernel in one forward (`flat`: the layers'
    parameters, memgrid.models.cell_params); None where it cannot run. Bitwise the same for a
    member alone and in any pack."""
    L = len(flat) // 4
    lib = kernels.usable(arch, x, *flat)
    if lib is None:
        return None
    c = flat[1].shape[-1]
    xt = x.permute(2, 0, 1).contiguous()                                       # (T, K, B)
    bufs = kernels.buffers(arch, xt, L, c, keep=True)
    no_mask = torch.zeros(0, *xt.shape[1:], dtype=torch.bool)
    kernels.forward(lib, arch, _kernel_weights(arch, flat), xt, no_mask, bufs)
    return bufs[0][:, :, 1:]                                                  # h_0 .. h_{T-1}


@torch.no_grad()
def _kernel_infer(lib, arch, flat, x, mask) -> torch.Tensor:
    L, c, T = len(flat) // 4, flat[1].shape[-1], x.shape[2]
    xt = x.permute(2, 0, 1).contiguous()
    key = (arch, xt.shape, L, c, xt.dtype)
    bufs = _KINF.take(key, lambda: kernels.buffers(arch, xt, L, c, keep=False))
    kernels.forward(lib, arch, _kernel_weights(arch, flat), xt, mask, bufs)
    h = bufs[0][:, L - 1, T % 2].clone()
    _KINF.give(key, bufs)
    return h


@torch.no_grad()
def _infer(arch: str, flat: list[torch.Tensor], x: torch.Tensor, maskf: torch.Tensor,
           keep: bool) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """Forward without a graph (evaluation): the layers advance together step by step, each in
    two alternating buffers, so memory does not grow with T (evaluation sets are large)."""
    L = len(flat) // 4
    K, B, T = x.shape
    c = flat[1].shape[-1]
    P = maskf.shape[0]
    negf = maskf.neg() if arch == "rnn" else None
    Ws = [fwd_weights(arch, fuse(arch, *flat[4 * i:4 * i + 4]), c) for i in range(L)]
    like = Ws[0]
    key = (arch, L, K, c, B, like.dtype, like.device)

    def make():
        zs = []
        for W in Ws:                       # z = [input; 1; h], two slots
            z = like.new_zeros(2, K, W.shape[-1], B)
            z[:, :, W.shape[-1] - 1 - c] = 1
            zs.append(z)
        cells = [like.new_zeros(2, K, c, B) for _ in range(L)] if arch == "lstm" else None
        return zs, like.new_empty(K, Ws[0].shape[1], B), cells, like.new_empty(K, c, B)

    bufs = _INF.take(key, make)
    zs, act, cells, tc = bufs
    for z in zs:                           # initial states
        z[0, :, -c:] = 0
    if cells:
        for cl in cells:
            cl[0] = 0
    outs = [] if keep else None
    for t in range(T):
        s, s1 = t % 2, 1 - t % 2
        mk = maskf[t] if t < P else None
        negm = negf[t] if t < P and negf is not None else None
        zs[0][s, :, 0] = x[:, :, t]
        for i in range(L):
            if i > 0:
                zs[i][s, :, :c] = zs[i - 1][s1, :, -c:]
            _step(arch, Ws[i], zs[i][s], zs[i][s1, :, -c:], act, c, mk, negm,
                  cell_prev=cells[i][s] if cells else None,
                  cell_out=cells[i][s1] if cells else None, tc_out=tc)
        if keep:
            outs.append(zs[-1][s1, :, -c:].clone())
    h = zs[-1][T % 2, :, -c:].clone()
    _INF.give(key, bufs)
    return h, outs


def hidden(arch: str, flat: list[torch.Tensor], x: torch.Tensor, mask: torch.Tensor, tbptt: int,
           return_states: bool, grad: bool) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """The last layer's state after the last step `(K, c, B)` of a paper cell's stack (`flat`:
    the layers' parameters, memgrid.models.cell_params), and with `return_states` its state
    at every step (a list of T `(K, c, B)`; evaluation only). On the CPU by the C kernel, else
    by :class:`_Stack` with gradients (`grad`) and :func:`_infer` without. `mask` `(K, B, P)`
    and `tbptt` as memgrid.models.forward takes them."""
    lib = None if return_states else kernels.usable(arch, x, *flat)
    if lib is not None:                    # on the CPU: the C kernel
        mk = mask.permute(2, 0, 1).contiguous()     # (P, K, B) bool: memgrid.task's memory
        if grad:
            return _CellKernel.apply(lib, arch, tbptt, x, mk, *flat), None
        return _kernel_infer(lib, arch, flat, x, mk), None
    maskf = mask.permute(2, 0, 1).unsqueeze(2).to(flat[0].dtype)    # (P, K, 1, B)
    if grad:
        return _Stack.apply(arch, tbptt, x, maskf, *flat), None
    return _infer(arch, flat, x, maskf, return_states)
