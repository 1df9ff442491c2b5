"""Nothing wrong is ever read as a result: a results folder inside another's tables, a part
lacking a column, a saved pack state of another pack, a write that fails halfway, a compaction
stopped by a signal; and every row says which code path trained it. Real Parquet folders, real
trainers, real `memgrid` processes; Ray only where a run must train."""

from __future__ import annotations

import io
import os
import shutil
import signal
import stat
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from memgrid.fast import kernels
from memgrid.processes import Interrupted, STOP_SIGNALS
from memgrid.results import (COMPACTING, SCHEMA_VERSION, check_folder, check_results, compact,
                             damaged_parts, done_ids, read_curves, read_points, repair,
                             saved_packs, write_pack_state, write_points)
from memgrid.results import upkeep
from memgrid.results.upkeep import _compaction
from memgrid.rows import point_row
from memgrid.config import Point
from memgrid.grid_file import load_grid
from memgrid.results.lock import LOCK_NAME
from memgrid.packs import pack_id, pack_spec
from memgrid.train import PackTrainer, state_mismatch
from memgrid.run.driver import private_auth_token
from memgrid.run.progress import Progress
from memgrid.run.trial import check_saved

from .conftest import ROOT, memgrid_cli
from .test_failures import fake_rows, refused, stored_folder, tree

# ---------------------------------------------------------------------------------------------
# A results folder inside another's tables.


@pytest.mark.parametrize("sub", ["points", "curves/x", "packs", "damaged/points/y"])
def test_a_results_folder_inside_another_ones_tables_is_refused(tmp_path, tiny_grid, sub):
    out, _ = stored_folder(tmp_path, tiny_grid)
    before = tree(out)
    r = memgrid_cli("run", tiny_grid, "--out", out / sub)
    refused(r, str(out / sub), f"inside {sub.split('/')[0]}/ of the results folder {out}")
    assert tree(out) == before                                   # nothing written
    with pytest.raises(ValueError, match="inside"):
        check_results(str(out / sub))
    check_folder(str(tmp_path / "elsewhere" / "points"), write=True)   # no grid.json above


def test_a_folder_inside_points_is_damage_moved_aside_not_read_as_points(tmp_path, tiny_grid):
    """A results folder written into another's points/ (as an older memgrid let `--out R/points`
    do): its rows are not R's points; status names it, run's repair moves it aside, and then
    plain pandas reads R's points once."""
    out, parts = stored_folder(tmp_path / "a", tiny_grid)
    inner, _ = stored_folder(tmp_path / "b", tiny_grid)             # every point of the grid
    (out / "points" / f"{parts[0]}.parquet").unlink()               # R lacks 4 points ...
    (out / "curves" / f"{parts[0]}.parquet").unlink()
    shutil.move(str(inner), str(out / "points" / "nested"))         # ... that the nested holds
    pts = load_grid(tiny_grid).points()
    mine = {p.point_id for p in pts} - {p.point_id for p in pts[0::4]}
    assert done_ids(str(out)) == mine
    assert len(read_curves(str(out))) == 3 * len(mine)
    assert damaged_parts(str(out)) == [(f"{out}/points/nested", "a folder, not a part file")]
    r = memgrid_cli("status", out)
    assert r.returncode == 0 and "12/16 points done, 4 missing" in r.stdout, r.stderr
    assert "points/nested: unreadable part (a folder, not a part file)" in r.stderr
    msgs = repair(str(out))
    assert len(msgs) == 1 and msgs[0].startswith(f"{out}/points/nested: a folder"), msgs
    assert (out / "damaged" / "points" / "nested" / "grid.json").exists()   # kept as it was
    points = pd.read_parquet(out / "points")
    assert set(points.point_id) == mine and points.point_id.is_unique
    assert damaged_parts(str(out)) == [] and repair(str(out)) == []


# ---------------------------------------------------------------------------------------------
# Parts lacking a column; the schema's versions.


def _rewrite(path: Path, drop: list[str], version: int | None = None) -> None:
    """The part at `path` without the columns `drop`, recorded as schema `version` (None: as
    it was; 1: no version recorded, as the first memgrid wrote)."""
    t = pq.read_table(path).drop_columns(drop)
    meta = dict(t.schema.metadata or {})
    meta.pop(b"memgrid.schema", None)
    if version != 1:
        meta[b"memgrid.schema"] = str(version or SCHEMA_VERSION).encode()
    pq.write_table(t.replace_schema_metadata(meta), path)


def test_a_part_lacking_a_column_its_version_has_is_damaged_and_moved_aside(tmp_path, tiny_grid):
    out, parts = stored_folder(tmp_path, tiny_grid)
    pts = load_grid(tiny_grid).points()
    _rewrite(out / "points" / f"{parts[1]}.parquet", ["stop_reason"])
    lost = {p.point_id for p in pts[1::4]}
    assert done_ids(str(out)) == {p.point_id for p in pts} - lost     # never read as done
    assert set(read_points(str(out)).column("stop_reason").to_pylist()) == {"max_epochs"}
    [(path, why)] = damaged_parts(str(out))
    assert path == f"{out}/points/{parts[1]}.parquet" and "stop_reason" in why
    r = memgrid_cli("status", out)
    assert "12/16 points done, 4 missing" in r.stdout and "stop_reason" in r.stderr, r.stderr
    msgs = repair(str(out))
    assert len(msgs) == 1 and "stop_reason" in msgs[0] and "with its curves part" in msgs[0]
    assert tree(out / "damaged") == ["curves", f"curves/{parts[1]}.parquet", "points",
                                     f"points/{parts[1]}.parquet"]
    assert set(pd.read_parquet(out / "points").point_id) == {p.point_id for p in pts} - lost


@pytest.mark.parametrize("version,drop,damaged", [
    (1, ["optimizer", "lr_schedule", "kernel"], False),   # the first parts: read as sgd, constant
    (2, ["kernel"], False),                               # kernel came with version 3
    (2, ["lr_schedule"], True),
    (3, ["kernel"], True),
    (1, ["loss"], True),
])
def test_a_column_is_required_from_the_version_that_added_it(tmp_path, tiny_grid, version, drop,
                                                             damaged):
    out, parts = stored_folder(tmp_path, tiny_grid, n_parts=2)
    _rewrite(out / "points" / f"{parts[0]}.parquet", drop, version)
    got = read_points(str(out)).to_pandas().set_index("point_id")
    assert len(got) == (8 if damaged else 16)
    assert [p for p, _ in damaged_parts(str(out))] == (
        [f"{out}/points/{parts[0]}.parquet"] if damaged else [])
    if not damaged:
        old = got[got.pack_id == parts[0][:-5]]
        assert old.kernel.isna().all()
        if "optimizer" in drop:
            assert set(old.optimizer) == {"sgd"} and set(old.lr_schedule) == {"constant"}


def test_the_shipped_folders_read_whole():
    """Every shipped part: versions 1 and 2, some without optimizer and lr_schedule, none with
    kernel; none of them damaged."""
    data = ROOT / "docs" / "data"
    folders = sorted(p.parent for p in data.glob("*/grid.json"))
    assert folders
    for d in folders:
        assert damaged_parts(str(d)) == [], d.name
        assert read_points(str(d), columns=["point_id", "kernel"]).num_rows > 0


# ---------------------------------------------------------------------------------------------
# Writes: a point whole or not at all.


def test_a_value_the_schema_cannot_hold_writes_nothing(tmp_path, tiny_grid):
    out, _ = stored_folder(tmp_path, tiny_grid, n_parts=1)
    before = tree(out)
    p = Point("rnn", 1, 2, 1, 2**31)
    rows, curves = fake_rows([p], "tiny", "pack-x")
    with pytest.raises(pa.ArrowException):
        write_points(str(out), "pack-x-0000", rows, curves)
    assert tree(out) == before


def test_a_points_part_that_fails_to_land_takes_its_curves_with_it(tmp_path, tiny_grid):
    out, _ = stored_folder(tmp_path, tiny_grid, n_parts=1)
    before = tree(out)
    blocker = out / "points" / "pack-y-0000.parquet"
    blocker.mkdir()                        # the rename onto it fails: a folder with a file in it
    (blocker / "x").write_text("x")
    pts = load_grid(tiny_grid).points()[:2]
    with pytest.raises(OSError):
        write_points(str(out), "pack-y-0000", *fake_rows(pts, "tiny", "pack-y"))
    assert tree(out) == sorted(before + ["points/pack-y-0000.parquet",
                                         "points/pack-y-0000.parquet/x"])   # no curves, no tmp


# ---------------------------------------------------------------------------------------------
# Saved pack states.


def _pack(positions, seed=0):
    return [Point("rnn", 1, 2, p, seed, max_epochs=40, eval_every=20, eval_size=64)
            for p in positions]


def _blob(trainer: PackTrainer) -> bytes:
    b = io.BytesIO()
    torch.save(trainer.state_dict(), b)
    return b.getvalue()


def test_a_saved_state_carries_its_ids_and_another_packs_is_refused(tmp_path, capfd):
    a, b, c = _pack((1, 2)), _pack((3, 4)), _pack((5, 6))          # the same shapes
    ta, tb = (PackTrainer(pk, pack_id=pack_id(pk)) for pk in (a, b))
    state = ta.state_dict()
    assert state["pack_id"] == pack_id(a) and state["point_ids"] == [p.point_id for p in a]
    assert state_mismatch(state, pack_id(a), [p.point_id for p in a]) is None
    with pytest.raises(ValueError, match="pack"):
        tb.load_state_dict(state)                               # refused before it changes
    assert tb.epoch == 0
    out = str(tmp_path / "res")
    write_pack_state(out, pack_id(a), pack_spec(a), _blob(tb))   # swapped
    write_pack_state(out, pack_id(b), pack_spec(b), _blob(ta))
    write_pack_state(out, pack_id(c), pack_spec(c), b"\x80garbage")
    d = _pack((7, 8))
    write_pack_state(out, pack_id(d), pack_spec(d),
                     _blob(PackTrainer(d, pack_id=pack_id(d))))
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:   # the damaged state: one line, no more
        warnings.simplefilter("always")
        assert check_saved(out, [a, b, c, d]) == [d]
    assert [str(w.message) for w in caught] == []
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.endswith("the pack starts afresh") for line in err), err
    assert "unreadable" in err[2] and "continuing" not in " ".join(err)
    assert set(saved_packs(out)) == {pack_id(d)}
    assert sorted(p.name for p in (tmp_path / "res" / "damaged" / "packs").iterdir()) == sorted(
        f"{pack_id(pk)}.{e}" for pk in (a, b, c) for e in ("json", "pt"))


def test_garbage_and_finished_packs_are_tidied_so_status_announces_none(tmp_path, tiny_grid):
    out, _ = stored_folder(tmp_path, tiny_grid)                      # every point stored
    pts = load_grid(tiny_grid).points()
    packs = out / "packs"
    write_pack_state(str(out), pack_id(pts[:2]), pack_spec(pts[:2]), b"state")  # finished
    (packs / "pack-000000000000.json").write_text("{not json")
    (packs / "pack-000000000000.pt").write_bytes(b"state")
    (packs / "pack-111111111111.pt").write_bytes(b"state")          # no spec
    assert set(saved_packs(str(out))) == {pack_id(pts[:2])}   # garbage never counted
    msgs = repair(str(out))
    assert len(msgs) == 3 and all("not a saved pack" in m for m in msgs), msgs
    assert list(packs.iterdir()) == [] and saved_packs(str(out)) == {}
    r = memgrid_cli("status", out)
    assert r.returncode == 0 and "saved mid-training" not in r.stdout, r.stdout


def test_the_progress_line_counts_a_resumed_packs_stored_points_once():
    pts = [Point("rnn", 1, 2, p, s) for p in (1, 2) for s in range(6)]
    a, b = pts[:6], pts[6:]
    # 3 of a's points were stored by the run that saved it; its trial reports them too
    progress = Progress("g", 12, Counter(solved=3), [a, b], 2, stream=io.StringIO(),
                        stored_before={pack_id(a): Counter(solved=3)})
    progress.update("ta", {"epoch": 40, "stop_solved": 6}, pack_id(a))
    progress.update("tb", {"epoch": 40, "stop_solved": 4, "stop_max_epochs": 2}, pack_id(b))
    assert progress.counts() == (12, Counter(solved=10, max_epochs=2))
    assert progress.line(final=True).startswith("[g] 12/12 points (10 solved, 2 at max_epochs)")


# ---------------------------------------------------------------------------------------------
# Compaction stopped by a signal.


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_compaction_stopped_by_a_signal_leaves_every_point_once(tmp_path, tiny_grid,
                                                                  monkeypatch, sig):
    """The signal comes at each step of the compaction in turn (the worst: a merged part shown,
    the parts it replaces not yet removed): it stops there, finishes what it began, and plain
    pandas reads every point and curve row once; then Interrupted with the signal."""
    original, _ = stored_folder(tmp_path / "original", tiny_grid, n_parts=4)
    steps, compaction = [], _compaction
    monkeypatch.setattr(upkeep, "_compaction", lambda fs, base, plan: (
        steps.append(step) or step for step in compaction(fs, base, plan)))
    points = pd.read_parquet(original / "points").sort_values("point_id").reset_index(drop=True)

    def signalled_at(k):
        def run(fs, base, plan):
            for i, step in enumerate(compaction(fs, base, plan)):
                steps.append(step)
                if i == k:
                    os.kill(os.getpid(), sig)       # delivered here, in the main thread
                yield step
        return run

    whole = tmp_path / "whole"
    shutil.copytree(original, whole)
    compact(str(whole), max_rows=40)            # two merged parts: plan, 2 x (2 written, 2 shown, 4 removed), done
    n = len(steps)
    assert n == 18 and steps[-1] == "done"
    handlers = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for k in range(n):
        out = tmp_path / f"cut{k}"
        shutil.copytree(original, out)
        steps.clear()
        monkeypatch.setattr(upkeep, "_compaction", signalled_at(k))
        with pytest.raises(Interrupted) as e:
            compact(str(out), max_rows=40)
        assert e.value.signum == sig and steps[-1] == ("done" if k == n - 1 else steps[k])
        assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == handlers
        got = pd.read_parquet(out / "points").sort_values("point_id").reset_index(drop=True)
        pd.testing.assert_frame_equal(got, points, obj=f"signal at step {k}")
        curves = pd.read_parquet(out / "curves")
        assert len(curves) == 48 and not curves.duplicated(["point_id", "epoch"]).any()
        assert not (out / COMPACTING).exists()
        assert not list(out.rglob(".tmp-*"))


# ---------------------------------------------------------------------------------------------
# Which code path trained a row.


def _widest() -> str:
    with open("/proc/cpuinfo") as f:
        flags = next(ln for ln in f if ln.startswith(("flags", "Features"))).split()
    for isa, name in (("avx512f", "avx512"), ("avx2", "avx2"), ("avx", "avx"), ("sve", "sve"),
                      ("asimd", "neon")):
        if isa in flags:
            return name
    return "sse2"


def test_every_row_records_the_path_that_trained_it(tmp_path, monkeypatch):
    pts = [Point("rnn", 1, 2, p, 0, max_epochs=40, eval_every=20, eval_size=64) for p in (1, 2)]
    t = PackTrainer(pts)
    t.run()
    rows, curves = t.pop_finished()
    if kernels.lib(torch.float32) is None:
        pytest.skip("no C compiler: no C kernel")
    assert {r["kernel"] for r in rows} == {f"c-{_widest()}"}
    write_points(str(tmp_path), "pack-a-0000", rows, curves)
    monkeypatch.setenv("MEMGRID_KERNELS", "0")                   # the PyTorch path
    t = PackTrainer(pts)
    t.run()
    rows, curves = t.pop_finished()
    assert {r["kernel"] for r in rows} == {"torch"}
    write_points(str(tmp_path), "pack-b-0000", rows, curves)
    got = pd.read_parquet(tmp_path / "points")
    assert sorted(got.kernel) == sorted([f"c-{_widest()}"] * 2 + ["torch"] * 2)
    row = point_row(pts[0], "g", epochs=0, stop_reason="fitted", loss=0.1, best_loss=0.1,
                    r2=None, wall_s=0.0, pack_id="p", device="cuda:0")
    assert row["kernel"] == "cuda"                               # an ESN's fit on a GPU


def test_a_cached_kernel_with_other_symbols_is_built_again(tmp_path):
    """A shared object that loads but lacks the kernel's symbols (here: the task's, under the
    kernel's name) is built again like a garbage one, in a fresh process."""
    code = ("import warnings, torch; warnings.simplefilter('error'); from memgrid import task;"
            " from memgrid.fast import kernels; assert kernels.lib(torch.float32) is not None and task._lib() is not None")
    # the cache filled from this machine's own (built once already), not built again here
    built = subprocess.run([sys.executable, "-c", code + "; print(kernels.lib(torch.float32)._name);"
                            " print(task._lib()._name)"], env=dict(os.environ, MEMGRID_KERNELS="1"),
                           cwd=ROOT, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    for so in built.stdout.split():
        shutil.copy(so, tmp_path)
    env = dict(os.environ, MEMGRID_KERNEL_CACHE=str(tmp_path), MEMGRID_KERNELS="1")
    assert subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT).returncode == 0
    assert len(list(tmp_path.iterdir())) == 2                       # the two, nothing beside
    [cells] = tmp_path.glob("cells_f32_*.so")
    [other] = tmp_path.glob("task_*.so")
    shutil.copy(other, cells)                    # a valid object with the wrong symbols
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert cells.read_bytes() != other.read_bytes()                  # built again in its place
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([cells.name, other.name])


# ---------------------------------------------------------------------------------------------
# The embedded Ray's token; SIGHUP.


def test_the_ray_token_file_is_readable_by_its_owner_only(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(k, raising=False)
    path = private_auth_token()
    assert path == tmp_path / ".ray" / "auth_token" and len(path.read_text()) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    token = path.read_text()
    path.chmod(0o644)                                 # as ray.init writes it
    assert private_auth_token() == path and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == token                  # the same token, narrowed
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    path.unlink()
    assert private_auth_token() is None and not path.exists()


@pytest.mark.slow
def test_sighup_ends_a_run_like_sigterm(tmp_path, monkeypatch):
    """The terminal closed: one line, exit 129, the lock released, no process of the run left;
    the embedded Ray's token file (in this run's HOME) readable by its owner only."""
    from .test_driver import LONG, Run, _assert_interrupted, write_grid

    home = tmp_path / "home"
    home.mkdir()
    cache = Path(os.environ.get("MEMGRID_KERNEL_CACHE") or Path.home() / ".cache" / "memgrid")
    monkeypatch.setenv("MEMGRID_KERNEL_CACHE", str(cache))     # the kernels built already
    monkeypatch.setenv("HOME", str(home))
    for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(k, raising=False)
    run = Run(write_grid(tmp_path / "long.yaml", **LONG), tmp_path / "res")
    try:
        run.wait_line("starting Ray")
        run.wait_file("_tune/*/pack_trial_*/result.json", under=run.out)
        token = home / ".ray" / "auth_token"
        assert stat.S_IMODE(token.stat().st_mode) == 0o600
        run.proc.send_signal(signal.SIGHUP)
        _assert_interrupted(run, 129)
        assert not (run.out / LOCK_NAME).exists()
    finally:
        run.cleanup()
