"""A grid as a command asks for it, checked before Ray starts: the grid file with the command
line's settings, its size for the driver (MAX_POINTS, what the driver holds per point), what
this machine can train (the cost model of memgrid.packs), and the results folder it may go to.
Shared by `memgrid run` (``memgrid.cli``) and `memgrid launch` (``memgrid.run.launch``)."""

from __future__ import annotations

import dataclasses
import json
import os

import pyarrow.fs as pafs

from ..config import INT32_MAX, ConfigError, Grid, Point, for_arch
from ..grid_file import check_grid, check_resources, load_grid
from ..packs import point_bytes, point_seconds
from ..results import (PACKS, TABLES, check_folder, damaged_parts, first_line, part_names,
                       read_grid_identity, resolve, write_grid_identity)
from .plan import local_cpus

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


def check_link(path: str, flag: str = "--out") -> None:
    """ConfigError where the local `path` is a symbolic link to nothing (the folder behind it
    would not be made; its lock could not be taken)."""
    if "://" not in path and os.path.islink(path) and not os.path.exists(path):
        raise ConfigError(f"command line: {flag}: {path} is a symbolic link to "
                          f"{os.readlink(path)}, which does not exist")


def read_identity(results: str) -> dict | None:
    """The grid.json of the folder `results` (None: it has none). ConfigError, one line naming
    it, where it cannot be read or is not a JSON object."""
    try:
        return read_grid_identity(results)
    except UnicodeDecodeError:
        why = "not text"
    except (OSError, ValueError) as e:
        why = first_line(e) if str(e) else type(e).__name__
    raise ConfigError(f"{results.rstrip('/')}/grid.json: unreadable ({why}): not a memgrid "
                      "results folder's")


OWN_NAMES = ("grid.json", *TABLES, PACKS, "tuning", "report")
"""what memgrid writes at the top of a results folder (besides hidden files: a lock, files
being written)"""


def foreign_content(out: str) -> str:
    """Where the existing folder `out` has no grid.json: the first thing in it that memgrid does
    not write ('' if none): a file or folder of another name, or a points/ whose every part is
    unreadable as a points table (another tool's Parquet files)."""
    fs, base = resolve(out)
    try:
        infos = fs.get_file_info(pafs.FileSelector(base))
    except (OSError, ValueError):
        return ""
    for info in sorted(infos, key=lambda i: i.base_name):
        if not info.base_name.startswith(".") and info.base_name not in OWN_NAMES:
            return info.base_name
    parts = part_names(out, "")
    if parts:
        damaged = [p for p, _ in damaged_parts(out) if "/points/" in p]
        if len(damaged) >= len(parts):
            return f"points/{parts[0]}.parquet (not a memgrid points table)"
    return ""


def check_out(grid: Grid, out: str) -> dict | None:
    """Check that `out` can be this grid's results folder (a folder, or one that can be made,
    holding no other grid and nothing another program wrote); its grid.json, if any. Writes
    nothing."""
    check_link(out)
    try:
        check_folder(out, write=True)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    old = read_identity(out)
    if old is None:
        other = foreign_content(out)
        if other:
            raise ConfigError(f"{out}: holds {other} and no grid.json: not a memgrid results "
                              "folder; use another --out")
    check_identity(grid, out, old)
    return old


def prepare_out(grid: Grid, out: str) -> None:
    """check_out, then record this grid (grid.json) where the folder has none. Call it holding
    the folder's lock (memgrid.results.lock)."""
    if check_out(grid, out) is None:
        write_grid_identity(out, json.loads(json.dumps(grid.identity)))


def build_grid(path: str, *, smoke: bool, pack, cpus_per_trial, gpus_per_trial, max_epochs,
               no_plateau: bool, protocol: str | None = None) -> Grid:
    """The grid file at `path` as a command's flags change it (each flag checked and named
    as a flag: `command line: --max-epochs: ...`)."""
    flags = dict(pack=pack, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial)
    given = check_resources("command line", **flags)       # the flags alone, named as flags
    if max_epochs is not None and not 1 <= max_epochs <= INT32_MAX:
        raise ConfigError(f"command line: --max-epochs: from 1 to {INT32_MAX:,} (2^31 - 1), "
                          f"got {max_epochs}")
    grid = load_grid(path)
    if protocol is not None and protocol != grid.protocol:   # another protocol: another folder
        grid = load_grid(path, protocol)
        grid = dataclasses.replace(grid, name=f"{grid.name}-{protocol}")
    res = dataclasses.replace(grid.resources, **{k: getattr(given, k) for k, v in flags.items()
                                                 if v is not None})
    grid = dataclasses.replace(grid, resources=res)
    overrides = {}
    if max_epochs is not None:
        overrides["max_epochs"] = max_epochs
    if no_plateau:
        overrides["plateau"] = False
    if overrides:
        grid = grid.with_overrides(**overrides)
        check_grid(grid)
    if no_plateau:
        grid = dataclasses.replace(grid, name=grid.name + "-noplateau")
    return grid.smoke() if smoke else grid


WORKER_BYTES = 0.2e9
"""memory of one trial's process (a Ray worker with torch) before it trains: 150-200 MB"""
POINT_S_MAX = 7 * 86400.0
"""longest a single point may train at packs.FLOPS_PER_S (packs.point_seconds): a point is
never cut across trials"""
MAX_POINTS = 100_000
"""points `memgrid run` expands without being asked (`--max-points`): the driver holds every
point and pack and hands them to Tune, about DRIVER_BYTES_PER_POINT and DRIVER_S_PER_POINT each
before the first trial starts (fig6_rnn.yaml, the largest paper grid, has 10,000)"""
DRIVER_BYTES_PER_POINT = 2.3e3
"""driver memory per point of a grid (measured: 2.3 GB for 10^6 points, 0.8 GB for 10^5, its
embedded Ray's client included; each Point holds its ~32 settings in a dict of its own)"""
DRIVER_S_PER_POINT = 5e-5
"""driver seconds per point before Tune starts its trials (measured on 2 loaded cores: 51 s for
10^6 points, 16-23 s for 10^5, Ray's start included)"""


def check_size(grid: Grid, max_points: int = MAX_POINTS, flag: str = "--max-points") -> None:
    """Refuse a grid of more than `max_points` points before it is expanded, with what it would
    cost the driver."""
    n = grid.n_points
    if n > max_points:
        gb, s = n * DRIVER_BYTES_PER_POINT / 1e9, n * DRIVER_S_PER_POINT
        wait = f"{s / 60:.0f} min" if s >= 120 else f"{s:.0f} s"
        raise ConfigError(
            f"{grid.source}: axes: {n:,} points, more than {max_points:,}: the driver "
            f"would need about {gb:.1f} GB and {wait} before the first trial; split the grid, "
            f"or pass {flag} {n}")


def physical_memory() -> float:
    """Bytes of memory this machine has (8 GB where it cannot be read)."""
    try:
        return float(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        return 8e9


def largest_points(grid: Grid) -> list[Point]:
    """Per arch, the point of the grid's largest values (cells, layers, position, batch size,
    epochs, ...): it needs at least the memory and time of any point of that arch. The grid
    is not expanded."""
    worst = {k: max(v) if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
             else v[0] for k, v in grid.axes.items() if k != "arch"}
    return [Point(**for_arch({**grid.fixed, **worst, "arch": a})) for a in grid.axes["arch"]]


def _days(s: float) -> str:
    return f"{s / 86400:,.0f} days" if s >= 2 * 86400 else f"{s / 3600:,.0f} hours"


def check_driver(grid: Grid) -> None:
    """ConfigError where this machine's memory cannot hold the grid's points (the driver of a
    run, `status` and `analyze` expand them all), before they are expanded."""
    mem = physical_memory()
    need = grid.n_points * DRIVER_BYTES_PER_POINT
    if need > mem:
        raise ConfigError(f"{grid.source}: axes: {grid.n_points:,} points: expanding them would "
                          f"take about {need / 1e9:.0f} GB, this machine has {mem / 1e9:.0f} GB; "
                          "split the grid")


def check_machine(grid: Grid, *, here: bool, driver: bool = True, num_cpus: int | None = None,
                  cpus_name: str = "command line: --cpus-per-trial") -> None:
    """ConfigError, before Ray starts, where the grid cannot run: its largest point takes more
    than POINT_S_MAX to train; the driver (`driver`: on this machine) cannot hold its points in
    this machine's memory; or, where its trials run on this machine's CPUs (`here`: the
    embedded Ray of `num_cpus` or all CPUs), one point needs more memory than the machine has,
    or the trials at once would (each a process of WORKER_BYTES). `cpus_name`: where the CPUs
    per trial were set, for the message."""
    mem = physical_memory()
    here = here and grid.resources.gpus_per_trial == 0
    if driver:
        check_driver(grid)
    for p in largest_points(grid):
        what = (f"{p.arch}, l = {p.layers}, c = {p.cells}, p = {p.position}, {p.max_epochs} "
                f"epochs of {p.steps_per_epoch} steps of {p.batch_size} sequences")
        s = point_seconds(p)
        if s > POINT_S_MAX:
            raise ConfigError(f"{grid.source}: axes: its largest point ({what}) would train for "
                              f"{_days(s)} at the least; a point may take {_days(POINT_S_MAX)}: "
                              "fewer cells or layers, or a smaller budget")
        b = point_bytes(p)
        if here and b > mem:
            raise ConfigError(f"{grid.source}: axes: its largest point ({what}, stream MC of "
                              f"{p.mc_length} steps) needs about {b / 1e9:,.0f} GB; this machine "
                              f"has {mem / 1e9:.0f} GB")
    if here:
        cpus = num_cpus or local_cpus()
        slots = int(cpus // grid.resources.cpus_per_trial)
        if slots * WORKER_BYTES > mem / 2:
            most = int(mem / 2 // WORKER_BYTES)
            raise ConfigError(f"{cpus_name}: {grid.resources.cpus_per_trial:g} makes {slots:,} "
                              f"trials at once on {cpus} CPUs, a process each; this machine's "
                              f"memory holds {most}: at least {cpus / most:.2g} CPUs per trial")
