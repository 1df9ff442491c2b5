"""Write a results folder's points as a compact folder for docs/data: its grid.json and a zstd
Parquet part of points (POINT_SCHEMA) per arch, no curves unless --curves (for a small run whose
curves the analysis needs: the plateau stop's replay, the loss curves); for a grid still
running, also its packs saved mid-training (packs/), so that a run into a copy continues them,
and a tuned grid's tuning run (tuning/: its points and packs) likewise. With --rungs, a run
without the plateau stop is replayed at budget/16 .. /1 first (memgrid.analysis.budget_rungs):
one row per point and budget, `max_epochs` set to the budget and `@<max_epochs>` added to the
point id (one point, several rows; the ids of a shorter budget's rows are not those a run at
it would store). With --curves-every K, a curve keeps its first K evaluations (the fast
start of training), every K-th after them, its last (the epoch it stopped at) and its first
below the memorization threshold (so the epochs to memorize read from it stay exact): for a
large grid, whose curves show how its points converged; a run whose curves are replayed (the
plateau stop, --rungs) ships them whole.

    python analysis/ship_points.py results/fig4_rnn docs/data/fig4_rnn
    python analysis/ship_points.py results/big_stack_check-noplateau docs/data/big_stack_check-noplateau --curves
    python analysis/ship_points.py results/today_cells docs/data/today_cells --curves-every 8
    python analysis/ship_points.py results/budget_lr_search_adam docs/data/budget_lr_search_adam-rungs --rungs
"""

import argparse
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from memgrid.analysis import budget_rungs, load_curves, load_points
from memgrid.config import THRESHOLD
from memgrid.results import CURVE_SCHEMA, PACKS, POINT_SCHEMA
from memgrid.results import TUNING


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", help="a results folder")
    ap.add_argument("dest", help="the folder to write (replaced)")
    ap.add_argument("--rungs", action="store_true", help="replay a no-plateau run at every budget")
    ap.add_argument("--curves", action="store_true", help="ship the curves too (a small run)")
    ap.add_argument("--curves-every", type=int, metavar="K",
                    help="ship the curves thinned: the first K evaluations of each and every "
                         "K-th after (a large grid)")
    args = ap.parse_args(argv)
    if args.curves_every is not None and args.curves_every < 1:
        ap.error(f"--curves-every: {args.curves_every} is not a positive whole number")
    every = args.curves_every or (1 if args.curves else 0)
    if every and args.rungs:
        raise SystemExit("--curves or --curves-every with --rungs: a replayed folder's rows "
                         "are not the curves' points")
    points = load_points(args.results)
    if args.rungs:
        points = budget_rungs(points, load_curves(args.results))
        points["point_id"] = points["point_id"] + "@" + points["max_epochs"].astype(str)
    if every > 1 and "plateau" in points and not points["plateau"].astype(bool).all():
        raise SystemExit(f"{args.results}: a run without the plateau stop, whose curves replay "
                         "its shorter budgets: ship them whole (--curves)")
    curves = load_curves(args.results, points["point_id"].tolist()) if every else None
    if curves is not None and curves.empty and len(points):
        raise SystemExit(f"{args.results}: no curves to ship (its run did not keep them, or it "
                         "was shipped without them)")
    dest = Path(args.dest)
    part = dest.with_name(f".{dest.name}.shipping")   # written whole, then put in dest's place
    if part.exists():
        shutil.rmtree(part)
    part.mkdir(parents=True)
    try:
        shutil.copy(Path(args.results) / "grid.json", part / "grid.json")
        ship(args.results, part, points, curves, every, shown=dest)
        tuning = Path(args.results) / TUNING    # a tuned grid's tuning run: its choice, resuming it
        if tuning.is_dir():
            ship(str(tuning), part / TUNING, load_points(str(tuning)), shown=dest / TUNING)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    if dest.exists():
        shutil.rmtree(dest)
    part.rename(dest)


def _parts(table, by: str, schema: pa.Schema, folder: Path) -> int:
    """`table` as one zstd part of `schema` per value of its column `by` in `folder`
    (`part-<value>.parquet`); the bytes written."""
    for value, part in table.groupby(by, sort=True):
        pq.write_table(pa.Table.from_pandas(part[schema.names], schema=schema,
                                            preserve_index=False),
                       folder / f"part-{value}.parquet", compression="zstd")
    return sum(f.stat().st_size for f in folder.iterdir())


def thin(curves: pd.DataFrame, every: int, eval_every: dict[str, int],
         threshold: float = THRESHOLD) -> pd.DataFrame:
    """`curves` (sorted by point and epoch) with, of each point, its first `every`
    evaluations, every `every`-th one, its last, and its first with `eval_loss` below
    `threshold` kept. An evaluation is counted by its epoch (epoch // the point's
    `eval_every`), not by its row, so that curves thinned once come through again unchanged:
    a run resumed from a shipped folder ships its earlier points' curves as they were."""
    by = curves.groupby("point_id", sort=False)
    i = curves["epoch"] // curves["point_id"].map(eval_every)
    below = curves["eval_loss"] < threshold
    first_below = below & (below.astype(int).groupby(curves["point_id"]).cumsum() == 1)
    last = by.cumcount() == by["epoch"].transform("size") - 1
    keep = (i < every) | (i % every == 0) | last | first_below
    return curves[keep]


def ship(results: str, dest: Path, points: pd.DataFrame, curves: pd.DataFrame | None = None,
         every: int = 1, shown: Path | None = None) -> None:
    """`points` (of the folder `results`) as zstd parts in `dest`, one per arch
    (`part-<arch>.parquet`, rows in point_id order: a cell's part is byte for byte the same
    when a later copy of a growing run ships it again), with their `curves` if given (thinned
    by :func:`thin` where `every` > 1), and the packs `results` saved mid-training; what it
    wrote printed as in `shown` (default `dest`)."""
    shown = shown or dest
    points = points.sort_values("point_id", kind="stable")
    if curves is not None:    # before the points, as memgrid writes a part
        table = curves
        (dest / "curves").mkdir(parents=True)
        arch = dict(zip(points["point_id"], points["arch"]))
        table = table.assign(_arch=table["point_id"].map(arch)).sort_values(
            ["point_id", "epoch"], kind="stable", ignore_index=True)
        whole = len(table)
        if every > 1:
            table = thin(table, every, dict(zip(points["point_id"], points["eval_every"])))
        size = _parts(table, "_arch", CURVE_SCHEMA, dest / "curves")
        print(f"{shown}: {len(table)} curve rows" + (f" of {whole}" if every > 1 else "")
              + f", {size} bytes")
    if len(points):
        (dest / "points").mkdir(parents=True)
        size = _parts(points, "arch", POINT_SCHEMA, dest / "points")
        print(f"{shown}: {len(points)} rows, {size} bytes")
    packs = Path(results) / PACKS
    if packs.is_dir() and any(packs.glob("*.pt")):    # a grid still running: what resumes it
        shutil.copytree(packs, dest / PACKS, ignore=shutil.ignore_patterns(".tmp-*"))
        size = sum(f.stat().st_size for f in (dest / PACKS).iterdir())
        print(f"{shown / PACKS}: {len(list((dest / PACKS).glob('*.pt')))} packs saved mid-training, "
              f"{size} bytes (a run into a copy of {shown} continues them)")


if __name__ == "__main__":
    main()
