"""The result of a run in a few lines: each configuration's limit with its seeds, what reaches N,
one sentence per paper claim; and the full tables behind it, as CSV.

A limit is always shown with what its seeds say (:func:`memgrid.analysis.limits_with_seeds`):
the spread of their own limits, how many reach it, whether the grid's largest p censors it (a
lower bound, written `>= p`), its value at stricter thresholds, and whether a budget check
leaves it where it is (:func:`memgrid.analysis.convergence.check_marks`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .claims import FAILS, HOLDS, NOT_COVERED, UNDECIDED
from .convergence import budget_check, check_marks
from .limits import STRICT_THRESHOLDS, limits_with_seeds
from .tables import (CONFIG, THRESHOLD, arch_label, fixed_length, random_length,
                     values_text, variant_columns)

TASKS = (("random", "random length (Definition 1)", random_length),
         ("fixed", "fixed length (Definition 2)", fixed_length))
"""The two tasks a table may hold: (name, title, selection of its points)."""
CHECK_COLUMNS = ["check_budget", "check_seeds", "paired_limit", "check_limit", "check_censored",
                 "move_min", "move_max", "move"]


def limits_table(points: pd.DataFrame, threshold: float = THRESHOLD,
                 check: pd.DataFrame | None = None,
                 grid: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every configuration's limit with its seeds, per task: :func:`limits_with_seeds` of the
    random- and the fixed-length points, a `task` column first (`random`, `fixed`), then the
    budget check's columns (:func:`memgrid.analysis.convergence.budget_check`, of the
    random-length points; NaN where the check has no such configuration) and `converged`
    (`converged`, `moves`, `unchecked`: :func:`memgrid.analysis.convergence.check_marks`).

    `grid`: the points of the grid the table comes from (arch, layers, cells, position, q_min,
    q_max), where it is known. A limit at the table's largest p whose grid goes further is not
    measured yet (`stop` `missing`), not censored by the grid's end: a grid still running."""
    parts = []
    for task, _, select in TASKS:
        sub = select(points)
        if sub.empty:
            continue
        lim = limits_with_seeds(sub, threshold)
        if grid is not None:
            lim = _not_measured_yet(lim, select(grid))
        chk = None
        if check is not None and task == "random" and not random_length(check).empty:
            chk = budget_check(sub, random_length(check), threshold)
        if chk is not None and len(chk):
            lim = lim.merge(chk[CONFIG + CHECK_COLUMNS], on=CONFIG, how="left")
        else:
            lim = lim.assign(**{c: np.nan for c in CHECK_COLUMNS})
        lim["converged"] = check_marks(lim, chk)
        parts.append(lim.assign(task=task))
    if not parts:
        return pd.DataFrame()
    out = pd.concat(parts, ignore_index=True)
    return out[["task"] + [c for c in out.columns if c != "task"]]


def _not_measured_yet(lim: pd.DataFrame, grid: pd.DataFrame) -> pd.DataFrame:
    """`lim` with `stop` `missing` where the walk ended at the table's largest p (`end`) and the
    grid has a larger p for that configuration."""
    if grid.empty:
        return lim
    ends = grid.groupby(CONFIG)["position"].max()
    key = pd.MultiIndex.from_frame(lim[CONFIG].astype({"layers": int, "cells": int}))
    grid_end = ends.reindex(key).to_numpy(dtype=float)
    further = (lim["stop"] == "end").to_numpy() & (grid_end > lim["p_max"].to_numpy())
    return lim.assign(stop=np.where(further, "missing", lim["stop"]))


def _bound_text(sel: pd.DataFrame, layers: int) -> str:
    """N - (l - 1) as a function of c for the rows `sel` of one arch and l: `c`, `2c - 1`."""
    k = int(round((sel["units"] / sel["cells"]).iloc[0]))
    coef = "c" if k == 1 else f"{k}c"
    return coef + (f" - {layers - 1}" if layers > 1 else "")


def _cell_text(r: dict) -> str:
    """One configuration's limit in a summary grid: `15`, `>= 20` (censored), bold above the
    bound, the seeds' own limits where they differ from it (`(11..16, 4/5)`: their range, and
    how many reach it where not all do), a mark for the budget check."""
    text = r["limit_text"]
    if r["limit"] > r["bound"]:
        text = f"**{text}**"
    lo, hi = int(r["seed_limit_min"]), int(r["seed_limit_max"])
    notes = []
    if not lo == hi == r["limit"]:
        notes.append(f"{lo}..{hi}" if hi > lo else f"{lo}")
    if r["seeds_reaching"] < r["seeds"]:
        notes.append(f"{int(r['seeds_reaching'])}/{int(r['seeds'])}")
    if notes:
        text += f" ({', '.join(notes)})"
    return text + {"converged": " ✓", "moves": " ✗"}.get(r["converged"], "")


def summary_grid(lim: pd.DataFrame, arch: str) -> pd.DataFrame:
    """One arch's limits (rows of :func:`limits_table` of one task and no variant columns) as
    a grid: a row per c, a column per l headed with its bound, cells by :func:`_cell_text`."""
    sel = lim[lim["arch"] == arch]
    layers = sorted(int(v) for v in sel["layers"].unique())
    cells = sorted(int(v) for v in sel["cells"].unique())
    text = {(int(r["layers"]), int(r["cells"])): _cell_text(r) for r in sel.to_dict("records")}
    head = {l: f"l = {l} (bound {_bound_text(sel[sel['layers'] == l], l)})" for l in layers}
    return pd.DataFrame([[c] + [text.get((l, c), "") for l in layers] for c in cells],
                        columns=["c"] + [head[l] for l in layers])


def _where(sel: pd.DataFrame) -> str:
    """`l=1: c = 1..7, 10; l=2: c = 2` for the configurations in `sel` (one arch)."""
    return "; ".join(f"l={int(l)}: c = {values_text(g['cells'])}"
                     for l, g in sel.groupby("layers", sort=True)) or "none"


def archs_in_order(lim: pd.DataFrame) -> list[str]:
    """The archs of a table in memgrid's order (:data:`memgrid.config.ARCHS`: RNN, LSTM, GRU,
    then the newer cells), others after them by name."""
    from ..config import ARCHS

    seen = set(lim["arch"])
    return [a for a in ARCHS if a in seen] + sorted(seen - set(ARCHS))


def _holes(lim: pd.DataFrame) -> pd.Series:
    """The censored limits whose next position is missing from the table (not measured yet: a
    hole in the grid, a grid still running), not past the grid's largest p."""
    if "stop" not in lim:
        return pd.Series(False, index=lim.index)
    return lim["stop"] == "missing"


def reach_sentences(lim: pd.DataFrame) -> list[str]:
    """Per arch: which configurations' limits reach the bound N - (l - 1), which stay below it
    (and which of those are censored, so they may reach it: the grid stops before the bound, or
    the next position is not measured yet), as Markdown bullets."""
    out = []
    for arch in archs_in_order(lim):
        sel = lim[lim["arch"] == arch]
        reach = sel[sel["limit"] >= sel["bound"]]
        below = sel[sel["limit"] < sel["bound"]]
        firm = below[~below["limit_censored"]]
        holes = below[_holes(below)]
        end = below[below["limit_censored"] & ~_holes(below)]
        line = (f"- **{arch_label(arch)}**: the limit reaches the bound N - (l - 1) in "
                f"{len(reach)} of {len(sel)} configurations ({_where(reach)})")
        if len(firm):
            line += f"; stays below it in {len(firm)} ({_where(firm)})"
        if len(end):
            line += (f"; {len(end)} below it are censored by the grid's largest p, so they may "
                     f"reach it ({_where(end)})")
        if len(holes):
            line += (f"; {len(holes)} below it lack the next position, not measured yet, so "
                     f"they may reach it ({_where(holes)})")
        out.append(line + ".")
    return out


def count_sentence(lim: pd.DataFrame, threshold: float) -> str:
    """How the limits of one task sit against the bound, the seeds, the grid's end, stricter
    thresholds and the budget check, in one paragraph."""
    n = len(lim)
    above = int((lim["limit"] > lim["bound"]).sum())
    at = int((lim["limit"] == lim["bound"]).sum())
    holes = int(_holes(lim).sum())
    cens = int(lim["limit_censored"].sum()) - holes
    spread = int((lim["seed_spread"] > 0).sum())
    short = int((lim["seeds_reaching"] < lim["seeds"]).sum())
    median = int((lim["seed_limit_median"] != lim["limit"]).sum())
    text = (f"{n} configurations. The limit (largest p whose mean loss over seeds is below "
            f"{threshold} at every p' <= p) equals the bound N - (l - 1) in {at}, exceeds it in "
            f"{above}, and is censored by the grid's largest p in {cens} (a lower bound, "
            f"`>= p`)" + (f", and by a position not measured yet in {holes}" if holes else "")
            + f". Seeds' own limits differ from one another in {spread}; some seed falls "
            f"short of the limit in {short}; the median seed's limit differs from it in "
            f"{median}.")
    stricter = [t for t in STRICT_THRESHOLDS if t < threshold and f"limit_{t:g}" in lim]
    if stricter:
        text += " At stricter thresholds the limit is lower in " + ", ".join(
            f"{int((lim[f'limit_{t:g}'] < lim['limit']).sum())} (at {t:g})" for t in stricter)
        text += ", and above the bound in " + ", ".join(
            f"{int((lim[f'limit_{t:g}'] > lim['bound']).sum())} (at {t:g})" for t in stricter) + "."
    marks = lim["converged"].value_counts()
    checked = int(marks.get("converged", 0) + marks.get("moves", 0))
    if checked:
        text += (f" The budget check (twice the budget or more) leaves {int(marks.get('converged', 0))} "
                 f"of {checked} checked limits within their seeds' spread (✓) and moves "
                 f"{int(marks.get('moves', 0))} by more (✗); {n - checked} are unchecked.")
    else:
        text += (" No budget check: no limit is known to be converged (a run of the same "
                 "configurations at twice the budget, `budget_check=`, tells).")
    return text


VERDICT_WORDS = {HOLDS: "holds", FAILS: "does not hold", UNDECIDED: "undecided",
                 NOT_COVERED: "not covered by this grid"}


def claim_sentences(claims: pd.DataFrame) -> list[str]:
    """One bullet per paper claim: the claim, its figure, the verdict in bold, the numbers."""
    return [f"- {r['claim']} ({r['figure']}): **{VERDICT_WORDS.get(r['verdict'], r['verdict'])}**"
            f" — {r['evidence']}." for r in claims.to_dict("records")]


def settings_table(points: pd.DataFrame) -> pd.DataFrame:
    """Every setting the points record (each field of :class:`memgrid.config.Point`, defaults
    included), with its value, or its values where it varies."""
    from ..config import POINT_FIELDS

    rows = []
    for k in POINT_FIELDS:
        if k not in points or k in ("point_id", "grid"):
            continue
        counts = points[k].astype(object).where(points[k].notna(), None).value_counts(dropna=False)
        vals = sorted(counts.index, key=lambda v: (str(type(v)), v if v is not None else ""))
        if len(vals) == 1:
            rows.append((k, _value(vals[0])))
        elif len(vals) <= 12:
            rows.append((k, ", ".join(_value(v) for v in vals)))
        else:
            rows.append((k, f"{len(vals)} values, {_value(vals[0])} .. {_value(vals[-1])}"))
    return pd.DataFrame(rows, columns=["setting", "value"])


def _value(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "none"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):g}"
    return str(v.item() if hasattr(v, "item") else v)


def has_variants(points: pd.DataFrame) -> bool:
    """True where the table varies a setting inside a configuration besides the task length:
    the summary grid (one cell per (arch, l, c)) cannot show it, the full table does."""
    return any(v not in ("q_min", "q_max") for v in variant_columns(points))
