"""The driver of `memgrid run`: its first minute, what it checks before a trial starts, how it
ends on a signal, what Tune sees of the training, and `--dry-run`.

The tests that start Ray run `memgrid run` as a user does, in a session of its own
(start_new_session) and with a Ray temp dir of its own (RAY_TMPDIR), so that its processes are
found by session id and by that dir, never by name: another Ray may be running on the machine.
Every wait is for an event (a printed line, a file), never a sleep.
"""

from __future__ import annotations

import ipaddress
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from memgrid.results import (done_ids, read_pack_state, read_points, saved_packs,
                             write_pack_state, write_points)
from memgrid.rows import point_row, point_settings
from memgrid.config import ConfigError, Point
from memgrid.grid_file import load_grid
from memgrid.packs import (makespan_s, pack_cost, pack_id, pack_seconds, pack_spec, plan_packs)
from memgrid.run.address import check_fits
from memgrid.run.plan import describe_plan
from memgrid.run.progress import Progress, fmt_s
from memgrid.run.trial import pack_metrics, point_labels, resume_saved

from .conftest import ROOT, memgrid_cli, write_grid


def _points(n: int, **kw) -> list[Point]:
    return [Point("rnn", 1, 2, 1 + i % 3, i, **kw) for i in range(n)]


class _Stream:
    """A log, not a tty: every line shown is kept."""

    def __init__(self):
        self.lines: list[str] = []

    def isatty(self) -> bool:
        return False

    def write(self, s: str) -> None:
        self.lines += [x for x in s.split("\n") if x]

    def flush(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# The progress line.


def test_progress_line_counts_running_trials_and_reads_as_counts():
    pts = _points(6)
    packs = [pts[:3], pts[3:]]
    p = Progress("g", 8, Counter(solved=2), packs, slots=2, started=time.monotonic() - 39,
                 stream=_Stream())
    p.step(running=1)
    line = p.line()
    assert line.startswith("[g] 2/8 points (2 solved)  1 trial running  00:39")   # the clock:
    assert "~" not in line                          # from launch; no estimate before a measure
    p.update("t1", {"stop_max_epochs": 3, "stop_solved": 0, "epoch": 40, "attempt_s": 4.0},
             pack_id(packs[0]))
    p.step(running=2)
    line = p.line()
    assert "(2 solved, 3 at max_epochs)" in line and "2 trials running" in line
    assert "max_epochs 3" not in line               # a count, not a setting
    final = p.line(final=True)
    assert "running" not in final and "left" not in final


def test_time_left_is_the_cost_model_scaled_by_the_packs_measured():
    pts = _points(12, max_epochs=100)
    packs = [pts[:6], pts[6:9], pts[9:]]
    c = [pack_cost(pk) for pk in packs]
    ids = [pack_id(pk) for pk in packs]
    p = Progress("g", 12, Counter(), packs, slots=2, stream=_Stream())
    assert p.left_s() is None                       # nothing measured yet
    # pack 0 ran 25 of its 100 epochs in 10 s: 10 s per c[0] / 4 of model work
    p.update("a", {"epoch": 25, "attempt_s": 10.0, "active": 6}, ids[0])
    rate = 10.0 / (c[0] * 0.25)
    left = [c[0] * 0.75, c[1], c[2]]
    assert p.left_s() == pytest.approx(rate * max(sum(left) / 2, max(left)))
    # pack 1 finished in 2 s: measured work and seconds add up
    p.update("b", {"epoch": 60, "attempt_s": 2.0, "active": 0}, ids[1])
    p.finish("b")
    rate = 12.0 / (c[0] * 0.25 + c[1])
    left = [c[0] * 0.75, c[2]]
    assert p.left_s() == pytest.approx(rate * max(sum(left) / 2, max(left)))
    # four of pack 0's six members stopped: its epochs left cost what two members cost
    p.update("a", {"epoch": 50, "attempt_s": 16.0, "active": 2}, ids[0])
    rate = 18.0 / (c[0] * 0.5 + c[1])
    left = [pack_seconds(max(packs[0], key=lambda q: q.q_hi), 2) * 0.5, c[2]]
    assert left[0] < c[0] * 0.5
    assert p.left_s() == pytest.approx(rate * max(sum(left) / 2, max(left)))


def test_time_left_counts_only_the_epochs_of_this_run():
    """A pack continued from an earlier run's saved state (epoch 4,000 of 5,000) reports the
    epoch it began at: its 100 epochs in 10 s are 100 epochs of work, not 4,100."""
    pts = _points(8, max_epochs=5000)
    packs = [pts[:4], pts[4:]]
    c = [pack_cost(pk) for pk in packs]
    p = Progress("g", 8, Counter(), packs, slots=1, stream=_Stream())
    p.update("a", {"epoch": 4100, "epoch_start": 4000, "attempt_s": 10.0, "active": 4},
             pack_id(packs[0]))
    rate = 10.0 / (c[0] * 100 / 5000)
    assert p.left_s() == pytest.approx(rate * (c[0] * 900 / 5000 + c[1]))
    # Tune retries it from a checkpoint at epoch 4,050: a new attempt, measured from there
    p.update("a", {"epoch": 4060, "epoch_start": 4050, "attempt_s": 2.0, "active": 4},
             pack_id(packs[0]))
    rate = 2.0 / (c[0] * 10 / 5000)
    assert p.left_s() == pytest.approx(rate * (c[0] * 940 / 5000 + c[1]))


def test_time_left_says_how_long_if_the_packs_left_stop_no_member_early():
    """A pack of 6 whose members all solve by epoch 10 of 100 (in 100 s) makes the work look
    cheap: the pack left costs c[1] at that rate. If its members train their 100 epochs, it
    costs 10x that, and the line says so."""
    pts = _points(12, max_epochs=100)
    packs = [pts[:6], pts[6:]]
    c = [pack_cost(pk) for pk in packs]
    log = _Stream()
    p = Progress("g", 12, Counter(), packs, slots=1, stream=log)
    p.update("a", {"epoch": 10, "attempt_s": 100.0, "active": 0}, pack_id(packs[0]))
    p.finish("a")
    low, high = p.left_range()
    assert low == pytest.approx(100.0 / c[0] * c[1])
    assert high == pytest.approx(1000.0 / c[0] * c[1])        # 10 epochs trained, of 100
    assert p.line().endswith(f"~{fmt_s(low)} left ({fmt_s(high)} if none stops early)")
    # members that stop as the pack trains count for the epochs they trained: 6 members for
    # 10 epochs, then 1 of them for 90
    p = Progress("g", 12, Counter(), packs, slots=1, stream=_Stream())
    p.update("a", {"epoch": 5, "attempt_s": 0.5, "active": 6}, pack_id(packs[0]))
    p.update("a", {"epoch": 10, "attempt_s": 1.0, "active": 1}, pack_id(packs[0]))
    p.update("a", {"epoch": 100, "attempt_s": 2.0, "active": 0}, pack_id(packs[0]))
    p.finish("a")
    one = pack_seconds(max(packs[0], key=lambda q: q.q_hi), 1)
    low, high = p.left_range()
    assert low == pytest.approx(2.0 / c[0] * c[1])
    assert high == pytest.approx(2.0 / (c[0] * 0.1 + one * 0.9) * c[1])
    # where both agree (every pack trains its budget), one figure
    p = Progress("g", 12, Counter(), packs, slots=1, stream=_Stream())
    p.update("a", {"epoch": 100, "attempt_s": 3.0, "active": 0}, pack_id(packs[0]))
    p.finish("a")
    assert p.left_range()[0] == pytest.approx(p.left_range()[1])
    assert "if none stops early" not in p.line()


def test_clock_starts_when_the_process_starts():
    code = ("import time; time.sleep(1.5); from memgrid.processes import launch_time; "
            "print(time.monotonic() - launch_time())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert float(r.stdout) >= 1.5                   # counts what came before the import
    # ... but not a process that was something else long before memgrid was imported
    # (5 s before the import began, which took `took`: however loaded the machine)
    code = ("import time; time.sleep(7); t0 = time.monotonic(); from memgrid.processes import "
            "launch_time; t1 = time.monotonic(); print(t1 - launch_time(), t1 - t0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    since, took = map(float, r.stdout.split())
    assert 5.0 <= since <= 5.0 + took + 0.01
    assert fmt_s(39.9) == "00:39" and fmt_s(3725) == "1:02:05"


def test_saved_packs_are_continued_as_they_were_or_forgotten(tmp_path):
    """The driver takes a pack that a stopped run saved (packs/) as it was when every point of
    it not stored yet is to train, forgets one whose points are all stored, and leaves one
    whose missing points this run does not train (another stage's)."""
    out = str(tmp_path / "res")
    pts = [Point("rnn", 1, 2, p, s) for p in (1, 2, 3) for s in range(4)]
    a, b, c = pts[0:4], pts[4:8], pts[8:12]
    for pk in (a, b, c):
        write_pack_state(out, pack_id(pk), pack_spec(pk), b"state")
    rows = [point_row(p, "g", epochs=1, stop_reason="solved", loss=0.0, best_loss=0.0, r2=1.0,
                      wall_s=0.0, pack_id="x", device="cpu") for p in b + a[:1]]
    write_points(out, "x-0000", rows, [])
    todo = a[1:] + c[:2] + pts[12:]                 # c[2:] is not this run's
    resumed, fresh = resume_saved(out, todo)
    assert [pack_id(pk) for pk in resumed] == [pack_id(a)]     # whole, stored point included
    assert {p.point_id for p in fresh} == {p.point_id for p in c[:2]}
    assert set(saved_packs(out)) == {pack_id(a), pack_id(c)}    # b's is gone
    assert read_pack_state(out, pack_id(a)) == b"state"


def test_a_saved_state_of_another_pack_is_not_loaded(tmp_path, monkeypatch, capfd):
    """A packs/ state whose shapes are not the pack's (another version, a copy gone wrong) is
    refused before it reaches the C kernel, which trusts shapes: the pack trains afresh,
    stores every point and forgets the state."""
    import io

    import torch
    tune = pytest.importorskip("ray.tune")
    from memgrid.train import PackTrainer
    from memgrid.run.trial import pack_trial

    monkeypatch.setattr(tune, "report", lambda metrics, **kw: None)
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    out = str(tmp_path / "res")
    pts = [Point("rnn", 1, 2, p, 0, max_epochs=40, eval_every=20) for p in (1, 2)]
    blob = io.BytesIO()
    torch.save(PackTrainer([Point("rnn", 2, 3, 1, 0)]).state_dict(), blob)
    write_pack_state(out, pack_id(pts), pack_spec(pts), blob.getvalue())
    pack_trial({"pack": pack_spec(pts), "out": out, "grid": "g", "cpus": 1, "gpus": 0})
    assert "not this pack's state" in capfd.readouterr().err
    assert done_ids(out) == {p.point_id for p in pts} and not saved_packs(out)


# ---------------------------------------------------------------------------------------------
# What Tune sees: a loss summary and each point's loss.


def test_point_labels_are_short_and_unique_in_a_pack():
    pts = [Point("rnn", 1, 2, p, s) for p in (1, 2) for s in (0, 1)]
    assert point_labels(pts) == ["p1_s0", "p1_s1", "p2_s0", "p2_s1"]
    sweep = [Point("rnn", 1, 2, 3, 0, lr=lr) for lr in (0.01, 0.1)]
    assert point_labels(sweep) == ["p3_s0_lr0.01", "p3_s0_lr0.1"]


def test_pack_metrics_summarize_and_keep_the_same_keys():
    m = pack_metrics(["a", "b", "c", "d"], [0.2, 0.01, math.nan, 0.1], points_done=1, active=2,
                     epoch=40, stops=Counter(solved=1))
    assert (m["loss_min"], m["loss_median"], m["loss_max"]) == (0.01, 0.1, 0.2)
    assert m["points_solved"] == 1 and m["stop_solved"] == 1 and m["stop_plateau"] == 0
    assert m["loss"]["b"] == 0.01 and math.isnan(m["loss"]["c"])
    assert m["timesteps_total"] == 40               # TensorBoard's x axis: the epoch
    empty = pack_metrics(["a"], [math.nan], points_done=0, active=1, epoch=0, stops=Counter())
    assert set(empty) == set(pack_metrics(["a"], [0.3], points_done=0, active=1, epoch=0,
                                          stops=Counter()))
    assert math.isnan(empty["loss_median"])
    timed = pack_metrics(["a"], [0.3], points_done=0, active=1, epoch=0, stops=Counter(),
                         seconds=Counter(train=2.5, write=0.5), started_at=1.8e9)
    assert set(timed) == set(empty)                  # the phases are in every report, 0 or not
    assert (timed["time_train_s"], timed["time_write_s"], timed["time_mc_s"]) == (2.5, 0.5, 0.0)
    assert timed["started_at"] == 1.8e9 and math.isnan(empty["started_at"])
    assert empty["epoch_start"] == 0 and empty["attempt_s"] == 0.0
    resumed = pack_metrics(["a"], [0.3], points_done=0, active=1, epoch=4100, stops=Counter(),
                           started_at=time.time() - 3, epoch_start=4000)
    assert resumed["epoch_start"] == 4000 and 3 <= resumed["attempt_s"] < 60


def test_pack_trial_reports_each_points_loss_as_it_trains(tmp_path, monkeypatch):
    tune = pytest.importorskip("ray.tune")
    from memgrid.run.trial import pack_trial
    reports = []
    monkeypatch.setattr(tune, "report", lambda metrics, **kw: reports.append(metrics))
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    pts = [Point("rnn", 1, 2, p, s, max_epochs=300, eval_every=20, eval_size=128, batch_size=32,
                 q_min=4, q_max=6, plateau=False) for p in (1, 3) for s in (0, 1)]
    config = {"pack": pack_spec(pts), "out": str(tmp_path), "grid": "g", "cpus": 1, "gpus": 0}
    pack_trial(config)
    assert reports and all(set(r) == set(reports[0]) for r in reports)
    last = reports[-1]
    stored = read_points(str(tmp_path)).to_pandas().set_index("point_id")
    assert sorted(last["loss"]) == ["p1_s0", "p1_s1", "p3_s0", "p3_s1"]
    for p, label in zip(pts, point_labels(pts)):
        assert last["loss"][label] == pytest.approx(stored.loss[p.point_id])
    assert last["loss_min"] == pytest.approx(stored.loss.min())
    assert last["loss_max"] == pytest.approx(stored.loss.max())
    assert last["points_solved"] == (stored.stop_reason == "solved").sum()
    assert last["points_done"] == 4 and last["active"] == 0


# ---------------------------------------------------------------------------------------------
# Checked before a trial starts.


def test_a_trial_no_node_can_take_is_refused_naming_the_setting():
    nodes = [{"CPU": 2.0}, {"CPU": 1.0, "GPU": 1.0}]
    check_fits(2, 0, nodes, where="the cluster")
    check_fits(1, 1, nodes, where="the cluster")
    with pytest.raises(ConfigError, match=r"^command line: --cpus-per-trial: a trial asks for 4 "
                                          r"CPUs; the cluster has no node with more than 2$"):
        check_fits(4, 0, nodes, where="the cluster")
    with pytest.raises(ConfigError, match=r"--gpus-per-trial: a trial asks for 2 GPUs"):
        check_fits(1, 2, nodes, where="the cluster")
    with pytest.raises(ConfigError, match=r"2 CPUs and 1 GPUs; no node of the cluster has both"):
        check_fits(2, 1, nodes, where="the cluster")
    with pytest.raises(ConfigError, match=r"^g.yaml: resources.cpus_per_trial"):
        check_fits(1, 0, [{"CPU": 0.0}], where="the embedded Ray",
                   names={"cpus_per_trial": "g.yaml: resources.cpus_per_trial"})


def _refused(r: subprocess.CompletedProcess, *want: str) -> str:
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("memgrid: error: "), r.stderr
    assert all(w in r.stderr for w in want), r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    return r.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_more_cpus_per_trial_than_the_machine_has_is_refused_before_ray(tiny_grid, tmp_path):
    out = tmp_path / "res"
    _refused(memgrid_cli("run", tiny_grid, "--out", out, "--cpus-per-trial", os.cpu_count() + 1,
                         timeout=60), "--cpus-per-trial", "this machine has")
    _refused(memgrid_cli("run", tiny_grid, "--out", out, "--num-cpus", 1, "--cpus-per-trial", 2,
                         timeout=60), "--cpus-per-trial", "--num-cpus gives the embedded Ray 1")
    _refused(memgrid_cli("run", tiny_grid, "--out", out, "--num-cpus", 1, "--address", "auto",
                         timeout=60), "--num-cpus: only for the embedded Ray")
    assert not out.exists()


def test_an_address_nobody_serves_ends_in_one_line(tiny_grid, tmp_path):
    out = tmp_path / "res"
    # a port nobody serves: refused at once (ray.init would retry for minutes, deaf to Ctrl-C)
    _refused(memgrid_cli("run", tiny_grid, "--out", out, "--address", f"127.0.0.1:{_free_port()}",
                         timeout=60), "command line: --address 127.0.0.1:", "no Ray cluster")
    # a port something serves that is not Ray (any interface: Ray dials the machine's address)
    server = socket.create_server(("", 0))
    port = server.getsockname()[1]

    def answer():
        conn, _ = server.accept()
        conn.recv(100)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        conn.close()

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    try:
        _refused(memgrid_cli("run", tiny_grid, "--out", out, "--address", f"127.0.0.1:{port}",
                             timeout=60), "--address", "not a Ray cluster")
    finally:
        server.close()
    _refused(memgrid_cli("run", tiny_grid, "--out", out, "--address", "http://127.0.0.1:8265",
                         timeout=60), "--address", "is for memgrid launch")
    # a dry run contacts no cluster, but an address that cannot be one is refused there too
    for bad in ("127.0.0.1:70000", "ray://[::1"):
        _refused(memgrid_cli("run", tiny_grid, "--out", out, "--address", bad, "--dry-run",
                             timeout=60), f"command line: --address {bad}: not host:port")
    assert memgrid_cli("run", tiny_grid, "--out", out, "--address", f"127.0.0.1:{_free_port()}",
                       "--dry-run", timeout=60).returncode == 0
    assert not out.exists()                         # nothing written


# ---------------------------------------------------------------------------------------------
# --dry-run


def test_dry_run_shows_points_stored_packs_and_time_and_writes_nothing(tiny_grid, tmp_path):
    out = tmp_path / "res"
    code = ("import sys; from memgrid.cli import main\n"
            "try:\n    main(sys.argv[1:])\n"
            "except SystemExit as e:\n"
            "    print('imported:', *sorted(m for m in ('ray', 'torch') if m in sys.modules))\n"
            "    raise\n")
    cmd = [sys.executable, "-c", code, "run", "--dry-run", str(tiny_grid), "--out", str(out),
           "--pack", "3", "--num-cpus", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "[tiny] dry run: nothing started, nothing written"
    assert lines[1] == f"  points: 16; stored in {out}: 0; to train: 16"
    # rnn and gru of 8 points each, packs of at most 3: 3, 3, 2 each
    assert lines[2] == "  packs: 6 (3 x4, 2 x2 points), for 2 trials at once (1 CPU each)"
    assert lines[3].split() == ["arch", "l", "c", "points", "packs", "sizes"]
    assert lines[4].split() == ["gru", "1", "2", "8", "3", "3", "x2,", "2", "x1"]
    grid = load_grid(tiny_grid)
    packs = plan_packs(grid.points(), 3, 2)
    assert f"~{fmt_s(makespan_s(packs, 2))} by the cost model" in lines[6]
    assert lines[-1] == "imported:"                 # neither Ray nor torch
    assert not out.exists()

    # with points stored: counted, and left out of the packs
    stored = grid.points()[:5]
    write_points(str(out), "pack-x-0000",
                 [dict(point_settings(p, "tiny"), stop_reason="solved", loss=0.0,
                             epochs=1) for p in stored],
                       [dict(point_id=p.point_id, epoch=1, train_loss=0.0, eval_loss=0.0)
                        for p in stored])
    before = sorted(p.name for p in out.rglob("*"))
    lines = describe_plan(grid, str(out), slots=2)
    assert lines[1] == f"  points: 16; stored in {out}: 5; to train: 11"
    assert sorted(p.name for p in out.rglob("*")) == before


# ---------------------------------------------------------------------------------------------
# A real embedded Ray: loopback only, and every process gone on Ctrl-C, whenever it comes.


LONG = dict(name="long", axes={"arch": ["rnn"], "layers": [1], "cells": [2], "position": [6],
                               "seed": "0..3"},
            task={"q_min": 4, "q_max": 6}, stop={"plateau": False}, resources={"pack": 1},
            # never finishes by itself in a test: it is interrupted
            train={"max_epochs": 10_000_000, "eval_size": 128, "eval_every": 100, "batch_size": 32})


class Run:
    """`memgrid run` in a session and a Ray temp dir of its own."""

    def __init__(self, grid: Path, out: Path):
        self.out = out
        # short: Ray's unix sockets live under the temp dir (108-byte limit)
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="mgd-", dir="/tmp"))
        env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_TMPDIR=str(self.ray_tmp))
        env.pop("RAY_ADDRESS", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "memgrid.cli", "run", str(grid),
                                      "--out", str(out)], cwd=ROOT, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self.err: list[str] = []

    def wait_line(self, text: str) -> None:
        """Read stderr until a line holds `text`."""
        for line in self.proc.stderr:
            self.err.append(line.rstrip("\n"))
            if text in line:
                return
        raise AssertionError(f"no line with {text!r}: {self.err}")

    def wait_file(self, pattern: str, under: Path | None = None, timeout_s: float = 240) -> None:
        """Wait until a non-empty file matching `pattern` exists (under the Ray temp dir)."""
        deadline = time.monotonic() + timeout_s
        while not any(p.is_file() and p.stat().st_size > 0
                      for p in (under or self.ray_tmp).glob(pattern)):
            assert self.proc.poll() is None, self.finish()
            assert time.monotonic() < deadline, f"no {pattern}"
            time.sleep(0.05)

    def processes(self) -> dict[int, str]:
        """pid -> name of the live processes of this run: in its session, or holding a file of
        its Ray temp dir (Ray's agents rename themselves, but keep their logs open)."""
        found = {}
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                stat = (d / "stat").read_text()
                fields = stat[stat.rindex(")") + 2:].split()
                if fields[0] == "Z":
                    continue
                mine = int(fields[3]) == self.proc.pid          # field 6: the session id
                if not mine:
                    mine = str(self.ray_tmp) in (d / "cmdline").read_bytes().decode(errors="replace")
                if not mine:
                    mine = any(str(self.ray_tmp) in os.readlink(f) for f in (d / "fd").iterdir())
            except (OSError, ValueError):
                continue
            if mine:
                found[int(d.name)] = stat[stat.index("(") + 1: stat.rindex(")")]
        return found

    def finish(self, timeout_s: float = 120) -> str:
        try:
            rest = self.proc.communicate(timeout=timeout_s)[1]
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self.err += rest.splitlines()
        return "\n".join(self.err)

    def kill(self) -> None:
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


@pytest.fixture
def run_long(tmp_path):
    runs = []

    def start() -> Run:
        runs.append(Run(write_grid(tmp_path / "long.yaml", **LONG), tmp_path / "res"))
        return runs[-1]

    yield start
    for r in runs:
        r.cleanup()


def _listening(pids: set[int]) -> list[tuple[int, str, str]]:
    """(pid, address, port) of every listening TCP socket and every bound, unconnected UDP
    socket the processes `pids` hold."""
    owner = {}
    for pid in pids:
        try:
            for f in Path(f"/proc/{pid}/fd").iterdir():
                link = os.readlink(f)
                if link.startswith("socket:["):
                    owner[link[8:-1]] = pid
        except OSError:
            continue
    found = []
    for table, listen in (("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")):
        with open(f"/proc/net/{table}") as f:           # 0A: LISTEN; 07: unconnected
            next(f)
            for row in f:
                cols = row.split()
                local, state, inode = cols[1], cols[3], cols[9]
                if state != listen or inode not in owner:
                    continue
                addr, port = local.split(":")
                raw = bytes.fromhex(addr)
                # the kernel writes each 32-bit word in host (little-endian) order
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.append((owner[inode], str(ipaddress.ip_address(raw)), str(int(port, 16))))
    return found


def _loopback(addr: str) -> bool:
    ip = ipaddress.ip_address(addr)
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None
                              and ip.ipv4_mapped.is_loopback)


def _assert_interrupted(run: Run, status: int) -> None:
    text = run.finish()
    assert run.proc.returncode == status, text
    assert text.splitlines()[-1].startswith("memgrid: interrupted: "), text
    assert text.splitlines()[-1].endswith("run the same command again to finish"), text
    for noise in ("Traceback", "Tuner.restore", "FileNotFoundError", "Stop signal received"):
        assert noise not in text, text
    assert run.processes() == {}, text             # nothing of the run is left


@pytest.mark.slow
def test_embedded_ray_listens_on_loopback_only_and_ctrl_c_ends_it_cleanly(run_long):
    run = run_long()
    run.wait_line("starting Ray")
    run.wait_file("_tune/*/pack_trial_*/result.json", under=run.out)
    procs = run.processes()                        # Ray is up and a trial has reported
    sockets = _listening(set(procs))
    names = {procs[pid] for pid, _, _ in sockets}
    assert {"gcs_server", "raylet"} <= names, (procs, sockets)
    assert any(n.startswith("ray::DashboardA") for n in names), names
    assert any(n.startswith("ray::RuntimeEnv") for n in names), names
    # its node agent minimal, whether or not ray[default] is installed (it is, here): no
    # metrics server, its port recorded as -1
    ports = list(run.ray_tmp.glob("ray/session_*/metrics_agent_port_*"))
    assert {p.read_text().strip() for p in ports} == {"-1"}, ports     # (and session_latest)
    wide = [(procs[pid], addr, port) for pid, addr, port in sockets if not _loopback(addr)]
    assert wide == [], wide
    assert run.proc.poll() is None                 # the scan saw the run alive
    run.proc.send_signal(signal.SIGINT)
    _assert_interrupted(run, 130)


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["start line", "agents up"])
def test_ctrl_c_during_ray_start_up_leaves_no_process(run_long, moment):
    run = run_long()
    run.wait_line("starting Ray")
    if moment == "agents up":       # written by the agents themselves: they are running
        run.wait_file("ray/session_*/logs/dashboard_agent.log")
        run.wait_file("ray/session_*/logs/runtime_env_agent.log")
    run.proc.send_signal(signal.SIGINT)
    _assert_interrupted(run, 130)
