"""The tuned learning rate (Collins et al.'s protocol): ranking, successive halving inside a
pack, the choice on tuning seeds only, and the grid section."""

from __future__ import annotations

import dataclasses
import math

import pytest

from memgrid.config import ConfigError, Point
from memgrid.grid_file import parse_grid
from memgrid.train import PackTrainer, train_points
from memgrid.lr_tuning import LRTuning, choose_lr, measured_points, rank, tuning_points

AXES = {"arch": ["rnn"], "layers": [1], "cells": [2], "position": [1, 2], "seed": [0, 1]}


def test_rank_by_limit_then_mean_loss_and_diverged_last():
    rows = [  # lr, p, loss
        (0.1, 1, math.nan), (0.1, 2, 0.01),                        # diverged: last
        (0.01, 1, 0.01), (0.01, 2, 0.04), (0.01, 3, 0.25),          # limit 2, mean 0.1
        (0.03, 1, 0.02), (0.03, 2, 0.045), (0.03, 3, 0.2),          # limit 2, mean 0.088
        (0.003, 1, 0.01), (0.003, 2, 0.2), (0.003, 3, 0.2),         # limit 1
    ]
    assert rank(rows) == [0.03, 0.01, 0.003, 0.1]
    # the mean over seeds decides a position: 0.03 and 0.07 average to 0.05, not < 0.05
    assert rank([(1.0, 1, 0.03), (1.0, 1, 0.07), (2.0, 1, 0.2)]) == [1.0, 2.0]
    assert rank([(1.0, 1, 0.03), (1.0, 1, 0.06), (2.0, 1, 0.2)]) == [1.0, 2.0]


def test_rungs_round_to_evaluations():
    t = LRTuning(eta=2, rungs=2)
    assert t.rung_epochs(5000, 25) == [1250, 2500]
    assert t.rung_epochs(100, 30) == [30]            # 25 -> 0 (dropped), 50 -> 30
    assert LRTuning(rungs=0).rung_epochs(5000, 25) == []


BASE = Point(arch="rnn", layers=1, cells=2, position=1, seed=0, q_min=4, q_max=6, batch_size=32,
             max_epochs=120, eval_size=128, eval_every=20, plateau=False, solved_loss=0.0,
             mc_length=0)


def test_halving_inside_a_pack():
    """Four candidates, halved at epochs 30 and 60: two stop at 30, one at 60 (stop reason
    `eliminated`), the best trains to the end exactly as it would alone."""
    tuning = LRTuning(candidates=(1e-4, 0.003, 0.03, 50.0), seeds=(7, 8), eta=2, rungs=2)
    pts = tuning_points([dataclasses.replace(BASE, position=p) for p in (1, 2)], tuning)
    assert len(pts) == 2 * 4 * 2 and {p.seed for p in pts} == {7, 8}
    tuning_pts = [dataclasses.replace(p, max_epochs=120, eval_every=15) for p in pts]
    trainer = PackTrainer(tuning_pts, halving=tuning, lr_source="tuning")
    assert trainer.rungs == {30, 60}
    trainer.run()
    rows, _ = trainer.pop_finished()
    by_lr: dict[float, set] = {}
    for r in rows:
        by_lr.setdefault(r["lr"], set()).add((r["stop_reason"], r["epochs"]))
    assert by_lr[50.0] <= {("eliminated", 30), ("diverged", 15), ("diverged", 30)}
    assert by_lr[1e-4] == {("eliminated", 30)}
    assert by_lr[0.003] == {("eliminated", 60)}
    assert by_lr[0.03] == {("max_epochs", 120)}
    assert trainer.eliminated == {50.0, 1e-4, 0.003}
    # the survivor is what it would have been alone (pack invariance; bitwise on the C kernel)
    best = [p for p in tuning_pts if p.lr == 0.03]
    alone, _ = train_points(best)
    got = sorted((r["position"], r["seed"], r["loss"]) for r in rows if r["lr"] == 0.03)
    want = sorted((r["position"], r["seed"], r["loss"]) for r in alone)
    assert [g[:2] for g in got] == [w[:2] for w in want]
    assert [g[2] for g in got] == pytest.approx([w[2] for w in want], abs=1e-6)
    chosen = choose_lr(rows, tuning_pts)
    assert list(chosen.values()) == [0.03]
    measured = measured_points([dataclasses.replace(p, max_epochs=120, eval_every=15, seed=s)
                                for p in pts[:1] for s in (0, 1)], chosen)
    assert {p.lr for p in measured} == {0.03} and {p.seed for p in measured} == {0, 1}


def test_halving_survives_a_checkpoint():
    """A pack restored after the first rung goes on with the same candidates."""
    tuning = LRTuning(candidates=(1e-4, 0.003, 0.03, 0.01), seeds=(7,), eta=2, rungs=2)
    pts = [dataclasses.replace(p, max_epochs=120, eval_every=15)
           for p in tuning_points([BASE], tuning)]
    a = PackTrainer(pts, halving=tuning)
    while a.epoch < 45:
        a.run_epoch()
    state = a.state_dict()
    done = {r["point_id"] for r in a.pop_finished()[0]}
    b = PackTrainer(pts, halving=tuning)
    b.load_state_dict(state)
    b.drop(done)
    a.run(), b.run()
    assert b.eliminated == a.eliminated and len(a.eliminated) == 3
    # a retried trial also drops a point stored after its checkpoint (here the only member of
    # one of the two rates left): the next rung ranks without it, and the other trains on
    c = PackTrainer(pts, halving=tuning)
    c.load_state_dict(state)
    first = set(c.eliminated)
    gone = c.members[c.active[0]].point
    c.drop(done | {gone.point_id})
    c.run()
    assert len(first) == 2 and c.eliminated == first and c.done
    assert [r["stop_reason"] for r in c.pop_finished()[0]] == ["max_epochs"]
    assert [(r["lr"], r["stop_reason"], r["loss"]) for r in b.pop_finished()[0]] == \
        [(r["lr"], r["stop_reason"], r["loss"]) for r in a.pop_finished()[0]]


def test_grid_section_checks():
    g = parse_grid({"name": "t", "axes": AXES, "tune_lr": True})
    assert g.tune_lr == LRTuning() and "lr" not in g.fixed
    assert g.identity["tune_lr"]["seeds"] == [1000, 1001]
    g = parse_grid({"name": "t", "axes": AXES, "tune_lr": {"candidates": [0.01, 0.1],
                                                         "seeds": [5], "eta": 3, "rungs": 1}})
    assert g.tune_lr == LRTuning((0.01, 0.1), (5,), 3, 1)
    bad = [({"seeds": [1, 9]}, "tune_lr.seeds: [1] are also axes.seed"),
           ({"candidates": []}, "tune_lr.candidates"),
           ({"candidates": [0.1, -1.0]}, "tune_lr.candidates"),
           ({"eta": 1}, "eta must be >= 2"),
           ({"positions": [2, 3]}, "tune_lr.positions: distinct positions of axes.position"),
           ({"positions": 2}, "tune_lr.positions: a list"),
           ({"speed": 1}, "tune_lr.speed: unknown key")]
    for section, msg in bad:
        with pytest.raises(ConfigError, match=msg.replace("[", r"\[").replace("]", r"\]")):
            parse_grid({"name": "t", "axes": AXES, "tune_lr": section})
    with pytest.raises(ConfigError, match="train.lr: the learning rate is tuned"):
        parse_grid({"name": "t", "axes": AXES, "tune_lr": True, "train": {"lr": 0.01}})
    with pytest.raises(ConfigError, match="axes.lr: the learning rate is tuned"):
        parse_grid({"name": "t", "axes": {**AXES, "lr": [0.1, 0.01]}, "tune_lr": True})


def test_tuning_on_some_positions():
    axes = {**AXES, "position": [1, 2, 3, 4, 5], "seed": [0]}
    g = parse_grid({"name": "t", "axes": axes, "tune_lr": {"positions": [5, 2]}})
    assert g.tune_lr.positions == (2, 5)
    assert g.identity["tune_lr"]["positions"] == [2, 5]
    assert "positions" not in parse_grid({"name": "t", "axes": axes,
                                          "tune_lr": True}).identity["tune_lr"]
    assert LRTuning.from_dict(g.identity["tune_lr"]) == g.tune_lr
    assert LRTuning.from_dict(LRTuning().to_dict()) == LRTuning()
    tuned = tuning_points(g.points(), g.tune_lr)
    assert sorted({p.position for p in tuned}) == [2, 5] and len(tuned) == 2 * 4 * 2
    assert "on seeds 1000, 1001 at p = 2, 5 (" in g.tune_lr.describe()
    # the limit over the positions tuned counts them from the smallest: 0.01 passes p = 2 only
    rows = [(0.01, 2, 0.01), (0.01, 5, 0.2), (0.1, 2, 0.2), (0.1, 5, 0.01),
            (0.03, 2, 0.02), (0.03, 5, 0.04)]
    assert rank(rows) == [0.03, 0.01, 0.1]


def test_learning_rate_per_arch_and_protocols():
    from memgrid.config import PROTOCOLS, protocol_name

    axes = {**AXES, "arch": ["rnn", "lstm"]}
    g = parse_grid({"name": "t", "axes": axes, "train": {"lr": {"rnn": 0.01, "lstm": 0.03}}})
    assert {(p.arch, p.lr) for p in g.points()} == {("rnn", 0.01), ("lstm", 0.03)}
    with pytest.raises(ConfigError, match="train.lr: no value for arch lstm"):
        parse_grid({"name": "t", "axes": axes, "train": {"lr": {"rnn": 0.01}}})
    with pytest.raises(ConfigError, match="train.lr: must be a finite number > 0"):
        parse_grid({"name": "t", "axes": axes, "train": {"lr": {"rnn": 0.01, "lstm": 0.0}}})
    # a protocol fills what the file leaves open, and names the points' settings again
    for name in PROTOCOLS:
        g = parse_grid({"name": "t", "axes": axes, "protocol": name})
        assert {protocol_name(p.to_dict()) for p in g.points()} == {name}
    g = parse_grid({"name": "t", "axes": axes, "protocol": "paper", "train": {"lr": 0.5}})
    assert {protocol_name(p.to_dict()) for p in g.points()} == {"custom"}
    with pytest.raises(ConfigError, match="unknown protocol 'fast'"):
        parse_grid({"name": "t", "axes": axes, "protocol": "fast"})
    with pytest.raises(ConfigError, match=r"protocol: unknown protocol \{'paper': 1\}"):
        parse_grid({"name": "t", "axes": axes, "protocol": {"paper": 1}})     # not a name


@pytest.mark.slow
def test_tuned_grid_end_to_end(tmp_path):
    """`memgrid run` of a grid with tune_lr: the tuning run lands in tuning/ on the tuning seeds
    only; the points table holds the grid's seeds at the chosen rate, each row saying how it
    was chosen; the grid runs arch by arch (the RNN tuned and measured before the GRU is
    tuned), every phase on one embedded Ray; a second run trains nothing."""
    import pandas as pd

    from .conftest import memgrid_cli, write_grid
    from memgrid.grid_file import load_grid

    grid = write_grid(
        tmp_path / "tuned.yaml", name="tuned", protocol="paper",
        axes={"arch": ["rnn", "gru"], "layers": [1], "cells": [2], "position": "1..2",
              "seed": "0..1"},
        tune_lr={"candidates": [0.003, 0.03, 30.0], "seeds": [1000], "eta": 2, "rungs": 1},
        task={"q_min": 4, "q_max": 6},
        train={"max_epochs": 60, "eval_size": 128, "eval_every": 20, "batch_size": 32})
    out = tmp_path / "res"
    r = memgrid_cli("run", grid, "--out", out)
    assert r.returncode == 0, r.stderr
    tuning = pd.read_parquet(out / "tuning" / "points")
    points = pd.read_parquet(out / "points")
    assert sorted(tuning["seed"].unique()) == [1000] and len(tuning) == 12
    assert set(tuning["lr"]) == {0.003, 0.03, 30.0}
    assert (tuning["stop_reason"] == "eliminated").sum() >= 4      # halved at epoch 20
    assert tuning.loc[tuning["stop_reason"] == "eliminated", "epochs"].eq(20).all()
    assert sorted(points["seed"].unique()) == [0, 1] and len(points) == 8
    chosen = choose_lr(tuning.to_dict("records"),
                       tuning_points(load_grid(grid).points(), load_grid(grid).tune_lr))
    assert len(chosen) == 2
    for (arch, lr), n in points.groupby(["arch", "lr"]).size().items():
        assert n == 4 and chosen[next(k for k in chosen if dict(k)["arch"] == arch)] == lr
    assert points["lr_source"].str.startswith("tuned: best of lr 0.003, 0.03, 30 on seeds 1000").all()
    said = r.stdout + r.stderr
    stages = ["(rnn: tuning lr)]", "(rnn)]", "(gru: tuning lr)]", "(gru)]"]
    assert [said.find(s) for s in stages] == sorted(said.find(s) for s in stages)
    assert all(said.find(s) >= 0 for s in stages)
    assert said.count("starting Ray") == 1, said      # one embedded Ray for the four phases
    again = memgrid_cli("run", grid, "--out", out)
    assert again.returncode == 0 and "8/8 points stored (0 trained now" in again.stdout
    status = memgrid_cli("status", out)
    assert "12/12 tuning points done" in status.stdout
    assert "8/8 points done" in status.stdout
