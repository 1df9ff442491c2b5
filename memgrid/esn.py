"""Echo state networks (paper, section 2.4): fixed, seeded reservoirs with a ridge readout,
fitted on the random memorization task for a whole pack at once.

A reservoir of N = `cells` units (one layer), a leaky integrator without bias::

    h(t) = (1 - a) h(t - 1) + a tanh(W h(t - 1) + w_in x(t)),   h = 0 before the sequence starts

with a = `leak_rate` (1: no leak). No bias: a zero state then stays exactly zero on the zero
padding of right-aligned sequences (the mask is applied all the same), and Jaeger's linear
theory has none; the task's inputs, uniform on [0, 1], have mean 0.5, which moves the operating
point as a bias would. ``linear=True`` replaces tanh by the identity (the theory's linear
reservoir; a function argument, not a grid setting).

Weights are a pure function of the point's seed (``memgrid.task``'s counter-based hash, stream
:data:`RESERVOIR`), drawn and scaled in float64 on the CPU whatever the device:

- W: entries uniform on [-1, 1], each kept with probability `connectivity`, then scaled to the
  spectral radius `spectral_radius` (largest |eigenvalue|, per reservoir). A draw whose radius is
  below :data:`RHO_MIN` is degenerate: a nilpotent W (no loop among its nonzero weights, likely
  for a few units at low connectivity: at N = 10 and 10 %, one seed in five) has radius 0 and
  cannot be scaled to any radius. It is drawn again from the same seed's stream with the next
  draw counter, until one is not: the reservoir stays a pure function of seed and settings, and
  a seed whose first draw was fine gets the same W as before redraws existed.
- w_in: dense, uniform on [-input_scaling, input_scaling].

The readout of a point (position p) is y = w . h(T) + b on the final state, fitted by ridge
regression (``memgrid.stream_mc.ridge_fit``: `ridge` on the centred Gram matrix, bias not
penalised) on :data:`TRAIN_SIZE` sequences of the point's TRAIN stream, against x[T - p]; it is
evaluated on the point's fixed evaluation set like a trained point (loss = MAE, r2 = squared
correlation). Points of a pack with the same seed and length range share sequences and reservoir:
the reservoir runs once for them and one multi-target ridge fit serves every position. All
distinct reservoirs of a pack run as one batched computation (stacked ``(K, N, N)``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from .config import Point, default_k_max
from .stream_mc import (HIGH, LENGTH, LOW, TEST_FRAC, input_stream, ridge_fit, squared_correlation,
                        state_chunks, stream_memory_capacity)
from .rows import curve_rows, point_row
from .task import TRAIN, TaskSpec, key, make_batch, make_eval_set, uniform

RESERVOIR = 0x5BD1E995
"""stream id of the reservoir weights (task.py holds the data streams, models.py INIT)"""
TRAIN_SIZE = 8192
"""training sequences per readout fit: batch `step 0` of size TRAIN_SIZE of the TRAIN stream"""
RHO_MIN = 1e-6
"""a drawn W with a smaller spectral radius is degenerate and drawn again (scaling it would
multiply its weights by more than spectral_radius / RHO_MIN)"""
MAX_DRAWS = 1000
"""draws of W per reservoir before giving up; config refuses settings that would need more than
a few (``memgrid.config.esn_loop_chance``)"""


@dataclass
class Reservoirs:
    """K reservoirs, stacked. `w` `(K, N, N)`, `w_in` `(K, N)`, `leak_rate` `(K,)`."""

    w: torch.Tensor
    w_in: torch.Tensor
    leak_rate: torch.Tensor

    @property
    def units(self) -> int:
        return self.w.shape[-1]

    def select(self, idx: torch.Tensor | slice) -> Reservoirs:
        return Reservoirs(self.w[idx], self.w_in[idx], self.leak_rate[idx])

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> Reservoirs:
        return Reservoirs(self.w.to(device, dtype), self.w_in.to(device, dtype),
                          self.leak_rate.to(device, dtype))

    @classmethod
    def of(cls, points: list[Point], device: str | torch.device = "cpu") -> Reservoirs:
        """The reservoirs of `points` (arch `esn`, equal `cells`), one per point."""
        if {p.cells for p in points} != {points[0].cells}:
            raise ValueError("reservoirs stacked together need the same number of units")
        col = lambda name: torch.tensor([getattr(p, name) for p in points], dtype=torch.float64)  # noqa: E731
        res = init_reservoirs(torch.tensor([p.seed for p in points]), points[0].cells,
                              spectral_radius=col("spectral_radius"),
                              input_scaling=col("input_scaling"),
                              connectivity=col("connectivity"), leak_rate=col("leak_rate"))
        return res.to(device)


def init_reservoirs(seed: torch.Tensor, units: int, *, spectral_radius=0.9, input_scaling=1.0,
                    connectivity=0.1, leak_rate=1.0) -> Reservoirs:
    """K reservoirs of `units` units, float64 on the CPU, reservoir k a pure function of
    `seed[k]` and its settings (floats, or tensors `(K,)`)."""
    seed = seed.to(torch.int64).cpu()
    K, N = seed.shape[0], units
    f64 = lambda v: torch.as_tensor(v, dtype=torch.float64).expand(K)  # noqa: E731
    rho_target, scale_in, conn, leak = map(f64, (spectral_radius, input_scaling, connectivity, leak_rate))
    k = key(seed, RESERVOIR).reshape(K, 1)
    raw = _draw_w(k, N, conn, 0)
    rho = torch.linalg.eigvals(raw).abs().amax(-1)                   # (K,)
    for n in range(1, MAX_DRAWS + 1):            # degenerate draws: the next draw counter
        bad = (rho < RHO_MIN).nonzero().squeeze(1)
        if len(bad) == 0:
            break
        if n == MAX_DRAWS:
            raise ValueError(f"{MAX_DRAWS} draws of a {N}-unit reservoir at connectivity "
                             f"{conn[bad[0]].item():g} (seed {seed[bad[0]].item()}) all had "
                             "spectral radius 0: raise connectivity")
        raw[bad] = _draw_w(k[bad], N, conn[bad], n)
        rho[bad] = torch.linalg.eigvals(raw[bad]).abs().amax(-1)
    idx_in = torch.arange(N).reshape(1, -1)
    w_in = (2 * uniform(k, torch.full((1, 1), 2), idx_in).double() - 1) * scale_in[:, None]
    return Reservoirs(raw * (rho_target / rho)[:, None, None], w_in, leak.clone())


def _draw_w(k: torch.Tensor, N: int, conn: torch.Tensor, n: int) -> torch.Tensor:
    """Draw number `n` of W, `(K, N, N)` float64, for keys `k` `(K, 1)`: entries uniform on
    [-1, 1], each kept with probability `conn` `(K,)`. Draw 0 uses the counters (tensor id,
    entry), draw n > 0 also n: the first draw is the one memgrid has always made."""
    idx = torch.arange(N * N, dtype=torch.int64).reshape(1, -1)
    extra = () if n == 0 else (torch.full((1, 1), n),)
    draw = lambda tensor_id: uniform(k, torch.full((1, 1), tensor_id), idx, *extra).double()  # noqa: E731
    raw = (2 * draw(0) - 1) * (draw(1) < conn[:, None])             # (K, N*N): value, kept?
    return raw.reshape(-1, N, N)


def _stepper(res: Reservoirs, linear: bool):
    """The update h(t - 1), x(t) -> h(t) for `h` `(K, N, B)`, `x_t` `(K, 1, B)`."""
    w_in = res.w_in[:, :, None]
    a = None if bool((res.leak_rate == 1).all()) else res.leak_rate[:, None, None]

    def step(h: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        pre = torch.baddbmm(w_in * x_t, res.w, h)
        new = pre if linear else torch.tanh(pre)
        return new if a is None else h + a * (new - h)
    return step


def run_reservoirs(res: Reservoirs, x: torch.Tensor, mask: torch.Tensor | None = None, *,
                   linear: bool = False) -> torch.Tensor:
    """Final states `(K, N, B)` for right-aligned inputs `x` `(K, B, T)`, in the reservoirs'
    dtype. `mask` `(K, B, P)` (``memgrid.task.Batch``): False before a sequence starts, where
    its state stays 0. (Right alignment puts every False step before the start, while the state
    is still 0, so masking is a product.)"""
    K, B, T = x.shape
    x = x.to(res.w.dtype)
    h = x.new_zeros(K, res.units, B)
    keep = () if mask is None else mask.to(x.dtype).unsqueeze(1).unbind(3)   # P x (K, 1, B)
    step = _stepper(res, linear)
    for t in range(T):
        h = step(h, x[:, None, :, t])
        if t < len(keep):
            h = h * keep[t]
    return h


def reservoir_states(res: Reservoirs, u: torch.Tensor, *, linear: bool = False) -> torch.Tensor:
    """States `(K, T, N)` along one long input stream `u` `(K, T)` from a zero state."""
    u = u.to(res.w.dtype)
    h = u.new_zeros(u.shape[0], res.units, 1)
    out = []
    step = _stepper(res, linear)
    for t in range(u.shape[1]):
        h = step(h, u[:, None, t:t + 1])
        out.append(h[..., 0])
    return torch.stack(out, 1)


def reservoir_memory_capacity(res: Reservoirs, seed: torch.Tensor, *, k_max: int | None = None,
                              length: int = LENGTH, low: float = LOW, high: float = HIGH,
                              ridge: float = 1e-6, washout: int | None = None,
                              test_frac: float = TEST_FRAC, k_min: int = 1, linear: bool = False,
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Jaeger's MC of K reservoirs on the streams of `seed` `(K,)` (``memgrid.stream_mc``).
    `k_max` defaults to 2N (at least 10). Returns `mc` `(K,)`, `mc_k` `(K, k_max - k_min + 1)`."""
    K, N = res.w.shape[0], res.units
    k_max = default_k_max(N) if k_max is None else k_max
    seed = seed.to(res.w.device)
    mcs, mcks = [], []
    for sl in state_chunks(K, length, N):
        u = input_stream(seed[sl], length, low, high, dtype=res.w.dtype)
        states = reservoir_states(res.select(sl), u, linear=linear)
        mc, mc_k = stream_memory_capacity(states, u, k_max, ridge=ridge, washout=washout,
                                          test_frac=test_frac, k_min=k_min)
        mcs.append(mc)
        mcks.append(mc_k)
    return torch.cat(mcs), torch.cat(mcks)


# ---------------------------------------------------------------------------------------------
# Fitting a pack on the task.


def fit_task(points: list[Point], *, device: str | torch.device = "cpu",
             train_size: int = TRAIN_SIZE, linear: bool = False) -> dict[str, torch.Tensor]:
    """Fit the readouts of a pack of ESN points. Returns, per point `(K,)`: `loss` (evaluation
    MAE), `r2` (squared correlation on the evaluation set), `train_loss` (MAE on the fit's own
    sequences), float64 on `device`."""
    if not points:
        raise ValueError("a pack needs at least one point")
    if len({p.pack_key for p in points}) > 1:
        raise ValueError("points of one pack must share everything but config.PACK_FREE")
    p0 = points[0]
    if p0.arch != "esn" or p0.layers != 1:
        raise ValueError(f"fit_task fits esn points with one layer, got {p0.arch} l={p0.layers}")
    dev = torch.device(device)
    N, K = p0.cells, len(points)
    # a group: points with the same sequences and reservoir (seed, length range); sorted by
    # length so that a chunk of groups pads little
    keys = sorted({(p.q_hi, p.q_lo, p.seed) for p in points})
    group_of = {k: i for i, k in enumerate(keys)}
    gi = torch.tensor([group_of[p.q_hi, p.q_lo, p.seed] for p in points], device=dev)
    position = torch.tensor([p.position for p in points], device=dev)
    firsts = [next(p for p in points if (p.q_hi, p.q_lo, p.seed) == k) for k in keys]
    gspec = TaskSpec.of(firsts, dev)
    res_all = Reservoirs.of(firsts, dev)
    loss, r2, train_loss = (torch.empty(K, dtype=torch.float64, device=dev) for _ in range(3))
    # chunks of groups: the fit's float64 tensors stay within ~0.5 GB
    chunk = max(1, int(2**29 // (8 * 4 * max(train_size, p0.eval_size) * (N + gspec.T))))
    for lo in range(0, len(keys), chunk):
        idx = torch.arange(lo, min(lo + chunk, len(keys)), device=dev)
        sub = gspec.select(idx)
        # float32 runs (the task's inputs have 24 bits; 2-3x faster), float64 fits
        res = res_all.select(idx).to(dev, torch.float32)
        tr = make_batch(sub, TRAIN, 0, train_size)          # padded to this chunk's longest q
        h = run_reservoirs(res, tr.x, tr.mask, linear=linear).transpose(1, 2).double()  # (G, B, N)
        # one readout per target step, every position at once: targets (G, B, T)
        w, b = ridge_fit(h, tr.x, p0.ridge)
        ev = make_eval_set(sub, p0.eval_size)
        he = run_reservoirs(res, ev.x, ev.mask, linear=linear).transpose(1, 2).double()
        members = ((gi >= lo) & (gi < lo + len(idx))).nonzero().squeeze(1)
        g, c = gi[members] - lo, sub.T - position[members]           # group, target step
        pred_tr, pred_ev = (h @ w + b)[g, :, c], (he @ w + b)[g, :, c]   # (M, B)
        y_tr, y_ev = tr.x[g, :, c].double(), ev.x[g, :, c].double()
        train_loss[members] = (pred_tr - y_tr).abs().mean(1)
        loss[members] = (pred_ev - y_ev).abs().mean(1)
        r2[members] = squared_correlation(pred_ev, y_ev, dim=1)
    return {"loss": loss, "r2": r2, "train_loss": train_loss}


def fit_esn_pack(points: list[Point], *, device: str | torch.device = "cpu", grid_name: str = "",
                 pack_id: str = "", train_size: int = TRAIN_SIZE, linear: bool = False,
                 mc: bool = True) -> tuple[list[dict], list[dict]]:
    """Fit a pack of ESN points; their points rows (``memgrid.results.schema.POINT_SCHEMA``) and curve
    rows (one per point, epoch 0: train_loss = MAE on the fit's sequences, eval_loss = loss).

    Stop reason `solved` where the evaluation MAE is below `solved_loss` (as for a trained
    point), else `fitted`; `diverged` where it is not finite; epochs 0. `mc`: fill `mc_stream`
    with each reservoir's Jaeger MC (delays 1..2N on a stream of the point's `mc_length` uniform
    inputs in [mc_low, mc_high]), one value per seed.
    """
    t0 = time.perf_counter()
    fit = fit_task(points, device=device, train_size=train_size, linear=linear)
    mc_of = [None] * len(points)
    p0 = points[0]
    if mc and p0.mc_length > 0:
        seeds = sorted({p.seed for p in points})
        firsts = [next(p for p in points if p.seed == s) for s in seeds]
        res = Reservoirs.of(firsts, device)
        mcs, _ = reservoir_memory_capacity(res, torch.tensor(seeds), ridge=p0.ridge, linear=linear,
                                           length=p0.mc_length, low=p0.mc_low, high=p0.mc_high)
        by_seed = {s: (v if math.isfinite(v) else None) for s, v in zip(seeds, mcs.tolist())}
        mc_of = [by_seed[p.seed] for p in points]
    loss, r2, train = (fit[k].cpu().tolist() for k in ("loss", "r2", "train_loss"))
    wall = time.perf_counter() - t0
    rows, curves = [], []
    for i, p in enumerate(points):
        ok = math.isfinite(loss[i])
        reason = "diverged" if not ok else "solved" if loss[i] < p.solved_loss else "fitted"
        rows.append(point_row(p, grid_name, epochs=0, stop_reason=reason, loss=loss[i],
                              best_loss=loss[i], r2=r2[i], mc_stream=mc_of[i], wall_s=wall,
                              pack_id=pack_id, device=str(torch.device(device))))
        curves += curve_rows(p.point_id, [(0, train[i], loss[i])])
    return rows, curves
