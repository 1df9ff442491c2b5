"""Empirical memory capacity and the check of the paper's bound MC <= N - (l - 1).

Jaeger (2001), eq. 3 of the paper: the memory capacity of a network is the sum over delays k
of the squared correlation between the input k steps back and the output trained to recall it,

    MC = sum_k MC_k,   MC_k = cov^2(x(t - k), y_k(t)) / (Var(x(t)) Var(y_k(t))).

Here each point (arch, l, c, p, seed) is the output trained to recall the p-th element from the
end of its sequence (memgrid.task): the element p - 1 steps before the last input, delay
k = p - 1 (p = 1 is the current input, delay 0). Its `r2` column is that delay's MC_{p-1},
measured on the point's held-out evaluation set, so summing over positions 1..P gives
MC_0 + ... + MC_{P-1}: memgrid.stream_mc's classical MC (delays k >= 1) plus MC_0 (close to 1
for most networks), as stream_mc's ``k_min=0, k_max=P-1`` measures it. Summing over the
positions of the grid gives a lower bound of Jaeger's sum to infinity (positions the grid does
not ask for add nothing). Jaeger showed MC <= N for an echo state network with linear readout; the paper observed
MC <= N - (l - 1) for stacked, trained networks (section 4). An r2 measured on n samples of
unrelated output and target is about 1 / (n - 1) on average, not 0: the `noise` column adds that
up, so a margin below it is within measurement noise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .tables import group_columns, units


def memory_capacity(points: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """MC per network: one row per ``by + [seed]`` (default ``by``: arch, layers, cells plus the
    variant columns; it must include layers and cells).

    Columns besides the keys:
      mc          sum over the positions present of r2 clipped into [0, 1] (a NaN r2, e.g. a
                  constant output, counts as 0)
      positions   positions summed; r2_missing: how many of them had a NaN r2
      p_max       largest position present
      units       N = c * l;  bound: N - (l - 1);  margin: mc - bound (> 0 is a violation)
      noise       expected sum of r2 from chance alone: sum of 1 / (eval_size - 1) over the
                  positions (NaN without an eval_size column)
    """
    keys = group_columns(points, by) + ["seed"]
    cols = keys + ["mc", "positions", "r2_missing", "p_max", "units", "bound", "margin", "noise"]
    if len(points) == 0:
        return pd.DataFrame(columns=cols)
    r2 = points["r2"].astype(float)
    frame = points[keys + ["position"]].assign(
        r2=r2.fillna(0.0).clip(0.0, 1.0),  # r2 is a squared correlation: outside [0, 1] is rounding
        r2_missing=r2.isna(),
        chance=1.0 / (points["eval_size"].astype(float) - 1.0)
        if "eval_size" in points.columns else np.nan,
    )
    g = frame.groupby(keys, dropna=False, sort=True)
    out = pd.DataFrame({
        "mc": g["r2"].sum(),
        "positions": g["position"].nunique(),
        "r2_missing": g["r2_missing"].sum().astype(int),
        "p_max": g["position"].max().astype(int),
        "noise": g["chance"].sum(min_count=1),
    }).reset_index()
    if "units" in points.columns:   # the rows' own N (a cell this memgrid does not define)
        out = out.merge(points[["arch", "layers", "cells", "units"]].drop_duplicates(
            ["arch", "layers", "cells"]), on=["arch", "layers", "cells"], how="left")
    out["units"] = units(out)
    out["bound"] = out["units"] - (out["layers"].astype(int) - 1)
    out["margin"] = out["mc"] - out["bound"]
    return out[cols]


def capacity_violations(points: pd.DataFrame, tol: float = 0.0,
                        by: list[str] | None = None) -> pd.DataFrame:
    """Every network (configuration, seed) with MC > bound + tol, largest margin first."""
    mc = memory_capacity(points, by)
    out = mc[mc["margin"] > tol]
    return out.sort_values("margin", ascending=False, kind="stable").reset_index(drop=True)


def capacity_testable(mc: pd.DataFrame) -> pd.Series:
    """True where the bound can be broken at all: MC sums at most one per position, so a network
    with no more positions than its bound cannot exceed it whatever it learned."""
    return mc["positions"] > mc["bound"]
