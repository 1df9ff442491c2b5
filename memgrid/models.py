"""Packed recurrent networks: K independent networks computed as one.

Every cell is defined once in :mod:`memgrid.cells`; :func:`reference_forward` runs any cell's
definition under autograd (how a cell without a fast path trains, and what every fast path is
tested against). The rest of this module is the fast path of the paper's cells, RNN, LSTM and
GRU:

Every parameter is stacked over the pack, ``[K, ...]``, with torch's names and shapes behind
the K (``w_ih.0`` is ``weight_ih_l0``: ``(K, G*c, in)``; G = 1, 4, 3 gates). The cell
equations and gate orders are those of ``torch.nn.RNN`` (tanh), ``torch.nn.LSTM`` (i, f, g, o)
and ``torch.nn.GRU`` (r, z, n), so member k with torch's weights computes what the torch module
computes. ``torch.nn.RNN`` cannot be vmapped, hence the hand-written cells.

Layout: the state is ``(K, c, B)`` and the recurrence is ``W_hh @ h``, a batched matmul over K
(5-7x faster in MKL than ``(K, B, c) @ W`` at these sizes).

Speed (``benchmarks/README.md``): a layer's step is ONE batched matmul ``W @ z`` of the fused
weights ``W = [W_ih | b | W_hh]`` `(K, R, m+1+c)` and the column ``z = [x_t; 1; h_{t-1}]``,
written in place into per-step buffers that are reused from step to step (:class:`_Pool`),
and backpropagation through time is written by hand (:class:`_Stack`): per step one matmul for
the weight gradient, one for the state gradient and a few in-place elementwise ops, instead of
autograd's graph of ~10 nodes per step.

On the CPU memgrid goes further: :class:`_CellKernel` runs the whole stack, forward and
backward through time, in one call of a C kernel (``csrc/cells.c``, built on first use by
:mod:`memgrid.kernels`), 1.6-2.9x faster, and bitwise pack-invariant on every CPU; and
training takes the kernel's whole step instead (``memgrid.train.PackTrainer._kernel_step``:
forward, loss gradient, backward and SGD in one call, bitwise what autograd around
:class:`_CellKernel` gives). CUDA, and machines without a C compiler, take the PyTorch path
above.
"""

from __future__ import annotations

import math
import threading
import weakref

import torch

from . import kernels
from .cells import CELLS
from .task import INIT, key, uniform

Params = dict[str, torch.Tensor]


def param_shapes(arch: str, layers: int, cells: int, readout: str) -> dict[str, tuple[int, ...]]:
    """Per-member shapes, in a fixed order (the order is part of the init's counter): the
    cell's layers (``memgrid.cells``), then the linear readout's."""
    shapes = dict(CELLS[arch].layer_shapes(layers, cells))
    if readout == "linear":
        shapes["w_out"] = (cells,)
        shapes["b_out"] = ()
    return shapes


def init_params(arch: str, layers: int, cells: int, readout: str, seed: torch.Tensor) -> Params:
    """The cell's init (``memgrid.cells``; RNN, LSTM, GRU: torch's default, U(-1/sqrt(c),
    1/sqrt(c)) for every weight and bias), drawn from the counter-based generator: member k's
    weights depend on its seed alone, not on the pack. The readout takes U(-1/sqrt(c),
    1/sqrt(c))."""
    K = seed.shape[0]
    k = key(seed, INIT).reshape(K, 1)
    cell = CELLS[arch]
    params = {}
    for n, (name, shape) in enumerate(param_shapes(arch, layers, cells, readout).items()):
        tensor_id = torch.full((1, 1), n, dtype=torch.int64, device=seed.device)

        def draw(count: int, tensor_id=tensor_id) -> torch.Tensor:
            idx = torch.arange(count, dtype=torch.int64, device=seed.device).reshape(1, count)
            return uniform(k, tensor_id, idx)                             # (K, count)

        base, _, layer = name.partition(".")
        if layer:
            m = 1 if layer == "0" else cells
            drawn = {b: params[f"{b}.{layer}"].reshape(K, -1) for b in cell.weights(m, cells)
                     if f"{b}.{layer}" in params}
            values = cell.init(base, shape, m, cells, draw, drawn)
        else:
            values = (2 * draw(math.prod(shape)) - 1) * (1.0 / math.sqrt(cells))
        params[name] = values.reshape(K, *shape)
    return params


def count_params(params: Params) -> int:
    """Parameters of one member."""
    return sum(p[0].numel() for p in params.values())


def n_layers(params: Params) -> int:
    """Layers of a stack of parameters named ``<name>.<layer>``."""
    return 1 + max(int(n.rsplit(".", 1)[1]) for n in params if "." in n)


def layer_params(params: Params, i: int) -> Params:
    """Layer i's parameters by their names in the cell's definition."""
    suffix = f".{i}"
    return {n[:-len(suffix)]: v for n, v in params.items() if n.endswith(suffix)}


# ---------------------------------------------------------------------------------------------
# Fused weights. Columns: [x (m) | 1 | h (c)]. Rows (R): the gates in an order where the
# activations come in contiguous runs: rnn [h]; lstm [i, f, o, g] (torch: i, f, g, o); gru
# [r, z, xn, hn], where xn = W_in x + b_in and hn = W_hn h + b_hn stay apart (n = tanh(xn + r *
# hn)), each with a zero block.


def _fuse(arch: str, w_ih, w_hh, b_ih, b_hh) -> torch.Tensor:
    K, _, m = w_ih.shape
    c = w_hh.shape[-1]
    if arch == "gru":
        W = w_ih.new_zeros(K, 4 * c, m + 1 + c)
        W[:, :2 * c, :m] = w_ih[:, :2 * c]
        W[:, :2 * c, m] = b_ih[:, :2 * c] + b_hh[:, :2 * c]
        W[:, :2 * c, m + 1:] = w_hh[:, :2 * c]
        W[:, 2 * c:3 * c, :m] = w_ih[:, 2 * c:]
        W[:, 2 * c:3 * c, m] = b_ih[:, 2 * c:]
        W[:, 3 * c:, m] = b_hh[:, 2 * c:]
        W[:, 3 * c:, m + 1:] = w_hh[:, 2 * c:]
        return W
    W = torch.cat([w_ih, (b_ih + b_hh).unsqueeze(2), w_hh], 2)
    if arch == "lstm":  # i, f, g, o -> i, f, o, g
        W = torch.cat([W[:, :2 * c], W[:, 3 * c:], W[:, 2 * c:3 * c]], 1)
    return W


def _unfuse_grad(arch: str, gW: torch.Tensor, m: int, c: int) -> list[torch.Tensor]:
    """Gradient of the fused weights -> new tensors for (w_ih, w_hh, b_ih, b_hh)."""
    if arch == "gru":
        rz, xn, hn = gW[:, :2 * c], gW[:, 2 * c:3 * c], gW[:, 3 * c:]
        return [torch.cat([rz[..., :m], xn[..., :m]], 1), torch.cat([rz[..., m + 1:], hn[..., m + 1:]], 1),
                torch.cat([rz[..., m], xn[..., m]], 1), torch.cat([rz[..., m], hn[..., m]], 1)]
    if arch == "lstm":  # i, f, o, g -> i, f, g, o
        gW = torch.cat([gW[:, :2 * c], gW[:, 3 * c:], gW[:, 2 * c:3 * c]], 1)
    f = torch.contiguous_format
    return [gW[..., :m].clone(memory_format=f), gW[..., m + 1:].clone(memory_format=f),
            gW[..., m].clone(memory_format=f), gW[..., m].clone(memory_format=f)]


# tanh(a) = 2 sigmoid(2a) - 1. torch's CPU tanh is 4-6x slower than its sigmoid (2.6 vs 0.45 ns
# per float32 on an AMD EPYC, benchmarks/README.md), and every tanh sits on the critical path.
# The 2 goes into the fused weights' rows that feed a tanh (free inside the matmul), the - 1
# into one `add`. The result differs from tanh by float rounding (< 2e-7 absolute in float32).
_NEG1, _ZERO = torch.tensor(-1.0), torch.tensor(0.0)


def _fwd_weights(arch: str, W: torch.Tensor, c: int) -> torch.Tensor:
    """The fused weights as forward uses them: the rows whose pre-activation goes into a tanh
    doubled (rnn: all; lstm: g; gru: xn and hn, so that xn + r * hn comes out doubled)."""
    if arch == "rnn":
        return W * 2
    W = W.clone()
    W[:, (3 if arch == "lstm" else 2) * c:] *= 2
    return W


def _tanh_from_sigmoid_(s: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out = 2 s - 1, for s = sigmoid(2a): tanh(a)."""
    return torch.add(_NEG1, s, alpha=2, out=out)


def _tanh(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out = tanh(x) as 2 sigmoid(2x) - 1 (three fast ops instead of one slow one)."""
    torch.mul(x, 2, out=out)
    return _tanh_from_sigmoid_(out.sigmoid_(), out)


class _Pool:
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


_FWD, _BWD, _INF = _Pool(), _Pool(), _Pool()
_KFWD, _KINF = _Pool(), _Pool()            # the C kernel's buffers, training and evaluation


# ---------------------------------------------------------------------------------------------
# One step of one layer, forward: z `(K, m+1+c, B)` = [x_t; 1; h_{t-1}] -> h_t written into
# `h_out` `(K, c, B)`. `act` `(K, R, B)` receives the gates (kept for backward when training).


def _step(arch: str, W, z, h_out, act, c: int, mask, cell_prev=None, cell_out=None,
          tc_out=None) -> None:
    torch.bmm(W, z, out=act)                      # W: the forward weights, _fwd_weights
    if arch == "rnn":
        _tanh_from_sigmoid_(act.sigmoid_(), h_out)
        if mask is not None:
            h_out.mul_(mask)                      # h stays 0 until the sequence starts
    elif arch == "lstm":
        act.sigmoid_()                            # i, f, o, and sigmoid(2 g)
        _tanh_from_sigmoid_(act[:, 3 * c:], act[:, 3 * c:])     # g
        torch.mul(act[:, c:2 * c], cell_prev, out=cell_out)
        cell_out.addcmul_(act[:, :c], act[:, 3 * c:])
        if mask is not None:
            cell_out.mul_(mask)                   # so tanh(cell) and h are 0 there as well
        _tanh(cell_out, tc_out)
        torch.mul(act[:, 2 * c:3 * c], tc_out, out=h_out)
    else:  # gru
        r, zg, n, hn = act[:, :c], act[:, c:2 * c], act[:, 2 * c:3 * c], act[:, 3 * c:]
        act[:, :2 * c].sigmoid_()                 # r, z
        n.addcmul_(r, hn).sigmoid_()              # n = tanh(xn + r * hn): xn, hn come doubled
        _tanh_from_sigmoid_(n, n)
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
        R = kernels.fused_rows(arch, c)
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
        R = kernels.fused_rows(arch, c)
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
        Ws = [_fuse(arch, *params[4 * i:4 * i + 4]) for i in range(L)]
        Wf = [_fwd_weights(arch, W, c) for W in Ws]
        like = Ws[0]
        key = ("stack", arch, T, L, K, c, B, like.dtype, like.device)
        bufs = _FWD.take(key, lambda: _FwdBufs(arch, T, L, K, c, B, like))
        masks = mask.unbind(0)
        for t, xt in enumerate(x.unbind(2)):
            bufs.x[t].copy_(xt)
        bmm, addcmul, sig = torch.bmm, torch.addcmul, torch.sigmoid
        negm = mask.neg().unbind(0) if arch == "rnn" else None
        for i in range(L):
            W, Z, H, A = Wf[i], bufs.z[i], bufs.h[i], bufs.act[i]
            if arch == "rnn":
                for t in range(T):
                    h, a = H[t], A[t]
                    bmm(W, Z[t], out=a)
                    if t < P:                      # h = (2 sigmoid(2a) - 1) * mask: it stays 0
                        addcmul(negm[t], a.sigmoid_(), masks[t], value=2, out=h)   # until the
                    else:                                                         # sequence starts
                        _tanh_from_sigmoid_(sig(a, out=h), h)
                continue
            G = bufs.gates[i]
            cells, tcs = (bufs.cells[i], bufs.tcs[i]) if arch == "lstm" else (None, None)
            for t in range(T):
                a, h = A[t], H[t]
                bmm(W, Z[t], out=a)
                if arch == "lstm":
                    ig, fg, og, gg, ifo = G[t]
                    a.sigmoid_()                   # i, f, o, and sigmoid(2 g)
                    _tanh_from_sigmoid_(gg, gg)
                    cell = cells[t + 1]
                    torch.mul(fg, cells[t], out=cell)
                    cell.addcmul_(ig, gg)
                    if t < P:
                        cell.mul_(masks[t])        # so tanh(cell) and h are 0 there as well
                    _tanh(cell, tcs[t])
                    torch.mul(og, tcs[t], out=h)
                else:  # gru
                    r, zg, n, hn, rz = G[t]
                    rz.sigmoid_()                  # n = tanh(xn + r * hn), xn and hn doubled
                    _tanh_from_sigmoid_(n.addcmul_(r, hn).sigmoid_(), n)
                    torch.sub(Z[t][:, -c:], n, out=h)   # h = n + z * (h_prev - n)
                    h.mul_(zg).add_(n)
                    if t < P:
                        h.mul_(masks[t])
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
            grads[4 * i:4 * i + 4] = _unfuse_grad(arch, gW, m, c)
            if i > 0:
                g_above = bb.g_in[i]
            elif need_x:
                gx = torch.stack([g[:, 0] for g in gZ], 2)           # (K, B, T)
        _BWD.give(bkey, bb)
        return (None, None, gx, None, *grads)


def forward(arch: str, params: Params, x: torch.Tensor, mask: torch.Tensor, tbptt: int = 0,
            return_states: bool = False) -> torch.Tensor:
    """Outputs `(K, B)` for right-aligned inputs `x` `(K, B, T)`.

    `mask` `(K, B, P)`: for the first P steps, False where a sequence has not started; there
    the state stays at its initial zero, so each sequence runs as if alone.
    `tbptt` > 0 stops gradients every `tbptt` steps, counted back from the answer.
    `return_states`: also return the last layer's states, a list of T tensors `(K, c, B)`.

    Every op works on one step's `(K, *, B)` slices, never on a reduction over time: a pack that
    pads to a longer T then only adds exact zeros (padded steps come first and are summed last
    in backward), so a point's gradients are bitwise those it gets alone, in any pack.

    A cell with a fast path (``Cell.fast``) runs the C kernel on the CPU, elsewhere
    :class:`_Stack` (backward by hand) with gradients and :func:`_infer` without; each computes
    what :func:`reference_forward` (the cell's definition under autograd, op by op) computes,
    to float rounding. Any other cell runs :func:`reference_forward`. Gradients of gradients
    are not supported (nothing in memgrid takes them).
    """
    if not CELLS[arch].fast:
        return reference_forward(arch, params, x, mask, tbptt, return_states)
    flat = _cell_params(params)
    grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in flat))
    if return_states and grad:
        return reference_forward(arch, params, x, mask, tbptt, return_states)
    lib = None if return_states else kernels.usable(arch, x, *flat)
    if lib is not None:                    # on the CPU: the C kernel (memgrid/kernels.py)
        mk = mask.permute(2, 0, 1).contiguous()     # (P, K, B) bool: memgrid.task's memory
        if grad:
            h, outs = _CellKernel.apply(lib, arch, tbptt, x, mk, *flat), None
        else:
            h, outs = _kernel_infer(lib, arch, flat, x, mk), None
    else:
        maskf = mask.permute(2, 0, 1).unsqueeze(2).to(flat[0].dtype)    # (P, K, 1, B)
        if grad:
            h, outs = _Stack.apply(arch, tbptt, x, maskf, *flat), None
        else:
            h, outs = _infer(arch, flat, x, maskf, return_states)
    if "w_out" in params:
        y = (params["w_out"][:, :, None] * h).sum(1) + params["b_out"][:, None]
    else:
        y = h.sum(1)                                                       # (K, c, B) -> (K, B)
    return (y, outs) if return_states else y


def _cell_params(params: Params) -> list[torch.Tensor]:
    """The parameters of a cell with a fast path (torch's four per layer), layer by layer:
    w_ih, w_hh, b_ih, b_hh of layer 0, 1, ..."""
    return [params[f"{n}.{i}"] for i in range(n_layers(params))
            for n in ("w_ih", "w_hh", "b_ih", "b_hh")]


def _kernel_weights(arch: str, flat: list[torch.Tensor]) -> torch.Tensor:
    """The fused weights of all layers, member by member: `(K, sum_i R * (m_i + 1 + c))`,
    contiguous (a new tensor)."""
    L, K = len(flat) // 4, flat[0].shape[0]
    return torch.cat([_fuse(arch, *flat[4 * i:4 * i + 4]).reshape(K, -1) for i in range(L)], 1)


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
        R = kernels.fused_rows(arch, c)
        grads, at = [], 0
        for i in range(L):
            m = 1 if i == 0 else c
            n = R * (m + 1 + c)
            grads += _unfuse_grad(arch, gW[:, at:at + n].reshape(K, R, m + 1 + c), m, c)
            at += n
        return (None, None, None, None if gx is None else gx.permute(1, 2, 0), None, *grads)


@torch.no_grad()
def kernel_states(arch: str, params: Params, x: torch.Tensor) -> torch.Tensor | None:
    """Every layer's states h_t of every member, `(K, L, T, c, B)`, for inputs `x` `(K, B, T)`
    that all start at step 0 (no mask), by the C kernel in one forward; None where it cannot
    run (then :func:`forward` with ``return_states``, layer by layer). Bitwise the same for a
    member alone and in any pack."""
    if not CELLS[arch].fast:
        return None
    flat = _cell_params(params)
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
    Ws = [_fwd_weights(arch, _fuse(arch, *flat[4 * i:4 * i + 4]), c) for i in range(L)]
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
        zs[0][s, :, 0] = x[:, :, t]
        for i in range(L):
            if i > 0:
                zs[i][s, :, :c] = zs[i - 1][s1, :, -c:]
            _step(arch, Ws[i], zs[i][s], zs[i][s1, :, -c:], act, c, mk,
                  cells[i][s] if cells else None, cells[i][s1] if cells else None, tc)
        if keep:
            outs.append(zs[-1][s1, :, -c:].clone())
    h = zs[-1][T % 2, :, -c:].clone()
    _INF.give(key, bufs)
    return h, outs


def reference_forward(arch: str, params: Params, x: torch.Tensor, mask: torch.Tensor,
                      tbptt: int = 0, return_states: bool = False) -> torch.Tensor:
    """The same function from the cell's definition (``memgrid.cells``) under torch autograd,
    op by op: what every fast path is checked against, and how a cell without one trains and
    evaluates. With `return_states`, the last layer's ``Cell.read`` of every step, a list of T
    `(K, units, B)`."""
    cell = CELLS[arch]
    K, B, T = x.shape
    rows, zero = cell.state_rows(cells_of(arch, params)), x.new_zeros(())
    masks = mask.permute(2, 0, 1).unsqueeze(2).unbind(0)               # P x (K, 1, B)
    inp = x.unsqueeze(1).unbind(3)           # T x (K, 1, B); unbind, not x[..., t]: indexing
    for i in range(n_layers(params)):        # zero-fills a full-size grad in backward each step
        w = layer_params(params, i)
        state = tuple(x.new_zeros(K, r, B) for r in rows)
        outs, reads = [], []
        # every step at once; unbind, not [:, t]: a slice's backward zero-fills the whole
        pre = [v.unbind(1) for v in cell.pre(w, torch.stack(inp, 1))] if cell.pre else None
        for t in range(T):
            if tbptt and t > 0 and (T - t) % tbptt == 0:
                state = tuple(s.detach() for s in state)
            if pre is None:
                out, new = cell.step(w, inp[t], state)
            else:
                out, new = cell.recur(w, tuple(v[t] for v in pre), state)
            if t < len(masks):               # before a sequence starts its state stays zero
                new = tuple(torch.where(masks[t], n, s) for n, s in zip(new, state))
                out = torch.where(masks[t], out, zero)
            state = new
            outs.append(out)
            if return_states:
                reads.append(cell.read(out, state))
        inp = outs
    h = outs[-1]
    if "w_out" in params:
        y = (params["w_out"][:, :, None] * h).sum(1) + params["b_out"][:, None]
    else:
        y = h.sum(1)                                                       # (K, c, B) -> (K, B)
    return (y, reads) if return_states else y


def cells_of(arch: str, params: Params) -> int:
    """c, the units per layer, of a stack of `arch` (its first parameter's rows are a multiple
    of c, ``memgrid.cells``)."""
    one = CELLS[arch].weights(1, 1)
    first = next(iter(one))
    return params[f"{first}.0"].shape[1] // one[first][0]
