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
import functools
import hashlib
import itertools
import json
import math
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .cells import CELLS

ARCHS = (*CELLS, "esn")
"""every arch a grid may name: the cells of memgrid.cells (as imported), then the ESN"""
READOUTS = ("sum", "linear")
OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("constant", "cosine")
LONG_POSITION_RULES = ("shift", "error")

PROTOCOLS: dict[str, dict[str, Any]] = {
    # the joint search (docs/REPRODUCTION.md): Adam at lr 0.01 gave every arch and size its
    # highest limit of the search (SGD's best rates: lower ones, or later), the RNN's = c from
    # 2,500 steps; decayed by a cosine it is as high or higher, and the held-back check's limits
    # do not move at 4x the budget (at a constant rate one LSTM's did)
    "converged": dict(lr=0.01, momentum=0.9, optimizer="adam", lr_schedule="cosine",
                      batch_size=128, steps_per_epoch=8, max_epochs=5000, patience=2000),
    # the one-lr sweep on Figure 4's grid: the budget at which the paper's figures come out
    "paper": dict(lr=0.003, momentum=0.9, optimizer="sgd", lr_schedule="constant", batch_size=128,
                  steps_per_epoch=1, max_epochs=5000, patience=2000),
}
"""Named sets of the training settings the paper leaves open (docs/REPRODUCTION.md, "Two
protocols"). `paper`: the budget at which memgrid reproduces the paper's figures; `converged`:
a budget at which doubling it moves no memory-distance limit, so that a limit measures the
network and not the optimizer. A grid picks one with `protocol:`; settings it names itself win."""
THRESHOLD = 0.05
"""Mean evaluation MAE below which a position counts as memorized: the memory limit's
threshold, in the analysis and in the tuning's choice alike."""
DEFAULT_PROTOCOL = "converged"
PROTOCOL_KEYS = tuple(PROTOCOLS[DEFAULT_PROTOCOL])
_D = PROTOCOLS["paper"]
"""Point's own defaults (a Point made in code: tests, benchmarks, the library) are the paper
protocol's; a grid file gets DEFAULT_PROTOCOL's unless it names another (`protocol:`)."""


def units(arch: str, layers: int, cells: int) -> int:
    """N, the units Jaeger's bound MC <= N counts: the cell's per layer (``Cell.units``; c for
    RNN, LSTM, GRU and the ESN's reservoir) times l."""
    per_layer = cells if arch == "esn" else CELLS[arch].units(cells)
    return per_layer * layers


class ConfigError(ValueError):
    """A grid file (or a flag) asks for something memgrid cannot run. One line: where and why."""


# ---------------------------------------------------------------------------------------------
# The point: everything one training run depends on.


@dataclass(frozen=True)
class Point:
    """One training run; one row in the points table. Field names are the Parquet columns."""

    arch: str
    """a trained cell (``memgrid.cells``: `rnn`, `lstm`, `gru`, `mingru`, ...) or `esn`
    (reservoir, ridge readout)"""
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
    lr: float = _D["lr"]
    """SGD learning rate"""
    momentum: float = _D["momentum"]
    """SGD momentum; with `adam`, Adam's beta1 (its beta2 is 0.999, its epsilon 1e-8)"""
    optimizer: str = _D["optimizer"]
    """`sgd` (with momentum) or `adam` (Kingma and Ba): Collins et al. let the tuner pick either"""
    lr_schedule: str = _D["lr_schedule"]
    """`constant`, or `cosine`: step t (from 0) of a budget of T = max_epochs * steps_per_epoch
    steps takes lr * (1 + cos(pi t / T)) / 2 (torch's CosineAnnealingLR to 0)"""
    batch_size: int = _D["batch_size"]
    """fresh sequences per training step"""
    steps_per_epoch: int = _D["steps_per_epoch"]
    """training steps per epoch"""
    max_epochs: int = _D["max_epochs"]
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
    patience: int = _D["patience"]
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
        """N (:func:`units`)."""
        return units(self.arch, self.layers, self.cells)

    @property
    def params(self) -> int:
        """Trainable parameters (closed form: the shapes of the cell's definition)."""
        if self.arch == "esn":
            return self.cells + 1  # the readout
        n = CELLS[self.arch].count(self.layers, self.cells)
        return n + (self.cells + 1 if self.readout == "linear" else 0)

    @functools.cached_property
    def point_id(self) -> str:
        """Stable 16-hex id of every setting: the key of a point across runs and machines.
        Computed once per point (the fields are frozen); Grid.points computes a grid's at once."""
        d = self.to_dict()
        for k, v in ID_OMITTED_AT.items():     # settings added later: old ids stay valid
            if d[k] == v:
                del d[k]
        blob = json.dumps(d, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def pack_key(self) -> tuple:
        """Points with equal keys may share a pack: all but PACK_FREE (position, seed, lr,
        momentum and the stop settings)."""
        return tuple(zip(_PACKED_TOGETHER, _packed_together(self)))

    def to_dict(self) -> dict[str, Any]:
        """Every field by name: dataclasses.asdict's result (the fields are scalars), 10x faster."""
        return {k: getattr(self, k) for k in POINT_FIELDS}


POINT_FIELDS = {f.name: f for f in dataclasses.fields(Point)}
ID_OMITTED_AT = {"optimizer": "sgd", "lr_schedule": "constant"}
"""Settings added after points were stored, and the value every older point had: a point at
that value leaves them out of its point_id, so that results stored before still count."""


def _id_item(k: str, v: Any) -> str:
    """Setting `k` at `v` as it stands in Point.point_id's JSON: `, "k": v` (json.dumps of a flat
    mapping joins its items with ", " and ": "), or "" where ID_OMITTED_AT leaves it out."""
    if k in ID_OMITTED_AT and v == ID_OMITTED_AT[k]:
        return ""
    return f", {json.dumps(k)}: {json.dumps(v)}"


BY_ARCH = ("lr", "momentum")
"""Settings that a grid (or a protocol) may give per architecture, as a mapping
``{rnn: 0.01, lstm: 0.03, gru: 0.03}``: Collins et al. tune each architecture."""


def for_arch(settings: dict[str, Any]) -> dict[str, Any]:
    """`settings` with every per-architecture mapping (BY_ARCH) replaced by its value for
    `settings["arch"]` (an arch without one, such as esn, keeps the Point default)."""
    out = dict(settings)
    for k in BY_ARCH:
        if isinstance(out.get(k), dict):
            v = out[k].get(out["arch"])
            if v is None:
                del out[k]
            else:
                out[k] = v
    return out
STOP_KEYS = ("solved_loss", "plateau", "plateau_loss", "plateau_tol", "patience")
PACK_FREE = ("position", "seed", "lr", "momentum") + STOP_KEYS
"""Settings that may differ inside one pack: per-member tensors (lr, momentum) or per-member
checks on the host (the stop rule reads each member's own point)."""
_PACKED_TOGETHER = tuple(sorted(k for k in POINT_FIELDS if k not in PACK_FREE))
"""the fields of Point.pack_key, in its (sorted) order"""
_packed_together = operator.attrgetter(*_PACKED_TOGETHER)
TASK_KEYS = ("q_min", "q_max", "long_positions")
TRAIN_KEYS = ("readout", "lr", "momentum", "optimizer", "lr_schedule", "batch_size",
              "steps_per_epoch", "max_epochs", "tbptt", "eval_size", "eval_every")
ESN_KEYS = ("spectral_radius", "input_scaling", "connectivity", "leak_rate", "ridge")
CAPACITY_KEYS = ("mc_length", "mc_low", "mc_high")
AXIS_KEYS = (("arch", "layers", "cells", "position", "seed") + TRAIN_KEYS + TASK_KEYS + STOP_KEYS
             + ESN_KEYS)
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
class LRTuning:
    """The `tune_lr:` section of a grid file: the learning rate tuned per configuration by
    successive halving (memgrid.lr_tuning runs it)."""

    candidates: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1)
    """learning rates tried for every configuration"""
    seeds: tuple[int, ...] = (1000, 1001)
    """tuning seeds: the choice is made on these, and no reported point uses them"""
    eta: int = 2
    """successive halving: at each rung the best 1/eta of the candidates go on"""
    rungs: int = 2
    """halvings, at max_epochs / eta^rungs, ..., max_epochs / eta"""
    positions: tuple[int, ...] | None = None
    """the positions the choice is made on (None: every position of the grid); fewer make the
    tuning run cheaper, and the ones past a network's limit are where the rates differ"""

    def rung_epochs(self, max_epochs: int, eval_every: int) -> list[int]:
        """Epochs of the halvings, each rounded down to an evaluation (rungs that fall on the
        same evaluation, or on epoch 0, merge)."""
        out = []
        for k in range(self.rungs, 0, -1):
            e = (max_epochs // self.eta ** k) // eval_every * eval_every
            if e > 0 and e not in out:
                out.append(e)
        return out

    def describe(self) -> str:
        """The `lr_source` of a measured point."""
        at = f" at p = {', '.join(map(str, self.positions))}" if self.positions else ""
        return (f"tuned: best of lr {', '.join(f'{c:g}' for c in self.candidates)} on seeds "
                f"{', '.join(map(str, self.seeds))}{at} (successive halving, eta {self.eta}, "
                f"{self.rungs} rungs)")

    def to_dict(self) -> dict:
        out = {"candidates": list(self.candidates), "seeds": list(self.seeds), "eta": self.eta,
               "rungs": self.rungs}
        if self.positions:   # absent from the grid.json of grids tuned on every position
            out["positions"] = list(self.positions)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> LRTuning:
        positions = d.get("positions")
        return cls(tuple(d["candidates"]), tuple(d["seeds"]), d["eta"], d["rungs"],
                   tuple(positions) if positions else None)


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
    protocol: str = DEFAULT_PROTOCOL
    """the named training settings (PROTOCOLS) that filled what the file leaves open"""
    tune_lr: LRTuning | None = None
    """the `tune_lr:` section (:class:`LRTuning`): the learning rate is chosen per configuration on
    tuning seeds (the `tune_lr:` section); None: the grid's lr"""

    @property
    def lr_source(self) -> str:
        """How the points' learning rate was chosen (the `lr_source` column): `axis`, `grid`
        (the file's train.lr), `protocol <name>`, or the tuning's description."""
        if self.tune_lr is not None:
            return self.tune_lr.describe()
        if "lr" in self.axes:
            return "axis"
        if self.fixed.get("lr") == PROTOCOLS[self.protocol].get("lr"):
            return f"protocol {self.protocol}"
        return "grid"

    @property
    def n_points(self) -> int:
        """How many points the grid expands to, without expanding it."""
        return math.prod(len(v) for v in self.axes.values())

    def points(self) -> list[Point]:
        """All points, in axis order (arch, layers, cells, ..., position, seed), with their
        point_ids: Point.point_id's JSON is encoded once for the settings the points share and
        once per axis value, then joined per point (a json.dumps per point took most of the
        time of a 10^5-point grid). Point keeps its fields as given; were it to change them,
        this would have to encode them per point."""
        names = list(self.axes)
        axes = [self.axes[n] for n in names]
        # encoded per point: a setting given per arch (for_arch), one without a plain default
        per_point = {k for k in BY_ARCH
                     if any(isinstance(v, dict) for v in self.axes.get(k, [self.fixed.get(k)]))}
        per_point |= {k for k, f in POINT_FIELDS.items() if k not in self.axes
                      and k not in self.fixed and f.default is dataclasses.MISSING}
        pieces, axis_at, point_at = [], [], []    # point_id's JSON items in its (sorted) order
        for k in sorted(POINT_FIELDS):
            if k in per_point:
                point_at.append((len(pieces), k))
                pieces.append("")
            elif k in self.axes:
                axis_at.append((len(pieces), names.index(k)))
                pieces.append("")
            else:
                pieces.append(_id_item(k, self.fixed.get(k, POINT_FIELDS[k].default)))
        items = [[_id_item(n, v) for v in vals] for n, vals in zip(names, axes)]
        seen: dict[tuple, str] = {}     # per-arch values: a few distinct ones (repr tells -0.0)
        out = []
        for idx in itertools.product(*(range(len(vals)) for vals in axes)):
            settings = {**self.fixed, **{n: vals[i] for n, vals, i in zip(names, axes, idx)}}
            p = Point(**for_arch(settings))
            for at, a in axis_at:
                pieces[at] = items[a][idx[a]]
            for at, k in point_at:
                v = getattr(p, k)
                key = (k, type(v), repr(v))
                if key not in seen:
                    seen[key] = _id_item(k, v)
                pieces[at] = seen[key]
            blob = "{" + "".join(pieces)[2:] + "}"      # json.dumps(..., sort_keys=True)
            p.__dict__["point_id"] = hashlib.sha256(blob.encode()).hexdigest()[:16]  # its cache
            out.append(p)
        return out

    @property
    def identity(self) -> dict[str, Any]:
        """What makes two runs the same experiment (resources excluded: they change no result)."""
        # a setting added later, at the value older grids had, is left out as in point_id, so
        # that a folder written before it existed is still this grid's
        fixed = {k: v for k, v in self.fixed.items()
                 if not (k in ID_OMITTED_AT and v == ID_OMITTED_AT[k])}
        ident = {"name": self.name, "axes": self.axes, "fixed": fixed}
        if self.tune_lr is not None:
            ident["tune_lr"] = self.tune_lr.to_dict()
        return ident

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


MAX_AXIS_VALUES = 10**7
"""values one `a..b` range may expand to (the grid's size has its own limit, MAX_POINTS)"""
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
        bad = f"must be > 0, got {v}"
    elif key in ("spectral_radius", "input_scaling") and not 0 < v <= ESN_SCALE_MAX:
        bad = f"must be in (0, {ESN_SCALE_MAX:g}], got {v}"
    elif key == "leak_rate" and not 0 < v <= 1:
        bad = f"must be in (0, 1] (1 = no leak; above 1 the states grow without bound), got {v}"
    elif key == "momentum" and not 0 <= v < 1:
        bad = f"must be in [0, 1), got {v}"
    elif key in ("connectivity",) and not 0 < v <= 1:
        bad = f"must be in (0, 1], got {v}"
    elif key in ("solved_loss", "plateau_loss", "plateau_tol", "ridge") and not (v >= 0 and math.isfinite(v)):
        bad = f"must be >= 0, got {v}"
    if bad:
        raise ConfigError(f"{_where(source, where)}: {bad}")


INT32_MAX = 2**31 - 1
"""largest integer setting: the points table stores them as 32-bit integers (memgrid.results.schema)"""
MC_LENGTH_MAX = 10**6
"""longest stream of Jaeger's MC (mc_length; 4,000 by default)"""
MC_BYTES_PER_STEP = 64
"""memory of the stream MC per step and unit of the network, about (float64 states, their
copy, the 2N delayed inputs of memgrid.stream_mc.stream_memory_capacity): at N = 100 and
MC_LENGTH_MAX steps, 6.4 GB"""


def default_k_max(units: int) -> int:
    """Delays of Jaeger's MC measured by default (memgrid.stream_mc): 2N (reservoirpy's rule
    of thumb), at least 10."""
    return max(10, 2 * units)


def default_washout(k_max: int) -> int:
    """Steps of the MC's stream that only feed the delays (memgrid.stream_mc): k_max, at least
    100."""
    return max(k_max, 100)


def mc_length_min(units: int) -> int:
    """Shortest stream on which Jaeger's MC of a network of `units` can be fitted
    (memgrid.stream_mc.stream_memory_capacity with its defaults: the washout, then half of
    what is left, which must exceed N, to fit)."""
    return default_washout(default_k_max(units)) + 2 * units + 2


ESN_SCALE_MAX = 1e6
"""largest spectral_radius and input_scaling: reservoirs run in float32, and weights this large
already saturate every unit; far larger ones overflow"""
ESN_LOOP_CHANCE_MIN = 0.05
"""smallest chance that a drawn reservoir has a recurrent loop (see esn_loop_chance)"""


def esn_loop_chance(cells: int, connectivity: float) -> float:
    """A lower bound of the chance that a drawn reservoir of `cells` units is not nilpotent (has
    spectral radius > 0): the chance that one of its N diagonal weights is kept. A nilpotent draw
    is drawn again (``memgrid.esn``); below ESN_LOOP_CHANCE_MIN that could take hundreds."""
    return 1.0 - (1.0 - connectivity) ** cells


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
    mc_length = merged.get("mc_length", Point.mc_length)
    if mc_length:
        n_max = max(units(a, l, c) for a in grid.axes["arch"] for l in grid.axes["layers"]
                    for c in grid.axes["cells"])
        if mc_length < mc_length_min(n_max):
            raise ConfigError(
                f"{_where(src, _location(grid, 'mc_length'))}: a stream of {mc_length} steps is "
                f"too short for the MC of {n_max} units (delays 1..{default_k_max(n_max)}): at "
                f"least {mc_length_min(n_max):,}, or 0 (not measured)")
    if merged.get("mc_low", Point.mc_low) >= merged.get("mc_high", Point.mc_high):
        raise ConfigError(f"{_where(src, _location(grid, 'mc_low'))}: mc_low must be below mc_high")
    archs = grid.axes.get("arch", [])
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
    allowed = {"name", "protocol", "tune_lr", "axes", "resources", *SECTIONS}
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
    if protocol not in PROTOCOLS:
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
                source=source, protocol=protocol, tune_lr=tune_lr)
    _validate_points(grid)
    return grid


def check_size(grid: Grid, max_points: int = MAX_POINTS, flag: str = "--max-points") -> None:
    """Refuse a grid of more than `max_points` points before it is expanded, with what it would
    cost the driver."""
    n = grid.n_points
    if n > max_points:
        gb, s = n * DRIVER_BYTES_PER_POINT / 1e9, n * DRIVER_S_PER_POINT
        wait = f"{s / 60:.0f} min" if s >= 120 else f"{s:.0f} s"
        raise ConfigError(
            f"{_where(grid.source, 'axes')}: {n:,} points, more than {max_points:,}: the driver "
            f"would need about {gb:.1f} GB and {wait} before the first trial; split the grid, "
            f"or pass {flag} {n}")


TUNE_LR_KEYS = ("candidates", "seeds", "eta", "rungs", "positions")
MAX_RUNGS = 31
"""most halvings of a tuning run: max_epochs < 2^31 and eta >= 2 put every later rung on
epoch 0"""


def _parse_tune_lr(source: str, raw: Any, axes: dict, fixed: dict):
    """The `tune_lr:` section (:class:`LRTuning`), or None where there is none. `true` or an
    empty mapping: the defaults."""
    if raw is None or raw is False:
        return None
    if raw is True:
        raw = {}
    where = _where(source, "tune_lr")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a mapping with {', '.join(TUNE_LR_KEYS)} (or true)")
    for k in raw:
        if k not in TUNE_LR_KEYS:
            raise ConfigError(f"{where}.{k}: unknown key (one of {', '.join(TUNE_LR_KEYS)})")
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
                source=source, tune_lr=tuning)
    if check:
        _validate_points(grid)
    return grid


def protocol_name(settings: dict[str, Any], ignore: tuple[str, ...] = ()) -> str:
    """The protocol whose settings `settings` (a point's, or a points-table row) has, or
    `custom`; the settings in `ignore` (say the lr of a grid that tunes it) are not compared."""
    for name, values in PROTOCOLS.items():
        want = for_arch({**values, "arch": settings.get("arch")})
        if all(k in settings and settings[k] == want[k] for k in values
               if k in want and k not in ignore):
            return name
    return "custom"


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
