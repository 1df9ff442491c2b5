"""The paper's figures: loss curves (Figs. 4, 5), heatmaps (Figs. 6-9), limits against size.

Every function takes the tables, returns a :class:`matplotlib.figure.Figure` and touches no
global state: figures are built without pyplot (so nothing opens a window, and a report that
draws hundreds of figures keeps no references to them) and rendered by Agg. Filter the points
first when the table mixes settings (fixed and random length, an lr axis): figures pool every
row they are given of one (arch, l, c, p).
"""

from __future__ import annotations

import math
import os
import re
import textwrap
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from ..config import ARCHS
from .capacity import memory_capacity
from .limits import limits_with_seeds, memory_limits
from .tables import (CONFIG, PLATEAU, THRESHOLD, arch_label, mean_losses, units, units_text,
                     variant_columns)

ARCH_ORDER = list(ARCHS)
_COLORS = {"rnn": "tab:blue", "lstm": "tab:orange", "gru": "tab:green", "mingru": "tab:red",
           "minlstm": "tab:brown", "mingru_block": "tab:pink", "minlstm_block": "rosybrown",
           "lru": "tab:cyan", "lru_ring": "tab:gray", "lru_real": "tab:olive",
           "lru_block": "navy", "mamba": "darkgoldenrod", "s6_bare": "black",
           "mamba_lin": "mediumvioletred", "mamba_complex": "sienna", "s6_bare_lin": "slategray",
           "esn": "tab:purple"}
_PALETTE = ["lightseagreen", "orchid", "peru", "darkred", "teal", "indigo", "olivedrab"]
ARCH_COLORS = {**_COLORS, **{a: _PALETTE[i % len(_PALETTE)]
                             for i, a in enumerate(a for a in ARCH_ORDER if a not in _COLORS)}}
"""One colour per arch in every figure, the same whatever cells join: the built-in cells' own,
any other's (a cell added to memgrid.cells) from a palette of the rest."""
_USER_COLORS = ["crimson", "dodgerblue", "darkorange", "limegreen", "darkviolet", "deeppink",
                "darkcyan", "maroon"]
"""Users' cells' colours: none of the built-in cells'."""


def arch_color(arch: str, archs=()) -> str:
    """The colour of `arch` in a figure of `archs`: a built-in cell's own (ARCH_COLORS), a
    user's cell (memgrid.user_cells) one of _USER_COLORS, by its place among the figure's users'
    cells in name order, so that two of them never share one."""
    if arch in ARCH_COLORS:
        return ARCH_COLORS[arch]
    users = sorted({a for a in archs if a not in ARCH_COLORS} | {arch})
    return _USER_COLORS[users.index(arch) % len(_USER_COLORS)]


LAYER_MARKERS = "osD^vP*X"
MarkerHalf = matplotlib.markers.MarkerStyle("o", fillstyle="left")
"""a half-filled circle: a limit no budget check covers, beside checked ones"""


def _seed_range(ax, x, lim, **style) -> None:
    """A bar at each x from the smallest to the largest of the seeds' own limits (columns
    seed_limit_min and seed_limit_max of `lim`). It need not hold the limit of the mean loss,
    which can pass every seed's own."""
    lo, hi = lim["seed_limit_min"].to_numpy(float), lim["seed_limit_max"].to_numpy(float)
    ax.errorbar(x, (lo + hi) / 2, yerr=(hi - lo) / 2, fmt="none", **style)


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # Agg, whatever backend the process has selected
    return fig


def _units_label(archs: list[str]) -> str:
    """`state size N = c * l (...)` in lines that fit under one panel, never broken inside a
    term such as `2 c * l`."""
    text = f"state size {units_text(archs)}".replace(" * ", "\u00a0*\u00a0")
    return textwrap.fill(re.sub(r"(\d+) c\u00a0", "\\1\u00a0c\u00a0", text), 60)


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
    # the top: where the curves lie after their fast start (its first 5 % of epochs), as many
    # evaluations as a curve keeps (every one, or a shipped grid's thinned ones)
    late = cur[cur["epoch"] >= 0.05 * cur["epoch"].max()] if len(cur) else cur
    top = late["eval_loss"].quantile(0.99) if len(late) else PLATEAU
    ax.set_ylim(0, float(np.clip(top * 1.05, 0.3, 0.6)))
    handles = [Line2D([], [], color="0.3", ls="--", label="constant guess 0.25"),
               Line2D([], [], color="0.3", ls=":", label=f"memorized < {threshold}")]
    if len(positions) <= 10:        # a legend entry per p; past 10, a colour bar of p
        handles = [Line2D([], [], color=color[p], lw=2, label=f"p = {p}")
                   for p in positions] + handles
    else:
        bar = matplotlib.cm.ScalarMappable(
            matplotlib.colors.Normalize(min(positions), max(positions)), cmap)
        fig.colorbar(bar, ax=ax, label="position p", pad=0.02)
    if len(positions) <= 10:
        ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    else:           # the two lines' legend under the axes, the colour bar beside them
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2,
                  fontsize=8, frameon=False)
    seeds = sel.groupby("position")["seed"].nunique()
    n_seeds = str(seeds.min()) if seeds.min() == seeds.max() else f"{seeds.min()}-{seeds.max()}"
    pooled = [k for k in variant_columns(sel) if k not in ("position", "seed")]
    title = (f"{arch_label(arch)}, l = {layers}, c = {cells}: evaluation loss per position p\n"
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


def _heatmap_layout(n_archs: int, n_layers: int) -> int:
    """How many archs share a row of heatmap panels (each arch a block of `n_layers` panels):
    about as many rows of panels as columns, so that seven archs of two depths make a 3 x 6
    grid of panels rather than a column of 14."""
    return max(1, min(n_archs, round(math.sqrt(2 * n_archs / n_layers))))


def plot_heatmaps(points: pd.DataFrame, stat: str = "mean", threshold: float = THRESHOLD,
                  axes: dict | None = None) -> Figure:
    """Mean or standard deviation over seeds of the loss, x = position p, y = cells c, one panel
    per architecture and layer count l (each arch a block of panels, one per l, several archs
    to a row). The mean's colour scale is fixed to 0..0.25 (the constant-guess plateau) as in
    the paper's Figures 6-9; the standard deviation has a scale of its own, 0 to its largest
    value. A red staircase marks each row's memory limit (mean loss < threshold for every
    p' <= p lies left of it); grey cells were not run; a cross marks a cell where a seed
    diverged (non-finite loss: no mean). `axes` (a grid's axes, as in its grid.json) lays out
    the whole grid, so that a grid still running shows what is missing; a limit whose next
    position was not run (yet) is dashed, a lower bound, and a row whose p = 1 was not run has
    none. Axes: one per panel (unused ones hidden) plus the colour bar."""
    if stat not in ("mean", "std"):
        raise ValueError(f"stat must be 'mean' or 'std', got {stat!r}")
    if points.empty:
        raise ValueError("no points to draw")
    means = mean_losses(points, CONFIG)
    limits = memory_limits(points, threshold, CONFIG)
    archs, layers = _shape(points, "arch", axes), _shape(points, "layers", axes)
    positions, cells = _shape(points, "position", axes), _shape(points, "cells", axes)
    px, cy = {p: i for i, p in enumerate(positions)}, {c: i for i, c in enumerate(cells)}
    if stat == "mean":
        cmap, vmax = matplotlib.colormaps["viridis"], PLATEAU
    else:
        finite = means["std"].to_numpy(dtype=float)
        finite = finite[np.isfinite(finite)]
        vmax = max(float(np.ceil(finite.max() * 100) / 100) if finite.size else 0.0, 0.01)
        cmap = matplotlib.colormaps["magma"]
    cmap = cmap.with_extremes(bad="0.85")
    per_row = _heatmap_layout(len(archs), len(layers))
    n_rows, n_cols = math.ceil(len(archs) / per_row), per_row * len(layers)
    if len(archs) == 1:
        width, height = 3.2 * len(layers) + 1.2, 2.9 + 0.8
    else:
        panel_h = 1.2 + 0.09 * len(cells)
        width, height = 2.5 * n_cols + 1.2, panel_h * n_rows + 1.2
    fig = _figure(width, height)
    panels = fig.subplots(n_rows, n_cols, squeeze=False)
    image, dashed, missing, diverged, single = None, False, False, False, False
    for i, arch in enumerate(archs):
        for j, l in enumerate(layers):
            r, col = i // per_row, (i % per_row) * len(layers) + j
            ax = panels[r, col]
            m = means[(means["arch"] == arch) & (means["layers"] == l)]
            grid = np.full((len(cells), len(positions)), np.nan)
            grid[m["cells"].map(cy).to_numpy(), m["position"].map(px).to_numpy()] = m[stat]
            run = np.zeros_like(grid, dtype=bool)
            run[m["cells"].map(cy).to_numpy(), m["position"].map(px).to_numpy()] = True
            missing |= not run.all()
            single |= bool(np.isnan(grid[run]).sum() > (m["diverged"] > 0).sum())
            image = ax.imshow(np.ma.masked_invalid(grid), origin="lower", aspect="auto",
                              cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
            bad = m[m["diverged"] > 0]
            if len(bad):
                diverged = True
                ax.scatter(bad["position"].map(px), bad["cells"].map(cy), marker="x", s=30,
                           color="black", linewidths=1.2, zorder=3)
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
            ax.set_xlim(-0.5, len(positions) - 0.5)
            ax.set_ylim(-0.5, len(cells) - 0.5)
            ax.set_title(f"{arch_label(arch)}, l = {l}", fontsize=10)
            _ticks(ax, positions, "x")
            _ticks(ax, cells, "y")
            last_row = r == n_rows - 1 or (r + 1) * per_row + (i % per_row) >= len(archs)
            if last_row:
                ax.set_xlabel("position p (p-th from last)")
            else:
                ax.tick_params(labelbottom=False)
            if col == 0:
                ax.set_ylabel("cells per layer c")
            else:
                ax.tick_params(labelleft=False)
    for k in range(len(archs) * len(layers), n_rows * n_cols):
        panels[(k // len(layers)) // per_row, k % n_cols].set_axis_off()
    used = [ax for ax in panels.flat if ax.axison]
    what = "Mean" if stat == "mean" else "Standard deviation"
    fig.colorbar(image, ax=used, extend="max" if stat == "mean" else "neither",
                 label=("mean MAE over seeds\n(0.25: constant guess)" if stat == "mean"
                        else "std of the MAE over seeds"))
    legend = [Line2D([], [], color="red", lw=1.5,
                     label=f"memory limit (mean loss < {threshold} up to here)")]
    if dashed:
        legend.append(Line2D([], [], color="red", lw=1.5, ls="--",
                             label="at least this far (the next position was not run)"))
    if missing or single:
        legend.append(Patch(facecolor="0.85", edgecolor="0.6", label="not run" + (
            ", or one seed (no std)" if single else "")))
    if diverged:
        legend.append(Line2D([], [], color="black", marker="x", ls="",
                             label="a seed diverged (non-finite loss): no mean"))
    fig.legend(handles=legend, loc="outside lower center", fontsize=8, ncols=len(legend))
    # one panel is narrower than the title: break it rather than let the edges clip it
    sep = "\n" if n_cols < 2 else " "
    fig.suptitle(f"{what} of the loss over seeds{sep}({length_text(points)})", fontsize=11)
    return fig


DEPTH_DASHES = ["-", (0, (6, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2)), (0, (3, 1, 1, 1, 1, 1)),
                (0, (10, 3)), (0, (2, 3)), (0, (8, 2, 2, 2, 2, 2))]
"""One line style per depth l (l = 1 solid), in every figure that draws the bound N - (l - 1)."""


def _depth_style(archs: list[str], layers: list[int]):
    """Colour and marker of a point of (arch, l), and the colour of depth l's bound line: with
    one arch, colour and marker both follow l (so that each depth reads apart, in print too);
    with several, colour follows the arch and the marker l."""
    def marker(l):
        return LAYER_MARKERS[layers.index(l) % len(LAYER_MARKERS)]
    if len(archs) == 1:
        cmap = matplotlib.colormaps["tab10"]
        colors = {l: cmap(i % 10) for i, l in enumerate(layers)}
        return (lambda a, l: colors[l]), marker, (lambda l: colors[l]), True
    return (lambda a, l: arch_color(a, archs)), marker, (lambda l: "0.4"), False


def _bound_lines(ax, layers: list[int], n_max: int, line_color) -> None:
    """N - (l - 1) against N for each depth l, one dash style each (l = 1: N itself)."""
    for k, l in enumerate(layers):
        n = np.array([l, max(l, n_max)])
        ax.plot(n, n - (l - 1), color=line_color(l), lw=1, ls=DEPTH_DASHES[k % len(DEPTH_DASHES)],
                zorder=1)


def _depth_legend(archs, layers, color, marker, line_color, by_depth) -> list:
    """Legend entries: one per depth (marker and its bound's dash), one per arch (colour)."""
    handles = [Line2D([], [], color=color(archs[0], l) if by_depth else "0.3", marker=marker(l),
                      ls=DEPTH_DASHES[k % len(DEPTH_DASHES)], lw=1,
                      label=f"l = {l}; line: N - (l - 1)" if l > 1 else "l = 1; line: N")
               for k, l in enumerate(layers)]
    if not by_depth or len(archs) > 1:
        handles = [Line2D([], [], color=arch_color(a, archs), lw=5, label=arch_label(a))
                   for a in archs] + handles
    return handles


def plot_limits_vs_units(points: pd.DataFrame, threshold: float = THRESHOLD,
                         converged: dict[tuple, str] | None = None) -> Figure:
    """Memory limit (left) and memory capacity MC = sum_p r2_p (right) against the state size
    N. Left: the limit of the mean over seeds (marker) with the range of the seeds' own limits
    (bar); a censored limit (the walk ended at the grid's largest p, or at a position not run)
    is a lower bound, drawn with an arrow up, and the grid's largest p is a dotted line. Right:
    MC, mean over seeds, bar min-max. Lines: the paper's bound N - (l - 1), one dash style per
    depth l. With one arch colour and marker follow l; with several colour is the arch.
    `converged`: (arch, l, c) -> the limit's mark (`converged`, `moves` or `not converged`,
    `unchecked`); a limit more training moves gets a cross, and the title counts them. Both y
    axes end a little above the data. Two axes."""
    if points.empty:
        raise ValueError("no points to draw")
    limits = limits_with_seeds(points, threshold, CONFIG)
    mc = memory_capacity(points, CONFIG).groupby(CONFIG, as_index=False).agg(
        mc=("mc", "mean"), lo=("mc", "min"), hi=("mc", "max"), units=("units", "first"))
    archs, layers = _archs(points), sorted(int(v) for v in points["layers"].unique())
    color, marker, line_color, by_depth = _depth_style(archs, layers)
    groups = [(a, l) for a in archs for l in layers]
    shift = {g: 0.5 * (k - (len(groups) - 1) / 2) / max(len(groups), 1)
             for k, g in enumerate(groups)}             # side by side within one N
    fig = _figure(12.5, 4.8)
    ax_lim, ax_mc = fig.subplots(1, 2, sharex=True)
    n_max = int(limits["units"].max())
    p_top = int(limits["p_max"].max())
    for ax in (ax_lim, ax_mc):
        _bound_lines(ax, layers, n_max, line_color)
    ax_lim.axhline(p_top, color="0.5", lw=0.8, ls=(0, (1, 3)), zorder=1)
    moved = 0
    for arch, l in groups:
        col, mk = color(arch, l), marker(l)
        lim = limits[(limits["arch"] == arch) & (limits["layers"] == l)]
        if lim.empty:
            continue
        x = lim["units"] + shift[(arch, l)]
        _seed_range(ax_lim, x, lim, ecolor=col, elinewidth=0.7, alpha=0.6, zorder=2)
        ax_lim.scatter(x, lim["limit"], marker=mk, s=26, color=col, zorder=3)
        cens = lim["limit_censored"].to_numpy(dtype=bool)
        for xi, yi in zip(x[cens], lim["limit"][cens]):
            ax_lim.annotate("", xy=(xi, yi + 1.3), xytext=(xi, yi), zorder=3,
                            arrowprops=dict(arrowstyle="-|>", color=col, lw=0.9,
                                            mutation_scale=7, shrinkA=0, shrinkB=0))
        moving = np.array([(converged or {}).get((arch, l, c)) in ("moves", "not converged")
                           for c in lim["cells"]], dtype=bool)
        moved += int(moving.sum())
        ax_lim.scatter(x[moving], lim["limit"][moving], marker="x", s=70, color="0.15",
                       linewidths=1.0, zorder=4)
        m = mc[(mc["arch"] == arch) & (mc["layers"] == l)]
        if not m.empty:
            spread = [(m["mc"] - m["lo"]).clip(lower=0), (m["hi"] - m["mc"]).clip(lower=0)]
            ax_mc.errorbar(m["units"] + shift[(arch, l)], m["mc"], yerr=spread, fmt=mk, ms=4.5,
                           color=col, elinewidth=0.7, capsize=1.5)
    legend = _depth_legend(archs, layers, color, marker, line_color, by_depth)
    legend += [Line2D([], [], color="0.3", marker=r"$\uparrow$", ls="", ms=9,
                      label="censored limit (a lower bound)"),
               Line2D([], [], color="0.5", lw=0.8, ls=(0, (1, 3)),
                      label=f"largest p in the grid ({p_top})"),
               Line2D([], [], color="0.3", marker="|", ls="", ms=9,
                      label="bar: seeds' own limits (left),\nMC min..max over seeds (right)")]
    if moved:
        legend += [Line2D([], [], color="0.15", marker="x", ls="",
                          label="a budget check moves it (not converged)")]
    fig.legend(handles=legend, fontsize=7.5, loc="outside right center")
    title = f"memory limit (largest p with mean loss < {threshold} for all p' <= p)"
    if converged and any(v != "unchecked" for v in converged.values()):
        marks = [converged.get(k, "unchecked") for k in
                 limits[CONFIG].itertuples(index=False, name=None)]
        title += (f"\nbudget check: {marks.count('converged')} of {len(marks)} converged, "
                  f"{moved} moved, the rest unchecked")
    ax_lim.set_title(title, fontsize=9)
    ax_mc.set_title("task memory capacity MC = sum over p of r2 (mean, min-max over seeds)",
                    fontsize=9)
    ax_lim.set_ylabel("memory limit (position p)")
    ax_mc.set_ylabel("MC")
    top_lim = max(p_top, float(limits["seed_limit_max"].max())) + 2
    top_mc = float(mc["hi"].max()) if len(mc) else 1.0
    for ax, top in ((ax_lim, top_lim), (ax_mc, top_mc * 1.1 + 0.5)):
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(_units_label(archs))
        ax.set_xlim(0, n_max + 1)
        ax.set_ylim(0, top)
        ax.grid(alpha=0.25)
    fig.suptitle(f"Memory against network size ({length_text(points)})", fontsize=11)
    return fig


FAMILY_ROWS = 6
"""plot_limit_per_cell draws more cells than this a row of panels per family (Cell.family)"""


def _families(archs: list[str]) -> list[tuple[str, list[str]]]:
    """`archs` grouped by their cell's family, the groups in the order of their first cell; a
    cell without a family (not in memgrid.cells, or none given) in the group "other cells"."""
    from ..cells import CELLS

    groups: dict[str, list[str]] = {}
    for a in archs:
        family = CELLS[a].family if a in CELLS and CELLS[a].family else "other cells"
        groups.setdefault(family, []).append(a)
    return list(groups.items())


def plot_limit_per_cell(points: pd.DataFrame, threshold: float = THRESHOLD,
                        converged: dict[tuple, str] | None = None) -> Figure:
    """The memory limit against N for cells whose N per unit differs (N from 2 to 100s): one
    panel per depth l (and, past FAMILY_ROWS cells, one row of panels per family of cells),
    N on a log axis, a line per cell through its sizes; each limit is the limit of the mean
    over seeds (marker) with the range of the seeds' own limits (bar); a censored one (the walk
    reached the configuration's largest p) is an open marker with an arrow up; the largest p
    trained, where the grid caps it for every N, a dotted line. The diagonal: the paper's bound
    N - (l - 1). `converged` as in :func:`plot_limits_vs_units`: a filled marker is a limit a
    budget check leaves in its seeds' range, a half-filled one unchecked, a cross one it
    moves."""
    if points.empty:
        raise ValueError("no points to draw")
    limits = limits_with_seeds(points, threshold, CONFIG)
    archs, layers = _archs(points), sorted(int(v) for v in points["layers"].unique())
    groups = _families(archs) if len(archs) > FAMILY_ROWS else [("", archs)]
    fig = _figure(5.2 * len(layers) + 2.4, 4.6 if len(groups) == 1 else 2.9 * len(groups) + 0.9)
    axes = fig.subplots(len(groups), len(layers), sharex="col", sharey=True, squeeze=False)
    n_lo, n_hi = int(limits["units"].min()), int(limits["units"].max())
    p_top = int(limits["p_max"].max())
    marks = converged or {}
    checked = any(v != "unchecked" for v in marks.values())
    for row, (family, members) in zip(axes, groups):
        for ax, l in zip(row, layers):
            _draw_limits(ax, limits, members, l, marks, checked, p_top, archs)
            ticks = [t for t in (2, 4, 8, 16, 32, 64, 128, 256, 512)
                     if n_lo / 1.2 <= t <= n_hi * 1.2]
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.set_xlim(max(l, n_lo) / 1.2, n_hi * 1.2)
            ax.set_ylim(0, p_top + 3)
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title((f"{family}, " if family else "") + f"l = {l}"
                         + ("" if l == 1 else f"; line: N - {l - 1}"), fontsize=9.5)
            ax.grid(alpha=0.25)
        if family:      # the row's cells, upper left: the lines rise from the lower left
            row[0].legend(handles=[_cell_handle(a, archs) for a in members], fontsize=7.5,
                          loc="upper left")
    for ax in axes[-1]:
        ax.set_xlabel("N, the numbers the state holds (an LSTM's: c; log scale)")
    ylabel = f"memory limit (largest p, mean loss < {threshold:g} for all p' <= p)"
    if len(groups) == 1:
        axes[0][0].set_ylabel(ylabel, fontsize=8.5)
    else:
        fig.supylabel(ylabel, fontsize=9.5)
    legend = [] if len(groups) > 1 else [_cell_handle(a, archs) for a in archs]
    legend += [Line2D([], [], color="0.4", lw=1, label="limit = N - (l - 1)"),
               Line2D([], [], color="0.5", lw=0.8, ls=(0, (1, 3)), label=f"largest p ({p_top})"),
               Line2D([], [], color="0.3", marker="|", ls="", ms=9, label="bar: seeds' own limits"),
               Line2D([], [], color="0.3", marker="o", ls="", mfc="white", ms=5,
                      label="censored: a lower bound")]
    if checked:
        legend += [Line2D([], [], color="0.3", marker="o", ls="", ms=5,
                          label="converged at 2x budget"),
                   Line2D([], [], color="0.3", marker=MarkerHalf, ls="", ms=6,
                          label="budget not checked"),
                   Line2D([], [], color="0.15", marker="x", ls="", ms=6,
                          label="moved at 2x budget")]
    fig.legend(handles=legend, fontsize=7.5, loc="outside right center")
    fig.suptitle(f"How far back each cell remembers ({length_text(points)})", fontsize=11)
    return fig


def _cell_handle(arch: str, archs: list[str]) -> Line2D:
    return Line2D([], [], color=arch_color(arch, archs), lw=1.5, marker="o", ms=4,
                  label=arch_label(arch))


def _draw_limits(ax, limits: pd.DataFrame, archs: list[str], l: int, marks: dict, checked: bool,
                 p_top: int, every: list[str]) -> None:
    """One panel of :func:`plot_limit_per_cell`: the cells `archs` (of the figure's `every`) at
    depth `l`."""
    n_lo, n_hi = int(limits["units"].min()), int(limits["units"].max())
    n = np.geomspace(max(l, n_lo) / 1.2, n_hi * 1.2, 50)
    ax.plot(n, n - (l - 1), color="0.4", lw=1, zorder=1)
    ax.axhline(p_top, color="0.5", lw=0.8, ls=(0, (1, 3)), zorder=1)
    panel = limits[limits["arch"].isin(archs) & (limits["layers"] == l)]
    # the cells whose N per unit is the same share N: side by side there, a tenth of an octave
    # apart (their markers would cover one another)
    per_unit = (panel["units"] / panel["cells"]).groupby(panel["arch"]).first()
    peers = {a: [b for b in archs if b in per_unit and per_unit[b] == per_unit[a]]
             for a in per_unit.index}
    for arch in archs:
        lim = panel[panel["arch"] == arch].sort_values("units")
        if lim.empty:
            continue
        col = arch_color(arch, every)
        dodge = 2 ** (0.1 * (peers[arch].index(arch) - (len(peers[arch]) - 1) / 2))
        x, y = lim["units"].to_numpy(float) * dodge, lim["limit"].to_numpy(float)
        ax.plot(x, y, color=col, lw=1.2, zorder=2, gid=arch)
        _seed_range(ax, x, lim, ecolor=col, elinewidth=0.8, capsize=2, alpha=0.7, zorder=2)
        cens = lim["limit_censored"].to_numpy(dtype=bool)
        state = np.array([marks.get((arch, l, c), "unchecked") for c in lim["cells"]])
        filled = ~cens & ((state == "converged") | (not checked))
        half = ~cens & (state == "unchecked") & checked
        ax.scatter(x[filled], y[filled], s=30, color=col, zorder=3)
        ax.scatter(x[half], y[half], s=30, color=col, zorder=3, marker=MarkerHalf)
        ax.scatter(x[cens], y[cens], s=30, facecolors="white", edgecolors=col, zorder=3)
        for xi, yi in zip(x[cens], y[cens]):
            ax.annotate("", xy=(xi, yi + 1.6), xytext=(xi, yi + 0.5), zorder=3,
                        arrowprops=dict(arrowstyle="-|>", color=col, lw=0.9,
                                        mutation_scale=7, shrinkA=0, shrinkB=0))
        moving = np.isin(state, ["moves", "not converged"])
        ax.scatter(x[moving], y[moving], marker="x", s=60, color="0.15", linewidths=1.0,
                   zorder=4)
    ax.set_xscale("log", base=2)


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
        ax.set_title(arch_label(arch), fontsize=10)
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
    """Write `fig` as `<out_dir>/<stem>.png` (150 dpi) and `.pdf`; return the PNG's path. Each
    file is written under a temporary name in the same folder and renamed, so that a kill
    leaves the old file or the new one, never a part of one."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{stem}.png"
    for path, kw in ((png, {"dpi": 150}), (out / f"{stem}.pdf", {})):
        tmp = out / f".{path.name}.tmp"
        try:
            fig.savefig(tmp, format=path.suffix[1:], **kw)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return png

_MC_RESERVOIR = ["arch", "layers", "cells", "seed", "spectral_radius", "input_scaling",
              "connectivity", "leak_rate", "ridge"]
"""what makes an ESN row's reservoir (its mc_stream is the same at every position)"""


def plot_mc_vs_units(points: pd.DataFrame) -> Figure:
    """Memory capacity against N = c * l (one axes): Jaeger's stream MC (`mc_stream`, filled:
    mean over networks, bar: min-max) and the task-based MC (sum over positions of r2 per
    network configuration and seed, hollow: mean over seeds); with one arch colour and marker
    follow l, with several colour is the arch. Lines: the paper's N - (l - 1), one dash style
    per depth (l = 1: Jaeger's bound N). The y axis ends a little above the data.

    Each trained point is its own network; an ESN's rows of one reservoir (every position of a
    seed) count once. Rows without `mc_stream` only contribute to the task-based MC.
    Build without pyplot; save with ``fig.savefig(path)`` (PNG by Agg).
    """
    if points.empty:
        raise ValueError("no points to draw")
    pts = points.assign(units=units(points))
    archs = _archs(pts)
    layers = sorted(int(v) for v in pts["layers"].unique())
    color, marker, line_color, by_depth = _depth_style(archs, layers)
    fig = _figure(8.6, 4.8)
    ax = fig.subplots()
    n_max = int(pts["units"].max())
    _bound_lines(ax, layers, n_max, line_color)
    groups = [(a, l) for a in archs for l in layers]
    shift = {g: 0.5 * (k - (len(groups) - 1) / 2) / max(len(groups), 1)
             for k, g in enumerate(groups)}
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
    top = 1.0
    for arch, l in groups:
        col, mk = color(arch, l), marker(l)
        s = stream[(stream["arch"] == arch) & (stream["layers"] == l)]
        if not s.empty:
            g = s.groupby("units")["mc_stream"].agg(["mean", "min", "max"]).reset_index()
            ax.errorbar(g["units"] + shift[(arch, l)], g["mean"], fmt=mk, ms=4.5, color=col,
                        yerr=[g["mean"] - g["min"], g["max"] - g["mean"]],
                        elinewidth=0.7, capsize=1.5)
            top = max(top, float(g["max"].max()))
        t = task[(task["arch"] == arch) & (task["layers"] == l)]
        ax.scatter(t["units"] + shift[(arch, l)], t["mc"], marker=mk, s=30, facecolors="none",
                   edgecolors=col, linewidths=1.0)
        if len(t):
            top = max(top, float(t["mc"].max()))
    handles = _depth_legend(archs, layers, color, marker, line_color, by_depth)
    handles += [Line2D([], [], color="0.3", marker="h", ls="",
                       label="filled: stream MC (Jaeger, k >= 1), bar min-max"),
                Line2D([], [], color="0.3", marker="h", mfc="none", ls="",
                       label="hollow: task MC = sum_p r2_p, mean over seeds")]
    fig.legend(handles=handles, fontsize=7.5, loc="outside right center")
    ax.set_xlabel(_units_label(archs))
    ax.set_ylabel("memory capacity MC")
    ax.set_xlim(0, n_max + 1)
    ax.set_ylim(0, top * 1.1 + 0.5)         # the data, not the bound lines, set the height
    ax.grid(alpha=0.25)
    ax.set_title("Memory capacity against size: stream (Jaeger) and task", fontsize=10)
    return fig
