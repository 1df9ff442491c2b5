"""Grid files: strict loading, points, packs.

A grid file (YAML) has four sections beside its ``name``::

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
be axes (``lr: [0.01, 0.03]`` under ``axes``) when they are in :data:`AXIS_KEYS`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ARCHS = ("rnn", "lstm", "gru", "esn")
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
READOUTS = ("sum", "linear")
LONG_POSITION_RULES = ("shift", "error")


class ConfigError(ValueError):
    """A grid file (or a flag) asks for something memgrid cannot run. One line: where and why."""


# ---------------------------------------------------------------------------------------------
# The point: everything one training run depends on.


@dataclass(frozen=True)
class Point:
    """One training run; one row in the points table. Field names are the Parquet columns."""

    arch: str
    """`rnn`, `lstm`, `gru` (trained by SGD) or `esn` (reservoir, ridge readout)"""
    layers: int
    """l: stacked recurrent layers"""
    cells: int
    """c: units per layer (N = c * l)"""
    position: int
    """p: the target is the p-th-from-last element (p = 1 is the last)"""
    seed: int
    """seeds the data stream, the evaluation set and the initial weights"""
    q_min: int = 10
    """shortest sequence as configured (paper: 10)"""
    q_max: int = 15
    """longest sequence as configured (paper: 15; Definition 2: q_min = q_max = 10)"""
    long_positions: str = "shift"
    """rule for p > q_min: `shift` moves the length range up by p - q_min, `error` refuses"""
    readout: str = "sum"
    """`sum` of the last layer's units (paper) or a learned `linear` readout"""
    lr: float = 0.003
    """SGD learning rate"""
    momentum: float = 0.9
    """SGD momentum"""
    batch_size: int = 128
    """fresh sequences per SGD step"""
    steps_per_epoch: int = 1
    """SGD steps per epoch"""
    max_epochs: int = 5000
    """stop reason `max_epochs` after this many epochs (paper: 5000)"""
    tbptt: int = 0
    """truncate backpropagation every `tbptt` time steps; 0 = full BPTT"""
    eval_size: int = 1024
    """sequences in the fixed held-out evaluation set"""
    eval_every: int = 25
    """epochs between evaluations (curve points, stopping checks)"""
    solved_loss: float = 0.01
    """stop reason `solved` once the evaluation MAE is below this"""
    plateau: bool = True
    """stop a point stuck at the constant-guess plateau (see `patience`)"""
    plateau_loss: float = 0.25
    """the constant-guess level: always answering 0.5 scores 0.25"""
    plateau_tol: float = 0.01
    """a loss above plateau_loss - plateau_tol counts as on the plateau"""
    patience: int = 2000
    """epochs on the plateau without improving by 1e-3 before stop reason `plateau`"""
    spectral_radius: float = 0.9
    """esn: spectral radius of the reservoir matrix"""
    input_scaling: float = 1.0
    """esn: scale of the input weights"""
    connectivity: float = 0.1
    """esn: fraction of nonzero reservoir weights"""
    leak_rate: float = 1.0
    """esn: leaky-integrator rate (1 = no leak)"""
    ridge: float = 1e-6
    """esn: ridge regularisation of the readout"""
    mc_length: int = 4000
    """Jaeger's MC on a stationary stream (column `mc_stream`): stream length; 0 = not measured"""
    mc_low: float = 0.0
    """lowest value of the stream's uniform inputs (the task's range is [0, 1]; reservoirpy: -0.8)"""
    mc_high: float = 1.0
    """highest value of the stream's uniform inputs"""

    # -- derived ------------------------------------------------------------------------------
    @property
    def length_shift(self) -> int:
        """How far the length range moves up so that the target exists (rule `shift`)."""
        return max(0, self.position - self.q_min)

    @property
    def q_lo(self) -> int:
        """Shortest sequence this point trains on."""
        return self.q_min + self.length_shift

    @property
    def q_hi(self) -> int:
        """Longest sequence this point trains on."""
        return self.q_max + self.length_shift

    @property
    def units(self) -> int:
        """N = c * l."""
        return self.cells * self.layers

    @property
    def params(self) -> int:
        """Trainable parameters (closed form; torch's two bias vectors per layer)."""
        if self.arch == "esn":
            return self.cells + 1  # the readout
        g, c = GATES[self.arch], self.cells
        n = sum(g * (m * c + c * c + 2 * c) for m in [1] + [c] * (self.layers - 1))
        return n + (c + 1 if self.readout == "linear" else 0)

    @property
    def point_id(self) -> str:
        """Stable 16-hex id of every setting: the key of a point across runs and machines."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def pack_key(self) -> tuple:
        """Points with equal keys may share a pack: all but position, seed, lr, momentum."""
        d = dataclasses.asdict(self)
        for k in PACK_FREE:
            d.pop(k)
        return tuple(sorted(d.items()))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


POINT_FIELDS = {f.name: f for f in dataclasses.fields(Point)}
PACK_FREE = ("position", "seed", "lr", "momentum")
"""Settings that may differ inside one pack (per-member tensors)."""
TASK_KEYS = ("q_min", "q_max", "long_positions")
TRAIN_KEYS = ("readout", "lr", "momentum", "batch_size", "steps_per_epoch", "max_epochs", "tbptt",
              "eval_size", "eval_every")
STOP_KEYS = ("solved_loss", "plateau", "plateau_loss", "plateau_tol", "patience")
ESN_KEYS = ("spectral_radius", "input_scaling", "connectivity", "leak_rate", "ridge")
CAPACITY_KEYS = ("mc_length", "mc_low", "mc_high")
AXIS_KEYS = ("arch", "layers", "cells", "position", "seed") + TRAIN_KEYS + TASK_KEYS + ESN_KEYS
REQUIRED_AXES = ("arch", "layers", "cells", "position", "seed")
SECTIONS = {"task": TASK_KEYS, "train": TRAIN_KEYS, "stop": STOP_KEYS, "esn": ESN_KEYS,
            "capacity": CAPACITY_KEYS}


@dataclass(frozen=True)
class Resources:
    """How trials are cut and placed. Never changes a result (pack invariance)."""

    cpus_per_trial: float = 1.0
    """CPU cores per Tune trial (torch threads = max(1, int(cpus)))"""
    gpus_per_trial: float = 0.0
    """GPU share per trial: 0.25 puts four packs on one GPU; ignored where there is no GPU"""
    pack: int | str = "auto"
    """points per trial: an int (1 = one trial per point) or `auto` (sized from the networks)"""


@dataclass(frozen=True)
class Grid:
    """A loaded grid file: its points and how to run them."""

    name: str
    """the experiment's name (file stem by default)"""
    axes: dict[str, list]
    """axis -> values; the cartesian product gives the points"""
    fixed: dict[str, Any]
    """settings shared by every point"""
    resources: Resources = field(default_factory=Resources)
    """trial resources and packing"""
    source: str = "<grid>"
    """where it was loaded from, for error messages"""

    def points(self) -> list[Point]:
        """All points, in axis order (arch, layers, cells, ..., position, seed)."""
        names = list(self.axes)
        out = []
        for values in itertools.product(*(self.axes[n] for n in names)):
            out.append(Point(**self.fixed, **dict(zip(names, values))))
        return out

    @property
    def identity(self) -> dict[str, Any]:
        """What makes two runs the same experiment (resources excluded: they change no result)."""
        return {"name": self.name, "axes": self.axes, "fixed": self.fixed}

    def with_overrides(self, **settings: Any) -> Grid:
        """A copy with fixed settings replaced (CLI flags such as --max-epochs), re-validated."""
        fixed = dict(self.fixed)
        axes = dict(self.axes)
        for k, v in settings.items():
            axes.pop(k, None)
            fixed[k] = v
        grid = dataclasses.replace(self, axes=axes, fixed=fixed)
        _validate_points(grid)
        return grid

    def smoke(self) -> Grid:
        """The same grid shrunk to a run of a minute or two: first two values of each axis
        (positions and cells: the smallest two), two seeds, 200 epochs, small evaluation sets."""
        axes = {}
        for k, vals in self.axes.items():
            vals = sorted(vals) if k in ("position", "cells", "layers") else list(vals)
            axes[k] = vals[:2]
        fixed = dict(self.fixed)
        fixed["max_epochs"] = min(fixed.get("max_epochs", Point.max_epochs), 200)
        fixed["eval_size"] = min(fixed.get("eval_size", Point.eval_size), 256)
        fixed["eval_every"] = min(fixed.get("eval_every", Point.eval_every), 20)
        fixed["patience"] = min(fixed.get("patience", Point.patience), 100)
        for k in ("max_epochs", "eval_size", "eval_every", "patience"):
            axes.pop(k, None)
        return dataclasses.replace(self, name=self.name + "-smoke", axes=axes, fixed=fixed)


# ---------------------------------------------------------------------------------------------
# Loading.


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
        return list(range(lo_i, hi_i + 1))
    values = raw if isinstance(raw, list) else [raw]
    if not values:
        raise ConfigError(f"{_where(source, where)}: empty list")
    out = [_check_type(source, where, v, _field_type(key)) for v in values]
    if len(set(out)) != len(out):
        raise ConfigError(f"{_where(source, where)}: repeated values {raw!r}")
    return out


def _location(grid: Grid, key: str) -> str:
    """Where a setting stands in the grid file: `axes.cells`, `train.lr`, ..."""
    if key in grid.axes:
        return f"axes.{key}"
    return next((f"{sec}.{key}" for sec, keys in SECTIONS.items() if key in keys), key)


def _check_value(source: str, where: str, v: Any) -> None:
    """Impossible values, one setting at a time. `where`: the dotted key in the file."""
    key = where.rsplit(".", 1)[-1]
    bad = None
    if key == "arch" and v not in ARCHS:
        bad = f"unknown arch {v!r} (one of {', '.join(ARCHS)})"
    elif key == "readout" and v not in READOUTS:
        bad = f"unknown readout {v!r} (one of {', '.join(READOUTS)})"
    elif key == "long_positions" and v not in LONG_POSITION_RULES:
        bad = f"unknown rule {v!r} (one of {', '.join(LONG_POSITION_RULES)})"
    elif key in ("layers", "cells", "position", "q_min", "q_max", "batch_size", "steps_per_epoch",
                 "max_epochs", "eval_size", "eval_every") and v < 1:
        bad = f"must be >= 1, got {v}"
    elif key in ("seed", "tbptt", "patience") and v < 0:
        bad = f"must be >= 0, got {v}"
    elif key == "mc_length" and v != 0 and v < 200:
        bad = f"0 (off) or a stream of >= 200 steps, got {v}"
    elif key in ("mc_low", "mc_high") and not math.isfinite(v):
        bad = f"must be a finite number, got {v}"
    elif key in ("lr", "spectral_radius", "input_scaling", "leak_rate") and not (v > 0 and math.isfinite(v)):
        bad = f"must be > 0, got {v}"
    elif key == "momentum" and not 0 <= v < 1:
        bad = f"must be in [0, 1), got {v}"
    elif key in ("connectivity",) and not 0 < v <= 1:
        bad = f"must be in (0, 1], got {v}"
    elif key in ("solved_loss", "plateau_loss", "plateau_tol", "ridge") and not (v >= 0 and math.isfinite(v)):
        bad = f"must be >= 0, got {v}"
    if bad:
        raise ConfigError(f"{_where(source, where)}: {bad}")


def _validate_points(grid: Grid) -> None:
    """Cross-setting checks over the whole grid (cheap: per distinct combination)."""
    src = grid.source
    merged = {**grid.fixed, **{k: v[0] for k, v in grid.axes.items()}}
    for k, vals in list(grid.axes.items()) + [(k, [v]) for k, v in grid.fixed.items()]:
        for v in vals:
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
    if merged.get("mc_low", Point.mc_low) >= merged.get("mc_high", Point.mc_high):
        raise ConfigError(f"{_where(src, _location(grid, 'mc_low'))}: mc_low must be below mc_high")
    archs = grid.axes.get("arch", [])
    if "esn" in archs and max(grid.axes.get("layers", [1])) > 1:
        raise ConfigError(f"{_where(src, 'axes.layers')}: esn has one reservoir layer (layers: [1])")


def parse_grid(raw: Any, source: str = "<grid>") -> Grid:
    """Build a :class:`Grid` from a parsed YAML mapping, checking every key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a grid file is a mapping with axes/task/train/stop/resources")
    allowed = {"name", "axes", "resources", *SECTIONS}
    for k in raw:
        if k not in allowed:
            raise ConfigError(f"{_where(source, k)}: unknown key (allowed: {', '.join(sorted(allowed))})")
    name = raw.get("name", Path(source).stem)
    _check_type(source, "name", name, str)

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
            fixed[k] = _check_type(source, where, v, _field_type(k))

    res_raw = raw.get("resources", {}) or {}
    if not isinstance(res_raw, dict):
        raise ConfigError(f"{_where(source, 'resources')}: not a mapping")
    res = {}
    for k, v in res_raw.items():
        where = f"resources.{k}"
        if k not in ("cpus_per_trial", "gpus_per_trial", "pack"):
            raise ConfigError(f"{_where(source, where)}: unknown key (one of cpus_per_trial, gpus_per_trial, pack)")
        res[k] = v
    grid = Grid(name=name, axes=axes, fixed=fixed, resources=check_resources(source, **res), source=source)
    _validate_points(grid)
    return grid


def check_resources(source: str, **res: Any) -> Resources:
    """Validate resource settings (from a grid file or the CLI)."""
    out = Resources()
    if "cpus_per_trial" in res and res["cpus_per_trial"] is not None:
        v = _check_type(source, "resources.cpus_per_trial", res["cpus_per_trial"], float)
        if v <= 0:
            raise ConfigError(f"{_where(source, 'resources.cpus_per_trial')}: must be > 0, got {v}")
        out = dataclasses.replace(out, cpus_per_trial=v)
    if "gpus_per_trial" in res and res["gpus_per_trial"] is not None:
        v = _check_type(source, "resources.gpus_per_trial", res["gpus_per_trial"], float)
        if v < 0 or (v > 1 and v != int(v)):
            raise ConfigError(f"{_where(source, 'resources.gpus_per_trial')}: a fraction in [0, 1] or a whole number, got {v}")
        out = dataclasses.replace(out, gpus_per_trial=v)
    if "pack" in res and res["pack"] is not None:
        v = res["pack"]
        if isinstance(v, str) and v.isdigit():
            v = int(v)
        if not (v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)):
            raise ConfigError(f"{_where(source, 'resources.pack')}: 'auto' or an integer >= 1, got {v!r}")
        out = dataclasses.replace(out, pack=v)
    return out


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file. Raises :class:`ConfigError` with `file: key: why`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{at}") from None
    return parse_grid(raw, str(path))
