"""The driver of a run: Ray started (an embedded Ray, bound to loopback) or joined, the points
missing from the results folder cut into packs and handed to Tune, one trial per pack.

The driver expands the grid, drops the points the results folder already holds, cuts the rest
into packs (memgrid.packs) and runs one Tune trial per pack (memgrid.run.trial); a grid with a
`walk:` section goes in rounds, each the next band of positions of the configurations whose
limit is not settled yet (memgrid.walk). It checks what it asks of Ray before a trial starts
(memgrid.run.address), ends on SIGINT, SIGTERM or SIGHUP with the points stored so far kept
(memgrid.processes.Interrupted), and, for an embedded Ray, ends every process it started
before it returns, however it ends.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

from ..config import Grid, Point, Resources
from ..lr_tuning import LRTuning, tuned_points, tuning_points
from ..packs import pack_cost, pack_id, pack_spec, plan_packs, spec_pack_id
from ..processes import (SIGNALS, Interrupted, catch_signals, catching, descendants, end_processes,
                         signals_held)
from ..results import TUNING, done_ids, stop_counts, stops_of
from .address import check_address, check_fits
from .plan import NOTICE_POINTS, cpu_slot_bytes
from .progress import Progress, plural, say
from .tracking import callbacks as tracking_callbacks
from .trial import check_saved, forget_saved, pack_trial, resume_saved

def start_ray(address: str | None, num_cpus: int | None) -> None:
    """ray.init: an embedded Ray (address None) on loopback only, or join `address`."""
    import logging

    import ray
    if ray.is_initialized():
        return
    # ray.init announces token authentication on every start; it stays on, the notice goes
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    # "local": a fresh embedded Ray, never a stale /tmp/ray cluster that another run left
    kwargs = dict(address=address or "local", logging_level=logging.WARNING, log_to_driver=False,
                  configure_logging=True)
    if address is not None:
        _init(ray, kwargs)
        return
    # Loopback: with node address 127.0.0.1 every Ray server binds to 127.0.0.1 (GCS, raylet,
    # workers, dashboard agent, runtime env agent, metrics). ray.init replaces a loopback
    # _node_ip_address by the machine's outward address unless Ray is told that this node is
    # no cluster (its ENABLE_RAY_CLUSTER switch, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which
    # laptops get by default); a cluster of one node needs no other address.
    # No dashboard, and its node agent minimal, as where ray[default] is not installed: the
    # agent's HTTP server (jobs, metrics, events) serves nothing an embedded run uses, and the
    # raylet waits for the whole agent to load before it takes work (about 3 s of each start).
    from ray._private import ray_constants
    from ray._private import utils as ray_utils

    private_auth_token()
    kwargs.update(include_dashboard=False, num_cpus=num_cpus, _node_ip_address="127.0.0.1")
    cluster, deps = ray_constants.ENABLE_RAY_CLUSTER, ray_utils.get_dashboard_dependency_error
    ray_constants.ENABLE_RAY_CLUSTER = False
    ray_utils.get_dashboard_dependency_error = lambda: ImportError("embedded: a minimal agent")
    try:
        _init(ray, kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster
        ray_utils.get_dashboard_dependency_error = deps


def private_auth_token() -> Path | None:
    """The token file an embedded Ray authenticates its clients with (``$RAY_AUTH_TOKEN_PATH``,
    else ``~/.ray/auth_token``), readable by its owner only: made here before Ray starts (mode
    0600, its folder 0700; ray.init would make it readable by every user of the machine, who
    could then submit jobs to this run's Ray), or narrowed to 0600 where it is there. Nothing
    where the token comes from ``$RAY_AUTH_TOKEN`` or authentication is off
    (``RAY_AUTH_MODE=disabled``). Returns the file, or None."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_MODE", "token") != "token":
        return None
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        if path.exists():
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)
            return path
        from ray._private.authentication.authentication_token_generator import (
            generate_new_authentication_token)

        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(generate_new_authentication_token())
    except FileExistsError:         # another run made it meanwhile
        return private_auth_token()
    except OSError:                 # not ours to change: Ray does as it does
        return None
    return path


def _init(ray, kwargs: dict) -> None:
    """ray.init, with a SIGTERM during it ending the run like one at any other moment: ray.init
    puts its own handler in place first thing, which exits at once."""
    try:
        ray.init(**kwargs)
    except SystemExit as e:
        if e.code == signal.SIGTERM:
            SIGNALS.append(signal.SIGTERM)
            raise Interrupted(signal.SIGTERM) from None
        raise


def _gpu_bytes(local: bool, default: float = 40e9) -> float:
    """Usable memory of one GPU: the smallest this driver sees when Ray is embedded (the
    trials' GPUs are this machine's), else `default`."""
    if local:
        try:
            import torch
            if torch.cuda.is_available():
                return 0.9 * min(torch.cuda.get_device_properties(i).total_memory
                                 for i in range(torch.cuda.device_count()))
        except (ImportError, RuntimeError):
            pass
    return default


def run_grid(grid: Grid, out: str, **kwargs) -> dict:
    """Run every point of `grid` missing from `out` (keywords: :func:`run_points`). Returns a
    summary dict.

    A grid with `tune_lr` runs arch by arch, in the order of its arch axis, each in two phases
    (memgrid.lr_tuning): the arch's tuning run into `<out>/tuning` (every candidate learning
    rate on the tuning seeds, successive halving inside each configuration's pack), then its
    own points at the chosen rates into `out`. A long run stopped part way leaves whole archs
    measured; every phase resumes: a second run skips what either phase stored. The points of
    a configuration whose tuning a failed trial left incomplete wait for the next run; the
    rest of the grid goes on. An embedded Ray (`address` None) starts with the first run that
    trains and serves every phase and round until this returns or raises.
    """
    if grid.n_points >= NOTICE_POINTS and not kwargs.get("quiet"):
        say(f"[{grid.name}] {grid.n_points} points: expanding the grid, reading what {out} "
            "holds ...")
    held = HeldRay() if kwargs.get("address") is None else None
    try:
        return _run_grid(grid, out, held=held, **kwargs)
    finally:
        if held is not None and held.keep is not None:
            with signals_held():
                _end_ray(held.keep)


class HeldRay:
    """The embedded Ray of one :func:`run_grid`, kept up across its runs (each arch's phases,
    each round of a walk): the first of them that trains starts it, and run_grid ends it.
    `keep`: the processes there before it started (None: not started)."""

    def __init__(self) -> None:
        self.keep: set[int] | None = None


def _run_grid(grid: Grid, out: str, **kwargs) -> dict:
    if grid.tune_lr is None:
        return run_walk(grid, grid.points(), out, lr_source=grid.lr_source, **kwargs)
    every = grid.points()
    archs = list(dict.fromkeys(p.arch for p in every))
    total = {"points": len(every), "done_before": 0, "done": 0, "trained": 0, "packs": 0,
             "failed_trials": 0, "left_out": 0, "stops": {}}
    for arch in archs:
        stage = [p for p in every if p.arch == arch]
        named = f"{arch}: " if len(archs) > 1 else ""
        first = run_points(grid, tuning_points(stage, grid.tune_lr),
                           f"{out.rstrip('/')}/{TUNING}", halving=grid.tune_lr,
                           label=f"{named}tuning lr", **kwargs)
        kwargs.pop("prepare", None)     # done by the first phase
        # a configuration whose tuning failed (a trial Tune gave up on) has no rate yet: its
        # points wait for the next run; the arch's others and the next archs go on
        points, waiting = tuned_points(grid, out, stage)
        if waiting and not kwargs.get("quiet"):
            say(f"[{grid.name}] {named}{plural(len(waiting), 'point')} wait for a learning rate: "
                "a failed tuning trial left their configurations' tuning incomplete")
        done = run_walk(grid, points, out, lr_source=grid.lr_source,
                        label=arch if named else "", **kwargs)
        total["failed_trials"] += first["failed_trials"]
        for k in ("done_before", "done", "trained", "packs", "failed_trials", "left_out"):
            total[k] += done[k]
        for k, n in done["stops"].items():
            total["stops"][k] = total["stops"].get(k, 0) + n
    return total


def run_walk(grid: Grid, points: list[Point], out: str, **kwargs) -> dict:
    """`points` of `grid` trained into `out`: all of them (:func:`run_points`), or for a grid
    with a `walk:` section round by round, each round the next band of positions of every
    configuration whose limit is not settled yet (memgrid.walk), until none is left. Each round
    is a run of its own (:func:`run_points`, on run_grid's one embedded Ray), so that a stopped
    walk resumes from what the folder stores. A round that stores nothing (its trials failed) ends
    the walk: the next run goes on from there. The summary's `left_out` counts the points past
    settled limits; a pack saved mid-training that holds only those (a run stopped before the
    walk settled them, or under another walk) is dropped."""
    if grid.walk is None:
        return {**run_points(grid, points, out, **kwargs), "left_out": 0}
    from ..walk import plan, stored_losses

    ids = {p.point_id for p in points}
    label, quiet = kwargs.pop("label", ""), kwargs.get("quiet", False)
    named = f"{label}: " if label else ""
    todo = plan(points, stored_losses(out), grid.walk)
    if not todo.next and kwargs.get("prepare") is not None:
        kwargs.pop("prepare")()     # grid.json and a repair, as run_points would
        todo = plan(points, stored_losses(out), grid.walk)
    summary = {"points": len(points), "done_before": len(done_ids(out) & ids), "trained": 0,
               "packs": 0, "failed_trials": 0}
    while todo.next:
        span = todo.span()
        if not quiet:
            say(f"[{grid.name}] {named}walk: {_settled(todo)}; next {span} of the others "
                f"({plural(len(todo.next), 'point')})")
        done = run_points(grid, todo.next, out, label=named + span, **kwargs)
        kwargs.pop("prepare", None)     # done by the first round
        for k in ("trained", "packs", "failed_trials"):
            summary[k] += done[k]
        todo = plan(points, stored_losses(out), grid.walk)
        if not done["trained"]:     # its trials failed: the next run goes on from here
            break
    if not quiet and todo.left_out:
        say(f"[{grid.name}] {named}walk: {_settled(todo)}; "
            f"{plural(len(todo.left_out), 'point')} past their limits left out")
    if todo.left_out and not todo.next:     # a pack a run saved before the walk settled them
        forget_saved(out, {p.point_id for p in todo.left_out})
    stops = stop_counts(out, ids)
    return {**summary, "done": sum(stops.values()), "left_out": len(todo.left_out),
            "stops": dict(stops)}


def _settled(todo) -> str:
    return f"{todo.settled} of {plural(todo.configurations, 'configuration')} settled"


def run_points(grid: Grid, points: list[Point], out: str, *, address: str | None = None,
               num_cpus: int | None = None, max_failures: int = 3, rounds: int = 3,
               quiet: bool = False,
               started: float | None = None, names: dict[str, str] | None = None,
               prepare=None, halving: LRTuning | None = None, lr_source: str = "grid",
               label: str = "", tracking: list[tuple[str, str]] = (),
               held: HeldRay | None = None) -> dict:
    """Train every one of `points` (of `grid`) missing from `out`. Returns a summary dict.

    `address`: join a running Ray cluster (None: an embedded Ray on loopback, ended with every
    process it started when this returns or raises; "local": the Ray this process already
    runs, left running). The results folder must hold this grid's `grid.json` (see
    `memgrid.run.preflight.prepare_out`) once `prepare` has run. `prepare()`: the caller's first writes into the
    folder, called once Ray is up and able to take a trial, so that an address or a cluster
    that cannot run the grid leaves nothing written. `started`: time.monotonic() at launch,
    where the progress clock starts. `names`: how the user set `cpus_per_trial` /
    `gpus_per_trial`, for the message when no node can take a trial (default: the flags).

    Raises ConfigError (nothing trained) when the address does not answer or no node can take
    a trial; :class:`Interrupted` (or KeyboardInterrupt) when a signal ends the run: the points
    stored until then stay.

    `max_failures`: Tune's retries of a failed trial. `rounds`: the most Tune runs; each after the
    first trains the points left by trials that Tune gave up on when their worker was lost
    (lost_worker).

    `halving` (a tuning run): all the candidates of a configuration share one pack, where
    successive halving compares them. `lr_source`: recorded in every row. `label`: shown
    after the grid's name in the progress line. `held` (embedded Ray only): the Ray is
    started once into it (or is already up there) and left running; its owner ends it.
    """
    ids = {p.point_id for p in points}
    todo, before = _missing(out, points, ids)
    if not todo and prepare is not None:    # nothing to train, unless a repair finds some
        prepare()
        prepare = None
        todo, before = _missing(out, points, ids)
    summary = {"points": len(points), "done_before": len(points) - len(todo),
               "done": len(points) - len(todo), "trained": 0, "packs": 0, "failed_trials": 0,
               "stops": dict(before)}
    if not todo:
        return summary

    embedded = address is None
    up = embedded and held is not None and held.keep is not None    # held up by the caller

    def say_starting() -> None:
        if not quiet:
            where = ("" if up else "; starting Ray ...") if embedded else \
                f"; on the Ray cluster at {address}"
            say(f"[{grid.name}] {len(todo)} of {plural(len(points), 'point')} to train{where}")

    if embedded:
        say_starting()    # at once: importing Ray and torch and starting Ray take 5-25 s
    keep = set()
    if embedded:
        keep = held.keep if up else descendants()
        if held is not None:
            held.keep = keep    # before Ray starts: its owner ends whatever of it started
    progress = None
    try:
        res: Resources = grid.resources
        cluster, gpus = _ray_up(res, address, num_cpus, names)
        if not embedded:    # after the checks: an address or a cluster that cannot run the
            say_starting()  # grid ends in one line
        if prepare is not None:
            prepare()
            todo, before = _missing(out, points, ids)
            summary.update(done_before=len(points) - len(todo), done=len(points) - len(todo),
                           stops=dict(before))
            if not todo:
                return summary
        if res.gpus_per_trial > 0 and gpus == 0 and not quiet:
            print(f"[{grid.name}] no GPU in this Ray cluster: running on CPU", file=sys.stderr)
        slots, device, mem = _slots(cluster, res.cpus_per_trial, gpus, local=embedded)
        if len(todo) >= NOTICE_POINTS and not quiet:
            say(f"[{grid.name}] Ray is up: cutting {len(todo)} points into packs ...")
        for attempt in range(max(1, rounds)):    # see lost_worker
            packs, stored = _round_packs(grid.name, out, todo, res.pack, slots, device, mem,
                                         halving, quiet)
            if not attempt:
                summary["packs"] = len(packs)
            progress = Progress(f"{grid.name} ({label})" if label else grid.name, len(points),
                                before, packs, slots, started, stored_before=stored)
            tuner = _tuner(grid, out, packs, gpus, attempt=attempt, max_failures=max_failures,
                           lr_source=lr_source, halving=halving,
                           progress=None if quiet else progress, tracking=tracking)
            if len(todo) >= NOTICE_POINTS and not quiet:
                progress.show()     # before Tune's first step, a few seconds away at this size
            failed = [r.error for r in tuner.fit() if r.error is not None]
            summary["failed_trials"] = len(failed)
            todo, before = _missing(out, points, ids)
            lost = sum(1 for e in failed if lost_worker(e))
            if not todo or not lost or attempt == rounds - 1:
                break
            if not quiet:   # Tune gave up on a trial whose node died (see lost_worker)
                its = "its" if lost == 1 else "their"
                say(f"[{grid.name}] {plural(lost, 'trial')} lost {its} worker: another round "
                    f"for the {plural(len(todo), 'point')} left")
    except BaseException:
        if progress is not None and not quiet and progress.tty:
            print(file=sys.stderr, flush=True)     # end the progress line drawn in place
        raise
    finally:
        with signals_held():
            if embedded and held is None:
                _end_ray(keep)
    stops = stop_counts(out, ids)
    summary.update(done=sum(stops.values()), stops=dict(stops))
    summary["trained"] = summary["done"] - summary["done_before"]
    if not quiet:
        progress.trials.clear()
        progress.before = stops
        progress.show(final=True)
    return summary


def _missing(out: str, points: list[Point], ids: set[str]) -> tuple[list[Point], Counter]:
    """The points of `points` (their point_ids: `ids`) that `out` does not hold yet, and the
    stop reasons of those it holds."""
    done = done_ids(out) & ids
    return [p for p in points if p.point_id not in done], stop_counts(out, ids)


def _ray_up(res: Resources, address: str | None, num_cpus: int | None,
            names: dict[str, str] | None) -> tuple[dict, float]:
    """Ray started (`address` None: embedded, with this machine's C kernels built first) or
    joined, once its address answers, and checked to have a node that takes one trial of
    `res` (ConfigError otherwise). Returns Ray's cluster resources and the GPUs per trial it
    gives (0 where the cluster has none)."""
    import ray

    embedded = address is None
    if embedded:    # this machine's workers: build the C kernels once, here
        from .. import fast
        fast.prepare()
    elif address != "local" and not ray.is_initialized():
        check_address(address)
    was_catching = catching()
    start_ray(address, num_cpus)
    if was_catching:
        catch_signals()     # ray.init put sys.exit in place for SIGTERM
    cluster = ray.cluster_resources()
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    gpus = res.gpus_per_trial if cluster.get("GPU", 0) > 0 else 0.0
    where = ("the embedded Ray" + (f" (--num-cpus {num_cpus})" if num_cpus else "")
             if embedded else f"the Ray cluster at {address}")
    check_fits(res.cpus_per_trial, gpus, nodes, where=where, names=names)
    return cluster, gpus


def _end_ray(keep: set[int]) -> None:
    """An embedded Ray shut down, and every process under this one but `keep` ended."""
    ray = sys.modules.get("ray")    # absent if Ctrl-C came while it was imported
    if ray is not None and hasattr(ray, "shutdown"):
        ray.shutdown()
    end_processes(keep)


def _round_packs(name: str, out: str, todo: list[Point], pack, slots: int, device: str,
                 mem: float, halving: LRTuning | None,
                 quiet: bool) -> tuple[list[list[Point]], dict[str, Counter]]:
    """The packs of one round, longest first: those a stopped run saved mid-training (continued
    where their state is good, said on the console) and new ones of the other points of `todo`.
    And per resumed pack, the stop reasons of its points stored before this run, which its
    trial counts too."""
    resumed, fresh = resume_saved(out, todo)   # packs a stopped run saved mid-training
    continued = check_saved(out, resumed)      # the others start afresh
    packs = sorted(resumed + _packs(fresh, pack, slots, device, mem, halving),
                   key=pack_cost, reverse=True)
    if continued and not quiet:
        say(f"[{name}] {plural(len(continued), 'pack')} saved mid-training by an "
            "earlier run: continuing where they were")
    stored = {pack_id(pk): Counter(stops_of(out, [p.point_id for p in pk]).values())
              for pk in resumed}
    return packs, stored


def _tuner(grid: Grid, out: str, packs: list[list[Point]], gpus: float, *, attempt: int,
           max_failures: int, lr_source: str, halving: LRTuning | None,
           progress: Progress | None, tracking: list[tuple[str, str]] = ()):
    """The Tune run of one round: a trial per pack of `packs`, each with `gpus` GPUs, its
    trials' records in `<out>/_tune`, its results shown by `progress` (None: nothing)."""
    from ray import tune

    class _Callback(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            progress.update(trial.trial_id, result, spec_pack_id(trial.config["pack"]))

        def on_trial_complete(self, iteration, trials, trial, **info):
            progress.finish(trial.trial_id)

        def on_step_end(self, iteration, trials, **info):
            progress.step(sum(1 for t in trials if t.status == "RUNNING"))

    res = grid.resources
    storage = out if "://" in out else str(Path(out).absolute())
    trainable = tune.with_resources(pack_trial, {"cpu": res.cpus_per_trial, "gpu": gpus})
    return tune.Tuner(
        trainable,
        param_space={"pack": None, "out": storage, "grid": grid.name,
                     "cpus": res.cpus_per_trial, "gpus": gpus, "lr_source": lr_source,
                     "halving": halving.to_dict() if halving else None,
                     "cells": [s.to_dict() for s in grid.user_cells]},   # their code travels
        tune_config=_one_trial_per_pack([pack_spec(pk) for pk in packs]),
        run_config=tune.RunConfig(
            name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}" + (f"-{attempt}" if attempt else ""),
            storage_path=f"{storage.rstrip('/')}/_tune",
            failure_config=tune.FailureConfig(max_failures=max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=([] if progress is None else [_Callback()])
            + tracking_callbacks(tracking, grid.name), verbose=0),
    )


def _slots(cluster: dict, cpus_per_trial: float, gpus_per_trial: float, *,
           local: bool) -> tuple[int, str, float]:
    """How many packs train at once in `cluster` (ray.cluster_resources()), on which device,
    and the memory each may use (see `packs.member_bytes`)."""
    cpu_slots = int(cluster.get("CPU", 1) // cpus_per_trial)
    if gpus_per_trial > 0:  # fractions put several packs on a GPU; Ray spreads them over all
        slots = max(1, min(int(cluster["GPU"] / gpus_per_trial), cpu_slots))
        return slots, "cuda", _gpu_bytes(local=local) * gpus_per_trial
    slots = max(1, cpu_slots)
    return slots, "cpu", cpu_slot_bytes(cluster.get("memory", 8e9), slots)


def _packs(points: list[Point], pack, slots: int, device: str, mem: float,
           halving: LRTuning | None) -> list[list[Point]]:
    """The packs of `points`: sized by `plan_packs`, or for a tuning run (`halving`) one pack per
    configuration, where successive halving compares its candidates."""
    if halving is None:
        return plan_packs(points, pack, slots, device=device, mem_per_slot=mem)
    groups: dict[tuple, list[Point]] = {}
    for p in points:
        groups.setdefault(p.pack_key, []).append(p)
    return list(groups.values())


def _one_trial_per_pack(specs: list[dict]):
    """A TuneConfig of one trial per pack, each pack a preset config (copied alone), not a grid
    search: Tune deep-copies a grid search's whole list for each trial it makes, quadratic in
    the packs (fig6_rnn's 461: 76 s of the driver before its first trial; 10^5 points: hours)."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return tune.TuneConfig(
        search_alg=BasicVariantGenerator(points_to_evaluate=[{"pack": s} for s in specs]),
        num_samples=len(specs), reuse_actors=True)


def lost_worker(error: BaseException) -> bool:
    """Whether a trial Tune gave up on failed because its worker went (its node died), not
    because its code raised. Tune retries a trial up to ``max_failures`` times, but when a node
    dies the trial's dead actor can report the loss twice, and the second report finds the trial
    already pending its retry and ends it for good (Ray 2.60, ``_process_trial_failure``). So
    `run_points` trains what such trials left in another round (its `rounds`); an exception from
    the training itself (a RayTaskError) ends the run as before."""
    from ray.exceptions import RayActorError, RayTaskError
    if isinstance(error, RayTaskError):
        error = error.as_instanceof_cause()
    return isinstance(error, RayActorError)
