"""The failure paths: bad input ends in one line (exit 2, nothing written), one writer per
results folder, damaged parts named, moved aside and trained again, reservoirs never
degenerate. Real files and real `memgrid` processes; Ray only where a run must train."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest
import torch

from memgrid import __version__
from memgrid.results import damaged_parts, done_ids, repair, write_grid_identity, write_points
from memgrid.rows import point_settings
from memgrid.run.preflight import prepare_out
from memgrid.config import ConfigError
from memgrid.grid_file import load_grid, parse_grid
from memgrid.results.lock import LOCK_NAME, FolderBusy, FolderLock

from .conftest import ROOT, memgrid_cli, write_grid

AXES = {"arch": ["rnn"], "layers": [1], "cells": [2], "position": "1..2", "seed": "0..1"}


def tree(folder: Path) -> list[str]:
    """Every path under `folder`, relative, sorted: what a command wrote."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def refused(r: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2 with one line `memgrid: error: ...` holding `words`, no traceback."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("memgrid: error: "), r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Input checked before Ray starts: exit 2, one line, nothing written.


@pytest.mark.parametrize("name", ["..", "../x", "a/b", "/abs", ".hidden", "a\\b", "x..y", ""])
def test_a_grid_name_that_is_not_a_plain_folder_name_is_refused(tmp_path, name):
    grid = write_grid(tmp_path / "g.yaml", name=name, axes=AXES)
    r = memgrid_cli("run", grid, cwd=tmp_path)             # default --out: results/<name>
    refused(r, "g.yaml", "name", "plain folder name")
    assert tree(tmp_path) == ["g.yaml"]


def test_out_that_is_or_sits_under_a_file_is_refused(tmp_path):
    grid = write_grid(tmp_path / "g.yaml", name="g", axes=AXES)
    (tmp_path / "afile").write_text("x")
    refused(memgrid_cli("run", grid, "--out", tmp_path / "afile"), "afile", "a file")
    refused(memgrid_cli("run", grid, "--out", tmp_path / "afile" / "sub" / "res"), "afile", "is a file")
    assert tree(tmp_path) == ["afile", "g.yaml"] and (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("text", ["[1, 2]", '"grid"', "3", "null"])
def test_grid_json_that_is_json_but_not_an_object_is_refused(tmp_path, text):
    grid = write_grid(tmp_path / "g.yaml", name="g", axes=AXES)
    out = tmp_path / "res"
    out.mkdir()
    (out / "grid.json").write_text(text)
    refused(memgrid_cli("run", grid, "--out", out), "grid.json", "not an object")
    refused(memgrid_cli("status", out), "grid.json", "not an object")
    assert tree(out) == ["grid.json"]


@pytest.mark.parametrize("sub", ["points", "curves"])
def test_a_results_subfolder_that_is_a_file_is_refused(tmp_path, sub):
    grid = write_grid(tmp_path / "g.yaml", name="g", axes=AXES)
    out = tmp_path / "res"
    out.mkdir()
    (out / sub).write_text("not a folder")
    refused(memgrid_cli("run", grid, "--out", out), f"res/{sub}", "not the folder")
    assert tree(out) == [sub]
    write_grid_identity(str(out), load_grid(grid).identity)   # so that status reads on
    refused(memgrid_cli("status", out), f"res/{sub}", "not the folder")
    refused(memgrid_cli("analyze", out), f"res/{sub}", "not the folder")
    assert tree(out) == sorted(["grid.json", sub])


ESN_BAD = [("leak_rate", 1.5), ("leak_rate", 0), ("leak_rate", -0.5), ("spectral_radius", 0),
           ("spectral_radius", -1), ("spectral_radius", float("inf")), ("spectral_radius", float("nan")),
           ("input_scaling", 0), ("input_scaling", float("inf")), ("connectivity", 0),
           ("connectivity", 1.5), ("ridge", -1e-3), ("ridge", float("nan"))]


@pytest.mark.parametrize("key,value", ESN_BAD, ids=[f"{k}={v}" for k, v in ESN_BAD])
def test_esn_settings_out_of_range_are_refused(key, value):
    raw = {"name": "e", "axes": {**AXES, "arch": ["esn"]}, "esn": {key: value}}
    with pytest.raises(ConfigError, match=rf"^e.yaml: esn.{key}: must be"):
        parse_grid(raw, "e.yaml")
    raw = {"name": "e", "axes": {**AXES, "arch": ["esn"], key: [0.5, value]}}     # as an axis
    with pytest.raises(ConfigError, match=rf"^e.yaml: axes.{key}: must be"):
        parse_grid(raw, "e.yaml")


def test_esn_too_sparse_to_have_a_loop_is_refused():
    raw = {"name": "e", "axes": {**AXES, "arch": ["esn"], "cells": [1, 10]},
           "esn": {"connectivity": 0.01}}
    with pytest.raises(ConfigError, match=r"^e.yaml: esn.connectivity: 0.01 is too sparse for 1 cells"):
        parse_grid(raw, "e.yaml")
    raw["axes"]["cells"] = [100]
    assert parse_grid(raw, "e.yaml").n_points == 4                     # 100 units: fine


def test_cli_esn_leak_rate_refused_before_anything_is_written(tmp_path):
    grid = write_grid(tmp_path / "e.yaml", name="e", axes={**AXES, "arch": ["esn"]},
                      esn={"leak_rate": 2.0})
    out = tmp_path / "res"
    refused(memgrid_cli("run", grid, "--out", out), "e.yaml", "esn.leak_rate", "(0, 1]")
    assert not out.exists()


@pytest.mark.parametrize("n", [0, -1])
def test_num_cpus_below_one_is_refused(tmp_path, n):
    grid = write_grid(tmp_path / "g.yaml", name="g", axes=AXES)
    out = tmp_path / "res"
    refused(memgrid_cli("run", grid, "--out", out, "--num-cpus", n), "--num-cpus", ">= 1")
    assert not out.exists()


def test_yaml_12_floats_are_floats(tmp_path):
    (tmp_path / "f.yaml").write_text(
        "name: f\n"
        "axes: {arch: [rnn], layers: [1], cells: [2], position: 1..2, seed: 0..1, lr: [1e-3, 1E-2, .5]}\n"
        "train: {momentum: 5e-1}\n"
        "stop: {solved_loss: 1.5e-2, plateau_tol: +1e-2}\n")
    g = load_grid(tmp_path / "f.yaml")
    assert g.axes["lr"] == [0.001, 0.01, 0.5] and g.axes["position"] == [1, 2]
    assert g.fixed["momentum"] == 0.5 and g.fixed["solved_loss"] == 0.015
    assert g.fixed["plateau_tol"] == 0.01 and isinstance(g.axes["seed"][0], int)


@pytest.mark.parametrize("text,where,line", [
    ("name: d\naxes: {arch: [rnn], layers: [1], cells: [2], position: 1, seed: 0}\n"
     "train: {lr: 0.1}\ntrain: {lr: 0.2}\n", "train", 4),
    ("name: d\naxes:\n  arch: [rnn]\n  layers: [1]\n  cells: [2]\n  position: 1\n  seed: 0\n"
     "train:\n  lr: 0.1\n  momentum: 0.5\n  lr: 0.2\n", "train.lr", 11),
    ("name: d\naxes: {arch: [rnn], arch: [gru], layers: [1], cells: [2], position: 1, seed: 0}\n",
     "axes.arch", 2),
])
def test_duplicate_keys_are_refused_naming_file_line_and_key(tmp_path, text, where, line):
    path = tmp_path / "d.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_grid(path)
    assert str(e.value).startswith(f"{path}: {where}: duplicate key at line {line}"), e.value
    out = tmp_path / "res"
    refused(memgrid_cli("run", path, "--out", out), "d.yaml", where, f"line {line}")
    assert not out.exists()


def test_a_grid_too_large_for_the_driver_is_refused_before_it_is_expanded(tmp_path):
    # 10^12 points: expanding them would never end, so passing means not expanded
    huge = {"name": "h", "axes": {"arch": ["rnn"], "layers": [1], "cells": "1..1000",
                                  "position": "1..1000", "seed": "0..999999"},
            "capacity": {"mc_length": 0}}      # no stream MC: its length bounds N otherwise
    grid = parse_grid(huge, "h.yaml")
    assert grid.n_points == 10**12
    big = write_grid(tmp_path / "big.yaml", name="big",
                     axes={"arch": ["rnn"], "layers": [1], "cells": "1..10", "position": "1..100",
                           "seed": "0..999"})
    out = tmp_path / "res"
    line = refused(memgrid_cli("run", big, "--out", out), "big.yaml", "1,000,000 points",
                   "more than 100,000", "GB", "--max-points")
    assert "about 2.3 GB and 50 s before the first trial" in line
    assert not out.exists()
    # the flag, or --smoke (8 points), lets it through: the next check (--out) answers
    (tmp_path / "afile").write_text("")
    refused(memgrid_cli("run", big, "--out", tmp_path / "afile", "--max-points", 10**6), "a file")
    refused(memgrid_cli("run", big, "--out", tmp_path / "afile", "--smoke"), "a file")
    # launch checks it here, before it reaches for any cluster (nobody serves that address)
    refused(memgrid_cli("launch", "--address", "http://127.0.0.1:9", big, "--out", out),
            "big.yaml", "1,000,000 points", "--max-points")
    assert not out.exists()


def test_a_range_too_long_to_expand_is_refused():
    with pytest.raises(ConfigError, match=r"axes.seed: '0..100000000' has 100,000,001 values"):
        parse_grid({"name": "r", "axes": {**AXES, "seed": "0..100000000"}}, "r.yaml")


# ---------------------------------------------------------------------------------------------
# One writer per results folder.


def test_lock_is_exclusive_and_released(tmp_path):
    out = tmp_path / "a" / "res"
    held = FolderLock(str(out))
    held.acquire()
    assert (out / LOCK_NAME).exists()
    info = json.loads((out / LOCK_NAME).read_text())
    assert info["pid"] == os.getpid() and info["host"]
    with pytest.raises(FolderBusy, match=rf"{out}: another memgrid run .*pid {os.getpid()}"):
        FolderLock(str(out)).acquire()                      # a second holder, same process
    held.release()
    assert not (tmp_path / "a").exists()                   # it made them; nothing else came
    with FolderLock(str(out)):
        (out / "grid.json").write_text("{}")
    assert tree(tmp_path) == ["a", "a/res", "a/res/grid.json"]   # its own file goes


def test_lock_of_a_killed_holder_is_free(tmp_path):
    out = tmp_path / "res"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from memgrid.results.lock import FolderLock; "
         "FolderLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)", str(out)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusy, match=rf"pid {holder.pid} "):
            FolderLock(str(out)).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / LOCK_NAME).exists()                      # left behind by the kill
    with FolderLock(str(out)):                             # and not stuck
        pass


def test_run_into_a_held_folder_ends_at_once_naming_the_holder(tmp_path):
    grid = write_grid(tmp_path / "g.yaml", name="g", axes=AXES)
    out = tmp_path / "res"
    with FolderLock(str(out)):
        line = refused(memgrid_cli("run", grid, "--out", out), str(out),
                       "another memgrid run is writing", f"pid {os.getpid()}", "--out")
        assert tree(out) == [LOCK_NAME]                    # no grid.json, no parts
    assert "Traceback" not in line


def test_best_effort_lock_on_an_object_store(tmp_path, monkeypatch):
    """Where there is no flock (s3://, ...): a lock object; stale when its holder on this host
    is gone, respected when it is elsewhere."""
    import pyarrow.fs as pafs
    import memgrid.results.lock as lock_mod
    fs = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())   # not a LocalFileSystem
    monkeypatch.setattr(lock_mod, "resolve", lambda uri: (fs, "res"))
    path = tmp_path / "res" / LOCK_NAME
    with FolderLock("s3://bucket/res"):
        assert json.loads(path.read_text())["pid"] == os.getpid()
        with pytest.raises(FolderBusy, match=f"pid {os.getpid()}"):
            FolderLock("s3://bucket/res").acquire()
    assert not path.exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    me = json.loads(json.dumps(lock_mod._me()))
    path.write_text(json.dumps({**me, "pid": int(dead)}))          # its holder is gone
    with FolderLock("s3://bucket/res"):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    path.write_text(json.dumps({**me, "host": "elsewhere", "pid": 1}))
    with pytest.raises(FolderBusy, match="pid 1 on elsewhere"):
        FolderLock("s3://bucket/res").acquire()


# ---------------------------------------------------------------------------------------------
# Damaged parts.


def fake_rows(points, grid_name, pack_id):
    rows, curves = [], []
    for p in points:
        row = point_settings(p, grid_name)
        row.update(units=p.units, params=p.params, epochs=40, stop_reason="max_epochs",
                   loss=0.01 * p.position, best_loss=0.01 * p.position, r2=0.5, mc_stream=None,
                   wall_s=0.1, pack_id=pack_id, device="cpu", memgrid_version=__version__,
                   finished_at=datetime.now(timezone.utc))
        rows.append(row)
        curves += [dict(point_id=p.point_id, epoch=e, train_loss=0.2, eval_loss=0.2) for e in (0, 20, 40)]
    return rows, curves


def stored_folder(tmp_path: Path, grid_file: Path, n_parts: int = 4) -> tuple[Path, list[str]]:
    """A results folder of every point of the grid, in `n_parts` parts as a run writes them."""
    grid = load_grid(grid_file)
    out = tmp_path / "res"
    prepare_out(grid, str(out))
    pts = grid.points()
    parts = []
    for i in range(n_parts):
        part = f"pack-{i:012d}-0000"
        rows, curves = fake_rows(pts[i::n_parts], grid.name, part[:-5])
        write_points(str(out), part, rows, curves)
        parts.append(part)
    return out, parts


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_status_and_analyze_name_a_damaged_part_and_go_on(tmp_path, tiny_grid):
    out, parts = stored_folder(tmp_path, tiny_grid)
    truncate(out / "points" / f"{parts[0]}.parquet")
    (out / "curves" / f"{parts[1]}.parquet").write_bytes(b"garbage" * 100)
    r = memgrid_cli("status", out)
    assert r.returncode == 0, r.stderr
    warnings = r.stderr.strip().splitlines()
    assert len(warnings) == 2 and all(w.startswith("memgrid: warning: ") for w in warnings)
    assert f"points/{parts[0]}.parquet: unreadable part" in warnings[0]
    assert f"curves/{parts[1]}.parquet: unreadable part" in warnings[1]
    assert "12/16 points done, 4 missing" in r.stdout
    r = memgrid_cli("analyze", out)
    assert r.returncode == 0, r.stderr
    assert [w for w in r.stderr.splitlines() if "unreadable" in w] == warnings
    assert (out / "report" / "report.md").exists()


def test_repair_moves_damaged_and_orphaned_parts_aside_and_drops_repeats(tmp_path, tiny_grid):
    out, parts = stored_folder(tmp_path, tiny_grid, n_parts=4)
    pts = load_grid(tiny_grid).points()
    truncate(out / "points" / f"{parts[0]}.parquet")                       # points part
    (out / "curves" / f"{parts[1]}.parquet").write_bytes(b"\0" * 64)        # curves part
    (out / "points" / f"{parts[2]}.parquet").unlink()                       # a write cut short
    lost = {p.point_id for p in pts[0::4] + pts[1::4] + pts[2::4]}
    # two writers before the lock: one part with only points stored before, one with one more
    write_points(str(out), "pack-8-0000", *fake_rows(pts[3::4][:2], "tiny", "pack-8"))
    write_points(str(out), "pack-9-0000", *fake_rows([pts[3], pts[2]], "tiny", "pack-9"))
    msgs = repair(str(out))
    assert len(msgs) == 5 and all("\n" not in m for m in msgs)
    assert "written again with the other 1 only" in msgs[-1]
    assert damaged_parts(str(out)) == []
    both = lambda part: [f"curves/{part}.parquet", f"points/{part}.parquet"]  # noqa: E731
    assert tree(out / "damaged") == sorted(
        ["curves", "points", f"curves/{parts[2]}.parquet", *both(parts[0]), *both(parts[1]),
         *both("pack-8-0000"), *both("pack-9-0000")])                      # kept as they were
    points = pd.read_parquet(out / "points")                               # plain pandas
    curves = pd.read_parquet(out / "curves")
    assert points.point_id.is_unique and not curves.duplicated(["point_id", "epoch"]).any()
    assert set(points.point_id) == {p.point_id for p in pts} - lost | {pts[2].point_id}
    assert set(curves.point_id) == set(points.point_id)
    assert points.set_index("point_id").loc[pts[3].point_id, "pack_id"] == parts[3][:-5]
    assert done_ids(str(out)) == set(points.point_id)               # the rest is trained
    assert repair(str(out)) == []                                    # nothing left to do


def test_repair_removes_the_files_of_writes_a_kill_cut_short_before_their_rename(tmp_path,
                                                                                 tiny_grid):
    """A writer killed between its write and its rename leaves a hidden file (a whole part
    here, grid.json, a saved pack): nothing reads it and it is no result, so repair removes it;
    the stored points and another hidden file stay as they were."""
    out, parts = stored_folder(tmp_path, tiny_grid)
    before = pd.read_parquet(out / "points")
    whole = (out / "points" / f"{parts[0]}.parquet").read_bytes()
    (out / "points" / ".tmp-pack-000000000009-0000-0badc0de.parquet").write_bytes(whole)
    (out / "curves" / ".tmp-pack-000000000009-0000-0badc0de.parquet").write_bytes(whole[:99])
    (out / ".tmp-grid.json-0badc0de").write_text("{")
    (out / "packs").mkdir(exist_ok=True)
    (out / "packs" / ".tmp-pack-000000000009.pt-0badc0de").write_bytes(b"state")
    (out / "points" / ".keep").write_text("")             # hidden, but no write of memgrid's
    msgs = repair(str(out))
    assert msgs == [f"{out}: 4 unfinished writes (hidden .tmp-* files a kill left before their "
                    "rename) removed"]
    assert not [f for f in out.rglob(".tmp-*")] and (out / "points" / ".keep").exists()
    pd.testing.assert_frame_equal(pd.read_parquet(out / "points"), before)
    assert repair(str(out)) == []


@pytest.mark.slow
def test_run_moves_a_damaged_part_aside_and_trains_exactly_its_points(tmp_path, tiny_grid):
    out, parts = stored_folder(tmp_path, tiny_grid)
    truncate(out / "points" / f"{parts[2]}.parquet")
    r = memgrid_cli("run", tiny_grid, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    assert "16/16 points stored (4 trained now, 12 before)" in r.stdout
    assert f"points/{parts[2]}.parquet: unreadable" in r.stderr
    assert (out / "damaged" / "points" / f"{parts[2]}.parquet").exists()
    assert (out / "damaged" / "curves" / f"{parts[2]}.parquet").exists()
    points, curves = pd.read_parquet(out / "points"), pd.read_parquet(out / "curves")
    assert len(points) == 16 and points.point_id.is_unique
    assert not curves.duplicated(["point_id", "epoch"]).any()
    assert set(curves.point_id) == set(points.point_id)
    assert not (out / LOCK_NAME).exists()
    r = memgrid_cli("status", out)
    assert r.returncode == 0 and r.stderr == "" and "16/16 points done" in r.stdout


# ---------------------------------------------------------------------------------------------
# Reservoirs.


@pytest.mark.parametrize("N", [1, 2, 3, 5, 10])
def test_every_reservoir_has_the_requested_spectral_radius(N):
    """At the defaults (connectivity 0.1) most small draws are nilpotent (radius 0): they are
    drawn again from the seed's stream, so every reservoir has the radius it asks for."""
    from memgrid.esn import init_reservoirs
    seeds = torch.arange(300)
    res = init_reservoirs(seeds, N, spectral_radius=0.9, connectivity=0.1)
    radius = torch.linalg.eigvals(res.w).abs().amax(-1)
    torch.testing.assert_close(radius, torch.full((300,), 0.9, dtype=torch.float64))
    again = init_reservoirs(seeds[[7, 1, 2]], N, spectral_radius=0.9, connectivity=0.1)
    assert torch.equal(again.w, res.w[[7, 1, 2]])                          # pure in the seed


# ---------------------------------------------------------------------------------------------
# A trial whose worker is lost (its node died) and that Tune gives up on: another round.


def _faulty_trainer():
    """Ray's worker setup hook: in each worker, PackTrainer first reads the counter in
    $MEMGRID_TEST_FAULTS/calls, adds one, and then, as $MEMGRID_TEST_FAULTS/mode says, ends its
    worker process at the first call ("die": the worker lost, as when its node dies) or raises
    at every call ("raise": the training's own error; "raise ARCH": for packs of ARCH only)."""
    import os
    from pathlib import Path

    from memgrid import train

    folder, init = Path(os.environ["MEMGRID_TEST_FAULTS"]), train.PackTrainer.__init__

    def faulty_init(self, *args, **kwargs):
        calls = int((folder / "calls").read_text()) + 1
        (folder / "calls").write_text(str(calls))
        mode = (folder / "mode").read_text()
        if mode == "die" and calls == 1:
            os._exit(1)
        if mode == "raise" or mode == f"raise {args[0][0].arch}":
            raise ValueError("a bug in the training")
        init(self, *args, **kwargs)

    train.PackTrainer.__init__ = faulty_init


@pytest.fixture(scope="module")
def faulty_ray(tmp_path_factory):
    """A local Ray whose workers run :func:`_faulty_trainer`, and the folder that drives it."""
    ray = pytest.importorskip("ray")
    faults = tmp_path_factory.mktemp("faults")
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])   # the hook's module
    ray.init(num_cpus=1, include_dashboard=False,
             runtime_env={"worker_process_setup_hook": _faulty_trainer,
                          "env_vars": {"PYTHONPATH": path, "MEMGRID_TEST_FAULTS": str(faults)}})
    try:
        yield faults
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_points_of_a_trial_lost_with_its_worker_train_in_another_round(tmp_path, tiny_grid,
                                                                       faulty_ray, capsys):
    """When a node dies, its trial's dead actor can report the loss twice and Tune ends the
    trial for good at the second report (memgrid.run.driver.lost_worker), which a real cluster test
    meets only by chance. Here the loss is made by construction: with no retries by Tune
    (max_failures=0), the one pack's worker ends itself at its first call, Tune gives the trial
    up, and the next round trains its points. A training that raises gets no second round."""
    from memgrid.run.driver import run_points

    faults = faulty_ray
    grid = load_grid(tiny_grid)
    points = [p for p in grid.points() if p.arch == "rnn" and p.position == 1]   # one pack
    for mode, want_calls, want_done, want_failed in (("die", 2, len(points), 0),
                                                     ("raise", 1, 0, 1)):
        out = str(tmp_path / mode)
        prepare_out(grid, out)
        (faults / "calls").write_text("0")
        (faults / "mode").write_text(mode)
        summary = run_points(grid, points, out, address="local", max_failures=0)
        assert int((faults / "calls").read_text()) == want_calls, mode
        assert (summary["done"], summary["failed_trials"]) == (want_done, want_failed), mode
        another = "[tiny] 1 trial lost its worker: another round for the 4 points left"
        assert (another in capsys.readouterr().err) == (mode == "die")


@pytest.mark.slow
def test_a_failed_tuning_trial_holds_back_its_configuration_only(tmp_path, faulty_ray, capsys):
    """A tuned grid whose RNN tuning pack fails for good (no retries by Tune): the GRU after it
    is still tuned and measured, the RNN's points wait and are named, and the next run, the
    fault gone, tunes and measures them, each point stored once."""
    from memgrid.run.driver import run_grid

    grid = load_grid(write_grid(
        tmp_path / "tuned.yaml", name="tuned",
        axes={"arch": ["rnn", "gru"], "layers": [1], "cells": [2], "position": "1..2",
              "seed": "0..1"},
        tune_lr={"candidates": [0.003, 0.03], "seeds": [1000], "eta": 2, "rungs": 1},
        task={"q_min": 4, "q_max": 6},
        train={"max_epochs": 40, "eval_size": 128, "eval_every": 20, "batch_size": 32}))
    out = str(tmp_path / "res")
    prepare_out(grid, out)
    (faulty_ray / "calls").write_text("0")
    (faulty_ray / "mode").write_text("raise rnn")
    first = run_grid(grid, out, address="local", max_failures=0)
    said = capsys.readouterr().err
    assert "[tuned] rnn: 4 points wait for a learning rate: a failed tuning trial" in said
    assert said.index("rnn: 4 points wait") < said.index("(gru: tuning lr)")
    stored = pd.read_parquet(f"{out}/points")
    assert first["failed_trials"] == 1 and first["done"] == 4 == len(stored)
    assert set(stored["arch"]) == {"gru"} and stored["lr_source"].str.startswith("tuned").all()
    (faulty_ray / "mode").write_text("")
    second = run_grid(grid, out, address="local", max_failures=0)
    assert "wait for a learning rate" not in capsys.readouterr().err
    stored = pd.read_parquet(f"{out}/points")
    assert (second["done"], second["failed_trials"], len(stored)) == (8, 0, 8)
    assert stored["point_id"].is_unique and set(stored["arch"]) == {"rnn", "gru"}
