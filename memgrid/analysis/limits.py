"""Memory-distance limits, the bimodality of outcomes, and what the plateau stop changes.

The memory-distance limit of a configuration (arch, l, c) is the largest position p such that
the mean evaluation loss over seeds is below a threshold (default 0.05) for *every* p' <= p.
Each seed has its own limit by the same walk on its own losses (:func:`seed_limits`); their
spread says how much the limit of the mean rests on one seed (:func:`limits_with_seeds`). The
paper's observation to compare it with is the capacity bound
``limit <= MC <= N - (l - 1)``, N = c * l: a network cannot reproduce more positions than it has
units to hold them in.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..config import POINT_FIELDS
from .tables import CONFIG, POINT, THRESHOLD, group_columns, mean_losses, units, variant_columns


STRICT_THRESHOLDS = (0.05, 0.02, 0.01)
"""Thresholds at which :func:`limits_with_seeds` also gives the limit: an MAE of 0.05 on a
uniform [0, 1] target leaves about 2 bits per position (log2(1 / (2 * 0.05)) ~ 3.3 bits for a
uniform error of that width, fewer for a spread-out one), 0.01 about 5: a limit that holds at
the stricter thresholds does not rest on what the threshold lets through."""


def walk(losses: dict[int, float], threshold: float) -> int:
    """The walk that defines a limit: the largest p with ``losses[p'] < threshold`` for every
    p' = 1..p (0 if p = 1 fails or is missing). NaN (a diverged seed) fails."""
    p = 1
    while p in losses and losses[p] < threshold:
        p += 1
    return p - 1


def memory_limits(points: pd.DataFrame, threshold: float = THRESHOLD,
                  by: list[str] | None = None) -> pd.DataFrame:
    """One row per configuration (``by``; default arch, layers, cells plus variant columns,
    which must include layers and cells) with its memory-distance limit.

    The walk goes p = 1, 2, ... while p is in the grid and its mean loss over seeds is below
    `threshold`; `limit` is the last p that passed (0 if p = 1 fails or is missing).

    Columns besides the keys:
      limit           largest p with mean loss < threshold for every p' <= p
      units, bound    N = c * l and the paper's observed bound N - (l - 1)
      p_max           largest position of this configuration in the table
      stop            why the walk ended: `loss` (p = limit + 1 measured, not memorized),
                      `missing` (p = limit + 1 absent: a hole in the grid) or `end` (limit = p_max)
      limit_censored  stop is not `loss`: the next position was never measured, so the true
                      limit may be higher
      complete        every position 1..p_max is present
      loss_at_limit, loss_next  mean loss at p = limit and at p = limit + 1 (NaN if absent)
      min_seeds       fewest seeds behind any position of the configuration
    """
    keys = group_columns(points, by)
    cols = keys + ["limit", "units", "bound", "p_max", "stop", "limit_censored", "complete",
                   "loss_at_limit", "loss_next", "min_seeds"]
    if len(points) == 0:
        return pd.DataFrame(columns=cols)
    means = mean_losses(points, keys)
    n_of = dict(zip(points[CONFIG].astype({"layers": int, "cells": int})
                    .itertuples(index=False, name=None), units(points)))
    rows = []
    for key, g in means.groupby(keys, dropna=False, sort=True):
        mean = dict(zip(g["position"].astype(int), g["mean"]))
        p_max = max(mean)
        limit = walk(mean, threshold)
        p = limit + 1
        stop = "end" if p > p_max else ("loss" if p in mean else "missing")
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        n = n_of[(row["arch"], int(row["layers"]), int(row["cells"]))]
        row.update(limit=limit, units=n, bound=n - (int(row["layers"]) - 1), p_max=p_max,
                   stop=stop, limit_censored=stop != "loss",
                   complete=set(range(1, p_max + 1)) <= set(mean),
                   loss_at_limit=mean.get(limit, np.nan), loss_next=mean.get(limit + 1, np.nan),
                   min_seeds=int(g["seeds"].min()))
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def seed_limits(points: pd.DataFrame, threshold: float = THRESHOLD,
                by: list[str] | None = None) -> pd.DataFrame:
    """Each seed's own limit: one row per configuration (``by`` as in :func:`memory_limits`)
    and seed, `limit` by :func:`walk` on that seed's losses (a non-finite loss fails), `p_max`
    the configuration's largest position and `censored` where the seed's walk ended without a
    measured failure (at p_max, or at a position this seed did not run)."""
    keys = group_columns(points, by)
    cols = keys + ["seed", "limit", "p_max", "censored"]
    if len(points) == 0:
        return pd.DataFrame(columns=cols)
    loss = points["loss"].astype(float).replace([np.inf, -np.inf], np.nan)
    frame = points[keys + ["seed", "position"]].assign(loss=loss)
    p_max = frame.groupby(keys, dropna=False)["position"].max()
    rows = []
    for key, g in frame.groupby(keys + ["seed"], dropna=False, sort=True):
        losses = dict(zip(g["position"].astype(int), g["loss"]))
        limit = walk(losses, threshold)
        conf = key[:-1] if len(key) > 2 else key[0]
        rows.append(dict(zip(keys + ["seed"], key), limit=limit, p_max=int(p_max[conf]),
                         censored=limit + 1 not in losses))
    return pd.DataFrame(rows, columns=cols)


def limit_text(limit: int, censored: bool) -> str:
    """`15`, or `>= 20` for a censored limit (a lower bound: the next position was not run)."""
    return f">= {int(limit)}" if censored else str(int(limit))


def limits_with_seeds(points: pd.DataFrame, threshold: float = THRESHOLD,
                      by: list[str] | None = None,
                      thresholds: tuple[float, ...] = STRICT_THRESHOLDS) -> pd.DataFrame:
    """:func:`memory_limits` (the limit of the mean over seeds: *the* limit) with what its seeds
    say, one row per configuration.

    Columns besides those of :func:`memory_limits`:
      limit_text        the limit, `>= k` where it is censored (a lower bound)
      seeds             seeds of the configuration
      seed_limit_min, seed_limit_median, seed_limit_max   over the seeds' own limits
                        (:func:`seed_limits`)
      seed_spread       seed_limit_max - seed_limit_min
      seeds_reaching    seeds whose own limit is at least the limit
      seeds_passing     per position p = 1..p_max, how many seeds have loss < threshold
                        there, space-separated (`5 5 5 4 1 0 ...`)
      limit_<t>         the limit at each threshold t of `thresholds` (e.g. `limit_0.02`)
    """
    keys = group_columns(points, by)
    lim = memory_limits(points, threshold, keys)
    extra = ["limit_text", "seeds", "seed_limit_min", "seed_limit_median", "seed_limit_max",
             "seed_spread", "seeds_reaching", "seeds_passing"] + [f"limit_{t:g}" for t in thresholds]
    if lim.empty:
        return pd.DataFrame(columns=list(lim.columns) + extra)
    per_seed = seed_limits(points, threshold, keys).merge(
        lim[keys + ["limit"]].rename(columns={"limit": "of_mean"}), on=keys)
    agg = per_seed.groupby(keys, dropna=False, sort=True).agg(
        seeds=("seed", "nunique"), seed_limit_min=("limit", "min"),
        seed_limit_median=("limit", "median"), seed_limit_max=("limit", "max"),
        seeds_reaching=("limit", lambda s: int((s >= per_seed.loc[s.index, "of_mean"]).sum())))
    passed = points[keys + ["position"]].assign(
        ok=points["loss"].astype(float) < threshold).groupby(
        keys + ["position"], dropna=False, sort=True)["ok"].sum().astype(int)
    passing = {}
    for key, g in passed.reset_index().groupby(keys, dropna=False, sort=True):
        counts = dict(zip(g["position"].astype(int), g["ok"]))
        passing[key] = " ".join(str(counts.get(p, "-")) for p in range(1, max(counts) + 1))
    agg["seeds_passing"] = pd.Series(passing)
    out = lim.merge(agg.reset_index(), on=keys, how="left")
    out["seed_spread"] = out["seed_limit_max"] - out["seed_limit_min"]
    out["limit_text"] = [limit_text(l, c) for l, c in zip(out["limit"], out["limit_censored"])]
    for t in thresholds:
        out[f"limit_{t:g}"] = memory_limits(points, t, keys)["limit"].to_numpy()
    return out[list(lim.columns) + extra]


def limit_violations(points: pd.DataFrame, threshold: float = THRESHOLD,
                     by: list[str] | None = None) -> pd.DataFrame:
    """Configurations whose memory-distance limit exceeds the bound N - (l - 1), with
    ``margin = limit - bound`` (> 0), largest margin first."""
    lim = memory_limits(points, threshold, by)
    out = lim[lim["limit"] > lim["bound"]].assign(margin=lambda d: d["limit"] - d["bound"])
    return out.sort_values("margin", ascending=False, kind="stable").reset_index(drop=True)


def against_state_size(points: pd.DataFrame, threshold: float = THRESHOLD,
                       by: list[str] | None = None) -> pd.DataFrame:
    """What each configuration remembers against N, its state size (the numbers its state
    holds: Jaeger's bound MC <= N counts them), with what it cost to train. One row per
    configuration (``by`` as in :func:`memory_limits`).

    Columns besides the keys:
      units, limit, limit_censored   as in :func:`memory_limits`
      reaches_n       ``yes``: limit >= N; ``no``: limit < N, measured (p = limit + 1 failed);
                      ``?``: limit < N and censored (the next position was not run)
      stream_mc, stream_mc_max   Jaeger's stream MC of its networks (`mc_stream`): mean and
                      largest over every network (position and seed) measured; NaN if none
      stream_share    stream_mc / N: the share of its state the mean network keeps in use
      epochs, seconds  per point: mean epochs trained, mean seconds in training (`wall_s`: the
                      time in its pack, which its pack's other points shared)
    """
    lim = memory_limits(points, threshold, by)
    keys = group_columns(points, by)
    cols = keys + ["units", "limit", "limit_censored", "reaches_n", "stream_mc", "stream_mc_max",
                   "stream_share", "epochs", "seconds"]
    if lim.empty:
        return pd.DataFrame(columns=cols)
    stream = points["mc_stream"] if "mc_stream" in points else pd.Series(np.nan, index=points.index)
    cost = points.assign(stream=stream.astype(float)).groupby(keys, dropna=False, sort=True).agg(
        stream_mc=("stream", "mean"), stream_mc_max=("stream", "max"),
        epochs=("epochs", "mean"), seconds=("wall_s", "mean")).reset_index()
    out = lim.merge(cost, on=keys, how="left")
    out["reaches_n"] = np.where(out["limit"] >= out["units"], "yes",
                                np.where(out["limit_censored"], "?", "no"))
    out["stream_share"] = out["stream_mc"] / out["units"]
    return out[cols]


def bimodality(points: pd.DataFrame, lo: float = THRESHOLD, hi: float = 0.2,
               by: list[str] | None = None) -> dict:
    """How rare the in-between outcomes are (paper, Figures 6 and 7: losses either near 0 or
    near the 0.25 plateau, few in [0.05, 0.2]).

    Returns counts and shares of points, and of (configuration, p) means over seeds, with loss in
    the closed band [lo, hi]. Every row counts in the denominator; a diverged point (non-finite
    loss) and a cell with one is never in the band.
    """
    loss = points["loss"].astype(float) if len(points) else pd.Series(dtype=float)
    between = int(loss.between(lo, hi).sum())
    means = mean_losses(points, by)["mean"] if len(points) else pd.Series(dtype=float)
    means_between = int(means.between(lo, hi).sum())
    return {
        "lo": lo, "hi": hi,
        "points": len(loss), "points_between": between,
        "share_points": between / len(loss) if len(loss) else np.nan,
        "means": len(means), "means_between": means_between,
        "share_means": means_between / len(means) if len(means) else np.nan,
    }


def compare_runs(a: pd.DataFrame, b: pd.DataFrame, threshold: float = THRESHOLD
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One grid run twice (two protocols, or two budgets), on what both hold with every seed they
    share: a grid still running is compared on the part it has done, and a check run on some of
    a grid's seeds on those seeds, paired. Each table must be one experiment (no variant
    columns; a learning rate tuned per configuration is not one).

    Returns ``(means, limits)``. `means`: one row per (arch, layers, cells, position) with every
    shared seed in both, columns `mean_a`, `mean_b` (loss over those seeds)
    and `memorized_a`, `memorized_b` (mean < threshold). `limits`: one row per configuration
    one of whose tables has all its positions in `means` (the other may have more: a check run
    on the first positions of a grid), or whose positions in `means` are the first positions of
    both (a walked run leaves out the seeds that have failed at its last positions), columns
    `units`, `bound` and `limit_a`, `limit_b`, `censored_a`, `censored_b` as in
    :func:`memory_limits`, both limits walked on the positions in `means`, and `cut`: a table
    has positions past them (a limit censored at their last is then only a lower bound).
    """
    for name, table in (("a", a), ("b", b)):
        if varies := variant_columns(table):
            raise ValueError(f"compare_runs: {name} varies {', '.join(varies)} besides arch, l, "
                             "c, p and seed: compare one setting at a time")
    cell = CONFIG + ["position"]
    shared = set(a["seed"]) & set(b["seed"])
    a, b = a[a["seed"].isin(shared)], b[b["seed"].isin(shared)]
    seeds = len(shared)
    full = []
    for table in (a, b):
        m = mean_losses(table, CONFIG)
        full.append(m[m["seeds"] >= seeds].set_index(cell)["mean"])
    means = pd.concat({"mean_a": full[0], "mean_b": full[1]}, axis=1, join="inner")
    means = means.assign(memorized_a=means["mean_a"] < threshold,
                         memorized_b=means["mean_b"] < threshold).reset_index()
    have = means.groupby(CONFIG)["position"].nunique()
    counts = [t[cell].drop_duplicates().groupby(CONFIG)["position"].nunique()
              .reindex(have.index) for t in (a, b)]
    # comparable: one table's positions all in `means`, or `means` the first positions of
    # both (a walk leaves out the seeds that have failed at its last positions)
    shared_pos = means.groupby(CONFIG)["position"].apply(sorted)
    own = [t.groupby(CONFIG)["position"].unique().map(sorted).reindex(have.index)
           for t in (a, b)]
    prefix = pd.Series([all(o[key][:len(m)] == m for o in own)
                        for key, m in shared_pos.items()], index=have.index, dtype=bool)
    whole = have.index[(have == counts[0]) | (have == counts[1]) | prefix]
    cut = (have != counts[0]) | (have != counts[1])
    shared_cells = means.set_index(cell).index
    lims = [memory_limits(t[t.set_index(cell).index.isin(shared_cells)
                            & t.set_index(CONFIG).index.isin(whole)], threshold, CONFIG)
            .set_index(CONFIG) for t in (a, b)]
    limits = lims[0][["units", "bound"]].assign(
        limit_a=lims[0]["limit"], limit_b=lims[1]["limit"],
        censored_a=lims[0]["limit_censored"], censored_b=lims[1]["limit_censored"],
        cut=cut.reindex(lims[0].index).astype(bool))
    return means, limits.reset_index()


# Settings that only the plateau stop reads: with the stop off they mean nothing, so two runs
# that differ in them are still the same experiment.
_STOP_ONLY = {"plateau", "plateau_loss", "plateau_tol", "patience"}


def plateau_effect(with_stop: pd.DataFrame, without_stop: pd.DataFrame,
                   threshold: float = THRESHOLD, on: list[str] | None = None,
                   atol: float | None = None) -> tuple[pd.DataFrame, dict]:
    """What the plateau stop changes: the same grid run with the stop on and off.

    Rows are matched on `on` (default: every setting column of :class:`memgrid.config.Point`
    present in both tables, except point_id, grid, q_lo/q_hi and the plateau settings). A point
    is *solved* when its loss is below `threshold`.

    Returns ``(changed, summary)``. `changed` lists the matched points whose solved status
    differs (and, if `atol` is given, those whose losses differ by more than `atol`), with
    loss_with, loss_without, loss_diff = loss_without - loss_with, solved_*, stop_* and epochs_*.
    `summary` counts: matched, only_with, only_without, solved_with, solved_without, gained
    (solved only without the stop), lost (solved only with it), stopped_plateau (stop reason
    `plateau` with the stop on), stopped_plateau_then_solved (those solved without it),
    mean_loss_diff and max_abs_loss_diff.
    """
    if on is None:
        skip = _STOP_ONLY | {"point_id", "grid", "q_lo", "q_hi"}
        on = [k for k in POINT_FIELDS if k not in skip
              and k in with_stop.columns and k in without_stop.columns]
    for name, table in (("with_stop", with_stop), ("without_stop", without_stop)):
        if table.duplicated(on).any():
            raise ValueError(f"plateau_effect: {name} has repeated rows on {on}")
    result = [c for c in ("loss", "stop_reason", "epochs") if c in with_stop.columns
              and c in without_stop.columns]
    merged = with_stop[on + result].merge(without_stop[on + result], on=on, how="outer",
                                          suffixes=("_with", "_without"), indicator=True)
    both = merged[merged["_merge"] == "both"].drop(columns="_merge").reset_index(drop=True)
    both = both.rename(columns={"stop_reason_with": "stop_with",
                                "stop_reason_without": "stop_without"})
    both["loss_diff"] = both["loss_without"] - both["loss_with"]
    both["solved_with"] = both["loss_with"] < threshold
    both["solved_without"] = both["loss_without"] < threshold
    flip = both["solved_with"] != both["solved_without"]
    keep = flip if atol is None else flip | (both["loss_diff"].abs() > atol)
    shown = [c for c in POINT if c in on] + [c for c in variant_columns(both[on]) if c not in POINT]
    shown += [c for c in ("loss_with", "loss_without", "loss_diff", "solved_with",
                          "solved_without", "stop_with", "stop_without", "epochs_with",
                          "epochs_without") if c in both.columns]
    changed = both.loc[keep, shown].reset_index(drop=True)

    plateau = both["stop_with"] == "plateau" if "stop_with" in both else pd.Series(False, both.index)
    summary = {
        "matched": len(both),
        "only_with": int((merged["_merge"] == "left_only").sum()),
        "only_without": int((merged["_merge"] == "right_only").sum()),
        "solved_with": int(both["solved_with"].sum()),
        "solved_without": int(both["solved_without"].sum()),
        "gained": int((~both["solved_with"] & both["solved_without"]).sum()),
        "lost": int((both["solved_with"] & ~both["solved_without"]).sum()),
        "stopped_plateau": int(plateau.sum()),
        "stopped_plateau_then_solved": int((plateau & both["solved_without"]).sum()),
        "mean_loss_diff": float(both["loss_diff"].mean()) if len(both) else np.nan,
        "max_abs_loss_diff": float(both["loss_diff"].abs().max()) if len(both) else np.nan,
    }
    return changed, summary


def replay_stopping(points: pd.DataFrame, curves: pd.DataFrame, **stop: object) -> pd.DataFrame:
    """The points table as a run with other stop settings would have ended it.

    Training is deterministic and pack-invariant, so a point stopped earlier has exactly the
    curve of the longer run up to that epoch: replaying :func:`memgrid.stopping.stop_check`
    with `stop` (e.g. ``plateau=True, patience=1000``) on the recorded evaluations gives the
    stopped run's `loss`, `best_loss`, `epochs` and `stop_reason` without training again.
    Replay a ``--no-plateau`` run to measure what any plateau stop would change
    (:func:`plateau_effect` of the two tables). `r2` and `mc_stream` are kept only where the stop is unchanged.
    """
    import dataclasses
    import math

    from ..config import Point
    from ..stopping import stop_check

    bad = set(stop) - {"solved_loss", "plateau", "plateau_loss", "plateau_tol", "patience", "max_epochs"}
    if bad:
        raise ValueError(f"replay_stopping: not a stop setting: {', '.join(sorted(bad))}")
    if "max_epochs" in stop and "lr_schedule" in points and (points["lr_schedule"] == "cosine").any():
        raise ValueError("replay_stopping: a cosine run cut early is not the shorter run (its "
                         "rate decays over its own budget): train each budget (a max_epochs axis)")
    fields = [f.name for f in dataclasses.fields(Point)]
    by_point = {pid: g.sort_values("epoch") for pid, g in curves.groupby("point_id")}
    out = points.reset_index(drop=True)    # row labels below are positions, even for a
    for i, row in out.copy().iterrows():     # table concatenated with repeated labels
        g = by_point.get(row["point_id"])
        if g is None:
            continue
        settings = {k: row[k] for k in fields if k in row and not pd.isna(row[k])}
        p = dataclasses.replace(Point(**{k: (v.item() if hasattr(v, "item") else v) for k, v in settings.items()}), **stop)
        best, best_epoch, reason = math.inf, 0, None
        for e, lv, tv in zip(g["epoch"], g["eval_loss"], g["train_loss"]):
            reason, best, best_epoch = stop_check(p, int(e), float(lv), float(tv), best, best_epoch)
            if reason:
                break
        if reason is None:      # the recorded run ended earlier than the replayed rule would
            reason = row["stop_reason"]
        changed = int(e) != int(row["epochs"])
        out.loc[i, ["loss", "best_loss", "epochs", "stop_reason"]] = [float(lv), best, int(e), reason]
        if changed:     # measured on the network at the recorded end, not at the replayed one
            out.loc[i, [c for c in ("r2", "mc_stream") if c in out.columns]] = np.nan
        for k, v in stop.items():
            if k in out.columns:
                out.loc[i, k] = v
    return out.set_axis(points.index)
