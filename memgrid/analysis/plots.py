"""The paper's figures: loss curves (Figs. 4, 5), heatmaps (Figs. 6-9), limits against size.

Every function takes the tables, returns a :class:`matplotlib.figure.Figure` and touches no
global state: figures are built without pyplot (so nothing opens a window, and a report that
draws hundreds of figures keeps no references to them) and rendered by Agg. Filter the points
first when the table mixes settings (fixed and random length, an lr axis): figures pool every
row they are given of one (arch, l, c, p).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..config import ARCHS
from .capacity import memory_capacity
from .limits import memory_limits
from .tables import CONFIG, PLATEAU, THRESHOLD, mean_losses, units, units_text, variant_columns

ARCH_ORDER = list(ARCHS)
_PALETTE = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:brown", "tab:pink",
            "tab:olive", "tab:cyan", "tab:gray"]
ARCH_COLORS = {a: ("tab:purple" if a == "esn" else _PALETTE[i % len(_PALETTE)])
               for i, a in enumerate(ARCH_ORDER)}
"""One colour per arch in every figure (ESN's purple stays clear of the cells')."""
LAYER_MARKERS = "osD^vP*X"


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # Agg, whatever backend the process has selected
    return fig


def _archs(points: pd.DataFrame) -> list[str]:
    seen = list(points["arch"].unique())
    return [a for a in ARCH_ORDER if a in seen] + sorted(a for a in seen if a not in ARCH_ORDER)


def length_text(points: pd.DataFrame) -> str:
    """`random length q in 10..15`, `fixed length q = 10` or `mixed lengths`, for titles."""
    if "q_min" not in points or "q_max" not in points or points.empty:
        return "random length"
    ranges = points[["q_min", "q_max"]].drop_duplicates()
    if len(ranges) > 1:
        return "mixed lengths"
    lo, hi = int(ranges.iloc[0, 0]), int(ranges.iloc[0, 1])
    return f"fixed length q = {lo}" if lo == hi else f"random length q in {lo}..{hi}"


def plot_loss_curves(points: pd.DataFrame, curves: pd.DataFrame, arch: str, layers: int,
                     cells: int, threshold: float = THRESHOLD) -> Figure:
    """Evaluation loss against epoch for one configuration: one colour per position p, one thin
    line per seed (paper, Figures 4 and 5). One axes."""
    sel = points[(points["arch"] == arch) & (points["layers"] == layers)
                 & (points["cells"] == cells)]
    if sel.empty:
        raise ValueError(f"no points of {arch} l={layers} c={cells}")
    cur = curves.merge(sel[["point_id", "position", "seed"]], on="point_id")
    positions = sorted(sel["position"].unique())
    cmap = matplotlib.colormaps["tab10" if len(positions) <= 10 else "viridis"]
    color = {p: cmap(i if len(positions) <= 10 else i / max(1, len(positions) - 1))
             for i, p in enumerate(positions)}
    fig = _figure(7.5, 4.5)
    ax = fig.add_subplot()
    for (p, _seed), g in cur.sort_values("epoch").groupby(["position", "seed"]):
        ax.plot(g["epoch"], g["eval_loss"], color=color[p], lw=0.8, alpha=0.7)
    ax.axhline(PLATEAU, color="0.3", ls="--", lw=1)
    ax.axhline(threshold, color="0.3", ls=":", lw=1)
    top = cur["eval_loss"].quantile(0.99) if len(cur) else PLATEAU
    ax.set_ylim(0, float(np.clip(top * 1.05, 0.3, 0.6)))
    handles = [Line2D([], [], color=color[p], lw=2, label=f"p = {p}") for p in positions]
    handles += [Line2D([], [], color="0.3", ls="--", label="constant guess 0.25"),
                Line2D([], [], color="0.3", ls=":", label=f"memorized < {threshold}")]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    seeds = sel.groupby("position")["seed"].nunique()
    n_seeds = str(seeds.min()) if seeds.min() == seeds.max() else f"{seeds.min()}-{seeds.max()}"
    pooled = [k for k in variant_columns(sel) if k not in ("position", "seed")]
    title = (f"{arch.upper()}, l = {layers}, c = {cells}: evaluation loss per position p\n"
             f"{length_text(sel)}, {n_seeds} seeds per p (one line each)")
    if pooled:
        title += f", pooled over {', '.join(pooled)}"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean absolute error (evaluation set)")
    if cur.empty:
        ax.text(0.5, 0.5, "no curves recorded", transform=ax.transAxes, ha="center")
    return fig


def _ticks(ax, values: list[int], axis: str) -> None:
    """Label every `step`-th cell of an index axis with its value (<= ~10 labels)."""
    step = max(1, math.ceil(len(values) / 10))
    idx = list(range(0, len(values), step))
    getattr(ax, f"set_{axis}ticks")(idx, [str(values[i]) for i in idx])


def _shape(points: pd.DataFrame, column: str, axes: dict | None) -> list:
    """The values a heatmap lays out along `column`: the grid's axis when given (so a grid
    still running shows its whole shape, the points not yet run in grey), and any value the
    points have besides."""
    values = set(points[column].unique()) | set((axes or {}).get(column, ()))
    if column == "arch":
        return [a for a in ARCH_ORDER if a in values] + sorted(a for a in values
                                                                 if a not in ARCH_ORDER)
    return sorted(int(v) for v in values)


def plot_heatmaps(points: pd.DataFrame, stat: str = "mean", threshold: float = THRESHOLD,
                  axes: dict | None = None) -> Figure:
    """Mean or standard deviation over seeds of the loss, x = position p, y = cells c, one panel
    per layer count l (columns) and architecture (rows), colour scale fixed to 0..0.25 (the
    constant-guess plateau) as in the paper's Figures 6-9. A red staircase marks each row's
    memory limit (mean loss < threshold for every p' <= p lies left of it); grey cells were not
    run. `axes` (a grid's axes, as in its grid.json) lays out the whole grid, so that a grid
    still running shows what is missing; a limit whose next position was not run (yet) is
    dashed, a lower bound, and a row whose p = 1 was not run has none. Axes: one per panel plus
    the colour bar."""
    if stat not in ("mean", "std"):
        raise ValueError(f"stat must be 'mean' or 'std', got {stat!r}")
    if points.empty:
        raise ValueError("no points to draw")
    means = mean_losses(points, CONFIG)
    limits = memory_limits(points, threshold, CONFIG)
    archs, layers = _shape(points, "arch", axes), _shape(points, "layers", axes)
    positions, cells = _shape(points, "position", axes), _shape(points, "cells", axes)
    px, cy = {p: i for i, p in enumerate(positions)}, {c: i for i, c in enumerate(cells)}
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")
    fig = _figure(3.2 * len(layers) + 1.2, 2.9 * len(archs) + 0.8)
    panels = fig.subplots(len(archs), len(layers), squeeze=False, sharex=True, sharey=True)
    image, dashed = None, False
    for i, arch in enumerate(archs):
        for j, l in enumerate(layers):
            ax = panels[i, j]
            m = means[(means["arch"] == arch) & (means["layers"] == l)]
            grid = np.full((len(cells), len(positions)), np.nan)
            grid[m["cells"].map(cy).to_numpy(), m["position"].map(px).to_numpy()] = m[stat]
            image = ax.imshow(np.ma.masked_invalid(grid), origin="lower", aspect="auto",
                              cmap=cmap, vmin=0.0, vmax=PLATEAU, interpolation="nearest")
            if m.empty:
                ax.text(0.5, 0.5, "not run", transform=ax.transAxes, ha="center", va="center")
            lim = limits[(limits["arch"] == arch) & (limits["layers"] == l)]
            # one vertical segment per row right of its limit's column (limit 0: left of the
            # first p), joined to the next row's when the rows are neighbours
            # (a limit is a lower bound when its next position is in the layout but not run)
            rows = [(cy[int(r["cells"])], px[int(r["limit"])] + 0.5 if int(r["limit"]) in px
                     else -0.5, r["stop"] != "loss" and int(r["limit"]) < positions[-1])
                    for _, r in lim.sort_values("cells").iterrows()
                    if not (r["stop"] == "missing" and int(r["limit"]) == 0)]
            for k, (y, x, lower) in enumerate(rows):
                style = dict(color="red", lw=1.5, ls="--" if lower else "-")
                ax.plot([x, x], [y - 0.5, y + 0.5], **style)
                if k + 1 < len(rows) and rows[k + 1][0] == y + 1:
                    style["ls"] = "--" if lower or rows[k + 1][2] else "-"
                    ax.plot([x, rows[k + 1][1]], [y + 0.5, y + 0.5], **style)
                dashed |= lower
            ax.set_title(f"{arch.upper()}, l = {l}", fontsize=10)
            _ticks(ax, positions, "x")
            _ticks(ax, cells, "y")
            if i == len(archs) - 1:
                ax.set_xlabel("position p (p-th from last)")
            if j == 0:
                ax.set_ylabel("cells per layer c")
    what = "Mean" if stat == "mean" else "Standard deviation"
    fig.colorbar(image, ax=panels, extend="max",
                 label=f"{'mean' if stat == 'mean' else 'std of'} evaluation MAE over seeds")
    legend = [Line2D([], [], color="red", lw=1.5,
                     label=f"memory limit (mean loss < {threshold} up to here)")]
    if dashed:
        legend.append(Line2D([], [], color="red", lw=1.5, ls="--",
                             label="at least this far (the next position was not run)"))
    fig.legend(handles=legend, loc="outside lower center", fontsize=8, ncols=len(legend))
    # one panel is narrower than the title: break it rather than let the edges clip it
    sep = "\n" if len(layers) < 2 else " "
    fig.suptitle(f"{what} of the loss over seeds{sep}({length_text(points)})", fontsize=11)
    return fig


def plot_limits_vs_units(points: pd.DataFrame, threshold: float = THRESHOLD,
                         converged: dict[tuple, str] | None = None) -> Figure:
    """Memory limit (left) and memory capacity MC = sum_p r2_p, mean over seeds (right), against
    N = c * l; colour = architecture, marker = l. Lines: N (Jaeger's bound for an ESN) and the
    paper's observed N - (l - 1) for each l. A hollow marker is a censored limit (the grid ended
    or had a hole before the loss failed). `converged`: (arch, l, c) -> the limit's mark
    (:func:`memgrid.analysis.limit_marks`); a limit marked `not converged` gets a cross (more
    training moves it), and the title says how many are converged. Two axes."""
    if points.empty:
        raise ValueError("no points to draw")
    limits = memory_limits(points, threshold, CONFIG)
    mc = memory_capacity(points, CONFIG).groupby(CONFIG, as_index=False).agg(
        mc=("mc", "mean"), lo=("mc", "min"), hi=("mc", "max"), units=("units", "first"))
    archs, layers = _archs(points), sorted(int(v) for v in points["layers"].unique())
    shift = {a: 0.12 * (k - (len(archs) - 1) / 2) for k, a in enumerate(archs)}  # no overlap
    fig = _figure(11, 4.6)
    ax_lim, ax_mc = fig.subplots(1, 2, sharex=True)
    n_max = int(limits["units"].max())
    for ax in (ax_lim, ax_mc):
        ax.plot([0, n_max], [0, n_max], color="0.2", lw=1, label="N")
        for k, l in enumerate(x for x in layers if x > 1):
            n = np.array([l, max(l, n_max)])
            ax.plot(n, n - (l - 1), color="0.5", lw=1, ls=("--", "-.", ":")[k % 3],
                    label=f"N - (l - 1), l = {l}")
    for arch in archs:
        for mi, l in enumerate(layers):
            marker = LAYER_MARKERS[mi % len(LAYER_MARKERS)]
            lim = limits[(limits["arch"] == arch) & (limits["layers"] == l)]
            for censored, part in lim.groupby("limit_censored"):
                ax_lim.scatter(part["units"] + shift[arch], part["limit"], marker=marker, s=30,
                               edgecolors=ARCH_COLORS.get(arch, "k"), linewidths=1.2,
                               facecolors="none" if censored else ARCH_COLORS.get(arch, "k"))
            moving = lim.loc[np.array([(converged or {}).get((arch, l, c)) == "not converged"
                                       for c in lim["cells"]], dtype=bool)]
            ax_lim.scatter(moving["units"] + shift[arch], moving["limit"], marker="x", s=70,
                           color="0.15", linewidths=1.0, zorder=4)
            m = mc[(mc["arch"] == arch) & (mc["layers"] == l)]
            if m.empty:
                continue
            spread = [(m["mc"] - m["lo"]).clip(lower=0), (m["hi"] - m["mc"]).clip(lower=0)]
            ax_mc.errorbar(m["units"] + shift[arch], m["mc"], yerr=spread, fmt=marker, ms=5,
                           color=ARCH_COLORS.get(arch, "k"), elinewidth=0.8, capsize=2)
    legend = [Line2D([], [], color=ARCH_COLORS.get(a, "k"), lw=5, label=a.upper()) for a in archs]
    legend += [Line2D([], [], color="0.3", marker=LAYER_MARKERS[i % len(LAYER_MARKERS)], ls="",
                      label=f"l = {l}") for i, l in enumerate(layers)]
    legend += [Line2D([], [], color="0.3", marker="o", mfc="none", ls="",
                      label="censored limit (may be higher)")]
    if converged:
        legend += [Line2D([], [], color="0.15", marker="x", ls="",
                          label="not converged (more training moves it)")]
    ax_lim.legend(handles=legend + ax_lim.get_legend_handles_labels()[0], fontsize=7,
                  loc="upper left")
    title = f"memory limit (largest p with mean loss < {threshold} for all p' <= p)"
    if converged:
        marks = [converged.get(k, "unknown") for k in
                 limits[CONFIG].itertuples(index=False, name=None)]
        title += (f"\nconverged: {marks.count('converged')} of {len(marks)}, not converged: "
                  f"{marks.count('not converged')}")
    ax_lim.set_title(title, fontsize=9)
    ax_mc.set_title("memory capacity MC = sum over p of r2 (mean, min-max over seeds)", fontsize=9)
    ax_lim.set_ylabel("position p")
    ax_mc.set_ylabel("MC")
    for ax in (ax_lim, ax_mc):
        ax.set_xlabel(f"state size {units_text(archs)}")
        ax.set_xlim(0, n_max + 1)
        ax.set_ylim(bottom=0)
    fig.suptitle(f"Memory against network size ({length_text(points)})", fontsize=11)
    return fig


def plot_limits_by_budget(conv: pd.DataFrame) -> Figure:
    """Memory limit against training budget (training steps, log scale), one line per (l, c), one
    axes per arch, from :func:`memgrid.analysis.budget_convergence` (or with its `mark` column
    from :func:`memgrid.analysis.limit_marks`). Filled: a converged limit (doubling the budget
    moves neither it nor the loss at it); hollow: not converged or not known (the largest
    budget has nothing larger to compare with)."""
    if conv.empty:
        raise ValueError("no limits to draw")
    conv = conv.assign(mark=conv["mark"] if "mark" in conv else conv["status"])
    from .convergence import configuration_columns

    # settings that vary besides arch, l, c (an lr axis): one line style each, never one line
    others = [k for k in configuration_columns(conv) if k not in CONFIG]
    variants = sorted(conv.groupby(others, dropna=False).groups) if others else [()]
    variants = [v if isinstance(v, tuple) else (v,) for v in variants]
    styles = {v: ("-", "--", ":", "-.")[i % 4] for i, v in enumerate(variants)}
    archs = _archs(conv)
    layers = sorted(int(v) for v in conv["layers"].unique())
    cells = sorted(int(v) for v in conv["cells"].unique())
    cmap = matplotlib.colormaps["viridis"]
    color = {c: cmap(i / max(len(cells) - 1, 1)) for i, c in enumerate(cells)}
    fig = _figure(3.6 * len(archs) + 1.2, 4.0)
    axes = np.atleast_1d(fig.subplots(1, len(archs), sharey=True, squeeze=False)[0])
    for ax, arch in zip(axes, archs):
        sel = conv[conv["arch"] == arch]
        for key, g in sel.groupby(["layers", "cells"] + others, dropna=False):
            (l, c), v = key[:2], tuple(key[2:])
            g = g.sort_values("budget")
            marker = LAYER_MARKERS[layers.index(int(l)) % len(LAYER_MARKERS)]
            ax.plot(g["budget"], g["limit"], color=color[int(c)], lw=1, alpha=0.8, ls=styles[v])
            done = g["mark"] == "converged"
            ax.scatter(g["budget"][done], g["limit"][done], marker=marker, s=28,
                       color=color[int(c)], zorder=3)
            ax.scatter(g["budget"][~done], g["limit"][~done], marker=marker, s=28,
                       facecolors="white", edgecolors=color[int(c)], zorder=3)
        ax.set_xscale("log", base=2)
        budgets = sorted(int(b) for b in conv["budget"].unique())
        ax.set_xticks(budgets, [f"{b:,}" for b in budgets], rotation=30 if len(budgets) > 3 else 0,
                      fontsize=8)
        ax.minorticks_off()
        ax.set_title(arch.upper(), fontsize=10)
        ax.set_xlabel("training budget (steps)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("memory limit p")
    handles = [Line2D([], [], color=color[c], lw=2, label=f"c = {c}") for c in cells]
    handles += [Line2D([], [], color="0.3", marker=LAYER_MARKERS[i % len(LAYER_MARKERS)], ls="",
                       label=f"l = {l}") for i, l in enumerate(layers)]
    if others:
        handles += [Line2D([], [], color="0.3", ls=styles[v], label=", ".join(
            f"{k} {x:g}" if isinstance(x, float) else f"{k} {x}" for k, x in zip(others, v)))
            for v in variants]
    handles += [Line2D([], [], color="0.3", marker="o", ls="", label="converged"),
                Line2D([], [], color="0.3", marker="o", mfc="white", ls="",
                       label="not converged / unknown")]
    fig.legend(handles=handles, loc="outside right center", fontsize=7)
    fig.suptitle("Memory limit against training budget: a converged limit no longer moves",
                 fontsize=11)
    return fig


def save(fig: Figure, out_dir: str | Path, stem: str) -> Path:
    """Write `fig` as `<out_dir>/<stem>.png` (150 dpi) and `.pdf`; return the PNG's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{stem}.png"
    fig.savefig(png, dpi=150)
    fig.savefig(out / f"{stem}.pdf")
    return png

_MC_MARKERS = "osD^vP*X"
_MC_RESERVOIR = ["arch", "layers", "cells", "seed", "spectral_radius", "input_scaling",
              "connectivity", "leak_rate", "ridge"]
"""what makes an ESN row's reservoir (its mc_stream is the same at every position)"""


def plot_mc_vs_units(points: pd.DataFrame) -> Figure:
    """Memory capacity against N = c * l (one axes): Jaeger's stream MC (`mc_stream`, filled:
    mean over networks, bar: min-max) and the task-based MC (sum over positions of r2 per
    network configuration and seed, hollow: mean over seeds), colour = arch, marker = l. Lines:
    Jaeger's bound N and the paper's N - (l - 1) for each l > 1.

    Each trained point is its own network; an ESN's rows of one reservoir (every position of a
    seed) count once. Rows without `mc_stream` only contribute to the task-based MC.
    Build without pyplot; save with ``fig.savefig(path)`` (PNG by Agg).
    """
    if points.empty:
        raise ValueError("no points to draw")
    pts = points.assign(units=units(points))
    archs = _archs(pts)
    layers = sorted(int(v) for v in pts["layers"].unique())
    fig = Figure(figsize=(6.4, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    n_max = int(pts["units"].max())
    ax.plot([0, n_max], [0, n_max], color="0.2", lw=1, label="N (Jaeger)")
    for k, l in enumerate(x for x in layers if x > 1):
        ax.plot([l, max(l, n_max)], [1, max(l, n_max) - (l - 1)], color="0.5", lw=1,
                ls=("--", "-.", ":")[k % 3], label=f"N - (l - 1), l = {l}")
    shift = {a: 0.12 * (i - (len(archs) - 1) / 2) for i, a in enumerate(archs)}
    stream = pts[pts["mc_stream"].notna()] if "mc_stream" in pts else pts.iloc[:0]
    esn = stream[stream["arch"] == "esn"]
    cols = [c for c in _MC_RESERVOIR if c in esn.columns]
    stream = pd.concat([stream[stream["arch"] != "esn"], esn.drop_duplicates(cols)])
    task_keys = [c for c in ("arch", "layers", "cells", "seed", "q_min", "q_max", "lr",
                             "momentum", "optimizer", "lr_schedule", *_MC_RESERVOIR[4:])
                 if c in pts.columns]
    task = (pts.assign(r2=pts["r2"].astype(float).fillna(0.0).clip(0.0, 1.0))
            .groupby(task_keys, dropna=False)
            .agg(mc=("r2", "sum"), units=("units", "first")).reset_index()
            .groupby(["arch", "layers", "units"], as_index=False)["mc"].mean())
    for arch in archs:
        color = ARCH_COLORS.get(arch, "k")
        for mi, l in enumerate(layers):
            marker = _MC_MARKERS[mi % len(_MC_MARKERS)]
            s = stream[(stream["arch"] == arch) & (stream["layers"] == l)]
            if not s.empty:
                g = s.groupby("units")["mc_stream"].agg(["mean", "min", "max"]).reset_index()
                ax.errorbar(g["units"] + shift[arch], g["mean"], fmt=marker, ms=5, color=color,
                            yerr=[g["mean"] - g["min"], g["max"] - g["mean"]],
                            elinewidth=0.8, capsize=2)
            t = task[(task["arch"] == arch) & (task["layers"] == l)]
            ax.scatter(t["units"] + shift[arch], t["mc"], marker=marker, s=36, facecolors="none",
                       edgecolors=color, linewidths=1.1)
    # colour = arch as a bare line, so that no arch entry looks like a layer's marker
    handles = [Line2D([], [], color=ARCH_COLORS.get(a, "k"), lw=5, label=a.upper()) for a in archs]
    handles += [Line2D([], [], color="0.3", marker=_MC_MARKERS[i % len(_MC_MARKERS)], ls="",
                       label=f"l = {l}") for i, l in enumerate(layers)]
    handles += [Line2D([], [], color="0.3", marker="h", ls="",
                       label="filled: stream MC (Jaeger, k >= 1)"),
                Line2D([], [], color="0.3", marker="h", mfc="none", ls="",
                       label="hollow: task MC = sum_p r2_p")]
    ax.legend(handles=handles + ax.get_legend_handles_labels()[0], fontsize=7, loc="upper left")
    ax.set_xlabel(f"state size {units_text(archs)}")
    ax.set_ylabel("memory capacity MC")
    ax.set_xlim(0, n_max + 1)
    ax.set_ylim(bottom=0)
    ax.set_title("Memory capacity against size: stream (Jaeger) and task", fontsize=10)
    return fig
