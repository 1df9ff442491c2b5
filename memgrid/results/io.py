"""Reading and writing the parts of a results folder's tables.

Part files are written to a hidden name (``.tmp-...``, which pyarrow and pandas skip) and then
renamed, so a reader never sees half a file. A part is named after the pack and a sequence
number, and a points part and the curves part of the same points share that name: a retried
trial that writes the same part again replaces it instead of adding rows.

A point is stored once, so that ``pandas.read_parquet(folder/points)`` shows it once: one
`memgrid run` writes a folder at a time (memgrid.results.lock), a run trains only points that
have no row, and before training it repairs what a crash or an older version may have left
(memgrid.results.upkeep). Readers skip unreadable parts (:func:`damaged_parts` names them),
skip the parts that a compaction cut short has replaced already, and still drop repeated
``point_id`` rows (first wins).
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..config import ID_OMITTED_AT
from .layout import COMPACTING, READ_ERRORS, UNFINISHED, _exists, first_line, resolve
from .schema import CURVE_SCHEMA, POINT_SCHEMA, TABLES, lacking, schema_version


def write_part(uri: str, table_name: str, part: str, table: pa.Table) -> str:
    """Write `table` as `<uri>/<table_name>/<part>.parquet`, atomically (write, then rename):
    a write that fails leaves nothing behind."""
    fs, base = resolve(uri)
    folder = f"{base}/{table_name}"
    fs.create_dir(folder, recursive=True)
    tmp = f"{folder}/{UNFINISHED}{part}-{uuid.uuid4().hex[:8]}.parquet"
    final = f"{folder}/{part}.parquet"
    try:
        pq.write_table(table, tmp, filesystem=fs)
        fs.move(tmp, final)
    except BaseException:
        if _exists(fs, tmp):
            fs.delete_file(tmp)
        raise
    return final


def write_points(uri: str, part: str, rows: list[dict], curves: list[dict]) -> None:
    """Write one part of finished points and their curves: each point whole or not at all.
    Both tables are made first (a value their schema cannot hold, such as a seed past int32,
    raises before anything is written); then the curves, since a points row is the mark of a
    finished point and must never exist without its curve; a points part that fails to land
    takes its new curves part with it."""
    if not rows:
        return
    points = pa.Table.from_pylist(rows, schema=POINT_SCHEMA)
    curve_table = pa.Table.from_pylist(curves, schema=CURVE_SCHEMA) if curves else None
    fs, base = resolve(uri)
    written = None
    if curve_table is not None:
        existed = _exists(fs, f"{base}/curves/{part}.parquet")
        path = write_part(uri, "curves", part, curve_table)
        written = None if existed else path     # a retry's rewrite of a stored part stays
    try:
        write_part(uri, "points", part, points)
    except BaseException:
        landed = fs.get_file_info(f"{base}/points/{part}.parquet").type == pafs.FileType.File
        if written is not None and not landed:
            fs.delete_file(written)
        raise


def _entries(fs: pafs.FileSystem, folder: str) -> tuple[list[str], dict[str, str]]:
    """(part names, without .parquet, in name order; {name: why} of the other entries) of a
    table's folder, hidden names (`.`, `_`: pyarrow and pandas skip them) left out. A part is
    a file named *.parquet; anything else there (a folder, another file) is read by plain
    pandas as rows of the table, but is none of its parts: damaged."""
    if fs.get_file_info(folder).type != pafs.FileType.Directory:
        return [], {}
    parts, other = [], {}
    for i in sorted(fs.get_file_info(pafs.FileSelector(folder)), key=lambda i: i.base_name):
        name = i.base_name
        if name.startswith((".", "_")):
            continue
        if i.type == pafs.FileType.File and name.endswith(".parquet"):
            parts.append(name[: -len(".parquet")])
        else:
            other[name] = ("a folder, not a part file" if i.type == pafs.FileType.Directory
                           else "not a part file (no .parquet)")
    return parts, other


def _part_files(fs: pafs.FileSystem, folder: str) -> dict[str, bool]:
    """Part names (without .parquet) of the visible parts of `folder`, as a dict (ordered)."""
    return dict.fromkeys(_entries(fs, folder)[0], True)


class _Listing:
    """A table's parts as a reader takes them: `dataset` (None where the folder is absent) of
    the parts that look whole, `bad` ({path: why}: other entries, parts whose footer cannot be
    read or whose schema lacks a column, see :func:`lacking`), `gone` (a part listed is gone:
    a compaction replaced it meanwhile, list again)."""

    def __init__(self, uri: str, table_name: str):
        schema = TABLES[table_name]
        fs, base = resolve(uri)
        folder = f"{base}/{table_name}"
        self.dataset, self.bad, self.gone = None, {}, False
        kind = fs.get_file_info(folder).type
        if kind == pafs.FileType.NotFound:
            return
        if kind != pafs.FileType.Directory:
            raise ValueError(f"{uri}/{table_name}: a file, not the folder of {table_name} parts")
        parts, other = _entries(fs, folder)
        self.bad = {f"{folder}/{n}": why for n, why in other.items()}
        replaced = _replaced(fs, base, table_name)   # a compaction cut short: its merged part
        files = [f"{folder}/{n}.parquet" for n in parts if n not in replaced]
        good = []
        for frag in pads.dataset(files, filesystem=fs, format="parquet", schema=schema).get_fragments():
            try:
                missing = lacking(frag.physical_schema, table_name)
            except READ_ERRORS as e:
                if not _exists(fs, frag.path):
                    self.gone = True
                    continue
                self.bad[frag.path] = first_line(e)
                continue
            if missing:
                self.bad[frag.path] = (f"no column {', '.join(missing)}, which a schema version "
                                       f"{schema_version(frag.physical_schema)} part has")
            else:
                good.append(frag.path)
        self.dataset = pads.dataset(good, filesystem=fs, format="parquet", schema=schema)


def _unreadable(ds: pads.Dataset, schema: pa.Schema) -> dict[str, str]:
    """path -> why, for the files of `ds` that cannot be read whole with `schema` (a file that
    is gone since `ds` was listed is not one)."""
    bad = {}
    for path in ds.files:
        try:
            for _ in pads.dataset(path, filesystem=ds.filesystem, format="parquet",
                                  schema=schema).to_batches():
                pass
        except READ_ERRORS as e:
            if _exists(ds.filesystem, path):
                bad[path] = first_line(e)
    return bad


def _read(uri: str, table_name: str, columns: list[str] | None = None, filter=None) -> pa.Table:
    """One table of the folder, skipping damaged parts (:class:`_Listing`, and those found only
    when a read fails). A read that lost parts it had listed (a compaction replaced them
    meanwhile) starts again."""
    schema = TABLES[table_name]
    for attempt in range(3):
        listing = _Listing(uri, table_name)
        ds = listing.dataset
        if ds is None:
            return schema.empty_table() if columns is None else pa.schema(
                [schema.field(c) for c in columns]).empty_table()
        if listing.gone and attempt < 2:
            continue
        try:
            return ds.to_table(columns=columns, filter=filter)
        except READ_ERRORS:
            if attempt < 2 and not all(_exists(ds.filesystem, f) for f in ds.files):
                continue
            bad = _unreadable(ds, schema)
            if not bad:
                raise
        good = [f for f in ds.files if f not in bad]
        return pads.dataset(good, filesystem=ds.filesystem, format="parquet",
                            schema=schema).to_table(columns=columns, filter=filter)


def damaged_parts(uri: str) -> list[tuple[str, str]]:
    """(path as `uri/table/name`, why) of every entry of points/ and curves/ that is not a part
    memgrid reads whole: an unreadable part, one lacking a column (:func:`lacking`), anything
    else there (a folder, another file). Readers skip them, `memgrid status` and `analyze`
    name them, and memgrid.results.upkeep moves them aside."""
    out = []
    for table_name, schema in TABLES.items():
        listing = _Listing(uri, table_name)
        bad = dict(listing.bad)
        ds = listing.dataset
        if ds is not None:
            try:
                for _ in ds.to_batches():    # one pass, nothing held: the common case
                    pass
            except READ_ERRORS:
                bad.update(_unreadable(ds, schema))
        for path, why in sorted(bad.items()):
            out.append((f"{uri.rstrip('/')}/{table_name}/{path.rsplit('/', 1)[-1]}", why))
    return out


def read_points(uri: str, columns: list[str] | None = None) -> pa.Table:
    """All finished points (one row per point_id) as a pyarrow Table, POINT_SCHEMA. A setting
    added after a part was written (config.ID_OMITTED_AT) reads as the value its points had."""
    table = _first_per_point(_read(uri, "points", columns))
    for k, v in ID_OMITTED_AT.items():
        if k in table.column_names:
            i = table.column_names.index(k)
            table = table.set_column(i, k, pc.fill_null(table.column(k), v))
    return table


def _first_per_point(table: pa.Table) -> pa.Table:
    if table.num_rows == 0 or "point_id" not in table.column_names:
        return table
    ids = table.column("point_id").to_pylist()
    seen: set[str] = set()
    keep = []
    for i, pid in enumerate(ids):
        if pid not in seen:
            seen.add(pid)
            keep.append(i)
    return table if len(keep) == len(ids) else table.take(keep)


def done_ids(uri: str) -> set[str]:
    """point_ids that already have a row (in a readable part)."""
    return set(_read(uri, "points", ["point_id"]).column("point_id").to_pylist())


def stops_of(uri: str, point_ids: Iterable[str]) -> dict[str, str]:
    """point_id -> stop_reason of those of `point_ids` that have a row, in whatever part (a
    compacted or shipped folder merges parts)."""
    t = _read(uri, "points", ["point_id", "stop_reason"],
              filter=pads.field("point_id").isin(list(point_ids)))
    return dict(zip(t.column("point_id").to_pylist(), t.column("stop_reason").to_pylist()))


def stop_counts(out: str, ids: set[str]) -> Counter:
    """Stop reasons of the stored points among `ids`."""
    t = read_points(out, columns=["point_id", "stop_reason"])
    return Counter(s for i, s in zip(t.column("point_id").to_pylist(),
                                     t.column("stop_reason").to_pylist()) if i in ids)


def read_curves(uri: str, point_ids: Iterable[str] | None = None) -> pa.Table:
    """Curve rows, optionally only of some points (filtered in pyarrow, not in memory)."""
    flt = None
    if point_ids is not None:
        flt = pads.field("point_id").isin(list(point_ids))
    return _read(uri, "curves", filter=flt)


def part_names(uri: str, prefix: str) -> list[str]:
    """Names (without .parquet) of the points parts that start with `prefix`."""
    fs, base = resolve(uri)
    folder = f"{base}/points"
    if not _exists(fs, folder):
        return []
    infos = fs.get_file_info(pafs.FileSelector(folder))
    out = []
    for info in infos:
        name = info.base_name
        if name.startswith(prefix) and name.endswith(".parquet"):
            out.append(name[: -len(".parquet")])
    return out


def _manifest(fs: pafs.FileSystem, base: str) -> dict[str, list[str]]:
    """The plan of a compaction under way or cut short, {} where there is none."""
    path = f"{base}/{COMPACTING}"
    if not _exists(fs, path):
        return {}
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode())


def _replaced(fs: pafs.FileSystem, base: str, table_name: str) -> set[str]:
    """Names of the parts of `table_name` that a merged part shown there replaces."""
    return {p for merged, parts in _manifest(fs, base).items()
            if _exists(fs, f"{base}/{table_name}/{merged}.parquet") for p in parts}
