"""The walk (a grid's `walk:` section, :class:`memgrid.config.Walk`): each configuration's
positions train upward, a band at a time, until its memory limit is settled; the positions past
that are left out.

A configuration is everything of a point but its position and seed. Its memory limit is the
largest p whose mean loss over seeds is below THRESHOLD at every p' <= p, and each seed's own
limit is the same walk on its own losses (memgrid.analysis.limits). Once the mean has failed at
`past` positions in a row and every seed has failed at one of the positions so far, no higher
position changes the limit, a seed's limit, or the limit at a stricter threshold: those
positions are left out. Which points remain follows from the stored losses alone, so that a
run, its resumption, `status` and `--dry-run` agree on them. Ray-free and torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .config import THRESHOLD, Grid, Point, Walk
from .results import read_points

__all__ = ["WalkPlan", "configuration", "left_out", "plan", "replay", "stored_losses"]


def configuration(p: Point) -> tuple:
    """The point's configuration: every setting but its position and seed."""
    return tuple((k, v) for k, v in p.to_dict().items() if k not in ("position", "seed"))


@dataclass
class WalkPlan:
    """Where a walk stands on the stored losses: `next`, the points of each open
    configuration's next band not stored yet (what the next round trains); `left_out`, the
    points past a settled limit not stored (what the walk never trains); `settled`, how many
    configurations have their limit settled, of `configurations`."""

    next: list[Point] = field(default_factory=list)
    left_out: list[Point] = field(default_factory=list)
    settled: int = 0
    configurations: int = 0
    bands: set[tuple[int, int]] = field(default_factory=set)
    """the first and last position of each open configuration's next band"""

    def span(self) -> str:
        """The next round's bands: `p 5..8`, `p 5..8, 9..12`, `p 1..4 to 17..20` (more than
        three bands)."""
        bands = [f"{a}..{b}" for a, b in sorted(self.bands)]
        return "p " + (", ".join(bands) if len(bands) <= 3 else f"{bands[0]} to {bands[-1]}")


def stored_losses(out: str) -> dict[str, float]:
    """point_id -> evaluation loss of every point stored in `out` (NaN for a diverged one)."""
    t = read_points(out, columns=["point_id", "loss"]).to_pydict()
    return {i: math.nan if v is None else float(v) for i, v in zip(t["point_id"], t["loss"])}


def left_out(grid: Grid, out: str, points: list[Point]) -> list[Point]:
    """The points of `points` (some of `grid`'s, at their learning rates) that its walk leaves
    out past settled limits, given what the results folder `out` stores; none without a walk."""
    if grid.walk is None:
        return []
    return plan(points, stored_losses(out), grid.walk).left_out


def _failed(loss: float, threshold: float) -> bool:
    return not loss < threshold     # NaN (diverged) fails, as in the limit's walk


def plan(points: list[Point], losses: dict[str, float], walk: Walk,
         threshold: float = THRESHOLD) -> WalkPlan:
    """The walk over `points` (a grid's, at their learning rates) given `losses` (point_id ->
    loss of the stored ones: :func:`stored_losses`).

    Per configuration, its positions (in order) are cut into bands of `walk.band`. Going up
    them: a position with a point not stored ends the look, and its band's points not stored
    are `next`; a position whose points are all stored counts as failed where the mean of its
    losses is not below `threshold` (a non-finite loss makes the mean fail) and fails each seed
    whose own loss is not below it. Once `walk.past` positions in a row have failed and every
    seed of the configuration has failed somewhere, the limit is settled: the points above
    that position not stored are `left_out`."""
    configs: dict[tuple, dict[int, list[Point]]] = {}
    for p in points:
        configs.setdefault(configuration(p), {}).setdefault(p.position, []).append(p)
    out = WalkPlan(configurations=len(configs))
    for by_position in configs.values():
        positions = sorted(by_position)
        seeds = {p.seed for pts in by_position.values() for p in pts}
        failed_seeds: set[int] = set()
        in_row = 0
        for i, pos in enumerate(positions):
            pts = by_position[pos]
            if any(p.point_id not in losses for p in pts):
                band = positions[i // walk.band * walk.band:(i // walk.band + 1) * walk.band]
                out.next += [p for q in band for p in by_position[q] if p.point_id not in losses]
                out.bands.add((band[0], band[-1]))
                break
            own = [losses[p.point_id] for p in pts]
            failed_seeds |= {p.seed for p, loss in zip(pts, own) if _failed(loss, threshold)}
            in_row = in_row + 1 if _failed(sum(own) / len(own), threshold) else 0
            if in_row >= walk.past and failed_seeds >= seeds:
                out.left_out += [p for q in positions[i + 1:] for p in by_position[q]
                                 if p.point_id not in losses]
                out.settled += 1
                break
    return out


def replay(points: list[Point], losses: dict[str, float], walk: Walk,
           threshold: float = THRESHOLD) -> set[str]:
    """The point_ids a walk over `points` trains where training gives `losses` (point_id ->
    loss, every point's: a whole grid's run): round after round of :func:`plan` until no
    configuration has a next band. What the walk would have left out of a run that trained
    every point is the rest."""
    stored: dict[str, float] = {}
    while True:
        step = plan(points, stored, walk, threshold)
        if not step.next:
            return set(stored)
        stored.update({p.point_id: losses[p.point_id] for p in step.next})
