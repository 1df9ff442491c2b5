"""Ray Tune: one trial per pack. The one module that imports Ray.

The driver expands the grid, drops the points the results folder already holds, cuts the rest
into packs and hands them to a Tune grid search over packs. Each trial trains its pack with
:class:`~memgrid.train.PackTrainer`, writes finished points to the results folder as they stop
(every `FLUSH_S` at most), and checkpoints the pack's state with each write so that a retried
trial continues where it was. A trial starts by reading which of its points are already stored
(a write may have landed after its last checkpoint): every point is stored exactly once.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from . import store
from .config import GATES, Grid, Point, Resources

# Tune's legacy output with verbose=0 prints nothing: memgrid shows its own progress line
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# packs checkpoint with every write of finished points; Tune's notice about frequent
# experiment snapshots is expected here and says nothing to act on
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

FLUSH_S = 10.0
"""seconds between writes of finished points (a kill loses at most this much finished work)"""
CHECKPOINT_S = 60.0
"""seconds between checkpoints of a pack that has nothing to write"""
REPORT_S = 2.0
"""seconds between a trial's reports to Tune (Tune handles a few hundred per second in all)"""
K_CAP = {"cpu": 256, "cuda": 4096}
"""largest pack: throughput stops growing past K ~ 128-1024 on CPU (PERF_NOTES)"""


# ---------------------------------------------------------------------------------------------
# Packs.


def member_bytes(p: Point) -> int:
    """Rough peak memory of one pack member while training (activations kept for backward,
    data generation temporaries, the evaluation set)."""
    g = GATES.get(p.arch, 1)
    T = p.q_hi
    train = T * p.layers * p.cells * p.batch_size * 4 * (g + 3) * 2
    data = p.batch_size * T * 24
    evals = p.eval_size * T * 5 + p.eval_size * p.cells * (g + 3) * 4 * 2
    return train + data + evals


def pack_id(points: list[Point]) -> str:
    """Names the pack's part files: the same points give the same id on every run."""
    blob = ",".join(sorted(p.point_id for p in points))
    return "pack-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def plan_packs(points: list[Point], pack: int | str, slots: int, *, device: str = "cpu",
               mem_per_slot: float = 4e9) -> list[list[Point]]:
    """Cut points into packs of points that may share one (same `pack_key`).

    `pack`: an int caps the pack size (1 = one trial per point); `auto` takes packs as large as
    `mem_per_slot` and K_CAP allow, but small enough that every one of `slots` concurrent
    trials gets work. Members are dealt round-robin so the packs of a group last alike.
    """
    groups: dict[tuple, list[Point]] = {}
    for p in points:
        groups.setdefault(p.pack_key, []).append(p)
    packs = []
    for members in groups.values():
        if pack == "auto":
            k = min(K_CAP.get(device, 256), max(1, int(mem_per_slot // member_bytes(members[0]))),
                    max(1, math.ceil(len(points) / max(slots, 1))))
        else:
            k = int(pack)
        n = math.ceil(len(members) / k)
        packs.extend(members[i::n] for i in range(n))
    return packs


# ---------------------------------------------------------------------------------------------
# The trainable (runs in a Ray worker).


def _max_seq(parts: list[str]) -> int:
    return max((int(p.rsplit("-", 1)[1]) for p in parts), default=-1)


def pack_trial(config: dict) -> None:
    """Tune function trainable: train one pack, write its points, checkpoint as it goes."""
    import torch
    from ray import tune

    from .train import PackTrainer

    points = [Point(**d) for d in config["pack"]["points"]]
    uri, pid = config["out"], config["pack"]["pack_id"]
    torch.set_num_threads(max(1, int(config["cpus"])))
    device = "cuda" if config["gpus"] > 0 and torch.cuda.is_available() else "cpu"

    if points[0].arch == "esn":  # fitted in one pass (memgrid.esn): one part, no checkpoint;
        from .esn import fit_esn_pack   # a retried trial rewrites the same part

        rows, curves = fit_esn_pack(points, device=device, grid_name=config["grid"], pack_id=pid)
        store.write_points(uri, f"{pid}-0000", rows, curves)
        stops = Counter(r["stop_reason"] for r in rows)
        tune.report({"points_done": len(rows), "points": len(points), "active": 0, "epoch": 0,
                     **{f"stop_{k}": v for k, v in stops.items()}})
        return

    trainer = PackTrainer(points, device=device, grid_name=config["grid"], pack_id=pid)
    ckpt = tune.get_checkpoint()
    if ckpt is not None:  # a retried trial: continue from the last checkpoint
        with ckpt.as_directory() as d:
            trainer.load_state_dict(torch.load(Path(d) / "pack.pt", weights_only=True))
    stored = store.part_names(uri, pid + "-")   # written after that checkpoint, or before a crash
    done = store.read_point_ids_of_parts(uri, stored) if stored else set()
    trainer.drop(done)
    trainer.finished = [f for f in trainer.finished if f[0]["point_id"] not in done]
    seq = _max_seq(stored) + 1
    stops: Counter = Counter()
    n_written = len(done)
    last_write = last_ckpt = time.monotonic()

    def write() -> None:
        nonlocal seq, n_written, last_write
        rows, curves = trainer.pop_finished()
        store.write_points(uri, f"{pid}-{seq:04d}", rows, curves)
        seq += 1
        n_written += len(rows)
        stops.update(r["stop_reason"] for r in rows)
        last_write = time.monotonic()

    while True:
        if not trainer.done:
            trainer.run(max_seconds=REPORT_S)
        now = time.monotonic()
        wrote = bool(trainer.finished) and (trainer.done or now - last_write >= FLUSH_S)
        if wrote:
            write()
        metrics = {"points_done": n_written, "points": len(points), "active": len(trainer.active),
                   "epoch": trainer.epoch, **{f"stop_{k}": v for k, v in stops.items()}}
        if trainer.done and not trainer.finished:
            tune.report(metrics)
            return
        if wrote or now - last_ckpt >= CHECKPOINT_S:
            if trainer.finished:   # a checkpoint must not hold finished-but-unwritten points
                write()
                metrics.update(points_done=n_written, **{f"stop_{k}": v for k, v in stops.items()})
                if trainer.done:
                    tune.report(metrics)
                    return
            with tempfile.TemporaryDirectory() as d:
                torch.save(trainer.state_dict(), Path(d) / "pack.pt")
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
            last_ckpt = now
        else:
            tune.report(metrics)


# ---------------------------------------------------------------------------------------------
# The driver.


class Progress:
    """Points done / total and stop reasons, on one line (a tty) or a line every 15 s (a log).

    Fed from Tune's results (the latest of each trial), so the driver holds counts, not curves.
    """

    def __init__(self, name: str, total: int, done_before: Counter, stream=sys.stderr):
        self.name, self.total, self.before = name, total, done_before
        self.latest: dict[str, dict] = {}
        self.stream, self.tty = stream, stream.isatty()
        self.t0 = self.last = time.monotonic()

    def update(self, trial_id: str, result: dict) -> None:
        self.latest[trial_id] = result
        now = time.monotonic()
        if now - self.last >= (0.5 if self.tty else 15.0):
            self.show()

    def counts(self) -> tuple[int, Counter]:
        stops = Counter(self.before)
        for r in self.latest.values():
            stops.update({k[5:]: v for k, v in r.items() if k.startswith("stop_") and isinstance(v, int)})
        return sum(stops.values()), stops

    def show(self, final: bool = False) -> None:
        self.last = time.monotonic()
        done, stops = self.counts()
        el = self.last - self.t0
        new = done - sum(self.before.values())
        left = self.total - done
        eta = f", ~{_fmt_s(el / new * left)} left" if new and left and not final else ""
        reasons = " ".join(f"{k} {v}" for k, v in sorted(stops.items()))
        running = sum(1 for r in self.latest.values() if r.get("active", 0) > 0)
        line = (f"[{self.name}] {done}/{self.total} points  ({reasons or 'none yet'})  "
                f"{running} trials running  {_fmt_s(el)}{eta}")
        if self.tty:
            print("\r\033[K" + line, end="\n" if final else "", file=self.stream, flush=True)
        else:
            print(line, file=self.stream, flush=True)


def _fmt_s(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


def _start_ray(address: str | None, num_cpus: int | None) -> None:
    import logging

    import ray
    if ray.is_initialized():
        return
    # ray.init announces token authentication on every start; it stays on, the notice goes
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    # "local": a fresh embedded Ray, never a stale /tmp/ray cluster left by an earlier session
    kwargs = dict(address=address or "local", logging_level=logging.WARNING, log_to_driver=False,
                  configure_logging=True)
    if address is None:
        kwargs.update(include_dashboard=False, num_cpus=num_cpus)
    ray.init(**kwargs)


def run_grid(grid: Grid, out: str, *, address: str | None = None, num_cpus: int | None = None,
             max_failures: int = 3, quiet: bool = False) -> dict:
    """Run every point of `grid` missing from `out`. Returns a summary dict.

    `address`: join a running Ray cluster (None: an embedded, in-process Ray). The results
    folder must already hold this grid's `grid.json` (see `cli.prepare_out`).
    """
    import ray
    from ray import tune

    points = grid.points()
    ids = {p.point_id for p in points}
    done = store.done_ids(out) & ids
    todo = [p for p in points if p.point_id not in done]
    before = stop_counts(out, ids)
    summary = {"points": len(points), "done_before": len(done), "done": len(done),
               "trained": 0, "packs": 0, "failed_trials": 0, "stops": dict(before)}
    if not todo:
        return summary

    _start_ray(address, num_cpus)
    try:
        res: Resources = grid.resources
        cluster = ray.cluster_resources()
        gpus = res.gpus_per_trial if cluster.get("GPU", 0) > 0 else 0.0
        if res.gpus_per_trial > 0 and gpus == 0 and not quiet:
            print(f"[{grid.name}] no GPU in this Ray cluster: running on CPU", file=sys.stderr)
        if gpus > 0:
            slots = int(cluster["GPU"] / gpus)
            device, mem = "cuda", 40e9 * gpus  # a share of a GPU's memory; see member_bytes
        else:
            slots = max(1, int(cluster.get("CPU", 1) // res.cpus_per_trial))
            device, mem = "cpu", 0.5 * cluster.get("memory", 8e9) / slots
        packs = plan_packs(todo, res.pack, slots, device=device, mem_per_slot=mem)
        summary["packs"] = len(packs)
        trial_space = [{"points": [p.to_dict() for p in pk], "pack_id": pack_id(pk)} for pk in packs]
        progress = Progress(grid.name, len(points), before)

        class _Callback(tune.Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                if not quiet:
                    progress.update(trial.trial_id, result)

        storage = out if "://" in out else str(Path(out).absolute())
        trainable = tune.with_resources(pack_trial, {"cpu": res.cpus_per_trial, "gpu": gpus})
        tuner = tune.Tuner(
            trainable,
            param_space={"pack": tune.grid_search(trial_space), "out": storage, "grid": grid.name,
                         "cpus": res.cpus_per_trial, "gpus": gpus},
            tune_config=tune.TuneConfig(reuse_actors=True),
            run_config=tune.RunConfig(
                name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}",
                storage_path=f"{storage.rstrip('/')}/_tune",
                failure_config=tune.FailureConfig(max_failures=max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=[_Callback()], verbose=0),
        )
        results = tuner.fit()
        summary["failed_trials"] = sum(1 for r in results if r.error is not None)
    finally:
        if address is None:
            ray.shutdown()
    stops = stop_counts(out, ids)
    summary.update(done=sum(stops.values()), stops=dict(stops))
    summary["trained"] = summary["done"] - summary["done_before"]
    if not quiet:
        progress.latest.clear()
        progress.before = stops
        progress.show(final=True)
    return summary


def stop_counts(out: str, ids: set[str]) -> Counter:
    """Stop reasons of the stored points among `ids`."""
    t = store.read_points(out, columns=["point_id", "stop_reason"])
    return Counter(s for i, s in zip(t.column("point_id").to_pylist(),
                                     t.column("stop_reason").to_pylist()) if i in ids)
