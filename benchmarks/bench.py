"""memgrid against one Tune trial per point, side by side, through Ray Tune.

    .venv/bin/python benchmarks/bench.py                 # both slices, ~5 min on 2 cores
    .venv/bin/python benchmarks/bench.py --slice fig4    # one slice
    .venv/bin/python benchmarks/bench.py --json out.json # also write the numbers

For each grid slice, with the same points and settings (fixed epochs, stopping off: nothing
stops early, so the work is equal), in one process tree with one embedded Ray started once:

  (a) torch:   one Tune trial per point, a plain trainer a user would write: torch.nn.RNN/
               LSTM/GRU, torch.optim.SGD, a batch drawn with torch.rand per step (lengths
               per sequence, packed with pack_padded_sequence), the same evaluation set size
               and interval, 1 CPU and 1 thread per trial, reuse_actors=True;
  (b) pack 1:  memgrid, one point per trial (``memgrid.run.driver.run_grid``, pack = 1);
  (c) auto:    memgrid with its default packing (pack = auto).

It prints point-epochs per second (one epoch of one point, data generation included, over
the wall time of the grid through Tune: trial start-up, reporting and result writing
included), the ratios (c)/(a) and (c)/(b), peak memory of the process tree and of the
largest trial worker, and a roofline: the arithmetic rate achieved (matmul FLOPs of training,
3x the forward's, and of evaluation) against this machine's fp32 matmul rate.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memgrid import fast  # noqa: E402
from memgrid.results import read_points  # noqa: E402
from memgrid.run.preflight import prepare_out  # noqa: E402
from memgrid.config import Grid, Point  # noqa: E402
from memgrid.grid_file import check_grid, load_grid  # noqa: E402
from memgrid.fast.native import cpu_text  # noqa: E402
from memgrid.packs import member_bytes, point_epoch_flops  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STOP_OFF = dict(solved_loss=0.0, plateau=False, mc_length=0)
"""nothing stops early (equal work); no stream memory capacity (the baseline does not measure it)"""
PROTOCOL = "paper"
"""one SGD step per epoch, so that a point-epoch is one step, as in every figure measured so far
(the converged protocol's 8 steps per epoch would make a point-epoch 8 steps)"""


# ---------------------------------------------------------------------------------------------
# The slices.


def fig4(epochs: int) -> Grid:
    """Figure 4: rnn, l = 1, c = 5, p = 1..10, seeds 0..9 (100 points), q in 10..15."""
    g = load_grid(ROOT / "tune_configs/fig4_rnn.yaml", PROTOCOL).with_overrides(
        max_epochs=epochs, **STOP_OFF)
    check_grid(g)
    return g


def fig6(epochs: int) -> Grid:
    """A mixed slice of Figure 6: rnn, l = 1..5, c up to 20, p in 1, 3, 5, 7, 9, 4 seeds."""
    g = load_grid(ROOT / "tune_configs/fig6_rnn.yaml", PROTOCOL)
    g = dataclasses.replace(g, name="fig6_bench", axes={**g.axes, "layers": [1], "cells": [1],
                                                         "position": [1, 3, 5, 7, 9],
                                                         "seed": [0, 1, 2, 3]})
    g = g.with_overrides(max_epochs=epochs, **STOP_OFF)
    check_grid(g)
    return g


FIG6_NETS = [(1, 1), (1, 5), (1, 20), (2, 5), (3, 10), (4, 10), (5, 20)]
"""(l, c) of the Figure 6 slice"""


def slice_points(name: str, epochs: int) -> tuple[Grid, list[Grid]]:
    """The slice as one Grid per (l, c) (memgrid's grid files are products; the slice is a
    union), and the first for naming."""
    if name == "fig4":
        g = fig4(epochs)
        return g, [g]
    base = fig6(epochs)
    grids = [dataclasses.replace(base, name=f"fig6_bench_l{l}c{c}",
                                 axes={**base.axes, "layers": [l], "cells": [c]})
             for l, c in FIG6_NETS]
    return base, grids


# ---------------------------------------------------------------------------------------------
# FLOPs and the machine's matmul rate.


def _matmul_rate(threads: int, n: int = 1024, reps: int = 10, rounds: int = 5) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = math.inf
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, (time.perf_counter() - t0) / reps)
    return 2 * n ** 3 / best


def _matmul_worker(q) -> None:
    q.put(_matmul_rate(1))


def machine_rates() -> dict:
    """fp32 matmul rate, 1024^3: one thread; all threads; one one-thread process per core at
    once. One core's rate ("core") is the larger of the first and the last per core: a lone
    measurement on a shared machine can come out low."""
    one = _matmul_rate(1)
    two = _matmul_rate(2)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_matmul_worker, args=(q,)) for _ in range(os.cpu_count() or 1)]
    for pr in procs:
        pr.start()
    concurrent = sum(q.get() for _ in procs)
    for pr in procs:
        pr.join()
    torch.set_num_threads(os.cpu_count() or 1)
    n = os.cpu_count() or 1
    return {"core": max(one, concurrent / n), "one_thread": one, "threads": two, "processes": concurrent,
            "machine": max(two, concurrent)}


# ---------------------------------------------------------------------------------------------
# Peak memory of the process tree (driver, raylet, trial workers), sampled.


class MemorySampler:
    def __init__(self, period_s: float = 0.2):
        import psutil
        self.psutil, self.period = psutil, period_s
        self.me = psutil.Process()
        self.tree = self.worker = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total, worker = 0, 0
            try:
                procs = [self.me] + self.me.children(recursive=True)
            except self.psutil.Error:
                procs = [self.me]
            for pr in procs:
                try:
                    rss = pr.memory_info().rss
                    total += rss
                    if "ImplicitFunc" in pr.name() or "ImplicitFunc" in " ".join(pr.cmdline()[:1]):
                        worker = max(worker, rss)
                except self.psutil.Error:
                    pass
            self.tree, self.worker = max(self.tree, total), max(self.worker, worker)
            self._stop.wait(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------------------------------
# (a) The baseline: what a user writes by hand.


def torch_point_trial(config: dict) -> None:
    """One point, torch.nn modules, torch.optim.SGD, fresh torch.rand data every step."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence
    from ray import tune

    torch.set_num_threads(1)
    p = config["point"]
    q_lo, q_hi, pos = p["q_lo"], p["q_hi"], p["position"]
    gen = torch.Generator().manual_seed(p["seed"])
    torch.manual_seed(p["seed"])
    net = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[p["arch"]](
        1, p["cells"], p["layers"], batch_first=True)
    opt = torch.optim.SGD(net.parameters(), lr=p["lr"], momentum=p["momentum"])

    def batch(n: int):
        q = torch.randint(q_lo, q_hi + 1, (n,), generator=gen)          # a length per sequence
        x = torch.rand(n, q_hi, 1, generator=gen)
        y = x[torch.arange(n), q - pos, 0]                                # the p-th from last
        return pack_padded_sequence(x, q, batch_first=True, enforce_sorted=False), y

    def output(x):
        _, h = net(x)
        h = h[0] if isinstance(h, tuple) else h                          # lstm: (h, c)
        return h[-1].sum(1)                                               # last layer, summed

    ev_x, ev_y = batch(p["eval_size"])
    for epoch in range(1, p["max_epochs"] + 1):
        for _ in range(p["steps_per_epoch"]):
            x, y = batch(p["batch_size"])
            loss = (output(x) - y).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epoch % p["eval_every"] == 0 or epoch == p["max_epochs"]:
            with torch.no_grad():
                ev = (output(ev_x) - ev_y).abs().mean().item()
            tune.report({"eval_loss": ev, "epoch": epoch})


def run_torch(points: list[Point], storage: str) -> dict:
    from ray import tune

    space = [dict(p.to_dict(), q_lo=p.q_lo, q_hi=p.q_hi) for p in points]
    tuner = tune.Tuner(
        tune.with_resources(torch_point_trial, {"cpu": 1}),
        param_space={"point": tune.grid_search(space)},
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(name="torch", storage_path=storage, verbose=0))
    results = tuner.fit()
    busy = sum(r.metrics.get("time_total_s", 0.0) for r in results if r.metrics)
    return {"failed": sum(1 for r in results if r.error is not None), "trials": len(points),
            "packs": len(points), "busy_s": busy}


# ---------------------------------------------------------------------------------------------
# (b), (c) memgrid through run_grid.


def run_memgrid(grids: list[Grid], pack, out_root: str) -> dict:
    from memgrid.run.driver import run_grid

    summary = {}
    # one run_grid per (l, c) grid of the slice would serialize them; the union runs as one
    # Tune experiment instead: a Grid whose points() is the union (run_grid only needs
    # points(), name and resources)
    union = Union(grids, pack)
    out = os.path.join(out_root, union.name)
    prepare_out(union, out)
    # address: Ray is already up (started once for all three runs); a non-None address keeps
    # run_grid from shutting it down afterwards
    s = run_grid(union, out, address="local", quiet=True)
    summary.update(failed=s["failed_trials"], trials=s["packs"], packs=s["packs"],
                   done=s["done"], points=s["points"])
    t = read_points(out, columns=["pack_id", "wall_s", "arch", "layers", "cells", "q_hi",
                                  "batch_size", "steps_per_epoch", "epochs"]).to_pandas()
    summary["pack_table"] = t
    summary["busy_s"] = float(t.groupby("pack_id")["wall_s"].max().sum())
    return summary


class Union:
    """Several grids' points as one experiment, for run_grid (which needs name, resources,
    points(), n_points and, for the results folder, identity)."""

    def __init__(self, grids: list[Grid], pack):
        self.parts = grids
        self.name = grids[0].name.split("_l")[0] + f"-pack{pack}"
        self.resources = dataclasses.replace(grids[0].resources, pack=pack)
        self.tune_lr, self.lr_source = None, "grid"

    def points(self) -> list[Point]:
        return [p for g in self.parts for p in g.points()]

    @property
    def n_points(self) -> int:
        return sum(g.n_points for g in self.parts)

    @property
    def identity(self) -> dict:
        return {"name": self.name, "parts": [g.identity for g in self.parts]}


# ---------------------------------------------------------------------------------------------


def bench_slice(name: str, epochs: int, rates: dict, work: str) -> dict:
    from memgrid.run.driver import start_ray

    base, grids = slice_points(name, epochs)
    points = [p for g in grids for p in g.points()]
    flops = sum(point_epoch_flops(p) * p.max_epochs for p in points)
    pe = sum(p.max_epochs for p in points)
    print(f"\n== {name}: {len(points)} points x {epochs} epochs = {pe} point-epochs, "
          f"{flops / 1e9:.0f} GFLOP (training and evaluation)", flush=True)
    start_ray(None, None)
    rows = {}
    for label, run in [("(a) torch, 1 trial/point", lambda d: run_torch(points, d)),
                       ("(b) memgrid --pack 1", lambda d: run_memgrid(grids, 1, d)),
                       ("(c) memgrid --pack auto", lambda d: run_memgrid(grids, "auto", d))]:
        d = tempfile.mkdtemp(prefix="bench-", dir=work)
        with MemorySampler() as mem:
            t0 = time.perf_counter()
            s = run(d)
            wall = time.perf_counter() - t0
        r = {"wall_s": wall, "pe_per_s": pe / wall, "gflops": flops / wall / 1e9,
             "busy_s": s["busy_s"], "pe_per_busy_s": pe / s["busy_s"],
             "roofline": flops / wall / rates["machine"], "tree_peak_mb": mem.tree / 2**20,
             "worker_peak_mb": mem.worker / 2**20, "trials": s["trials"], "failed": s["failed"]}
        if "pack_table" in s:
            r.update(_per_net(s["pack_table"], points, rates))
            r["pack_sizes"] = sorted(s["pack_table"].groupby("pack_id").size().tolist(), reverse=True)
            t = s["pack_table"]
            mb = {(p.arch, p.layers, p.cells, p.q_hi): member_bytes(p) for p in points}
            r["planned_pack_mb"] = max(len(g) * mb[(g.arch.iloc[0], g.layers.iloc[0], g.cells.iloc[0],
                                                    g.q_hi.max())] for _, g in t.groupby("pack_id")) / 2**20
            if s.get("done") != s.get("points"):
                r["failed"] = r.get("failed", 0) + 1
        rows[label] = r
        print(f"{label:26s} {wall:7.1f} s  {pe / wall:9.0f} point-epochs/s  "
              f"{flops / wall / 1e9:6.1f} GFLOP/s ({100 * r['roofline']:4.1f}% of machine)  "
              f"trials {s['trials']:4d}  in trials {pe / s['busy_s']:7.0f} pe/s/core  "
              f"peak: tree {r['tree_peak_mb']:.0f} MB, "
              f"worker {r['worker_peak_mb']:.0f} MB" + (f"  FAILED {s['failed']}" if s['failed'] else ""),
              flush=True)
        shutil.rmtree(d, ignore_errors=True)
    a, b, c = (rows[k]["pe_per_s"] for k in rows)
    ia, ib, ic = (rows[k]["pe_per_busy_s"] for k in rows)
    print(f"end to end through Tune: (c)/(a) = {c / a:.1f}x    (c)/(b) = {c / b:.1f}x\n"
          f"inside the trials (point-epochs per trial-second): (c)/(a) = {ic / ia:.1f}x    "
          f"(c)/(b) = {ic / ib:.1f}x")
    auto = rows["(c) memgrid --pack auto"]
    if auto.get("per_net"):
        print("memgrid auto, per network (training time inside the trials; one core each):")
        for net, v in auto["per_net"].items():
            print(f"   {net:10s} packs {v['packs']:3d} (K {v['k']:>7s})  {v['pe_per_core_s']:8.0f} pe/s per core  "
                  f"{v['gflops']:5.1f} GFLOP/s = {100 * v['roofline']:4.1f}% of one core's matmul rate")
        print(f"   largest pack planned {auto['planned_pack_mb']:.0f} MB; largest worker RSS "
              f"{auto['worker_peak_mb']:.0f} MB (torch and Ray included)")
    return {"slice": name, "epochs": epochs, "points": len(points), "point_epochs": pe,
            "train_gflop": flops / 1e9, "runs": {k: {kk: vv for kk, vv in v.items()} for k, v in rows.items()},
            "c_over_a": c / a, "c_over_b": c / b, "in_trial_c_over_a": ic / ia,
            "in_trial_c_over_b": ic / ib}


def _per_net(t, points: list[Point], rates: dict) -> dict:
    """Per (arch, l, c): pe/s per core and GFLOP/s from the packs' own wall time (one core per
    trial), against one core's matmul rate."""
    out = {}
    for (arch, l, c), g in t.groupby(["arch", "layers", "cells"]):
        walls = g.groupby("pack_id")["wall_s"].max()
        sizes = g.groupby("pack_id").size()
        p = next(q for q in points if (q.arch, q.layers, q.cells) == (arch, l, c))
        pe = float((g["epochs"]).sum())
        T = {pid: int(gg["q_hi"].max()) for pid, gg in g.groupby("pack_id")}
        fl = sum(point_epoch_flops(p, T[pid]) * float(gg["epochs"].sum()) for pid, gg in g.groupby("pack_id"))
        core_s = float(walls.sum())
        out[f"{arch} {l},{c}"] = {"packs": len(walls), "k": f"{sizes.min()}-{sizes.max()}",
                                  "pe_per_core_s": pe / core_s, "gflops": fl / core_s / 1e9,
                                  "roofline": fl / core_s / rates["core"]}
    return {"per_net": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slice", choices=["fig4", "fig6", "all"], default="all")
    ap.add_argument("--fig4-epochs", type=int, default=500)
    ap.add_argument("--fig6-epochs", type=int, default=200)
    ap.add_argument("--json", help="write the numbers to this file")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="memgrid-bench-")
    cpu = cpu_text()
    c_kernels = "C kernels" if fast.prepare() else "torch ops (no C kernels)"
    print(f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}; memgrid: {c_kernels}",
          flush=True)
    rates = machine_rates()
    print(f"fp32 matmul 1024^3: one core {rates['core'] / 1e9:.0f} GFLOP/s; {rates['one_thread'] / 1e9:.0f} on 1 thread, "
          f"{rates['threads'] / 1e9:.0f} on {os.cpu_count()} threads, {rates['processes'] / 1e9:.0f} "
          f"in {os.cpu_count()} one-thread processes at once; machine rate {rates['machine'] / 1e9:.0f}",
          flush=True)
    results = {"machine": {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
                           "kernels": c_kernels,
                           **{k: v / 1e9 for k, v in rates.items()}}, "slices": []}
    try:
        for name, ep in [("fig4", args.fig4_epochs), ("fig6", args.fig6_epochs)]:
            if args.slice in (name, "all"):
                results["slices"].append(bench_slice(name, ep, rates, work))
    finally:
        import ray
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
