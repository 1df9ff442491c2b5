"""A grid as a command asks for it, checked before Ray starts: the grid file with the command
line's settings, its size for the driver (MAX_POINTS, what the driver holds per point), what
this machine can train (the cost model of memgrid.packs), and the results folder it may go to.
Shared by `memgrid run` (``memgrid.cli``) and `memgrid launch` (``memgrid.run.launch``)."""

from __future__ import annotations

import dataclasses
import json
import os

import pyarrow.fs as pafs

from ..config import BY_ARCH, INT32_MAX, PACK_FREE, ConfigError, Grid, Point, for_arch
from ..grid_file import check_grid, check_resources, grid_from_identity, load_grid
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


def grown_identity(grid: Grid, out: str, old: dict | None) -> dict:
    """The grid.json that the results folder `out` holds once `grid` has run there; `old`: the
    one it holds now (None: none, and the grid's own identity is the answer).

    A folder grows. `grid` may list other values on its axes than `old` does (more seeds, more
    positions, another arch, another cells or layers value; fewer too) where nothing that
    shaped the stored points changes: the name, which settings are axes, every fixed setting
    (a per-arch one, such as ``lr: {rnn: 0.01}``, may add archs the folder has none of), the
    text of a user's cell (memgrid.user_cells; another cell may join), and the tuning (`tune_lr`; for a tuned grid also the axes its tuning run reads: positions,
    unless tune_lr.positions names them, and the stop settings and momentum). The answer is
    the union: each axis with the folder's values, then the grid's new ones; per-arch settings
    merged; the grid's `walk` (or none), which says which points a run trains, not what any
    point is. A run trains the grid's own points that the folder lacks; the points the grid
    leaves out stay stored and stay in grid.json, so that `status` and `analyze` count them,
    and the union's other combinations count as missing until a grid asks for them.

    ConfigError, one line naming the setting, for any other difference, or where the union is
    no grid memgrid accepts (say esn beside a layers value of 2)."""
    new = json.loads(json.dumps(grid.identity))  # as it reads back from JSON
    if old is None or old == new:
        return new

    def refuse(what: str) -> None:
        raise ConfigError(f"{out}/grid.json: this results folder holds another grid: {what}; "
                          "use another --out")

    old_axes, old_fixed = old.get("axes"), old.get("fixed")
    if not isinstance(old_axes, dict) or not isinstance(old_fixed, dict) \
            or not all(isinstance(v, list) for v in old_axes.values()):
        refuse(first_difference(old, new))
    old_cells, new_cells = old.get("cells") or {}, new.get("cells") or {}
    for name, src in new_cells.items():     # a user's cell: the same text as its stored points'
        was = old_cells.get(name)
        if isinstance(was, dict) and was.get("sha256") != src["sha256"]:
            refuse(f"cells.{name}: {src['origin']} is not the text its stored points were trained "
                   f"with (sha256 {str(was.get('sha256'))[:12]}... there, {src['sha256'][:12]}... "
                   "here)")
    rest = sorted((set(old) | set(new)) - {"axes", "fixed", "cells", "walk"})
    what = first_difference({k: old.get(k) for k in rest}, {k: new.get(k) for k in rest})
    if what:
        refuse(what)
    for k in sorted(set(old_axes) ^ set(new["axes"])):
        refuse(f"axes.{k}: an axis {'there, not here' if k in old_axes else 'here, not there'}")
    archs = old_axes.get("arch", [])
    fixed = {}
    for k in sorted(set(old_fixed) | set(new["fixed"])):
        a, b = old_fixed.get(k), new["fixed"].get(k)
        if k in BY_ARCH and isinstance(a, dict) and isinstance(b, dict):
            for arch in archs:
                if arch in b and a.get(arch) != b[arch]:
                    refuse(f"fixed.{k}.{arch} ({a.get(arch)!r} there, {b[arch]!r} here)")
            fixed[k] = {**a, **b}
        elif a != b:
            refuse(f"fixed.{k} ({a!r} there, {b!r} here)")
        else:
            fixed[k] = a
    tuning = old.get("tune_lr")
    axes = {}
    for k, values in new["axes"].items():
        before = old_axes[k]
        if tuning and values != before and k != "seed" and k in PACK_FREE \
                and not (k == "position" and tuning.get("positions")):
            reads = ("on every position of the grid" if k == "position" else
                     f"on each configuration's first {k}")
            refuse(f"axes.{k} ({before!r} there, {values!r} here): the learning rate is tuned "
                   f"(tune_lr) {reads}, so other values change the rates its stored points "
                   "trained at")
        axes[k] = before + [v for v in values if v not in before]
    union = {**old, "axes": axes, "fixed": fixed}
    union.pop("walk", None)     # which points a run trains, not what one is: this run's walk
    if "walk" in new:
        union["walk"] = new["walk"]
    if old_cells or new_cells:
        union["cells"] = {**old_cells, **new_cells}
    try:
        grid_from_identity(union, f"{out}/grid.json", check=True)
    except ConfigError as e:
        refuse(f"the union of its axes and this grid's is no grid ({str(e).split(': ', 1)[-1]})")
    return union


def growth(grid: Grid, old: dict | None) -> list[str]:
    """How `grid` grows the folder whose grid.json is `old` (:func:`grown_identity`), one line
    each: the values it adds to the folder's axes, the values of the folder it leaves out
    (their points stay stored). None where it adds and leaves out nothing."""
    if old is None:
        return []
    axes = json.loads(json.dumps(grid.axes))

    def listed(diff: dict) -> str:
        return "; ".join(f"{k} {', '.join(map(str, v))}" for k, v in diff.items() if v)

    added = {k: [v for v in vals if v not in old["axes"][k]] for k, vals in axes.items()}
    left = {k: [v for v in old["axes"][k] if v not in vals] for k, vals in axes.items()}
    lines = []
    if any(added.values()):
        lines.append(f"grid.json grows to hold this grid too: {listed(added)}")
    if any(left.values()):
        lines.append(f"this grid leaves out the folder's {listed(left)}: what the folder "
                     "stores of them stays")
    walk = grid.walk.to_dict() if grid.walk is not None else None
    if walk != old.get("walk"):
        lines.append(f"walk: {grid.walk.describe()}" if walk else
                     "no walk: every point of the axes trains, past settled limits too")
    return lines


def check_identity(grid: Grid, out: str, old: dict | None) -> None:
    """ConfigError where `old`, the grid.json read from `out`, is another grid's: one that
    `grid` cannot grow (:func:`grown_identity`)."""
    grown_identity(grid, out, old)


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


def prepare_out(grid: Grid, out: str) -> list[str]:
    """check_out, then record this grid in the folder's grid.json: the grid's identity where the
    folder has none, the union where the grid grows it (:func:`grown_identity`). Returns what
    grew (:func:`growth`). Call it holding the folder's lock (memgrid.results.lock)."""
    old = check_out(grid, out)
    union = grown_identity(grid, out, old)
    if union != old:
        write_grid_identity(out, union)
    return growth(grid, old)


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
