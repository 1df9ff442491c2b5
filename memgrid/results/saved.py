"""Packs saved mid-training: ``<folder>/packs/<pack_id>.json`` (the pack's spec,
memgrid.packs.pack_spec) and ``<pack_id>.pt`` (its trainer's state), so that a run stopped on
one machine continues each pack where it was, on another.
"""

from __future__ import annotations

import pyarrow.fs as pafs

from ..packs import spec_points
from .layout import PACKS, _exists, _write_bytes, resolve


def write_pack_state(uri: str, pack_id: str, spec: str, state: bytes) -> None:
    """Save a pack mid-training: its spec (once) and `state` (torch.save of its trainer's
    state_dict), each atomically; the spec first, so that a state never lacks one."""
    fs, base = resolve(uri)
    folder = f"{base}/{PACKS}"
    if not _exists(fs, f"{folder}/{pack_id}.json"):
        fs.create_dir(folder, recursive=True)
        _write_bytes(fs, f"{folder}/{pack_id}.json", spec.encode())
    _write_bytes(fs, f"{folder}/{pack_id}.pt", state)


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


def drop_pack_state(uri: str, pack_id: str) -> None:
    """Forget a saved pack (it finished, or its points are all stored): state, then spec."""
    fs, base = resolve(uri)
    for ext in ("pt", "json"):
        path = f"{base}/{PACKS}/{pack_id}.{ext}"
        if _exists(fs, path):
            fs.delete_file(path)
