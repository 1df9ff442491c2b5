"""The joint search behind the protocols: every paper claim and the share of converged limits
at each learning rate and training budget, from runs without the plateau stop.

    python analysis/protocol_search.py results/budget_lr_search results/budget_lr_search_paper \
        results/budget_lr_search_counting
"""

import argparse

import pandas as pd

from memgrid.analysis import load_curves, load_points, score_budgets
from memgrid.config import THRESHOLD
from memgrid.analysis.report import md_table


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", metavar="RESULTS",
                    help="results folders of no-plateau runs (paths or pyarrow URIs)")
    ap.add_argument("--by", default="lr", help="the searched settings, comma-separated (lr)")
    ap.add_argument("--threshold", type=float, default=THRESHOLD,
                    help="loss below which p is memorized")
    args = ap.parse_args(argv)
    points = pd.concat([load_points(r) for r in args.results], ignore_index=True)
    curves = pd.concat([load_curves(r) for r in args.results], ignore_index=True)  # none: the
    # folders hold every budget already (docs/data/*-rungs)
    table = score_budgets(points, curves, args.by.split(","), args.threshold)
    short = {"holds": "yes", "does not hold": "no", "not covered by this grid": ""}
    print(md_table(table.replace(short), max_rows=len(table)))
    print("yes / no: the claim holds / does not hold at that setting and budget; blank: not "
          "covered (no such points, or a budget below the paper's 5000 epochs that cannot "
          "decide it). converged: share of configurations whose limit no larger budget moves.")


if __name__ == "__main__":
    main()
