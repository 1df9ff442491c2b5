"""Paper Figure 9: mean loss over seeds of RNNs on the fixed-length task (Definition 2).

    python analysis/fig9_heatmap.py results/fig9_rnn_fixed --out figures
    python analysis/fig9_heatmap.py results/fig9_rnn_fixed --random results/fig6_rnn --out figures

With --random, the random-length points of that folder (the full Figure 6 grid) are drawn too,
on the fixed-length grid's own (l, c, p), as fig9_heatmap_random: the paper's comparison of
the two tasks, side by side at the same scale.
"""

from memgrid.analysis.plots import save
from memgrid.analysis.scripts import heatmap, parser
from memgrid.results import read_grid_identity


def main(argv=None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--random", metavar="RESULTS",
                    help="a folder with random-length RNN points of the same (l, c, p)")
    args = ap.parse_args(argv)
    print(save(heatmap(args.results, ("rnn",), "mean", True), args.out, "fig9_heatmap"))
    if args.random:
        axes = (read_grid_identity(args.results) or {}).get("axes") or {}
        if not all(axes.get(k) for k in ("layers", "cells", "position")):
            raise SystemExit(f"{args.results}: no grid.json axes to lay the random-length "
                             "points out by")
        print(save(heatmap(args.random, ("rnn",), "mean", False, shape=axes), args.out,
                   "fig9_heatmap_random"))


if __name__ == "__main__":
    main()
