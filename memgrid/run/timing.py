"""A finished run's timeline, from its points rows and its trials' reports to Tune: the matmul
FLOPs its packs computed (memgrid.packs.point_epoch_flops) over its wall time, and where its
slots' seconds went.

:func:`timing` gives, for any results folder that `memgrid run` wrote:
  - the end-to-end rate: matmul FLOPs (training, 3x the forward's, and evaluation) over the
    wall time, against the machine's fp32 matmul rate; and what padding every member to its
    pack's longest sequence would have added;
  - where the slots' seconds went: before the first pack started (Ray and the driver), inside
    the packs by phase (trainer start, training steps, evaluation and stopping, stream MC, part
    writes, checkpoints: memgrid.run.trial.PHASES; the rest of a trial's time is Tune's), and
    slots idle (between packs and while the last packs end);
  - per network, the rate inside its packs against one core's matmul rate.

It reads the files Tune wrote (``<out>/_tune``); it imports neither Ray nor torch.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

from ..packs import point_epoch_flops
from ..results import read_points
from .trial import PHASES

COLUMNS = ["pack_id", "arch", "layers", "cells", "q_hi", "batch_size", "steps_per_epoch",
           "eval_size", "eval_every", "epochs", "wall_s", "finished_at"]
"""the points columns the timing reads"""


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
    """The timing of results folder `out` (what this module's doc lists), its trials run on
    `slots` slots of a machine of matmul `rates` ({"core": one core's, "machine": all its
    cores' FLOP/s}). `started`: the run's start,
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
