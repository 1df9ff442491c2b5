"""Paper Figure 9: mean loss over seeds of RNNs on the fixed-length task (Definition 2).

    python analysis/fig9_heatmap.py results/fig9_rnn_fixed --out figures
"""

from memgrid.analysis.scripts import heatmap_figure


def main(argv=None) -> None:
    heatmap_figure(__doc__, ("rnn",), "mean", True, "fig9_heatmap", argv)


if __name__ == "__main__":
    main()
