"""Paper Figure 9: mean loss over seeds of RNNs on the fixed-length task (Definition 2).

    python analysis/fig9_heatmap.py results/fig9_fixed --out figures
"""

import argparse

from memgrid.analysis import fixed_length, load_points, plot_heatmaps, random_length, save


def main(argv=None) -> None:
    archs, stat, fixed, stem = ("rnn",), "mean", True, "fig9_heatmap"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", metavar="RESULTS", help="results folder (path or pyarrow URI)")
    ap.add_argument("--out", default="figures", help="folder for the PNG and PDF (default: figures)")
    args = ap.parse_args(argv)
    points = load_points(args.results)
    points = fixed_length(points) if fixed else random_length(points)
    points = points[points["arch"].isin(archs)]
    if points.empty:
        kind = "fixed" if fixed else "random"
        raise SystemExit(f"{args.results}: no {kind}-length points of {', '.join(archs)}")
    print(save(plot_heatmaps(points, stat), args.out, stem))


if __name__ == "__main__":
    main()
