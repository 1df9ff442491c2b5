"""Paper Figure 7: std of the loss over seeds of RNNs, x = p, y = c, one panel per l (random length).

    python analysis/fig7_std.py results/fig6_rnn --out figures
"""

import argparse

from memgrid.analysis import fixed_length, load_points, plot_heatmaps, random_length, save


def main(argv=None) -> None:
    archs, stat, fixed, stem = ("rnn",), "std", False, "fig7_std"
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
