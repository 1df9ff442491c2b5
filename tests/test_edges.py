"""Hostile input ends in one line: exit status 2 (130 / 143 / 129 for signals), naming the
file, key or flag, no traceback, nothing started and nothing written. Every case runs the real
command line in a fresh process, as a user would."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from memgrid.config import INT32_MAX, ConfigError, mc_length_min
from memgrid.grid_file import MAX_FILE_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES, load_yaml

from .conftest import ROOT, memgrid_cli

SHIPPED = ROOT / "docs/data/fig4_rnn-paper"
"""a small shipped results folder (100 points)"""
LARGER = ROOT / "docs/data/fig6_rnn-paper"
"""a shipped results folder whose report takes seconds to write"""

GRID = {"name": "g", "axes": {"arch": ["rnn"], "layers": [1], "cells": [2], "position": "1..2",
                              "seed": "0..1"},
        "task": {"q_min": 4, "q_max": 6},
        "train": {"max_epochs": 40, "eval_size": 64, "eval_every": 20, "batch_size": 16}}


def refused(r: subprocess.CompletedProcess, *want: str) -> str:
    """The one line of a command refused for its input."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith("memgrid: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == "", r.stdout + r.stderr
    for w in want:
        assert w in r.stderr, (w, r.stderr)
    return r.stderr


def grid_file(tmp_path: Path, name: str = "g.yaml", **changes) -> Path:
    """GRID with `changes` (section__key=value) as a YAML file."""
    raw = json.loads(json.dumps(GRID))
    for dotted, v in changes.items():
        section, key = dotted.split("__")
        raw.setdefault(section, {})[key] = v
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def run_refused(tmp_path: Path, grid: Path, *flags, want=()) -> str:
    """`memgrid run GRID` refused in one line, its results folder never made."""
    out = tmp_path / "res"
    line = refused(memgrid_cli("run", grid, "--out", out, *flags, timeout=60), *want)
    assert not out.exists()
    return line


# ---------------------------------------------------------------------------------------------
# Grid files and cluster files a YAML reader chokes on


ALIAS_BOMB = "".join(
    f"{k}: &{k} [{', '.join([f'*{prev}'] * 9) if prev else ', '.join(['lol'] * 9)}]\n"
    for prev, k in zip([None, *"abcdefg"], "abcdefgh"))
"""a file of about 500 bytes that expands to 9^8 = 43 million strings"""

YAML_FILES = {
    "nul byte": ("name: g\x00\n".encode(), "at line 1: character U+0000"),
    "nested": (("a: " + "[" * 5000 + "]" * 5000 + "\n").encode(), "nested more than"),
    "nested below the recursion limit": (("a: " + "[" * 60 + "]" * 60 + "\n").encode(),
                                         "nested more than"),
    "alias bomb": (ALIAS_BOMB.encode(), "expands to more than"),
    "alias to itself": (b"a: &a [*a]\n", "nested more than"),
    "binary": (bytes(range(256)) * 4, "not a text file"),
    "too large": (b"seed: [" + b"0, " * (MAX_FILE_BYTES // 3) + b"0]\n", "larger than"),
}


@pytest.mark.parametrize("case", YAML_FILES)
def test_a_grid_file_yaml_cannot_read_is_refused_in_one_line(tmp_path, case):
    blob, want = YAML_FILES[case]
    path = tmp_path / "bad.yaml"
    path.write_bytes(blob)
    run_refused(tmp_path, path, want=(str(path), want))


@pytest.mark.parametrize("case", ["nul byte", "nested", "alias bomb", "binary"])
def test_a_cluster_file_yaml_cannot_read_is_refused_in_one_line(tmp_path, case):
    blob, want = YAML_FILES[case]
    path = tmp_path / "cluster.yaml"
    path.write_bytes(blob)
    grid = grid_file(tmp_path)
    refused(memgrid_cli("launch", "--cluster", path, grid, "--out", "/tmp/x", timeout=60),
            str(path), want)


def test_yaml_bounds_count_aliases_as_what_they_repeat():
    """An alias counts as the nodes it repeats; a tree as deep as allowed is read."""
    ok = "a: " + "[" * (MAX_YAML_DEPTH - 1) + "]" * (MAX_YAML_DEPTH - 1)
    assert load_yaml(ok, "f")["a"] is not None
    with pytest.raises(ConfigError, match="^f: nested more than"):
        load_yaml("a: " + "[" * MAX_YAML_DEPTH + "]" * MAX_YAML_DEPTH, "f")
    n = int(MAX_YAML_NODES ** 0.5)   # n lists of n: about MAX_YAML_NODES expanded, 2n written
    small = f"a: &a [{', '.join(['1'] * n)}]\nb: [{', '.join(['*a'] * (n - 10))}]\n"
    assert len(load_yaml(small, "f")["b"]) == n - 10
    with pytest.raises(ConfigError, match="^f: expands to more than"):
        load_yaml(f"a: &a [{', '.join(['1'] * n)}]\nb: [{', '.join(['*a'] * (n + 10))}]\n", "f")


# ---------------------------------------------------------------------------------------------
# Settings past what the points table and the machine hold


BOUNDS = {
    "seed 2^31": (dict(axes__seed=[0, 2**31]), (), "axes.seed"),
    "seed 2^64": (dict(axes__seed=[2**64]), (), "axes.seed"),
    "seed 3e9": (dict(axes__seed=[3e9]), (), "axes.seed"),
    "max_epochs 2^31": (dict(train__max_epochs=2**31), (), "train.max_epochs"),
    "mc_length 2e9": (dict(capacity__mc_length=2_000_000_000), (), "capacity.mc_length"),
    "mc_length too short for N": (dict(axes__cells=[1500]), (), "capacity.mc_length"),
    "cells 10000": (dict(axes__cells=[10000], capacity__mc_length=0, train__max_epochs=5000,
                         train__steps_per_epoch=8, train__batch_size=128), (), "axes: its largest"),
    "position 2e9": (dict(axes__position=[2_000_000_000]), (), "axes: its largest"),
    "batch_size 2^31-1": (dict(train__batch_size=INT32_MAX), (), "axes: its largest"),
    "rungs 5e7": (dict(tune_lr__rungs=50_000_000), (), "tune_lr.rungs"),
    "tuning seed 2^31": (dict(tune_lr__seeds=[2**31]), (), "tune_lr.seeds"),
    "--max-epochs 3e9": ({}, ("--max-epochs", "3e9"), "--max-epochs"),
    "--max-epochs 2^31": ({}, ("--max-epochs", 2**31), "command line: --max-epochs"),
    "--cpus-per-trial 0.001": ({}, ("--cpus-per-trial", 0.001), "command line: --cpus-per-trial"),
    "--cpus-per-trial nan": ({}, ("--cpus-per-trial", "nan"), "command line: --cpus-per-trial"),
    "trials at once": ({}, ("--cpus-per-trial", 0.01, "--num-cpus", 4096),
                       "command line: --cpus-per-trial"),
    "--gpus-per-trial nan": ({}, ("--gpus-per-trial", "nan"), "command line: --gpus-per-trial"),
    "--gpus-per-trial inf": ({}, ("--gpus-per-trial", "inf"), "command line: --gpus-per-trial"),
    "--gpus-per-trial -0.5": ({}, ("--gpus-per-trial", -0.5), "command line: --gpus-per-trial"),
    "--pack superscript 2": ({}, ("--pack", "\u00b2"), "command line: --pack"),
    "--out empty": ({}, ("--out", ""), "command line: --out"),
}


@pytest.mark.parametrize("case", BOUNDS)
def test_a_setting_past_what_the_types_and_machine_hold_is_refused_at_load(tmp_path, case):
    changes, flags, want = BOUNDS[case]
    grid = grid_file(tmp_path, **changes)
    line = run_refused(tmp_path, grid, "--dry-run", *flags, want=(want,))
    if not flags:
        assert str(grid) in line


def test_the_shortest_mc_stream_is_the_one_the_mc_can_be_fitted_on():
    """mc_length_min(N) against the MC itself: a stream that long is fitted; 2 steps shorter
    is not (memgrid.stream_mc refuses it)."""
    import torch

    from memgrid.config import default_k_max
    from memgrid.stream_mc import stream_memory_capacity

    for n in (1, 7, 50, 120):
        t = mc_length_min(n)
        g = torch.Generator().manual_seed(n)
        u, h = torch.rand(1, t, generator=g), torch.rand(1, t, n, generator=g)
        mc, _ = stream_memory_capacity(h, u, default_k_max(n))
        assert mc.shape == (1,)
        with pytest.raises(ValueError, match="use a longer stream"):
            stream_memory_capacity(h[:, :t - 2], u[:, :t - 2], default_k_max(n))


def test_a_network_that_blows_up_on_the_mc_stream_gets_no_mc_and_spoils_no_other():
    """A trained network whose states overflow on the MC's long stream (a learning rate that
    trained fine on 15 steps): its MC is NaN, and the row stores none, where the fit used to
    fail and take its whole pack down; the other networks' MC is theirs alone."""
    import torch

    from memgrid.config import default_k_max
    from memgrid.stream_mc import stream_memory_capacity

    n, t = 3, mc_length_min(3)
    g = torch.Generator().manual_seed(0)
    u, h = torch.rand(3, t, generator=g), torch.rand(3, t, n, generator=g)
    alone, alone_k = stream_memory_capacity(h[1:2], u[1:2], default_k_max(n))
    h[0, t // 2:, 1] = float("inf")
    h[2, -1, 0] = float("nan")
    mc, mc_k = stream_memory_capacity(h, u, default_k_max(n))
    assert mc[0].isnan() and mc[2].isnan() and mc_k[0].isnan().all() and mc_k[2].isnan().all()
    assert mc[1] == alone[0] and torch.equal(mc_k[1], alone_k[0])


# ---------------------------------------------------------------------------------------------
# launch --address: nothing there, or something that never answers


def test_launch_to_a_closed_port_is_refused_like_any_unreachable_address(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused(memgrid_cli("launch", "--address", f"http://127.0.0.1:{port}", grid_file(tmp_path),
                        timeout=60), f"--address http://127.0.0.1:{port}", "connection refused")
    refused(memgrid_cli("launch", "--address", f"127.0.0.1:{port}", "--status", "job1",
                        timeout=60), "--address", "connection refused")


def test_launch_to_a_server_that_never_answers_ends_after_its_timeout(tmp_path):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    accepted = threading.Event()
    held = []

    def accept():
        try:
            while True:
                held.append(server.accept()[0])    # and never a byte back
                accepted.set()
        except OSError:
            pass

    threading.Thread(target=accept, daemon=True).start()
    try:
        r = memgrid_cli("launch", "--address", f"http://127.0.0.1:{port}", grid_file(tmp_path),
                        "--out", "/nonexistent/results", timeout=120)
        refused(r, f"--address http://127.0.0.1:{port}", "no answer within")
        assert accepted.is_set()
    finally:
        server.close()
        for c in held:
            c.close()


# ---------------------------------------------------------------------------------------------
# status and analyze on folders they cannot read


def _garbage(d: Path) -> None:
    d.mkdir()
    (d / "grid.json").write_bytes(bytes(range(128, 256)))


FOLDERS = {
    "grid.json garbage": (_garbage, "grid.json: unreadable"),
    "grid.json empty": (lambda d: (d.mkdir(), (d / "grid.json").write_text("")),
                        "grid.json: unreadable"),
    "grid.json a folder": (lambda d: (d / "grid.json").mkdir(parents=True),
                           "grid.json: unreadable"),
    "grid.json a list": (lambda d: (d.mkdir(), (d / "grid.json").write_text("[1, 2]")),
                         "grid.json: unreadable (a JSON list"),
    "grid.json of no grid": (lambda d: (d.mkdir(), (d / "grid.json").write_text(
        '{"name": "x", "axes": [], "fixed": {}}')), "grid.json: axes: not a mapping"),
    "grid.json of 10^10 points": (lambda d: (d.mkdir(), (d / "grid.json").write_text(json.dumps(
        {"name": "x", "fixed": {}, "axes": {"arch": ["rnn"], "layers": [1], "cells": [1],
                                            "position": list(range(1, 10**5 + 1)),
                                            "seed": list(range(10**5))}}))), "10,000,000,000 points"),
    "grid.json with a layer 'x'": (lambda d: (d.mkdir(), (d / "grid.json").write_text(json.dumps(
        {"name": "x", "fixed": {}, "axes": {**GRID["axes"], "layers": [1, "x"]}}))),
        "grid.json: axes.layers: expected int"),
    "not a results folder": (lambda d: (d.mkdir(), (d / "notes.txt").write_text("x")),
                             "not a memgrid results folder"),
}


@pytest.mark.parametrize("command", ["status", "analyze"])
@pytest.mark.parametrize("case", FOLDERS)
def test_a_folder_they_cannot_read_is_named_in_one_line(tmp_path, case, command):
    make, want = FOLDERS[case]
    d = tmp_path / "res"
    make(d)
    before = sorted(p.name for p in d.iterdir())
    refused(memgrid_cli(command, d, timeout=60), str(d), want)
    assert sorted(p.name for p in d.iterdir()) == before     # analyze wrote no report/


@pytest.mark.parametrize("command", ["status", "analyze"])
def test_an_object_store_that_does_not_answer_ends_in_one_line(command, monkeypatch):
    """gs:// retries a bucket that does not exist for many minutes (without a network: for
    ever): the first look is given REACH_S seconds, or $MEMGRID_REACH_S (here 3)."""
    args = ("--out", "/nonexistent/report") if command == "analyze" else ()
    monkeypatch.setenv("MEMGRID_REACH_S", "3")
    refused(memgrid_cli(command, "gs://nonexistent/x", *args, timeout=120), "gs://nonexistent/x",
            "no answer within 3 s")
    monkeypatch.setenv("MEMGRID_REACH_S", "soon")
    refused(memgrid_cli(command, "gs://nonexistent/x", *args, timeout=60), "MEMGRID_REACH_S",
            "'soon' is not a positive number")


def test_analyze_refuses_a_budget_check_of_other_settings(tmp_path):
    """A check must differ from its run only in budget, rate, positions and seeds: one with
    another readout (new_cells reads out linearly, the tuned Figure 6 check by the sum) is
    refused, naming the check's folder and the setting, before anything is written."""
    data = ROOT / "docs" / "data"
    out = tmp_path / "report"
    refused(memgrid_cli("analyze", data / "new_cells", "--budget-check",
                        data / "fig6_tuned_budget_check-2x", "--out", out, timeout=120),
            f"{data / 'fig6_tuned_budget_check-2x'}: budget check: it sets readout to sum where "
            "the run has linear")
    assert not out.exists()


def test_analyze_a_uri_needs_out(tmp_path):
    refused(memgrid_cli("analyze", f"file://{SHIPPED}", timeout=60), "--out", "required")


def test_analyze_a_dangling_out_link_and_out_inside_the_tables(tmp_path):
    res = tmp_path / "res"
    shutil.copytree(SHIPPED, res)
    link = tmp_path / "report"
    link.symlink_to(tmp_path / "gone")
    refused(memgrid_cli("analyze", res, "--out", link, timeout=60), "--out", str(link),
            "does not exist")
    refused(memgrid_cli("analyze", res, "--out", res / "points" / "rep", timeout=60),
            "inside the table folders")
    refused(memgrid_cli("run", grid_file(tmp_path), "--out", link, timeout=60), str(link),
            "does not exist")
    assert not (tmp_path / "gone").exists() and not (res / "points" / "rep").exists()


def _read_only(d: Path) -> bool:
    """Make the folder `d` read-only, even to root (chattr +i); False where it cannot be."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(
                ["chattr", "+i", str(d)], capture_output=True).returncode != 0:
            return False
    else:
        d.chmod(0o555)
    try:
        (d / "probe").write_text("x")
    except OSError:
        return True
    (d / "probe").unlink()
    return False


def _writable(d: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(d)], capture_output=True)
    d.chmod(0o755)


def test_analyze_a_read_only_folder_names_it_and_suggests_out(tmp_path):
    res = tmp_path / "res"
    shutil.copytree(SHIPPED, res)
    if not _read_only(res):
        _writable(res)
        pytest.skip("no way to make a folder read-only here")
    try:
        refused(memgrid_cli("analyze", res, timeout=120), str(res), "--out")
        assert not (res / "report").exists()
    finally:
        _writable(res)


# ---------------------------------------------------------------------------------------------
# run into a folder another program wrote


def test_run_into_a_folder_of_another_programs_parquet_is_refused_before_anything(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    grid = grid_file(tmp_path)
    table = pa.table({"__filename": ["a"], "x": [1.0]})
    top = tmp_path / "top"
    top.mkdir()
    pq.write_table(table, top / "data.parquet")
    nested = tmp_path / "nested"
    (nested / "points").mkdir(parents=True)
    pq.write_table(table, nested / "points" / "data.parquet")
    for d, want in ((top, "data.parquet"), (nested, "points/data.parquet")):
        before = sorted(str(p.relative_to(d)) for p in d.rglob("*"))
        refused(memgrid_cli("run", grid, "--out", d, timeout=60), str(d), want,
                "not a memgrid results folder")
        assert sorted(str(p.relative_to(d)) for p in d.rglob("*")) == before


# ---------------------------------------------------------------------------------------------
# Signals in analyze


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143),
                                        (signal.SIGHUP, 129)])
def test_analyze_ends_on_a_signal_with_one_line(tmp_path, sig, status):
    """The signal arrives once the report folder exists (writing the report of LARGER takes
    seconds after that); one line, 128 + the signal, no file cut short at 0 bytes."""
    out = tmp_path / "rep"
    proc = subprocess.Popen([sys.executable, "-m", "memgrid.cli", "analyze", str(LARGER),
                             "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        while not out.exists() and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == status, (proc.returncode, stderr)
    assert stderr.startswith("memgrid: interrupted: ") and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr and stdout == ""
    assert not [p.name for p in out.iterdir() if p.stat().st_size == 0]


# ---------------------------------------------------------------------------------------------
# Classes of their own


def test_usage_errors_are_one_line(tmp_path):
    grid = grid_file(tmp_path)
    refused(memgrid_cli("run", grid, "--no-such-flag", timeout=60), "--no-such-flag")
    refused(memgrid_cli("run", grid, "--num-cpus", "two", timeout=60), "--num-cpus")
    refused(memgrid_cli("status", timeout=60), "RESULTS")
    refused(memgrid_cli("analyze", SHIPPED, "--threshold", "nan", timeout=60), "--threshold")
    r = memgrid_cli("--help", timeout=60)
    assert r.returncode == 0 and "Usage" in r.stdout


def test_a_grid_file_that_is_a_device_or_a_folder(tmp_path):
    run_refused(tmp_path, Path("/dev/zero"), want=("/dev/zero", "larger than"))
    run_refused(tmp_path, tmp_path, want=(str(tmp_path), "cannot read"))
