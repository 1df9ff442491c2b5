"""Paper Figure 5: loss curves of an LSTM with l = 1 layer of c = 5 cells, one colour per p.

    python analysis/fig5_curves.py results/fig5_lstm --out figures
"""

from memgrid.analysis.scripts import curves_figure


def main(argv=None) -> None:
    curves_figure(__doc__, "lstm", "fig5_curves", argv)


if __name__ == "__main__":
    main()
