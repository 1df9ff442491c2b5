"""Mean loss against learning rate, per network size: does the best rate depend on the size?

    python analysis/lr_by_size.py docs/data/depth_lr_check --out docs/figures
    python analysis/lr_by_size.py docs/data/gated_lr_check --out docs/figures --arch gru

For a grid with an `lr` axis: one panel per (position, c) (rows, columns), the learning rate
on x (log), the mean loss over seeds on y, one line per l; the dotted line is the threshold
below which p counts as memorized.
"""

from __future__ import annotations

import argparse

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from memgrid.analysis import load_points, mean_losses, save
from memgrid.analysis.tables import PLATEAU, THRESHOLD


def plot_lr_by_size(points, arch: str) -> Figure:
    pts = points[points["arch"] == arch]
    if pts.empty or pts["lr"].nunique() < 2:
        raise SystemExit(f"no {arch} points with two learning rates or more")
    means = mean_losses(pts, ["arch", "layers", "cells", "lr"])
    positions = sorted(means["position"].unique())
    cells = sorted(means["cells"].unique())
    layers = sorted(means["layers"].unique())
    colour = {l: matplotlib.colormaps["viridis"](i / max(1, len(layers) - 1))
              for i, l in enumerate(layers)}
    fig = Figure(figsize=(2.6 * len(cells) + 1.4, 2.1 * len(positions) + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(positions), len(cells), squeeze=False, sharex=True, sharey=True)
    for i, p in enumerate(positions):
        for j, c in enumerate(cells):
            ax = axes[i, j]
            for l in layers:
                m = means[(means["position"] == p) & (means["cells"] == c)
                          & (means["layers"] == l)].sort_values("lr")
                ax.plot(m["lr"], m["mean"], marker="o", ms=4, color=colour[l], label=f"l = {l}")
            ax.axhline(THRESHOLD, color="0.3", ls=":", lw=1)
            ax.set_xscale("log")
            ax.set_ylim(0, PLATEAU + 0.02)
            ax.set_title(f"p = {p}, c = {c}", fontsize=9)
            if i == len(positions) - 1:
                ax.set_xlabel("learning rate")
            if j == 0:
                ax.set_ylabel("mean loss over seeds")
    rates = sorted(means["lr"].unique())
    axes[-1, 0].set_xticks(rates, [f"{r:g}" for r in rates])
    axes[-1, 0].minorticks_off()
    axes[0, -1].legend(fontsize=7, loc="upper left")
    seeds = int(means["seeds"].max())
    fig.suptitle(f"{arch.upper()}: mean loss against the learning rate ({seeds} seeds; dotted: "
                 f"memorized below {THRESHOLD})", fontsize=10)
    return fig


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", metavar="RESULTS", help="results folder of a grid with an lr axis")
    ap.add_argument("--out", default="figures", help="folder for the PNG and PDF")
    ap.add_argument("--arch", default="rnn", help="which arch to draw (default: rnn)")
    args = ap.parse_args(argv)
    points = load_points(args.results)
    name = args.results.rstrip("/").rsplit("/", 1)[-1]
    print(save(plot_lr_by_size(points, args.arch), args.out, f"{name}_{args.arch}"))


if __name__ == "__main__":
    main()
