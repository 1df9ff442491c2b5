"""A learning rate tuned per configuration (Collins, Sohl-Dickstein and Sussillo, ICLR 2017):
candidates trained side by side, the hopeless ones eliminated early, the choice made on tuning
seeds and the limit then measured on other seeds.

How a grid with a `tune_lr:` section runs (``memgrid.run.driver.run_grid``):

1. *Tuning.* Every configuration of the grid (its points up to position and seed) is trained
   at every candidate learning rate on the tuning seeds, all candidates of a configuration in
   one pack (learning rate is a per-member setting). At each rung, budget/eta^k for k = rungs ..
   1, :func:`rank` orders the candidates and only the best 1/eta go on; the others' members stop
   with stop reason `eliminated`. These rows go to ``<results>/tuning/``, never to the points
   table that the analysis reads.
2. *Choice.* :func:`choose_lr` takes the best surviving candidate per configuration.
3. *Measurement.* The grid's own points (its seeds, which must differ from the tuning seeds)
   train at the chosen rate; each row records it in `lr` and how it was chosen in `lr_source`.

Nothing here imports Ray or torch.
"""

from __future__ import annotations

import math
from dataclasses import replace

from .config import THRESHOLD, Grid, LRTuning, Point
from .results import TUNING, read_points

__all__ = ["LRTuning", "choose_lr", "grid_points", "measured_points", "rank", "tuning_points"]
"""LRTuning, the `tune_lr:` section, is part of the grid's data model (memgrid.config)."""


def tuning_points(points: list[Point], tuning: LRTuning) -> list[Point]:
    """The tuning run of a grid: each (configuration, position) at each candidate and tuning
    seed, once (only the tuning's `positions`, where it names them)."""
    seen, out = set(), []
    for p in points:
        key = (p.pack_key, p.position)
        if key in seen or (tuning.positions and p.position not in tuning.positions):
            continue
        seen.add(key)
        out += [replace(p, seed=s, lr=lr) for lr in tuning.candidates for s in tuning.seeds]
    return out


def rank(losses: list[tuple[float, int, float]], threshold: float = THRESHOLD) -> list[float]:
    """Candidate learning rates, best first, from (lr, position, loss) of one configuration's
    members (one per seed and position; the latest evaluation loss, or the final one).

    Best: the highest memory-distance limit over the tuning seeds (how many of the positions
    tuned, from the smallest, have a mean loss < threshold: for positions 1..P, the largest p
    with mean loss < threshold for every p' <= p), then the lowest mean loss over all its
    members. A candidate with a non-finite loss (diverged) ranks last."""
    by_lr: dict[float, dict[int, list[float]]] = {}
    for lr, p, loss in losses:
        by_lr.setdefault(lr, {}).setdefault(p, []).append(loss)

    def score(lr: float) -> tuple:
        means = {p: sum(v) / len(v) for p, v in by_lr[lr].items()}
        if not all(math.isfinite(m) for m in means.values()):
            return (1, 0, math.inf)
        limit = 0
        for p in sorted(means):
            if means[p] >= threshold:
                break
            limit += 1
        return (0, -limit, sum(means.values()) / len(means))

    return sorted(by_lr, key=score)


def choose_lr(rows: list[dict], tuned: list[Point], threshold: float = THRESHOLD
              ) -> dict[tuple, float]:
    """pack_key -> chosen learning rate, from the rows (points-table rows) of the tuning run of
    the points `tuned`: the best (:func:`rank`) of the candidates never eliminated. Rows of
    other points are ignored; a configuration without rows gets no entry."""
    key_of = {p.point_id: p.pack_key for p in tuned}
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["point_id"] in key_of:
            groups.setdefault(key_of[r["point_id"]], []).append(r)
    out = {}
    for key, rs in groups.items():
        out_lrs = {r["lr"] for r in rs if r["stop_reason"] == "eliminated"}
        alive = [(r["lr"], r["position"], r["loss"] if r["loss"] is not None else math.nan)
                 for r in rs if r["lr"] not in out_lrs]
        out[key] = rank(alive or [(r["lr"], r["position"], r["loss"]) for r in rs], threshold)[0]
    return out


def measured_points(points: list[Point], chosen: dict[tuple, float]) -> list[Point]:
    """The grid's points at their configuration's chosen learning rate."""
    return [replace(p, lr=chosen[p.pack_key]) for p in points]


def _chosen(grid: Grid, out: str, points: list[Point]) -> dict[tuple, float]:
    """pack_key -> the rate the tuning run in `out` chose, for the configurations of `points`
    whose tuning is complete."""
    tuned = tuning_points(points, grid.tune_lr)
    rows = read_points(f"{out.rstrip('/')}/{TUNING}").to_pylist()
    have = {r["point_id"] for r in rows}
    open_keys = {p.pack_key for p in tuned if p.point_id not in have}
    return choose_lr(rows, [p for p in tuned if p.pack_key not in open_keys])


def tuned_points(grid: Grid, out: str, points: list[Point]) -> tuple[list[Point], list[Point]]:
    """`points` (some of those of `grid`, a grid with `tune_lr`) in two lists: those whose
    configuration's tuning run in `out` is complete, at the rate it chose; and the others, as
    the grid has them (at a rate not chosen yet: no stored point is theirs)."""
    chosen = _chosen(grid, out, points)
    return ([replace(p, lr=chosen[p.pack_key]) for p in points if p.pack_key in chosen],
            [p for p in points if p.pack_key not in chosen])


def grid_points(grid: Grid, out: str, points: list[Point] | None = None, partial: bool = False
                ) -> list[Point] | None:
    """The points `grid` stores in `out` (or those of `points`, some of the grid's): its own,
    or for a grid with `tune_lr` the same at the learning rate its tuning run chose per
    configuration. None while that run is incomplete for any of them; `partial`: the points of
    the configurations whose tuning is complete at their rates, the others as the grid has them
    (at a rate not chosen yet: no stored point is theirs)."""
    points = grid.points() if points is None else points
    if grid.tune_lr is None:
        return points
    chosen = _chosen(grid, out, points)
    if not partial and any(p.pack_key not in chosen for p in points):
        return None
    return [replace(p, lr=chosen[p.pack_key]) if p.pack_key in chosen else p for p in points]
