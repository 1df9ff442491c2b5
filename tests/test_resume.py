"""A long grid resumed on another machine: its results folder copied to another place, or
reached through a pyarrow URI, and `memgrid run` there trains exactly what is missing.

The stopped run is made without Ray and without timing: the first packs' trials, run by the
trainable itself (memgrid.tune.pack_trial), write their parts as they would have before a
stop; the resumed run is `memgrid run` on a real embedded Ray."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from memgrid.request import prepare_out
from memgrid.config import load_grid
from memgrid.packs import pack_spec, plan_packs
from memgrid.tune import pack_trial

from .conftest import memgrid_cli

pytestmark = pytest.mark.slow


def stopped_midway(grid_file, out: str, monkeypatch, n_packs: int = 2) -> None:
    """`out` as a run of `grid_file` stopped after its first `n_packs` packs of 4 leaves it:
    grid.json and those packs' parts, written by their trials."""
    tune = pytest.importorskip("ray.tune")
    monkeypatch.setattr(tune, "report", lambda metrics, **kw: None)    # no Tune session here
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    grid = load_grid(grid_file)
    prepare_out(grid, out)
    for pk in plan_packs(grid.points(), 4, slots=1)[:n_packs]:
        pack_trial({"pack": pack_spec(pk), "out": out, "grid": grid.name, "cpus": 1, "gpus": 0,
                    "lr_source": grid.lr_source, "halving": None})


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
    stopped_midway(tiny_grid, where(here), monkeypatch)
    points, curves = read(here)
    assert len(points) == 8 and points.point_id.is_unique
    shutil.copytree(here, there)
    shutil.rmtree(tmp_path / "here")
    if how == "file-uri":
        r = memgrid_cli("compact", where(there))
        assert r.returncode == 0, r.stderr
        assert "parts (points + curves) -> 1 + 1, 8 points" in r.stdout

    r = memgrid_cli("run", tiny_grid, "--out", where(there))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{where(there)}: 16/16 points stored (8 trained now, 8 before)" in r.stdout
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
