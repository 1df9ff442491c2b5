"""Is a memory-distance limit a fact about the network or about the training budget?

A limit measures the network only when more training would not move it (Collins,
Sohl-Dickstein and Sussillo, "Capacity and trainability in recurrent neural networks", ICLR
2017: tune and train every architecture and size to convergence before comparing capacities).
memgrid calls the limit of a configuration at a training budget *converged* when doubling the
budget (or more) changes neither the limit nor, beyond :data:`LOSS_TOL`, the mean loss at the
limit.

The budget of a point is its training steps, ``steps_per_epoch * max_epochs``. A table varies it in
one of two ways, or a second folder holds the check:

- a grid with a budget axis (`max_epochs` or `steps_per_epoch`): each budget is its own point;
- one run without the plateau stop: training is deterministic and pack-invariant, so the run
  cut at any earlier evaluation *is* the shorter run. :func:`budget_rungs` replays the stop rule
  at shorter budgets on the recorded curves, without training again;
- a *budget check*: the same configurations (all of them or some, on all seeds or some) run
  again at twice the budget or more, into a folder of their own. :func:`budget_check` pairs the
  two on the seeds they share and :func:`check_marks` says which limits the check leaves where
  they were, measured against the spread of the seeds' own limits.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .limits import compare_runs, memory_limits, replay_stopping
from .tables import CONFIG, THRESHOLD, budget_steps, variant_columns

BUDGET_COLUMNS = ("steps_per_epoch", "max_epochs")
"""The settings whose product is a point's training budget in training steps."""
LOSS_TOL = 0.01
"""Largest change of the mean loss at the limit that still counts as converged."""
MIN_FACTOR = 2
"""A budget is checked against the smallest budget at least this many times larger."""


def _keys(points: pd.DataFrame) -> list[str]:
    """A configuration apart from its budget: arch, l, c and the other variant settings."""
    return CONFIG + [c for c in variant_columns(points) if c not in BUDGET_COLUMNS]


def limits_by_budget(points: pd.DataFrame, threshold: float = THRESHOLD) -> pd.DataFrame:
    """:func:`memory_limits` per configuration and budget (column `budget`, training steps)."""
    pts = points.assign(budget=budget_steps(points))
    return memory_limits(pts, threshold, _keys(points) + ["budget"])


def budget_convergence(points: pd.DataFrame, threshold: float = THRESHOLD,
                       loss_tol: float = LOSS_TOL, min_factor: float = MIN_FACTOR
                       ) -> pd.DataFrame:
    """Each configuration's limit at each budget, checked against a budget >= `min_factor` times
    larger.

    One row per (configuration, budget), budgets ascending, with the columns of
    :func:`memory_limits` and:
      next_budget          smallest budget of the configuration >= min_factor * budget (NaN:
                           none in the table)
      next_limit           the limit at next_budget
      next_loss_at_limit   mean loss at p = limit under next_budget
      loss_change          next_loss_at_limit - loss_at_limit (NaN when limit is 0)
      converged            True: next_limit == limit and |loss_change| <= loss_tol;
                           False: either moved; NA: no larger budget to tell
      status               `converged`, `not converged` or `unknown` (no budget >= 2x)
    """
    keys = _keys(points)
    lim = limits_by_budget(points, threshold)
    cols = list(lim.columns) + ["next_budget", "next_limit", "next_loss_at_limit", "loss_change",
                                "converged", "status"]
    if lim.empty:
        return pd.DataFrame(columns=cols)
    pts = points.assign(budget=budget_steps(points))
    loss = pts["loss"].astype(float).replace([np.inf, -np.inf], np.nan)
    mean = (pts.assign(loss=loss).groupby(keys + ["budget", "position"], dropna=False)["loss"]
            .agg(lambda s: s.mean() if s.notna().all() else np.nan))   # a diverged seed fails
    rows = []
    for key, g in lim.groupby(keys, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        g = g.sort_values("budget")
        by_budget = {int(b): r for b, r in zip(g["budget"], g.to_dict("records"))}
        for b, r in by_budget.items():
            later = [b2 for b2 in by_budget if b2 >= min_factor * b]
            r = dict(r, next_budget=np.nan, next_limit=np.nan, next_loss_at_limit=np.nan,
                     loss_change=np.nan, converged=pd.NA, status="unknown")
            if later:
                nb = min(later)
                r["next_budget"], r["next_limit"] = nb, by_budget[nb]["limit"]
                if r["limit"] > 0:
                    r["next_loss_at_limit"] = mean.get(key + (nb, r["limit"]), np.nan)
                    r["loss_change"] = r["next_loss_at_limit"] - r["loss_at_limit"]
                same = r["next_limit"] == r["limit"]
                close = r["limit"] == 0 or abs(r["loss_change"]) <= loss_tol
                r["converged"] = bool(same and close)
                r["status"] = "converged" if r["converged"] else "not converged"
            rows.append(r)
    out = pd.DataFrame(rows, columns=cols)
    out["converged"] = out["converged"].astype("boolean")
    return out


def limit_marks(conv: pd.DataFrame) -> pd.Series:
    """Whether each row's limit (of :func:`budget_convergence`) is a converged value: the
    budget is at or past its configuration's :func:`converged_budget`, so no larger budget in
    the table moves it (one passed doubling is not enough: a limit can rest at 2, pass one
    doubling, then move to 3). `converged`; `not converged`: a larger budget moves it, or (at
    the largest budget) it moved on the way there; `unknown`: a single budget, nothing to
    compare."""
    keys = configuration_columns(conv)
    first = converged_budget(conv)
    start = {tuple(r[k] for k in keys): r["from_budget"] for r in first.to_dict("records")}
    checked = {tuple(r[k] for k in keys) for r in conv.to_dict("records")
               if r["status"] != "unknown"}
    marks = []
    for r in conv.to_dict("records"):
        key = tuple(r[k] for k in keys)
        b0 = start.get(key, np.nan)
        marks.append("converged" if np.isfinite(b0) and r["budget"] >= b0
                     else "not converged" if key in checked else "unknown")
    return pd.Series(marks, index=conv.index, name="mark")


_CONV_COLUMNS = {"limit", "units", "bound", "p_max", "stop", "limit_censored", "complete",
                 "loss_at_limit", "loss_next", "min_seeds", "budget", "next_budget", "next_limit",
                 "next_loss_at_limit", "loss_change", "converged", "status", "mark"}


def configuration_columns(conv: pd.DataFrame) -> list[str]:
    """The columns of a :func:`budget_convergence` table that name a configuration (arch, l, c
    and the settings that vary besides the budget)."""
    return [c for c in conv.columns if c not in _CONV_COLUMNS]


def converged_budget(conv: pd.DataFrame) -> pd.DataFrame:
    """Per configuration: the smallest budget from which every check against a larger budget
    says converged (`from_budget`, NaN if none), the limit there, and the largest budget checked.
    """
    keys = configuration_columns(conv)
    rows = []
    for key, g in conv.groupby(keys, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        g = g[g["status"] != "unknown"].sort_values("budget")
        ok = g["converged"].astype(bool).tolist()
        start = next((i for i in range(len(ok)) if all(ok[i:])), None)
        row = dict(zip(keys, key))
        row.update(from_budget=np.nan if start is None else int(g["budget"].iloc[start]),
                   limit=np.nan if start is None else int(g["limit"].iloc[start]),
                   checked_up_to=int(g["next_budget"].max()) if len(g) else np.nan)
        rows.append(row)
    return pd.DataFrame(rows, columns=keys + ["from_budget", "limit", "checked_up_to"])


def budget_rungs(points: pd.DataFrame, curves: pd.DataFrame, factors=(16, 8, 4, 2, 1)
                 ) -> pd.DataFrame:
    """The points table of a run without the plateau stop, as runs of budget/f would have ended
    for each f in `factors` (f = 1: the run itself), by :func:`replay_stopping` on the curves.

    A shorter budget must land on an evaluation (a multiple of eval_every epochs): factors that
    do not are left out. Rows of a replayed budget carry its `max_epochs`; `r2` and `mc_stream`
    are NaN where the replay ended earlier than the run (they were measured at the run's end).
    Raises ValueError for a table with the plateau stop on (a stopped run is no prefix of a
    longer one)."""
    if "plateau" in points and points["plateau"].astype(bool).any():
        raise ValueError("budget_rungs: needs a run without the plateau stop (--no-plateau)")
    parts = []
    for f in sorted(set(factors), reverse=True):
        epochs = points["max_epochs"] // f
        ok = (points["max_epochs"] % f == 0) & (epochs % points["eval_every"] == 0) & (epochs > 0)
        if not ok.all():
            continue
        if f == 1:
            parts.append(points)
            continue
        sub = []
        for e, g in points.groupby(epochs):
            sub.append(replay_stopping(g, curves, max_epochs=int(e)))
        parts.append(pd.concat(sub))
    return pd.concat(parts, ignore_index=True)


def score_budgets(points: pd.DataFrame, curves: pd.DataFrame, by: list[str] | None = None,
                  threshold: float = THRESHOLD) -> pd.DataFrame:
    """A joint search over training settings and budget, scored against every paper claim at
    once: `points` and `curves` of runs without the plateau stop, one per setting of `by`
    (default: the variant columns besides q_min/q_max, e.g. lr), each replayed at shorter
    budgets (:func:`budget_rungs`); without curves, `points` must hold every budget already.

    One row per (setting, budget): `budget`, one column per claim of
    :func:`memgrid.analysis.check_claims` (its figure label) with the verdict, and
    `converged`: the share of configurations whose limit there is converged
    (:func:`limit_marks`; the largest budget only counts as converged where a smaller one
    already was)."""
    from .claims import check_claims

    # a table that already holds every budget (a budget axis, or rungs replayed before) as is
    rungs = points if curves is None or curves.empty else budget_rungs(points, curves)
    rungs = rungs.assign(budget=budget_steps(rungs))
    if by is None:
        by = [c for c in variant_columns(points) if c not in BUDGET_COLUMNS + ("q_min", "q_max")]
    conv = budget_convergence(rungs.drop(columns="budget"), threshold)
    conv = conv.assign(mark=limit_marks(conv))
    rows = []
    for key, g in rungs.groupby(by + ["budget"], sort=True):
        key = key if isinstance(key, tuple) else (key,)
        setting = dict(zip(by + ["budget"], key))
        sel = conv[np.logical_and.reduce([conv[k] == v for k, v in setting.items()
                                          if k in conv.columns] + [np.ones(len(conv), bool)])]
        claims = check_claims(g.drop(columns="budget"), None, threshold)
        rows.append({**setting, **dict(zip(claims["figure"], claims["verdict"])),
                     "converged": float((sel["mark"] == "converged").mean()) if len(sel)
                     else np.nan})
    return pd.DataFrame(rows)


CHECK_MAY_CHANGE = ("position", "seed", "lr", *BUDGET_COLUMNS)
"""What a budget check may set otherwise than its run, besides which configurations it holds:
the positions and seeds (the two are paired on those they share), the learning rate (a check
tunes its own) and the budget."""


def check_fits(points: pd.DataFrame, check: pd.DataFrame, min_factor: float = MIN_FACTOR
               ) -> tuple[pd.Series, pd.Series]:
    """The budgets in steps of the run (`points`) and of its budget check (`check`) per
    configuration (arch, layers, cells). Raises ValueError where the check shares no
    configuration with the run, trains one of those it shares at less than `min_factor` times
    the run's budget, or sets any other setting (the task, the readout, the optimizer, the
    stop; all but :data:`CHECK_MAY_CHANGE`) otherwise than the run does."""
    budget = points.assign(b=budget_steps(points)).groupby(CONFIG)["b"].max()
    other = check.assign(b=budget_steps(check)).groupby(CONFIG)["b"].min()
    shared = budget.index.intersection(other.index)
    if shared.empty:
        raise ValueError("budget check: it shares no (arch, layers, cells) with the run")
    short = [k for k in shared if other[k] < min_factor * budget[k]]
    if short:
        a, l, c = short[0]
        raise ValueError(f"budget check: {a} l={l} c={c} trains {int(other[short[0]]):,} steps, "
                         f"not {min_factor:g}x the run's {int(budget[short[0]]):,} or more")
    from ..config import POINT_FIELDS

    settings = [f for f in POINT_FIELDS if f not in CONFIG and f not in CHECK_MAY_CHANGE
                and f in points.columns and f in check.columns]
    mine = points.set_index(CONFIG).loc[shared, settings]
    theirs = check.set_index(CONFIG).loc[shared, settings]
    for f in settings:
        a, b = set(mine[f].astype(str)), set(theirs[f].astype(str))
        if a != b:
            raise ValueError(f"budget check: it sets {f} to {', '.join(sorted(b))} where the run "
                             f"has {', '.join(sorted(a))}: only the budget, the learning rate, "
                             "the positions and the seeds may differ")
    return budget, other


def budget_check(points: pd.DataFrame, check: pd.DataFrame, threshold: float = THRESHOLD,
                 min_factor: float = MIN_FACTOR) -> pd.DataFrame:
    """A run (`points`) against its budget check (`check`: some of its configurations trained
    again at `min_factor` times its budget or more), paired on the seeds both hold
    (:func:`memgrid.analysis.compare_runs`).

    One row per configuration (arch, layers, cells) in both, with every position in both:
      budget, check_budget   training steps of the run and of the check
      check_seeds            seeds both hold (the limits below are over these)
      paired_limit           the run's limit on those seeds
      check_limit            the check's limit on those seeds; check_censored: it is a lower bound
      move_min, move_max     how far the check moves the limit: at least, at most. Where one
                             table ran positions past those both ran, a limit that reaches the
                             last of them is a lower bound (inf on the other side); else both
                             are check_limit - paired_limit
      move                   check_limit - paired_limit where that is known (NaN: not)
    Raises ValueError where the check does not fit the run (:func:`check_fits`)."""
    cols = CONFIG + ["budget", "check_budget", "check_seeds", "paired_limit", "check_limit",
                     "check_censored", "move_min", "move_max", "move"]
    budget, other = check_fits(points, check, min_factor)
    _, lim = compare_runs(points, check, threshold)
    if lim.empty:
        return pd.DataFrame(columns=cols)
    seeds = len(set(points["seed"]) & set(check["seed"]))
    keys = list(lim[CONFIG].itertuples(index=False, name=None))
    a, b = lim["limit_a"].astype(float), lim["limit_b"].astype(float)
    up_a = a.where(~(lim["cut"] & lim["censored_a"]), np.inf)     # a lower bound: no top
    up_b = b.where(~(lim["cut"] & lim["censored_b"]), np.inf)
    out = lim[CONFIG].assign(
        budget=[int(budget[k]) for k in keys], check_budget=[int(other[k]) for k in keys],
        check_seeds=seeds, paired_limit=lim["limit_a"], check_limit=lim["limit_b"],
        check_censored=lim["censored_b"], move_min=b - up_a, move_max=up_b - a,
        move=(b - a).where((up_a == a) & (up_b == b)))
    return out[cols].reset_index(drop=True)


def check_marks(limits: pd.DataFrame, check: pd.DataFrame | None) -> pd.Series:
    """Per row of `limits` (:func:`memgrid.analysis.limits_with_seeds`): `converged` where the
    budget check (:func:`budget_check`) moves the limit by no more than the spread of the seeds'
    own limits (``|move| <= seed_spread``: a move the seeds already disagree by is no finding),
    `moves` where it moves it by more (a move known only to be at least, or at most, some
    number: where that is past the spread already), `unchecked` where the check has no such
    configuration or its move may be either."""
    if check is None or check.empty or limits.empty:
        return pd.Series("unchecked", index=limits.index, name="converged")
    moved = limits[CONFIG].merge(check[CONFIG + ["move_min", "move_max"]], on=CONFIG,
                                 how="left")
    lo, hi = moved["move_min"].to_numpy(float), moved["move_max"].to_numpy(float)
    spread = limits["seed_spread"].to_numpy(float)
    mark = np.where((lo > spread) | (hi < -spread), "moves",
                    np.where((lo >= -spread) & (hi <= spread), "converged", "unchecked"))
    return pd.Series(mark, index=limits.index, name="converged")
