"""Results on Parquet: the single source of truth for analysis.

An experiment folder (a local path or a URI that ``pyarrow.fs`` understands) holds::

    grid.json            the grid that was run (its identity: name, axes, fixed settings)
    points/<part>.parquet  one row per finished point (POINT_SCHEMA)
    curves/<part>.parquet  one row per point per evaluation (CURVE_SCHEMA)
    damaged/             parts that `memgrid run` moved aside (:func:`repair`), kept as found
    .memgrid-lock        while a `memgrid run` writes the folder (``memgrid.lock``)
    .memgrid-compacting.json  while :func:`compact` replaces parts: which part replaces which

Part files are written to a hidden name (``.tmp-...``, which pyarrow and pandas skip) and then
renamed, so a reader never sees half a file. A part is named after the pack and a sequence
number, and a points part and the curves part of the same points share that name: a retried
trial that writes the same part again replaces it instead of adding rows.

A point is stored once, so that ``pandas.read_parquet(folder/points)`` shows it once: one
`memgrid run` writes a folder at a time (``memgrid.lock``), a run trains only points that have
no row, and before training it repairs what a crash or an older version may have left
(:func:`repair`: unreadable parts, curves whose points part never landed, points stored
twice). Readers skip unreadable parts (:func:`damaged_parts` names them) and still drop repeated
``point_id`` rows (first wins).

A folder of thousands of small parts (one per pack and flush) is merged into a few by
:func:`compact` (`memgrid compact`, and `memgrid run` once every point is stored), safely at
any moment: readers and :func:`repair` know a compaction cut short.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .config import ESN_KEYS, ID_OMITTED_AT, Point

_POINT_SETTINGS = [
    ("point_id", pa.string()),
    ("grid", pa.string()),
    ("arch", pa.string()),
    ("layers", pa.int32()),
    ("cells", pa.int32()),
    ("position", pa.int32()),
    ("seed", pa.int32()),
    ("q_min", pa.int32()),          # configured length range
    ("q_max", pa.int32()),
    ("q_lo", pa.int32()),           # range this point trained on (after the `shift` rule)
    ("q_hi", pa.int32()),
    ("long_positions", pa.string()),
    ("readout", pa.string()),
    ("lr", pa.float64()),
    ("momentum", pa.float64()),
    ("optimizer", pa.string()),     # sgd | adam (null in parts written before it existed: sgd)
    ("lr_schedule", pa.string()),   # constant | cosine (null before it existed: constant)
    ("batch_size", pa.int32()),
    ("steps_per_epoch", pa.int32()),
    ("max_epochs", pa.int32()),
    ("tbptt", pa.int32()),
    ("eval_size", pa.int32()),
    ("eval_every", pa.int32()),
    ("solved_loss", pa.float64()),
    ("plateau", pa.bool_()),
    ("plateau_loss", pa.float64()),
    ("plateau_tol", pa.float64()),
    ("patience", pa.int32()),
    # esn settings: null for trained archs
    ("spectral_radius", pa.float64()),
    ("input_scaling", pa.float64()),
    ("connectivity", pa.float64()),
    ("leak_rate", pa.float64()),
    ("ridge", pa.float64()),
    ("mc_length", pa.int32()),      # Jaeger's MC on a stream: its length (0 = not measured)
    ("mc_low", pa.float64()),       # and its input range
    ("mc_high", pa.float64()),
]
_POINT_RESULTS = [
    ("units", pa.int32()),          # N = c * l
    ("params", pa.int64()),         # trainable parameters
    ("epochs", pa.int32()),         # epochs trained (0 for a fitted esn)
    ("stop_reason", pa.string()),   # solved | plateau | diverged | max_epochs | fitted
    ("loss", pa.float64()),         # final evaluation MAE
    ("best_loss", pa.float64()),    # lowest evaluation MAE seen
    ("r2", pa.float64()),           # squared corr(output, target) on the evaluation set: MC_p
    ("mc_stream", pa.float64()),    # Jaeger's MC on a stationary stream (null if not measured)
    ("wall_s", pa.float64()),       # seconds of the pack's wall time this point was in it
    ("pack_id", pa.string()),
    ("lr_source", pa.string()),     # how lr was chosen: `grid`, or `tuned: ...` (memgrid.tuning)
    ("device", pa.string()),
    ("kernel", pa.string()),        # the code path that trained it (KERNELS; null before version 3)
    ("memgrid_version", pa.string()),
    ("finished_at", pa.timestamp("ms", tz="UTC")),
]
SCHEMA_VERSION = 3
"""The tables' version, in every part file's metadata (``memgrid.schema``). 1: parts without
it (`optimizer` and `lr_schedule` may be missing there and read as `sgd` and `constant`);
2: `lr_schedule` and the version itself; 3: `kernel`. A later memgrid reads every earlier
version: a column a version adds reads as null in older parts, or as the value every older
point had (config.ID_OMITTED_AT); a column is never renamed or given another meaning, so that
a shipped dataset stays readable."""
ADDED_IN = {"points": {"optimizer": 2, "lr_schedule": 2, "kernel": 3}, "curves": {}}
"""{table: {column: the SCHEMA_VERSION from which a part must have it}}: a part of an earlier
version may lack the column; every other column every part must have. A part lacking a
column its version must have is damaged (:func:`lacking`)."""
KERNELS = ("c-<vector instructions>", "torch", "cuda")
"""what `kernel` holds: memgrid's C kernel (memgrid.kernels) built for the CPU's widest vector
instructions (`c-avx512`, `c-avx2`, ...: its rounding depends on them), PyTorch ops on the
CPU, or PyTorch ops on a GPU. The paths agree per step to float rounding but not over a
whole training run, so a row says which trained it."""
_VERSION_KEY = b"memgrid.schema"
_META = {_VERSION_KEY: str(SCHEMA_VERSION).encode()}
POINT_SCHEMA = pa.schema(_POINT_SETTINGS + _POINT_RESULTS, metadata=_META)
CURVE_SCHEMA = pa.schema([
    ("point_id", pa.string()),
    ("epoch", pa.int32()),
    ("train_loss", pa.float32()),   # mean training MAE over the epochs since the last evaluation
    ("eval_loss", pa.float32()),    # evaluation MAE
], metadata=_META)


def schema_version(schema: pa.Schema) -> int:
    """The SCHEMA_VERSION a part file was written with (1: none recorded)."""
    return int((schema.metadata or {}).get(_VERSION_KEY, b"1"))


def point_settings(point: Point, grid_name: str) -> dict[str, Any]:
    """The settings half of a points row."""
    row = point.to_dict()
    row.update(point_id=point.point_id, grid=grid_name, q_lo=point.q_lo, q_hi=point.q_hi)
    if point.arch != "esn":
        for k in ESN_KEYS:
            row[k] = None
    return row


def point_row(point: Point, grid_name: str, *, epochs: int, stop_reason: str, loss: float,
              best_loss: float, r2: float | None, wall_s: float, pack_id: str, device: str,
              mc_stream: float | None = None, lr_source: str | None = None,
              kernel: str | None = None) -> dict[str, Any]:
    """A points row (POINT_SCHEMA) of a finished point: its settings, what its run measured,
    and where, on which code path (`kernel`, see KERNELS; default: PyTorch ops on `device`)
    and by which memgrid it ran. The one row builder of trained and ESN points."""
    from . import __version__

    if kernel is None:
        kernel = "cuda" if device.startswith("cuda") else "torch"

    row = point_settings(point, grid_name)
    row.update(units=point.units, params=point.params, epochs=epochs, stop_reason=stop_reason,
               loss=loss, best_loss=best_loss,
               r2=r2 if r2 is not None and math.isfinite(r2) else None, mc_stream=mc_stream,
               wall_s=wall_s, pack_id=pack_id, device=device, kernel=kernel,
               memgrid_version=__version__,
               lr_source=lr_source, finished_at=datetime.now(timezone.utc))
    return row


def curve_rows(point_id: str, curve) -> list[dict[str, Any]]:
    """Curve rows (CURVE_SCHEMA) of one point from its (epoch, train_loss, eval_loss)."""
    return [dict(point_id=point_id, epoch=e, train_loss=t, eval_loss=v) for e, t, v in curve]


# ---------------------------------------------------------------------------------------------
# Filesystem helpers: one code path for local folders and URIs.


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a pyarrow URI (s3://, gs://, file://)."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), str(Path(uri).absolute())


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


TABLES = {"points": POINT_SCHEMA, "curves": CURVE_SCHEMA}
DAMAGED = "damaged"
"""the subfolder that holds what :func:`repair` moved aside, under its table's name"""
PACKS = "packs"
"""the subfolder of the packs that have not finished (memgrid.tune.pack_trial saves them)"""
FOLDERS = (*TABLES, DAMAGED, PACKS)
"""the folders of a results folder that memgrid fills and reads: no other folder goes inside"""
READ_ERRORS = (pa.ArrowException, OSError, ValueError)
"""what reading an unreadable part raises (truncated, garbage, another schema)"""


def lacking(schema: pa.Schema, table_name: str) -> list[str]:
    """The columns of `table_name` that a part file of `schema` lacks though its schema
    version must have them (ADDED_IN): such a part is damaged. ValueError where the version
    recorded is not a number."""
    version, added = schema_version(schema), ADDED_IN[table_name]
    return [f.name for f in TABLES[table_name]
            if f.name not in schema.names and added.get(f.name, 1) <= version]


def _enclosing(fs: pafs.FileSystem, base: str) -> tuple[str, str] | None:
    """(results folder, one of its FOLDERS) where the path `base` lies inside that folder (or
    is it), else None. A results folder here: one with a grid.json (every run writes it
    first)."""
    names = base.rstrip("/").split("/")
    for i in range(len(names) - 1, 0, -1):
        above = "/".join(names[:i])
        if names[i] in FOLDERS and above and _exists(fs, f"{above}/grid.json"):
            return above, names[i]
    return None


def check_folder(uri: str, *, write: bool = False) -> None:
    """Raise ValueError (one line, naming the path) if `uri` cannot be a results folder: it is a
    file, it sits under a file, it lies inside another results folder's points/, curves/,
    damaged/ or packs/ (whose readers would take it for their own), its points/ or curves/ is
    a file, or (`write`) a local folder that does not exist yet could not be made. Writes
    nothing."""
    try:
        fs, base = resolve(uri)
        kind = fs.get_file_info(base).type
    except READ_ERRORS as e:
        raise ValueError(f"{uri}: cannot open ({first_line(e)})") from None
    if kind == pafs.FileType.File:
        raise ValueError(f"{uri}: a file, not a results folder")
    if kind == pafs.FileType.NotFound and "://" not in uri:
        above = Path(base).parent
        while not above.exists() and above != above.parent:
            above = above.parent
        if not above.is_dir():
            raise ValueError(f"{uri}: cannot be a folder: {above} is a file")
    try:
        inside = _enclosing(fs, base)
    except READ_ERRORS as e:
        raise ValueError(f"{uri}: cannot open ({first_line(e)})") from None
    if inside is not None:
        folder, name = inside
        raise ValueError(f"{uri}: inside {name}/ of the results folder {folder}, whose readers "
                         f"would take it for their own; use a folder outside it")
    if kind == pafs.FileType.NotFound and "://" not in uri:
        if write and not os.access(above, os.W_OK | os.X_OK):
            raise ValueError(f"{uri}: cannot create it: {above} is not writable")
    if kind == pafs.FileType.Directory:
        for name in TABLES:
            if fs.get_file_info(f"{base}/{name}").type == pafs.FileType.File:
                raise ValueError(f"{uri}/{name}: a file, not the folder of {name} parts")
        if write and "://" not in uri and not os.access(base, os.W_OK | os.X_OK):
            raise ValueError(f"{uri}: not writable")


def check_results(uri: str) -> None:
    """Raise ValueError (one line, naming the path) unless `uri` is a results folder that
    exists: what :func:`check_folder` checks, and it holds a grid.json or a points/ folder.
    Writes nothing."""
    check_folder(uri)
    fs, base = resolve(uri)
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        raise ValueError(f"{uri}: no such results folder")
    if not (_exists(fs, f"{base}/grid.json") or _exists(fs, f"{base}/points")):
        raise ValueError(f"{uri}: not a memgrid results folder (no grid.json, no points/)")


def first_line(e: BaseException) -> str:
    """pyarrow's message, short: 'Parquet magic bytes not found in footer', not the path and
    the advice around it."""
    text = str(e).split("\n")[0]
    if "': " in text:
        text = text.split("': ", 1)[1]
    return text.split(". ")[0].rstrip(".")[:160]


def write_part(uri: str, table_name: str, part: str, table: pa.Table) -> str:
    """Write `table` as `<uri>/<table_name>/<part>.parquet`, atomically (write, then rename):
    a write that fails leaves nothing behind."""
    fs, base = resolve(uri)
    folder = f"{base}/{table_name}"
    fs.create_dir(folder, recursive=True)
    tmp = f"{folder}/.tmp-{part}-{uuid.uuid4().hex[:8]}.parquet"
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
    name them, and :func:`repair` moves them aside."""
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


def read_curves(uri: str, point_ids: Iterable[str] | None = None) -> pa.Table:
    """Curve rows, optionally only of some points (filtered in pyarrow, not in memory)."""
    flt = None
    if point_ids is not None:
        flt = pads.field("point_id").isin(list(point_ids))
    return _read(uri, "curves", filter=flt)


def read_grid_identity(uri: str) -> dict | None:
    """The folder's grid.json, or None where there is none. ValueError if it is not JSON, or
    JSON but not an object."""
    fs, base = resolve(uri)
    path = f"{base}/grid.json"
    if not _exists(fs, path):
        return None
    with fs.open_input_stream(path) as f:
        ident = json.loads(f.read().decode())
    if not isinstance(ident, dict):
        raise ValueError(f"a JSON {type(ident).__name__}, not an object")
    return ident


def write_grid_identity(uri: str, identity: dict) -> None:
    fs, base = resolve(uri)
    fs.create_dir(base, recursive=True)
    _write_json(fs, f"{base}/grid.json", identity)


def _write_json(fs: pafs.FileSystem, path: str, obj: dict) -> None:
    """`obj` as JSON at `path`, atomically (write a hidden file beside it, then rename)."""
    folder, name = path.rsplit("/", 1)
    tmp = f"{folder}/.tmp-{name}-{uuid.uuid4().hex[:8]}"
    with fs.open_output_stream(tmp) as f:
        f.write(json.dumps(obj, indent=1, sort_keys=True).encode())
    fs.move(tmp, path)


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


# ---------------------------------------------------------------------------------------------
# Packs saved mid-training: `<folder>/packs/<pack_id>.json` (the pack's spec, memgrid.packs.pack_spec)
# and `<pack_id>.pt` (its trainer's state), so that a run stopped on one machine continues each
# pack where it was, on another.

def write_pack_state(uri: str, pack_id: str, spec: str, state: bytes) -> None:
    """Save a pack mid-training: its spec (once) and `state` (torch.save of its trainer's
    state_dict), each atomically; the spec first, so that a state never lacks one."""
    fs, base = resolve(uri)
    folder = f"{base}/{PACKS}"
    if not _exists(fs, f"{folder}/{pack_id}.json"):
        fs.create_dir(folder, recursive=True)
        _write_bytes(fs, f"{folder}/{pack_id}.json", spec.encode())
    _write_bytes(fs, f"{folder}/{pack_id}.pt", state)


def _write_bytes(fs: pafs.FileSystem, path: str, blob: bytes) -> None:
    folder, name = path.rsplit("/", 1)
    tmp = f"{folder}/.tmp-{name}-{uuid.uuid4().hex[:8]}"
    with fs.open_output_stream(tmp) as f:
        f.write(blob)
    fs.move(tmp, path)


def read_pack_state(uri: str, pack_id: str) -> bytes | None:
    """The pack's saved state, or None where it has none."""
    fs, base = resolve(uri)
    path = f"{base}/{PACKS}/{pack_id}.pt"
    if not _exists(fs, path):
        return None
    with fs.open_input_stream(path) as f:
        return f.read()


def _pack_points(spec: str, pid: str) -> list[str] | None:
    """The point_ids of a saved pack's spec (memgrid.packs.pack_spec) named `pid`, or None
    where it is not one (garbage, another pack's spec, one this memgrid cannot read)."""
    from .packs import spec_points

    try:
        got, points = spec_points(spec)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return [p.point_id for p in points] if got == pid else None


def _pack_files(fs: pafs.FileSystem, folder: str) -> tuple[dict[str, str], list[str]]:
    """({pack_id: spec} of the packs saved in `folder`, names of the other visible entries
    there: a spec that is not its pack's, a state without its spec or a spec without its
    state, anything else)."""
    if fs.get_file_info(folder).type != pafs.FileType.Directory:
        return {}, []
    names = {i.base_name for i in fs.get_file_info(pafs.FileSelector(folder))
             if not i.base_name.startswith((".", "_"))}
    packs = {}
    for name in sorted(n for n in names if n.endswith(".json")):
        pid = name[:-len(".json")]
        if f"{pid}.pt" not in names:
            continue
        try:
            with fs.open_input_stream(f"{folder}/{name}") as f:
                spec = f.read().decode()
        except (OSError, UnicodeDecodeError):
            continue
        if _pack_points(spec, pid) is not None:
            packs[pid] = spec
    other = sorted(n for n in names if n.rsplit(".", 1)[0] not in packs)
    return packs, other


def saved_packs(uri: str) -> dict[str, str]:
    """pack_id -> spec of the packs saved mid-training in the folder: each a spec of its pack
    (memgrid.packs.pack_spec) beside a state."""
    fs, base = resolve(uri)
    return _pack_files(fs, f"{base}/{PACKS}")[0]


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


def drop_pack_state(uri: str, pack_id: str) -> None:
    """Forget a saved pack (it finished, or its points are all stored): state, then spec."""
    fs, base = resolve(uri)
    for ext in ("pt", "json"):
        path = f"{base}/{PACKS}/{pack_id}.{ext}"
        if _exists(fs, path):
            fs.delete_file(path)


# ---------------------------------------------------------------------------------------------
# Repair: run by `memgrid run` while it holds the folder's lock, before it trains anything.


def repair(uri: str) -> list[str]:
    """Make the folder one that plain pandas reads with every point once; returns one line per
    change. Nothing is deleted: parts go to `damaged/<table>/` as they were.

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
      merged parts already shown replace are removed, a merged part not shown is;
    - last, packs/ keeps only packs saved mid-training whose points are not all stored:
      anything else there goes to `damaged/packs/`, a finished pack's state is dropped.

    Call it only while holding the folder's lock: a writer at work would look like the second
    case."""
    fs, base = resolve(uri)
    msgs = _finish_compaction(uri, fs, base)
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


def _part_files(fs: pafs.FileSystem, folder: str) -> dict[str, bool]:
    """Part names (without .parquet) of the visible parts of `folder`, as a dict (ordered)."""
    return dict.fromkeys(_entries(fs, folder)[0], True)


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


# ---------------------------------------------------------------------------------------------
# Signals: a command that changes a folder ends on SIGINT, SIGTERM or SIGHUP only where it
# leaves the folder whole.

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""the signals that end a command cleanly: Ctrl-C, `kill`, the terminal closed"""
SIGNALS: list[int] = []
"""the signals that interrupted this process, first first"""


class Interrupted(KeyboardInterrupt):
    """A signal of STOP_SIGNALS ended the command, with what it had stored kept; its exit
    status is 128 + `signum` (130, 143, 129), as a shell reports it. A KeyboardInterrupt, so
    that code in between (Tune, Ray) lets it through as it would Ctrl-C."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def signals_held():
    """Changes of the folder (or clean-up) that a signal must not cut short: the signals of
    STOP_SIGNALS are noted in the list this yields (and in SIGNALS) while it runs, for the
    block to stop at a point of its choosing, and raised as :class:`Interrupted` after it,
    unless an exception is on its way already. Outside the main thread it holds nothing."""
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return

    def note(signum, frame):
        got.append(signum)
        SIGNALS.append(signum)

    old = {s: signal.signal(s, note) for s in STOP_SIGNALS}
    try:
        yield got
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if got:
        raise Interrupted(got[0])


# ---------------------------------------------------------------------------------------------
# Compaction: thousands of small parts (one per pack and flush) into a few, run by `memgrid
# compact` (and by `memgrid run` once every point is stored) while it holds the folder's lock.

COMPACT_ROWS = 1_000_000
"""rows (points and curves together) of one merged part at most: what compacting holds in
memory at once (~40 MB of curves), and what a reader of one part does"""
COMPACTING = ".memgrid-compacting.json"
"""while a compaction replaces parts: {merged part: [the parts it replaces]} (hidden: pyarrow
and pandas skip it)"""
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

    Call it holding the folder's lock (memgrid.lock), as :func:`repair`."""
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
    return f"{base}/{table_name}/.tmp-{merged}.parquet"


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
