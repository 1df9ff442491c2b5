"""One grid under two protocols, cell by cell: what each memorizes and where they disagree.

    python analysis/protocols_side_by_side.py docs/data/fig6_rnn-paper docs/data/fig6_rnn
    python analysis/protocols_side_by_side.py docs/data/fig8_gru-paper docs/data/fig8_gru

Compares only what both folders hold with every seed, so a grid still running (the second
folder, say) is compared on the part it has done. Prints markdown: the (arch, l, c, p)
memorized (mean loss over seeds below the threshold) under each protocol, in all and per
position, the memory-distance limits of the configurations complete in both, and the stream MC
above N.
"""

from __future__ import annotations

import argparse

import pandas as pd

from memgrid.analysis import load_points, memory_limits
from memgrid.analysis.report import md_table
from memgrid.analysis.tables import CONFIG, THRESHOLD, mean_losses, units, variant_columns

CELL = CONFIG + ["position"]


def _points(folder: str) -> pd.DataFrame:
    points = load_points(folder)
    if points.empty:
        raise SystemExit(f"{folder}: no points")
    if varies := variant_columns(points):
        raise SystemExit(f"{folder}: varies {', '.join(varies)} besides arch, l, c, p and seed: "
                         "compare one setting at a time")
    return points


def side_by_side(a: pd.DataFrame, b: pd.DataFrame, names: tuple[str, str],
                 threshold: float = THRESHOLD) -> str:
    """The comparison of points tables `a` and `b` (one grid, two protocols) as markdown."""
    seeds = max(a["seed"].nunique(), b["seed"].nunique())
    means = {}
    for name, pts in zip(names, (a, b)):
        m = mean_losses(pts, CONFIG)
        means[name] = m[m["seeds"] >= seeds].set_index(CELL)["mean"]
    both = pd.concat(means, axis=1, join="inner")
    na, nb = names
    hit = both < threshold
    lines = [f"(arch, l, c, p) with all {seeds} seeds in both: **{len(both)}** "
             f"({na}: {len(means[na])}, {nb}: {len(means[nb])}).", "",
             f"Mean loss below {threshold}: {na} **{int(hit[na].sum())}**, {nb} "
             f"**{int(hit[nb].sum())}**; both {int((hit[na] & hit[nb]).sum())}, only {na} "
             f"{int((hit[na] & ~hit[nb]).sum())}, only {nb} {int((~hit[na] & hit[nb]).sum())}.",
             ""]
    per_p = hit.groupby(level="position").agg(
        **{"configurations": (na, "size"), f"below {threshold}, {na}": (na, "sum"),
           f"below {threshold}, {nb}": (nb, "sum")})
    lines += ["Per position:", "", md_table(per_p.reset_index(), max_rows=len(per_p))]

    # limits where every position of the configuration is in both, with every seed
    keys = both.reset_index()
    grid_p = pd.concat([a, b])[CELL].drop_duplicates().groupby(CONFIG)["position"].nunique()
    have = keys.groupby(CONFIG)["position"].nunique()
    whole = have[have == grid_p.reindex(have.index)].index
    rows = []
    for name, pts in zip(names, (a, b)):
        sel = pts.set_index(CONFIG).index.isin(whole)
        rows.append(memory_limits(pts[sel], threshold, CONFIG).set_index(CONFIG))
    if len(whole):
        def text(r: pd.DataFrame) -> pd.Series:   # `10+`: censored at the grid's last p
            return r["limit"].astype(str) + r["limit_censored"].map({True: "+", False: ""})

        a_lim, b_lim = rows
        moved = (b_lim["limit"] - a_lim["limit"]).astype(str)
        lim = a_lim[["units", "bound"]].assign(**{
            f"limit, {na}": text(a_lim), f"limit, {nb}": text(b_lim),
            "moved": moved + (b_lim["limit_censored"] & ~a_lim["limit_censored"]).map(
                {True: "+", False: ""})})
        lines += [f"Memory-distance limits of the configurations complete in both: {len(lim)} "
                  "(N = units, bound N - (l - 1); `+`: the grid's last p, so at least this):",
                  "", md_table(lim.reset_index(), max_rows=len(lim))]
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
    names = tuple(f.rstrip("/").rsplit("/", 1)[-1] for f in (args.first, args.second))
    if names[0] == names[1]:
        names = ("A", "B")
    print(side_by_side(_points(args.first), _points(args.second), names, args.threshold))


if __name__ == "__main__":
    main()
