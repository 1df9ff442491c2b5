"""A results folder grows with its grid: a grid whose axes list other values than the folder's
grid.json, every other setting unchanged, trains only its points that the folder lacks, and the
folder's grid.json becomes the union; a change to anything that shaped the stored points is
refused in one line naming it (memgrid.run.preflight.grown_identity).

The stored points are trained by the trainable itself (memgrid.run.trial.pack_trial) without
Ray, as a run's trials write them; the growing run is `memgrid run` on a real embedded Ray."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import pytest

from memgrid.config import ConfigError
from memgrid.grid_file import grid_from_identity, load_grid, parse_grid
from memgrid.packs import pack_spec, plan_packs
from memgrid.run.preflight import grown_identity, prepare_out

from .conftest import memgrid_cli, write_grid

BASE = {"name": "tiny",
        "axes": {"arch": ["rnn"], "layers": [1], "cells": [2], "position": "1..2", "seed": "0..1"},
        "task": {"q_min": 4, "q_max": 6},
        "train": {"max_epochs": 40, "eval_size": 128, "eval_every": 20, "batch_size": 32}}
"""4 points (rnn, l 1, c 2, p 1..2, seeds 0..1) that train in a second or two"""


def raw(**changes) -> dict:
    """BASE with `section__key=value` changes (`axes__seed="0..3"`, `train__lr=0.03`)."""
    out = copy.deepcopy(BASE)
    for k, v in changes.items():
        section, key = k.split("__")
        out.setdefault(section, {})[key] = v
    return out


def identity(**changes) -> dict:
    """grid.json of BASE with `changes`, as it reads back from the file."""
    return json.loads(json.dumps(parse_grid(raw(**changes), "g.yaml").identity))


def grown(old: dict, **changes) -> dict:
    return grown_identity(parse_grid(raw(**changes), "g.yaml"), "R", old)


def files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, path -> content."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def stored(grid_file: Path, out: Path, monkeypatch) -> None:
    """`out` as a finished run of `grid_file` leaves it (before compaction): grid.json and
    every pack's parts, written by the packs' trials."""
    tune = pytest.importorskip("ray.tune")
    from memgrid.run.trial import pack_trial

    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)    # no Tune trial around it here
    monkeypatch.setattr(tune, "report", lambda metrics, **kw: None)
    grid = load_grid(grid_file)
    prepare_out(grid, str(out))
    config = {"out": str(out), "grid": grid.name, "cpus": 1, "gpus": 0,
              "lr_source": grid.lr_source, "halving": None}
    for pk in plan_packs(grid.points(), 4, slots=1):
        pack_trial({"pack": pack_spec(pk), **config})


# ---------------------------------------------------------------------------------------------
# The union, and what is refused (no training).


def test_the_union_adds_each_axis_values_after_the_folder_ones():
    old = identity()
    assert grown(old) == old
    u = grown(old, axes__seed="0..3")
    assert u["axes"]["seed"] == [0, 1, 2, 3] and u["fixed"] == old["fixed"]
    assert {k: v for k, v in u["axes"].items() if k != "seed"} == \
        {k: v for k, v in old["axes"].items() if k != "seed"}
    # another arch, other seeds, and the folder's arch and seeds left out: they stay
    u = grown(old, axes__arch=["gru"], axes__seed=[5], axes__cells=[3, 2], axes__position=[4])
    assert u["axes"] == {"arch": ["rnn", "gru"], "layers": [1], "cells": [2, 3],
                         "position": [1, 2, 4], "seed": [0, 1, 5]}
    # the union is a grid whose points hold both grids' points
    both = {p.point_id for p in grid_from_identity(u, check=True).points()}
    assert {p.point_id for p in grid_from_identity(old).points()} <= both
    assert {p.point_id for p in parse_grid(raw(axes__arch=["gru"], axes__seed=[5],
                                               axes__cells=[3, 2], axes__position=[4]),
                                           "g.yaml").points()} <= both
    assert len(both) == 2 * 1 * 2 * 3 * 3


def test_a_per_arch_setting_may_add_the_value_of_a_new_arch():
    old = identity(train__lr={"rnn": 0.01})
    u = grown(old, axes__arch=["rnn", "lstm"], train__lr={"rnn": 0.01, "lstm": 0.03})
    assert u["fixed"]["lr"] == {"rnn": 0.01, "lstm": 0.03}
    assert u["axes"]["arch"] == ["rnn", "lstm"]
    with pytest.raises(ConfigError, match=r"fixed\.lr\.rnn \(0\.01 there, 0\.02 here\)"):
        grown(old, train__lr={"rnn": 0.02})


@pytest.mark.parametrize("changes, named", [
    (dict(train__lr=0.03), "fixed.lr (0.01 there, 0.03 here)"),
    (dict(task__q_max=7), "fixed.q_max (6 there, 7 here)"),
    (dict(stop__patience=10), "fixed.patience (2000 there, 10 here)"),
    (dict(name__x=None), "name ('tiny' there, 'other' here)"),
    (dict(axes__lr=[0.01, 0.03]), "axes.lr: an axis here, not there"),
    (dict(protocol__x=None), "fixed.lr (0.01 there, 0.003 here)"),
], ids=["lr", "task", "stop", "name", "axis", "protocol"])
def test_a_change_to_what_shaped_the_stored_points_is_refused_naming_it(changes, named):
    old = identity()
    r = raw(**{k: v for k, v in changes.items() if not k.endswith("__x")})
    if "name__x" in changes:
        r["name"] = "other"
    if "protocol__x" in changes:      # another protocol: its settings where the file has none
        r["protocol"] = "paper"
    if "axes__lr" in changes:
        r["train"].pop("lr", None)
    with pytest.raises(ConfigError) as e:
        grown_identity(parse_grid(r, "g.yaml"), "R", old)
    assert str(e.value) == (f"R/grid.json: this results folder holds another grid: {named}; "
                            "use another --out")


def test_a_tuned_grid_grows_by_seeds_and_configurations_not_by_what_its_tuning_reads():
    def tuned(**changes) -> dict:
        r = raw(**changes)
        r["tune_lr"] = r.get("tune_lr") or {"seeds": [100]}
        return r

    old = json.loads(json.dumps(parse_grid(tuned(), "g.yaml").identity))
    u = grown_identity(parse_grid(tuned(axes__seed="0..4", axes__cells=[2, 3]), "g.yaml"), "R", old)
    assert u["axes"]["seed"] == [0, 1, 2, 3, 4] and u["axes"]["cells"] == [2, 3]
    assert u["tune_lr"] == old["tune_lr"]
    with pytest.raises(ConfigError, match=r"axes\.position \(\[1, 2\] there, \[1, 2, 3\] here\): "
                                          r"the learning rate is tuned \(tune_lr\) on every "
                                          r"position of the grid"):
        grown_identity(parse_grid(tuned(axes__position="1..3"), "g.yaml"), "R", old)
    with pytest.raises(ConfigError, match=r"tune_lr\.eta \(2 there, 3 here\)"):
        grown_identity(parse_grid(tuned() | {"tune_lr": {"seeds": [100], "eta": 3}}, "g.yaml"),
                       "R", old)
    # tuned on named positions: others may be added
    named = {"seeds": [100], "positions": [1]}
    old = json.loads(json.dumps(parse_grid(tuned() | {"tune_lr": named}, "g.yaml").identity))
    u = grown_identity(parse_grid(tuned(axes__position="1..3") | {"tune_lr": named}, "g.yaml"),
                       "R", old)
    assert u["axes"]["position"] == [1, 2, 3]


def test_a_union_that_is_no_grid_is_refused():
    old = identity(axes__arch=["esn"], axes__cells=[20])
    with pytest.raises(ConfigError, match=r"the union of its axes and this grid's is no grid "
                                          r"\(axes\.layers: esn has one reservoir layer"):
        grown(old, axes__arch=["rnn"], axes__cells=[20], axes__layers=[1, 2])


def test_a_run_that_changes_lr_is_refused_in_one_line_writing_nothing(tmp_path):
    out = tmp_path / "res"
    prepare_out(load_grid(write_grid(tmp_path / "g.yaml", **BASE)), str(out))
    before = files(out)
    r = memgrid_cli("run", write_grid(tmp_path / "lr.yaml", **raw(train__lr=0.03)), "--out", out)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"memgrid: error: {out}/grid.json: this results folder holds another grid: fixed.lr "
        "(0.01 there, 0.03 here); use another --out"]
    assert files(out) == before


# ---------------------------------------------------------------------------------------------
# Growing a folder that holds points.


def test_the_dry_run_says_how_the_folder_grows_and_what_trains(tmp_path, monkeypatch):
    out = tmp_path / "res"
    stored(write_grid(tmp_path / "g.yaml", **BASE), out, monkeypatch)
    before = files(out)
    more = write_grid(tmp_path / "more.yaml", **raw(axes__seed="1..3", axes__arch=["rnn", "gru"]))
    r = memgrid_cli("run", more, "--out", out, "--dry-run")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[1:4] == [
        f"  {out}: grid.json grows to hold this grid too: arch gru; seed 2, 3",
        f"  {out}: this grid leaves out the folder's seed 0: what the folder stores of them stays",
        f"  points: 12; stored in {out}: 2; to train: 10"], r.stdout
    assert files(out) == before                       # a dry run writes nothing


@pytest.mark.slow
def test_a_finished_grid_grows_by_seeds_then_by_an_arch(tmp_path, monkeypatch):
    """Only the new points train; every point is stored once; the stored rows stay as they
    were; grid.json holds the union."""
    out = tmp_path / "res"
    stored(write_grid(tmp_path / "g.yaml", **BASE), out, monkeypatch)
    first = pd.read_parquet(out / "points").sort_values("point_id").reset_index(drop=True)
    assert len(first) == 4

    seeds = write_grid(tmp_path / "seeds.yaml", **raw(axes__seed="0..3"))
    r = memgrid_cli("run", seeds, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{out}: 8/8 points stored (4 trained now, 4 before)" in r.stdout
    assert f"memgrid: {out}: grid.json grows to hold this grid too: seed 2, 3" in r.stderr
    after = pd.read_parquet(out / "points")
    assert len(after) == 8 and after.point_id.is_unique
    assert set(after.point_id) == {p.point_id for p in load_grid(seeds).points()}
    kept = after.set_index("point_id").loc[first.point_id].reset_index()
    pd.testing.assert_frame_equal(kept, first)                   # not trained again
    assert json.loads((out / "grid.json").read_text()) == \
        json.loads(json.dumps(load_grid(seeds).identity))

    arch = write_grid(tmp_path / "arch.yaml", **raw(axes__seed="0..3", axes__arch=["rnn", "gru"]))
    r = memgrid_cli("run", arch, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{out}: 16/16 points stored (8 trained now, 8 before)" in r.stdout
    final = pd.read_parquet(out / "points")
    assert len(final) == 16 and final.point_id.is_unique
    assert set(final[final.arch == "gru"].seed) == {0, 1, 2, 3}
    curves = pd.read_parquet(out / "curves")
    assert not curves.duplicated(["point_id", "epoch"]).any()
    assert set(curves.point_id) == set(final.point_id)
    grid_json = json.loads((out / "grid.json").read_text())
    assert grid_json["axes"]["arch"] == ["rnn", "gru"] and grid_json["axes"]["seed"] == [0, 1, 2, 3]
    r = memgrid_cli("status", out)
    assert r.returncode == 0 and "16/16 points done, 0 missing" in r.stdout, r.stdout
