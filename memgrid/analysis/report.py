"""`write_report`: one Markdown page and its figures from a results folder.

The folder may be complete, still being written, cover part of a grid, or hold no points yet:
the report reads one snapshot of what is there (parts appear atomically, see
:mod:`memgrid.results`) and says what it covers. It prints nothing; the CLI prints the path.
"""

from __future__ import annotations

import math
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from ..results import read_grid_identity
from ..walk import left_out
from .capacity import capacity_testable, memory_capacity
from .claims import check_claims
from .convergence import (LOSS_TOL, budget_convergence, budget_rungs, check_fits,
                          configuration_columns, converged_budget, limit_marks)
from .limits import (STRICT_THRESHOLDS, against_state_size, bimodality, plateau_effect,
                     replay_stopping)
from .plots import (plot_heatmaps, plot_limit_per_cell, plot_limits_by_budget,
                    plot_limits_vs_units, plot_loss_curves, plot_mc_vs_units, save)
from .summary import (TASKS, archs_in_order, claim_sentences, count_sentence, has_variants, limits_table,
                      reach_sentences, settings_table, summary_grid)
from .tables import (CONFIG, THRESHOLD, arch_label, budget_steps, fixed_length, load_curves,
                     load_points, random_length, remember_labels, units, units_text, values_text,
                     variant_columns)

MAX_ID_CHECK = 100_000
"""Grids up to this many points are expanded to point ids to count exactly which are done."""
MAX_CURVE_POINTS = 20_000
"""Claim 2 reads curves only up to this many rnn/lstm points (else final epochs and losses)."""
MAX_ROWS = 40
"""Longest table written in full; longer ones are cut with a note."""


def _cell(x) -> str:
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (float, np.floating)):
        return "" if math.isnan(x) else f"{x:.3f}"
    return str(x).replace("|", "\\|")


def md_table(df: pd.DataFrame, max_rows: int = MAX_ROWS, full: str | None = None) -> str:
    """A pipe table (no tabulate dependency); floats with 3 decimals, NaN blank. Longer than
    `max_rows`, it shows the first rows and says where every row is (`full`, a CSV beside the
    report) or how many it leaves out."""
    if df.empty:
        return "(none)\n"
    lines = ["| " + " | ".join(map(str, df.columns)) + " |",
             "| " + " | ".join("---" for _ in df.columns) + " |"]
    for row in df.head(max_rows).itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    if len(df) > max_rows:
        lines.append(f"\n(the first {max_rows} of {len(df)} rows; all of them in [{full}]({full}))"
                     if full else f"\n({len(df) - max_rows} more rows not shown)")
    return "\n".join(lines) + "\n"


def _grid_section(identity: dict | None, points: pd.DataFrame, uri: str,
                  expanded: tuple | None) -> list[str]:
    """What the grid is and how much of it is done; `expanded`: :func:`_grid_points`."""
    if identity is None:
        return ["## Grid", "", "No `grid.json` in the results folder: the grid is unknown, so "
                "progress cannot be measured against it.", ""]
    axes, fixed = identity.get("axes", {}), identity.get("fixed", {})
    out = ["## Grid", "", f"Name: `{identity.get('name', '?')}`.", "",
           md_table(pd.DataFrame([(k, values_text(v), len(v)) for k, v in axes.items()],
                                 columns=["axis", "values", "count"])),
           "Fixed settings: " + (", ".join(f"`{k} = {v}`" for k, v in sorted(fixed.items()))
                                 or "none (defaults)") + ".", ""]
    expected = _expected(identity)
    done = len(points)
    if expanded is not None:
        grid, grid_points = expanded
        ids = {p.point_id for p in grid_points}
        in_grid = int(points["point_id"].isin(ids).sum()) if done else 0
        text = f"Points done: **{in_grid} of {expected}** ({100 * in_grid / max(expected, 1):.1f}%)."
        if grid.walk is not None:
            text += (f" The walk ({grid.walk.describe()}) leaves out "
                     f"{len(left_out(grid, uri, grid_points))} past their configurations' settled "
                     "limits.")
        if done > in_grid:
            text += f" {done - in_grid} more rows are not points of this grid (another grid?)."
    else:
        text = f"Points done: **{done} of {expected}** expected from the axes."
    return out + [text, ""]


def _expected(identity: dict) -> int:
    """The number of points the grid's axes span."""
    axes = identity.get("axes", {})
    return math.prod(len(v) for v in axes.values()) if axes else 0


def _remember_labels(identity: dict | None) -> None:
    """The labels of the users' cells the folder's grid.json records, for the report's names
    (memgrid.analysis.tables.remember_labels); nothing where it records none or will not read."""
    from ..grid_file import grid_from_identity
    try:
        remember_labels(grid_from_identity(identity or {}))
    except (KeyError, TypeError, ValueError):  # a grid.json from another memgrid version
        pass


def _grid_points(identity: dict | None, uri: str) -> tuple | None:
    """The grid and its points (at their tuned rates), or None if there is no grid.json, or the
    grid is too big or will not expand."""
    if identity is None or not 0 < _expected(identity) <= MAX_ID_CHECK:
        return None
    from ..grid_file import grid_from_identity
    from ..lr_tuning import grid_points
    try:
        grid = grid_from_identity(identity)
        points = grid_points(grid, uri, partial=True)
    except (KeyError, TypeError, ValueError):  # a grid.json from another memgrid version
        return None
    return None if points is None else (grid, points)


def _limits_section(kind: str, lim: pd.DataFrame, threshold: float) -> list[str]:
    """Every limit of one task (rows of :func:`limits_table`), in full."""
    keys = [c for c in lim.columns if c in CONFIG or c in variant_columns_of(lim)]
    shown = lim.assign(
        limit=lim["limit_text"],
        seeds_own=[f"{int(a)}..{int(b)} (median {m:g})" for a, b, m in
                   zip(lim["seed_limit_min"], lim["seed_limit_max"], lim["seed_limit_median"])],
        reaching=[f"{int(k)}/{int(n)}" for k, n in zip(lim["seeds_reaching"], lim["seeds"])])
    strict = [f"limit_{t:g}" for t in STRICT_THRESHOLDS if t < threshold]
    cols = keys + ["units", "bound", "limit", "seeds_own", "reaching"] + strict + [
        "stop", "loss_at_limit", "loss_next", "converged"]
    shown = shown[cols].rename(columns={"units": "N", "bound": "N - (l - 1)",
                                        "seeds_own": "seeds' own limits",
                                        "reaching": "seeds reaching it",
                                        "loss_at_limit": "loss@limit",
                                        "loss_next": "loss@limit+1"})
    over = lim[lim["limit"] > lim["bound"]]
    return [f"### {kind}", "",
            f"Limit: largest p with mean loss over seeds < {threshold} for every p' <= p; "
            "`>= p`: the walk ended without a measured failure (at the grid's largest p, or a "
            "position not run), so the limit is a lower bound. Seeds' own limits: the same walk "
            "on each seed's losses. `limit_t`: the limit at the stricter threshold t. `stop`: "
            "`loss` = p = limit + 1 failed; `missing` = not measured yet; `end` = the grid's "
            "largest p. `converged`: a budget check at twice the budget or more moves the limit "
            "by no more than the seeds' range (or, for a table with its own budgets, no larger "
            "budget moves it: Training budget); `moves`: by more; `unchecked`: no such check. "
            "The seeds passing each position are in [limits.csv](limits.csv).", "",
            md_table(shown, max_rows=10_000),
            f"Limits above the bound N - (l - 1): {len(over)}"
            + (" (" + ", ".join(f"{arch_label(r.arch)} l={r.layers} c={r.cells}: {r.limit} > "
                                f"{r.bound}" for r in over.itertuples()) + ")" if len(over)
               else "") + ".", ""]


def variant_columns_of(lim: pd.DataFrame) -> list[str]:
    """The setting columns of a limits table besides arch, l and c (an lr axis, say)."""
    from ..config import POINT_FIELDS

    return [c for c in lim.columns if c in POINT_FIELDS and c not in CONFIG]


def _with_marks(lim: pd.DataFrame, sub: pd.DataFrame, conv: pd.DataFrame | None) -> pd.DataFrame:
    """`lim` (memory_limits of `sub`) with a `converged` column from `conv` (budget_convergence
    with its marks), matched on the configuration and the budget in training steps."""
    if lim.empty:
        return lim.assign(converged=[])
    spe = lim["steps_per_epoch"] if "steps_per_epoch" in lim else sub["steps_per_epoch"].iloc[0]
    epochs = lim["max_epochs"] if "max_epochs" in lim else sub["max_epochs"].iloc[0]
    single = budget_steps(sub).nunique() == 1
    lim = lim.assign(budget=(spe * epochs) if not single else budget_steps(sub).iloc[0])
    if conv is None or conv.empty:
        return lim.assign(converged="unknown").drop(columns="budget")
    keys = [k for k in configuration_columns(conv) if k in lim.columns] + ["budget"]
    marks = conv[keys + ["mark"]].drop_duplicates(keys)
    out = lim.merge(marks, on=keys, how="left").rename(columns={"mark": "converged"})
    out["converged"] = out["converged"].fillna("unknown")
    return out.drop(columns="budget")


def _convergence(uri: str, points: pd.DataFrame, threshold: float
                 ) -> tuple[pd.DataFrame | None, str]:
    """budget_convergence (with marks) of the trained points of one task (random or fixed
    length), and how the budgets came about; (None, why not) where the folder cannot tell."""
    trained = points[points["arch"] != "esn"]
    if trained.empty:
        return None, ""
    steps = budget_steps(trained)
    if steps.nunique() > 1:
        table, how = trained, "the table's own budgets (a row per point and budget)"
    elif "lr_schedule" in trained and (trained["lr_schedule"] == "cosine").any():
        return None, (f"this run trained every point to one budget ({int(steps.iloc[0]):,} "
                      "steps) under a cosine schedule, whose rate decays over that budget, so no "
                      "prefix of it is a shorter run. Run the grid with a budget axis "
                      "(a `max_epochs` axis such as `[2500, 5000]`), to know")
    elif not trained["plateau"].astype(bool).any() and len(trained) <= MAX_CURVE_POINTS:
        curves = load_curves(uri, trained["point_id"].tolist())
        table = budget_rungs(trained, curves)
        how = ("this run without the plateau stop, replayed at shorter budgets on its curves "
               "(a run cut at an evaluation is the shorter run: training is deterministic)")
        if budget_steps(table).nunique() < 2:
            return None, "no shorter budget lands on an evaluation of this run"
    else:
        return None, (f"this run trained every point to one budget ({int(steps.iloc[0]):,} SGD "
                      "steps) with the plateau stop on, so nothing here says whether more "
                      "training would move its limits. Run the grid with a budget axis "
                      "(`tune_configs/budget_ladder.yaml`), or with `--no-plateau` (its curves "
                      "replay every shorter budget), to know")
    conv = budget_convergence(table, threshold)
    return conv.assign(mark=limit_marks(conv)), how


def _protocols(points: pd.DataFrame, tuned: bool = False) -> list[str]:
    """The protocols (config.PROTOCOLS, or `custom`) of the trained points' settings; of a grid
    that tunes its rate per configuration (`tuned`), on every setting but the rate."""
    from ..config import PROTOCOL_KEYS, protocol_name

    trained = points[points["arch"] != "esn"]
    keys = ["arch"] + [k for k in PROTOCOL_KEYS if k in trained]
    ignore = ("lr",) if tuned else ()
    return sorted({protocol_name(r, ignore)
                   for r in trained.drop_duplicates(keys).to_dict("records")})


def _tuning_line(identity: dict, points: pd.DataFrame) -> list[str]:
    """How a grid that tunes its rate chose it, and what it chose (one rate per configuration)."""
    from ..config import LRTuning

    text = "Learning rate " + LRTuning.from_dict(identity["tune_lr"]).describe()
    if len(points) and "lr" in points:
        chosen = points.groupby(CONFIG)["lr"].first().value_counts()
        text += "; chosen: " + ", ".join(f"{lr:g} by {n}" for lr, n in
                                         sorted(chosen.items(), key=lambda x: -x[0]))
        text += f" of {int(chosen.sum())} configurations (per (l, c): `python analysis/tuned_rates.py`)"
    return [text + ".", ""]


TUNED = "its lr tuned per configuration"
"""What a report adds to the protocol's name for a grid with `tune_lr`."""


def _budget_section(convs: dict[str, tuple[pd.DataFrame | None, str]], out: Path,
                    names: list[str], tuned: bool) -> list[str]:
    """The protocols `names` (:func:`_protocols`) and what the runs say of the budget."""
    from ..config import PROTOCOLS

    if not names:
        return []
    lines = ["## Training budget and convergence", "",
             "Protocol: " + ", ".join(f"`{n}`" for n in names)
             + (f", {TUNED} (Grid, above)" if tuned else "")
             + ". Named training settings: "
             + "; ".join(f"`{n}` = " + ", ".join(f"{k} {v}" for k, v in vals.items())
                         for n, vals in PROTOCOLS.items())
             + "; `custom` = neither.", ""]
    for kind, (conv, how) in convs.items():
        if len(convs) > 1:
            lines += [f"### {kind.capitalize()} length", ""]
        lines += _budget_table(conv, how, out, f"limits_by_budget_{kind}")
    return lines


def _budget_table(conv: pd.DataFrame | None, how: str, out: Path, stem: str) -> list[str]:
    if conv is None:
        return ["Convergence: unknown: " + how + ".", ""] if how else []
    shown = conv.assign(cell=[f"{int(l)}" + ("" if m == "converged" else " (moves)" if
                                              m == "not converged" else " (?)")
                              for l, m in zip(conv["limit"], conv["mark"])])
    keys = configuration_columns(conv)
    pivot = shown.pivot_table(index=keys, columns="budget", values="cell", aggfunc="first")
    pivot.columns = [f"{int(b):,} steps" for b in pivot.columns]
    first = converged_budget(conv).set_index(keys)["from_budget"]
    pivot["converged from"] = [f"{int(v):,} steps" if np.isfinite(v) else "not yet"
                               for v in first.reindex(pivot.index)]
    n_conf = len(pivot)
    n_conv = int(np.isfinite(first).sum())
    png = save(plot_limits_by_budget(conv), out, stem)
    return [f"Memory limit at each training budget (training steps = steps_per_epoch x max_epochs), "
            f"from {how}. A limit is *converged* when the next budget at least twice as large "
            f"gives the same limit and a mean loss at the limit within {LOSS_TOL}: "
            "`(moves)` = not converged: a larger budget moves it, or it was still moving at "
            "the largest budget run; `(?)` = nothing to compare with. "
            f"Configurations converged at some budget: **{n_conv} of {n_conf}**.", "",
            md_table(pivot.reset_index(), max_rows=10_000), "",
            f"![memory limit against training budget]({png.name})", ""]


def _capacity_section(points: pd.DataFrame) -> list[str]:
    mc = memory_capacity(points)
    if "r2" not in points or points["r2"].isna().all():
        return ["## Memory capacity", "", "No r2 measured: MC cannot be computed.", ""]
    over = mc[mc["margin"] > 0].sort_values("margin", ascending=False)
    out = ["## Memory capacity", "",
           "*Task MC*, as the paper computes it: for one (arch, l, c, seed), the sum over the "
           "positions run of r2_p (Jaeger 2001; paper eq. 3), clipped to [0, 1], NaN as 0, where "
           "r2_p comes from the network trained for position p. It sums over *different* "
           "networks, one per p, so it is not one network's capacity and Jaeger's bound MC <= N "
           "does not bind it (one network's MC is the stream MC below). The paper's observed "
           "bound is MC <= N - (l - 1). `noise`: the sum of r2 expected by chance on the "
           "evaluation sets; a margin below it is within measurement noise.", "",
           f"(arch, l, c, seed): {len(mc)}; able to exceed N - (l - 1) (more positions than "
           f"that): {int(capacity_testable(mc).sum())}; **task MC above N - (l - 1): "
           f"{len(over)}**.", ""]
    if len(over):
        out += [md_table(over, full="capacity.csv"), ""]
    summary = mc.groupby(CONFIG + variant_columns(points), dropna=False).agg(
        mc_mean=("mc", "mean"), mc_max=("mc", "max"), bound=("bound", "first"),
        positions=("positions", "max"), seeds=("seed", "nunique")).reset_index()
    out += ["MC per configuration (over seeds):", "", md_table(summary, max_rows=10_000), ""]
    return out + _stream_section(points, summary)


def _stream_section(points: pd.DataFrame, task: pd.DataFrame) -> list[str]:
    """Jaeger's MC of each network on a stationary stream, beside the task-based MC."""
    if "mc_stream" not in points or points["mc_stream"].isna().all():
        return []
    keys = CONFIG + variant_columns(points)
    pts = points[points["mc_stream"].notna()]
    stream = pts.groupby(keys, dropna=False).agg(
        stream_mc_mean=("mc_stream", "mean"), stream_mc_max=("mc_stream", "max"),
        units=("units", "first"), networks=("mc_stream", "size")).reset_index()
    both = stream.merge(task[keys + ["mc_mean"]].rename(columns={"mc_mean": "task_mc_mean"}),
                        on=keys, how="left")
    over_n = pts[pts["mc_stream"] > pts["units"] + 1e-9]
    bound = pts["units"] - (pts["layers"] - 1)
    over_b = pts[pts["mc_stream"] > bound + 1e-9]
    return ["### Jaeger's memory capacity on a stream", "",
            "`mc_stream`: each trained network (or reservoir) driven by a long stationary stream, "
            "a ridge readout fitted per delay k >= 1, MC = sum_k r2_k (Jaeger 2001). It is one "
            "network's capacity, so Jaeger's bound MC <= N applies to it. The task-based MC above "
            "sums r2 over *different* networks, one trained per position, and is not bounded by "
            "N. The stream MC leaves out delay 0 (the current input), which the task's p = 1 is.",
            "", f"Networks measured: {len(pts)}; above N (Jaeger's bound): **{len(over_n)}**; "
            f"above N - (l - 1): {len(over_b)}.", "", md_table(both, max_rows=10_000), ""]


def _state_size_section(kinds: list, threshold: float) -> list[str]:
    """Per configuration: does its limit reach N, how much of N its networks keep (stream MC),
    and what a point cost. The question the grid asks of each cell, in one table."""
    archs = sorted({a for _, _, sub in kinds for a in sub["arch"].unique()})
    out = ["## Against the state size N", "",
           f"N: the numbers a network's state holds, {units_text(archs)}; they bound one "
           "network's stream MC (Jaeger). `reaches_n`: the limit is at least N (`?`: below N "
           "but censored, the next position not run). `stream_share`: mean stream MC / N. "
           "`epochs`, `seconds`: the mean point's training (seconds in its pack, shared with the "
           "pack's other points).",
           ""]
    for _, title, sub in kinds:
        table = against_state_size(sub, threshold)
        reached = (table["reaches_n"] == "yes").sum()
        out += [f"### {title}", "", f"Configurations whose limit reaches N: **{reached} of "
                f"{len(table)}** ({(table['reaches_n'] == '?').sum()} censored below N).", "",
                md_table(table, max_rows=10_000), ""]
    return out


def _plateau_section(uri: str, points: pd.DataFrame, threshold: float) -> list[str]:
    """A run without the plateau stop: replay memgrid's default stop on its curves and say
    what it would have changed (the stopped run is this run cut short: determinism)."""
    trained = points[points["arch"] != "esn"]
    if trained.empty or trained["plateau"].astype(bool).any() or len(trained) > MAX_CURVE_POINTS:
        return []
    from ..config import Point

    curves = load_curves(uri, trained["point_id"].tolist())
    stopped = replay_stopping(trained, curves, plateau=True, patience=Point.patience)
    _, s = plateau_effect(stopped, trained, threshold)
    saved = 1 - stopped["epochs"].sum() / max(trained["epochs"].sum(), 1)
    return ["## What the plateau stop would change", "",
            f"This run trained without the plateau stop. Replaying memgrid's default stop "
            f"(patience {Point.patience} epochs) on its curves: {s['stopped_plateau']} of "
            f"{s['matched']} points would stop at the plateau, saving {100 * saved:.0f}% of the "
            f"epochs; memorized (loss < {threshold}) with the stop {s['solved_with']}, without it "
            f"{s['solved_without']} (lost {s['lost']}, gained {s['gained']}); final loss without "
            f"the stop minus with it: mean {s['mean_loss_diff']:+.4f}, largest difference "
            f"{s['max_abs_loss_diff']:.4f}.", ""]


def _stop_section(points: pd.DataFrame) -> list[str]:
    counts = pd.crosstab(points["arch"], points["stop_reason"]).reset_index()
    counts.columns.name = None
    return ["## Stop reasons", "", md_table(counts, max_rows=10_000)]


def _figures(points: pd.DataFrame, uri: str, out: Path, threshold: float,
             limits: pd.DataFrame, axes: dict | None) -> list[tuple[str, str]]:
    """Draw what the data supports; (caption, png name) per figure. A table with several
    training budgets is drawn at its largest (the budget figure shows the others). Heatmaps
    lay out the grid's `axes`, so a grid still running shows its whole shape. Figures against
    the state size N only where the grid has more than one N. `limits`: :func:`limits_table`,
    whose `converged` marks the size figure draws."""
    made = []
    for kind, sub in (("random", random_length(points)), ("fixed", fixed_length(points))):
        if sub.empty:
            continue
        steps = budget_steps(sub)
        at = ""
        if steps.nunique() > 1:
            sub, at = sub[steps == steps.max()], f", at the largest budget ({steps.max():,} steps)"
        for stat in ("mean", "std"):
            png = save(plot_heatmaps(sub, stat, threshold, axes), out, f"heatmap_{stat}_{kind}")
            made.append((f"{stat} loss over seeds, {kind} length{at} (Figs. 6-9)", png.name))
        lim = limits[limits["task"] == kind]
        marks = {(r["arch"], r["layers"], r["cells"]): r["converged"]
                 for r in lim.to_dict("records")} if steps.nunique() == 1 else None
        if units(sub).nunique() >= 2:       # one size: nothing to draw against it
            png = save(plot_limits_vs_units(sub, threshold, marks), out,
                       f"limits_vs_units_{kind}")
            made.append((f"memory limit and MC against N, {kind} length{at}", png.name))
        if sub["arch"].nunique() >= 2 and units(sub).nunique() >= 2:
            png = save(plot_limit_per_cell(sub, threshold, marks), out,
                       f"limit_per_cell_{kind}")
            made.append((f"memory limit per cell against N (log scale), {kind} length{at}",
                         png.name))
        if units(sub).nunique() >= 2 and "mc_stream" in sub and sub["mc_stream"].notna().any():
            png = save(plot_mc_vs_units(sub), out, f"mc_vs_units_{kind}")
            made.append((f"memory capacity against N: stream (Jaeger) and task, {kind} length",
                         png.name))
        configs = sub[CONFIG].drop_duplicates().sort_values(CONFIG)
        # the paper's Figs. 4/5 configuration; a small grid gets every configuration drawn
        if len(configs) > 6:
            configs = configs[(configs["layers"] == 1) & (configs["cells"] == 5)]
        for arch, l, c in configs.itertuples(index=False):
            pts = sub[(sub["arch"] == arch) & (sub["layers"] == l) & (sub["cells"] == c)]
            curves = load_curves(uri, pts["point_id"].tolist())
            if curves.empty:
                continue
            stem = f"curves_{arch}_l{l}_c{c}_{kind}"
            png = save(plot_loss_curves(pts, curves, arch, int(l), int(c), threshold), out, stem)
            made.append((f"loss curves {arch} l={l} c={c}, {kind} length (Figs. 4, 5)", png.name))
    return made


def write_report(results_uri: str, out_dir: str | Path | None = None,
                 threshold: float = THRESHOLD, budget_check: str | list[str] | None = None
                 ) -> Path:
    """Analyse the results folder `results_uri` into `out_dir` (default `<results>/report` for a
    local folder): `report.md`, which opens with the result, the full tables beside it as CSV
    (:data:`CSVS`), and PNG and PDF figures. Returns the path of `report.md`.

    `budget_check`: one or more results folders of some of the run's configurations trained
    again at twice its budget or more (:func:`memgrid.analysis.convergence.budget_check`); a
    limit they leave within its seeds' spread is marked converged. A bad check folder raises
    ValueError (one line, naming it) before anything is written."""
    if out_dir is None:
        if "://" in str(results_uri):
            raise ValueError("out_dir is required when the results are not a local folder")
        out_dir = Path(results_uri) / "report"
    uri = str(results_uri)
    checks = [budget_check] if isinstance(budget_check, (str, Path)) else list(budget_check or [])
    identity = read_grid_identity(uri)
    _remember_labels(identity)
    points = load_points(uri)
    with warnings.catch_warnings():  # print nothing: empty slices, layout hints
        warnings.simplefilter("ignore")
        check = _load_checks([str(c) for c in checks], points)
        expanded = _grid_points(identity, uri)
        grid = None if expanded is None else pd.DataFrame(
            [(p.arch, p.layers, p.cells, p.position, p.q_min, p.q_max) for p in expanded[1]],
            columns=CONFIG + ["position", "q_min", "q_max"])
        limits = limits_table(points, threshold, check, grid)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        text = _report(uri, out, threshold, identity, expanded, points, limits,
                       [str(c) for c in checks])
    path = out / "report.md"
    write_atomic(path, text)
    return path


CSVS = {"limits.csv": "every configuration's limit with its seeds' own limits, the seeds "
                      "passing each position, censoring, the limits at stricter thresholds and "
                      "the budget check",
        "capacity.csv": "task MC per (arch, l, c, seed), with its bound and margin",
        "state_size.csv": "per configuration: limit against N, stream MC, cost",
        "claims.csv": "the paper's claims: verdict and evidence"}
"""The tables written beside report.md, never cut, and what each holds."""


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary name in the same folder and a rename, so that
    a reader (or a kill) never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _load_checks(uris: list[str], points: pd.DataFrame) -> pd.DataFrame | None:
    """The points of the budget-check folders, concatenated; ValueError naming a folder that
    holds no points or does not fit the run's `points` (:func:`check_fits`, on the
    random-length points: the only ones a check covers)."""
    parts, run = [], random_length(points)
    for uri in uris:
        try:
            table = load_points(uri)
        except (OSError, ValueError) as e:
            raise ValueError(f"{uri}: not a results folder for a budget check ({e})") from None
        if table.empty:
            raise ValueError(f"{uri}: no points (a budget check needs a finished run)")
        if run.empty:
            raise ValueError(f"{uri}: a budget check covers random-length points, and the run "
                             "has none")
        try:
            check_fits(run, random_length(table))
        except ValueError as e:
            raise ValueError(f"{uri}: {e}") from None
        parts.append(table)
    return pd.concat(parts, ignore_index=True) if parts else None


def _summary(limits: pd.DataFrame, claims: pd.DataFrame, threshold: float,
             protocol: str, tables: bool) -> list[str]:
    """The report's opening: per task the limits against N and the seeds, per arch a grid of
    limits, then one sentence per paper claim, and where the full tables are."""
    lines = ["## Summary", ""]
    for task, title, _ in TASKS:
        lim = limits[limits["task"] == task] if len(limits) else limits
        if lim.empty:
            continue
        lines += [f"### Memory-distance limits, {title}", "", count_sentence(lim, threshold), "",
                  *reach_sentences(lim), ""]
        if tables:
            for arch in archs_in_order(lim):
                lines += [f"{arch_label(arch)}, limit per (l, c):", "",
                          md_table(summary_grid(lim, arch), max_rows=10_000)]
            lines += ["A cell: the limit; `>= p`: a lower bound, censored by the grid's "
                      "largest p or by the next position, not measured yet; **bold**: above the "
                      "bound N - (l - 1) in the column's head; `(a..b, k/n)`: the seeds' own "
                      "limits range over a..b and k of the n seeds reach the limit (shown only "
                      "where they differ from it); ✓: a budget check at twice the budget or more "
                      "moves it by no more than that range; ✗: by more; no mark: unchecked.", ""]
        else:
            lines += ["The table varies settings inside a configuration: the limits per "
                      "setting are in [limits.csv](limits.csv).", ""]
    lines += [f"### Paper claims{f' (protocol {protocol})' if protocol else ''}", "",
              *claim_sentences(claims), "",
              "Full tables beside this report, every row: " + "; ".join(
                  f"[{name}]({name}) ({what})" for name, what in CSVS.items()) + ".", ""]
    return lines


def _settings_section(points: pd.DataFrame, threshold: float, checks: list[str]) -> list[str]:
    from .convergence import MIN_FACTOR

    return ["## Settings", "",
            "Every setting the points were trained with, defaults included (from the points "
            "table itself):", "", md_table(settings_table(points), max_rows=10_000),
            f"Analysis: threshold {threshold} (a position is memorized where the mean loss over "
            f"seeds is below it); stricter thresholds shown: "
            f"{', '.join(f'{t:g}' for t in STRICT_THRESHOLDS)}; budget check: "
            + (", ".join(f"`{c}`" for c in checks) + f" (at least {MIN_FACTOR}x the budget, "
               "paired on the seeds both hold)" if checks else "none") + ".", ""]


def _report(uri: str, out: Path, threshold: float, identity: dict | None,
            expanded: tuple | None, points: pd.DataFrame, limits: pd.DataFrame,
            checks: list[str]) -> str:
    name = identity.get("name", "?") if identity else Path(uri).name
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = [f"# memgrid report: {name}", "",
            f"Results: `{uri}`, read {when}. A folder still being written is read as it was "
            "then.", ""]
    grid = _grid_section(identity, points, uri, expanded)
    tuned = bool((identity or {}).get("tune_lr"))
    if tuned:
        grid += _tuning_line(identity, points)
    if points.empty:
        return "\n".join(head + grid + ["No points yet: nothing to analyse.", ""])

    kinds = [(name, title, sub) for name, title, sub in (
        ("random", "Random length (Definition 1)", random_length(points)),
        ("fixed", "Fixed length (Definition 2)", fixed_length(points))) if len(sub)]
    convs = {name: _convergence(uri, sub, threshold) for name, _, sub in kinds}
    limits = _ladder_marks(limits, kinds, convs)
    names = _protocols(points, tuned)
    rnn_lstm = points[points["arch"].isin(["rnn", "lstm"])]
    curves = None
    if 0 < len(rnn_lstm) <= MAX_CURVE_POINTS:
        curves = load_curves(uri, rnn_lstm["point_id"].tolist())
    claims = check_claims(points, curves, threshold)
    protocol = ", ".join(names) + (f", {TUNED}" if tuned else "")
    _write_tables(out, points, limits, claims, kinds, threshold)

    lines = head + _summary(limits, claims, threshold, protocol, not has_variants(points))
    lines += _settings_section(points, threshold, checks) + grid
    pooled = [v for v in variant_columns(points) if v not in ("q_min", "q_max")]
    if pooled:
        lines += [f"This table varies {', '.join(pooled)} besides arch, l, c, p and seed: tables "
                  "keep them apart; figures pool them.", ""]
    lines += _stop_section(points)
    lines += ["## Memory-distance limits", ""]
    for name, title, _ in kinds:
        lines += _limits_section(title, limits[limits["task"] == name], threshold)
    lines += _budget_section(convs, out, names, tuned)
    lines += _capacity_section(points)
    lines += _state_size_section(kinds, threshold)

    lines += ["## Bimodality", ""]
    for kind, sub in (("random length", random_length(points)),
                      ("fixed length", fixed_length(points))):
        if len(sub):
            b = bimodality(sub, threshold, 0.2)
            lines.append(f"- {kind}: {b['points_between']} of {b['points']} points "
                         f"({100 * b['share_points']:.1f}%) and {b['means_between']} of "
                         f"{b['means']} (arch, l, c, p) means ({100 * b['share_means']:.1f}%) "
                         f"have loss in [{threshold}, 0.2].")
    lines.append("")

    lines += _plateau_section(uri, points, threshold)

    lines += ["## Figures", ""]
    for caption, png in _figures(points, uri, out, threshold, limits,
                                  (identity or {}).get("axes")):
        pdf = png[:-4] + ".pdf"
        lines += [f"![{caption}]({png})", "", f"{caption} ([PDF]({pdf}))", ""]
    return "\n".join(lines)


def _ladder_marks(limits: pd.DataFrame, kinds: list, convs: dict) -> pd.DataFrame:
    """`limits` with `converged` filled from the table's own budgets (a budget axis, or a run
    without the plateau stop replayed at shorter ones) where no budget check marked it."""
    if limits.empty:
        return limits
    parts = []
    for name, _, sub in kinds:
        lim = limits[limits["task"] == name]
        conv = convs[name][0]
        if conv is not None and not conv.empty:
            marks = _with_marks(lim.drop(columns="converged"), sub, conv)["converged"]
            marks = marks.map({"converged": "converged", "not converged": "moves"}).fillna(
                "unchecked").to_numpy()
            lim = lim.assign(converged=np.where(lim["converged"] == "unchecked", marks,
                                                lim["converged"]))
        parts.append(lim)
    return pd.concat(parts, ignore_index=True)


def _write_tables(out: Path, points: pd.DataFrame, limits: pd.DataFrame,
                  claims: pd.DataFrame, kinds: list, threshold: float) -> None:
    """The CSVs of :data:`CSVS`, every row, each written atomically."""
    capacity = memory_capacity(points)
    state = pd.concat([against_state_size(sub, threshold).assign(task=name)
                       for name, _, sub in kinds], ignore_index=True)
    for name, table in (("limits.csv", limits), ("capacity.csv", capacity),
                        ("state_size.csv", state[["task"] + [c for c in state if c != "task"]]),
                        ("claims.csv", claims)):
        write_atomic(out / name, table.to_csv(index=False))
