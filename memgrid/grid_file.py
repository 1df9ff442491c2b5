"""Grid files: reading a grid file (YAML) strictly and checking every setting.

A grid file has four sections beside its ``name``::

    name: fig4_rnn
    axes:        # expand to points (the cartesian product)
      arch: [rnn]
      layers: [1]
      cells: [5]
      position: 1..10        # "a..b" is an inclusive integer range
      seed: 0..9
    task:  {q_min: 10, q_max: 15, long_positions: shift}
    train: {lr: 0.01, momentum: 0.9, batch_size: 128, steps_per_epoch: 1, max_epochs: 5000}
    stop:  {solved_loss: 0.01, plateau: true, patience: 1000}
    resources: {cpus_per_trial: 1, gpus_per_trial: 0, pack: auto}

Every key is checked at load time: an unknown key, a wrong type or an impossible value raises
:class:`ConfigError` naming the file and the key. ``train``/``task``/``stop`` settings may also
be axes (``lr: [0.01, 0.03]`` under ``axes``) when they are in :data:`AXIS_KEYS`. The same checks
read a results folder's grid.json back (:func:`grid_from_identity`). What a grid is, once loaded,
is :mod:`memgrid.config`'s (:class:`Grid`, :class:`Point`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import yaml

from . import user_cells
from .cells import CELLS
from .config import (AXIS_KEYS, BY_ARCH, DEFAULT_PROTOCOL, ESN_LOOP_CHANCE_MIN, INT32_MAX,
                     LONG_POSITION_RULES, LR_SCHEDULES, MC_BYTES_PER_STEP, MC_LENGTH_MAX,
                     OPTIMIZERS, POINT_FIELDS, PROTOCOLS, READOUTS, REQUIRED_AXES, SECTIONS,
                     ConfigError, Grid, LRTuning, Point, Resources, Walk, default_k_max,
                     esn_loop_chance, mc_length_min, units)

def _where(source: str, key: str) -> str:
    return f"{source}: {key}"


def _check_type(source: str, key: str, value: Any, kind: type) -> Any:
    """Strict scalar types: bools are not ints, ints are accepted for floats."""
    ok = (
        isinstance(value, bool) if kind is bool
        else isinstance(value, int) and not isinstance(value, bool) if kind is int
        else isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float
        else isinstance(value, str)
    )
    if not ok:
        raise ConfigError(f"{_where(source, key)}: expected {kind.__name__}, got {value!r}")
    return float(value) if kind is float else value


def _field_type(name: str) -> type:
    return {"int": int, "float": float, "str": str, "bool": bool}[POINT_FIELDS[name].type]


MAX_AXIS_VALUES = 10**7
"""values one `a..b` range may expand to (the grid's size has its own limit,
memgrid.run.preflight.MAX_POINTS)"""
def _parse_axis(source: str, key: str, raw: Any) -> list:
    """A list, a scalar, or "a..b" (inclusive integer range)."""
    where = f"axes.{key}"
    if isinstance(raw, str) and ".." in raw and _field_type(key) is int:
        lo, _, hi = raw.partition("..")
        try:
            lo_i, hi_i = int(lo), int(hi)
        except ValueError:
            raise ConfigError(f"{_where(source, where)}: bad range {raw!r} (want 'a..b')") from None
        if hi_i < lo_i:
            raise ConfigError(f"{_where(source, where)}: empty range {raw!r}")
        if hi_i - lo_i >= MAX_AXIS_VALUES:
            raise ConfigError(f"{_where(source, where)}: {raw!r} has {hi_i - lo_i + 1:,} values "
                              f"(at most {MAX_AXIS_VALUES:,} per axis)")
        return list(range(lo_i, hi_i + 1))
    values = raw if isinstance(raw, list) else [raw]
    if not values:
        raise ConfigError(f"{_where(source, where)}: empty list")
    out = [_check_type(source, where, v, _field_type(key)) for v in values]
    if len(set(out)) != len(out):
        raise ConfigError(f"{_where(source, where)}: repeated values {raw!r}")
    return out


NAME_RE = re.compile(r"\w[\w.+=,@-]{0,127}")
"""A grid's name is the default results folder's name (`results/<name>`): one plain folder name
of letters, digits and `_ . - + = , @`, not starting with `.` or `-`, at most 128 characters."""


def _check_name(source: str, name: str) -> None:
    if not NAME_RE.fullmatch(name) or ".." in name:
        raise ConfigError(f"{_where(source, 'name')}: {name!r} is not a plain folder name (letters, "
                          "digits, _ . - + = , @; not starting with . or -; no ..)")


def _location(grid: Grid, key: str) -> str:
    """Where a setting stands in the grid file: `axes.cells`, `train.lr`, ..."""
    if key in grid.axes:
        return f"axes.{key}"
    return next((f"{sec}.{key}" for sec, keys in SECTIONS.items() if key in keys), key)


def _parse_by_arch(source: str, where: str, raw: dict, archs: list) -> dict[str, float]:
    """A per-architecture setting (BY_ARCH): a float for every trained arch of the grid."""
    out = {}
    for a, v in raw.items():
        if a not in CELLS:
            raise ConfigError(f"{_where(source, where)}.{a}: not a trained arch (one of {', '.join(CELLS)})")
        out[a] = _check_type(source, f"{where}.{a}", v, float)
    missing = [a for a in archs if a != "esn" and a not in out]
    if missing:
        raise ConfigError(f"{_where(source, where)}: no value for arch {', '.join(missing)}")
    return out


def _check_value(source: str, where: str, v: Any) -> None:
    """Impossible values, one setting at a time. `where`: the dotted key in the file."""
    key = where.rsplit(".", 1)[-1]
    if isinstance(v, dict) and key in BY_ARCH:     # per architecture: each value on its own
        for x in v.values():
            _check_value(source, where, x)
        return
    bad = None
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) > INT32_MAX:
        bad = (f"at most {INT32_MAX:,} (2^31 - 1: the points table stores it as a 32-bit "
               f"integer), got {v}")
    elif key == "arch" and v not in CELLS and v != "esn":
        bad = f"unknown arch {v!r} (one of {', '.join((*CELLS, 'esn'))})"
    elif key == "readout" and v not in READOUTS:
        bad = f"unknown readout {v!r} (one of {', '.join(READOUTS)})"
    elif key == "optimizer" and v not in OPTIMIZERS:
        bad = f"unknown optimizer {v!r} (one of {', '.join(OPTIMIZERS)})"
    elif key == "lr_schedule" and v not in LR_SCHEDULES:
        bad = f"unknown lr_schedule {v!r} (one of {', '.join(LR_SCHEDULES)})"
    elif key == "long_positions" and v not in LONG_POSITION_RULES:
        bad = f"unknown rule {v!r} (one of {', '.join(LONG_POSITION_RULES)})"
    elif key in ("layers", "cells", "position", "q_min", "q_max", "batch_size", "steps_per_epoch",
                 "max_epochs", "eval_size", "eval_every") and v < 1:
        bad = f"must be >= 1, got {v}"
    elif key in ("seed", "tbptt", "patience") and v < 0:
        bad = f"must be >= 0, got {v}"
    elif key == "mc_length" and v != 0 and v < 200:
        bad = f"0 (off) or a stream of >= 200 steps, got {v}"
    elif key == "mc_length" and v > MC_LENGTH_MAX:
        bad = (f"at most {MC_LENGTH_MAX:,} steps (the stream's inputs, states and delays take "
               f"about {MC_BYTES_PER_STEP:g} bytes per step and unit), got {v:,}")
    elif key in ("mc_low", "mc_high") and not math.isfinite(v):
        bad = f"must be a finite number, got {v}"
    elif key == "lr" and not (v > 0 and math.isfinite(v)):
        bad = f"must be a finite number > 0, got {v}"
    elif key in ("spectral_radius", "input_scaling") and not 0 < v <= ESN_SCALE_MAX:
        bad = f"must be in (0, {ESN_SCALE_MAX:g}], got {v}"
    elif key == "leak_rate" and not 0 < v <= 1:
        bad = f"must be in (0, 1] (1 = no leak; above 1 the states grow without bound), got {v}"
    elif key == "momentum" and not 0 <= v < 1:
        bad = f"must be in [0, 1), got {v}"
    elif key in ("connectivity",) and not 0 < v <= 1:
        bad = f"must be in (0, 1], got {v}"
    elif key in ("solved_loss", "plateau_loss", "plateau_tol", "ridge") and not (v >= 0 and math.isfinite(v)):
        bad = f"must be a finite number >= 0, got {v}"
    if bad:
        raise ConfigError(f"{_where(source, where)}: {bad}")


ESN_SCALE_MAX = 1e6
"""largest spectral_radius and input_scaling: reservoirs run in float32, and weights this large
already saturate every unit; far larger ones overflow"""
def check_grid(grid: Grid) -> None:
    """Every setting of `grid` on its own, then the checks across settings over the whole grid
    (cheap: per distinct combination). ConfigError naming the grid's source and the key."""
    src = grid.source
    merged = {**grid.fixed, **{k: v[0] for k, v in grid.axes.items()}}
    user = {s.name for s in grid.user_cells}          # checked by memgrid.user_cells.check
    for k, vals in list(grid.axes.items()) + [(k, [v]) for k, v in grid.fixed.items()]:
        for v in vals:
            if not (k == "arch" and v in user):
                _check_value(src, _location(grid, k), v)
    q_min = merged.get("q_min", Point.q_min)
    q_max = merged.get("q_max", Point.q_max)
    qmins = grid.axes.get("q_min", [q_min])
    qmaxs = grid.axes.get("q_max", [q_max])
    if max(qmins) > min(qmaxs):
        raise ConfigError(f"{_where(src, _location(grid, 'q_min'))}: q_min {max(qmins)} > q_max {min(qmaxs)}")
    rules = grid.axes.get("long_positions", [merged.get("long_positions", "shift")])
    if "error" in rules:
        p_max = max(grid.axes["position"])
        if p_max > min(qmins):
            raise ConfigError(
                f"{_where(src, 'axes.position')}: position {p_max} > q_min {min(qmins)}, and "
                "task.long_positions is 'error' (use 'shift' to move the length range up)")
    mc_length = merged.get("mc_length", Point.mc_length)
    if mc_length:
        n_max = max((units(a, l, c) for a in grid.axes["arch"] if a in CELLS or a == "esn"
                     for l in grid.axes["layers"] for c in grid.axes["cells"]), default=0)
        if mc_length < mc_length_min(n_max):
            raise ConfigError(
                f"{_where(src, _location(grid, 'mc_length'))}: a stream of {mc_length} steps is "
                f"too short for the MC of {n_max} units (delays 1..{default_k_max(n_max)}): at "
                f"least {mc_length_min(n_max):,}, or 0 (not measured)")
    if merged.get("mc_low", Point.mc_low) >= merged.get("mc_high", Point.mc_high):
        raise ConfigError(f"{_where(src, _location(grid, 'mc_low'))}: mc_low must be below mc_high")
    archs = grid.axes.get("arch", [])
    if grid.max_position is not None and all(a in CELLS or a == "esn" for a in archs) \
            and grid.n_points == 0:
        raise ConfigError(f"{_where(src, 'max_position')}: {grid.max_position}N leaves no "
                          f"position of axes.position to train")
    if "esn" in archs and max(grid.axes.get("layers", [1])) > 1:
        raise ConfigError(f"{_where(src, 'axes.layers')}: esn has one reservoir layer (layers: [1])")
    if "esn" in archs:
        cells = min(grid.axes["cells"])
        conn = min(grid.axes.get("connectivity", [merged.get("connectivity", Point.connectivity)]))
        if esn_loop_chance(cells, conn) < ESN_LOOP_CHANCE_MIN:
            need = 1 - (1 - ESN_LOOP_CHANCE_MIN) ** (1 / cells)
            raise ConfigError(
                f"{_where(src, _location(grid, 'connectivity'))}: {conn:g} is too sparse for "
                f"{cells} cells: most draws would have no recurrent loop (spectral radius 0); "
                f"use >= {need:.2g}")


def parse_grid(raw: Any, source: str = "<grid>", protocol: str | None = None) -> Grid:
    """Build a :class:`Grid` from a parsed YAML mapping, checking every key.

    The training settings the grid leaves open come from its `protocol` (:data:`PROTOCOLS`;
    `protocol` here overrides the file's) and are written into `fixed`, so that grid.json says
    every setting whatever later versions' defaults are."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a grid file is a mapping with axes/task/train/stop/resources")
    allowed = {"name", "protocol", "tune_lr", "max_position", "walk", "axes", "resources",
               *SECTIONS}
    for k in raw:
        if k not in allowed:
            raise ConfigError(f"{_where(source, k)}: unknown key (allowed: {', '.join(sorted(allowed))})")
    name = raw.get("name", Path(source).stem)
    _check_type(source, "name", name, str)
    _check_name(source, name)

    axes_raw = raw.get("axes")
    if not isinstance(axes_raw, dict):
        raise ConfigError(f"{_where(source, 'axes')}: missing or not a mapping")
    axes: dict[str, list] = {}
    for k in axes_raw:
        if k not in AXIS_KEYS:
            raise ConfigError(f"{_where(source, 'axes.' + str(k))}: unknown axis (one of {', '.join(AXIS_KEYS)})")
    for k in REQUIRED_AXES:
        if k not in axes_raw:
            raise ConfigError(f"{_where(source, 'axes.' + k)}: missing")
    user = _user_cells(source, axes_raw["arch"])
    if user:                  # their names stand on the axis from here on
        axes_raw = {**axes_raw, "arch": [user[v].name if v in user else v
                                         for v in axes_raw["arch"]]}
    for k in AXIS_KEYS:  # canonical order, whatever the file's order
        if k in axes_raw:
            axes[k] = _parse_axis(source, k, axes_raw[k])

    fixed: dict[str, Any] = {}
    for section, keys in SECTIONS.items():
        body = raw.get(section, {}) or {}
        if not isinstance(body, dict):
            raise ConfigError(f"{_where(source, section)}: not a mapping")
        for k, v in body.items():
            where = f"{section}.{k}"
            if k not in keys:
                raise ConfigError(f"{_where(source, where)}: unknown key (one of {', '.join(keys)})")
            if k in axes:
                raise ConfigError(f"{_where(source, where)}: also given as an axis")
            if k == "tbptt" and v is None:
                v = 0
            if k in BY_ARCH and isinstance(v, dict):
                fixed[k] = _parse_by_arch(source, where, v, axes.get("arch", []))
                continue
            fixed[k] = _check_type(source, where, v, _field_type(k))

    if protocol is None:
        protocol = raw.get("protocol", DEFAULT_PROTOCOL)
        where = _where(source, "protocol")
    else:
        where = "command line: --protocol"
    if not isinstance(protocol, str) or protocol not in PROTOCOLS:
        raise ConfigError(f"{where}: unknown protocol {protocol!r} (one of {', '.join(PROTOCOLS)})")
    tune_lr = _parse_tune_lr(source, raw.get("tune_lr", PROTOCOLS[protocol].get("tune_lr")),
                             axes, fixed)
    for k, v in PROTOCOLS[protocol].items():
        if k not in axes and k != "tune_lr" and not (k == "lr" and tune_lr is not None):
            fixed.setdefault(k, v)

    res_raw = raw.get("resources", {}) or {}
    if not isinstance(res_raw, dict):
        raise ConfigError(f"{_where(source, 'resources')}: not a mapping")
    res = {}
    for k, v in res_raw.items():
        where = f"resources.{k}"
        if k not in ("cpus_per_trial", "gpus_per_trial", "pack"):
            raise ConfigError(f"{_where(source, where)}: unknown key (one of cpus_per_trial, gpus_per_trial, pack)")
        res[k] = v
    grid = Grid(name=name, axes=axes, fixed=fixed, resources=check_resources(source, **res),
                source=source, protocol=protocol, tune_lr=tune_lr,
                user_cells=tuple(user.values()),
                max_position=_max_position(source, raw.get("max_position")),
                walk=_parse_walk(source, raw.get("walk")))
    for s in grid.user_cells:            # one step of the grid's sizes, before anything runs
        try:
            user_cells.check(CELLS[s.name], [(l, c) for l in axes["layers"] for c in axes["cells"]],
                             s.spec)
        except user_cells.CellError as e:
            raise ConfigError(f"{_where(source, 'axes.arch')}: {e}") from None
    check_grid(grid)
    return grid


def _user_cells(source: str, archs: Any) -> dict:
    """The user's cells an `arch` axis names by import path (``file.py:NAME``, relative to
    the grid file, or ``module:NAME``): {the axis's value: its CellSource}, each loaded and
    registered under its own name (memgrid.user_cells). ConfigError, one line naming the
    grid file, the file and the name, where one cannot be."""
    if not isinstance(archs, list):
        return {}
    out = {}
    base = Path(source).parent if source not in ("<grid>", "") else Path(".")
    for v in archs:
        if not user_cells.is_import_path(v):
            continue
        try:
            cell = user_cells.load(user_cells.locate(v, base))
        except user_cells.CellError as e:
            raise ConfigError(f"{_where(source, 'axes.arch')}: {e}") from None
        out[v] = user_cells.source_of(cell.name)
    return out


TUNE_LR_KEYS = ("candidates", "seeds", "eta", "rungs", "positions")
MAX_RUNGS = 31
"""most halvings of a tuning run: max_epochs < 2^31 and eta >= 2 put every later rung on
epoch 0"""


def _switched_section(source: str, name: str, raw: Any, keys: tuple[str, ...]) -> dict | None:
    """A section that is off (absent, null, false), on at its defaults (`true`: an empty
    mapping) or a mapping of some of `keys`; ConfigError naming the key otherwise."""
    if raw is None or raw is False:
        return None
    if raw is True:
        return {}
    where = _where(source, name)
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a mapping with {', '.join(keys)} (or true)")
    for k in raw:
        if k not in keys:
            raise ConfigError(f"{where}.{k}: unknown key (one of {', '.join(keys)})")
    return raw


def _parse_tune_lr(source: str, raw: Any, axes: dict, fixed: dict):
    """The `tune_lr:` section (:class:`LRTuning`), or None where there is none. `true` or an
    empty mapping: the defaults."""
    raw = _switched_section(source, "tune_lr", raw, TUNE_LR_KEYS)
    if raw is None:
        return None
    where = _where(source, "tune_lr")
    out = LRTuning()
    cand = [_check_type(source, "tune_lr.candidates", v, float)
            for v in raw.get("candidates", out.candidates)]
    seeds = [_check_type(source, "tune_lr.seeds", v, int) for v in raw.get("seeds", out.seeds)]
    eta = _check_type(source, "tune_lr.eta", raw.get("eta", out.eta), int)
    rungs = _check_type(source, "tune_lr.rungs", raw.get("rungs", out.rungs), int)
    if not cand or len(set(cand)) != len(cand) or not all(c > 0 and math.isfinite(c) for c in cand):
        raise ConfigError(f"{where}.candidates: distinct learning rates > 0, got {cand}")
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"{where}.seeds: distinct seeds >= 0, got {seeds}")
    reported = set(axes.get("seed", []))
    if reported & set(seeds):
        raise ConfigError(f"{where}.seeds: {sorted(reported & set(seeds))} are also axes.seed: "
                          "the choice must not be made on the seeds it reports")
    if eta < 2 or rungs < 0:
        raise ConfigError(f"{where}: eta must be >= 2 and rungs >= 0, got eta {eta}, rungs {rungs}")
    if rungs > MAX_RUNGS:
        raise ConfigError(f"{where}.rungs: at most {MAX_RUNGS} (a rung at max_epochs / eta^rungs "
                          f"past that falls on epoch 0), got {rungs}")
    if eta > INT32_MAX or max(seeds) > INT32_MAX:
        raise ConfigError(f"{where}.{'eta' if eta > INT32_MAX else 'seeds'}: at most "
                          f"{INT32_MAX:,} (2^31 - 1)")
    positions = None
    if "positions" in raw:
        if not isinstance(raw["positions"], list):
            raise ConfigError(f"{where}.positions: a list of the grid's positions")
        positions = [_check_type(source, "tune_lr.positions", v, int) for v in raw["positions"]]
        grid_positions = set(axes.get("position", []))
        if not positions or len(set(positions)) != len(positions) \
                or not set(positions) <= grid_positions:
            raise ConfigError(f"{where}.positions: distinct positions of axes.position, got "
                              f"{positions}")
        positions = tuple(sorted(positions))
    if "lr" in axes or "lr" in fixed:
        raise ConfigError(f"{_where(source, 'axes.lr' if 'lr' in axes else 'train.lr')}: the "
                          "learning rate is tuned (tune_lr): leave it out")
    if "esn" in axes.get("arch", []):
        raise ConfigError(f"{_where(source, 'axes.arch')}: esn has no learning rate to tune")
    return LRTuning(tuple(cand), tuple(seeds), eta, rungs, positions)


WALK_KEYS = ("band", "past")


def _parse_walk(source: str, raw: Any) -> Walk | None:
    """The `walk:` section (:class:`Walk`), or None where there is none. `true` or an empty
    mapping: the defaults."""
    raw = _switched_section(source, "walk", raw, WALK_KEYS)
    if raw is None:
        return None
    where = _where(source, "walk")
    out = {k: _check_type(source, f"walk.{k}", raw.get(k, getattr(Walk, k)), int)
           for k in WALK_KEYS}
    for k, v in out.items():
        if not 1 <= v <= INT32_MAX:
            raise ConfigError(f"{where}.{k}: an integer from 1 to {INT32_MAX:,}, got {v}")
    return Walk(**out)


CPUS_PER_TRIAL_MIN = 0.01
"""smallest CPU share of a trial: each trial is a process of its own (a Ray worker, 150-200 MB)
whatever its share (memgrid.run.preflight.check_machine bounds the trials at once)"""
CPUS_PER_TRIAL_MAX = 4096.0
GPUS_PER_TRIAL_MAX = 64.0


def check_resources(source: str, **res: Any) -> Resources:
    """Validate resource settings: from a grid file (`source` its path: keys named
    `resources.<key>`) or from the command line (`source` "command line": named as flags)."""
    def key(k: str) -> str:
        return f"--{k.replace('_', '-')}" if source == "command line" else f"resources.{k}"

    out = Resources()
    if "cpus_per_trial" in res and res["cpus_per_trial"] is not None:
        where = key("cpus_per_trial")
        v = _check_type(source, where, res["cpus_per_trial"], float)
        if not (CPUS_PER_TRIAL_MIN <= v <= CPUS_PER_TRIAL_MAX):
            raise ConfigError(f"{_where(source, where)}: from {CPUS_PER_TRIAL_MIN:g} to "
                              f"{CPUS_PER_TRIAL_MAX:g} CPU cores, got {v:g}")
        out = dataclasses.replace(out, cpus_per_trial=v)
    if "gpus_per_trial" in res and res["gpus_per_trial"] is not None:
        where = key("gpus_per_trial")
        v = _check_type(source, where, res["gpus_per_trial"], float)
        if not (0 <= v <= GPUS_PER_TRIAL_MAX) or (v > 1 and v != int(v)):
            raise ConfigError(f"{_where(source, where)}: a fraction in [0, 1] or a whole number "
                              f"up to {GPUS_PER_TRIAL_MAX:g}, got {v:g}")
        out = dataclasses.replace(out, gpus_per_trial=v)
    if "pack" in res and res["pack"] is not None:
        where = key("pack")
        v = res["pack"]
        if isinstance(v, str) and v.isascii() and v.isdigit():
            v = int(v)
        if not (v == "auto" or (isinstance(v, int) and not isinstance(v, bool)
                                and 1 <= v <= INT32_MAX)):
            raise ConfigError(f"{_where(source, where)}: 'auto' or an integer from 1 to "
                              f"{INT32_MAX:,}, got {v!r}")
        out = dataclasses.replace(out, pack=v)
    return out


def _max_position(source: str, raw: Any) -> int | None:
    """k of `max_position: kN` (positions up to k times the network's units), or None."""
    if raw is None:
        return None
    m = re.fullmatch(r"([1-9][0-9]{0,3})N", raw) if isinstance(raw, str) else None
    if m is None:
        raise ConfigError(f"{_where(source, 'max_position')}: a multiple of the units N, such as "
                          f"2N, got {raw!r}")
    return int(m.group(1))


def grid_from_identity(identity: dict[str, Any], source: str = "grid.json",
                       check: bool = False) -> Grid:
    """The grid that a results folder's grid.json (:attr:`Grid.identity`) describes. `check`:
    refuse (ConfigError naming `source` and the key) one that memgrid would not have written:
    an unknown setting, a value of another type or out of bounds, an empty axis."""
    tune_lr = identity.get("tune_lr")
    if check:
        for part in ("name", "axes", "fixed"):
            if part not in identity:
                raise ConfigError(f"{_where(source, part)}: missing")
        _check_type(source, "name", identity["name"], str)
        for part in ("axes", "fixed"):
            if not isinstance(identity[part], dict):
                raise ConfigError(f"{_where(source, part)}: not a mapping")
            for k, v in identity[part].items():
                where = f"{part}.{k}"
                if k not in POINT_FIELDS:
                    raise ConfigError(f"{_where(source, where)}: not a setting")
                vals = v if part == "axes" else [v]
                if not isinstance(vals, list) or not vals:
                    raise ConfigError(f"{_where(source, where)}: not a list of values")
                for x in vals:
                    if k in BY_ARCH and isinstance(x, dict):
                        _parse_by_arch(source, where, x, [])
                    else:
                        _check_type(source, where, x, _field_type(k))
        for k in REQUIRED_AXES:
            if k not in identity["axes"]:
                raise ConfigError(f"{_where(source, 'axes.' + k)}: missing")
        if tune_lr is not None and not isinstance(tune_lr, dict):
            raise ConfigError(f"{_where(source, 'tune_lr')}: not a mapping")
    try:
        tuning = LRTuning.from_dict(tune_lr) if tune_lr else None
    except (KeyError, TypeError) as e:
        raise ConfigError(f"{_where(source, 'tune_lr')}: not a tuning ({e})") from None
    grid = Grid(name=identity["name"], axes=identity["axes"], fixed=identity["fixed"],
                source=source, tune_lr=tuning, user_cells=_recorded_cells(identity, source),
                max_position=_max_position(source, identity.get("max_position")),
                walk=_parse_walk(source, identity.get("walk")))
    if check:
        check_grid(grid)
    return grid


def _recorded_cells(identity: dict, source: str) -> tuple:
    """The user's cells a grid.json records (`cells`: name -> spec, origin, attr, sha256, and
    the label where a run recorded one), as CellSources without their code: what they were, not
    loaded (a folder is read, and its analysis reads N from its rows, without running anybody's
    file)."""
    recorded = identity.get("cells") or {}
    keys = ("spec", "origin", "attr", "sha256")
    if not isinstance(recorded, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) and all(isinstance(v.get(f), str) for f in keys)
            for k, v in recorded.items()):
        raise ConfigError(f"{_where(source, 'cells')}: not a mapping of each cell's "
                          f"{', '.join(keys)}")
    return tuple(user_cells.CellSource(*(v[f] for f in keys), code="", name=k,
                                       label=v["label"] if isinstance(v.get("label"), str) else "")
                 for k, v in recorded.items())


def load_grid(path: str | Path, protocol: str | None = None) -> Grid:
    """Read and check a grid file. Raises :class:`ConfigError` with `file: key: why`."""
    return parse_grid(load_yaml(read_text(path), str(path)), str(path), protocol)


MAX_FILE_BYTES = 2**20
"""largest grid (or cluster) file read: a grid file names its axes in a few lines (`a..b`
ranges), and 100,000 seeds listed one by one fit in 0.7 MB; YAML parses about 0.5 MB/s"""


def read_text(path: str | Path, max_bytes: int = MAX_FILE_BYTES, what: str = "grid file") -> str:
    """A YAML file's text (UTF-8), read only up to `max_bytes`. Raises :class:`ConfigError`
    naming the file (a `what`): it cannot be read, is larger, or is not UTF-8 text."""
    try:
        with open(path, "rb") as f:
            blob = f.read(max_bytes + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    if len(blob) > max_bytes:
        hint = " (write long axes as ranges, a..b)" if what == "grid file" else ""
        raise ConfigError(f"{path}: larger than {max_bytes // 2**10:,} kB: not a {what}{hint}")
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file (not UTF-8 at byte {e.start})") from None


class _GridLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with YAML 1.2's floats (see load_yaml)."""


_GridLoader.yaml_implicit_resolvers = {   # PyYAML's own float rule out, YAML 1.2's in
    first: [(tag, rx) for tag, rx in rules if tag != "tag:yaml.org,2002:float"]
    for first, rules in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_GridLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"""^(?:
     [-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X), list("-+0123456789."))


MAX_YAML_DEPTH = 20
"""deepest nesting of mappings and lists a YAML file may have (a grid file's is 4)"""
MAX_YAML_NODES = 2_000_000
"""most scalars, lists and mappings a YAML file may expand to, each alias counted as the
nodes it repeats: a 500-byte file of nested aliases expands to billions"""


def load_yaml(text: str, source: str = "<grid>", loader: type = None,
              duplicate_keys: bool = False) -> Any:
    """Parse a YAML file strictly (ConfigError, one line naming `source`, on whatever it
    cannot read): no character YAML forbids (NUL, ...), at most MAX_YAML_DEPTH levels deep and
    MAX_YAML_NODES nodes with its aliases expanded. `loader` (default: the grid files' loader)
    reads floats as YAML 1.2 writes them: PyYAML reads YAML 1.1, where `1e-3`, `1E5` and `-.5`
    are strings (ints stay ints: they resolve first). A key given twice in one mapping, at any
    depth, is refused (YAML would keep the last one) unless `duplicate_keys`."""
    made = None
    try:
        made = (loader or _GridLoader)(text)    # refuses a character YAML forbids (NUL, ...)
        node = made.get_single_node()
        if node is None:
            return None
        _check_size(source, node)
        if not duplicate_keys:
            _check_duplicate_keys(source, node, "", set())
        return made.construct_document(node)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML{_yaml_where(text, e)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested more than {MAX_YAML_DEPTH} levels deep") from None
    finally:
        if made is not None:
            made.dispose()


def _yaml_where(text: str, e: yaml.YAMLError) -> str:
    """` at line N` (and what is wrong there, for a character YAML forbids) of a YAML error."""
    mark = getattr(e, "problem_mark", None)
    if mark is not None:
        return f" at line {mark.line + 1}"
    if isinstance(e, yaml.reader.ReaderError):
        line = text.count("\n", 0, e.position) + 1
        return f" at line {line}: character U+{e.character:04X} is not allowed in YAML"
    return ""


def _check_size(source: str, root: yaml.Node) -> None:
    """ConfigError where the document under `root` nests more than MAX_YAML_DEPTH levels or
    expands (aliases repeated) to more than MAX_YAML_NODES nodes. Each node is walked once (an
    alias reuses its anchor's size and height); no recursion, so any depth is answered."""
    size: dict[int, int] = {}
    height: dict[int, int] = {}
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]

    def deep(node: yaml.Node) -> ConfigError:
        return ConfigError(f"{source}: nested more than {MAX_YAML_DEPTH} levels deep (at line "
                           f"{node.start_mark.line + 1})")

    while stack:
        node, depth, done = stack.pop()
        if depth > MAX_YAML_DEPTH:      # also ends an alias to a node that holds it
            raise deep(node)
        children = ([x for kv in node.value for x in kv] if isinstance(node, yaml.MappingNode)
                    else node.value if isinstance(node, yaml.SequenceNode) else [])
        if done:
            size[id(node)] = 1 + sum(size[id(c)] for c in children)
            height[id(node)] = 1 + max((height[id(c)] for c in children), default=0)
            if size[id(node)] > MAX_YAML_NODES:
                raise ConfigError(f"{source}: expands to more than {MAX_YAML_NODES:,} values "
                                  f"(at line {node.start_mark.line + 1}: aliases repeat what "
                                  "they name)")
            if height[id(node)] + depth - 1 > MAX_YAML_DEPTH:
                raise deep(node)
        elif id(node) not in size:
            stack.append((node, depth, True))
            stack += [(c, depth + 1, False) for c in children if id(c) not in size]


def _check_duplicate_keys(source: str, node: yaml.Node, path: str, seen: set[int]) -> None:
    if id(node) in seen:       # an alias: its node was checked where it was defined
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple, int] = {}
        for k, v in node.value:
            name = path
            if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                name = f"{path}.{k.value}" if path else k.value
                line = k.start_mark.line + 1
                if (k.tag, k.value) in first:
                    raise ConfigError(f"{source}: {name}: duplicate key at line {line} (first at "
                                      f"line {first[k.tag, k.value]})")
                first[k.tag, k.value] = line
            _check_duplicate_keys(source, v, name, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _check_duplicate_keys(source, v, f"{path}[{i}]", seen)
