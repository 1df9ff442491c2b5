"""End to end through the CLI on a real local Ray: Parquet rows, packing, kill and resume."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pyarrow.dataset as pads
import pytest

from memgrid.results import CURVE_SCHEMA, POINT_SCHEMA

from .conftest import ROOT, memgrid_cli, stored_parts, write_grid

pytestmark = pytest.mark.slow


def read(out):
    return pd.read_parquet(out / "points"), pd.read_parquet(out / "curves")


def test_run_writes_one_row_per_point_and_rerun_trains_nothing(tiny_grid, tmp_path):
    out = tmp_path / "res"
    t0 = time.time()
    r = memgrid_cli("run", tiny_grid, "--out", out)
    wall = time.time() - t0
    assert r.returncode == 0, r.stderr
    assert "16/16 points stored (16 trained now, 0 before)" in r.stdout
    points, curves = read(out)
    assert len(points) == 16 and points.point_id.is_unique
    assert list(points.columns) == POINT_SCHEMA.names
    assert list(curves.columns) == CURVE_SCHEMA.names
    assert pads.dataset(out / "points").schema.equals(POINT_SCHEMA)
    assert set(points.stop_reason) <= {"solved", "plateau", "max_epochs", "diverged"}
    assert (points.units == points.cells * points.layers).all()
    assert set(curves.point_id) == set(points.point_id)
    assert curves.groupby("point_id").epoch.max().to_dict() == points.set_index("point_id").epochs.to_dict()

    # the real-grid benchmark's timing of this folder, from its rows and Tune's reports
    from memgrid.run.timing import timing
    d = timing(str(out), 2, {"core": 1e11, "machine": 2e11}, started=t0)
    assert d["points"] == 16 and d["trials"] == d["packs"] == points.pack_id.nunique()
    assert 0 < d["wall_s"] <= wall and d["phases"]["train"] > 0 and d["phases"]["mc"] > 0
    assert d["trials_s"] <= 2 * d["wall_s"] and sum(d["phases"].values()) <= d["trials_s"]
    assert d["before_s"] > 0 and d["flops"] > 0

    r = memgrid_cli("run", tiny_grid, "--out", out)
    assert r.returncode == 0 and "(0 trained now, 16 before)" in r.stdout
    again, _ = read(out)
    assert len(again) == 16

    r = memgrid_cli("status", out)
    assert r.returncode == 0 and "16/16 points done, 0 missing" in r.stdout


def test_pack_1_and_packed_give_the_same_losses(tmp_path):
    grid = write_grid(   # the tiny grid on two seeds: a trial per point is what costs here
        tmp_path / "tiny2.yaml", name="tiny2",
        axes={"arch": ["rnn", "gru"], "layers": [1], "cells": [2], "position": "1..2", "seed": "0..1"},
        task={"q_min": 4, "q_max": 6},
        train={"max_epochs": 60, "eval_size": 128, "eval_every": 20, "batch_size": 32})
    a, b = tmp_path / "packed", tmp_path / "single"
    assert memgrid_cli("run", grid, "--out", a, "--pack", "auto").returncode == 0
    assert memgrid_cli("run", grid, "--out", b, "--pack", "1").returncode == 0
    pa_, ca = read(a)
    pb, cb = read(b)
    assert pa_.pack_id.nunique() < pb.pack_id.nunique() == 8
    m = pa_.merge(pb, on="point_id", suffixes=("_a", "_b"))
    assert len(m) == 8
    assert (m.loss_a - m.loss_b).abs().max() <= 1e-6
    assert (m.stop_reason_a == m.stop_reason_b).all() and (m.epochs_a == m.epochs_b).all()
    cm = ca.merge(cb, on=["point_id", "epoch"])
    assert len(cm) == len(ca) == len(cb)
    assert (cm.eval_loss_x - cm.eval_loss_y).abs().max() <= 1e-6


def _interrupt(grid, out, sig) -> pd.DataFrame:
    """A run of `grid` into `out`, ended by `sig` once it has stored two more points (SIGKILL:
    to its whole process group, the driver and its embedded Ray at once); the points stored
    then."""
    start = len(stored_parts(out))
    proc = subprocess.Popen([sys.executable, "-m", "memgrid.cli", "run", str(grid), "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 240
    while len(stored_parts(out)) < start + 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "finished before it could be interrupted"
    if sig == signal.SIGKILL:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if sig != signal.SIGKILL:      # memgrid's own line, not Tune's advice; 128 + the signal
        assert proc.returncode == 128 + sig, err
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"memgrid: interrupted: {out}: ") and \
            last.endswith(" points stored; run the same command again to finish"), err
        assert "Tuner.restore" not in err and "FileNotFoundError" not in err, err
    # a worker may complete a write already under way when the driver dies: let it land
    seen, quiet_since = len(stored_parts(out)), time.time()
    while time.time() - quiet_since < 3:
        time.sleep(0.2)
        if len(stored_parts(out)) != seen:
            seen, quiet_since = len(stored_parts(out)), time.time()
    return pd.read_parquet(out / "points")


def test_interrupted_runs_resume_without_retraining_or_duplicates(tmp_path):
    """Ctrl-C, SIGTERM and a kill, each ending a run of the same grid into the same folder:
    each run after one trains only what is missing, and the last finishes the grid with every
    point stored once and none trained twice (same row, same part, same finish time)."""
    grid = write_grid(
        tmp_path / "g.yaml", name="killme",
        axes={"arch": ["rnn"], "layers": [1], "cells": [2], "position": "1..3", "seed": "0..5"},
        task={"q_min": 4, "q_max": 6},
        train={"max_epochs": 400, "eval_size": 128, "eval_every": 20, "batch_size": 32},
        stop={"plateau": False}, resources={"pack": 1})
    out = tmp_path / "res"
    before = _interrupt(grid, out, signal.SIGINT)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        now = _interrupt(grid, out, sig)
        assert len(before) + 2 <= len(now) < 18 and now.point_id.is_unique, sig
        kept = now.set_index("point_id").loc[before.point_id]
        assert (kept.finished_at.values == before.finished_at.values).all(), sig
        before = now

    r = memgrid_cli("run", grid, "--out", out)
    assert r.returncode == 0, r.stderr
    after = pd.read_parquet(out / "points")
    assert len(after) == 18 and after.point_id.is_unique
    kept = after.set_index("point_id").loc[before.point_id]
    # finished points were not trained again: same rows, same part, same finish time
    assert (kept.finished_at.values == before.finished_at.values).all()
    assert (kept.pack_id.values == before.pack_id.values).all()
    assert f"({18 - len(before)} trained now, {len(before)} before)" in r.stdout
