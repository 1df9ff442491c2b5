"""A paper grid as a user runs it: a sample of its networks trained end to end by `memgrid run`'s
own path (an embedded Ray started for it, packs planned for it, stopping, evaluation, the
stream MC, part writes and checkpoints all on), its wall time against the matmul FLOPs its packs
computed: each member's steps up to its own longest sequence (the C kernel skips a member's
leading steps where none of its sequences has started, the padding to the pack's longest).

    .venv/bin/python benchmarks/real_grid.py                       # Figure 6's sample, ~1 min on 2 cores
    .venv/bin/python benchmarks/real_grid.py tune_configs/fig8_lstm.yaml --nets 6 --seeds 0..1
    .venv/bin/python benchmarks/real_grid.py --timing results/fig6_rnn   # a results folder, no training

The sample: every position of the grid at the seeds given (default: its first), for a few of its
networks (l, c): Figure 6's are benchmarks/bench.py's slice (c = 1..20, l = 1..5); other grids
draw `--nets` at random (seeded), the largest always among them. It runs at the grid's protocol
unless `--protocol` says otherwise (`paper`, the default here, is the budget the speed targets
were set at; `converged` is 8x its steps).

It prints, for the run or for any results folder (`--timing`, e.g. a full grid's), its timing
(memgrid.run.timing: the end-to-end rate against the machine's matmul rate, where the slots'
seconds went, per network the rate inside its packs).
"""

from __future__ import annotations

import argparse
import dataclasses
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

from bench import FIG6_NETS, ROOT, Union, machine_rates  # noqa: E402
from memgrid.config import Grid  # noqa: E402
from memgrid.grid_file import load_grid  # noqa: E402
from memgrid.fast.native import cpu_text  # noqa: E402
from memgrid.run.preflight import prepare_out  # noqa: E402
from memgrid.run.timing import timing  # noqa: E402
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
        union = Union(parts, grid.resources.pack)
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
