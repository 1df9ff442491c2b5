"""The learning rate a tuned grid chose for each configuration, as a table of l against c.

    python analysis/tuned_rates.py docs/data/fig6_rnn_tuned

Reads the grid's tuning run (`<results>/tuning/`) and makes the choice `memgrid run` makes
(`memgrid.lr_tuning.choose_lr`); a configuration whose tuning points are not all stored yet shows
`..` (the run has not chosen for it).
"""

from __future__ import annotations

import argparse

import pandas as pd

from memgrid.results import read_grid_identity, read_points
from memgrid.analysis.report import md_table
from memgrid.grid_file import grid_from_identity
from memgrid.results import TUNING
from memgrid.lr_tuning import choose_lr, tuning_points


def chosen_rates(results: str) -> pd.DataFrame:
    """One row per (arch, layers, cells) of the grid: `lr`, the rate chosen (NaN where its
    tuning is not complete)."""
    identity = read_grid_identity(results)
    grid = grid_from_identity(identity) if identity else None
    if grid is None or grid.tune_lr is None:
        raise SystemExit(f"{results}: not a grid with tune_lr (its grid.json)")
    tuned = tuning_points(grid.points(), grid.tune_lr)
    rows = read_points(f"{results.rstrip('/')}/{TUNING}").to_pylist()
    stored = {r["point_id"] for r in rows}
    by_key: dict[tuple, list] = {}
    for p in tuned:
        by_key.setdefault(p.pack_key, []).append(p)
    complete = {k for k, pts in by_key.items() if all(p.point_id in stored for p in pts)}
    chosen = choose_lr(rows, tuned)
    out = []
    for key, pts in by_key.items():
        p = pts[0]
        out.append(dict(arch=p.arch, layers=p.layers, cells=p.cells,
                        lr=chosen[key] if key in complete else float("nan")))
    return pd.DataFrame(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", metavar="RESULTS", help="results folder of a grid with tune_lr")
    args = ap.parse_args(argv)
    rates = chosen_rates(args.results)
    for arch, sub in rates.groupby("arch"):
        table = sub.pivot(index="layers", columns="cells", values="lr")
        text = table.apply(lambda col: col.map(lambda v: ".." if pd.isna(v) else f"{v:g}"))
        text.columns = [f"c = {c}" for c in text.columns]
        print(f"{arch}: the rate chosen per (l, c), `..` where its tuning is not done "
              f"({int(sub['lr'].notna().sum())} of {len(sub)} done)\n")
        print(md_table(text.reset_index().rename(columns={"layers": "l"}), max_rows=len(text)))
        counts = sub["lr"].value_counts().sort_index()
        print("chosen: " + ", ".join(f"{lr:g} by {n}" for lr, n in counts.items()) + "\n")


if __name__ == "__main__":
    main()
