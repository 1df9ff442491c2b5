"""One grid under two protocols, side by side: what each memorizes and where they disagree.

    python analysis/protocols_side_by_side.py docs/data/fig6_rnn-paper docs/data/fig6_rnn
    python analysis/protocols_side_by_side.py docs/data/fig8_gru-paper docs/data/fig8_gru

Compares only what both folders hold with every seed they share (`memgrid.analysis.compare_runs`),
so a grid still running is compared on the part it has done, and a check on some of a grid's
seeds (at another budget, say) on those seeds. Prints markdown: the (arch, l, c, p)
memorized (mean loss over seeds below the threshold) under each, in all and per position, the
memory-distance limits of the configurations complete in both, and the stream MC above N.
"""

from __future__ import annotations

import argparse

import pandas as pd

from memgrid.analysis import compare_runs, load_points
from memgrid.analysis.report import md_table
from memgrid.analysis.tables import values_text
from memgrid.analysis.tables import THRESHOLD, units


def side_by_side(a: pd.DataFrame, b: pd.DataFrame, names: tuple[str, str],
                 threshold: float = THRESHOLD) -> str:
    """The comparison of points tables `a` and `b` as markdown, the runs called `names`."""
    means, limits = compare_runs(a, b, threshold)
    na, nb = names
    ma, mb = means["memorized_a"], means["memorized_b"]
    seeds = sorted(int(s) for s in set(a["seed"]) & set(b["seed"]))
    lines = [f"(arch, l, c, p) with all {len(seeds)} seeds in both (the seeds both have: "
             f"{values_text(seeds) or 'none'}): **{len(means)}**.", "",
             f"Mean loss below {threshold}: {na} **{int(ma.sum())}**, {nb} **{int(mb.sum())}**; "
             f"both {int((ma & mb).sum())}, only {na} {int((ma & ~mb).sum())}, only {nb} "
             f"{int((~ma & mb).sum())}.", ""]
    per_p = means.groupby("position").agg(**{
        "configurations": ("memorized_a", "size"), f"below {threshold}, {na}": ("memorized_a", "sum"),
        f"below {threshold}, {nb}": ("memorized_b", "sum")})
    lines += ["Per position:", "", md_table(per_p.reset_index(), max_rows=len(per_p))]
    if len(limits):
        def text(limit: pd.Series, censored: pd.Series) -> pd.Series:   # `10+`: the last p
            return limit.astype(str) + censored.map({True: "+", False: ""})

        moved = limits["limit_b"] - limits["limit_a"]
        at_least = limits["censored_b"] & ~limits["censored_a"]
        table = limits[["arch", "layers", "cells", "units", "bound"]].assign(**{
            f"limit, {na}": text(limits["limit_a"], limits["censored_a"]),
            f"limit, {nb}": text(limits["limit_b"], limits["censored_b"]),
            "moved": text(moved, at_least)})
        lines += [f"Memory-distance limits of the configurations complete in both: {len(table)} "
                  "(N = units, bound N - (l - 1); `+`: the grid's last p, so at least this):",
                  "", md_table(table, max_rows=len(table))]
    else:
        lines += ["No configuration is complete in both yet: no limits to compare.", ""]
    for name, pts in zip(names, (a, b)):
        if "mc_stream" in pts and pts["mc_stream"].notna().any():
            above = int((pts["mc_stream"] > units(pts)).sum())
            lines.append(f"- {name}: stream MC above N in {above} of "
                         f"{int(pts['mc_stream'].notna().sum())} networks.")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("first", metavar="RESULTS_A", help="results folder (e.g. the paper protocol)")
    ap.add_argument("second", metavar="RESULTS_B", help="the same grid under another protocol")
    ap.add_argument("--threshold", type=float, default=THRESHOLD,
                    help="loss below which p is memorized")
    args = ap.parse_args(argv)
    tables = []
    for folder in (args.first, args.second):
        points = load_points(folder)
        if points.empty:
            raise SystemExit(f"{folder}: no points")
        tables.append(points)
    names = tuple(f.rstrip("/").rsplit("/", 1)[-1] for f in (args.first, args.second))
    try:
        print(side_by_side(*tables, names if names[0] != names[1] else ("A", "B"), args.threshold))
    except ValueError as e:
        raise SystemExit(str(e)) from None


if __name__ == "__main__":
    main()
