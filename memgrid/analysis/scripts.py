"""The bodies of the per-figure scripts in `analysis/`: parse RESULTS and --out, load the
points, draw one figure through the library, print where it went."""

from __future__ import annotations

import argparse

from matplotlib.figure import Figure

from ..results import read_grid_identity
from .plots import plot_heatmaps, plot_loss_curves, save
from .tables import fixed_length, load_curves, load_points, random_length


def parser(doc: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    ap.add_argument("results", metavar="RESULTS", help="results folder (path or pyarrow URI)")
    ap.add_argument("--out", default="figures", help="folder for the PNG and PDF (default: figures)")
    return ap


def curves_figure(doc: str, arch: str, stem: str, argv=None) -> None:
    """Loss curves of one (arch, l, c), one colour per p (paper Figures 4, 5)."""
    ap = parser(doc)
    ap.add_argument("--layers", type=int, default=1, help="l (paper: 1)")
    ap.add_argument("--cells", type=int, default=5, help="c (paper: 5)")
    args = ap.parse_args(argv)
    points = random_length(load_points(args.results))
    sel = points[(points["arch"] == arch) & (points["layers"] == args.layers)
                 & (points["cells"] == args.cells)]
    if sel.empty:
        raise SystemExit(f"{args.results}: no random-length {arch} points with "
                         f"l={args.layers} c={args.cells}")
    curves = load_curves(args.results, sel["point_id"].tolist())
    print(save(plot_loss_curves(sel, curves, arch, args.layers, args.cells), args.out, stem))


def heatmap(results: str, archs: tuple[str, ...], stat: str, fixed: bool,
            shape: dict | None = None) -> Figure:
    """Mean or standard deviation of the loss over (c, p) of the folder's fixed- or
    random-length points of `archs`, one panel per l (Figures 6-9), laid out as the folder's
    grid (a grid still running shows what is missing), or as `shape` (axes as in grid.json):
    then only the points inside it are drawn."""
    points = load_points(results)
    points = fixed_length(points) if fixed else random_length(points)
    points = points[points["arch"].isin(archs)]
    axes = dict(shape or (read_grid_identity(results) or {}).get("axes") or {})
    if shape:
        for name in ("layers", "cells", "position"):
            points = points[points[name].isin(shape[name])]
    if points.empty:
        kind = "fixed" if fixed else "random"
        raise SystemExit(f"{results}: no {kind}-length points of {', '.join(archs)}"
                         + (" inside the grid drawn beside them" if shape else ""))
    axes["arch"] = [a for a in axes.get("arch", ()) if a in archs]
    return plot_heatmaps(points, stat, axes=axes)


def heatmap_figure(doc: str, archs: tuple[str, ...], stat: str, fixed: bool, stem: str,
                   argv=None) -> None:
    """:func:`heatmap` of a RESULTS folder, saved as `stem` under --out."""
    args = parser(doc).parse_args(argv)
    print(save(heatmap(args.results, archs, stat, fixed), args.out, stem))
