"""Jaeger's memory capacity of trained networks (and reservoirs), the classical way: on a long
stationary input stream, for any arch.

Jaeger (2001, "Short term memory in echo state networks"; eq. 3 of the paper): drive the
network with an i.i.d. stream u(t), fit one linear readout y_k(t) = w_k . h(t) + b_k per delay k
to recall u(t - k), and sum the squared correlations on held-out steps:

    MC = sum_{k=1}^{k_max} MC_k,   MC_k = cov^2(u(t - k), y_k(t)) / (Var(u(t - k)) Var(y_k(t))).

The state h(t) has already seen u(t), so delay k = 0 (the current input) is left out, as in the
paper's eq. 3 and reservoirpy's ``memory_capacity``; ``k_min=0`` adds it. The task's position p
is delay k = p - 1 (p = 1 is the last element, the current input): the task-based MC of the
analysis, sum_{p=1}^{P} r2_p, lines up with ``k_min=0, k_max=P-1``, and is about the classical
MC plus MC_0 (close to 1 for most networks). Jaeger's bound: for a linear readout of N units,
sum_{k>=0} MC_k <= N (the readouts project orthonormal past inputs onto an N-dimensional span),
with equality for a full-rank linear reservoir; so every MC here is at most N, up to estimation
noise where it comes close (about +-0.2 at N = 20 on the default stream).

Readouts: ridge regression with an unpenalised bias (sklearn's ``Ridge`` convention: `ridge` is
added to the Gram matrix of the centred states, a sum over samples; solved by SVD), fitted on the
first part of the stream after a washout and measured on the rest. Everything runs batched over
K networks, in float64.

The input stream is counter-based like the task's data (``memgrid.task``): a pure function of
the seed, so a trained network and a reservoir with the same seed see the same stream. Its
distribution is uniform on [`low`, `high`]: [0, 1] by default, the task's inputs, which the
trained networks know; reservoirpy's default is [-0.8, 0.8].
"""

from __future__ import annotations

import math

import torch

from .config import default_k_max, default_washout, units
from .models import Params, cells_of, forward, kernel_states, n_layers
from .task import key, uniform

MC_STREAM = 0x27D4EB2F
"""stream id of the memory-capacity input (task.py's TRAIN, EVAL, INIT, LENGTH are the others)"""
LENGTH = 20_000
"""default stream length (steps, washout included)"""
LOW, HIGH = 0.0, 1.0
"""default input distribution: uniform on [LOW, HIGH] (the task's)"""
TEST_FRAC = 0.5
"""share of the steps after the washout that measure MC_k (the rest fit the readouts)"""


def input_stream(seed: torch.Tensor, length: int, low: float = LOW, high: float = HIGH,
                 dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """i.i.d. uniform [low, high] inputs `(K, length)`, a pure function of each seed `(K,)`."""
    k = key(seed, MC_STREAM).reshape(-1, 1)
    t = torch.arange(length, dtype=torch.int64, device=seed.device).reshape(1, -1)
    return low + (high - low) * uniform(k, t).to(dtype)


def squared_correlation(a: torch.Tensor, b: torch.Tensor, dim: int = -1, *,
                        clip: bool = True) -> torch.Tensor:
    """Squared Pearson correlation along `dim`; 0 where either is constant. `clip`: into
    [0, 1] (rounding may take it a little past 1). A trained point's `r2` (MC_p of its delay,
    memgrid.train) is taken unclipped, the MC_k of a stream clipped."""
    a = a - a.mean(dim, keepdim=True)
    b = b - b.mean(dim, keepdim=True)
    cov = (a * b).mean(dim)
    var = (a * a).mean(dim) * (b * b).mean(dim)
    r2 = torch.where(var > 0, cov * cov / var.clamp_min(1e-30), torch.zeros_like(cov))
    return r2.clamp(0.0, 1.0) if clip else r2


def ridge_fit(x: torch.Tensor, y: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched ridge regression with an unpenalised bias, in float64.

    `x` `(K, S, F)` features of S samples, `y` `(K, S, D)` D targets. Returns `w` `(K, F, D)` and
    `b` `(K, 1, D)` minimising |y - x w - b|^2 + ridge |w|^2 (sklearn's ``Ridge``). Solved by the
    SVD of the centred features, not the Gram matrix, whose condition number is the square:
    linear reservoirs near radius 1 have informative directions of tiny variance. Singular
    values below max(S, F) * eps * the largest are dropped (numpy's ``lstsq`` cutoff), so
    `ridge` = 0 is least squares and a dead unit or a rank-deficient reservoir gives the
    minimum-norm solution, not a NaN.
    """
    x, y = x.double(), y.double()
    mx, my = x.mean(1, keepdim=True), y.mean(1, keepdim=True)
    u, s, vh = torch.linalg.svd(x - mx, full_matrices=False)          # (K,S,F) (K,F) (K,F,F)
    cut = max(x.shape[1], x.shape[2]) * torch.finfo(s.dtype).eps * s[:, :1]
    filt = torch.where(s > cut, s / (s * s + ridge), torch.zeros_like(s))
    w = vh.transpose(1, 2) @ (filt.unsqueeze(-1) * (u.transpose(1, 2) @ (y - my)))
    return w, my - mx @ w


def stream_memory_capacity(states: torch.Tensor, inputs: torch.Tensor, k_max: int, *,
                           ridge: float = 1e-6, washout: int | None = None,
                           test_frac: float = TEST_FRAC, k_min: int = 1,
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Jaeger's MC of K networks from their states on a stream.

    `states` `(K, T, N)`: h(t), after the network has read `inputs[:, t]`; `inputs` `(K, T)`.
    Steps t < `washout` (default: config.default_washout) only feed the delays; the remaining steps are
    split, the first `1 - test_frac` fit one readout per delay, the rest measure it.
    Returns `mc` `(K,)` and `mc_k` `(K, k_max - k_min + 1)`, delays k_min..k_max, each in [0, 1];
    NaN for a network whose states are not all finite (a trained network can blow up on a
    stream far longer than the sequences it was trained on), whatever the others'.
    """
    K, T, N = states.shape
    washout = default_washout(k_max) if washout is None else washout
    if washout < k_max:
        raise ValueError(f"washout {washout} < k_max {k_max}: u(t - k) would not exist")
    n_fit = T - washout - round((T - washout) * test_frac)
    if n_fit <= N or n_fit >= T - washout:
        raise ValueError(f"{T} steps leave {n_fit} to fit {N} units after washout {washout}: "
                         "use a longer stream")
    ks = torch.arange(k_min, k_max + 1, device=states.device)
    t = torch.arange(washout, T, device=states.device)
    x = states[:, washout:].double()                                  # (K, T', N)
    bad = ~torch.isfinite(x).all(2).all(1)                            # (K,): no MC to fit
    x = torch.where(bad[:, None, None], torch.zeros_like(x), x)
    y = inputs.double()[:, t[:, None] - ks[None, :]]                  # (K, T', D): u(t - k)
    w, b = ridge_fit(x[:, :n_fit], y[:, :n_fit], ridge)
    pred = x[:, n_fit:] @ w + b                                       # (K, T_test, D)
    mc_k = squared_correlation(pred, y[:, n_fit:], dim=1)             # (K, D)
    mc_k = torch.where(bad[:, None], torch.full_like(mc_k, math.nan), mc_k)
    return mc_k.sum(1), mc_k


def state_chunks(K: int, T: int, N: int, budget_bytes: float = 2**26) -> list[slice]:
    """Member slices whose float64 states `(k, T, N)` stay within a memory budget."""
    size = max(1, int(budget_bytes // (8 * T * max(N, 1))))
    return [slice(i, min(i + size, K)) for i in range(0, K, size)]


def network_states(arch: str, params: Params, u: torch.Tensor, read: str = "all") -> torch.Tensor:
    """Hidden states `(K, T, n)` of K trained networks (``memgrid.models``) on streams `u`
    `(K, T)`, read as one long sequence from a zero state. `read`: ``"all"`` stacks every
    layer's ``Cell.read`` (RNN, LSTM, GRU: h; n = N, the units Jaeger's bound counts),
    ``"last"`` the last layer's only (what the network's output sees). LSTM cell states are
    not read."""
    if read not in ("all", "last"):
        raise ValueError(f"read must be 'all' or 'last', got {read!r}")
    layers = n_layers(params)
    K, T = u.shape
    p0 = next(iter(params.values()))
    x = u.to(p0.dtype).reshape(K, 1, T)
    H = kernel_states(arch, params, x)                      # (K, L, T, c, 1): the C kernel
    if H is not None:
        H = H[..., 0] if read == "all" else H[:, layers - 1:, :, :, 0]
        return H.permute(0, 2, 1, 3).reshape(K, T, -1)      # units of layer 0, then 1, ...
    no_mask = torch.ones(K, 1, 0, dtype=torch.bool, device=u.device)   # every step is real
    out = []
    with torch.no_grad():
        for top in (range(layers) if read == "all" else [layers - 1]):
            # forward() returns its last layer's states: cut the stack after layer `top`
            sub = {n: v for n, v in params.items() if "." in n and int(n.rsplit(".", 1)[1]) <= top}
            _, hs = forward(arch, sub, x, no_mask, return_states=True)
            out.append(torch.stack(hs, 1)[..., 0])                    # T x (K, n, 1) -> (K, T, n)
    return torch.cat(out, 2)


def trained_memory_capacity(arch: str, params: Params, seed: torch.Tensor, *,
                            k_max: int | None = None, length: int = LENGTH, low: float = LOW,
                            high: float = HIGH, ridge: float = 1e-6, washout: int | None = None,
                            test_frac: float = TEST_FRAC, k_min: int = 1, read: str = "all",
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Jaeger's MC of K trained networks (stacked `params`, ``memgrid.models``), each on the
    stream of its `seed` `(K,)`. `k_max` defaults to 2N of the states read (at least 10).
    Returns `mc` `(K,)` and `mc_k` `(K, k_max - k_min + 1)`, float64 on the params' device."""
    p0 = next(iter(params.values()))
    K, c, layers = p0.shape[0], cells_of(arch, params), n_layers(params)
    n = units(arch, layers if read == "all" else 1, c)
    k_max = default_k_max(n) if k_max is None else k_max
    seed = seed.to(p0.device)
    mcs, mcks = [], []
    for sl in state_chunks(K, length, n):
        u = input_stream(seed[sl], length, low, high)
        states = network_states(arch, {k: v[sl] for k, v in params.items()}, u, read)
        mc, mc_k = stream_memory_capacity(states, u, k_max, ridge=ridge, washout=washout,
                                          test_frac=test_frac, k_min=k_min)
        mcs.append(mc)
        mcks.append(mc_k)
    return torch.cat(mcs), torch.cat(mcks)
