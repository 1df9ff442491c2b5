"""`memgrid compact`: many small parts into a few, the same rows, safe to stop at any moment.

Real part files as `memgrid run` writes them (write_points), no Ray. A kill is simulated
by construction: the compaction is a sequence of single changes of the folder
(_compaction), and the folder is checked after every prefix of it."""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from memgrid.results import (COMPACTING, COMPACT_ROWS, CURVE_SCHEMA, POINT_SCHEMA, compact,
                             damaged_parts, done_ids, read_curves, read_points, repair, resolve,
                             write_part, write_points)
from memgrid.results import io, layout, lock, saved, upkeep
from memgrid.results.upkeep import _compaction, _plan
from memgrid.grid_file import load_grid
from memgrid.run.preflight import prepare_out
from memgrid.results.lock import LOCK_NAME, FolderLock

from .conftest import memgrid_cli, write_grid
from .test_failures import fake_rows, refused, stored_folder, tree


def parts(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.parquet"))


def table(folder: Path, name: str) -> pd.DataFrame:
    """A table as plain pandas reads it, rows in a fixed order (no reader dedup)."""
    keys = ["point_id"] + (["epoch"] if name == "curves" else [])
    return pd.read_parquet(folder / name).sort_values(keys).reset_index(drop=True)


def test_compact_merges_every_part_into_one_with_the_same_rows(tmp_path, tiny_grid):
    out, written = stored_folder(tmp_path, tiny_grid, n_parts=4)
    points, curves = table(out, "points"), table(out, "curves")
    assert len(points) == 16 and len(curves) == 48

    s = compact(str(out))
    assert s["parts_before"] == {"points": 4, "curves": 4}
    assert s["parts_after"] == {"points": 1, "curves": 1}
    assert s["points"] == 16 and s["repaired"] == [] and s["seconds"] >= 0
    assert parts(out / "points") == parts(out / "curves") != written    # one name, both tables
    pd.testing.assert_frame_equal(table(out, "points"), points)
    pd.testing.assert_frame_equal(table(out, "curves"), curves)
    merged = out / "points" / parts(out / "points")[0]
    assert pq.read_schema(merged).equals(POINT_SCHEMA, check_metadata=True)
    assert pq.read_schema(out / "curves" / merged.name).equals(CURVE_SCHEMA)
    assert pads.dataset(out / "points").schema.equals(POINT_SCHEMA)
    assert tree(out) == ["curves", f"curves/{merged.name}", "grid.json", "points",
                         f"points/{merged.name}"]                      # nothing else left
    mtime = merged.stat().st_mtime_ns
    again = compact(str(out))                                   # nothing to merge
    assert again["parts_before"] == again["parts_after"] == {"points": 1, "curves": 1}
    assert merged.stat().st_mtime_ns == mtime                         # and not rewritten


def test_compact_keeps_each_files_schema_metadata_and_bounds_part_size(tmp_path, tiny_grid):
    """Six parts of 2 points and 6 curve rows (8 rows each); the even ones carry schema
    metadata (a later schema version, say). At 16 rows a part: even [0, 2] and odd [1, 3]
    merge, 4 and 5 have no partner of their schema left and stay."""
    out = tmp_path / "res"
    pts = load_grid(tiny_grid).points()
    v2 = {b"memgrid.schema": b"2"}
    for i in range(6):
        rows, curves = fake_rows(pts[2 * i: 2 * i + 2], "tiny", f"pack-{i}")
        meta = v2 if i % 2 == 0 else None
        write_part(str(out), "curves", f"pack-{i}-0000", pa.Table.from_pylist(
            curves, schema=CURVE_SCHEMA.with_metadata(meta)))
        write_part(str(out), "points", f"pack-{i}-0000", pa.Table.from_pylist(
            rows, schema=POINT_SCHEMA.with_metadata(meta)))
    points, curves = table(out, "points"), table(out, "curves")

    s = compact(str(out), max_rows=16)
    assert s["parts_after"] == {"points": 4, "curves": 4} and s["points"] == 12
    names = parts(out / "points")
    assert names == parts(out / "curves")
    assert [n for n in names if n.startswith("pack-")] == [f"pack-{i}-0000.parquet" for i in (4, 5)]
    merged = [n for n in names if n.startswith("compact-")]
    assert len(merged) == 2
    ids = {}
    for n in merged:
        p, c = pq.read_table(out / "points" / n), pq.read_table(out / "curves" / n)
        assert (p.num_rows, c.num_rows) == (4, 12)                   # 16 rows, two parts each
        assert p.schema.metadata == c.schema.metadata                 # one schema per part
        assert set(p.column("point_id").to_pylist()) == set(c.column("point_id").to_pylist())
        ids[p.schema.metadata == v2] = set(p.column("point_id").to_pylist())
    assert ids[True] == {q.point_id for q in pts[0:2] + pts[4:6]}     # parts 0 and 2
    assert ids[False] == {q.point_id for q in pts[2:4] + pts[6:8]}    # parts 1 and 3
    pd.testing.assert_frame_equal(table(out, "points"), points)
    pd.testing.assert_frame_equal(table(out, "curves"), curves)


def _steps(out: Path) -> list[str]:
    fs, base = resolve(str(out))
    return list(_compaction(fs, base, _plan(fs, base, COMPACT_ROWS)))


def test_a_compaction_stopped_after_any_step_loses_and_repeats_nothing(tmp_path, tiny_grid):
    """Stopped after each of its steps (a kill between two changes of the folder): memgrid's
    readers see every point and curve row once, `memgrid run` (repair, then the points it
    finds missing) trains nothing again, and plain pandas does too once repair has run."""
    original, written = stored_folder(tmp_path / "original", tiny_grid, n_parts=3)
    points, curves = table(original, "points"), table(original, "curves")
    ids = set(points.point_id)
    shutil.copytree(original, tmp_path / "whole")
    steps = _steps(tmp_path / "whole")
    m = parts(tmp_path / "whole" / "points")[0][: -len(".parquet")]
    removed = [f"removed {t}/{p}" for p in written for t in ("points", "curves")]
    assert steps == ["plan", f"wrote curves/{m}", f"wrote points/{m}", f"showed curves/{m}",
                     f"showed points/{m}", *removed, "done"]

    for k in range(len(steps) + 1):
        out = tmp_path / f"cut{k}" / "res"
        shutil.copytree(original, out)
        fs, base = resolve(str(out))
        plan = _plan(fs, base, COMPACT_ROWS)
        assert list(plan.values()) == [written]
        list(itertools.islice(_compaction(fs, base, plan), k))
        # what `memgrid analyze` and `status` read, as the kill left it
        got = read_points(str(out)).to_pandas().sort_values("point_id").reset_index(drop=True)
        pd.testing.assert_frame_equal(got, points, obj=f"points after {k} steps")
        got = read_curves(str(out)).to_pandas().sort_values(["point_id", "epoch"])
        pd.testing.assert_frame_equal(got.reset_index(drop=True), curves,
                                      obj=f"curves after {k} steps")
        assert done_ids(str(out)) == ids and damaged_parts(str(out)) == []
        # what `memgrid run` does first
        msgs = repair(str(out))
        cut = 0 < k < len(steps)
        assert len(msgs) == cut and all("a compaction was cut short: finished" in x for x in msgs)
        kept = k > steps.index(f"showed points/{m}")
        assert parts(out / "points") == parts(out / "curves") == \
            ([f"{next(iter(plan))}.parquet"] if kept else [f"{p}.parquet" for p in written])
        assert not (out / "damaged").exists() and not (out / COMPACTING).exists()
        assert not [p for p in out.rglob(".tmp-*")]
        pd.testing.assert_frame_equal(table(out, "points"), points, obj=f"pandas after {k} steps")
        pd.testing.assert_frame_equal(table(out, "curves"), curves, obj=f"pandas after {k} steps")
        assert compact(str(out))["parts_after"] == {"points": 1, "curves": 1}


class Passthrough(pafs.FileSystemHandler):
    """A filesystem written in Python (pyarrow's PyFileSystem) over a local folder; calls
    `after_listing()` once, right after a listing of a folder under `watch`."""

    def __init__(self, root: Path):
        self.fs = pafs.SubTreeFileSystem(str(root), pafs.LocalFileSystem())
        self.watch, self.after_listing = None, None

    def get_type_name(self):
        return "passthrough"

    def normalize_path(self, path):
        return path

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        infos = self.fs.get_file_info(selector)
        if self.after_listing and selector.base_dir.rstrip("/") == self.watch:
            hook, self.after_listing = self.after_listing, None
            hook()
        return infos

    def create_dir(self, path, recursive):
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        self.fs.delete_dir_contents("/", accept_root_dir=True)

    def delete_file(self, path):
        self.fs.delete_file(path)

    def move(self, src, dest):
        self.fs.move(src, dest)

    def copy_file(self, src, dest):
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        return self.fs.open_input_file(path)

    def open_output_stream(self, path, metadata):
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        return self.fs.open_append_stream(path, metadata=metadata)


@pytest.fixture
def passthrough(tmp_path, monkeypatch):
    """`mem://res` is `tmp_path/res` seen through a Passthrough filesystem."""
    handler, local = Passthrough(tmp_path), resolve
    fs = pafs.PyFileSystem(handler)
    for module in (layout, io, saved, upkeep, lock):    # every reader and writer of the folder
        monkeypatch.setattr(module, "resolve", lambda uri: (fs, uri[len("mem://"):])
                            if uri.startswith("mem://") else local(uri))
    return handler


def test_compact_and_readers_on_any_pyarrow_filesystem(tmp_path, tiny_grid, passthrough):
    """Through a filesystem that is neither local nor one of pyarrow's own; and a reader that
    listed the parts just before a compaction replaced them reads every point all the same."""
    out, _ = stored_folder(tmp_path, tiny_grid, n_parts=4)
    points, curves = table(out, "points"), table(out, "curves")
    assert damaged_parts("mem://res") == []
    s = compact("mem://res", max_rows=40)      # 4 points and 12 curve rows a part
    assert s["parts_before"] == {"points": 4, "curves": 4}
    assert s["parts_after"] == {"points": 2, "curves": 2} and s["points"] == 16
    pd.testing.assert_frame_equal(table(out, "points"), points)
    pd.testing.assert_frame_equal(table(out, "curves"), curves)

    local = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    reads = {"points": (read_points, 16), "curves": (read_curves, 48),
             "damaged": (damaged_parts, 0)}          # a part gone is not a damaged part
    for what, (read, rows) in reads.items():
        table_name = "curves" if what == "curves" else "points"
        out, _ = stored_folder(tmp_path / what, tiny_grid, n_parts=4)
        passthrough.watch = f"{what}/res/{table_name}"
        base = f"{what}/res"
        passthrough.after_listing = lambda: list(_compaction(
            local, base, _plan(local, base, COMPACT_ROWS)))
        got = read(f"mem://{what}/res")
        assert passthrough.after_listing is None                # it happened
        assert len(parts(out / table_name)) == 1
        assert len(got) == rows, what
        if rows:
            assert set(got.column("point_id").to_pylist()) == set(points.point_id)


# ---------------------------------------------------------------------------------------------
# The command.


def test_compact_command_merges_a_folder_and_its_tuning_run(tmp_path, tiny_grid):
    out, _ = stored_folder(tmp_path, tiny_grid, n_parts=4)
    pts = load_grid(tiny_grid).points()
    for i in range(3):
        rows, curves = fake_rows(pts[i::3], "tiny", f"pack-{i}")
        write_points(str(out / "tuning"), f"pack-{i}-0000", rows, curves)
    r = memgrid_cli("compact", out)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{out}: 4 + 4 parts (points + curves) -> 1 + 1, 16 points, ")
    assert lines[1].startswith(f"{out}/tuning: 3 + 3 parts (points + curves) -> 1 + 1, 16 points, ")
    assert lines[0].endswith(" s") and len(parts(out / "tuning" / "points")) == 1
    r = memgrid_cli("compact", f"file://{out}")                 # a URI, and nothing to merge
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"file://{out}: 1 + 1 parts (points + curves) -> 1 + 1, 16 points")
    assert not (out / LOCK_NAME).exists()


@pytest.mark.slow
def test_a_run_resuming_a_folder_of_many_parts_merges_them_first(tmp_path):
    grid_file = write_grid(
        tmp_path / "many.yaml", name="many",
        axes={"arch": ["rnn"], "layers": [1], "cells": [2], "position": "1..2",
              "seed": f"0..{upkeep.MERGE_FIRST_PARTS // 2}"},
        task={"q_min": 4, "q_max": 6},
        train={"max_epochs": 40, "eval_size": 64, "eval_every": 20, "batch_size": 16})
    grid = load_grid(grid_file)
    out = tmp_path / "res"
    prepare_out(grid, str(out))
    pts = grid.points()
    stored = pts[:-1]                        # one part per point, as packs of one write them
    assert len(stored) == upkeep.MERGE_FIRST_PARTS + 1
    for i, p in enumerate(stored):
        rows, curves = fake_rows([p], grid.name, f"pack-{i:012d}")
        write_points(str(out), f"pack-{i:012d}-0000", rows, curves)
    before = table(out, "points")

    r = memgrid_cli("run", grid_file, "--out", out)
    assert r.returncode == 0, r.stderr
    err = r.stderr.splitlines()
    n = upkeep.MERGE_FIRST_PARTS + 1
    merging = [i for i, l in enumerate(err) if l == f"memgrid: {out}: {n} points parts: merging "
               "them first (memgrid compact) ..."]
    training = [i for i, l in enumerate(err) if l.startswith("[many] 201/202 points")]
    assert merging and training and merging[0] < training[0], r.stderr    # before it trains
    assert f"{out}: {n} + {n} parts (points + curves) -> 1 + 1, {n} points, " in r.stderr
    after = table(out, "points")             # every point once, the stored ones unchanged
    assert len(after) == len(pts) and after["point_id"].is_unique
    kept = after[after["point_id"].isin(before["point_id"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, before)


def test_compact_is_refused_while_a_run_holds_the_folder(tmp_path, tiny_grid):
    out, _ = stored_folder(tmp_path, tiny_grid, n_parts=4)
    files = lambda: {p: p.read_bytes() for p in out.rglob("*")   # noqa: E731
                     if p.is_file() and p.name != LOCK_NAME}
    before = files()
    with FolderLock(str(out)):
        refused(memgrid_cli("compact", out), f"{out}: a memgrid run is writing this results folder",
                f"pid {os.getpid()}", "compact it once that run has ended")
        assert files() == before                                # not a byte changed
    assert memgrid_cli("compact", out).returncode == 0


@pytest.mark.parametrize("what", ["missing", "file", "empty", "other", "missing uri"])
def test_compact_of_what_is_not_a_results_folder_is_one_line_and_writes_nothing(tmp_path, what):
    target = tmp_path / "x"
    if what == "file":
        target.write_text("not a folder")
    elif what in ("empty", "other"):
        target.mkdir()
        if what == "other":
            (target / "notes.txt").write_text("hello")
    arg = f"file://{target}" if what == "missing uri" else str(target)
    before = tree(tmp_path)
    want = {"missing": "no such results folder", "file": "a file, not a results folder",
            "empty": "not a memgrid results folder", "other": "not a memgrid results folder",
            "missing uri": "no such results folder"}[what]
    line = refused(memgrid_cli("compact", arg), f"{arg}: {want}")
    assert "Traceback" not in line and tree(tmp_path) == before
