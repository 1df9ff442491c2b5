"""The plan without the run (`memgrid run --dry-run`), and how many trials this machine takes.

Starts nothing and writes nothing; imports neither Ray nor torch.
"""

from __future__ import annotations

import os
from collections import Counter

from ..config import Grid, Point
from ..lr_tuning import grid_points, tuning_points
from ..packs import makespan_s, plan_packs
from ..results import TUNING, done_ids
from .progress import fmt_s, plural

NOTICE_POINTS = 20_000
"""a grid of this many points says what the driver does before each of its stages that take
a second or more at this size (expanding, cutting into packs: ~15 and ~10 us per point), so
that a long start is never silent"""


def local_cpus() -> int:
    """CPUs this process may run on (its affinity), what an embedded Ray counts unless a
    cgroup quota gives it fewer."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def local_slots(cpus_per_trial: float, num_cpus: int | None = None) -> int:
    """Trials at once on this machine: its CPUs (or `num_cpus`) / cpus_per_trial."""
    return max(1, int((num_cpus or local_cpus()) // cpus_per_trial))


def cpu_slot_bytes(ray_memory: float, slots: int) -> float:
    """What a pack may hold on a CPU: half of Ray's memory resource per slot."""
    return 0.5 * ray_memory / slots


def _available_bytes() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return 8e9


def _sizes(packs: list[list[Point]]) -> str:
    return ", ".join(f"{k} x{n}" for k, n in sorted(Counter(len(pk) for pk in packs).items(),
                                                    reverse=True))


def describe_plan(grid: Grid, out: str, *, slots: int, note: str = "",
                  growth: list[str] = ()) -> list[str]:
    """What `memgrid run` would do, as lines: how the grid grows the folder `out` (`growth`:
    memgrid.run.preflight.growth's lines), points, points already stored in `out`, the packs
    (count, sizes, per arch, l, c) for `slots` trials at once, and the cost model's time.
    Starts nothing and writes nothing. A grid with `tune_lr` is planned as its points at the
    protocol's rate until its tuning run has chosen one; the tuning run has a line of its own."""
    lines = [f"[{grid.name}] dry run: nothing started, nothing written"]
    lines += [f"  {out}: {line}" for line in growth]
    points = grid.points()
    if grid.tune_lr is not None:
        tuned = {p.point_id for p in tuning_points(points, grid.tune_lr)}
        have = done_ids(f"{out.rstrip('/')}/{TUNING}") & tuned
        lines.append(f"  tuning the learning rate first: {len(tuned)} points "
                     f"({grid.tune_lr.describe()}); stored: {len(have)}")
        points = grid_points(grid, out, partial=True)
    ids = {p.point_id for p in points}
    stored = done_ids(out) & ids
    todo = [p for p in points if p.point_id not in stored]
    if grid.walk is not None and todo:
        from ..walk import plan, stored_losses

        walk = plan(points, stored_losses(out), grid.walk)
        lines.append(f"  walk ({grid.walk.describe()}): {walk.settled} of {walk.configurations} "
                     f"configurations settled, {plural(len(walk.left_out), 'point')} past their "
                     f"limits left out; {len(todo) - len(walk.left_out)} still open: the next "
                     f"band of each open configuration, {len(walk.next)} points, below (a tuned "
                     "grid trains them arch by arch); each later round, the next band of those "
                     "not settled by then")
        todo = walk.next
    mem = cpu_slot_bytes(0.7 * _available_bytes(), slots)   # Ray's memory: 70 % of what's free
    packs = plan_packs(todo, grid.resources.pack, slots, mem_per_slot=mem) if todo else []
    res = grid.resources
    lines.append(f"  points: {len(points)}; stored in {out}: {len(stored)}; to train: {len(todo)}")
    if not packs:
        return lines + ["  nothing to train"]
    lines.append(f"  packs: {len(packs)} ({_sizes(packs)} points), for {plural(slots, 'trial')} "
                 f"at once ({res.cpus_per_trial:g} CPU each{note})")
    by_net: dict[tuple, list[list[Point]]] = {}
    for pk in packs:
        by_net.setdefault((pk[0].arch, pk[0].layers, pk[0].cells), []).append(pk)
    header = ["arch", "l", "c", "points", "packs", "sizes"]
    rows = [[a, l, c, sum(len(pk) for pk in pks), len(pks), _sizes(pks)]
            for (a, l, c), pks in sorted(by_net.items())]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for r in [header] + rows:
        lines.append("    " + "  ".join(str(x).rjust(w) for x, w in zip(r, widths)))
    # the model is of the PyTorch path and of points that run to max_epochs: Figure 4, 5 and
    # the Figure 6 slice took 47 %, 19 % and 17 % of its figure (README, Speed)
    lines.append(f"  time: up to ~{fmt_s(makespan_s(packs, slots))} by the cost model (every "
                 "point to max_epochs; the shipped grids took 15-50 % of that), plus ~5 s for Ray")
    return lines
