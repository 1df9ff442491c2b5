"""Checks that memgrid's numbers hold: the paper cells against torch.nn's, bitwise pack
invariance, and stored results that retrain to their rows. ``benchmarks/verify.py`` runs them
from the command line; the tests run them too.

1. :func:`check_equivalence`: a pack of one with torch.nn.RNN/LSTM/GRU's weights, a
   mixed-length batch, outputs and gradients (largest difference; 1e-5 expected);
2. :func:`check_invariance`: train_points on a mixed pack vs each point alone, identical
   evaluation-loss curves on the CPU;
3. :func:`check_results`: a sample of a results folder's trained points, each retrained alone
   (a pack does not change a point's numbers) on the code path its row names (`kernel`:
   PyTorch ops for ``torch``, else the C kernels), against its stored row: epochs, stop reason,
   losses and r2 bit for bit (on a GPU, to float rounding), the stream MC to 1e-12, since its
   float64 fit goes through the BLAS, whose roundings differ between CPUs and thread counts in
   the last digits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import sys
import time

import torch

from .config import Point
from .models import forward, init_params
from .results import read_points
from .task import TRAIN, TaskSpec, make_batch
from .train import train_points

TORCH = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


def check_equivalence(arch: str, layers: int = 2, cells: int = 4, k: int = 1,
                      device: str = "cpu") -> float:
    pts = [Point(arch, layers, cells, position=p, seed=s, q_min=5, q_max=8)
           for p, s in [(2, 0), (3, 1), (1, 2)]]
    spec = TaskSpec.of(pts, device)
    params = init_params(arch, layers, cells, "sum", spec.seed)
    params = {n: v.clone().requires_grad_(True) for n, v in params.items()}
    batch = make_batch(spec, TRAIN, 3, 16)
    y = forward(arch, params, batch.x, batch.mask)
    grads = torch.autograd.grad(y[k].sum(), list(params.values()))
    mod = TORCH[arch](1, cells, num_layers=layers, batch_first=True).double().to(device)
    with torch.no_grad():
        for i in range(layers):
            for ours, theirs in [("w_ih", "weight_ih"), ("w_hh", "weight_hh"), ("b_ih", "bias_ih"),
                                 ("b_hh", "bias_hh")]:
                getattr(mod, f"{theirs}_l{i}").copy_(params[f"{ours}.{i}"][k].double())
    T = batch.x.shape[2]
    outs = []
    for b in range(batch.x.shape[1]):   # each sequence alone, unpadded
        q = int(batch.length[k, b])
        xb = batch.x[k, b, T - q:].double().reshape(1, q, 1)
        o, _ = mod(xb)
        outs.append(o[0, -1].sum())
    ref = torch.stack(outs)
    ref_grads = torch.autograd.grad(ref.sum(), [getattr(mod, f"{t}_l{i}") for i in range(layers)
                                                for t in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")])
    err = (y[k].double() - ref).abs().max().item()
    names = [f"{o}.{i}" for i in range(layers) for o in ("w_ih", "w_hh", "b_ih", "b_hh")]
    g = dict(zip(params, grads))
    for n, rg in zip(names, ref_grads):
        err = max(err, (g[n][k].double() - rg).abs().max().item())
    return err


def check_invariance(arch: str, device: str = "cpu") -> float:
    """Largest difference between a point's evaluation curve alone and in a mixed pack."""
    pts = [Point(arch, 2, 3, position=p, seed=s, lr=lr, q_min=5, q_max=8, max_epochs=200,
                 eval_every=20, eval_size=128, plateau=False, solved_loss=0.0, mc_length=0)
           for p, s, lr in [(1, 0, 0.01), (3, 1, 0.05), (5, 2, 0.01), (8, 3, 0.05)]]
    _, curves = train_points(pts, device=device)
    packed = {}
    for c in curves:
        packed.setdefault(c["point_id"], []).append(c["eval_loss"])
    worst = 0.0
    for p in pts:
        _, alone = train_points([p], device=device)
        a = [c["eval_loss"] for c in alone]
        if a != packed[p.point_id]:
            d = max(abs(x - y) for x, y in zip(a, packed[p.point_id]))
            print(f"  {arch} p={p.position} seed={p.seed}: curves differ by {d:.1e}", file=sys.stderr)
            worst = max(worst, d if d == d else float("inf"))
    return worst


MEASURED = ("epochs", "stop_reason", "loss", "best_loss", "r2")
"""what a run measured, in a points row: a retrained point gives these back bit for bit"""
MC_STREAM_RTOL = 1e-12
"""the stream MC is a float64 least-squares fit through torch's BLAS, whose roundings differ
between CPUs in the last digit or two: a retrained point gives it back to this"""


@contextlib.contextmanager
def _on_path(kernel: str | None):
    """Train on the path a row's `kernel` names: PyTorch ops for ``torch`` (MEMGRID_KERNELS=0),
    else memgrid's own (a C kernel computes the same bits at every vector width)."""
    before = os.environ.get("MEMGRID_KERNELS")
    if kernel == "torch":
        os.environ["MEMGRID_KERNELS"] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MEMGRID_KERNELS", None)
        else:
            os.environ["MEMGRID_KERNELS"] = before


def check_results(folder: str, n: int, seed: int = 0, device: str = "cpu", threads: int = 1,
                  where=lambda row: True) -> int:
    """Retrain `n` of the folder's trained points for which `where(row)` holds (drawn with
    `seed`), each alone on `threads` threads. Returns (points retrained, how many of them
    differ from their stored row: :data:`MEASURED` bit for bit, the stream MC to
    :data:`MC_STREAM_RTOL`)."""
    torch.set_num_threads(threads)
    rows = [r for r in read_points(folder).to_pylist() if r["arch"] != "esn" and where(r)]
    fields = [f.name for f in dataclasses.fields(Point)]
    bad, drawn = 0, random.Random(seed).sample(rows, min(n, len(rows)))
    for r in drawn:
        p = Point(**{k: r[k] for k in fields if r.get(k) is not None})
        assert p.point_id == r["point_id"], (p.point_id, r["point_id"])
        t0 = time.perf_counter()
        with _on_path(r.get("kernel")):
            (new,), _ = train_points([p], device=device)
        diff = [k for k in MEASURED if repr(new[k]) != repr(r[k])]
        if not math.isclose(new["mc_stream"], r["mc_stream"], rel_tol=MC_STREAM_RTOL):
            diff.append("mc_stream")
        bad += bool(diff)
        print(f"  {r['point_id']} ({r['arch']} l={r['layers']} c={r['cells']} p={r['position']} "
              f"seed={r['seed']}, {new['epochs']} epochs, {time.perf_counter() - t0:.0f} s): "
              + ("the stored row" if not diff else
                 "differs: " + ", ".join(f"{k} {r[k]!r} -> {new[k]!r}" for k in diff)), flush=True)
    return len(drawn), bad
