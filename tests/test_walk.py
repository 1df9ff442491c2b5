"""The walk (`walk:`): positions past a settled limit left out, every limit kept."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from memgrid.analysis.limits import limits_with_seeds
from memgrid.config import THRESHOLD, ConfigError, Point, Walk
from memgrid.grid_file import grid_from_identity, parse_grid
from memgrid.run.preflight import grown_identity
from memgrid.walk import WalkPlan, plan, replay

from .conftest import memgrid_cli, write_grid

PASS, FAIL = 0.01, 0.2


def _points(cells=(2,), positions=range(1, 9), seeds=range(2)) -> list[Point]:
    return [Point(arch="rnn", layers=1, cells=c, position=p, seed=s)
            for c in cells for p in positions for s in seeds]


def _table(points: list[Point], losses: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame([dict(arch=p.arch, layers=p.layers, cells=p.cells, position=p.position,
                              seed=p.seed, loss=losses[p.point_id])
                         for p in points if p.point_id in losses])


@pytest.mark.parametrize("band,past", [(1, 1), (4, 1), (1, 2), (2, 2), (3, 2), (4, 2), (5, 3)])
def test_the_walk_keeps_every_limit_the_whole_grid_gives(band, past):
    """On losses drawn as training gives them (each seed memorizes up to its own limit, with
    noise, a pass past a failure now and then, diverged seeds), the walk's points give the same
    limit of the mean, the same limit of every seed and the same limits at stricter thresholds
    as the whole grid, while leaving points out."""
    rng = np.random.default_rng(band * 10 + past)
    points = _points(cells=range(2, 10), positions=range(1, 21), seeds=range(5))
    reach = {(c, s): int(rng.integers(0, 12)) for c in range(2, 10) for s in range(5)}
    losses = {}
    for p in points:
        ok = p.position <= reach[p.cells, p.seed] or rng.random() < 0.08
        loss = rng.uniform(0.001, 0.049) if ok else rng.uniform(0.03, 0.25)
        losses[p.point_id] = math.nan if rng.random() < 0.01 else loss
    kept = replay(points, losses, Walk(band=band, past=past))
    assert 0 < len(kept) < 0.8 * len(points)
    full, walked = _table(points, losses), _table(points, {i: losses[i] for i in kept})
    cols = ["arch", "layers", "cells", "limit", "seed_limit_min", "seed_limit_median",
            "seed_limit_max", "seeds_reaching", "limit_0.05", "limit_0.02", "limit_0.01",
            "limit_censored", "loss_next"]
    pd.testing.assert_frame_equal(limits_with_seeds(walked)[cols], limits_with_seeds(full)[cols])


def test_a_band_at_a_time_until_the_mean_fails_twice_and_every_seed_has_failed():
    points = _points()      # p 1..8, seeds 0, 1
    walk = Walk(band=3, past=2)
    at = {(p.position, p.seed): p for p in points}
    step = plan(points, {}, walk)
    assert sorted((p.position, p.seed) for p in step.next) == [(q, s) for q in (1, 2, 3)
                                                               for s in (0, 1)]
    assert not step.left_out and step.settled == 0 and step.configurations == 1
    assert step.span() == "p 1..3"
    # seed 1 holds p 1..3 while the mean fails at p 2 and 3: not settled, the next band
    losses = {at[q, 0].point_id: (PASS if q == 1 else FAIL) for q in (1, 2, 3)}
    losses |= {at[q, 1].point_id: PASS for q in (1, 2, 3)}
    step = plan(points, losses, walk)
    assert sorted((p.position, p.seed) for p in step.next) == [(q, s) for q in (4, 5, 6)
                                                               for s in (0, 1)]
    # a band stored in part: its other points next
    losses[at[4, 1].point_id] = FAIL
    step = plan(points, losses, walk)
    assert sorted((p.position, p.seed) for p in step.next) == [(4, 0), (5, 0), (5, 1), (6, 0),
                                                               (6, 1)]
    assert step.span() == "p 4..6"
    # seed 1 fails at p 4: settled there, p 5..8 left out though p 5 and 6 were its band
    losses[at[4, 0].point_id] = FAIL
    step = plan(points, losses, walk)
    assert step.next == [] and step.settled == 1
    assert sorted((p.position, p.seed) for p in step.left_out) == [(q, s) for q in (5, 6, 7, 8)
                                                                   for s in (0, 1)]
    # with past = 3 the mean's failures at 2, 3, 4 settle it too; with past = 4 they do not
    assert plan(points, losses, Walk(band=3, past=3)).settled == 1
    assert plan(points, losses, Walk(band=3, past=4)).settled == 0


def test_a_diverged_seed_fails_and_its_mean_fails():
    points = _points(positions=range(1, 5))
    at = {(p.position, p.seed): p for p in points}
    losses = {at[q, 0].point_id: math.nan for q in (1, 2)}
    losses |= {at[q, 1].point_id: PASS for q in (1, 2)}
    step = plan(points, losses, Walk(band=2, past=2))
    assert step.settled == 0 and {p.position for p in step.next} == {3, 4}   # seed 1 held
    losses |= {at[3, 1].point_id: THRESHOLD, at[3, 0].point_id: PASS}
    assert plan(points, losses, Walk(band=2, past=2)).settled == 0   # p 3: mean 0.03, a pass
    losses[at[3, 0].point_id] = FAIL
    step = plan(points, losses, Walk(band=1, past=2))   # 0.05 is no pass: seed 1 failed at 3
    assert step.settled == 1 and {p.position for p in step.left_out} == {4}


def test_configurations_walk_apart():
    """Each configuration (all but position and seed, the learning rate too) walks alone."""
    points = _points(cells=(2, 3), positions=range(1, 7))
    points += [Point(arch="rnn", layers=1, cells=2, position=p, seed=s, lr=0.1)
               for p in range(1, 7) for s in range(2)]
    losses = {p.point_id: (FAIL if p.cells == 2 and p.lr != 0.1 else PASS)
              for p in points if p.position <= 2}
    step = plan(points, losses, Walk(band=2, past=2))
    assert step.settled == 1 and step.configurations == 3
    assert {(p.cells, p.lr) for p in step.left_out} == {(2, Point.lr)}
    assert step.span() == "p 3..4"                      # the two open ones, both at their 2nd
    losses |= {p.point_id: PASS for p in points if p.cells == 3 and p.position in (3, 4)}
    assert plan(points, losses, Walk(band=2, past=2)).span() == "p 3..4, 5..6"   # apart
    assert WalkPlan(bands={(1, 2), (3, 4), (5, 6), (7, 8)}).span() == "p 1..2 to 7..8"
    assert {(p.cells, p.lr, p.position) for p in step.next} == {
        (c, lr, q) for c, lr in ((3, Point.lr), (2, 0.1)) for q in (3, 4)}


def _grid(**extra):
    return {"name": "w", "axes": {"arch": ["rnn"], "layers": [1], "cells": [2],
                                  "position": "1..4", "seed": "0..1"}, **extra}


def test_the_walk_section_reads_strictly():
    assert parse_grid(_grid(walk=True), "g.yaml").walk == Walk(4, 1)
    assert parse_grid(_grid(walk={"band": 2, "past": 2}), "g.yaml").walk == Walk(2, 2)
    assert parse_grid(_grid(), "g.yaml").walk is None
    for bad, where in [({"band": 0}, "walk.band"), ({"past": -1}, "walk.past"),
                       ({"bnad": 2}, "walk.bnad"), ({"band": 2.5}, "walk.band"), (3, "walk")]:
        with pytest.raises(ConfigError, match=rf"g\.yaml: {where}\b"):
            parse_grid(_grid(walk=bad), "g.yaml")


def test_the_walk_is_recorded_and_a_folder_takes_the_newest_walk(tmp_path):
    walked = parse_grid(_grid(walk={"band": 2, "past": 2}), "g.yaml")
    plain = parse_grid(_grid(), "g.yaml")
    ident = json.loads(json.dumps(walked.identity))
    assert ident["walk"] == {"band": 2, "past": 2}
    assert grid_from_identity(ident, check=True).walk == Walk(2, 2)
    assert [p.point_id for p in walked.points()] == [p.point_id for p in plain.points()]
    assert grown_identity(walked, str(tmp_path), json.loads(json.dumps(plain.identity)))["walk"] \
        == {"band": 2, "past": 2}
    assert "walk" not in grown_identity(plain, str(tmp_path), ident)


@pytest.mark.slow
def test_a_walked_run_trains_up_to_its_settled_limits_and_resumes_to_nothing(tmp_path):
    """A real run: every point at lr 1e-6 fails, so each configuration settles at p = 2 and
    p 3, 4 are left out; `status` and a second run agree, and the second drops a pack saved
    mid-training of those points; the grid without its walk trains them."""
    sections = dict(name="walk", axes={"arch": ["rnn"], "layers": [1], "cells": [2, 3],
                                       "position": "1..4", "seed": "0..1"},
                    task={"q_min": 4, "q_max": 6},
                    train={"max_epochs": 4, "eval_size": 64, "eval_every": 2, "batch_size": 16,
                           "lr": 1e-6})
    grid = write_grid(tmp_path / "walk.yaml", **sections, walk={"band": 1, "past": 2})
    out = tmp_path / "out"
    dry = memgrid_cli("run", grid, "--out", out, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "each open configuration, 4 points" in dry.stdout, dry.stdout
    r = memgrid_cli("run", grid, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "8/16 points stored" in r.stdout and "8 past settled limits left out" in r.stdout
    assert "next p 2..2" in r.stderr
    assert r.stderr.count("starting Ray") == 1, r.stderr      # one Ray for both rounds
    from memgrid.results import read_points
    stored = read_points(str(out)).to_pandas()
    assert sorted(stored["position"]) == [1] * 4 + [2] * 4 and (stored["loss"] >= THRESHOLD).all()
    s = memgrid_cli("status", out)
    assert "8/16 points done, 8 past settled limits left out" in s.stdout
    assert "0 missing" in s.stdout
    # a pack saved mid-training before the walk settled its points goes; another stays
    from memgrid.grid_file import load_grid
    from memgrid.packs import pack_id, pack_spec
    from memgrid.results import saved_packs, write_pack_state

    past = [p for p in load_grid(grid).points() if p.position >= 3]
    other = [Point("gru", 1, 2, 1, 0)]
    for pk in (past, other):
        write_pack_state(str(out), pack_id(pk), pack_spec(pk), b"state")
    again = memgrid_cli("run", grid, "--out", out)
    assert again.returncode == 0 and "0 trained now" in again.stdout, again.stdout + again.stderr
    assert set(saved_packs(str(out))) == {pack_id(other)}
    whole = memgrid_cli("run", write_grid(tmp_path / "whole.yaml", **sections), "--out", out)
    assert whole.returncode == 0 and "16/16 points stored (8 trained now" in whole.stdout
    assert "no walk: every point of the axes trains" in whole.stderr
