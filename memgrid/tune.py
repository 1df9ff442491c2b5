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

from . import kernels, store
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
CACHE_BYTES = 12e6
"""CPU: a pack's forward activations should stay about this size. Past it a step streams from
memory and throughput per point falls (measured on 2 cores, 2 MB L2 each: the best K keeps
6-25 MB of activations, e.g. rnn 1,5: K ~ 128; 3,10: ~32; 5,20: ~8-16). The C kernel's step
keeps one member's states at a time: its throughput per point is flat past this K."""
MEMBER_BYTES_PER_S = 1.6e9
"""CPU cost model: one point-epoch takes about (forward activation bytes) / this many seconds
at the best K (within 20% for rnn/lstm/gru, l = 1..5, c = 1..20, measured)"""
OP_S = 5e-6
"""CPU cost model: fixed cost of one op (dispatch), whatever K"""


# ---------------------------------------------------------------------------------------------
# Packs.


def _layer_rows(p: Point) -> list[int]:
    """Rows of each layer's fused input column [x; 1; h] (``memgrid.models``)."""
    return [(1 if i == 0 else p.cells) + 1 + p.cells for i in range(p.layers)]


def _activation_bytes(p: Point) -> int:
    """Forward buffers kept for backward, per member and step (``models._Stack``)."""
    g, c, T, B = GATES.get(p.arch, 1), p.cells, p.q_hi, p.batch_size
    per_layer = [(T + 1) * r + (T if g > 1 else 1) * g * c + (3 * T + 2) * c * (p.arch == "lstm")
                 for r in _layer_rows(p)]
    return 4 * B * sum(per_layer)


def member_bytes(p: Point) -> int:
    """Peak memory of one pack member while training, an upper bound (measured RSS per member:
    70-90 % of it on the PyTorch path, rnn/lstm/gru, l = 1..5, c = 1..20; 14-35 % with the C
    kernel's step, which keeps one member's states at a time; benchmarks/README.md): forward
    buffers kept for backward, backward buffers, data generation, the evaluation set and its
    forward. A pack of K members
    needs K times this; plan_packs never puts more members in a pack than its memory allows."""
    if p.arch == "esn":   # states and ridge fit in float64 (memgrid.esn.fit_task, which also
        return 32 * max(8192, p.eval_size) * (p.cells + p.q_hi)    # caps them per chunk)
    g, c, T, B, E = GATES[p.arch], p.cells, p.q_hi, p.batch_size, p.eval_size
    rows = _layer_rows(p)
    backward = 4 * B * (T * (sum(rows) - 2) + g * c + 8 * c)
    data = 4 * B * T * 6
    eval_set = E * (4 * T + T + 12)
    eval_fwd = 4 * E * (sum(2 * r for r in rows) + g * c + 3 * c * (p.arch == "lstm") + 4)
    return int(1.3 * (_activation_bytes(p) + backward + data + eval_set + eval_fwd))


def pack_seconds(p: Point, k: int) -> float:
    """Rough CPU seconds to train a pack of k members like `p` to max_epochs (cost model, for
    balancing packs across slots; relative values matter)."""
    if p.arch == "esn":
        return k * member_bytes(p) / MEMBER_BYTES_PER_S
    n_ops = {"rnn": 10, "gru": 22, "lstm": 24}[p.arch] * p.q_hi * p.layers + 80
    per_epoch = p.steps_per_epoch * (n_ops * OP_S + k * _activation_bytes(p) / MEMBER_BYTES_PER_S)
    return p.max_epochs * per_epoch


def best_k(p: Point, device: str = "cpu") -> int:
    """Pack size at which throughput per point peaks: on CPU, activations of about
    CACHE_BYTES; on a GPU, as large as K_CAP (memory caps it separately)."""
    if device != "cpu":
        return K_CAP.get(device, 4096)
    return int(min(K_CAP["cpu"], max(8, CACHE_BYTES // max(_activation_bytes(p), 1))))


def _deal(members: list[Point], n: int) -> list[list[Point]]:
    """n packs of one group. Members of one length range are dealt round-robin, so that the
    packs last alike; with several (positions past q_min shift it), members are cut in runs
    of rising q_hi instead: a pack pads to its longest member, and runs keep that padding
    small (p = 11..20 in one pack of p = 1..20 would cost up to 1.7x)."""
    if len({p.q_hi for p in members}) == 1:
        return [members[i::n] for i in range(n)]
    ordered = sorted(members, key=lambda p: p.q_hi)
    size, extra = divmod(len(ordered), n)
    out, i = [], 0
    for j in range(n):
        k = size + (j < extra)
        out.append(ordered[i:i + k])
        i += k
    return out


def pack_id(points: list[Point]) -> str:
    """Names the pack's part files: the same points give the same id on every run."""
    blob = ",".join(sorted(p.point_id for p in points))
    return "pack-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def plan_packs(points: list[Point], pack: int | str, slots: int, *, device: str = "cpu",
               mem_per_slot: float = 4e9) -> list[list[Point]]:
    """Cut points into packs of points that may share one (same `pack_key`), longest first.

    `pack`: an int caps the pack size (1 = one trial per point); `auto` sizes packs from the
    networks: as large as `mem_per_slot` (bytes a trial may use, see member_bytes) and K_CAP
    allow and, on CPU, near the size where throughput per point peaks (best_k); then cuts
    groups into more packs while that ends the grid sooner on `slots` concurrent trials (cost
    model pack_seconds). Whatever `pack`, no pack needs more than `mem_per_slot`. Packs come
    longest first: Tune starts trials in this order, which balances the slots.
    """
    dev = device.split(":")[0]
    groups: dict[tuple, list[Point]] = {}
    for p in points:
        groups.setdefault(p.pack_key, []).append(p)
    members = list(groups.values())
    n_packs = []
    for ms in members:
        k_mem = max(1, int(mem_per_slot // max(member_bytes(p) for p in ms)))
        k = min(K_CAP.get(dev, 256), k_mem, best_k(ms[0], dev)) if pack == "auto" else min(int(pack), k_mem)
        n_packs.append(math.ceil(len(ms) / k))

    def cost(pk: list[Point]) -> float:
        return pack_seconds(max(pk, key=lambda q: q.q_hi), len(pk))

    def group_costs(g: int, n: int) -> list[float]:
        return [cost(pk) for pk in _deal(members[g], n)]

    if pack == "auto" and slots > 1:       # more packs per group while the grid ends sooner
        costs = [group_costs(g, n) for g, n in enumerate(n_packs)]
        while True:
            flat = [c for cs in costs for c in cs]
            before = max(max(flat), sum(flat) / slots)
            g = max((g for g in range(len(members)) if n_packs[g] < len(members[g])),
                    key=lambda g: max(costs[g]), default=None)
            if g is None:
                break
            size = math.ceil(len(members[g]) / n_packs[g])   # the next n with smaller packs
            n = math.ceil(len(members[g]) / (size - 1))
            trial = group_costs(g, n)
            rest = [c for h, cs in enumerate(costs) if h != g for c in cs]
            after = max(max(rest + trial), (sum(rest) + sum(trial)) / slots)
            if after >= 0.99 * before:
                break
            n_packs[g] = n
            costs[g] = trial
    packs = [pk for ms, n in zip(members, n_packs) for pk in _deal(ms, n)]
    packs.sort(key=cost, reverse=True)
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
    stored_stops = store.read_stops_of_parts(uri, stored)
    done = set(stored_stops)
    trainer.drop(done)
    trainer.finished = [f for f in trainer.finished if f[0]["point_id"] not in done]
    seq = _max_seq(stored) + 1
    stops: Counter = Counter(stored_stops.values())   # progress counts what a retry found too
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

    if address is None:     # this machine's workers: build the C kernels once, here
        kernels.prepare()
    _start_ray(address, num_cpus)
    try:
        res: Resources = grid.resources
        cluster = ray.cluster_resources()
        gpus = res.gpus_per_trial if cluster.get("GPU", 0) > 0 else 0.0
        if res.gpus_per_trial > 0 and gpus == 0 and not quiet:
            print(f"[{grid.name}] no GPU in this Ray cluster: running on CPU", file=sys.stderr)
        if gpus > 0:   # fractions put several packs on a GPU; Ray spreads trials over all GPUs
            slots = max(1, min(int(cluster["GPU"] / gpus),
                               int(cluster.get("CPU", 1) // res.cpus_per_trial)))
            device, mem = "cuda", _gpu_bytes(local=address is None) * gpus   # see member_bytes
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
