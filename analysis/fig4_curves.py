"""Paper Figure 4: loss curves of an RNN with l = 1 layer of c = 5 cells, one colour per p.

    python analysis/fig4_curves.py results/fig4_rnn --out figures
"""

from memgrid.analysis.scripts import curves_figure


def main(argv=None) -> None:
    curves_figure(__doc__, "rnn", "fig4_curves", argv)


if __name__ == "__main__":
    main()
