"""The paper's claims judged on the same grids under two protocols, side by side.

    python analysis/claims_by_protocol.py --paper results/fig4_rnn-paper results/fig5_lstm-paper \
        --converged results/fig4_rnn results/fig5_lstm
"""

import argparse

import pandas as pd

from memgrid.analysis import check_claims, load_curves, load_points
from memgrid.config import THRESHOLD
from memgrid.analysis.report import md_table


def _load(folders: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The folders' points and curves as one table (a point stored in two folders once)."""
    points = pd.concat([load_points(f) for f in folders], ignore_index=True)
    points = points.drop_duplicates("point_id", ignore_index=True)
    curves = pd.concat([load_curves(f) for f in folders], ignore_index=True)
    return points, curves.drop_duplicates(["point_id", "epoch"], ignore_index=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paper", nargs="+", required=True, metavar="RESULTS",
                    help="results folders run with --protocol paper")
    ap.add_argument("--converged", nargs="+", required=True, metavar="RESULTS",
                    help="results folders run with the converged protocol")
    ap.add_argument("--threshold", type=float, default=THRESHOLD,
                    help="loss below which p is memorized")
    args = ap.parse_args(argv)
    both = {}
    for name in ("paper", "converged"):
        claims = check_claims(*_load(getattr(args, name)), args.threshold)
        both[name] = claims.set_index(["figure", "claim"])
    table = pd.concat({n: c["verdict"] for n, c in both.items()}, axis=1).reset_index()
    table["finding is about"] = ["" if a == b else "training (moves with the protocol)"
                                 for a, b in zip(table["paper"], table["converged"])]
    print(md_table(table, max_rows=len(table)))
    for name, c in both.items():
        print(f"\nEvidence, {name} protocol:\n")
        for (fig, _), ev in c["evidence"].items():
            print(f"- {fig}: {ev}")


if __name__ == "__main__":
    main()
