"""The results folder's layout: its names, where a folder may be, and its grid.json.

An experiment folder (a local path or a URI that ``pyarrow.fs`` understands) holds::

    grid.json            the grid that was run (its identity: name, axes, fixed settings)
    points/<part>.parquet  one row per finished point (results.schema.POINT_SCHEMA)
    curves/<part>.parquet  one row per point per evaluation (results.schema.CURVE_SCHEMA)
    packs/               packs saved mid-training (memgrid.results.saved)
    damaged/             what `memgrid run` moved aside (memgrid.results.upkeep), as it was
    tuning/              a tuned grid's tuning run, a results folder of its own
    .memgrid-lock        while a `memgrid run` writes the folder (memgrid.results.lock)
    .memgrid-compacting.json  while a compaction replaces parts: which part replaces which

One code path serves local folders and URIs (:func:`resolve`).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from .schema import TABLES

def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a pyarrow URI (s3://, gs://, file://)."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), str(Path(uri).absolute())


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


DAMAGED = "damaged"
"""the subfolder that holds what memgrid.results.upkeep moved aside, under its table's name"""
PACKS = "packs"
"""the subfolder of the packs that have not finished (memgrid.run.trial saves them)"""
TUNING = "tuning"
"""the subfolder of a tuned grid's results folder that holds its tuning run (memgrid.lr_tuning)"""
FOLDERS = (*TABLES, DAMAGED, PACKS)
"""the folders of a results folder that memgrid fills and reads: no other folder goes inside"""
COMPACTING = ".memgrid-compacting.json"
"""while a compaction replaces parts: {merged part: [the parts it replaces]} (hidden: pyarrow
and pandas skip it)"""
UNFINISHED = ".tmp-"
"""how the hidden name of a file being written begins (a part, grid.json, a saved pack): it is
written there, then renamed; one left behind is a write a kill cut short, which holds nothing
the folder stores"""
READ_ERRORS = (pa.ArrowException, OSError, ValueError)
"""what reading an unreadable part raises (truncated, garbage, another schema)"""


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
    tmp = f"{folder}/{UNFINISHED}{name}-{uuid.uuid4().hex[:8]}"
    with fs.open_output_stream(tmp) as f:
        f.write(json.dumps(obj, indent=1, sort_keys=True).encode())
    fs.move(tmp, path)


def _write_bytes(fs: pafs.FileSystem, path: str, blob: bytes) -> None:
    folder, name = path.rsplit("/", 1)
    tmp = f"{folder}/{UNFINISHED}{name}-{uuid.uuid4().hex[:8]}"
    with fs.open_output_stream(tmp) as f:
        f.write(blob)
    fs.move(tmp, path)
