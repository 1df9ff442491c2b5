"""The Tune trainable: one trial per pack, run in a Ray worker.

Each trial trains its pack with :class:`~memgrid.train.PackTrainer`, writes finished points to
the results folder as they stop (every `FLUSH_S` at most), and checkpoints the pack's state
with each write so that a retried trial continues where it was; the same state is saved in the
results folder (memgrid.results.saved), where a later run continues it. A trial starts by
reading which of its points are already stored (a write may have landed after its last
checkpoint): every point is stored exactly once.

Each report to Tune carries the pack's losses as Tune users read them: a summary (`loss_min`,
`loss_median`, `loss_max`, `points_solved`, ...) and one evaluation MAE per point under
`loss/<point>` (`p3_s1`: position 3, seed 1), which Tune's loggers write to the trial's
`result.json`, `progress.csv` and TensorBoard files.
"""

from __future__ import annotations

import dataclasses
import io
import math
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

from ..config import Point
from ..lr_tuning import LRTuning
from ..packs import pack_id, spec_points
from ..results import (PACKS, done_ids, drop_pack_state, part_names, read_pack_state, saved_packs,
                       set_pack_aside, stops_of, write_pack_state, write_points)
from .progress import one_line, say

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

    from ..train import PackTrainer
    from ..user_cells import ensure

    ensure(config.get("cells") or [])     # the user's cells, from their code (not their files)
    pid, points = spec_points(config["pack"])
    labels = point_labels(points)
    uri = config["out"]
    torch.set_num_threads(max(1, int(config["cpus"])))
    device = "cuda" if config["gpus"] > 0 and torch.cuda.is_available() else "cpu"

    if points[0].arch == "esn":
        tune.report(_esn_trial(points, labels, uri, config["grid"], pid, device, started_at))
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

    def checkpoint() -> None:
        t0 = time.perf_counter()
        blob = io.BytesIO()
        torch.save(trainer.state_dict(), blob)
        # in the results folder, for a later run (another machine's), and for Tune's retries
        write_pack_state(uri, pid, config["pack"], blob.getvalue())
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "pack.pt").write_bytes(blob.getvalue())
            tune.report(metrics(), checkpoint=tune.Checkpoint.from_directory(d))
        trainer.seconds["checkpoint"] += time.perf_counter() - t0

    while True:
        if not trainer.done:
            trainer.run(max_seconds=REPORT_S)
        now = time.monotonic()
        flush = bool(trainer.finished) and (trainer.done or now - last_write >= FLUSH_S)
        due = flush or now - last_ckpt >= CHECKPOINT_S
        if trainer.finished and due:   # a checkpoint must not hold finished-but-unwritten points
            write()
        if trainer.done and not trainer.finished:
            drop_pack_state(uri, pid)     # every point is stored
            tune.report(metrics())
            return
        if due:
            checkpoint()
            last_ckpt = now
        else:
            tune.report(metrics())


def _esn_trial(points: list[Point], labels: list[str], uri: str, grid_name: str, pid: str,
               device: str, started_at: float) -> dict:
    """An ESN pack, fitted in one pass (memgrid.esn): one part, no checkpoint (a retried trial
    rewrites the same part). Returns its report to Tune."""
    from ..esn import fit_esn_pack

    rows, curves = fit_esn_pack(points, device=device, grid_name=grid_name, pack_id=pid)
    write_points(uri, f"{pid}-0000", rows, curves)
    loss = {r["point_id"]: r["loss"] for r in rows}
    return pack_metrics(labels, [loss.get(p.point_id, math.nan) for p in points],
                        points_done=len(rows), active=0, epoch=0,
                        stops=Counter(r["stop_reason"] for r in rows), started_at=started_at)


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
        with warnings.catch_warnings():   # a damaged file: the line below says so, not torch
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(blob), weights_only=True), ""
    except Exception as e:       # noqa: BLE001 - any unreadable state: train the pack again
        return None, f"unreadable ({one_line(e)})"


def check_saved(out: str, packs: list[list[Point]]) -> list[list[Point]]:
    """Those of `packs` (resume_saved's) whose saved state this memgrid reads and is theirs
    (train.state_mismatch: their pack's and points' ids). Every other one's state goes to
    `damaged/packs/`, said on the console in one line: that pack starts afresh."""
    if not packs:
        return []
    from ..train import state_mismatch

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
        say(f"memgrid: {out.rstrip('/')}/{PACKS}/{pid}.pt: {why}: moved to {where}; "
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


def forget_saved(out: str, ids: set[str]) -> list[str]:
    """Drop the packs a stopped run saved mid-training (saved_packs) whose points not stored
    yet are all among `ids`, points that no run of the grid trains now (past limits its walk
    has settled), so that no state waits in packs/ for a run that never comes; returns their
    pack ids. A pack it cannot read stays."""
    saved = saved_packs(out)
    if not saved:
        return []
    done, gone = done_ids(out), []
    for pid, spec in saved.items():
        try:
            _, pts = spec_points(spec)
        except (ValueError, TypeError, KeyError):
            continue
        missing = {p.point_id for p in pts} - done
        if missing and missing <= ids:
            drop_pack_state(out, pid)
            gone.append(pid)
    return gone
