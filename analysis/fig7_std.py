"""Paper Figure 7: std of the loss over seeds of RNNs, x = p, y = c, one panel per l (random length).

    python analysis/fig7_std.py results/fig6_rnn --out figures
"""

from memgrid.analysis.scripts import heatmap_figure


def main(argv=None) -> None:
    heatmap_figure(__doc__, ("rnn",), "std", False, "fig7_std", argv)


if __name__ == "__main__":
    main()
