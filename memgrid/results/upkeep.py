"""Upkeep of a results folder, repair and compaction, run while holding its lock (memgrid.results.lock).

Repair (:func:`repair`, run by `memgrid run` before it trains anything) makes the folder one
that plain pandas reads with every point once: what a crash, another program or an older
version left goes to `damaged/`, as it was. Compaction (:func:`compact`, `memgrid compact`, and
`memgrid run` once every point is stored) merges thousands of small parts (one per pack and
flush) into a few, safely at any moment: readers and :func:`repair` know a compaction cut
short.
"""

from __future__ import annotations

import time
import uuid
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..processes import signals_held
from .io import (_entries, _manifest, _part_files, _read, damaged_parts, done_ids, write_part)
from .layout import COMPACTING, DAMAGED, PACKS, UNFINISHED, _exists, _write_json, resolve
from .saved import _pack_files, _pack_points, drop_pack_state
from .schema import TABLES


def repair(uri: str) -> list[str]:
    """Make the folder one that plain pandas reads with every point once; returns one line per
    change. No part is deleted: parts go to `damaged/<table>/` as they were.

    - an unreadable part, points or curves, or one lacking a column (:func:`lacking`), goes
      aside with its partner of the same name (a points part without its curves, or curves
      without its points, would store a point without its curve, or a curve twice once the
      point is trained again): its points are trained again;
    - anything else in points/ or curves/ (a folder, such as a results folder written inside
      this one's, or another file) goes aside as it is: plain pandas would read its rows as
      the table's;
    - a curves part whose points part never landed (a writer killed between the two) goes
      aside: its points have no row and are trained again;
    - a point stored in two parts (two writers before the lock existed) keeps its first row;
      the later part goes aside and is written again without that point and its curve;
    - first of all, a compaction cut short (:func:`compact`) is finished: the parts that its
      merged parts already shown replace are removed, a merged part not shown is; then the
      files of writes a kill cut short before their rename (hidden, :data:`UNFINISHED`) are
      removed: they hold nothing the folder stores, and what they were writing is written again;
    - last, packs/ keeps only packs saved mid-training whose points are not all stored:
      anything else there goes to `damaged/packs/`, a finished pack's state is dropped.

    Call it only while holding the folder's lock: a writer at work would look like the second
    case."""
    fs, base = resolve(uri)
    msgs = _finish_compaction(uri, fs, base) + _drop_unfinished(uri, fs, base)
    parts = {t: _part_files(fs, f"{base}/{t}") for t in TABLES}
    others = {t: _entries(fs, f"{base}/{t}")[1] for t in TABLES}
    shown_uri = uri.rstrip("/")
    for shown, why in damaged_parts(uri):
        table, name = shown.rsplit("/", 2)[-2:]
        part = name[: -len(".parquet")]
        if name not in others[table] and part not in parts[table]:
            continue                      # already moved with its partner
        if name in others[table]:
            _move_aside(fs, base, table, name)    # not a part: alone, as it is
            msgs.append(f"{shown}: {why}, which plain pandas reads as {table} rows: moved to "
                        f"{shown_uri}/{DAMAGED}/")
            continue
        for t in TABLES:
            if parts[t].pop(part, None):
                _move_aside(fs, base, t, f"{part}.parquet")
        other = "curves" if table == "points" else "points"
        msgs.append(f"{shown}: unreadable ({why}): moved to {shown_uri}/{DAMAGED}/ with its "
                    f"{other} part; its points will be trained again")
    for part in sorted(set(parts["curves"]) - set(parts["points"])):
        parts["curves"].pop(part)
        _move_aside(fs, base, "curves", f"{part}.parquet")
        msgs.append(f"{uri.rstrip('/')}/curves/{part}.parquet: curves without their points part "
                    f"(a write cut short): moved to {uri.rstrip('/')}/{DAMAGED}/; its points will "
                    "be trained again")
    msgs += _drop_repeated_points(uri, fs, base, sorted(parts["points"]))
    return msgs + _tidy_packs(uri, fs, base)


def _drop_unfinished(uri: str, fs: pafs.FileSystem, base: str) -> list[str]:
    """Remove the hidden files of writes cut short before their rename, in the folder and in
    its points/, curves/ and packs/; one line, or none."""
    gone = 0
    for folder in (base, *(f"{base}/{t}" for t in (*TABLES, PACKS))):
        if fs.get_file_info(folder).type != pafs.FileType.Directory:
            continue
        for i in fs.get_file_info(pafs.FileSelector(folder)):
            if i.type == pafs.FileType.File and i.base_name.startswith(UNFINISHED):
                fs.delete_file(i.path)
                gone += 1
    return [f"{uri.rstrip('/')}: {gone} unfinished {'write' if gone == 1 else 'writes'} "
            f"(hidden {UNFINISHED}* files a kill left before their rename) removed"] if gone else []


def _move_aside(fs: pafs.FileSystem, base: str, folder: str, name: str) -> None:
    """Move `<folder>/<name>` (a part, or whatever else) to `damaged/<folder>/`, as it is."""
    src = f"{base}/{folder}/{name}"
    if not _exists(fs, src):
        return
    into = f"{base}/{DAMAGED}/{folder}"
    fs.create_dir(into, recursive=True)
    dst = f"{into}/{name}"
    if _exists(fs, dst):                  # damaged once before under the same name: keep both
        stem, dot, ext = name.rpartition(".") if name.endswith(".parquet") else (name, "", "")
        dst = f"{into}/{stem}.{uuid.uuid4().hex[:8]}{dot}{ext}"
    fs.move(src, dst)


def _drop_repeated_points(uri: str, fs: pafs.FileSystem, base: str, parts: list[str]) -> list[str]:
    ids = _read(uri, "points", ["point_id"]).column("point_id")
    if len(ids) == len(pc.unique(ids)):   # the common case: one read, no part opened alone
        return []
    seen: set[str] = set()
    msgs = []
    for part in parts:                    # in name order, the first row of a point stays
        path = f"{base}/points/{part}.parquet"
        ids = pq.read_table(path, filesystem=fs, columns=["point_id"]).column("point_id").to_pylist()
        repeated = {i for i in ids if i in seen}
        seen.update(ids)
        if not repeated:
            continue
        gone = pa.array(sorted(repeated), pa.string())
        keep = lambda t: t.filter(pc.invert(pc.is_in(t.column("point_id"), gone)))  # noqa: E731
        tables = {t: keep(pq.read_table(f"{base}/{t}/{part}.parquet", filesystem=fs,
                                        schema=TABLES[t]))
                  for t in TABLES if _exists(fs, f"{base}/{t}/{part}.parquet")}
        for t in TABLES:
            _move_aside(fs, base, t, f"{part}.parquet")
        rest = tables["points"].num_rows
        if rest:                          # curves first, as write_points
            if "curves" in tables:
                write_part(uri, "curves", part, tables["curves"])
            write_part(uri, "points", part, tables["points"])
        msgs.append(f"{uri.rstrip('/')}/points/{part}.parquet: {len(repeated)} point(s) stored "
                    f"before in another part: moved to {uri.rstrip('/')}/{DAMAGED}/ with its "
                    "curves" + (f", and written again with the other {rest} only" if rest else ""))
    return msgs


def set_pack_aside(uri: str, pack_id: str) -> str:
    """Move a saved pack (state and spec) to `damaged/packs/`, as it is (a state that is not
    its pack's, or unreadable); the folder it went to."""
    fs, base = resolve(uri)
    for ext in ("pt", "json"):
        _move_aside(fs, base, PACKS, f"{pack_id}.{ext}")
    return f"{uri.rstrip('/')}/{DAMAGED}/{PACKS}/"


def _tidy_packs(uri: str, fs: pafs.FileSystem, base: str) -> list[str]:
    """packs/ holding only packs to continue: what is not a saved pack goes to damaged/packs/
    (one line each), a pack whose points are all stored is forgotten."""
    folder = f"{base}/{PACKS}"
    packs, other = _pack_files(fs, folder)
    msgs = []
    for name in other:
        _move_aside(fs, base, PACKS, name)
        msgs.append(f"{uri.rstrip('/')}/{PACKS}/{name}: not a saved pack (a spec of its pack "
                    f"beside its state): moved to {uri.rstrip('/')}/{DAMAGED}/{PACKS}/")
    if packs:
        done = done_ids(uri)
        for pid, spec in packs.items():
            if set(_pack_points(spec, pid) or ()) <= done:
                drop_pack_state(uri, pid)
    return msgs


# ---------------------------------------------------------------------------------------------
# Compaction: thousands of small parts (one per pack and flush) into a few.

COMPACT_ROWS = 1_000_000
"""rows (points and curves together) of one merged part at most: what compacting holds in
memory at once (~40 MB of curves), and what a reader of one part does"""
MERGE_FIRST_PARTS = 200
"""a `memgrid run` that resumes a folder (or its tuning run's folder) holding more points parts
than this compacts it first: every read of a folder (what it stores, the walk's losses, the
tuned rates) opens each part, a second or more per read at a thousand parts"""
_SHOWN = ("curves", "points")
"""the order in which a merged part's files become visible: points last, as in write_points"""


def compact(uri: str, max_rows: int = COMPACT_ROWS) -> dict:
    """Merge the parts of points/ and curves/ into as few as hold `max_rows` rows each: every
    point once, a merged points part and the curves of its points under one name, each file's
    schema kept with its metadata (parts of different schemas are merged apart). A part too
    large to merge with its neighbours stays as it is, so compacting again rewrites only the
    parts added since. Returns `parts_before` and `parts_after` ({table: count}), `points`,
    `repaired` (:func:`repair`'s lines, run first) and `seconds`.

    Safe to stop at any moment. The plan is written first (:data:`COMPACTING`); then per merged
    part its files are written under hidden names, shown (renamed: curves, then points), and
    only then are the parts it replaces removed. Meanwhile readers skip a part whose merged
    part is shown, and :func:`repair` (run by the next `memgrid run` or compaction) finishes a
    compaction cut short (a kill); plain pandas reads those points twice until then.
    SIGINT, SIGTERM and SIGHUP stop it between two of its steps, and it finishes what it began
    first (as repair would), so that plain pandas reads every point once: then it raises
    :class:`Interrupted`.

    Call it holding the folder's lock (memgrid.results.lock), as :func:`repair`."""
    started = time.monotonic()
    fs, base = resolve(uri)
    with signals_held() as got:
        repaired = repair(uri)
        before = {t: len(_part_files(fs, f"{base}/{t}")) for t in TABLES}
        if not got:
            for _ in _compaction(fs, base, _plan(fs, base, max_rows)):
                if got:
                    break
        if got:
            _finish_compaction(uri, fs, base)
    return {"parts_before": before,
            "parts_after": {t: len(_part_files(fs, f"{base}/{t}")) for t in TABLES},
            "points": len(done_ids(uri)), "repaired": repaired,
            "seconds": time.monotonic() - started}


def _plan(fs: pafs.FileSystem, base: str, max_rows: int) -> dict[str, list[str]]:
    """merged part -> the parts it replaces: runs of parts in name order whose files have the
    same schemas (metadata included), `max_rows` rows together at most; a part that would be
    merged with nothing is left out."""
    curves = _part_files(fs, f"{base}/curves")
    runs: dict[tuple, list[list]] = {}         # schemas -> [[parts, rows], ...]
    for part in _part_files(fs, f"{base}/points"):
        key, rows = [], 0
        for t in TABLES:
            if t == "curves" and part not in curves:
                key.append(None)
                continue
            with fs.open_input_file(f"{base}/{t}/{part}.parquet") as f:
                meta = pq.ParquetFile(f)
                key.append(meta.schema_arrow.serialize().to_pybytes())
                rows += meta.metadata.num_rows
        group = runs.setdefault(tuple(key), [])
        if not group or group[-1][1] + rows > max_rows:
            group.append([[], 0])
        group[-1][0].append(part)
        group[-1][1] += rows
    merged = [parts for group in runs.values() for parts, _ in group if len(parts) > 1]
    tag = uuid.uuid4().hex[:12]
    return {f"compact-{tag}-{i:04d}": parts for i, parts in enumerate(merged)}


def _hidden(base: str, table_name: str, merged: str) -> str:
    return f"{base}/{table_name}/{UNFINISHED}{merged}.parquet"


def _compaction(fs: pafs.FileSystem, base: str, plan: dict[str, list[str]]) -> Iterator[str]:
    """Carry out `plan`, one change of the folder per step (it yields after each, saying what):
    stopped after any of them, readers see every point once and :func:`repair` finishes it."""
    if not plan:
        return
    _write_json(fs, f"{base}/{COMPACTING}", plan)      # before anything is shown
    yield "plan"
    for merged, parts in plan.items():
        shown = []
        for t in _SHOWN:
            files = [f"{base}/{t}/{p}.parquet" for p in parts]
            files = [f for f in files if _exists(fs, f)]
            if not files:                               # parts without curves
                continue
            schema = pq.read_schema(files[0], filesystem=fs)   # every file's, by _plan
            table = pads.dataset(files, filesystem=fs, format="parquet", schema=schema).to_table()
            pq.write_table(table, _hidden(base, t, merged), filesystem=fs)
            shown.append(t)
            yield f"wrote {t}/{merged}"
        for t in shown:
            fs.move(_hidden(base, t, merged), f"{base}/{t}/{merged}.parquet")
            yield f"showed {t}/{merged}"
        yield from _remove(fs, base, parts)
    fs.delete_file(f"{base}/{COMPACTING}")
    yield "done"


def _remove(fs: pafs.FileSystem, base: str, parts: list[str]) -> Iterator[str]:
    """Delete parts that a shown merged part replaces, each points file before its curves."""
    for part in parts:
        for t in TABLES:
            path = f"{base}/{t}/{part}.parquet"
            if _exists(fs, path):
                fs.delete_file(path)
                yield f"removed {t}/{part}"


def _finish_compaction(uri: str, fs: pafs.FileSystem, base: str) -> list[str]:
    """Finish a compaction that was cut short: a merged part whose points are shown stays and
    the parts it replaces go; one whose points are not shown goes (its points are still in
    the parts it would have replaced). One line, or none where there was nothing to do."""
    plan = _manifest(fs, base)
    if not plan:
        return []
    kept = 0
    for merged, parts in plan.items():
        if _exists(fs, f"{base}/points/{merged}.parquet"):
            kept += 1
            for _ in _remove(fs, base, parts):
                pass
        elif _exists(fs, f"{base}/curves/{merged}.parquet"):
            fs.delete_file(f"{base}/curves/{merged}.parquet")
        for t in TABLES:
            if _exists(fs, _hidden(base, t, merged)):
                fs.delete_file(_hidden(base, t, merged))
    fs.delete_file(f"{base}/{COMPACTING}")
    return [f"{uri.rstrip('/')}: a compaction was cut short: finished ({kept} of its "
            f"{len(plan)} merged parts kept, the parts they replace removed)"]
