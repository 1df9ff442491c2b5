"""Results on Parquet: the single source of truth for analysis.

An experiment folder (a local path or a URI that ``pyarrow.fs`` understands) holds::

    grid.json            the grid that was run (its identity: name, axes, fixed settings)
    points/<part>.parquet  one row per finished point (POINT_SCHEMA)
    curves/<part>.parquet  one row per point per evaluation (CURVE_SCHEMA)

Part files are written to a hidden name (``.tmp-...``, which pyarrow and pandas skip) and then
renamed, so a reader never sees half a file. A part is named after the pack and a sequence
number: a retried trial that writes the same part again replaces it instead of adding rows.
Readers still drop repeated ``point_id`` rows (first wins) so that no failure mode can show a
point twice.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .config import ESN_KEYS, Point

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
    ("device", pa.string()),
    ("memgrid_version", pa.string()),
    ("finished_at", pa.timestamp("ms", tz="UTC")),
]
POINT_SCHEMA = pa.schema(_POINT_SETTINGS + _POINT_RESULTS)
CURVE_SCHEMA = pa.schema([
    ("point_id", pa.string()),
    ("epoch", pa.int32()),
    ("train_loss", pa.float32()),   # mean training MAE over the epochs since the last evaluation
    ("eval_loss", pa.float32()),    # evaluation MAE
])


def point_settings(point: Point, grid_name: str) -> dict[str, Any]:
    """The settings half of a points row."""
    row = point.to_dict()
    row.update(point_id=point.point_id, grid=grid_name, q_lo=point.q_lo, q_hi=point.q_hi)
    if point.arch != "esn":
        for k in ESN_KEYS:
            row[k] = None
    return row


# ---------------------------------------------------------------------------------------------
# Filesystem helpers: one code path for local folders and URIs.


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a pyarrow URI (s3://, gs://, file://)."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    from pathlib import Path
    return pafs.LocalFileSystem(), str(Path(uri).absolute())


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def write_part(uri: str, table_name: str, part: str, table: pa.Table) -> str:
    """Write `table` as `<uri>/<table_name>/<part>.parquet`, atomically (write, then rename)."""
    fs, base = resolve(uri)
    folder = f"{base}/{table_name}"
    fs.create_dir(folder, recursive=True)
    tmp = f"{folder}/.tmp-{part}-{uuid.uuid4().hex[:8]}.parquet"
    final = f"{folder}/{part}.parquet"
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, final)
    return final


def write_points(uri: str, part: str, rows: list[dict], curves: list[dict]) -> None:
    """Write one part of finished points and their curves. Curves first: a points row is the
    mark of a finished point, so it must never exist without its curve."""
    if not rows:
        return
    if curves:
        write_part(uri, "curves", part, pa.Table.from_pylist(curves, schema=CURVE_SCHEMA))
    write_part(uri, "points", part, pa.Table.from_pylist(rows, schema=POINT_SCHEMA))


def _dataset(uri: str, table_name: str, schema: pa.Schema) -> pads.Dataset | None:
    fs, base = resolve(uri)
    folder = f"{base}/{table_name}"
    if not _exists(fs, folder):
        return None
    return pads.dataset(folder, filesystem=fs, format="parquet", schema=schema,
                        exclude_invalid_files=False)


def read_points(uri: str, columns: list[str] | None = None) -> pa.Table:
    """All finished points (one row per point_id) as a pyarrow Table, POINT_SCHEMA."""
    ds = _dataset(uri, "points", POINT_SCHEMA)
    if ds is None:
        return POINT_SCHEMA.empty_table()
    table = ds.to_table(columns=columns)
    return _first_per_point(table)


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
    """point_ids that already have a row."""
    ds = _dataset(uri, "points", POINT_SCHEMA)
    if ds is None:
        return set()
    return set(ds.to_table(columns=["point_id"]).column("point_id").to_pylist())


def read_curves(uri: str, point_ids: Iterable[str] | None = None) -> pa.Table:
    """Curve rows, optionally only of some points (filtered in pyarrow, not in memory)."""
    ds = _dataset(uri, "curves", CURVE_SCHEMA)
    if ds is None:
        return CURVE_SCHEMA.empty_table()
    flt = None
    if point_ids is not None:
        flt = pads.field("point_id").isin(list(point_ids))
    return ds.to_table(filter=flt)


def read_grid_identity(uri: str) -> dict | None:
    fs, base = resolve(uri)
    path = f"{base}/grid.json"
    if not _exists(fs, path):
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode())


def write_grid_identity(uri: str, identity: dict) -> None:
    fs, base = resolve(uri)
    fs.create_dir(base, recursive=True)
    tmp = f"{base}/.tmp-grid-{uuid.uuid4().hex[:8]}.json"
    with fs.open_output_stream(tmp) as f:
        f.write(json.dumps(identity, indent=1, sort_keys=True).encode())
    fs.move(tmp, f"{base}/grid.json")


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


def read_stops_of_parts(uri: str, parts: list[str]) -> dict[str, str]:
    """point_id -> stop_reason of the points in the named points parts."""
    fs, base = resolve(uri)
    stops: dict[str, str] = {}
    for part in parts:
        t = pq.read_table(f"{base}/points/{part}.parquet", filesystem=fs,
                          columns=["point_id", "stop_reason"])
        stops.update(zip(t.column("point_id").to_pylist(), t.column("stop_reason").to_pylist()))
    return stops
