"""`write_report`: one Markdown page and its figures from a results folder.

The folder may be complete, still being written, cover part of a grid, or hold no points yet:
the report reads one snapshot of what is there (parts appear atomically, see
:mod:`memgrid.store`) and says what it covers. It prints nothing; the CLI prints the path.
"""

from __future__ import annotations

import math
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from ..store import read_grid_identity
from .capacity import capacity_testable, memory_capacity
from .claims import check_claims
from .convergence import (LOSS_TOL, budget_convergence, budget_rungs, configuration_columns,
                          converged_budget, limit_marks)
from .limits import against_state_size, bimodality, memory_limits, plateau_effect, replay_stopping
from .plots import (plot_heatmaps, plot_limits_by_budget, plot_limits_vs_units, plot_loss_curves,
                    plot_mc_vs_units, save)
from .tables import (CONFIG, THRESHOLD, budget_steps, fixed_length, load_curves, load_points,
                     random_length, units_text, variant_columns)

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


def md_table(df: pd.DataFrame, max_rows: int = MAX_ROWS) -> str:
    """A pipe table (no tabulate dependency); floats with 3 decimals, NaN blank."""
    if df.empty:
        return "(none)\n"
    lines = ["| " + " | ".join(map(str, df.columns)) + " |",
             "| " + " | ".join("---" for _ in df.columns) + " |"]
    for row in df.head(max_rows).itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    if len(df) > max_rows:
        lines.append(f"\n({len(df) - max_rows} more rows not shown)")
    return "\n".join(lines) + "\n"


def values_text(vals: list) -> str:
    """[1, 2, 3, 7] -> '1..3, 7'; other lists as written."""
    if vals and all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        runs: list[list[int]] = []
        for v in sorted(vals):
            if runs and v == runs[-1][1] + 1:
                runs[-1][1] = v
            else:
                runs.append([v, v])
        return ", ".join(f"{a}..{b}" if b > a else str(a) for a, b in runs)
    return ", ".join(map(str, vals))


def _grid_section(identity: dict | None, points: pd.DataFrame, uri: str) -> list[str]:
    if identity is None:
        return ["## Grid", "", "No `grid.json` in the results folder: the grid is unknown, so "
                "progress cannot be measured against it.", ""]
    axes, fixed = identity.get("axes", {}), identity.get("fixed", {})
    out = ["## Grid", "", f"Name: `{identity.get('name', '?')}`.", "",
           md_table(pd.DataFrame([(k, values_text(v), len(v)) for k, v in axes.items()],
                                 columns=["axis", "values", "count"])),
           "Fixed settings: " + (", ".join(f"`{k} = {v}`" for k, v in sorted(fixed.items()))
                                 or "none (defaults)") + ".", ""]
    expected = math.prod(len(v) for v in axes.values()) if axes else 0
    done = len(points)
    ids = _grid_ids(identity, expected, uri)
    if ids is not None:
        in_grid = int(points["point_id"].isin(ids).sum()) if done else 0
        text = f"Points done: **{in_grid} of {expected}** ({100 * in_grid / max(expected, 1):.1f}%)."
        if done > in_grid:
            text += f" {done - in_grid} more rows are not points of this grid (another grid?)."
    else:
        text = f"Points done: **{done} of {expected}** expected from the axes."
    return out + [text, ""]


def _grid_ids(identity: dict, expected: int, uri: str) -> set[str] | None:
    """point_ids of the grid's points, or None if the grid is too big or will not expand."""
    if not 0 < expected <= MAX_ID_CHECK:
        return None
    from ..config import grid_from_identity
    from ..tune import grid_points
    try:
        points = grid_points(grid_from_identity(identity), uri)
    except (KeyError, TypeError, ValueError):  # a grid.json from another memgrid version
        return None
    return None if points is None else {p.point_id for p in points}


def _limits_section(kind: str, sub: pd.DataFrame, threshold: float,
                    conv: pd.DataFrame | None) -> list[str]:
    lim = _with_marks(memory_limits(sub, threshold), sub, conv)
    shown = [c for c in lim.columns if c not in ("complete",)]
    lim = lim[shown].rename(columns={"limit_censored": "censored", "loss_at_limit": "loss@limit",
                                     "loss_next": "loss@limit+1"})
    over = lim[lim["limit"] > lim["bound"]]
    out = [f"### {kind}", "",
           f"Limit: largest p with mean loss over seeds < {threshold} for every p' <= p. "
           "`stop`: `loss` = p = limit + 1 failed; `missing` = p = limit + 1 not in the data; "
           "`end` = limit is the largest p run (censored: the true limit may be higher). "
           "`converged`: doubling the training budget moves neither the limit nor the loss at "
           "it (see Training budget); `unknown`: this run cannot tell.", "",
           md_table(lim),
           f"Limits above the bound N - (l - 1): {len(over)}"
           + (" (" + ", ".join(f"{r.arch} l={r.layers} c={r.cells}: {r.limit} > {r.bound}"
                               for r in over.head(10).itertuples()) + ")" if len(over) else "")
           + ".", ""]
    return out


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
    from ..tuning import LRTuning

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
            md_table(pivot.reset_index(), max_rows=200), "",
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
        out += [md_table(over), ""]
    summary = mc.groupby(CONFIG + variant_columns(points), dropna=False).agg(
        mc_mean=("mc", "mean"), mc_max=("mc", "max"), bound=("bound", "first"),
        positions=("positions", "max"), seeds=("seed", "nunique")).reset_index()
    out += ["MC per configuration (over seeds):", "", md_table(summary), ""]
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
            f"above N - (l - 1): {len(over_b)}.", "", md_table(both), ""]


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
                md_table(table), ""]
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
    return ["## Stop reasons", "", md_table(counts)]


def _figures(points: pd.DataFrame, uri: str, out: Path, threshold: float,
             convs: dict[str, tuple[pd.DataFrame | None, str]],
             axes: dict | None) -> list[tuple[str, str]]:
    """Draw what the data supports; (caption, png name) per figure. A table with several
    training budgets is drawn at its largest (the budget figure shows the others). Heatmaps
    lay out the grid's `axes`, so a grid still running shows its whole shape."""
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
        conv = convs.get(kind, (None, ""))[0]
        marks = None
        if conv is not None:
            last = conv[conv["budget"] == steps.max()]
            marks = {(r["arch"], r["layers"], r["cells"]): r["mark"]
                     for r in last.to_dict("records")}
        png = save(plot_limits_vs_units(sub, threshold, marks), out, f"limits_vs_units_{kind}")
        made.append((f"memory limit and MC against N, {kind} length{at}", png.name))
        if "mc_stream" in sub and sub["mc_stream"].notna().any():
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
                 threshold: float = THRESHOLD) -> Path:
    """Analyse the results folder `results_uri` into `out_dir` (default `<results>/report` for a
    local folder): `report.md` plus PNG and PDF figures. Returns the path of `report.md`."""
    if out_dir is None:
        if "://" in str(results_uri):
            raise ValueError("out_dir is required when the results are not a local folder")
        out_dir = Path(results_uri) / "report"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # print nothing: empty slices, layout hints
        warnings.simplefilter("ignore")
        text = _report(str(results_uri), out, threshold)
    path = out / "report.md"
    path.write_text(text)
    return path


def _report(uri: str, out: Path, threshold: float) -> str:
    identity = read_grid_identity(uri)
    points = load_points(uri)
    name = identity.get("name", "?") if identity else Path(uri).name
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# memgrid report: {name}", "",
             f"Results: `{uri}`, read {when}. A folder still being written is read as it was "
             "then.", ""]
    lines += _grid_section(identity, points, uri)
    tuned = bool((identity or {}).get("tune_lr"))
    if tuned:
        lines += _tuning_line(identity, points)
    if points.empty:
        return "\n".join(lines + ["No points yet: nothing to analyse.", ""])

    pooled = [v for v in variant_columns(points) if v not in ("q_min", "q_max")]
    if pooled:
        lines += [f"This table varies {', '.join(pooled)} besides arch, l, c, p and seed: tables "
                  "keep them apart; figures pool them.", ""]
    lines += _stop_section(points)
    kinds = [(name, title, sub) for name, title, sub in (
        ("random", "Random length (Definition 1)", random_length(points)),
        ("fixed", "Fixed length (Definition 2)", fixed_length(points))) if len(sub)]
    convs = {name: _convergence(uri, sub, threshold) for name, _, sub in kinds}
    lines += ["## Memory-distance limits", ""]
    for name, title, sub in kinds:
        lines += _limits_section(title, sub, threshold, convs[name][0])
    names = _protocols(points, tuned)
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

    rnn_lstm = points[points["arch"].isin(["rnn", "lstm"])]
    curves = None
    if 0 < len(rnn_lstm) <= MAX_CURVE_POINTS:
        curves = load_curves(uri, rnn_lstm["point_id"].tolist())
    protocol = ", ".join(names) + (f", {TUNED}" if tuned else "")
    lines += ["## Paper claims" + (f" (protocol {protocol})" if names else ""), "",
              md_table(check_claims(points, curves, threshold))]

    lines += ["## Figures", ""]
    for caption, png in _figures(points, uri, out, threshold, convs,
                                  (identity or {}).get("axes")):
        pdf = png[:-4] + ".pdf"
        lines += [f"![{caption}]({png})", "", f"{caption} ([PDF]({pdf}))", ""]
    return "\n".join(lines)
