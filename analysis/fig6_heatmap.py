"""Paper Figure 6: mean loss over seeds of RNNs, x = p, y = c, one panel per l (random length).

    python analysis/fig6_heatmap.py results/fig6_rnn --out figures
"""

from memgrid.analysis.scripts import heatmap_figure


def main(argv=None) -> None:
    heatmap_figure(__doc__, ("rnn",), "mean", False, "fig6_heatmap", argv)


if __name__ == "__main__":
    main()
