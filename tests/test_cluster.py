"""`memgrid launch` and cluster.yaml.

The cluster tests start a real multi-node Ray cluster on this machine: a head node and worker
nodes, each a `ray start --block` with its own ports, temp dir and session, token authentication
on (a token of the test's own, never ~/.ray/auth_token), the job server on loopback. A node is
stopped, or killed, by the process ids of its own session only: `ray stop` would take down every
Ray on the machine. A grid goes in through `memgrid launch --address`, as a user sends it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow.dataset as pads
import pytest
import requests
import yaml
from click.testing import CliRunner

from memgrid.run import launch as launch_mod
from memgrid.cli import main
from memgrid.grid_file import load_grid

from .conftest import ROOT, stored_parts, write_grid

RAY = [sys.executable, "-m", "ray.scripts.scripts"]
CLUSTER_YAML = ROOT / "cluster.yaml"


def cluster_test(f):
    """Starts Ray nodes: slow, and run by CI like every test."""
    return pytest.mark.slow(pytest.mark.cluster(pytest.mark.timeout(300)(f)))


# ---------------------------------------------------------------------------------------------
# cluster.yaml


def test_cluster_yaml_passes_rays_own_validator():
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(CLUSTER_YAML.read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(raw, schema)                     # as written: no stray keys
    validate_config(prepare_config(copy.deepcopy(raw)))  # as `ray up` reads it

    head = raw["available_node_types"][raw["head_node_type"]]
    workers = {k: v for k, v in raw["available_node_types"].items() if k != raw["head_node_type"]}
    assert raw["provider"]["type"] == "aws" and "min_workers" not in head
    assert any(v["node_config"]["InstanceType"].startswith(("g", "p")) for v in workers.values())
    assert all(0 <= v["min_workers"] <= v["max_workers"] <= raw["max_workers"] for v in workers.values())
    assert any("memgrid" in c for c in raw["setup_commands"])
    assert raw["metadata"]["memgrid"]["results"].startswith("s3://")
    head_start = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    for cmds in (raw["head_start_ray_commands"], raw["worker_start_ray_commands"]):
        assert all("RAY_AUTH_MODE=token" in c for c in cmds if "ray start" in c)


def test_cluster_yaml_holds_no_credentials():
    text = CLUSTER_YAML.read_text()
    settings = json.dumps(yaml.safe_load(text))          # the settings, comments left out
    assert not re.search(r"AKIA[0-9A-Z]{16}|aws_(access_key_id|secret_access_key)|secret|password"
                         r"|PRIVATE KEY|ssh_private_key|RAY_AUTH_TOKEN=", settings, re.I)
    assert "FILL IN" in text   # the user's own values are marked


def test_load_cluster_reads_results_and_dashboard_port(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("t" * 32)
    cluster = launch_mod.load_cluster(CLUSTER_YAML)
    assert launch_mod.results_root(cluster) == "s3://YOUR-BUCKET/memgrid"
    assert launch_mod.dashboard_port(cluster) == 8265


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming the file and key, exit status 2, nothing started.


@pytest.fixture
def nothing_starts(monkeypatch):
    calls = []
    for name in ("check_provider", "ray_up", "open_tunnel", "connect"):
        monkeypatch.setattr(launch_mod, name, lambda *a, _n=name, **k: calls.append(_n))
    return calls


def _bad_cluster(tmp_path, **change):
    raw = yaml.safe_load(CLUSTER_YAML.read_text())
    raw["file_mounts"] = {"~/memgrid": str(ROOT)}
    raw.update(change)
    return write_grid(tmp_path / "cluster.yaml", **raw)


@pytest.mark.parametrize("case", ["missing cluster file", "unknown cluster key", "wrong type",
                                  "head type", "token file", "bad grid", "no target", "relative out"])
def test_bad_input_ends_in_one_line_and_starts_nothing(case, tmp_path, nothing_starts, tiny_grid):
    grid = str(tiny_grid)
    cases = {
        "missing cluster file": lambda: (["--cluster", str(tmp_path / "nope.yaml"), grid],
                                         "nope.yaml: cannot read"),
        "unknown cluster key": lambda: (["--cluster", _bad_cluster(tmp_path, max_wrkers=2), grid],
                                        "cluster.yaml: (top level): Additional properties are not "
                                        "allowed ('max_wrkers' was unexpected)"),
        "wrong type": lambda: (["--cluster", _bad_cluster(tmp_path, max_workers="many"), grid],
                               "cluster.yaml: max_workers: 'many' is not of type 'integer'"),
        "head type": lambda: (["--cluster", _bad_cluster(tmp_path, head_node_type="cpu"), grid],
                              "cluster.yaml: `head_node_type` must be one of `available_node_types`"),
        "token file": lambda: (["--cluster", _bad_cluster(tmp_path, file_mounts={"~/.ray/auth_token": "no/auth_token"}),
                                grid], "cluster.yaml: file_mounts.~/.ray/auth_token: no/auth_token does not "
                                       "exist here (create a token with `ray get-auth-token --generate`)"),
        "bad grid": lambda: (["--address", "http://127.0.0.1:1", write_grid(
            tmp_path / "g.yaml", axes={"arch": ["rnn"], "layers": [1], "cells": [2], "position": [1],
                                       "seed": [0], "depth": [2]})], "g.yaml: axes.depth: unknown axis"),
        "no target": lambda: ([grid], "command line: give one of --cluster CLUSTER.yaml or --address URL"),
        "relative out": lambda: (["--address", "http://10.0.0.7:8265", grid, "--out", "res"],
                                 "command line: --out: 'res' is relative"),
    }
    args, want = cases[case]()
    r = CliRunner().invoke(main, ["launch", *map(str, args)])
    assert r.exit_code == 2, r.output
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("memgrid: error: ") and want in r.stderr
    assert "Traceback" not in r.output and r.stdout == ""
    assert nothing_starts == []


def test_job_spec_carries_memgrid_and_runs_the_same_command(tiny_grid):
    grid = load_grid(tiny_grid)
    spec = launch_mod.job_spec(str(tiny_grid), grid, "s3://b/res x", {"pack": "1", "smoke": True,
                                                                      "no_plateau": False,
                                                                      "max_points": 200000}, "python")
    assert spec["entrypoint"] == ("python -m memgrid.cli run tiny.yaml --out 's3://b/res x' "
                                  "--address auto --pack 1 --smoke --max-points 200000")
    assert spec["runtime_env"]["py_modules"] == [str(ROOT / "memgrid")]
    assert spec["metadata"] == {"memgrid_grid": "tiny", "memgrid_out": "s3://b/res x"}


@pytest.mark.parametrize("address, loopback", [("http://127.0.0.1:8265", True), ("localhost:8265", True),
                                               ("http://[::1]:8265", True), ("http://10.1.2.3:8265", False),
                                               ("https://ray.example.org", False)])
def test_only_a_loopback_job_server_gets_the_token_unasked(address, loopback):
    assert launch_mod.is_loopback(address) is loopback


# ---------------------------------------------------------------------------------------------
# A real cluster on this machine.


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class RayNode:
    """One `ray start --block` in a session of its own: every process of the node (raylet,
    agents, workers) carries that session id, so they are found and stopped by process id."""

    def __init__(self, args: list[str], env: dict, log: Path):
        self.log = open(log, "w")
        self.proc = subprocess.Popen([*RAY, "start", "--block", "--disable-usage-stats", *args], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def processes(self) -> dict[int, str]:
        """pid -> command name of the live processes in this node's session."""
        out = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    stat = (d / "stat").read_text()
                except OSError:
                    continue
                comm, fields = stat[stat.index("(") + 1: stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
                # field 6 of stat: the session id; a zombie (state Z) is dead, not yet reaped
                if int(fields[3]) == self.proc.pid and fields[0] != "Z":
                    out[int(d.name)] = comm
        return out

    def kill(self) -> None:
        """SIGKILL every process of the node, by id, until none is left: the node dies at once,
        as in a power cut (a raylet killed alone leaves its workers to run what they were
        given, and an actor Tune reuses is given trial after trial by the driver directly)."""
        while pids := self.processes():
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()       # `ray start --block` stops its processes on SIGTERM
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        self.kill()                     # whatever outlived it
        if self.proc.poll() is None:
            self.proc.wait(10)
        self.log.close()


class LocalCluster:
    def __init__(self, root: Path):
        self.root = root
        self.token = root / "token"
        self.token.write_text(secrets.token_hex(32))
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
        # the nodes' own Python first on PATH, as on a cluster that installed memgrid's deps
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        self.env = dict(env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token))
        gcs, dash, client, *head_ports = _free_ports(9)
        self.gcs, self.dashboard = f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}"
        self.workers: list[RayNode] = []
        self.head = RayNode(["--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
                             "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
                             *self._node_ports(head_ports), "--temp-dir", str(root / "h"), "--num-cpus", "1",
                             "--num-gpus", "0"],     # GPUs only where a test gives them
                            self.env, root / "head.log")
        self.wait_nodes(1)

    @staticmethod
    def _node_ports(p: list[int]) -> list[str]:
        return ["--node-manager-port", str(p[0]), "--object-manager-port", str(p[1]),
                "--dashboard-agent-listen-port", str(p[2]), "--dashboard-agent-grpc-port", str(p[3]),
                "--runtime-env-agent-port", str(p[4]), "--metrics-export-port", str(p[5]),
                "--min-worker-port", "0", "--max-worker-port", "0", "--object-store-memory", str(100 * 2**20)]

    def add_worker(self, *extra: str) -> RayNode:
        """A worker node of 1 CPU and no GPU; `extra`: more `ray start` options (`--num-gpus 1`)."""
        n = len(self.workers) + 1
        node = RayNode(["--address", self.gcs, "--node-ip-address", "127.0.0.1", *self._node_ports(_free_ports(6)),
                        "--temp-dir", str(self.root / f"w{n}"), "--num-cpus", "1", "--num-gpus", "0",
                        *extra], self.env,       # a later --num-gpus wins
                       self.root / f"worker{n}.log")
        self.workers.append(node)
        self.wait_nodes(len([w for w in self.workers if w.proc.poll() is None]) + 1)
        return node

    def nodes(self, headers: dict | None = None) -> list[dict]:
        """Ray's state API over the job server's HTTP port, with the cluster's token."""
        h = {"Authorization": f"Bearer {self.token.read_text()}"} if headers is None else headers
        r = requests.get(f"{self.dashboard}/api/v0/nodes?limit=100", headers=h, timeout=5)
        r.raise_for_status()
        return r.json()["data"]["result"]["result"]

    def job(self, job_id: str) -> dict:
        """A job's details from the job server's REST API."""
        r = requests.get(f"{self.dashboard}/api/jobs/{job_id}", timeout=5,
                         headers={"Authorization": f"Bearer {self.token.read_text()}"})
        r.raise_for_status()
        return r.json()

    def job_log(self, job_id: str) -> str:
        """A job's log from the job server, less the raylets' lines Ray mixes in."""
        r = requests.get(f"{self.dashboard}/api/jobs/{job_id}/logs", timeout=5,
                         headers={"Authorization": f"Bearer {self.token.read_text()}"})
        r.raise_for_status()
        return "\n".join(x for x in r.json()["logs"].splitlines()
                         if "(raylet)" not in x and "[state-dump]" not in x)

    def wait_nodes(self, alive: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.head.proc.poll() is None, (self.root / "head.log").read_text()[-3000:]
            try:
                if sum(n["state"] == "ALIVE" for n in self.nodes()) >= alive:
                    return
            except (requests.RequestException, KeyError):
                pass
            time.sleep(0.5)
        raise AssertionError(f"cluster did not reach {alive} alive nodes in {timeout:.0f} s")

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        self.head.stop()


@pytest.fixture(scope="module")
def cluster():
    # short path: Ray's unix sockets live under the temp dir (108-byte limit)
    root = Path(tempfile.mkdtemp(prefix="mgc-", dir="/tmp"))
    c = None
    try:
        c = LocalCluster(root)
        yield c
    finally:
        if c is not None:
            c.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def worker(cluster):
    node = cluster.add_worker()
    yield node
    node.stop()


def launch_env(cluster: LocalCluster, *, auth_mode: bool = True) -> dict:
    env = dict(cluster.env, PYTHONUNBUFFERED="1")
    if not auth_mode:
        env.pop("RAY_AUTH_MODE")   # memgrid turns token auth on itself for a loopback job server
    return env


def memgrid_launch(cluster, *args, auth_mode=True, timeout=240, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "memgrid.cli", "launch", *map(str, args)], cwd=ROOT,
                          env=launch_env(cluster, auth_mode=auth_mode), capture_output=True, text=True,
                          timeout=timeout, **kw)


def small_grid(tmp_path: Path, name: str, positions="1..3", seeds="0..3", max_epochs=300) -> Path:
    """rnn l=1 c=2, one trial per point: many short trials, so a kill lands mid-run."""
    return write_grid(tmp_path / f"{name}.yaml", name=name,
                      axes={"arch": ["rnn"], "layers": [1], "cells": [2], "position": positions, "seed": seeds},
                      train={"max_epochs": max_epochs, "eval_size": 128, "eval_every": 20, "batch_size": 32},
                      stop={"plateau": False}, resources={"pack": 1})


def assert_every_point_once(grid: Path, out: Path) -> pd.DataFrame:
    """Every point of the grid exactly once in the part files as written (no reader dedup)."""
    want = {p.point_id for p in load_grid(grid).points()}
    points = pads.dataset(out / "points", format="parquet").to_table().to_pandas()
    curves = pads.dataset(out / "curves", format="parquet").to_table().to_pandas()
    assert points.point_id.is_unique, points.point_id.value_counts().head()
    assert set(points.point_id) == want
    assert not curves.duplicated(["point_id", "epoch"]).any()
    assert set(curves.point_id) == want
    return points


def _job_id(stdout: str) -> str:
    return re.search(r"submitted job (\S+):", stdout).group(1)


@cluster_test
def test_launch_on_two_nodes_stores_every_point_once(cluster, worker, tmp_path):
    with pytest.raises(requests.HTTPError):   # token authentication is on
        cluster.nodes(headers={})
    grid, out = small_grid(tmp_path, "two"), tmp_path / "res"
    # RAY_AUTH_MODE unset: the token (RAY_AUTH_TOKEN_PATH) is used for the loopback job server
    r = memgrid_launch(cluster, "--address", cluster.dashboard, grid, "--out", out, auth_mode=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "12/12 points stored (12 trained now, 0 before)" in r.stdout
    assert f"succeeded; results in {out}" in r.stdout
    points = assert_every_point_once(grid, out)
    assert (points.epochs > 0).all()

    s = memgrid_launch(cluster, "--address", cluster.dashboard, "--status", _job_id(r.stdout))
    assert s.returncode == 0 and "SUCCEEDED" in s.stdout and str(out) in s.stdout


USER_CELL = """
import torch
from memgrid import Cell


def step(w, x, state):
    (h,) = state
    h = torch.tanh(torch.baddbmm(w["b"][:, :, None], w["w_ih"], x) + torch.bmm(w["w_hh"], h))
    return h, (h,)


CELL = Cell("remote_tanh", lambda m, c: {"w_ih": (c, m), "w_hh": (c, c), "b": (c,)}, step)
"""


@cluster_test
def test_launch_ships_a_users_cell_to_nodes_that_never_saw_it(cluster, worker, tmp_path):
    """A grid naming a cell by a path outside the repository, launched on the two-node
    cluster: the job carries the file, every point is stored once under the cell's name."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "cell.py").write_text(USER_CELL)
    grid = write_grid(tmp_path / "own.yaml", name="own",
                      axes={"arch": ["mine/cell.py:CELL"], "layers": [1], "cells": [2],
                            "position": "1..2", "seed": "0..1"},
                      train={"max_epochs": 100, "eval_size": 128, "eval_every": 20,
                             "batch_size": 32}, resources={"pack": 1})
    out = tmp_path / "res"
    r = memgrid_launch(cluster, "--address", cluster.dashboard, grid, "--out", out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "4/4 points stored (4 trained now, 0 before)" in r.stdout
    points = assert_every_point_once(grid, out)
    assert set(points["arch"]) == {"remote_tanh"} and (points["epochs"] > 0).all()
    assert points["cell_source"].str.endswith("cells/remote_tanh.py:CELL sha256:"
                                              + hashlib.sha256(USER_CELL.encode()).hexdigest()).all()


@cluster_test
def test_grid_survives_a_worker_node_killed_mid_run(cluster, tmp_path):
    """The kill lands mid-grid by construction: the trials ask for a GPU (a resource Ray only
    counts: with no CUDA the points train on the CPU), which only the worker node has, so the
    worker runs the grid alone, one point at a time. When the first point is stored, the
    other seven are still to run there (each a trial and 3000 epochs, against the moment it
    takes to send the kill), so the kill always cuts the grid; a second GPU node then takes
    the retried and the remaining trials."""
    grid, out = small_grid(tmp_path, "kill", positions="1..2", max_epochs=3000), tmp_path / "res"
    first = cluster.add_worker("--num-gpus", "1")
    second = None
    proc = subprocess.Popen([sys.executable, "-m", "memgrid.cli", "launch", "--address", cluster.dashboard,
                             str(grid), "--out", str(out), "--gpus-per-trial", "1"], cwd=ROOT,
                            env=launch_env(cluster), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 150
        while len(stored_parts(out)) < 1:      # the first point is stored: the worker is at work
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "no progress to interrupt"
            time.sleep(0.2)
        killed = {n["node_id"] for n in cluster.nodes() if n["state"] == "ALIVE" and not n["is_head_node"]}
        assert len(killed) == 1
        first.kill()                    # every process of the worker node: it dies at once
        assert len(stored_parts(out)) < 8
        twice = memgrid_launch(cluster, "--address", cluster.dashboard, grid, "--out", out)
        assert twice.returncode == 1 and "is already running into" in twice.stderr, twice.stderr
        second = cluster.add_worker("--num-gpus", "1")
        stdout, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
        for node in (first, second):
            if node is not None:
                node.stop()
    assert proc.returncode == 0, stdout[-4000:]
    assert "8/8 points stored" in stdout
    assert_every_point_once(grid, out)
    node_id, deadline = killed.pop(), time.monotonic() + 60   # Ray's health check marks it dead
    while {n["node_id"]: n["state"] for n in cluster.nodes()}[node_id] != "DEAD":
        assert time.monotonic() < deadline, "the killed node is still alive"
        time.sleep(1)


@cluster_test
def test_run_asking_more_than_any_node_has_ends_in_one_line(cluster, tmp_path):
    """Ray would leave every trial waiting behind its "insufficient resources" warning."""
    grid, out = small_grid(tmp_path, "big"), tmp_path / "res"
    env = launch_env(cluster)
    for flag, want in (("--cpus-per-trial", "a trial asks for 2 CPUs; the Ray cluster at "
                                            f"{cluster.gcs} has no node with more than 1"),
                       ("--gpus-per-trial", "a trial asks for 2 GPUs")):
        if flag == "--gpus-per-trial":
            worker = cluster.add_worker("--num-gpus", "1")    # a GPU, but not two
        try:
            r = subprocess.run([sys.executable, "-m", "memgrid.cli", "run", str(grid), "--out", str(out),
                                "--address", cluster.gcs, flag, "2"], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=120)
        finally:
            if flag == "--gpus-per-trial":
                worker.stop()
        assert r.returncode == 2, r.stdout + r.stderr
        assert r.stderr.startswith(f"memgrid: error: command line: {flag}: {want}"), r.stderr
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
        assert not out.exists()                   # nothing written


@cluster_test
def test_stopped_job_is_finished_by_launching_again(cluster, tmp_path):
    """The stop lands mid-grid by construction: the trials ask for a GPU, which only a worker
    node has, so that node trains the grid one point at a time. Once the first point is
    stored the node is killed, every process at once (seven trials are still to run against
    the moment that takes), and the trials left wait for a GPU that no node has: no point is
    stored between the kill and the stop. The second launch, on the head's CPU, trains the
    rest."""
    grid, out = small_grid(tmp_path, "again", positions=[1, 2], seeds="0..3"), tmp_path / "res"
    gpu = cluster.add_worker("--num-gpus", "1")
    try:
        r = memgrid_launch(cluster, "--address", cluster.dashboard, grid, "--out", out, "--gpus-per-trial", "1",
                           "--no-follow")
        assert r.returncode == 0, r.stderr
        job = _job_id(r.stdout)
        deadline = time.monotonic() + 150
        while len(stored_parts(out)) < 1:
            assert cluster.job(job)["status"] in ("PENDING", "RUNNING"), cluster.job(job)
            assert time.monotonic() < deadline, "no progress to interrupt"
            time.sleep(0.2)
        gpu.kill()
    finally:
        gpu.stop()
    s = memgrid_launch(cluster, "--address", cluster.dashboard, "--stop", job)
    assert s.returncode == 0, s.stderr
    while cluster.job(job)["status"] != "STOPPED":
        assert time.monotonic() < deadline, cluster.job_log(job)[-3000:]
        time.sleep(0.5)
    before = len(pads.dataset(out / "points", format="parquet").to_table(columns=["point_id"]))
    assert 1 <= before < 8

    r = memgrid_launch(cluster, "--address", cluster.dashboard, grid, "--out", out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"8/8 points stored ({8 - before} trained now, {before} before)" in r.stdout, r.stdout[-3000:]
    assert_every_point_once(grid, out)


PATCH = """
import sys
from pathlib import Path
import memgrid.run.launch as L

log = Path(sys.argv.pop(1))
address = sys.argv.pop(1)
def note(*a):
    with log.open("a") as f:
        f.write(" ".join(map(str, a)) + "\\n")
L.check_provider = lambda path, cluster: note("provider", cluster["provider"]["type"])
L.ray_up = lambda path: note("up", path)
L.open_tunnel = lambda path, port: (note("tunnel", port), (address, lambda: note("closed")))[1]
from memgrid.cli import main
main(sys.argv[1:], prog_name="memgrid")
"""


@cluster_test
def test_launch_cluster_brings_it_up_and_submits_through_the_tunnel(cluster, tmp_path):
    """--cluster with the cloud replaced at the provider boundary (`ray up`, the SSH tunnel):
    the job goes to the real cluster, results to the cluster file's metadata.memgrid.results,
    here a file:// URI (pyarrow's filesystems, like s3:// on a real cluster)."""
    raw = yaml.safe_load(CLUSTER_YAML.read_text())
    raw["file_mounts"] = {"~/memgrid": str(ROOT), "~/.ray/auth_token": str(cluster.token)}
    raw["metadata"]["memgrid"]["results"] = (tmp_path / "bucket").as_uri()   # a pyarrow URI
    cfile = write_grid(tmp_path / "cluster.yaml", **raw)
    grid, log = small_grid(tmp_path, "viaup", positions=[1], seeds="0..2"), tmp_path / "calls.log"

    def run(*args):
        return subprocess.run([sys.executable, "-c", PATCH, str(log), cluster.dashboard, "launch", *map(str, args)],
                              cwd=ROOT, env=launch_env(cluster, auth_mode=False), capture_output=True,
                              text=True, timeout=240)

    r = run("--cluster", cfile, grid)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = tmp_path / "bucket" / "viaup"
    assert f"succeeded; results in {out.as_uri()}" in r.stdout
    assert_every_point_once(grid, out)
    assert log.read_text().split("\n")[:4] == ["provider aws", f"up {cfile}", "tunnel 8265", "closed"]

    log.unlink()
    s = run("--cluster", cfile, "--status", _job_id(r.stdout))   # no `ray up` for a status
    assert s.returncode == 0 and "SUCCEEDED" in s.stdout
    assert log.read_text().split("\n")[:3] == ["provider aws", "tunnel 8265", "closed"]

