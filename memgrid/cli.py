"""`memgrid` command line: run, status, analyze.

Bad input (a grid file, a flag, a results folder of another grid) ends with one line on
stderr naming the file and key, exit status 2, before Ray starts and before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import Counter
from pathlib import Path

import click

from . import store
from .config import ConfigError, Grid, Point, check_resources, load_grid, parse_grid

EXIT_BAD_INPUT = 2


def _fail(msg: str) -> None:
    click.echo(f"memgrid: error: {msg}", err=True)
    sys.exit(EXIT_BAD_INPUT)


def grid_from_identity(identity: dict, source: str) -> Grid:
    """Rebuild the grid that a results folder's grid.json describes."""
    return Grid(name=identity["name"], axes=identity["axes"], fixed=identity["fixed"], source=source)


def _first_difference(a: dict, b: dict, prefix: str = "") -> str:
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            d = _first_difference(va, vb, f"{prefix}{k}.")
            if d:
                return d
        elif va != vb:
            return f"{prefix}{k} ({va!r} there, {vb!r} here)"
    return ""


def prepare_out(grid: Grid, out: str) -> None:
    """Check that `out` holds no other grid, then record this one (grid.json)."""
    ident = json.loads(json.dumps(grid.identity))  # as it reads back from JSON
    try:
        old = store.read_grid_identity(out)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{out}/grid.json: unreadable ({e})") from None
    if old is not None and old != ident:
        raise ConfigError(f"{out}/grid.json: this results folder holds another grid: "
                          f"{_first_difference(old, ident)}; use another --out")
    if old is None:
        store.write_grid_identity(out, ident)


def build_grid(path: str, *, smoke: bool, pack, cpus_per_trial, gpus_per_trial, max_epochs,
               no_plateau: bool) -> Grid:
    grid = load_grid(path)
    res = check_resources(
        "command line", pack=pack if pack is not None else grid.resources.pack,
        cpus_per_trial=cpus_per_trial if cpus_per_trial is not None else grid.resources.cpus_per_trial,
        gpus_per_trial=gpus_per_trial if gpus_per_trial is not None else grid.resources.gpus_per_trial)
    grid = dataclasses.replace(grid, resources=res)
    overrides = {}
    if max_epochs is not None:
        if max_epochs < 1:
            raise ConfigError(f"command line: --max-epochs: must be >= 1, got {max_epochs}")
        overrides["max_epochs"] = max_epochs
    if no_plateau:
        overrides["plateau"] = False
    if overrides:
        grid = grid.with_overrides(**overrides)
    if no_plateau:
        grid = dataclasses.replace(grid, name=grid.name + "-noplateau")
    return grid.smoke() if smoke else grid


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="memgrid")
def main() -> None:
    """memgrid: how far back can a recurrent network remember?

    Trains grids of RNN/LSTM/GRU networks on the random memorization task on Ray Tune and
    stores one Parquet row per point."""


@main.command()
@click.argument("grid_file", metavar="GRID.yaml")
@click.option("--out", help="results folder or URI [default: results/<grid name>]")
@click.option("--pack", help="points per trial: N, or 'auto' (1 = one trial per point)")
@click.option("--cpus-per-trial", type=float, help="CPU cores per trial [grid, else 1]")
@click.option("--gpus-per-trial", type=float, help="GPU share per trial, e.g. 0.25 [grid, else 0]")
@click.option("--max-epochs", type=int, help="override the grid's max_epochs")
@click.option("--no-plateau", is_flag=True, help="never stop at the 0.25 plateau (name gets -noplateau)")
@click.option("--smoke", is_flag=True, help="shrink the grid to a run of a minute or two")
@click.option("--address", help="join a running Ray cluster instead of an embedded Ray")
@click.option("--num-cpus", type=int, help="CPUs of the embedded Ray [all]")
@click.option("--quiet", is_flag=True, help="no progress line")
def run(grid_file, out, pack, cpus_per_trial, gpus_per_trial, max_epochs, no_plateau, smoke,
        address, num_cpus, quiet):
    """Train every point of GRID.yaml that the results folder does not hold yet."""
    try:
        grid = build_grid(grid_file, smoke=smoke, pack=pack, cpus_per_trial=cpus_per_trial,
                          gpus_per_trial=gpus_per_trial, max_epochs=max_epochs,
                          no_plateau=no_plateau)
        out = out or f"results/{grid.name}"
        prepare_out(grid, out)
    except ConfigError as e:
        _fail(str(e))
    from .tune import run_grid  # Ray is imported only once the input is known to be good

    summary = run_grid(grid, out, address=address, num_cpus=num_cpus, quiet=quiet)
    missing = summary["points"] - summary["done"]
    click.echo(f"{out}: {summary['done']}/{summary['points']} points stored "
               f"({summary['trained']} trained now, {summary['done_before']} before)"
               + (f"; {missing} missing: run the same command again to finish them" if missing else ""))
    if summary["failed_trials"] or missing:
        sys.exit(1)


@main.command()
@click.argument("results", metavar="RESULTS")
def status(results):
    """What a results folder holds: points done and missing, stop reasons."""
    try:
        ident = store.read_grid_identity(results)
    except (OSError, ValueError) as e:
        _fail(f"{results}/grid.json: unreadable ({e})")
    if ident is None:
        _fail(f"{results}: no grid.json: not a memgrid results folder")
    try:
        grid = grid_from_identity(ident, f"{results}/grid.json")
        points = grid.points()
    except (ConfigError, KeyError, TypeError) as e:
        _fail(f"{results}/grid.json: does not describe a grid ({e})")
    t = store.read_points(results, columns=["point_id", "stop_reason"]).to_pydict()
    reason = dict(zip(t["point_id"], t["stop_reason"]))
    by_net: dict[tuple, Counter] = {}
    for p in points:
        c = by_net.setdefault((p.arch, p.layers, p.cells), Counter())
        c["total"] += 1
        r = reason.get(p.point_id)
        if r:
            c["done"] += 1
            c[r] += 1
    done = sum(c["done"] for c in by_net.values())
    click.echo(f"{results}: grid '{grid.name}', {done}/{len(points)} points done, "
               f"{len(points) - done} missing")
    reasons = sorted({k for c in by_net.values() for k in c} - {"total", "done"})
    header = ["arch", "l", "c", "done", "total"] + reasons
    rows = [[a, l, c, cnt["done"], cnt["total"]] + [cnt[r] for r in reasons]
            for (a, l, c), cnt in sorted(by_net.items())]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for r in [header] + rows:
        click.echo("  ".join(str(x).rjust(w) for x, w in zip(r, widths)))


@main.command()
@click.argument("results", metavar="RESULTS")
@click.option("--out", help="folder for report.md and the figures [default: RESULTS/report]")
@click.option("--threshold", type=float, default=0.05, show_default=True,
              help="mean loss below which a position counts as memorized")
def analyze(results, out, threshold):
    """Figures, limits, the MC check and the paper's claims from a results folder (also one
    still being written, or one covering part of a grid): writes report.md."""
    if not (threshold > 0):
        _fail(f"command line: --threshold: must be > 0, got {threshold}")
    if "://" not in results and not Path(results).is_dir():
        _fail(f"{results}: no such results folder")
    from .analysis import write_report

    path = write_report(results, out, threshold=threshold)
    click.echo(f"report: {path}")


from .launch import launch as _launch  # noqa: E402 - registered last: `memgrid launch`

main.add_command(_launch)

if __name__ == "__main__":
    main()
