"""A long grid resumed on another machine: its results folder copied to another place, or
reached through a pyarrow URI, and `memgrid run` there trains exactly what is missing.

The stopped run is made without Ray and without timing: the first packs' trials, run by the
trainable itself (memgrid.run.trial.pack_trial), write their parts as they would have before a
stop; the resumed run is `memgrid run` on a real embedded Ray."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch

from memgrid.run.preflight import prepare_out
from memgrid.grid_file import load_grid
from memgrid.packs import pack_id, pack_spec, plan_packs, spec_points
from memgrid.train import train_points
from memgrid.run.trial import pack_trial

from .conftest import memgrid_cli

pytestmark = pytest.mark.slow


class Stopped(Exception):
    """the run stops here (a kill, a machine taken away)"""


def stopped_midway(grid_file, out: str, monkeypatch, n_packs: int = 2) -> list:
    """`out` as a run of `grid_file` stopped after its first `n_packs` packs of 4 and in the
    middle of the next one leaves it: grid.json, those packs' parts, written by their trials,
    and the next pack's state, saved by its trial at its first evaluation. Returns that pack."""
    tune = pytest.importorskip("ray.tune")
    from memgrid.run import trial as memgrid_trial

    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)          # no Tune trial around it here
    grid = load_grid(grid_file)
    prepare_out(grid, out)
    packs = plan_packs(grid.points(), 4, slots=1)
    config = {"out": out, "grid": grid.name, "cpus": 1, "gpus": 0, "lr_source": grid.lr_source,
              "halving": None}
    monkeypatch.setattr(tune, "report", lambda metrics, **kw: None)
    for pk in packs[:n_packs]:
        pack_trial({"pack": pack_spec(pk), **config})

    def stop_at_checkpoint(metrics, checkpoint=None):
        if checkpoint is not None:
            raise Stopped

    monkeypatch.setattr(tune, "report", stop_at_checkpoint)
    monkeypatch.setattr(memgrid_trial, "REPORT_S", 0.0)       # report at the first evaluation,
    monkeypatch.setattr(memgrid_trial, "CHECKPOINT_S", 0.0)   # with a checkpoint
    with pytest.raises(Stopped):
        pack_trial({"pack": pack_spec(packs[n_packs]), **config})
    return packs[n_packs]


def read(folder) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Points and curves as plain pandas reads them (no reader dedup), in a fixed order."""
    points = pd.read_parquet(folder / "points").sort_values("point_id")
    curves = pd.read_parquet(folder / "curves").sort_values(["point_id", "epoch"])
    return points.reset_index(drop=True), curves.reset_index(drop=True)


@pytest.mark.parametrize("how", ["path", "file-uri"])
def test_a_copied_folder_resumes_elsewhere_training_only_what_is_missing(tiny_grid, tmp_path,
                                                                         monkeypatch, how):
    """Copied to another place (the first removed: nothing of it is needed), then resumed
    there by path, or by a file:// URI after `memgrid compact` through the same URI."""
    here, there = tmp_path / "here" / "res", tmp_path / "there" / "res"
    where = (lambda p: str(p)) if how == "path" else (lambda p: f"file://{p}")
    midway = stopped_midway(tiny_grid, where(here), monkeypatch)
    points, curves = read(here)
    # two packs' points, and those of the third that stopped by its first evaluation
    early = [p.point_id for p in midway if p.point_id in set(points.point_id)]
    n = len(points)
    assert n == 8 + len(early) and len(early) < 4 and points.point_id.is_unique
    shutil.copytree(here, there)
    shutil.rmtree(tmp_path / "here")
    # the pack stopped mid-training: saved at epoch 20 of 60; its wall time set so high that
    # its rows show whether the run continued it or trained it again from epoch 0
    pid = pack_id(midway)
    state_file = there / "packs" / f"{pid}.pt"
    state = torch.load(state_file, weights_only=True)
    assert state["epoch"] == 20 and len(state["active"]) == 4 - len(early)
    state["wall_s"] = 1e6
    torch.save(state, state_file)
    r = memgrid_cli("status", where(there))
    assert r.returncode == 0 and "packs saved mid-training in" in r.stdout and ": 1; the next run" in r.stdout, r.stdout
    if how == "file-uri":
        r = memgrid_cli("compact", where(there))
        assert r.returncode == 0, r.stderr
        assert f"parts (points + curves) -> 1 + 1, {n} points" in r.stdout

    r = memgrid_cli("run", tiny_grid, "--out", where(there))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{where(there)}: 16/16 points stored ({16 - n} trained now, {n} before)" in r.stdout
    assert "1 pack saved mid-training by an earlier run: continuing" in r.stderr
    # its trial tells the progress line the epoch it began at; the new packs began at 0
    began = {}
    for d in (there / "_tune").glob("*/*/"):
        if (d / "result.json").is_file():
            pk = json.loads((d / "params.json").read_text())["pack"]
            first = json.loads((d / "result.json").read_text().splitlines()[0])
            began[spec_points(pk)[0]] = first["epoch_start"]
    assert began.pop(pid) == 20 and began and set(began.values()) == {0}
    assert not list((there / "packs").glob("*"))                # forgotten once stored
    assert "-> 1 + 1, 16 points" in r.stdout                   # and compacted once complete
    after, after_curves = read(there)
    assert len(after) == 16 and after.point_id.is_unique
    assert set(after.point_id) == {p.point_id for p in load_grid(tiny_grid).points()}
    kept = after.set_index("point_id").loc[points.point_id].reset_index()
    pd.testing.assert_frame_equal(kept, points)                # not trained again: the same rows
    assert not after_curves.duplicated(["point_id", "epoch"]).any()
    assert set(after_curves.point_id) == set(after.point_id)
    old = after_curves[after_curves.point_id.isin(points.point_id)].reset_index(drop=True)
    pd.testing.assert_frame_equal(old, curves)                 # and their curves as they were
    assert len(list((there / "points").glob("*.parquet"))) == 1
    assert len(list((there / "curves").glob("*.parquet"))) == 1
    # the stopped pack went on from its state, to what training it in one go gives
    cont = after.set_index("point_id").loc[[p.point_id for p in midway if p.point_id not in early]]
    assert (cont.wall_s > 1e6).all()
    rows, _ = train_points(midway)
    for row in (r for r in rows if r["point_id"] not in early):
        got = cont.loc[row["point_id"]]
        assert (got.epochs, got.stop_reason, got.loss, got.best_loss) == \
            (row["epochs"], row["stop_reason"], row["loss"], row["best_loss"])
