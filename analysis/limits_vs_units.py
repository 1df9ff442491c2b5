"""Memory limit and memory capacity against N = c * l, with the bounds N and N - (l - 1).

    python analysis/limits_vs_units.py results/fig6_rnn --out figures [--fixed]
"""

import argparse

from memgrid.analysis import fixed_length, load_points, plot_limits_vs_units, random_length, save


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", metavar="RESULTS", help="results folder (path or pyarrow URI)")
    ap.add_argument("--out", default="figures", help="folder for the PNG and PDF (default: figures)")
    ap.add_argument("--fixed", action="store_true", help="fixed-length points (default: random)")
    ap.add_argument("--threshold", type=float, default=0.05, help="loss below which p is memorized")
    args = ap.parse_args(argv)
    points = load_points(args.results)
    points = fixed_length(points) if args.fixed else random_length(points)
    if points.empty:
        raise SystemExit(f"{args.results}: no {'fixed' if args.fixed else 'random'}-length points")
    stem = "limits_vs_units" + ("_fixed" if args.fixed else "")
    print(save(plot_limits_vs_units(points, args.threshold), args.out, stem))


if __name__ == "__main__":
    main()
