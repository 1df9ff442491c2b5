"""Training a pack: SGD with momentum (or Adam), at a constant or cosine-decayed learning rate,
on K independent networks at once, per-point early stopping.

Nothing here knows about Ray: :class:`PackTrainer` is driven by the Tune trainable in
``memgrid.run.trial``, by the benchmark, and by the tests alike.

A member that stops (solved, plateau, diverged, max_epochs) is taken out of the stacked tensors
at the evaluation where it stopped: frozen, and no longer costing compute. The members left
keep their own weights, momentum and data stream, so taking one out changes nobody else
(pack invariance).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field

import torch

from . import fast
from .config import Point
from .models import Params, forward, init_params
from .rows import curve_rows, point_row, stored_rows
from .stopping import stop_check
from .stream_mc import squared_correlation
from .task import TRAIN, TaskSpec, make_batch, make_eval_set
from .config import LRTuning
from .lr_tuning import rank

ADAM_BETA2, ADAM_EPS = 0.999, 1e-8
"""Adam's second-moment decay and epsilon (Kingma and Ba's, torch.optim.Adam's defaults); its
beta1 is the point's `momentum`."""
FUSED_STEP = True
"""On the CPU, train with the C kernel's whole step (:meth:`PackTrainer._kernel_step`); False:
the C kernel's forward and backward inside torch autograd (the tests compare the two)."""


def _mae(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The training loss: mean absolute error per member, `(K, B)` -> `(K,)`."""
    return (y - target).abs().mean(1)


@dataclass
class Member:
    """Book-keeping of one point inside a pack (host side)."""

    point: Point
    best: float = math.inf
    best_epoch: int = 0
    curve: list[tuple[int, float, float]] = field(default_factory=list)
    """(epoch, train_loss, eval_loss)"""


def state_mismatch(state: dict, pack_id: str, point_ids: list[str]) -> str | None:
    """Why a saved trainer state (:meth:`PackTrainer.state_dict`) is not that of pack `pack_id`
    with points `point_ids` (in pack order), or None where it is: it carries other ids, or
    none."""
    if not isinstance(state, dict) or "pack_id" not in state or "point_ids" not in state:
        return "the state carries no pack and point ids"
    if state["pack_id"] != pack_id:
        return f"the state is pack {state['pack_id']}'s"
    if list(state["point_ids"]) != list(point_ids):
        return "the state's points are not this pack's"
    return None


class PackTrainer:
    """Trains the points of one pack (same arch, l, c, task, batch, epochs) together.

    `run(max_seconds)` advances to the next evaluation(s); `finished` collects the rows of
    stopped points until `pop_finished()` hands them to the writer. `seconds` says where this
    attempt's wall time went: `start` (weights, evaluation set, the untrained loss), `train`
    (the steps), `evaluate` (evaluations, stop rules, taking stopped members out) and `mc`
    (rows and the stream MC of finished points).
    """

    def __init__(self, points: list[Point], *, device: str | torch.device = "cpu",
                 grid_name: str = "", pack_id: str = "", dtype: torch.dtype = torch.float32,
                 halving: LRTuning | None = None, lr_source: str = "grid"):
        if not points:
            raise ValueError("a pack needs at least one point")
        keys = {p.pack_key for p in points}
        if len(keys) > 1:
            raise ValueError("points of one pack must share everything but config.PACK_FREE")
        self.device = torch.device(device)
        self.grid_name, self.pack_id = grid_name, pack_id
        p0 = points[0]
        self.arch, self.layers, self.cells, self.readout = p0.arch, p0.layers, p0.cells, p0.readout
        self.cfg = p0
        self.lr_source = lr_source                      # recorded in every row (`lr_source`)
        self.kernel = fast.path_name(self.arch, self.device, dtype)   # and the code path
        self.kernel_module = fast.kernel_of(self.arch)   # the C kernel's module, or None
        self.halving = halving                          # successive halving over lr (tuning)
        self.rungs = set(halving.rung_epochs(p0.max_epochs, p0.eval_every)) if halving else set()
        self.eliminated: set[float] = set()             # learning rates halving stopped
        self.final_loss: dict[int, float] = {}          # member -> its last loss, once stopped
        self.members = [Member(p) for p in points]
        self.active = list(range(len(points)))          # member index of each stacked row
        dev = self.device
        self.spec = TaskSpec.of(points, dev)
        self.T = self.spec.T
        self.params: Params = {k: v.to(dtype) for k, v in init_params(
            self.arch, self.layers, self.cells, self.readout, self.spec.seed).items()}
        self.bufs: Params = {k: torch.zeros_like(v) for k, v in self.params.items()}
        self.adam = p0.optimizer == "adam"
        self.cosine = p0.lr_schedule == "cosine"
        self.budget = p0.max_epochs * p0.steps_per_epoch     # the schedule's T (training steps)
        # Adam's second moments (its first are `bufs`); nothing for SGD
        self.sq: Params = {k: torch.zeros_like(v) for k, v in self.params.items()} if self.adam else {}
        self.lr = torch.tensor([p.lr for p in points], dtype=dtype, device=dev)
        self.mom = torch.tensor([p.momentum for p in points], dtype=dtype, device=dev)
        self.eval_set = make_eval_set(self.spec, p0.eval_size, self.T)
        self._full = (self.spec, self.lr, self.mom, self.eval_set)   # to restore any subset
        self.epoch = 0
        self.train_sum = torch.zeros(len(points), dtype=dtype, device=dev)
        self.train_steps = 0
        self.finished: list[tuple[dict, list[dict], Params]] = []   # row, curve, weights
        self._ws: torch.Tensor | None = None                 # the C kernel step's workspace
        self.started = time.perf_counter()
        self.wall_before = 0.0                           # wall seconds of earlier attempts
        self.seconds: Counter = Counter()                # this attempt's wall time by phase
        self._evaluate_and_stop()                        # epoch 0: the untrained loss
        self.seconds["start"] = time.perf_counter() - self.started

    # -- the step -----------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return not self.active

    def _step(self, step: int) -> None:
        batch = make_batch(self.spec, TRAIN, step, self.cfg.batch_size, self.T)
        loss = self._kernel_step(batch, step + 1)
        if loss is None:
            loss = self._autograd_step(batch, step + 1)
        self.train_sum += loss
        self.train_steps += 1

    def _autograd_step(self, batch, t: int) -> torch.Tensor:
        """forward (C kernel or PyTorch path), autograd, the update in place (`t`: the step's
        number from 1, for Adam's bias correction); the loss `(K,)`."""
        params = list(self.params.values())
        if not params[0].requires_grad:    # fresh tensors after a compaction or a restore
            for p in params:
                p.requires_grad_(True)
        y = forward(self.arch, self.params, batch.x, batch.mask, self.cfg.tbptt)
        loss = _mae(y, batch.y)
        grads = torch.autograd.grad(loss.sum(), params)
        with torch.no_grad():
            if self.adam:
                self._adam(params, grads, t)
            else:                          # in place, all tensors at once: buf = mom*buf + g;
                bufs = list(self.bufs.values())  # p -= lr*buf (per-member mom, lr, broadcast)
                mom, lr = self._bcast(self.mom), self._bcast(self._lr_at(t))
                torch._foreach_mul_(bufs, mom)
                torch._foreach_add_(bufs, grads)
                torch._foreach_sub_(params, torch._foreach_mul(bufs, lr))
        return loss.detach()

    def _lr_at(self, t: int) -> torch.Tensor:
        """The members' learning rates at step `t` (from 1): `lr`, or under `cosine`
        lr * (1 + cos(pi (t - 1) / T)) / 2 over the budget of T steps, one rounding."""
        if not self.cosine:
            return self.lr
        f = (1 + math.cos(math.pi * (t - 1) / self.budget)) / 2
        return (self.lr.double() * f).to(self.lr.dtype)

    def _adam_scalars(self, t: int) -> list[float]:
        """Adam's numbers shared by the members at step `t` (from 1), rounded to the params'
        dtype: b2, 1 - b2, eps, sqrt(1 - b2^t)."""
        return torch.tensor([ADAM_BETA2, 1 - ADAM_BETA2, ADAM_EPS, math.sqrt(1 - ADAM_BETA2 ** t)],
                            dtype=self.mom.dtype).tolist()

    def _adam_rates(self, t: int, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per member, on its device: 1 - b1 and lr / (1 - b1^t) (b1: `momentum`; lr: the
        step's, :meth:`_lr_at`)."""
        b1 = self.mom.double()
        return (1 - b1).to(self.mom.dtype), (lr.double() / (1 - b1 ** t)).to(self.lr.dtype)

    def _adam_coefficients(self, t: int, lr: torch.Tensor) -> torch.Tensor:
        """What the C kernel's step takes: :meth:`_adam_scalars`, then per member the two
        :meth:`_adam_rates`."""
        w1, step = self._adam_rates(t, lr)
        return torch.cat([torch.tensor(self._adam_scalars(t), dtype=w1.dtype),
                          torch.stack([w1, step], 1).flatten()])

    def _adam(self, params: list[torch.Tensor], grads, t: int) -> None:
        """Adam (torch.optim.Adam's, to rounding) with a per-member beta1 (`momentum`) and lr:
        m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
        p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps); every product and sum
        rounded on its own, as the C kernel's step computes it."""
        m, v = list(self.bufs.values()), list(self.sq.values())
        b2, ob2, eps, c2 = self._adam_scalars(t)
        w1, step = (self._bcast(r) for r in self._adam_rates(t, self._lr_at(t)))
        torch._foreach_mul_(m, self._bcast(self.mom))
        torch._foreach_add_(m, torch._foreach_mul(list(grads), w1))
        gg = torch._foreach_mul(list(grads), list(grads))
        torch._foreach_mul_(gg, ob2)
        torch._foreach_mul_(v, b2)
        torch._foreach_add_(v, gg)
        # torch's float32 sqrt is not correctly rounded (1 in 5 differ by an ulp); through
        # float64 it is, as the C kernel's sqrtf
        denom = torch._foreach_div([r.to(x.dtype) for r, x in zip(
            torch._foreach_sqrt([x.double() for x in v]), v)], c2)
        torch._foreach_add_(denom, eps)
        torch._foreach_sub_(params, torch._foreach_mul(torch._foreach_div(m, denom), step))

    def _kernel_step(self, batch, t: int) -> torch.Tensor | None:
        """The whole step in one call of the C kernel (memgrid.fast.kernels; minGRU, minLSTM and
        the LRU: memgrid.fast.diagonal), where it can run: :meth:`_autograd_step`'s numbers to float
        rounding (for RNN, LSTM and GRU with the `sum` readout, bitwise). The loss `(K,)`, or
        None where it cannot run."""
        params, bufs = list(self.params.values()), list(self.bufs.values())
        sqs = list(self.sq.values())
        kernels = self.kernel_module if FUSED_STEP else None
        lib = kernels.usable(self.arch, *params, *bufs, *sqs) if kernels else None
        if lib is None or not all(v.is_contiguous() for v in params + bufs + sqs):
            return None
        dt = params[0].dtype
        x = batch.x.permute(2, 0, 1).to(dt).contiguous()          # (T, K, B): the task's memory
        mask = batch.mask.permute(2, 0, 1).contiguous()
        T, _, B = x.shape
        n = kernels.train_scratch(lib, self.arch, self.layers, T, B, self.cells)
        if self._ws is None or self._ws.numel() < n:
            self._ws = torch.empty(n, dtype=dt)
        lr = self._lr_at(t)
        with torch.no_grad():
            y = kernels.train_step(lib, self.arch, self.cfg.tbptt, params, bufs, lr, self.mom, x,
                                   mask, batch.y.to(dt).contiguous(), self._ws, sqs,
                                   self._adam_coefficients(t, lr) if self.adam else None)
            return _mae(y, batch.y)

    def _bcast(self, v: torch.Tensor) -> list[torch.Tensor]:
        """Per-member `(K,)` values viewed to broadcast against each parameter."""
        return [v.view((-1,) + (1,) * (p.dim() - 1)) for p in self.params.values()]

    def run_epoch(self) -> None:
        spe = self.cfg.steps_per_epoch
        t0 = time.perf_counter()
        for i in range(spe):
            self._step(self.epoch * spe + i)       # the data stream's counter: same in any pack
        self.epoch += 1
        t1 = time.perf_counter()
        self.seconds["train"] += t1 - t0
        if self.epoch % self.cfg.eval_every == 0 or self.epoch >= self.cfg.max_epochs:
            self._evaluate_and_stop()
            self.seconds["evaluate"] += time.perf_counter() - t1

    def run(self, max_seconds: float = math.inf) -> None:
        """Train until every member stopped, or until the first evaluation after `max_seconds`
        (so that a checkpoint taken then holds no half-accumulated training loss)."""
        t0 = time.perf_counter()
        while self.active:
            self.run_epoch()
            if self.train_steps == 0 and time.perf_counter() - t0 >= max_seconds:
                break

    # -- evaluation and stopping ---------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluation MAE and r2 per stacked member, `(K,)` each."""
        ev = self.eval_set
        y = forward(self.arch, {k: v.detach() for k, v in self.params.items()}, ev.x, ev.mask)
        return (y - ev.y).abs().mean(1), squared_correlation(y, ev.y, dim=1, clip=False)

    def _evaluate_and_stop(self) -> None:
        loss_t, r2_t = self.evaluate()
        n = max(self.train_steps, 1)
        train_t = self.train_sum / n if self.train_steps else loss_t
        # one host sync per evaluation
        loss, r2, train = (t.tolist() for t in (loss_t.float().cpu(), r2_t.float().cpu(), train_t.float().cpu()))
        self.train_sum.zero_()
        self.train_steps = 0
        keep = []
        for row, m_idx in enumerate(self.active):
            m = self.members[m_idx]
            m.curve.append((self.epoch, train[row], loss[row]))
            # the member's own point: stop settings may differ inside a pack (config.PACK_FREE)
            reason, m.best, m.best_epoch = stop_check(m.point, self.epoch, loss[row], train[row],
                                                      m.best, m.best_epoch)
            if reason is None:
                keep.append(row)
            else:
                self._finish(m, row, reason, loss[row], r2[row])
        if self.epoch in self.rungs:
            keep = self._halve(keep, loss, r2)
        if len(keep) < len(self.active):
            self._compact(keep)

    def _halve(self, keep: list[int], loss: list[float], r2: list[float]) -> list[int]:
        """Successive halving over the pack's learning rates: rank them on every member's
        latest evaluation (stopped members count with their final one), keep the best
        1/eta, and stop the active members of the others with reason `eliminated`."""
        latest = dict(self.final_loss)
        latest.update({m_idx: loss[row] for row, m_idx in enumerate(self.active)})
        # members dropped by a retried trial (stored after its checkpoint) have no loss here
        ranked = rank([(m.point.lr, m.point.position, latest[i]) for i, m in
                       enumerate(self.members) if m.point.lr not in self.eliminated
                       and i in latest])
        go_on = set(ranked[:math.ceil(len(ranked) / self.halving.eta)])
        self.eliminated |= set(ranked) - go_on
        out = []
        for row in keep:
            m = self.members[self.active[row]]
            if m.point.lr in go_on:
                out.append(row)
            else:
                self._finish(m, row, "eliminated", loss[row], r2[row])
        return out

    def _finish(self, m: Member, row_idx: int, reason: str, loss: float, r2: float) -> None:
        self.final_loss[self.active[row_idx]] = loss
        row = point_row(m.point, self.grid_name, epochs=self.epoch, stop_reason=reason, loss=loss,
                        best_loss=m.best if math.isfinite(m.best) else loss, r2=r2,
                        wall_s=self.wall_before + time.perf_counter() - self.started,
                        pack_id=self.pack_id, device=str(self.device), lr_source=self.lr_source,
                        kernel=self.kernel)
        curve = curve_rows(m.point.point_id, m.curve)
        # the weights wait for pop_finished, which measures their stream MC in one batch
        weights = {k: v[row_idx].detach().clone() for k, v in self.params.items()}
        self.finished.append((row, curve, weights))

    def _compact(self, keep: list[int]) -> None:
        """Keep only stacked rows `keep`: frozen members stop costing compute."""
        idx = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.active = [self.active[i] for i in keep]
        self.params = {k: v.detach().index_select(0, idx) for k, v in self.params.items()}
        self.bufs = {k: v.index_select(0, idx) for k, v in self.bufs.items()}
        self.sq = {k: v.index_select(0, idx) for k, v in self.sq.items()}
        self.lr, self.mom = self.lr[idx], self.mom[idx]
        self.train_sum = self.train_sum[idx]
        self.spec = self.spec.select(idx)
        ev = self.eval_set
        self.eval_set = type(ev)(ev.x[idx], ev.mask[idx], ev.y[idx], ev.length[idx])

    def drop(self, point_ids: set[str]) -> None:
        """Forget members whose results are already stored (a retried trial)."""
        keep = [r for r, m in enumerate(self.active) if self.members[m].point.point_id not in point_ids]
        if len(keep) < len(self.active):
            self._compact(keep)

    def pop_finished(self) -> tuple[list[dict], list[dict]]:
        """Rows and curve rows of the points finished since the last call, with Jaeger's MC of
        each network on a stationary stream (`mc_stream`), measured for each alone
        (:func:`memgrid.rows.stored_rows`)."""
        t0 = time.perf_counter()
        done, self.finished = self.finished, []
        rows, curves = stored_rows(self.cfg, done, self.device)
        self.seconds["mc"] += time.perf_counter() - t0
        return rows, curves

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything to continue exactly: tensors and plain numbers only (weights_only loads)."""
        return {
            "pack_id": self.pack_id,        # whose state it is (state_mismatch)
            "point_ids": [m.point.point_id for m in self.members],
            "epoch": self.epoch,
            "active": list(self.active),
            # copies: training updates the live tensors in place
            "params": {k: v.detach().to("cpu", copy=True) for k, v in self.params.items()},
            "bufs": {k: v.to("cpu", copy=True) for k, v in self.bufs.items()},
            "sq": {k: v.to("cpu", copy=True) for k, v in self.sq.items()},
            "best": [self.members[m].best for m in self.active],
            "best_epoch": [self.members[m].best_epoch for m in self.active],
            "curves": [[list(c) for c in self.members[m].curve] for m in self.active],
            "wall_s": self.wall_before + time.perf_counter() - self.started,
            "eliminated": sorted(self.eliminated),
            "final_loss": [[i, v] for i, v in sorted(self.final_loss.items())],
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()` (taken at an evaluation, with nothing unflushed).
        ValueError, before anything changes, for a state that is not of this pack (other
        parameters or shapes, other members, another pack's or points' ids): the C kernel
        trusts the shapes it is given, and a pack of the same shapes would train on."""
        lacking = {"epoch", "active", "params", "bufs", "best", "best_epoch", "curves",
                   "wall_s"} - set(state)
        if lacking:
            raise ValueError(f"the state has no {', '.join(sorted(lacking))}")
        why = state_mismatch(state, self.pack_id, [m.point.point_id for m in self.members])
        if why:
            raise ValueError(why)
        active, n = state["active"], len(state["active"])
        for name, mine in (("params", self.params), ("bufs", self.bufs), ("sq", self.sq)):
            theirs = state.get(name, {})     # no "sq": a state from before Adam (SGD)
            if set(theirs) != set(mine) or any(
                    tuple(v.shape) != (n, *mine[k].shape[1:]) for k, v in theirs.items()):
                raise ValueError(f"the state's {name} are not this pack's")
        if len(set(active)) != n or not all(0 <= int(i) < len(self.members) for i in active):
            raise ValueError("the state's members are not this pack's")
        self.spec, self.lr, self.mom, self.eval_set = self._full
        self.active = list(range(len(self.members)))
        self.train_sum = torch.zeros(len(self.members), dtype=self.lr.dtype, device=self.device)
        self.train_steps = 0
        self._compact(list(state["active"]))
        self.params = {k: v.to(self.device, copy=True) for k, v in state["params"].items()}
        self.bufs = {k: v.to(self.device, copy=True) for k, v in state["bufs"].items()}
        self.sq = {k: v.to(self.device, copy=True) for k, v in state.get("sq", {}).items()}
        for i, m_idx in enumerate(self.active):
            m = self.members[m_idx]
            m.best, m.best_epoch = state["best"][i], state["best_epoch"][i]
            m.curve = [tuple(c) for c in state["curves"][i]]
        self.epoch = state["epoch"]
        self.wall_before = state["wall_s"]
        self.eliminated = set(state.get("eliminated", []))
        self.final_loss = {int(i): float(v) for i, v in state.get("final_loss", [])}
        self.started = time.perf_counter()
        self.finished = []


def train_points(points: list[Point], **kwargs) -> tuple[list[dict], list[dict]]:
    """Train a pack to the end; (points rows, curve rows). For tests, scripts and benchmarks."""
    trainer = PackTrainer(points, **kwargs)
    trainer.run()
    return trainer.pop_finished()
