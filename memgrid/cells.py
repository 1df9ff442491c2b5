"""The recurrent cells, each defined once: its parameters, its initialisation, its state and
its step in PyTorch.

Everything else is derived from these definitions: the packed parameters and their
initialisation (``memgrid.models.init_params``), the autograd forward that trains and evaluates
a cell without a fast path and that every fast path is tested against
(``memgrid.models.reference_forward``), the states the stream MC reads
(``memgrid.stream_mc``), the parameter count (``Point.params``), the units N that Jaeger's bound
counts (``Point.units``), pack sizing (``memgrid.packs``) and the lists of the CLI, the report
and the figures.

A step works on K members at once, in memgrid's layout: a layer's input is `(K, m, B)`, each
state tensor `(K, rows, B)` (B sequences side by side), and a parameter named ``w`` of shape
``(r, m)`` in :attr:`Cell.weights` is ``(K, r, m)``. A step must treat the K members apart
(no reduction across K) and the B sequences apart (no reduction across B): that is what makes a
point's training the same alone and in any pack.

RNN, LSTM and GRU also have fast paths (``memgrid.fast``: their fused weights, a hand-written
backward through time, and the C kernel of ``fast/csrc/cells.c``), bitwise pack-invariant,
tested against their definitions here; :attr:`Cell.fast` says so. minGRU, minLSTM, the LRU and
the selective SSM have a C kernel of their own on the CPU (``memgrid.fast.diagonal``), likewise
tested. Any other cell trains through autograd on its definition: to add one, write its
definition (here, or in a file of your own named by a grid, ``memgrid.user_cells``).

This module imports torch only when a step runs, so that the CLI and the grid checks start
without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

Shapes = dict[str, tuple[int, ...]]
Tensor = Any        # torch.Tensor, without importing torch here


def uniform_init(bound: Callable[[int, int], float]):
    """An init drawing U(-b, b), b = bound(m, c), for every parameter (torch's default for its
    RNN cells, b = 1/sqrt(c), and for a Linear layer, b = 1/sqrt(m))."""
    def init(name: str, shape: tuple[int, ...], m: int, c: int, draw, drawn) -> Tensor:
        return (2 * draw(math.prod(shape)) - 1) * bound(m, c)
    return init


def normal(draw, n: int) -> Tensor:
    """n standard normal numbers per member from 2n uniform ones (Box-Muller), `(K, n)`."""
    import torch

    u = draw(2 * n)
    u1, u2 = 1 - u[:, :n], u[:, n:]          # u1 in (0, 1]: the log is finite
    return torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * math.pi * u2)


@dataclass(frozen=True)
class Cell:
    """One recurrent cell: a layer of c units reading m inputs per step."""

    name: str
    """the `arch` of a point"""
    weights: Callable[[int, int], Shapes]
    """(m, c) -> one layer's parameters by name and their per-member shapes, in the order the
    init draws them (the order is part of a point's initial weights)"""
    step: Callable[[dict[str, Tensor], Tensor, tuple], tuple[Tensor, tuple]] | None = None
    """(w, x, state) -> (out, state): one time step of one layer; w: the layer's parameters;
    x `(K, m, B)`; state: tuple of `(K, rows, B)`; out `(K, c, B)`: what the next layer and the
    readout see. None where :attr:`pre` and :attr:`recur` define it."""
    pre: Callable[[dict[str, Tensor], Tensor], tuple] | None = None
    """A cell whose gates read the input alone may give its step in two parts: (w, xs) -> what
    its steps compute from their inputs alone, for many steps at once: xs `(K, T, m, B)` -> a
    tuple of `(K, T, ...)` tensors; then :attr:`recur`. The step is then
    ``recur(w, pre(w, x[:, None])[:, 0], state)``, and memgrid's forward runs :attr:`pre` once
    per layer over every step instead of once per step (the same numbers)."""
    recur: Callable[[dict[str, Tensor], tuple, tuple], tuple[Tensor, tuple]] | None = None
    """(w, pre_t, state) -> (out, state): the rest of the step, given step t's slice of
    :attr:`pre`"""
    init: Callable[..., Tensor] = uniform_init(lambda m, c: 1 / math.sqrt(c))
    """(name, shape, m, c, draw, drawn) -> the parameter's values `(K, prod(shape))`; draw(n)
    gives n uniform numbers in [0, 1) per member from the point's seed, a fresh stream per
    parameter; drawn: the layer's parameters initialised before this one, `(K, numel)` by
    name"""
    state_rows: Callable[[int], tuple[int, ...]] = lambda c: (c,)
    """c -> the rows of each state tensor (zero at the start of every sequence)"""
    read: Callable[[Tensor, tuple], Tensor] = lambda out, state: out
    """(out, state) -> the numbers of a layer the stream MC regresses on, `(K, units(c), B)`"""
    units: Callable[[int], int] = lambda c: c
    """c -> N of one layer: how many numbers :attr:`read` gives, what MC <= N counts"""
    fast: bool = False
    """True for the paper's cells, whose fused-weight fast paths memgrid.fast runs (the diagonal
    cells' C kernel, memgrid.fast.diagonal, goes by the arch's name)"""
    label: str = ""
    """the cell's name as papers write it (minGRU, LRU), for tables and figures; its `name`
    upper-cased where empty"""
    family: str = ""
    """the cells a figure of many groups it with (the paper's cells, the LRU's variants); the
    cells without one share a group"""

    def __post_init__(self):
        if not self.label:
            object.__setattr__(self, "label", self.name.upper())
        if (self.step is None) == (self.pre is None or self.recur is None):
            raise ValueError(f"cell {self.name!r}: give its step, or its pre and recur")
        if self.step is None:
            pre, recur = self.pre, self.recur

            def step(w, x, state):
                return recur(w, tuple(v[:, 0] for v in pre(w, x[:, None])), state)
            object.__setattr__(self, "step", step)

    def layer_shapes(self, layers: int, cells: int) -> Shapes:
        """Every layer's parameters, named ``<name>.<layer>``, in init order."""
        out: Shapes = {}
        for i in range(layers):
            for n, s in self.weights(1 if i == 0 else cells, cells).items():
                out[f"{n}.{i}"] = s
        return out

    def count(self, layers: int, cells: int) -> int:
        """Parameters of the recurrent layers of one member (closed form: the shapes')."""
        return sum(math.prod(s) for s in self.layer_shapes(layers, cells).values())


# ---------------------------------------------------------------------------------------------
# The paper's cells: torch.nn.RNN (tanh), torch.nn.LSTM (gates i, f, g, o) and torch.nn.GRU
# (r, z, n), with torch's names and shapes, so that member k with torch's weights computes what
# the torch module computes.


def _torch_weights(gates: int):
    def weights(m: int, c: int) -> Shapes:
        return {"w_ih": (gates * c, m), "w_hh": (gates * c, c), "b_ih": (gates * c,),
                "b_hh": (gates * c,)}
    return weights


def affine(w: Tensor, b: Tensor, x: Tensor) -> Tensor:
    """b + w x per member: w `(K, r, m)`, b `(K, r)`, x `(K, m, B)` -> `(K, r, B)`; with one
    input (m = 1) a broadcast product."""
    import torch

    if w.shape[-1] == 1:
        return torch.addcmul(b[:, :, None], w, x)
    return torch.baddbmm(b[:, :, None], w, x)


def affine_steps(w: Tensor, b: Tensor | None, xs: Tensor) -> Tensor:
    """:func:`affine` of every step, stacked: xs `(K, T, m, B)` -> `(K, T, r, B)` (b: None
    for none). One product per step, not one over every step: a parameter used by one op over
    all T would get its gradient summed over T in one reduction, whose rounding depends on
    how far the pack pads T; used once per step, its gradients add up step by step, the
    padded steps' exact zeros last, so that a point trains bit for bit alike in any pack. For
    the same reason a :attr:`Cell.pre` applies parameters only through this."""
    import torch

    if b is not None:
        return torch.stack([affine(w, b, xs[:, t]) for t in range(xs.shape[1])], 1)
    one = w.shape[-1] == 1                       # a broadcast product, as affine's
    return torch.stack([w * xs[:, t] if one else torch.bmm(w, xs[:, t])
                        for t in range(xs.shape[1])], 1)


def _rnn_step(w, x, state):
    import torch

    (h,) = state
    h = torch.tanh(torch.baddbmm(affine(w["w_ih"], w["b_ih"] + w["b_hh"], x), w["w_hh"], h))
    return h, (h,)


def _lstm_step(w, x, state):
    import torch

    h, cell = state
    gates = torch.baddbmm(affine(w["w_ih"], w["b_ih"] + w["b_hh"], x), w["w_hh"], h)
    i, f, g, o = gates.chunk(4, dim=1)
    cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(cell)
    return h, (h, cell)


def _gru_step(w, x, state):
    import torch

    (h,) = state
    xr, xz, xn = affine(w["w_ih"], w["b_ih"], x).chunk(3, dim=1)
    hr, hz, hn = torch.baddbmm(w["b_hh"][:, :, None], w["w_hh"], h).chunk(3, dim=1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    h = n + z * (h - n)
    return h, (h,)


PAPER, MIN_GATED, LRU_FAMILY, SSM = ("the paper's cells", "minGRU and minLSTM", "the LRU",
                                     "the selective SSM")
"""the built-in cells' families (:attr:`Cell.family`)"""
RNN = Cell("rnn", _torch_weights(1), _rnn_step, fast=True, family=PAPER)
LSTM = Cell("lstm", _torch_weights(4), _lstm_step, state_rows=lambda c: (c, c), fast=True,
            family=PAPER)
GRU = Cell("gru", _torch_weights(3), _gru_step, fast=True, family=PAPER)


# ---------------------------------------------------------------------------------------------
# minGRU and minLSTM (Feng et al., "Were RNNs all we needed?", 2024): gates that read the input
# alone, so that the recurrence is linear in h and runs as a scan. The log-space versions
# (their appendix B.3.1), whose candidate state g(.) is positive, as the published code runs
# them step by step; a Linear layer's init, U(-1/sqrt(m), 1/sqrt(m)).


def g_positive(x: Tensor) -> Tensor:
    """Feng et al.'s g: x + 1/2 for x >= 0, sigmoid(x) below (continuous, positive)."""
    import torch

    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def _mingru_pre(w, xs):
    """z and h~ of every step; the projections without biases where the layer has none (the
    blocks' below)."""
    import torch

    z = torch.sigmoid(affine_steps(w["w_z"], w.get("b_z"), xs))
    return z, g_positive(affine_steps(w["w_h"], w.get("b_h"), xs))


def _mingru_recur(w, pre, state):
    import torch

    (h,), (z, h_new) = state, pre
    h = torch.lerp(h, h_new, z)                                     # (1 - z) h + z h~
    return h, (h,)


def _minlstm_pre(w, xs):
    """f' and h~ i' of every step (biases as :func:`_mingru_pre`'s)."""
    import torch

    f = torch.sigmoid(affine_steps(w["w_f"], w.get("b_f"), xs))
    i = torch.sigmoid(affine_steps(w["w_i"], w.get("b_i"), xs))
    s = f + i
    return f / s, g_positive(affine_steps(w["w_h"], w.get("b_h"), xs)) * (i / s)


def _minlstm_recur(w, pre, state):
    (h,), (f, ih) = state, pre
    h = h * f + ih
    return h, (h,)


_LINEAR_INIT = uniform_init(lambda m, c: 1 / math.sqrt(m))
MINGRU = Cell("mingru", lambda m, c: {"w_z": (c, m), "b_z": (c,), "w_h": (c, m), "b_h": (c,)},
              pre=_mingru_pre, recur=_mingru_recur, init=_LINEAR_INIT, label="minGRU",
              family=MIN_GATED)
MINLSTM = Cell("minlstm", lambda m, c: {"w_f": (c, m), "b_f": (c,), "w_i": (c, m), "b_i": (c,),
                                         "w_h": (c, m), "b_h": (c,)},
               pre=_minlstm_pre, recur=_minlstm_recur, init=_LINEAR_INIT, label="minLSTM",
               family=MIN_GATED)


# ---------------------------------------------------------------------------------------------
# The Linear Recurrent Unit (Orvieto et al., "Resurrecting recurrent neural networks for long
# sequences", ICML 2023): a diagonal complex linear recurrence x' = lambda x + gamma (B u),
# y = Re(C x) + D u, lambda = exp(-exp(nu) + i exp(theta)) (the exponential parameterisation),
# gamma = exp(gamma_log) initialised to sqrt(1 - |lambda|^2) (the normalisation); lambda drawn
# uniformly on the ring r_min <= |lambda| <= r_max with phase in [0, max_phase] (the paper's
# code's defaults). A layer of c units holds c complex states: N = 2c real numbers. Complex
# numbers are kept as (real, imaginary) pairs of real tensors. D is (c, m): the paper's
# diagonal skip where m = c, N(0, 1/m) entries (N(0, 1) at m = 1, as the paper's).
# The ring decides what the LRU holds at the start: the paper's code's default draws r in
# [0, 1) and phases in [0, 2 pi]; for long-range memory it starts on r_min = 0.9 with phases
# in [0, pi / 10] (`lru_ring`). `lru_real` is the LRU with real lambda (no phase, real B and
# C: N = c), the form minGRU, minLSTM and S6 share: a test of what the phase adds.


def _lru_weights(m: int, c: int) -> Shapes:
    return {"nu_log": (c,), "theta_log": (c,), "gamma_log": (c,), "b_re": (c, m), "b_im": (c, m),
            "c_re": (c, c), "c_im": (c, c), "d": (c, m)}


def lru_init(r_min: float, r_max: float, max_phase: float):
    """The LRU's init, lambda uniform on the ring r_min <= |lambda| <= r_max with phase in
    [0, max_phase]; B, C, D Glorot-like normal (b_re, b_im N(0, 1/2m); c_* N(0, 1/c); d
    N(0, 1/m))."""
    def init(name, shape, m, c, draw, drawn):
        import torch

        n = math.prod(shape)
        if name == "nu_log":           # |lambda|^2 uniform on [r_min^2, r_max^2], |lambda| < 1
            r2 = (draw(n) * (r_max ** 2 - r_min ** 2) + r_min ** 2).clamp(1e-12, 1 - 1e-7)
            return torch.log(-0.5 * torch.log(r2))
        if name == "gamma_log":        # sqrt(1 - |lambda|^2) of the lambda drawn above
            mod = torch.exp(-torch.exp(drawn["nu_log"]))
            return torch.log(torch.sqrt(1 - mod ** 2))
        if name == "theta_log":
            return torch.log(max_phase * draw(n).clamp_min(1e-12))
        scale = {"b_re": 1 / math.sqrt(2 * m), "b_im": 1 / math.sqrt(2 * m), "b": 1 / math.sqrt(m),
                 "c_re": 1 / math.sqrt(c), "c_im": 1 / math.sqrt(c), "c": 1 / math.sqrt(c),
                 "d": 1 / math.sqrt(m)}[name]
        return normal(draw, n) * scale
    return init


def _lru_pre(w, us):
    return (affine_steps(w["b_re"], None, us), affine_steps(w["b_im"], None, us),
            affine_steps(w["d"], None, us))


def _lru_recur(w, pre, state):
    import torch

    (re, im), (bu_re, bu_im, du) = state, pre
    mod = torch.exp(-torch.exp(w["nu_log"]))[:, :, None]          # |lambda|
    phase = torch.exp(w["theta_log"])[:, :, None]
    lam_re, lam_im = mod * torch.cos(phase), mod * torch.sin(phase)
    gamma = torch.exp(w["gamma_log"])[:, :, None]
    re, im = (lam_re * re - lam_im * im + gamma * bu_re,
              lam_re * im + lam_im * re + gamma * bu_im)
    y = torch.bmm(w["c_re"], re) - torch.bmm(w["c_im"], im) + du
    return y, (re, im)


def all_states(out, state):
    """A :attr:`Cell.read` of every state tensor, stacked: `(K, sum of rows, B)`."""
    import torch

    return torch.cat(state, 1)


def _lru_real_pre(w, us):
    return affine_steps(w["b"], None, us), affine_steps(w["d"], None, us)


def _lru_real_recur(w, pre, state):
    import torch

    (x,), (bu, du) = state, pre
    lam = torch.exp(-torch.exp(w["nu_log"]))[:, :, None]
    x = lam * x + torch.exp(w["gamma_log"])[:, :, None] * bu
    return torch.bmm(w["c"], x) + du, (x,)


_LRU = dict(weights=_lru_weights, pre=_lru_pre, recur=_lru_recur, state_rows=lambda c: (c, c),
            read=all_states, units=lambda c: 2 * c, family=LRU_FAMILY)      # (re, im): 2c
LRU = Cell("lru", init=lru_init(0.0, 1.0, 2 * math.pi), label="LRU", **_LRU)
LRU_RING = Cell("lru_ring", init=lru_init(0.9, 1.0, math.pi / 10), label="LRU (ring 0.9, pi/10)",
                **_LRU)
LRU_REAL = Cell("lru_real", lambda m, c: {"nu_log": (c,), "gamma_log": (c,), "b": (c, m),
                                          "c": (c, c), "d": (c, m)},
                pre=_lru_real_pre, recur=_lru_real_recur, init=lru_init(0.0, 1.0, 0.0),
                label="LRU (real lambda)", family=LRU_FAMILY)


# ---------------------------------------------------------------------------------------------
# The selective state-space model S6 (Gu and Dao, "Mamba", 2023), as mambapy's MambaBlock.ssm
# computes it. Per channel j of the SSM's input v (c channels), a diagonal state of S6_STATE
# numbers: delta = softplus(W_dt (W_x v)[:r] + b_dt), B = (W_x v)[r:r+n], C = (W_x v)[r+n:],
# h_j' = exp(delta_j A_j) h_j + delta_j B v_j, y_j = C . h_j + D_j v_j, A = -exp(A_log).
# Mamba's init: A_log = log(1..n) (S4D-real), D = 1, delta's bias the inverse softplus of
# exp(U(log 0.001, log 0.1)), W_dt U(+-r^-1/2), Linear and Conv1d layers U(+-1/sqrt(fan in));
# dt_rank r = ceil(c / 16). The `_lin` cells start A on the real part of S4D-Lin instead,
# A = -1/2 for every state number (the init Mamba's ablations of A compare with S4D-real):
# every state of a channel then starts with the same decay.
#
# Every input the SSM reads (v, delta's input, B, C) is a function of v. Fed a scalar through a
# projection without a bias, v is proportional to the current input u_t, and so is the output:
# y = u_T f(history), blind to its memory whenever u_T = 0. Both cells below read v through an
# affine map:
# - `mamba`: the block Mamba runs the SSM in (mambapy's MambaBlock with a biased input
#   projection): [x, z] = W_in u + b_in; v = SiLU(causal depthwise conv of x, width
#   MAMBA_CONV, with its bias); y = SSM(v) * SiLU(z). The block's output projection is left to
#   the next layer's input projection or the readout, which read the c channels linearly. The
#   convolution's window (the last MAMBA_CONV - 1 values of x) is state: N = c (n + 3).
# - `s6_bare`: the SSM alone after an affine projection, v = W_in u + b_in: N = c n.
# `mamba_complex` is `mamba` with the complex SSM of Mamba's ablations of A, as the reference
# selective scan of state-spaces/mamba (`selective_scan_ref`) runs it: A = -exp(A_log) + i A_im,
# started on S4D-Lin, A_k = -1/2 + i pi k (k = 0..n-1); B and C complex, each from 2n of x_proj's
# outputs (real and imaginary parts side by side); h_j' = exp(delta_j A) h_j + delta_j B v_j,
# y_j = 2 Re(C . h_j) + D_j v_j. The n complex states are 2n real numbers: N = c (2n + 3).
S6_STATE = 4
"""n: the state numbers per channel of the SSM (Mamba's d_state)"""
MAMBA_CONV = 4
"""the causal convolution's width in a `mamba` layer (Mamba's d_conv)"""


def _dt_rank(c: int) -> int:
    return math.ceil(c / 16)


def _ssm_weights(c: int) -> Shapes:
    r, n = _dt_rank(c), S6_STATE
    return {"w_x": (r + 2 * n, c), "w_dt": (c, r), "b_dt": (c,), "a_log": (c, n), "d": (c,)}


def _s6_weights(m: int, c: int) -> Shapes:
    return {"w_in": (c, m), "b_in": (c,), **_ssm_weights(c)}


def _mamba_weights(m: int, c: int) -> Shapes:
    return {"w_in": (2 * c, m), "b_in": (2 * c,), "w_conv": (c, MAMBA_CONV), "b_conv": (c,),
            **_ssm_weights(c)}


def _mamba_complex_weights(m: int, c: int) -> Shapes:
    """`mamba`'s, with 2n rows of W_x for each of the complex B and C, and A's imaginary part."""
    return {**_mamba_weights(m, c), "w_x": (_dt_rank(c) + 4 * S6_STATE, c),
            "a_im": (c, S6_STATE)}


def s6_init(a_init: str):
    """The selective SSM's init with A started on `a_init`: ``real`` (S4D-real, A = -(1..n),
    Mamba's), ``lin`` (the real part of S4D-Lin, A = -1/2) or ``complex`` (S4D-Lin, A_k = -1/2 +
    i pi k, k = 0..n-1)."""
    def init(name, shape, m, c, draw, drawn):
        import torch

        w_in = drawn.get("w_in")
        if name == "a_log" and a_init in ("lin", "complex"):
            return w_in.new_full((w_in.shape[0], math.prod(shape)), math.log(0.5))
        if name == "a_im":
            a = math.pi * torch.arange(S6_STATE, dtype=w_in.dtype)
            return a.repeat(c).expand(w_in.shape[0], -1).clone()
        return _s6_init(name, shape, m, c, draw, drawn)
    return init


def _s6_init(name, shape, m, c, draw, drawn):
    import torch

    n = math.prod(shape)
    if name == "a_log":                                                    # S4D-real
        a = torch.arange(1, S6_STATE + 1, dtype=drawn["w_in"].dtype).repeat(c)
        return torch.log(a).expand(drawn["w_in"].shape[0], n).clone()
    if name == "d":
        return drawn["w_in"].new_ones(drawn["w_in"].shape[0], n)
    if name == "b_dt":
        lo, hi = math.log(1e-3), math.log(1e-1)
        dt = torch.exp(draw(n) * (hi - lo) + lo).clamp_min(1e-4)
        return dt + torch.log(-torch.expm1(-dt))                       # softplus^-1
    bound = {"w_in": 1 / math.sqrt(m), "b_in": 1 / math.sqrt(m), "w_conv": 1 / math.sqrt(MAMBA_CONV),
             "b_conv": 1 / math.sqrt(MAMBA_CONV), "w_x": 1 / math.sqrt(c),
             "w_dt": _dt_rank(c) ** -0.5}[name]
    return (2 * draw(n) - 1) * bound


def _ssm_inputs(w, v):
    """delta, B, C of the SSM from its input v: `(K, c, B)` -> `(K, c, B)`, `(K, n, B)` x 2
    (one step), or `(K, T, c, B)` -> `(K, T, ...)` (every step at once); n: half of W_x's rows
    after delta's (2 S6_STATE for a complex B and C)."""
    import torch.nn.functional as F

    r = w["w_dt"].shape[-1]
    n = (w["w_x"].shape[-2] - r) // 2
    if v.dim() == 4:
        dbc = affine_steps(w["w_x"], None, v)                            # (K, T, r + 2n, B)
        delta = F.softplus(affine_steps(w["w_dt"], w["b_dt"], dbc[:, :, :r]))
        return delta, dbc[:, :, r:r + n], dbc[:, :, r + n:]
    import torch

    dbc = torch.bmm(w["w_x"], v)                                         # (K, r + 2n, B)
    delta = F.softplus(affine(w["w_dt"], w["b_dt"], dbc[:, :r]))
    return delta, dbc[:, r:r + n], dbc[:, r + n:]


def _ssm_step(w, state, v, delta, b_sel, c_sel):
    """One step of the SSM: state (h,), h `(K, c * n, B)` (channel-major), v and delta
    `(K, c, B)`, B and C `(K, n, B)` -> (y `(K, c, B)`, (h,))."""
    import torch

    (h,) = state
    K, _, B = h.shape
    c, n = v.shape[1], S6_STATE
    a = -torch.exp(w["a_log"])[:, :, :, None]                            # (K, c, n, 1)
    h = h.view(K, c, n, B)
    h = torch.exp(delta[:, :, None] * a) * h + (delta * v)[:, :, None] * b_sel[:, None]
    y = (h * c_sel[:, None]).sum(2) + w["d"][:, :, None] * v
    return y, (h.reshape(K, c * n, B),)


def _ssm_step_complex(w, state, v, delta, b_sel, c_sel):
    """One step of the complex SSM: state (re, im) of h, each `(K, c * n, B)`; B and C
    `(K, 2n, B)`, each number's real and imaginary parts side by side -> (y, (re, im)),
    y = 2 Re(C . h) + D v."""
    import torch

    re, im = state
    K, _, B = re.shape
    c, n = v.shape[1], S6_STATE
    dt = delta[:, :, None]                                               # (K, c, 1, B)
    decay = torch.exp(dt * -torch.exp(w["a_log"])[:, :, :, None])        # |exp(delta A)|
    angle = dt * w["a_im"][:, :, :, None]
    a_re, a_im = decay * torch.cos(angle), decay * torch.sin(angle)
    re, im, dv = re.view(K, c, n, B), im.view(K, c, n, B), (delta * v)[:, :, None]
    b_re, b_im = b_sel[:, None, 0::2], b_sel[:, None, 1::2]
    re, im = a_re * re - a_im * im + dv * b_re, a_re * im + a_im * re + dv * b_im
    y = 2 * (re * c_sel[:, None, 0::2] - im * c_sel[:, None, 1::2]).sum(2) \
        + w["d"][:, :, None] * v
    return y, (re.reshape(K, c * n, B), im.reshape(K, c * n, B))


def _s6_pre(w, us):
    v = affine_steps(w["w_in"], w["b_in"], us)                          # (K, T, c, B)
    return (v, *_ssm_inputs(w, v))


def _s6_recur(w, pre, state):
    return _ssm_step(w, state, *pre)                                    # pre: v, delta, B, C


def causal_conv(win: Tensor, x: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """A causal depthwise convolution of width W (w `(K, c, W)`, b `(K, c)`) at one step: x
    `(K, c, B)` and the window of the W - 1 inputs before it `(K, c (W - 1), B)`, oldest first,
    held in the state -> (its output `(K, c, B)`, the next window). The window starts at zeros,
    so that a sequence that starts late (its earlier steps masked) sees zeros before its first
    input, as a zero-padded convolution does."""
    import torch

    K, c, B = x.shape
    width = w.shape[-1]
    taps = torch.cat([win.view(K, c, width - 1, B), x[:, :, None]], 2)
    return ((taps * w[:, :, :, None]).sum(2) + b[:, :, None],
            taps[:, :, 1:].reshape(K, c * (width - 1), B))


def _mamba_pre(w, us):
    return (affine_steps(w["w_in"], w["b_in"], us),)                    # [x, z]: (K, T, 2c, B)


def _mamba_recur(ssm_step):
    """The block's step around the SSM's (:func:`_ssm_step` or :func:`_ssm_step_complex`),
    whose states come first, the convolution's window (:func:`causal_conv`) last."""
    def recur(w, pre, state):
        import torch.nn.functional as F

        (*h, win), (xz,) = state, pre
        c = xz.shape[1] // 2
        conv, win = causal_conv(win, xz[:, :c], w["w_conv"], w["b_conv"])
        v = F.silu(conv)
        y, h = ssm_step(w, tuple(h), v, *_ssm_inputs(w, v))
        return y * F.silu(xz[:, c:]), (*h, win)
    return recur


_S6 = dict(weights=_s6_weights, pre=_s6_pre, recur=_s6_recur, state_rows=lambda c: (c * S6_STATE,),
           read=lambda out, state: state[0], units=lambda c: c * S6_STATE, family=SSM)
_MAMBA = dict(weights=_mamba_weights, pre=_mamba_pre, recur=_mamba_recur(_ssm_step),
              state_rows=lambda c: (c * S6_STATE, c * (MAMBA_CONV - 1)), read=all_states,
              units=lambda c: c * (S6_STATE + MAMBA_CONV - 1), family=SSM)
S6_BARE = Cell("s6_bare", init=s6_init("real"), label="S6 (bare)", **_S6)
MAMBA = Cell("mamba", init=s6_init("real"), label="Mamba (S6 block)", **_MAMBA)
S6_BARE_LIN = Cell("s6_bare_lin", init=s6_init("lin"), label="S6 (bare, real S4D-Lin)", **_S6)
MAMBA_LIN = Cell("mamba_lin", init=s6_init("lin"), label="Mamba (real S4D-Lin)", **_MAMBA)
MAMBA_COMPLEX = Cell("mamba_complex", _mamba_complex_weights, pre=_mamba_pre,
                     recur=_mamba_recur(_ssm_step_complex), init=s6_init("complex"),
                     state_rows=lambda c: (c * S6_STATE, c * S6_STATE, c * (MAMBA_CONV - 1)),
                     read=all_states, units=lambda c: c * (2 * S6_STATE + MAMBA_CONV - 1),
                     label="Mamba (complex, S4D-Lin)", family=SSM)


# ---------------------------------------------------------------------------------------------
# minGRU and minLSTM in their published block: one layer of mingru-pytorch's minLM stack with
# its convolution enabled, after an affine input projection (m inputs to c channels):
#   x = W_in u + b_in;  x = conv(x) + x;  x = rnn(RMSNorm(x)) + x;  out = FF(RMSNorm(x)) + x
# conv: a causal depthwise convolution of width BLOCK_CONV with its bias, then a 1x1 one (c x c,
# with its bias); rnn: minGRU or minLSTM at expansion 1 (the steps above, projections without
# biases, no output projection); RMSNorm: torch's, with its weight, eps the dtype's; FF:
# Linear(c, BLOCK_FF c), GELU, Linear(BLOCK_FF c, c). The convolution's window (the last
# BLOCK_CONV - 1 values of x) is state, as `mamba`'s: N = 3c (the rnn's c and the window's 2c).
# Init: PyTorch's defaults, U(+-1/sqrt(fan in)) for every Linear and Conv1d weight and bias,
# ones for the RMSNorm weights.
BLOCK_CONV = 3
"""the causal convolution's width in a block layer (minLM's conv_kernel_size)"""
BLOCK_FF = 4
"""the feedforward's expansion in a block layer (minLM's ff_mult)"""


def _block_weights(gates: tuple[str, ...]):
    def weights(m: int, c: int) -> Shapes:
        return {"w_in": (c, m), "b_in": (c,), "w_conv": (c, BLOCK_CONV), "b_conv": (c,),
                "w_mix": (c, c), "b_mix": (c,), "norm_rnn": (c,),
                **{f"w_{g}": (c, c) for g in gates}, "norm_ff": (c,),
                "w_ff1": (BLOCK_FF * c, c), "b_ff1": (BLOCK_FF * c,),
                "w_ff2": (c, BLOCK_FF * c), "b_ff2": (c,)}
    return weights


def _block_init(name, shape, m, c, draw, drawn):
    import torch

    n = math.prod(shape)
    if name.startswith("norm"):
        return torch.ones_like(draw(n))
    fan_in = {"w_in": m, "b_in": m, "w_conv": BLOCK_CONV, "b_conv": BLOCK_CONV,
              "w_ff2": BLOCK_FF * c, "b_ff2": BLOCK_FF * c}.get(name, c)     # any other: c
    return (2 * draw(n) - 1) / math.sqrt(fan_in)


def _rms_norm(x: Tensor, g: Tensor) -> Tensor:
    """torch.nn.RMSNorm over the c rows of x `(K, c, B)`, weight g `(K, c)`, eps the dtype's."""
    import torch

    ms = x.pow(2).mean(1, keepdim=True)                      # over the channels, per k and b
    return x * torch.rsqrt(ms + torch.finfo(x.dtype).eps) * g[:, :, None]


def _block_pre(w, us):
    return (affine_steps(w["w_in"], w["b_in"], us),)                   # x: (K, T, c, B)


def _block_recur(rnn_pre, rnn_recur):
    """The rest of a block's step around the rnn's pre and recur, the convolution's window
    (:func:`causal_conv`) held in the state after the rnn's."""
    def recur(w, pre, state):
        import torch.nn.functional as F

        (h, win), (x,) = state, pre
        conv, win = causal_conv(win, x, w["w_conv"], w["b_conv"])
        x = affine(w["w_mix"], w["b_mix"], conv) + x
        gates = rnn_pre(w, _rms_norm(x, w["norm_rnn"])[:, None])
        y, (h,) = rnn_recur(w, tuple(v[:, 0] for v in gates), (h,))
        x = y + x
        ff = F.gelu(affine(w["w_ff1"], w["b_ff1"], _rms_norm(x, w["norm_ff"])))
        return affine(w["w_ff2"], w["b_ff2"], ff) + x, (h, win)
    return recur


_BLOCK = dict(pre=_block_pre, init=_block_init, state_rows=lambda c: (c, c * (BLOCK_CONV - 1)),
              read=all_states, units=lambda c: c * BLOCK_CONV, family=MIN_GATED)  # h, window: 3c
MINGRU_BLOCK = Cell("mingru_block", _block_weights(("h", "z")),
                    recur=_block_recur(_mingru_pre, _mingru_recur), label="minGRU (block)",
                    **_BLOCK)
MINLSTM_BLOCK = Cell("minlstm_block", _block_weights(("h", "f", "i")),
                     recur=_block_recur(_minlstm_pre, _minlstm_recur), label="minLSTM (block)",
                     **_BLOCK)


# ---------------------------------------------------------------------------------------------
# The LRU in its paper's sequence layer (their Figure 1: Norm, Recurrence, GLU, Skip), as the
# SequenceLayer of minimal-LRU (N. Zucchet's JAX code of the paper's model) runs it without
# dropout, after an affine input projection (m inputs to c channels):
#   u = W_in x + b_in;  y = LRU(LayerNorm(u));  g = GELU(y);
#   out = u + (W_1 g + b_1) * sigmoid(W_2 g + b_2)
# LayerNorm: per step, over the c channels, with its weight and bias (the code's other choice,
# BatchNorm, mixes sequences); GELU: the tanh approximation (flax's gelu); LRU: `lru` on c
# channels, its c complex states (N = 2c), ring, init and D skip (here c x c). Init: torch's
# Linear, U(+-1/sqrt(fan in)), for the projections' weights and biases; ones and zeros for the
# LayerNorm; `lru`'s for the LRU, which reads c inputs.
LRU_BLOCK_EPS = 1e-5
"""the LayerNorm's eps in an `lru_block` layer (torch.nn.LayerNorm's)"""


def _lru_block_weights(m: int, c: int) -> Shapes:
    return {"w_in": (c, m), "b_in": (c,), "norm_w": (c,), "norm_b": (c,), **_lru_weights(c, c),
            "w_glu1": (c, c), "b_glu1": (c,), "w_glu2": (c, c), "b_glu2": (c,)}


def _lru_block_init(name, shape, m, c, draw, drawn):
    import torch

    if name.startswith("norm"):
        return torch.full_like(draw(math.prod(shape)), float(name == "norm_w"))
    if name in ("w_in", "b_in"):
        return _LINEAR_INIT(name, shape, m, c, draw, drawn)
    if "glu" in name:
        return _LINEAR_INIT(name, shape, c, c, draw, drawn)
    return LRU.init(name, shape, c, c, draw, drawn)                     # the LRU reads c channels


def _layer_norm(x: Tensor, g: Tensor, b: Tensor) -> Tensor:
    """torch.nn.LayerNorm over the c rows of x `(K, c, B)`, weight g and bias b `(K, c)`."""
    import torch

    mean = x.mean(1, keepdim=True)                           # over the channels, per k and b
    var = (x - mean).pow(2).mean(1, keepdim=True)
    return (x - mean) * torch.rsqrt(var + LRU_BLOCK_EPS) * g[:, :, None] + b[:, :, None]


def _lru_block_recur(w, pre, state):
    import torch
    import torch.nn.functional as F

    (u,) = pre
    x = _layer_norm(u, w["norm_w"], w["norm_b"])
    y, state = _lru_recur(w, tuple(v[:, 0] for v in _lru_pre(w, x[:, None])), state)
    g = F.gelu(y, approximate="tanh")
    return u + affine(w["w_glu1"], w["b_glu1"], g) * torch.sigmoid(
        affine(w["w_glu2"], w["b_glu2"], g)), state


LRU_BLOCK = Cell("lru_block", _lru_block_weights, pre=_block_pre, recur=_lru_block_recur,
                 init=_lru_block_init, state_rows=lambda c: (c, c), read=all_states,
                 units=lambda c: 2 * c, label="LRU (block)", family=LRU_FAMILY)


CELLS: dict[str, Cell] = {c.name: c for c in (RNN, LSTM, GRU, MINGRU, MINLSTM, MINGRU_BLOCK,
                                                MINLSTM_BLOCK, LRU, LRU_RING, LRU_REAL, LRU_BLOCK,
                                                MAMBA, S6_BARE, MAMBA_LIN, MAMBA_COMPLEX,
                                                S6_BARE_LIN)}
"""Every trained arch by name, in the order lists show them."""
GATES = {n: c.weights(1, 1)["w_ih"][0] for n, c in CELLS.items() if c.fast}
"""Gates of the cells with fast paths (rows of their fused weights per unit: 1, 4, 3)."""
