"""`memgrid` command line: run, status, analyze, compact.

Bad input (a grid file, a flag, a results folder of another grid) ends with one line on
stderr naming the file and key, exit status 2, before Ray starts and before anything is written.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import sys
import threading
from collections import Counter
from pathlib import Path

import click

from .config import THRESHOLD, ConfigError
from .grid_file import grid_from_identity
from .processes import exit_status, launch_time, signals_held, stoppable
from .results import (MERGE_FIRST_PARTS, PACKS, READ_ERRORS, TABLES, TUNING, FolderBusy,
                      FolderLock, check_results, damaged_parts, done_ids, first_line, part_names,
                      read_points, repair, saved_packs)
from .results import compact as compact_folder
from .run.preflight import (EXIT_BAD_INPUT, MAX_POINTS, build_grid, check_driver, check_link,
                            check_machine, check_out, check_size, growth, prepare_out,
                            read_identity)
from .walk import left_out

def _fail(msg: str) -> None:
    click.echo(f"memgrid: error: {msg}", err=True)
    sys.exit(EXIT_BAD_INPUT)


def _warn_damaged(results: str) -> None:
    for path, why in damaged_parts(results):
        click.echo(f"memgrid: warning: {path}: unreadable part ({why}), skipped; `memgrid run` "
                   "moves it aside and trains its points again", err=True)


class _Commands(click.Group):
    """click's group, with its usage errors ("no such option", "not a valid integer", ...) and
    an interruption outside a command's own handling as one line each: exit status 2, and
    130 (Ctrl-C), not click's usage text or "Aborted!" (exit 1)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:     # `memgrid`, `memgrid run`: help
            e.show()
            sys.exit(e.exit_code)
        except click.ClickException as e:
            ctx = getattr(e, "ctx", None)
            hint = f" (`{ctx.command_path} -h`: usage)" if ctx is not None else ""
            click.echo(f"memgrid: error: command line: {' '.join(e.format_message().split())}"
                       f"{hint}", err=True)
            sys.exit(EXIT_BAD_INPUT if isinstance(e, click.UsageError) else e.exit_code)
        except click.exceptions.Abort:
            click.echo("memgrid: interrupted", err=True)
            sys.exit(128 + signal.SIGINT)
        sys.exit(rv if isinstance(rv, int) else 0)


REACH_S = 20.0
"""how long `status` and `analyze` wait for a results folder at a URI to answer at all (a
bucket that does not exist: gs:// retries for many minutes), unless $MEMGRID_REACH_S says"""


def _reach_s() -> float:
    """REACH_S, or the seconds in $MEMGRID_REACH_S (one line and exit status 2 if that is not a
    positive number)."""
    text = os.environ.get("MEMGRID_REACH_S", "")
    if not text:
        return REACH_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not seconds > 0 or math.isinf(seconds):
        _fail(f"MEMGRID_REACH_S: {text!r} is not a positive number of seconds")
    return seconds


def _reach(uri: str, check) -> None:
    """check(uri), a first look at the results folder `uri`, within REACH_S seconds for an
    object store; else one line and exit status 2 (the look cannot be stopped: it is left
    behind with the process)."""
    if "://" not in uri or uri.startswith("file://"):
        check(uri)
        return
    box: dict = {}

    def call() -> None:
        try:
            check(uri)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            box["error"] = e

    wait = _reach_s()
    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(wait)
    if t.is_alive():
        click.echo(f"memgrid: error: {uri}: no answer within {wait:g} s (no such bucket, "
                   "no network, or no credentials for it)", err=True)
        sys.stderr.flush()
        os._exit(EXIT_BAD_INPUT)
    if "error" in box:
        raise box["error"]


def _results_grid(results: str, *, required: bool):
    """The grid of the results folder `results` and its points (None where it has no grid.json
    and not `required`), after checking that it is one: one line and exit status 2 where it is not,
    cannot be reached or its grid.json cannot be read."""
    try:
        _reach(results, check_results)
        ident = read_identity(results)
    except ValueError as e:     # ConfigError too
        _fail(str(e))
    if ident is None:
        if required:
            _fail(f"{results}: no grid.json: not a memgrid results folder")
        return None
    try:
        grid = grid_from_identity(ident, f"{results.rstrip('/')}/grid.json", check=True)
        check_driver(grid)
        return grid, grid.points()
    except ConfigError as e:
        _fail(str(e))
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        _fail(f"{results.rstrip('/')}/grid.json: does not describe a grid ({type(e).__name__}: "
              f"{' '.join(str(e).split())[:120]})")


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="memgrid")
def main() -> None:
    """memgrid: how far back can a recurrent network remember?

    Trains grids of recurrent networks (RNN, LSTM, GRU and newer cells) on the random
    memorization task on Ray Tune and stores one Parquet row per point."""


_RUNNING: dict = {}
"""the grid and results folder of the `memgrid run` in this process, once known: what the line
after an interruption counts"""


def _ends_cleanly(command):
    """`memgrid run` on SIGINT (Ctrl-C) or SIGTERM, at any moment: every process it started
    ended, then one line saying how many points are stored, exit status 130 or 143."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from .lr_tuning import grid_points
        from .results import stop_counts

        _RUNNING.clear()
        with stoppable(subreaper=True):   # an orphaned Ray process comes back to be ended
            try:
                return command(*args, **kwargs)
            except KeyboardInterrupt:
                # counted below, not in here: here the exception's frames would keep
                # every point of the run while the count expands the grid again
                pass
            status = exit_status()
            with signals_held():
                grid, out = _RUNNING.get("grid"), _RUNNING.get("out")
                stored = ""
                if grid is not None:
                    try:     # a tuned grid's points: at the rates its tuning run chose
                        points = grid_points(grid, out, partial=True)
                        ids = {p.point_id for p in points}
                        n = sum(stop_counts(out, ids).values())
                        left = left_out(grid, out, points)
                        stored = (f"{out}: {n}/{grid.n_points} points stored"
                                  + (f", {len(left)} past settled limits left out" if left else "")
                                  + "; ")
                    except (OSError, ValueError):
                        pass
                click.echo(f"memgrid: interrupted: {stored}run the same command again to "
                           "finish", err=True)
            if "ray" in sys.modules:
                # everything is ended and stored; a Ray interrupted inside ray.init can
                # leave its C++ core worker half made, which crashes the interpreter's
                # exit (SIGSEGV, status 139): leave without it
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
            sys.exit(status)

    return wrapper


@main.command()
@click.argument("grid_file", metavar="GRID.yaml")
@click.option("--out", help="results folder or URI [default: results/<grid name>]")
@click.option("--pack", help="points per trial: N, or 'auto' (1 = one trial per point)")
@click.option("--cpus-per-trial", type=float, help="CPU cores per trial [grid, else 1]")
@click.option("--gpus-per-trial", type=float, help="GPU share per trial, e.g. 0.25 [grid, else 0]")
@click.option("--max-epochs", type=int, help="override the grid's max_epochs")
@click.option("--protocol", help="named training settings: converged (default) or paper "
              "(name gets -paper)")
@click.option("--no-plateau", is_flag=True, help="never stop at the 0.25 plateau (name gets -noplateau)")
@click.option("--smoke", is_flag=True, help="shrink the grid to a run of a minute or two")
@click.option("--address", help="join a running Ray cluster (its GCS host:port, or auto) instead "
              "of an embedded Ray")
@click.option("--num-cpus", type=int, help="CPUs of the embedded Ray [all]")
@click.option("--max-points", type=int, default=MAX_POINTS, show_default=True,
              help="refuse a larger grid (the driver holds every point before Tune starts)")
@click.option("--quiet", is_flag=True, help="no progress line")
@click.option("--dry-run", is_flag=True, help="print the points, what is stored, the packs and an "
              "estimated time; start nothing, write nothing")
@click.option("--mlflow", "mlflow_uri", metavar="URI",
              help="also log each pack as an MLflow run at this tracking URI (e.g. a local "
                   "mlruns folder); needs the `tracking` extra")
@click.option("--wandb", "wandb_project", metavar="PROJECT",
              help="also log each pack as a Weights & Biases run in this project (offline "
                   "unless WANDB_MODE says otherwise); needs the `tracking` extra")
@_ends_cleanly
def run(grid_file, out, pack, cpus_per_trial, gpus_per_trial, max_epochs, protocol, no_plateau,
        smoke, address, num_cpus, max_points, quiet, dry_run, mlflow_uri, wandb_project):
    """Train every point of GRID.yaml that the results folder does not hold yet."""
    if num_cpus is not None and num_cpus < 1:
        _fail(f"command line: --num-cpus: must be >= 1, got {num_cpus}")
    if num_cpus is not None and address is not None:
        _fail("command line: --num-cpus: only for the embedded Ray; the cluster at --address "
              "has the CPUs it has")
    if max_points < 1:
        _fail(f"command line: --max-points: must be >= 1, got {max_points}")
    if out == "":
        _fail("command line: --out: empty; give a folder or a URI")
    tracking = [(k, v) for k, v in (("mlflow", mlflow_uri), ("wandb", wandb_project)) if v]
    for k, v in tracking:
        if not v.strip():
            _fail(f"command line: --{k}: empty")
    try:
        from .run.tracking import check as check_tracking

        check_tracking(tracking)
        grid = build_grid(grid_file, smoke=smoke, pack=pack, cpus_per_trial=cpus_per_trial,
                          gpus_per_trial=gpus_per_trial, max_epochs=max_epochs,
                          no_plateau=no_plateau, protocol=protocol)
        # how the user set the trial's resources, for a message when no node can take a trial
        names = {k: f"command line: --{k.replace('_', '-')}" if v is not None else
                 f"{grid_file}: resources.{k} (or --{k.replace('_', '-')})"
                 for k, v in (("cpus_per_trial", cpus_per_trial),
                              ("gpus_per_trial", gpus_per_trial))}
        check_size(grid, max_points)
        check_machine(grid, here=address is None, num_cpus=num_cpus,
                      cpus_name=names["cpus_per_trial"])
        out = out or f"results/{grid.name}"
        grows = growth(grid, check_out(grid, out))
    except ConfigError as e:
        _fail(str(e))
    if address is None:     # the embedded Ray's CPUs, known before it starts
        from .run.plan import local_cpus

        cpus, whose = (num_cpus, f"--num-cpus gives the embedded Ray {num_cpus}") if num_cpus \
            else (local_cpus(), f"this machine has {local_cpus()}")
        if grid.resources.cpus_per_trial > cpus:
            _fail(f"{names['cpus_per_trial']}: a trial asks for "
                  f"{grid.resources.cpus_per_trial:g} CPUs; {whose}")
    if dry_run:
        from .run.plan import NOTICE_POINTS, describe_plan, local_slots

        if address is not None:     # its form only: the dry run contacts no cluster
            from .run.address import dialed

            try:
                dialed(address)
            except ConfigError as e:
                _fail(str(e))

        if grid.n_points >= NOTICE_POINTS:     # the plan takes a second or more
            click.echo(f"[{grid.name}] {grid.n_points} points: expanding the grid, planning "
                       "its packs ...", err=True)
        note = "" if address is None else f"; counted on this machine, not the cluster at {address}"
        if grid.resources.gpus_per_trial > 0:
            note += "; GPUs are not looked for: packs as on CPUs"
        for line in describe_plan(grid, out, note=note, growth=grows,
                                  slots=local_slots(grid.resources.cpus_per_trial, num_cpus)):
            click.echo(line)
        return
    _RUNNING.update(grid=grid, out=out)
    # one writer per folder, from before the first write until exit (released by the kernel
    # if this process is killed)
    folder_lock = FolderLock(out)
    try:
        folder_lock.acquire()
    except FolderBusy as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"{out}: cannot lock ({e.strerror or e})")
    try:
        def prepare() -> None:
            # the first writes: once Ray is up and can take a trial (an address that does
            # not answer, or a cluster without a node for one trial, leaves nothing written)
            try:
                grew = prepare_out(grid, out)    # again, now that no other run can write
            except ConfigError as e:
                _fail(str(e))
            for line in grew:     # a grid that grows the folder: what its grid.json gains
                click.echo(f"memgrid: {out}: {line}", err=True)
            for line in repair(out):      # damaged or half-written parts go aside
                click.echo(f"memgrid: {line}", err=True)
            _merge_first(out)

        from .run.driver import run_grid  # Ray is imported inside, once the input is good

        try:
            summary = run_grid(grid, out, address=address, num_cpus=num_cpus, quiet=quiet,
                               started=launch_time(), names=names, prepare=prepare,
                               tracking=tracking)
        except ConfigError as e:     # the address or the cluster's resources: nothing trained
            _fail(str(e))
        missing = summary["points"] - summary["done"] - summary["left_out"]
        if not missing and not summary["failed_trials"]:
            _compact_after_run(out)   # every point stored: its parts into a few, still locked
    finally:
        folder_lock.release()
    left = (f", {summary['left_out']} past settled limits left out (walk)"
            if summary["left_out"] else "")
    click.echo(f"{out}: {summary['done']}/{summary['points']} points stored "
               f"({summary['trained']} trained now, {summary['done_before']} before{left})"
               + (f"; {missing} missing: run the same command again to finish them" if missing else ""))
    if summary["done"]:
        click.echo(f"analyse it: memgrid analyze {out}")
    if summary["failed_trials"] or missing:
        sys.exit(1)


@main.command()
@click.argument("results", metavar="RESULTS")
def status(results):
    """What a results folder holds: points done and missing, stop reasons."""
    grid, points = _results_grid(results, required=True)
    _warn_damaged(results)
    if grid.tune_lr is not None:     # its points' ids follow from the tuning run's choice
        from .lr_tuning import grid_points
        from .lr_tuning import tuning_points

        tuned = {p.point_id for p in tuning_points(points, grid.tune_lr)}
        have = done_ids(f"{results.rstrip('/')}/{TUNING}") & tuned
        click.echo(f"{results}/{TUNING}: learning rate tuned on seeds "
                   f"{', '.join(map(str, grid.tune_lr.seeds))}: {len(have)}/{len(tuned)} tuning "
                   "points done")
        points = grid_points(grid, results, partial=True)
    t = read_points(results, columns=["point_id", "stop_reason"]).to_pydict()
    reason = dict(zip(t["point_id"], t["stop_reason"]))
    left = {p.point_id for p in left_out(grid, results, points)}    # past settled limits
    by_net: dict[tuple, Counter] = {}
    for p in points:
        c = by_net.setdefault((p.arch, p.layers, p.cells), Counter())
        c["total"] += 1
        r = reason.get(p.point_id)
        if r:
            c["done"] += 1
            c[r] += 1
        elif p.point_id in left:
            c["past limit"] += 1
    done = sum(c["done"] for c in by_net.values())
    past = (f", {len(left)} past settled limits left out (walk: {grid.walk.describe()})"
            if grid.walk is not None else "")
    click.echo(f"{results}: grid '{grid.name}', {done}/{len(points)} points done{past}, "
               f"{len(points) - done - len(left)} missing")
    saved = saved_packs(results)
    if saved:
        click.echo(f"  packs saved mid-training in {results.rstrip('/')}/{PACKS}/: "
                   f"{len(saved)}; the next run continues each where it stopped")
    reasons = sorted({k for c in by_net.values() for k in c} - {"total", "done", "past limit"})
    reasons += ["past limit"] if left else []
    header = ["arch", "l", "c", "done", "total"] + reasons
    rows = [[a, l, c, cnt["done"], cnt["total"]] + [cnt[r] for r in reasons]
            for (a, l, c), cnt in sorted(by_net.items())]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for r in [header] + rows:
        click.echo("  ".join(str(x).rjust(w) for x, w in zip(r, widths)))


@main.command()
@click.argument("results", metavar="RESULTS")
@click.option("--out", help="folder for report.md and the figures [default: RESULTS/report]")
@click.option("--threshold", type=float, default=THRESHOLD, show_default=True,
              help="mean loss below which a position counts as memorized")
@click.option("--budget-check", "budget_check", multiple=True, metavar="FOLDER",
              help="a results folder of some of the run's configurations trained again at twice "
                   "its budget or more: a limit it leaves within its seeds' spread is marked "
                   "converged (repeatable)")
def analyze(results, out, threshold, budget_check):
    """Figures, limits, the MC check and the paper's claims from a results folder (also one
    still being written, or one covering part of a grid): writes report.md."""
    if not (0 < threshold < math.inf):
        _fail(f"command line: --threshold: must be > 0, got {threshold}")
    if "://" not in results and not Path(results).is_dir():
        _fail(f"{results}: no such results folder")
    _results_grid(results, required=False)
    out = _report_folder(results, out)
    _warn_damaged(results)
    from .analysis import write_report

    with stoppable():
        try:
            path = write_report(results, out, threshold=threshold,
                                budget_check=list(budget_check) or None)
        except ValueError as e:                      # a check folder that does not fit
            _fail(str(e))
        except KeyboardInterrupt:
            click.echo(f"memgrid: interrupted: {out}: the report is not finished; run the same "
                       "command again", err=True)
            sys.exit(exit_status())
        except OSError as e:
            _fail(f"{out}: cannot write the report ({e.strerror or e}); give --out FOLDER")
    click.echo(f"report: {path}")


def _report_folder(results: str, out: str | None) -> str:
    """Where `analyze` writes its report: `out`, or RESULTS/report for a local folder; one line
    and exit status 2 where it cannot (a URI without --out, a symbolic link to nothing, a
    folder that cannot be written, one inside the results' tables)."""
    if out == "":
        _fail("command line: --out: empty; give a folder")
    if out is None:
        if "://" in results:
            _fail(f"command line: --out: required for results at a URI ({results}): the "
                  "folder for report.md and the figures")
        out = f"{results.rstrip('/')}/report"
        flag = f"{results}: "
    else:
        flag = "command line: --out: "
    try:
        check_link(out)
    except ConfigError as e:
        _fail(str(e))
    if "://" in out:
        _fail(f"{flag}{out}: the report goes to a local folder")
    path = Path(out)
    if path.exists() and not path.is_dir():
        _fail(f"{flag}{out}: a file, not a folder")
    above = path
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        _fail(f"{flag}{out}: cannot be a folder: {above} is a file")
    if not os.access(above, os.W_OK | os.X_OK):
        _fail(f"{flag}{above} is not writable: give --out FOLDER elsewhere")
    if "://" not in results:
        tables = [Path(results).resolve() / t for t in (*TABLES, PACKS)]
        if any(path.resolve() == t or t in path.resolve().parents for t in tables):
            _fail(f"{flag}{out}: inside the table folders of {results}: give --out FOLDER "
                  "elsewhere")
    return out


def _compact(results: str, *, changed_only: bool = False, err: bool = False) -> None:
    """compact of `results` and of its tuning run's folder where it has one, holding the
    folder's lock: one line each on stdout (`err`: stderr; `changed_only`: where parts were
    merged), repair's lines on stderr."""
    for uri in (results, f"{results.rstrip('/')}/{TUNING}"):
        if uri != results:
            try:
                check_results(uri)
            except ValueError:      # no tuning run
                continue
        s = compact_folder(uri)
        for line in s["repaired"]:
            click.echo(f"memgrid: {line}", err=True)
        b, a = s["parts_before"], s["parts_after"]
        if b != a or not changed_only:
            click.echo(f"{uri}: {b['points']} + {b['curves']} parts (points + curves) -> "
                       f"{a['points']} + {a['curves']}, {s['points']} points, {s['seconds']:.1f} s",
                       err=err)


def _merge_first(out: str) -> None:
    """A resumed run's folder, or its tuning run's, holding more than MERGE_FIRST_PARTS parts:
    compacted before training (a line on stderr), since each of the run's reads of the folder
    opens every part."""
    many = {uri: n for uri in (out, f"{out.rstrip('/')}/{TUNING}")
            if (n := len(part_names(uri, ""))) > MERGE_FIRST_PARTS}
    for uri, n in many.items():
        click.echo(f"memgrid: {uri}: {n} points parts: merging them first (memgrid compact) ...",
                   err=True)
    if many:
        _compact(out, changed_only=True, err=True)


def _compact_after_run(out: str) -> None:
    """The end of a `memgrid run` that stored every point: compact its folder. A compaction
    that fails leaves the folder as readable as before: a warning, not a failed run."""
    try:
        _compact(out, changed_only=True)
    except READ_ERRORS as e:
        click.echo(f"memgrid: warning: {out}: not compacted ({first_line(e)}); every point "
                   f"is stored; `memgrid compact {out}` tries again", err=True)


@main.command()
@click.argument("results", metavar="RESULTS")
def compact(results):
    """Merge the part files of a results folder (one per pack and flush: thousands in a large
    grid) into a few, the same rows. Safe to stop at any moment; refused while a `memgrid run`
    writes the folder. `memgrid run` does it itself once every point is stored."""
    try:
        check_results(results)
    except ValueError as e:
        _fail(str(e))
    folder_lock = FolderLock(results)
    try:
        folder_lock.acquire()
    except FolderBusy as e:
        _fail(f"{results}: a memgrid run is writing this results folder ({e.holder}); compact "
              "it once that run has ended")
    except OSError as e:
        _fail(f"{results}: cannot lock ({e.strerror or e})")
    try:
        with stoppable():
            _compact(results)
    except KeyboardInterrupt:
        click.echo(f"memgrid: interrupted: {results}: compaction stopped; every point reads "
                   "as before; run it again", err=True)
        sys.exit(exit_status())
    except READ_ERRORS as e:
        click.echo(f"memgrid: error: {results}: compaction stopped ({first_line(e)}); "
                   "every point reads as before; run it again", err=True)
        sys.exit(1)
    finally:
        folder_lock.release()


@main.command("cells")
@click.argument("grid_file", required=False, metavar="[GRID]")
@click.option("--layers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="l, for the parameter count")
@click.option("--cells", "width", type=click.IntRange(1, 4096), default=4, show_default=True,
              help="c, units per layer, for N and the parameter count")
def cells_command(grid_file, layers, width):
    """The cells a grid can use: the built-in ones and those GRID names by import path, each
    with N (the numbers its state holds) for l layers of c units, its parameter count, and the
    code path that trains it on this machine's CPU."""
    from . import fast
    from .cells import CELLS
    from .grid_file import load_grid
    from .user_cells import source_of

    user = ()
    if grid_file:
        try:
            user = load_grid(grid_file).user_cells
        except ConfigError as e:
            _fail(str(e))
    names = [n for n in CELLS if source_of(n) is None] + [s.name for s in user]
    header = ["arch", "name", f"N (l={layers}, c={width})", "params", "trained by", "from"]
    rows = []
    for n in names:
        cell = CELLS[n]
        path = fast.path_name(n, "cpu")
        kind = ("C kernel" if path.startswith("c-") else "autograd") + f" ({path})"
        src = source_of(n)
        rows.append([n, cell.label, cell.units(width) * layers, cell.count(layers, width), kind,
                     src.spec if src else "memgrid"])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for r in [header] + rows:
        click.echo("  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip())


from .run.launch import launch as _launch  # noqa: E402 - registered last: `memgrid launch`

main.add_command(_launch)

if __name__ == "__main__":
    main()
