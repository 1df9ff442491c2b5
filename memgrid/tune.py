"""Ray Tune: one trial per pack. The one module that imports Ray.

The driver expands the grid, drops the points the results folder already holds, cuts the rest
into packs and hands them to a Tune grid search over packs. Each trial trains its pack with
:class:`~memgrid.train.PackTrainer`, writes finished points to the results folder as they stop
(every `FLUSH_S` at most), and checkpoints the pack's state with each write so that a retried
trial continues where it was. A trial starts by reading which of its points are already stored
(a write may have landed after its last checkpoint): every point is stored exactly once.

Each report to Tune carries the pack's losses as Tune users read them: a summary (`loss_min`,
`loss_median`, `loss_max`, `points_solved`, ...) and one evaluation MAE per point under
`loss/<point>` (`p3_s1`: position 3, seed 1), which Tune's loggers write to the trial's
`result.json`, `progress.csv` and TensorBoard files.

The driver checks what it asks of Ray before a trial starts (an address that answers, a node
with the CPUs and GPUs a trial needs), ends on SIGINT, SIGTERM or SIGHUP with the points stored so
far kept (:class:`Interrupted`), and, for an embedded Ray, binds it to loopback and ends every
process it started before it returns, however it ends.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from .results import (PACKS, TUNING, done_ids, drop_pack_state, part_names, read_pack_state, read_points,
                      saved_packs, set_pack_aside, stops_of, write_pack_state, write_points)
from .config import ConfigError, Grid, Point, Resources
from .packs import (makespan_s, pack_cost, pack_id, pack_seconds, pack_spec, plan_packs,
                    spec_pack_id, spec_points)
from .processes import (SIGNALS, Interrupted, catch_signals, catching, descendants, end_processes,
                        signals_held)
from .tuning import LRTuning, choose_lr, measured_points, tuning_points

# torch and Ray are imported where they are used: `memgrid run` prints its first line, and
# `--dry-run` plans a grid, without paying for either

# Tune's legacy output with verbose=0 prints nothing: memgrid shows its own progress line
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# memgrid ends a run on Ctrl-C itself (Interrupted): Tune's own handler would print its
# `Tuner.restore(...)` advice, which does not apply (the same command again resumes)
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
# packs checkpoint with every write of finished points; Tune's notice about frequent
# experiment snapshots is expected here and says nothing to act on
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

FLUSH_S = 10.0
"""seconds between writes of finished points (a kill loses at most this much finished work)"""
CHECKPOINT_S = 60.0
"""seconds between checkpoints of a pack that has nothing to write"""
REPORT_S = 2.0
"""seconds between a trial's reports to Tune (Tune handles a few hundred per second in all)"""
STOP_REASONS = ("solved", "plateau", "max_epochs", "diverged", "fitted")
"""every stop reason a trial reports a count of (`stop_<reason>`, 0 included: Tune's CSV
logger keeps the columns of a trial's first result)"""
PHASES = ("start", "train", "evaluate", "mc", "write", "checkpoint")
"""where a pack trial's time goes (`time_<phase>_s` in each report; PackTrainer.seconds):
`start` is the trial's, from its first line (imports, reading what is stored, the trainer);
the rest of a trial's time is Tune's (reports)"""
PROBE_S = 3.0
"""seconds an --address may take to answer before the run ends"""
NOTICE_POINTS = 20_000
"""a grid of this many points says what the driver does before each of its stages that take
a second or more at this size (expanding, cutting into packs: ~15 and ~10 us per point), so
that a long start is never silent"""


# ---------------------------------------------------------------------------------------------
# The trainable (runs in a Ray worker).


def _max_seq(parts: list[str]) -> int:
    return max((int(p.rsplit("-", 1)[1]) for p in parts), default=-1)


def point_labels(points: list[Point]) -> list[str]:
    """Names of a pack's points in its Tune results (`loss/<name>`), unique inside the pack:
    `p3_s1` for position 3, seed 1, then any other setting that differs inside the pack
    (`p3_s1_lr0.01`); the point_ids where even those repeat."""
    others = [f.name for f in dataclasses.fields(Point) if f.name not in ("position", "seed")]
    varying = [k for k in others if len({getattr(p, k) for p in points}) > 1]
    labels = [f"p{p.position}_s{p.seed}" + "".join(f"_{k}{getattr(p, k)}" for k in varying)
              for p in points]
    return labels if len(set(labels)) == len(labels) else [p.point_id for p in points]


def pack_metrics(labels: list[str], losses: list[float], *, points_done: int, active: int,
                 epoch: int, stops: Counter, seconds: Counter | None = None,
                 started_at: float = math.nan, epoch_start: int = 0) -> dict:
    """One report of a pack to Tune. `losses`: each point's latest evaluation MAE, in the order
    of `labels` (NaN where this attempt has none: a point stored before a retry). Every report
    has the same keys (Tune's CSV logger keeps the first report's columns); `timesteps_total`
    is the epoch, the x axis of Tune's TensorBoard curves. `seconds`: where this attempt's
    wall time went so far (PackTrainer.seconds, with `write` and `checkpoint`), reported as
    `time_<phase>_s` for every phase of PHASES; `started_at`: when the attempt began (POSIX
    time), so that the trials' reports give the run's timeline (benchmarks/real_grid.py), and
    `attempt_s`, the seconds since then; `epoch_start`: the epoch the attempt began at (a pack
    continued from a checkpoint or an earlier run's saved state). Progress measures the rate
    of work on these two: Tune's `time_total_s` starts at 0 for a pack an earlier run saved."""
    finite = [v for v in losses if math.isfinite(v)]
    nan = float("nan")
    return {"points_done": points_done, "points": len(labels), "active": active, "epoch": epoch,
            "timesteps_total": epoch,
            **{f"stop_{k}": stops.get(k, 0) for k in STOP_REASONS},
            **{f"stop_{k}": v for k, v in stops.items()},
            "points_solved": stops.get("solved", 0),
            "loss_min": min(finite, default=nan),
            "loss_median": statistics.median(finite) if finite else nan,
            "loss_max": max(finite, default=nan),
            **{f"time_{k}_s": (seconds or {}).get(k, 0.0) for k in PHASES},
            "started_at": started_at, "epoch_start": epoch_start,
            "attempt_s": time.time() - started_at if math.isfinite(started_at) else 0.0,
            "loss": dict(zip(labels, losses))}


def pack_trial(config: dict) -> None:
    """Tune function trainable: train one pack, write its points, checkpoint as it goes."""
    started_at = time.time()
    import torch
    from ray import tune

    from .train import PackTrainer

    pid, points = spec_points(config["pack"])
    labels = point_labels(points)
    uri = config["out"]
    torch.set_num_threads(max(1, int(config["cpus"])))
    device = "cuda" if config["gpus"] > 0 and torch.cuda.is_available() else "cpu"

    if points[0].arch == "esn":  # fitted in one pass (memgrid.esn): one part, no checkpoint;
        from .esn import fit_esn_pack   # a retried trial rewrites the same part

        rows, curves = fit_esn_pack(points, device=device, grid_name=config["grid"], pack_id=pid)
        write_points(uri, f"{pid}-0000", rows, curves)
        loss = {r["point_id"]: r["loss"] for r in rows}
        tune.report(pack_metrics(labels, [loss.get(p.point_id, math.nan) for p in points],
                                 points_done=len(rows), active=0, epoch=0,
                                 stops=Counter(r["stop_reason"] for r in rows),
                                 started_at=started_at))
        return

    halving = LRTuning.from_dict(config["halving"]) if config.get("halving") else None
    trainer = PackTrainer(points, device=device, grid_name=config["grid"], pack_id=pid,
                          halving=halving, lr_source=config.get("lr_source", "grid"))
    ckpt = tune.get_checkpoint()
    if ckpt is not None:  # a retried trial: continue from the last checkpoint
        with ckpt.as_directory() as d:
            trainer.load_state_dict(torch.load(Path(d) / "pack.pt", weights_only=True))
    else:                 # a pack that a stopped run saved in the results folder
        state = _saved_state(uri, pid)
        if state is not None:
            try:               # refused before it changes the trainer
                trainer.load_state_dict(state)
            except ValueError as e:
                print(f"memgrid: {uri}/{PACKS}/{pid}.pt: not this pack's state ({e}): "
                      "the pack starts afresh", file=sys.stderr)
    epoch_start = trainer.epoch
    stored = part_names(uri, pid + "-")
    # points stored after that checkpoint, or before a crash, in this pack's parts or (a
    # compacted or shipped folder) merged into others
    stored_stops = stops_of(uri, [p.point_id for p in points])
    done = set(stored_stops)
    trainer.drop(done)
    trainer.finished = [f for f in trainer.finished if f[0]["point_id"] not in done]
    seq = _max_seq(stored) + 1
    stops: Counter = Counter(stored_stops.values())   # progress counts what a retry found too
    n_written = len(done)
    final_loss: dict[str, float] = {}                 # points written by this attempt
    last_write = last_ckpt = time.monotonic()
    trainer.seconds["start"] = time.time() - started_at   # imports and stored parts included

    def write() -> None:
        nonlocal seq, n_written, last_write
        rows, curves = trainer.pop_finished()
        t0 = time.perf_counter()
        write_points(uri, f"{pid}-{seq:04d}", rows, curves)
        trainer.seconds["write"] += time.perf_counter() - t0
        seq += 1
        n_written += len(rows)
        stops.update(r["stop_reason"] for r in rows)
        final_loss.update((r["point_id"], r["loss"]) for r in rows)
        last_write = time.monotonic()

    def metrics() -> dict:
        loss = dict(final_loss)
        loss.update((r["point_id"], r["loss"]) for r, _, _ in trainer.finished)
        for i in trainer.active:
            m = trainer.members[i]
            loss[m.point.point_id] = m.curve[-1][2]
        return pack_metrics(labels, [loss.get(p.point_id, math.nan) for p in points],
                            points_done=n_written, active=len(trainer.active),
                            epoch=trainer.epoch, stops=stops, seconds=trainer.seconds,
                            started_at=started_at, epoch_start=epoch_start)

    while True:
        if not trainer.done:
            trainer.run(max_seconds=REPORT_S)
        now = time.monotonic()
        wrote = bool(trainer.finished) and (trainer.done or now - last_write >= FLUSH_S)
        if wrote:
            write()
        if trainer.done and not trainer.finished:
            drop_pack_state(uri, pid)     # every point is stored
            tune.report(metrics())
            return
        if wrote or now - last_ckpt >= CHECKPOINT_S:
            if trainer.finished:   # a checkpoint must not hold finished-but-unwritten points
                write()
                if trainer.done:
                    drop_pack_state(uri, pid)
                    tune.report(metrics())
                    return
            t0 = time.perf_counter()
            state = trainer.state_dict()
            blob = io.BytesIO()
            torch.save(state, blob)
            # in the results folder, for a later run (another machine's), and for Tune's retries
            write_pack_state(uri, pid, config["pack"], blob.getvalue())
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "pack.pt").write_bytes(blob.getvalue())
                tune.report(metrics(), checkpoint=tune.Checkpoint.from_directory(d))
            trainer.seconds["checkpoint"] += time.perf_counter() - t0
            last_ckpt = now
        else:
            tune.report(metrics())


def _saved_state(uri: str, pid: str) -> dict | None:
    """The trainer state the results folder saved for pack `pid` (write_pack_state), or
    None: none saved, or one this memgrid cannot read (the pack then starts afresh)."""
    state, why = _load_state(uri, pid)
    if why:
        print(f"memgrid: {uri}/{PACKS}/{pid}.pt: {why}: the pack starts afresh",
              file=sys.stderr)
    return state


def _load_state(uri: str, pid: str) -> tuple[dict | None, str]:
    """(the state saved for pack `pid`, "") or (None, why not: "" where none is saved)."""
    import torch

    blob = read_pack_state(uri, pid)
    if blob is None:
        return None, ""
    try:
        return torch.load(io.BytesIO(blob), weights_only=True), ""
    except Exception as e:       # noqa: BLE001 - any unreadable state: train the pack again
        return None, f"unreadable ({_one_line(e)})"


def check_saved(out: str, packs: list[list[Point]]) -> list[list[Point]]:
    """Those of `packs` (resume_saved's) whose saved state this memgrid reads and is theirs
    (train.state_mismatch: their pack's and points' ids). Every other one's state goes to
    `damaged/packs/`, said on the console in one line: that pack starts afresh."""
    if not packs:
        return []
    from .train import state_mismatch

    good = []
    for pk in packs:
        pid = pack_id(pk)
        state, why = _load_state(out, pid)
        if state is not None:
            why = state_mismatch(state, pid, [p.point_id for p in pk]) or ""
        if not why:
            good.append(pk)
            continue
        where = set_pack_aside(out, pid)
        _say(f"memgrid: {out.rstrip('/')}/{PACKS}/{pid}.pt: {why}: moved to {where}; "
             "the pack starts afresh")
    return good


def resume_saved(out: str, todo: list[Point]) -> tuple[list[list[Point]], list[Point]]:
    """Packs that a stopped run saved mid-training (saved_packs), as they were, where every
    one of their points not stored yet is in `todo`; and the points of `todo` left for new
    packs. A saved pack whose points are all stored is forgotten."""
    saved = saved_packs(out)
    if not saved:
        return [], todo
    left = {p.point_id: p for p in todo}
    done = done_ids(out)
    packs = []
    for pid, spec in saved.items():
        try:
            _, pts = spec_points(spec)
        except (ValueError, TypeError, KeyError):
            continue                               # not a pack this memgrid can read
        missing = [p for p in pts if p.point_id not in done]
        if not missing:
            drop_pack_state(out, pid)
        elif all(p.point_id in left for p in missing):
            packs.append(pts)
            for p in missing:
                del left[p.point_id]
    return packs, list(left.values())


# ---------------------------------------------------------------------------------------------
# What the driver asks of Ray, checked before a trial starts.


def _one_line(e: BaseException | str, limit: int = 200) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _grpc_answers(host: str, port: int, timeout_s: float) -> str | None:
    """None if a gRPC server (Ray's GCS is one) answers at host:port within `timeout_s`, else
    why not. It is asked the way every HTTP/2 client starts (the client preface and an empty
    SETTINGS frame), and must answer with a SETTINGS frame."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.settimeout(timeout_s)
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
            head = b""
            while len(head) < 9:
                chunk = s.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
    except socket.timeout:
        return f"no answer within {timeout_s:.0f} s"
    except OSError as e:
        return (e.strerror or str(e)).lower()
    if len(head) < 9 or head[3] != 4:
        return "something answers there, but not a Ray cluster (no gRPC server)"
    return None


def check_address(address: str, timeout_s: float = PROBE_S) -> None:
    """Raise ConfigError naming --address within about `timeout_s` unless a Ray cluster answers
    at `address` (host:port of its GCS, `auto`, or `ray://host:port`): ray.init itself would
    retry for minutes and not hear Ctrl-C meanwhile."""
    flag = f"command line: --address {address}"
    if "://" in address and not address.startswith("ray://"):
        raise ConfigError(f"{flag}: memgrid run joins a Ray cluster by its GCS address "
                          "(host:port, e.g. 10.0.0.5:6379, or auto); a job server's "
                          "http:// address is for memgrid launch")
    from ray._common.network_utils import parse_address
    from ray._private import services

    if address.startswith("ray://"):
        target = address[len("ray://"):]
    else:
        try:    # what ray.init will dial: `auto` read from RAY_ADDRESS or the last `ray start`
            target = services.canonicalize_bootstrap_address(address)
        except (ConnectionError, ValueError) as e:
            raise ConfigError(f"{flag}: {_one_line(e)}") from None
        if target is None:      # `local`: an embedded Ray after all
            return
    hp = parse_address(target)
    if hp is None or not hp[1].isdigit():
        raise ConfigError(f"{flag}: not host:port")
    host, port = hp[0], int(hp[1])
    tls = os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true")
    if tls:     # a TLS server does not answer a plain preface: the connection is the check
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            why = None
        except OSError as e:
            why = (e.strerror or str(e)).lower()
    else:
        why = _grpc_answers(host, port, timeout_s)
    if why:
        dialed = "" if target == address else f" (Ray dials {target})"
        raise ConfigError(f"{flag}: no Ray cluster at this address{dialed}: {why}")


def check_fits(cpus: float, gpus: float, nodes: list[dict], *, where: str,
               names: dict[str, str] | None = None) -> None:
    """Raise ConfigError naming the setting unless some node among `nodes` (their resources,
    as in ray.nodes()) has the CPUs and GPUs of one trial: Ray would leave every trial
    waiting, with a warning, for ever."""
    names = {"cpus_per_trial": "command line: --cpus-per-trial",
             "gpus_per_trial": "command line: --gpus-per-trial", **(names or {})}
    if any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        return
    cpu_max = max((n.get("CPU", 0) for n in nodes), default=0)
    gpu_max = max((n.get("GPU", 0) for n in nodes), default=0)
    if cpu_max < cpus:
        raise ConfigError(f"{names['cpus_per_trial']}: a trial asks for {cpus:g} CPUs; {where} "
                          f"has no node with more than {cpu_max:g}")
    if gpu_max < gpus:
        raise ConfigError(f"{names['gpus_per_trial']}: a trial asks for {gpus:g} GPUs; {where} "
                          f"has no node with more than {gpu_max:g}")
    raise ConfigError(f"{names['cpus_per_trial']}: a trial asks for {cpus:g} CPUs and {gpus:g} "
                      f"GPUs; no node of {where} has both")


# ---------------------------------------------------------------------------------------------
# The driver.


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


REASON_WORDS = {"solved": "solved", "plateau": "on the plateau", "max_epochs": "at max_epochs",
                "diverged": "diverged", "fitted": "fitted"}
"""how the progress line counts each stop reason: `8 at max_epochs`"""


class Progress:
    """The run on one line: points stored / total and how they stopped, the trials running,
    the time since launch and, once packs have been measured, the time left. Redrawn in place
    on a tty, one line every 15 s in a log.

    Time left: the cost model (pack_seconds) says how much work each pack is, relative to the
    others; the packs measured so far (those finished, and those running by the share of
    their max_epochs done) say how many seconds a unit of it takes on this machine, with its
    early stops. Left: that rate times the work not done (a running pack's epochs left at the
    cost of the members it still trains), spread over the slots, and at least the longest
    pack left. Where the packs left may take much longer than that (none of them stopping
    early), the line says so too: the same work at the seconds per unit of the epochs the
    members trained. Only the epochs of this run count: a pack continued from an earlier
    run's saved state reports the epoch it began at (`epoch_start`), and the stop reasons of
    its points stored before this run, which `done_before` counts already (`stored_before`
    takes them out again).

    Fed from Tune's results, of which it keeps a few numbers per trial: the driver holds counts,
    not curves.
    """

    def __init__(self, name: str, total: int, done_before: Counter,
                 packs: list[list[Point]] | None = None, slots: int = 1,
                 started: float | None = None, stream=None,
                 stored_before: dict[str, Counter] | None = None):
        self.name, self.total, self.before = name, total, done_before
        # per pack_id: stop reasons of its points in `done_before`, which its trials count too
        self.stored_before = stored_before or {}
        by_id = {pack_id(pk): pk for pk in packs or []}
        self.cost = {i: pack_cost(pk) for i, pk in by_id.items()}
        self.epochs = {i: max(p.max_epochs for p in pk) for i, pk in by_id.items()}
        self.longest = {i: max(pk, key=lambda q: q.q_hi) for i, pk in by_id.items()}
        self.size = {i: len(pk) for i, pk in by_id.items()}
        self.slots = max(1, slots)
        self.trials: dict[str, dict] = {}
        self.running = 0
        self._stream = stream   # None: sys.stderr when written (not pickled with Tune's state)
        self.tty = self.stream.isatty()
        self.t0 = time.monotonic() if started is None else started
        self.last = -math.inf

    @property
    def stream(self):
        return sys.stderr if self._stream is None else self._stream

    def update(self, trial_id: str, result: dict, pack: str | None = None) -> None:
        """A trial's latest result."""
        t = self.trials.setdefault(trial_id, {"pack": pack, "done": False})
        epoch, start = result.get("epoch", 0), result.get("epoch_start", 0)
        # a new attempt (the first, or a retry from its checkpoint): measured from its start
        if t.get("start") != start or epoch < t.get("epoch", start):
            t.update(start=start, epoch=start, work=0.0, active=None)
        # the cost model's work of the epochs since the last report, at the members training
        # then (before the first report: those the report says, or the whole pack)
        p = self.longest.get(t["pack"])
        if p is not None and epoch > t["epoch"]:
            k = t["active"] if t["active"] is not None else (result.get("active")
                                                              or self.size[t["pack"]])
            t["work"] += pack_seconds(p, k) * (epoch - t["epoch"]) / max(1, self.epochs[t["pack"]])
        stops = Counter({k[5:]: v for k, v in result.items()
                         if k.startswith("stop_") and isinstance(v, int) and v})
        stops.subtract(self.stored_before.get(t["pack"], Counter()))
        t.update(stops={k: v for k, v in stops.items() if v > 0},
                 epoch=epoch, seconds=result.get("attempt_s", 0.0), active=result.get("active"))
        self.tick()

    def finish(self, trial_id: str) -> None:
        if trial_id in self.trials:
            self.trials[trial_id]["done"] = True

    def step(self, running: int) -> None:
        """Tune's loop went round: `running` trials are running."""
        self.running = running
        self.tick()

    def tick(self) -> None:
        if time.monotonic() - self.last >= (0.5 if self.tty else 15.0):
            self.show()

    def counts(self) -> tuple[int, Counter]:
        stops = Counter(self.before)
        for t in self.trials.values():
            stops.update(t.get("stops", {}))
        return sum(stops.values()), stops

    def left_s(self) -> float | None:
        """Seconds left if the packs left stop early as often as those measured, or None before
        any pack has been measured."""
        both = self.left_range()
        return None if both is None else both[0]

    def left_range(self) -> tuple[float, float] | None:
        """(seconds left at the rate of the packs measured, their early stops included; seconds
        left if no member stops early from now on, at the rate of the members' epochs trained),
        or None before any pack has been measured. Packs start longest first, and a grid's
        longest packs are often its big networks, which solve early: the first figure can run
        low for hours (the Figure 8 GRU grid at the converged protocol), the second holds as
        long as the cost model and the machine do."""
        measured = modelled = trained = 0.0
        left, seen = [], set()
        for t in self.trials.values():
            c = self.cost.get(t["pack"])
            if c is None:
                continue
            seen.add(t["pack"])
            epochs = max(1, self.epochs[t["pack"]])
            start = min(1.0, t["start"] / epochs)
            share = 1.0 if t["done"] else min(1.0, t["epoch"] / epochs)   # of its budget, done
            if share > start and t["seconds"]:
                measured += t["seconds"]
                modelled += c * (share - start)
                trained += t["work"]
            if not t["done"]:   # its epochs left cost what its members still training cost
                if t["active"]:
                    c = pack_seconds(self.longest[t["pack"]], t["active"])
                left.append(c * (1 - share))
        left += [c for pid, c in self.cost.items() if pid not in seen]
        if modelled <= 0 or trained <= 0 or not left:
            return None
        span = max(sum(left) / self.slots, max(left))
        return measured / modelled * span, measured / trained * span

    def line(self, final: bool = False) -> str:
        done, stops = self.counts()
        order = list(REASON_WORDS)
        reasons = ", ".join(f"{stops[k]} {REASON_WORDS.get(k, k)}" for k in
                            sorted(stops, key=lambda k: (order.index(k) if k in order else 99, k))
                            if stops[k])
        parts = [f"[{self.name}] {done}/{self.total} points" + (f" ({reasons})" if reasons else "")]
        if not final:
            parts.append(f"{_plural(self.running, 'trial')} running")
        parts.append(_fmt_s(time.monotonic() - self.t0))
        left = None if final or done >= self.total else self.left_range()
        if left is not None:
            low, high = left
            worse = high >= 1.2 * low + 60     # worth a second figure: 20 % and a minute more
            parts.append(f"~{_fmt_s(low)} left"
                         + (f" ({_fmt_s(high)} if none stops early)" if worse else ""))
        return "  ".join(parts)

    def show(self, final: bool = False) -> None:
        self.last = time.monotonic()
        line = self.line(final)
        if self.tty:
            print("\r\033[K" + line, end="\n" if final else "", file=self.stream, flush=True)
        else:
            print(line, file=self.stream, flush=True)


def _fmt_s(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


def _start_ray(address: str | None, num_cpus: int | None) -> None:
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
    from ray._private import ray_constants

    private_auth_token()
    kwargs.update(include_dashboard=False, num_cpus=num_cpus, _node_ip_address="127.0.0.1")
    cluster = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        _init(ray, kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster


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


def grid_points(grid: Grid, out: str) -> list[Point] | None:
    """The points `grid` stores in `out`: its own, or for a grid with `tune_lr` the same at the
    learning rate its tuning run chose per configuration (None while that run is incomplete)."""
    points = grid.points()
    if grid.tune_lr is None:
        return points
    tuned = tuning_points(points, grid.tune_lr)
    rows = read_points(f"{out.rstrip('/')}/{TUNING}").to_pylist()
    if not {p.point_id for p in tuned} <= {r["point_id"] for r in rows}:
        return None
    return measured_points(points, choose_lr(rows, tuned))


def run_grid(grid: Grid, out: str, **kwargs) -> dict:
    """Run every point of `grid` missing from `out` (keywords: :func:`run_points`). Returns a
    summary dict.

    A grid with `tune_lr` runs in two phases (memgrid.tuning): its tuning run into
    `<out>/tuning` (every candidate learning rate on the tuning seeds, successive halving
    inside each configuration's pack), then its own points at the chosen rates into `out`.
    Both resume: a second run skips what either phase stored.
    """
    if grid.n_points >= NOTICE_POINTS and not kwargs.get("quiet"):
        _say(f"[{grid.name}] {grid.n_points} points: expanding the grid, reading what {out} "
             "holds ...")
    if grid.tune_lr is None:
        return run_points(grid, grid.points(), out, lr_source=grid.lr_source, **kwargs)
    tuned = tuning_points(grid.points(), grid.tune_lr)
    first = run_points(grid, tuned, f"{out.rstrip('/')}/{TUNING}", halving=grid.tune_lr,
                       label="tuning lr", **kwargs)
    points = grid_points(grid, out)
    if points is None:     # the tuning run did not finish: nothing can be measured yet
        return {**first, "points": grid.n_points, "done_before": 0, "done": 0, "trained": 0}
    kwargs.pop("prepare", None)     # done by the first phase
    return run_points(grid, points, out, lr_source=grid.lr_source, **kwargs)


def run_points(grid: Grid, points: list[Point], out: str, *, address: str | None = None,
               num_cpus: int | None = None, max_failures: int = 3, rounds: int = 3,
               quiet: bool = False,
               started: float | None = None, names: dict[str, str] | None = None,
               prepare=None, halving: LRTuning | None = None, lr_source: str = "grid",
               label: str = "") -> dict:
    """Train every one of `points` (of `grid`) missing from `out`. Returns a summary dict.

    `address`: join a running Ray cluster (None: an embedded Ray on loopback, ended with every
    process it started when this returns or raises; "local": the Ray this process already
    runs, left running). The results folder must hold this grid's `grid.json` (see
    `request.prepare_out`) once `prepare` has run. `prepare()`: the caller's first writes into the
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
    after the grid's name in the progress line.
    """
    ids = {p.point_id for p in points}

    def missing() -> tuple[list[Point], Counter]:
        done = done_ids(out) & ids
        return [p for p in points if p.point_id not in done], stop_counts(out, ids)

    todo, before = missing()
    if not todo and prepare is not None:    # nothing to train, unless a repair finds some
        prepare()
        prepare = None
        todo, before = missing()
    summary = {"points": len(points), "done_before": len(points) - len(todo),
               "done": len(points) - len(todo), "trained": 0, "packs": 0, "failed_trials": 0,
               "stops": dict(before)}
    if not todo:
        return summary

    def say_starting() -> None:
        if not quiet:
            where = "starting Ray ..." if address is None else f"on the Ray cluster at {address}"
            print(f"[{grid.name}] {len(todo)} of {_plural(len(points), 'point')} to train; {where}",
                  file=sys.stderr, flush=True)

    embedded = address is None
    if embedded:
        say_starting()    # at once: importing Ray and torch and starting Ray take 5-25 s
    keep = descendants() if embedded else set()
    progress = None
    try:
        import ray
        from ray import tune

        if embedded:    # this machine's workers: build the C kernels once, here
            from . import kernels
            kernels.prepare()
        elif address != "local" and not ray.is_initialized():
            check_address(address)
        was_catching = catching()
        _start_ray(address, num_cpus)
        if was_catching:
            catch_signals()     # ray.init put sys.exit in place for SIGTERM

        res: Resources = grid.resources
        cluster = ray.cluster_resources()
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        gpus = res.gpus_per_trial if cluster.get("GPU", 0) > 0 else 0.0
        where = ("the embedded Ray" + (f" (--num-cpus {num_cpus})" if num_cpus else "")
                 if embedded else f"the Ray cluster at {address}")
        check_fits(res.cpus_per_trial, gpus, nodes, where=where, names=names)
        if not embedded:    # after the checks: an address or a cluster that cannot run the
            say_starting()  # grid ends in one line
        if prepare is not None:
            prepare()
            todo, before = missing()
            summary.update(done_before=len(points) - len(todo), done=len(points) - len(todo),
                           stops=dict(before))
            if not todo:
                return summary
        if res.gpus_per_trial > 0 and gpus == 0 and not quiet:
            print(f"[{grid.name}] no GPU in this Ray cluster: running on CPU", file=sys.stderr)
        slots, device, mem = _slots(cluster, res.cpus_per_trial, gpus, local=embedded)
        if len(todo) >= NOTICE_POINTS and not quiet:
            _say(f"[{grid.name}] Ray is up: cutting {len(todo)} points into packs ...")
        class _Callback(tune.Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                progress.update(trial.trial_id, result, spec_pack_id(trial.config["pack"]))

            def on_trial_complete(self, iteration, trials, trial, **info):
                progress.finish(trial.trial_id)

            def on_step_end(self, iteration, trials, **info):
                progress.step(sum(1 for t in trials if t.status == "RUNNING"))

        storage = out if "://" in out else str(Path(out).absolute())
        trainable = tune.with_resources(pack_trial, {"cpu": res.cpus_per_trial, "gpu": gpus})
        for attempt in range(max(1, rounds)):    # see lost_worker
            resumed, fresh = resume_saved(out, todo)   # packs a stopped run saved mid-training
            continued = check_saved(out, resumed)      # the others start afresh
            packs = sorted(resumed + _packs(fresh, res.pack, slots, device, mem, halving),
                           key=pack_cost, reverse=True)
            if continued and not quiet:
                _say(f"[{grid.name}] {_plural(len(continued), 'pack')} saved mid-training by an "
                     "earlier run: continuing where they were")
            if not attempt:
                summary["packs"] = len(packs)
            specs = [pack_spec(pk) for pk in packs]
            # a resumed pack's trial counts its points stored before this run: `before` has them
            stored = {pack_id(pk): Counter(stops_of(out, [p.point_id for p in pk]).values())
                      for pk in resumed}
            progress = Progress(f"{grid.name} ({label})" if label else grid.name, len(points),
                                before, packs, slots, started, stored_before=stored)
            tuner = tune.Tuner(
                trainable,
                param_space={"pack": None, "out": storage, "grid": grid.name,
                             "cpus": res.cpus_per_trial, "gpus": gpus, "lr_source": lr_source,
                             "halving": halving.to_dict() if halving else None},
                tune_config=_one_trial_per_pack(specs),
                run_config=tune.RunConfig(
                    name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}"
                         + (f"-{attempt}" if attempt else ""),
                    storage_path=f"{storage.rstrip('/')}/_tune",
                    failure_config=tune.FailureConfig(max_failures=max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    callbacks=[] if quiet else [_Callback()], verbose=0),
            )
            if len(todo) >= NOTICE_POINTS and not quiet:
                progress.show()     # before Tune's first step, a few seconds away at this size
            results = tuner.fit()
            failed = [r.error for r in results if r.error is not None]
            summary["failed_trials"] = len(failed)
            todo, before = missing()
            lost = sum(1 for e in failed if lost_worker(e))
            if not todo or not lost or attempt == rounds - 1:
                break
            if not quiet:   # Tune gave up on a trial whose node died (see lost_worker)
                its = "its" if lost == 1 else "their"
                _say(f"[{grid.name}] {_plural(lost, 'trial')} lost {its} worker: another round "
                     f"for the {_plural(len(todo), 'point')} left")
    except BaseException:
        if progress is not None and not quiet and progress.tty:
            print(file=sys.stderr, flush=True)     # end the progress line drawn in place
        raise
    finally:
        with signals_held():
            if embedded:
                ray = sys.modules.get("ray")    # absent if Ctrl-C came while it was imported
                if ray is not None and hasattr(ray, "shutdown"):
                    ray.shutdown()
                end_processes(keep)
    stops = stop_counts(out, ids)
    summary.update(done=sum(stops.values()), stops=dict(stops))
    summary["trained"] = summary["done"] - summary["done_before"]
    if not quiet:
        progress.trials.clear()
        progress.before = stops
        progress.show(final=True)
    return summary


def _slots(cluster: dict, cpus_per_trial: float, gpus_per_trial: float, *,
           local: bool) -> tuple[int, str, float]:
    """How many packs train at once in `cluster` (ray.cluster_resources()), on which device,
    and the memory each may use (see `packs.member_bytes`)."""
    cpu_slots = int(cluster.get("CPU", 1) // cpus_per_trial)
    if gpus_per_trial > 0:  # fractions put several packs on a GPU; Ray spreads them over all
        slots = max(1, min(int(cluster["GPU"] / gpus_per_trial), cpu_slots))
        return slots, "cuda", _gpu_bytes(local=local) * gpus_per_trial
    slots = max(1, cpu_slots)
    return slots, "cpu", _cpu_slot_bytes(cluster.get("memory", 8e9), slots)


def _cpu_slot_bytes(ray_memory: float, slots: int) -> float:
    """What a pack may hold on a CPU: half of Ray's memory resource per slot."""
    return 0.5 * ray_memory / slots


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


def stop_counts(out: str, ids: set[str]) -> Counter:
    """Stop reasons of the stored points among `ids`."""
    t = read_points(out, columns=["point_id", "stop_reason"])
    return Counter(s for i, s in zip(t.column("point_id").to_pylist(),
                                     t.column("stop_reason").to_pylist()) if i in ids)


# ---------------------------------------------------------------------------------------------
# The plan without the run (`memgrid run --dry-run`).


def local_cpus() -> int:
    """CPUs this process may run on (its affinity), what an embedded Ray counts unless a
    cgroup quota gives it fewer."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def local_slots(cpus_per_trial: float, num_cpus: int | None = None) -> int:
    """Trials at once on this machine: its CPUs (or `num_cpus`) / cpus_per_trial."""
    return max(1, int((num_cpus or local_cpus()) // cpus_per_trial))


def _available_bytes() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return 8e9


def _sizes(packs: list[list[Point]]) -> str:
    return ", ".join(f"{k} x{n}" for k, n in sorted(Counter(len(pk) for pk in packs).items(),
                                                    reverse=True))


def describe_plan(grid: Grid, out: str, *, slots: int, note: str = "") -> list[str]:
    """What `memgrid run` would do, as lines: points, points already stored in `out`, the packs
    (count, sizes, per arch, l, c) for `slots` trials at once, and the cost model's time.
    Starts nothing and writes nothing. A grid with `tune_lr` is planned as its points at the
    protocol's rate until its tuning run has chosen one; the tuning run has a line of its own."""
    lines = [f"[{grid.name}] dry run: nothing started, nothing written"]
    points = grid.points()
    if grid.tune_lr is not None:
        tuned = {p.point_id for p in tuning_points(points, grid.tune_lr)}
        have = done_ids(f"{out.rstrip('/')}/{TUNING}") & tuned
        lines.append(f"  tuning the learning rate first: {len(tuned)} points "
                     f"({grid.tune_lr.describe()}); stored: {len(have)}")
        points = grid_points(grid, out) or points
    ids = {p.point_id for p in points}
    stored = done_ids(out) & ids
    todo = [p for p in points if p.point_id not in stored]
    mem = _cpu_slot_bytes(0.7 * _available_bytes(), slots)   # Ray's memory: 70 % of what's free
    packs = plan_packs(todo, grid.resources.pack, slots, mem_per_slot=mem) if todo else []
    res = grid.resources
    lines.append(f"  points: {len(points)}; stored in {out}: {len(stored)}; to train: {len(todo)}")
    if not packs:
        return lines + ["  nothing to train"]
    lines.append(f"  packs: {len(packs)} ({_sizes(packs)} points), for {_plural(slots, 'trial')} "
                 f"at once ({res.cpus_per_trial:g} CPU each{note})")
    by_net: dict[tuple, list[list[Point]]] = {}
    for pk in packs:
        by_net.setdefault((pk[0].arch, pk[0].layers, pk[0].cells), []).append(pk)
    header = ["arch", "l", "c", "points", "packs", "sizes"]
    rows = [[a, l, c, sum(len(pk) for pk in pks), len(pks), _sizes(pks)]
            for (a, l, c), pks in sorted(by_net.items())]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for r in [header] + rows:
        lines.append("    " + "  ".join(str(x).rjust(w) for x, w in zip(r, widths)))
    # the model is of the PyTorch path and of points that run to max_epochs: Figure 4, 5 and
    # the Figure 6 slice took 47 %, 19 % and 17 % of its figure (README, Speed)
    lines.append(f"  time: up to ~{_fmt_s(makespan_s(packs, slots))} by the cost model (every "
                 "point to max_epochs; the shipped grids took 15-50 % of that), plus ~5 s for Ray")
    return lines
