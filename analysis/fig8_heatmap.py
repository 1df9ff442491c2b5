"""Paper Figure 8: mean loss over seeds of LSTMs and GRUs (rows), one panel per l (random length).

    python analysis/fig8_heatmap.py results/fig8_lstm --out figures
"""

from memgrid.analysis.scripts import heatmap_figure


def main(argv=None) -> None:
    heatmap_figure(__doc__, ("lstm", "gru"), "mean", False, "fig8_heatmap", argv)


if __name__ == "__main__":
    main()
