"""A grid as a command asks for it: the grid file with the command line's settings, and the
results folder it may go to. Shared by `memgrid run` (``memgrid.cli``) and `memgrid launch`
(``memgrid.launch``)."""

from __future__ import annotations

import dataclasses
import json

from . import store
from .config import ConfigError, Grid, check_resources, load_grid

EXIT_BAD_INPUT = 2
"""exit status of a command refused for its input (a grid file, a flag, a folder)"""


def first_difference(a: dict, b: dict, prefix: str = "") -> str:
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            d = first_difference(va, vb, f"{prefix}{k}.")
            if d:
                return d
        elif va != vb:
            return f"{prefix}{k} ({va!r} there, {vb!r} here)"
    return ""


def check_identity(grid: Grid, out: str, old: dict | None) -> None:
    """ConfigError where `old`, the grid.json read from `out`, is another grid's."""
    ident = json.loads(json.dumps(grid.identity))  # as it reads back from JSON
    if old is not None and old != ident:
        raise ConfigError(f"{out}/grid.json: this results folder holds another grid: "
                          f"{first_difference(old, ident)}; use another --out")


def check_out(grid: Grid, out: str) -> dict | None:
    """Check that `out` can be this grid's results folder (a folder, or one that can be made,
    holding no other grid); its grid.json, if any. Writes nothing."""
    try:
        store.check_folder(out, write=True)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:
        old = store.read_grid_identity(out)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{out}/grid.json: unreadable ({e})") from None
    check_identity(grid, out, old)
    return old


def prepare_out(grid: Grid, out: str) -> None:
    """check_out, then record this grid (grid.json) where the folder has none. Call it holding
    the folder's lock (memgrid.lock)."""
    if check_out(grid, out) is None:
        store.write_grid_identity(out, json.loads(json.dumps(grid.identity)))


def build_grid(path: str, *, smoke: bool, pack, cpus_per_trial, gpus_per_trial, max_epochs,
               no_plateau: bool, protocol: str | None = None) -> Grid:
    grid = load_grid(path)
    if protocol is not None and protocol != grid.protocol:   # another protocol: another folder
        grid = load_grid(path, protocol)
        grid = dataclasses.replace(grid, name=f"{grid.name}-{protocol}")
    res = check_resources(
        "command line", pack=pack if pack is not None else grid.resources.pack,
        cpus_per_trial=cpus_per_trial if cpus_per_trial is not None else grid.resources.cpus_per_trial,
        gpus_per_trial=gpus_per_trial if gpus_per_trial is not None else grid.resources.gpus_per_trial)
    grid = dataclasses.replace(grid, resources=res)
    overrides = {}
    if max_epochs is not None:
        if max_epochs < 1:
            raise ConfigError(f"command line: --max-epochs: must be >= 1, got {max_epochs}")
        overrides["max_epochs"] = max_epochs
    if no_plateau:
        overrides["plateau"] = False
    if overrides:
        grid = grid.with_overrides(**overrides)
    if no_plateau:
        grid = dataclasses.replace(grid, name=grid.name + "-noplateau")
    return grid.smoke() if smoke else grid
