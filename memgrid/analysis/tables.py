"""Shared views of the points table: which columns make a configuration, seed means, loading.

Every analysis function takes a pandas DataFrame shaped like the points table
(:data:`memgrid.results.schema.POINT_SCHEMA`); only the columns it uses need to be there, so
hand-made tables in tests can be small. A *configuration* is ``(arch, layers, cells)``; a table that also
varies another setting inside a configuration (an ``lr`` axis, fixed and random length, plateau
stop on and off) keeps those apart: they are *variant* columns and are added to every grouping,
so that a mean over seeds never mixes two different experiments.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..config import POINT_FIELDS, THRESHOLD  # noqa: F401 - THRESHOLD: re-exported
from ..config import units as units_of
from ..results import read_curves, read_points

CONFIG = ["arch", "layers", "cells"]
"""A network configuration: architecture, layers l, cells per layer c."""
POINT = CONFIG + ["position", "seed"]
"""What names a point inside one experiment."""
PLATEAU = 0.25
"""Loss of the constant guess 0.5 on uniform [0, 1] targets: E|x - 0.5| = 1/4."""

# Settings that never split an experiment: ids, the run's name, and q_lo/q_hi (they follow from
# q_min, q_max and position under the `shift` rule, so they vary with p inside one experiment).
_NOT_VARIANTS = {"point_id", "grid", "q_lo", "q_hi"}


def variant_columns(points: pd.DataFrame) -> list[str]:
    """Setting columns (fields of :class:`memgrid.config.Point` besides arch, l, c, p and seed)
    that take more than one value inside some configuration, nulls counted as a value, in Point
    field order.

    A setting that is constant inside every configuration (a rate tuned per configuration, a
    per-arch ``lr: {rnn: .., lstm: ..}``) is part of what the configuration is, not a second
    experiment: grouping by it would split nothing, so it is not a variant.
    """
    names = [n for n in POINT_FIELDS
             if n not in POINT and n not in _NOT_VARIANTS and n in points.columns]
    if not names or points.empty:
        return []
    most = points.groupby(CONFIG, dropna=False)[names].nunique(dropna=False).max()
    return [n for n in names if most[n] > 1]


def group_columns(points: pd.DataFrame, by: list[str] | None = None) -> list[str]:
    """`by` if given, else the configuration plus the variant columns of `points`."""
    return list(by) if by is not None else CONFIG + variant_columns(points)


def budget_steps(points: pd.DataFrame) -> pd.Series:
    """training steps a point was allowed: steps_per_epoch * max_epochs (int)."""
    if points.empty:
        return pd.Series(dtype=int, index=points.index)
    spe = points["steps_per_epoch"] if "steps_per_epoch" in points else 1
    return (spe * points["max_epochs"]).astype(int)


def units(points: pd.DataFrame) -> pd.Series:
    """N per row, the paper's N: the numbers a network's state holds. The points table records
    it (`units`); a row without it gets ``memgrid.config.units`` of its cell (c * l for RNN,
    LSTM, GRU, ESN), so rows of a cell this memgrid no longer defines still read."""
    keys = points[["arch", "layers", "cells"]].astype({"layers": int, "cells": int})
    have = points["units"] if "units" in points.columns else pd.Series(np.nan, index=points.index)
    known = {k: int(n) for k, n in zip(keys.itertuples(index=False, name=None), have)
             if pd.notna(n)}
    n = {k: known[k] if k in known else _units_of(*k)
         for k in keys.drop_duplicates().itertuples(index=False, name=None)}
    return pd.Series([n[k] for k in keys.itertuples(index=False, name=None)], index=points.index,
                     dtype=int)


def _units_of(arch: str, layers: int, cells: int) -> int:
    try:
        return units_of(arch, layers, cells)
    except KeyError:
        raise ValueError(f"arch {arch!r}: not a cell of this memgrid and its rows record no "
                         "`units`") from None


ARCH_LABELS = {"esn": "ESN", "s6": "S6"}
"""Names of archs that are not cells of :data:`memgrid.cells.CELLS` (the echo state network,
and a cell withdrawn whose rows are still read)."""


RECORDED_LABELS: dict[str, str] = {}
"""Labels of users' cells as the results folders read here record them (their grid.json's
`cells`): a folder is analysed without running anybody's file. Filled by
:func:`remember_labels`."""


def remember_labels(grid) -> None:
    """Keep the labels of the users' cells that `grid` (a :class:`memgrid.config.Grid` read
    from a results folder's grid.json) records, for :func:`arch_label`; a label no cell could
    carry (:func:`memgrid.user_cells.label_problem`: a hand-edited file's) is passed over."""
    from ..user_cells import label_problem

    RECORDED_LABELS.update({s.name: s.label for s in grid.user_cells
                            if s.label and label_problem(s.label) is None})


def arch_label(arch: str) -> str:
    """How figures and tables name `arch`: its cell's `label` (``memgrid.cells``: `minGRU` for
    `mingru`), else :data:`ARCH_LABELS` (the ESN, a cell whose rows outlive it), else the label
    a results folder records of a user's cell (:func:`remember_labels`), else as it is."""
    from ..cells import CELLS

    if arch in CELLS:
        return CELLS[arch].label
    return ARCH_LABELS.get(arch) or RECORDED_LABELS.get(arch, arch)


def units_text(archs) -> str:
    """How N follows from l and c for these archs, from their cells' definitions
    (``Cell.units``): ``N = c * l`` where each holds c numbers per layer, else for example
    ``N = c * l (2 c * l: LRU)`` (archs by :func:`arch_label`)."""
    odd: dict[int, list[str]] = {}
    for a in archs:
        try:
            k = units_of(a, 1, 1)
        except KeyError:        # a cell this memgrid does not define: its rows say its N
            continue
        if k != 1:
            odd.setdefault(k, []).append(arch_label(a))
    rest = "; ".join(f"{k} c * l: {', '.join(names)}" for k, names in sorted(odd.items()))
    return "N = c * l" + (f" ({rest})" if rest else "")


def is_fixed_length(points: pd.DataFrame) -> pd.Series:
    """True where the point ran Definition 2 (q_min == q_max). Without q columns every point is
    taken as random length, the paper's default task (Definition 1)."""
    if "q_min" not in points.columns or "q_max" not in points.columns:
        return pd.Series(False, index=points.index)
    return points["q_min"] == points["q_max"]


def random_length(points: pd.DataFrame) -> pd.DataFrame:
    """Points of the random memorization task (Definition 1: q_min < q_max)."""
    return points[~is_fixed_length(points)]


def fixed_length(points: pd.DataFrame) -> pd.DataFrame:
    """Points of the fixed-length task (Definition 2: q_min == q_max)."""
    return points[is_fixed_length(points)]


def mean_losses(points: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Loss statistics over seeds per ``by + [position]`` (default ``by``: configuration plus
    variants). Columns: `mean` and `std` (ddof=1; NaN with one seed) of `loss`, `seeds` (rows
    behind the cell) and `diverged` (rows with a non-finite loss).

    A non-finite loss (a diverged point) makes the cell's mean NaN on purpose: a mean over the
    seeds that survived would call a position memorized that some seeds could not train on.
    """
    keys = group_columns(points, by) + ["position"]
    loss = points["loss"].astype(float).replace([np.inf, -np.inf], np.nan)
    frame = points[keys].assign(loss=loss, diverged=loss.isna())
    grouped = frame.groupby(keys, dropna=False, sort=True)
    out = grouped["loss"].agg(["mean", "std", "size"]).rename(columns={"size": "seeds"})
    out["diverged"] = grouped["diverged"].sum().astype(int)
    out.loc[out["diverged"] > 0, ["mean", "std"]] = np.nan  # see the docstring
    return out.reset_index()


def describe(row: pd.Series | dict, extra: list[str] = ()) -> str:
    """`rnn l=1 c=5` (plus `lr=0.01` for each variant column in `extra`) for evidence strings."""
    text = f"{row['arch']} l={int(row['layers'])} c={int(row['cells'])}"
    for k in extra:
        text += f" {k}={row[k]}"
    return text


def load_points(uri: str) -> pd.DataFrame:
    """The points table of a results folder as pandas (empty, with every column, if none yet)."""
    return read_points(uri).to_pandas()


def load_curves(uri: str, point_ids=None) -> pd.DataFrame:
    """The curves of a results folder (optionally only of some points) as pandas."""
    return read_curves(uri, point_ids).to_pandas()


def values_text(vals) -> str:
    """[1, 2, 3, 7] -> '1..3, 7' (integers, numpy's too, as runs); other values as written."""
    vals = list(vals)
    if vals and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in vals):
        runs: list[list[int]] = []
        for v in sorted(int(v) for v in vals):
            if runs and v == runs[-1][1] + 1:
                runs[-1][1] = v
            else:
                runs.append([v, v])
        return ", ".join(f"{a}..{b}" if b > a else str(a) for a, b in runs)
    return ", ".join(map(str, vals))
