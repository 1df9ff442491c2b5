"""A paper grid as a user runs it: a sample of its networks trained end to end by `memgrid run`'s
own path (an embedded Ray started for it, packs planned for it, stopping, evaluation, the
stream MC, part writes and checkpoints all on), its wall time against the matmul FLOPs its packs
computed: each member's steps up to its own longest sequence (the C kernel skips a member's
leading steps where none of its sequences has started, the padding to the pack's longest).

    .venv/bin/python benchmarks/real_grid.py                       # Figure 6's sample, ~1 min on 2 cores
    .venv/bin/python benchmarks/bench.py --real                    # the same
    .venv/bin/python benchmarks/real_grid.py tune_configs/fig8_lstm.yaml --nets 6 --seeds 0..1
    .venv/bin/python benchmarks/real_grid.py --timing results/fig6_rnn   # a results folder, no training

The sample: every position of the grid at the seeds given (default: its first), for a few of its
networks (l, c): Figure 6's are benchmarks/bench.py's slice (c = 1..20, l = 1..5); other grids
draw `--nets` at random (seeded), the largest always among them. It runs at the grid's protocol
unless `--protocol` says otherwise (`paper`, the default here, is the budget the speed targets
were set at; `converged` is 8x its steps).

It prints, for the run or for any results folder (`--timing`, e.g. a full grid's):
  - the end-to-end rate: matmul FLOPs (training, 3x the forward's, and evaluation) over the
    wall time, against the machine's fp32 matmul rate; and what padding every member to its
    pack's longest sequence would have added;
  - where the slots' seconds went: before the first pack started (Ray and the driver), inside
    the packs by phase (trainer start, training steps, evaluation and stopping, stream MC, part
    writes, checkpoints; the rest of a trial's time is Tune's), and slots idle (between packs
    and while the last packs end);
  - per network, the rate inside its packs against one core's matmul rate.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import FIG6_NETS, ROOT, _Union, cpu_text, machine_rates, point_epoch_flops  # noqa: E402
from memgrid.results import read_points  # noqa: E402
from memgrid.config import Grid, load_grid  # noqa: E402
from memgrid.run.preflight import prepare_out  # noqa: E402
try:
    from memgrid.run.trial import PHASES  # noqa: E402
except ImportError:     # a memgrid before its trials reported their phases: wall times only
    PHASES = ()

COLUMNS = ["pack_id", "arch", "layers", "cells", "q_hi", "batch_size", "steps_per_epoch",
           "eval_size", "eval_every", "epochs", "wall_s", "finished_at"]


def seeds(text: str) -> list[int]:
    """`a` or `a..b` (inclusive)."""
    lo, _, hi = text.partition("..")
    return list(range(int(lo), int(hi or lo) + 1))


def sample(grid: Grid, nets: list[tuple[int, int]] | int, seed_list: list[int]) -> list[Grid]:
    """One sub-grid per sampled network (l, c), every position, the given seeds."""
    all_nets = sorted({(p.layers, p.cells) for p in grid.points()})
    if isinstance(nets, int):
        rng = random.Random(0)
        largest = all_nets[-1]
        nets = sorted({largest, *rng.sample([n for n in all_nets if n != largest],
                                            min(nets - 1, len(all_nets) - 1))})
    missing = [n for n in nets if n not in all_nets]
    if missing:
        raise SystemExit(f"real_grid: {grid.name} has no network (l, c) = {missing[0]}")
    return [dataclasses.replace(grid, name=f"{grid.name}_l{l}c{c}",
                                axes={**grid.axes, "layers": [l], "cells": [c], "seed": seed_list})
            for l, c in nets]


def trials(out: str) -> list[dict]:
    """Each trial's last report of every Tune run in `out`: its `time_<phase>_s`, Tune's
    `time_total_s` and `started_at` (memgrid.run.trial.pack_metrics)."""
    found = []
    for path in glob.glob(os.path.join(out, "_tune", "*", "*", "result.json")):
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
        if lines:
            r = json.loads(lines[-1])
            at = r.get("started_at")
            if isinstance(at, float) and at == at:      # not NaN: a memgrid pack trial
                found.append({k: v for k, v in r.items() if k.startswith(("time_", "started_at"))})
    return found


def timing(out: str, slots: int, rates: dict, started: float | None = None) -> dict:
    """The timing of results folder `out` (see the module's doc). `started`: the run's start,
    a POSIX time (None: the first trial's start). A folder filled by several runs counts the
    time its trials ran, not the pauses between."""
    t = read_points(out, columns=COLUMNS).to_pandas()
    t = t[t.arch != "esn"]
    t["end"] = t.finished_at.map(lambda v: v.timestamp())
    T = t.groupby("pack_id").q_hi.transform("max")
    t["flops"] = [point_epoch_flops(r) * r.epochs for r in t.itertuples()]
    padded = sum(point_epoch_flops(r, T=tp) * r.epochs for r, tp in zip(t.itertuples(), T))
    packs = t.groupby("pack_id").agg(s=("wall_s", "max"), flops=("flops", "sum"),
                                     arch=("arch", "first"), layers=("layers", "first"),
                                     cells=("cells", "first"))
    tr = trials(out)
    if tr:   # the trials' intervals; else (Tune's files gone) the packs' own
        spans = [(r["started_at"], r["started_at"] + r["time_total_s"]) for r in tr]
    else:
        spans = list(zip(t.groupby("pack_id").end.max() - packs.s, t.groupby("pack_id").end.max()))
    first = min(s for s, _ in spans)
    # the wall: from the run's start (or the first trial's) through the union of the trials'
    # intervals, so that a resumed folder counts its runs, not the pauses between them
    wall, reach = 0.0, first
    for s, e in sorted(spans):
        if e > reach:
            wall += e - max(s, reach)
            reach = e
    before = 0.0 if started is None else max(0.0, first - started)
    wall += before
    busy = sum(e - s for s, e in spans)
    phases = {k: sum(r.get(f"time_{k}_s", 0.0) for r in tr) for k in PHASES}
    flops = float(packs.flops.sum())
    d = {"points": len(t), "packs": len(packs), "trials": len(tr), "wall_s": wall,
         "flops": flops, "padding": padded / flops - 1, "gflops": flops / wall / 1e9,
         "of_machine": flops / wall / rates["machine"], "slot_s": slots * wall,
         "before_s": slots * before, "trials_s": busy,
         "tune_s": max(0.0, busy - sum(phases.values())) if tr else 0.0,
         "idle_s": max(0.0, slots * wall - slots * before - busy), "phases": phases, "nets": {}}
    for (arch, l, c), g in packs.groupby(["arch", "layers", "cells"]):
        d["nets"][f"{arch} {l},{c}"] = {
            "packs": len(g), "s": float(g.s.sum()), "gflops": float(g.flops.sum() / g.s.sum() / 1e9),
            "of_core": float(g.flops.sum() / g.s.sum() / rates["core"]), "cells": int(c)}
    return d


def report(d: dict, slots: int) -> None:
    print(f"{d['points']} points in {d['packs']} packs: {d['wall_s']:.0f} s end to end; "
          f"{d['flops'] / 1e12:.2f} TFLOP of matmul (padding to each pack's longest sequence "
          f"would add {100 * d['padding']:.0f} %) = {d['gflops']:.1f} GFLOP/s = "
          f"{100 * d['of_machine']:.0f} % of the machine's matmul rate")
    S = d["slot_s"]

    def line(what: str, x: float) -> None:
        print(f"   {what:44s}{x:8.1f} s {100 * x / S:5.1f} %")

    print(f"where the {slots} slots' {S:.0f} s went:")
    line("before the first trial (Ray, the driver)", d["before_s"])
    for k, what in [("start", "trial start (imports, stored parts, trainer)"),
                    ("train", "training steps"), ("evaluate", "evaluation, stop rules, compaction"),
                    ("mc", "rows and stream MC of finished points"), ("write", "part writes"),
                    ("checkpoint", "checkpoints")]:
        line(what, d["phases"][k])
    line("in trials, Tune's (reports)", d["tune_s"])
    line("slots idle (between trials, the tail)", d["idle_s"])
    print("per network (FLOPs over its packs' seconds, one core each):")
    for net, v in d["nets"].items():
        mark = "  (c >= 10 below 50 %)" if v["cells"] >= 10 and v["of_core"] < 0.5 else ""
        print(f"   {net:10s} packs {v['packs']:3d}  {v['s']:7.1f} s  {v['gflops']:5.1f} GFLOP/s "
              f"= {100 * v['of_core']:4.1f} % of one core{mark}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="real_grid.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("grid", nargs="?", default=str(ROOT / "tune_configs/fig6_rnn.yaml"))
    ap.add_argument("--nets", type=int, default=6, help="networks to sample (not Figure 6's)")
    ap.add_argument("--seeds", default="0", help="seeds of the sample, e.g. 0..1 (default 0)")
    ap.add_argument("--protocol", default="paper", help="paper (default) or converged")
    ap.add_argument("--timing", metavar="DIR", help="time a results folder instead (no training)")
    ap.add_argument("--slots", type=int, default=os.cpu_count() or 1,
                    help="concurrent trials the folder's run had (--timing; default: the cores)")
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args(argv)
    print(f"machine: {cpu_text()}, {os.cpu_count()} cores", flush=True)
    rates = machine_rates()
    print(f"fp32 matmul 1024^3: one core {rates['core'] / 1e9:.0f} GFLOP/s, the machine "
          f"{rates['machine'] / 1e9:.0f} GFLOP/s", flush=True)
    if args.timing:
        d = timing(args.timing, args.slots, rates)
        report(d, args.slots)
    else:
        from memgrid.run.driver import run_grid
        from memgrid.run.plan import local_slots

        grid = load_grid(args.grid, args.protocol)
        nets = FIG6_NETS if grid.name == "fig6_rnn" else args.nets
        parts = sample(grid, nets, seeds(args.seeds))
        union = _Union(parts, grid.resources.pack)
        union.name = f"{grid.name}-sample"
        n = sum(g.n_points for g in parts)
        print(f"== {grid.name} at the {args.protocol} protocol, stopping on: {len(parts)} networks "
              f"{[(g.axes['layers'][0], g.axes['cells'][0]) for g in parts]}, seeds {args.seeds}, "
              f"every position: {n} points", flush=True)
        work = tempfile.mkdtemp(prefix="memgrid-real-")
        try:
            out = os.path.join(work, union.name)
            prepare_out(union, out)
            t0 = time.time()
            run_grid(union, out, quiet=True)
            slots = local_slots(grid.resources.cpus_per_trial)
            d = timing(out, slots, rates, started=t0)
            report(d, slots)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": {k: v / 1e9 for k, v in rates.items()},
                                               **d}, indent=1, default=float))


if __name__ == "__main__":
    main()
