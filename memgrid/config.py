"""The grid's data model: points, grids, protocols, and the sizes they imply.

A :class:`Point` is everything one training run depends on (its fields are the points table's
setting columns); a :class:`Grid` is a grid file as loaded: axes whose product gives the points,
the settings they share, how trials are cut (:class:`Resources`), and an optional tuning of the
learning rate (:class:`LRTuning`) and a walk that leaves out the positions past a settled
limit (:class:`Walk`). :data:`PROTOCOLS` names the training settings the paper
leaves open. Reading and checking a grid file is :mod:`memgrid.grid_file`'s work.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import operator
from dataclasses import dataclass, field
from typing import Any

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
class Walk:
    """The `walk:` section of a grid file: each configuration's positions train upward, a band
    at a time, and stop once its memory limit is settled (memgrid.walk). What it leaves out are
    positions past the limit that no limit, seed's limit or stricter threshold's limit reads;
    the heatmaps have no cells there."""

    band: int = 4
    """positions per round: a configuration trains its next `band` positions of the axis at once"""
    past: int = 1
    """the limit is settled once the mean loss over seeds has failed (>= THRESHOLD) at this many
    positions in a row and every seed has failed at one of its positions so far (1: at the
    position past the limit, which settles every limit; more keep more of the heatmap past it)"""

    def describe(self) -> str:
        times = "" if self.past == 1 else f" at {self.past} positions in a row"
        return (f"positions upward in bands of {self.band}, each configuration until its mean "
                f"has failed{times} and every seed has failed")

    def to_dict(self) -> dict:
        return {"band": self.band, "past": self.past}


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
    user_cells: tuple = ()
    """the user's cells its `arch` axis names by import path (memgrid.user_cells.CellSource),
    registered under their names, which the axis holds"""
    max_position: int | None = None
    """k of the file's `max_position: kN`: a network of N units (:func:`units`) trains only the
    positions p <= k N of the position axis; None: every position"""
    walk: Walk | None = None
    """the `walk:` section (:class:`Walk`): positions past a settled limit are left out; None:
    every point of the axes trains"""

    def _capped(self, arch: str, layers: int, cells: int, position: int) -> bool:
        """Whether the `max_position` cap leaves this point out."""
        return (self.max_position is not None
                and position > self.max_position * units(arch, layers, cells))

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
        n = math.prod(len(v) for v in self.axes.values())
        if self.max_position is None:
            return n
        size = [self.axes[k] for k in ("arch", "layers", "cells")]
        positions = self.axes["position"]
        kept = sum(sum(not self._capped(a, l, c, p) for p in positions)
                   for a, l, c in itertools.product(*size))
        return n // (math.prod(map(len, size)) * len(positions)) * kept

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
            if self._capped(p.arch, p.layers, p.cells, p.position):
                continue
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
        if self.user_cells:           # where each user's cell came from, and its file's hash
            ident["cells"] = {s.name: s.identity() for s in self.user_cells}
        if self.max_position is not None:
            ident["max_position"] = f"{self.max_position}N"
        if self.walk is not None:     # which points the folder holds, not what any point is
            ident["walk"] = self.walk.to_dict()
        return ident

    def with_overrides(self, **settings: Any) -> Grid:
        """A copy with fixed settings replaced (CLI flags such as --max-epochs); an axis of the
        same name goes. Not checked here: memgrid.grid_file.check_grid checks the copy."""
        fixed = dict(self.fixed)
        axes = dict(self.axes)
        for k, v in settings.items():
            axes.pop(k, None)
            fixed[k] = v
        return dataclasses.replace(self, axes=axes, fixed=fixed)

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
# Sizes: the settings' integers, the stream MC's, the reservoirs'.


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


ESN_LOOP_CHANCE_MIN = 0.05
"""smallest chance that a drawn reservoir has a recurrent loop (see esn_loop_chance)"""


def esn_loop_chance(cells: int, connectivity: float) -> float:
    """A lower bound of the chance that a drawn reservoir of `cells` units is not nilpotent (has
    spectral radius > 0): the chance that one of its N diagonal weights is kept. A nilpotent draw
    is drawn again (``memgrid.esn``); below ESN_LOOP_CHANCE_MIN that could take hundreds."""
    return 1.0 - (1.0 - connectivity) ** cells


def protocol_name(settings: dict[str, Any], ignore: tuple[str, ...] = ()) -> str:
    """The protocol whose settings `settings` (a point's, or a points-table row) has, or
    `custom`; the settings in `ignore` (say the lr of a grid that tunes it) are not compared."""
    for name, values in PROTOCOLS.items():
        want = for_arch({**values, "arch": settings.get("arch")})
        if all(k in settings and settings[k] == want[k] for k in values
               if k in want and k not in ignore):
            return name
    return "custom"
