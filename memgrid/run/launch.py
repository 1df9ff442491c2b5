"""`memgrid launch`: a grid as a Ray job on a Ray cluster.

Two ways to reach a cluster, both Ray's own:

- ``--cluster cluster.yaml``: Ray's cluster launcher (``ray up``) brings the cluster up or
  updates it, and ``ray exec --port-forward`` tunnels the head's job server (which listens on
  the head's loopback only) to this machine over SSH.
- ``--address http://127.0.0.1:8265``: the job submission address of a running cluster.

The grid is submitted with :class:`ray.job_submission.JobSubmissionClient`: memgrid travels as a
``py_modules`` entry and the grid file in the ``working_dir``; the job's entry point is
``python -m memgrid.cli run GRID --out OUT --address auto``, the same command as on one machine.
The job runs on the head node; its trials run wherever Ray places them and write to ``OUT``,
which every node must reach (a pyarrow URI such as ``s3://bucket/results`` or a shared mount):
the driver never reads a worker's local disk.

Fault tolerance is Ray's and memgrid's own, unchanged: a trial that dies with its node is retried
from its last Tune checkpoint (``FailureConfig``), and one that Tune gives up on for a lost worker
is trained in another round (``memgrid.run.driver.lost_worker``); a job that dies is resumed by launching the
same grid into the same ``OUT`` again, which trains only the points missing there.

Token authentication stays on. Ray's job client sends the token when ``RAY_AUTH_MODE=token``;
for a job server on this machine's loopback (``--address http://127.0.0.1:...`` or the SSH
tunnel of ``--cluster``) memgrid turns it on itself when a token is available, as ``ray.init``
does for a local cluster. It never sends the token to another host unasked.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import click
import yaml

from ..config import ConfigError, Grid
from ..grid_file import load_yaml, read_text
from ..processes import exit_status, stoppable
from ..results import read_grid_identity
from .preflight import EXIT_BAD_INPUT, build_grid, check_identity, check_machine
from .progress import one_line

DEFAULT_DASHBOARD_PORT = 8265
"""Ray's default job server (dashboard) port"""
POLL_S = 2.0
"""seconds between looks at a followed job's status and logs"""
PROBE_S = 10.0
"""how long a job server at --address may take to answer memgrid's first request"""
TUNNEL_WAIT_S = 120.0
"""how long the SSH tunnel to a launched head may take to answer"""
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
RUN_FLAGS = ("pack", "cpus_per_trial", "gpus_per_trial", "max_epochs", "protocol", "no_plateau",
             "smoke", "max_points")
"""`memgrid run` options that `launch` passes through to the job unchanged"""


class LaunchError(RuntimeError):
    """Something outside memgrid failed (the launcher, the job server, the job). One line."""


# ---------------------------------------------------------------------------------------------
# The cluster file: checked with Ray's own schema and defaults before anything starts.


def load_cluster(path: str | Path) -> dict:
    """Read a Ray cluster-launcher file and check it as `ray up` would, plus memgrid's part
    (``metadata.memgrid.results``) and the local files it mounts. Raises :class:`ConfigError`
    naming the file and the key."""
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    path = Path(path)
    # read as `ray up` reads it (PyYAML's safe loader), within memgrid's bounds on YAML files
    raw = load_yaml(read_text(path, what="cluster file"), str(path), loader=yaml.SafeLoader,
                    duplicate_keys=True)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a Ray cluster file is a mapping (cluster_name, provider, ...)")
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    try:
        # the file as written: Ray's schema rejects unknown keys and wrong types
        jsonschema.validate(raw, schema)
        # as `ray up` reads it: merged with the provider's defaults, checked across keys
        logging.getLogger("ray.autoscaler").setLevel(logging.ERROR)  # its notes on defaults, mounts
        validate_config(prepare_config(copy.deepcopy(raw)))
    except jsonschema.ValidationError as e:
        key = ".".join(str(k) for k in e.absolute_path) or "(top level)"
        raise ConfigError(f"{path}: {key}: {one_line(e.message, 300)}") from None
    except (ValueError, KeyError, TypeError, NotImplementedError) as e:
        raise ConfigError(f"{path}: {one_line(str(e), 300)}") from None

    meta = (raw.get("metadata") or {}).get("memgrid", {})
    if not isinstance(meta, dict) or set(meta) - {"results"}:
        raise ConfigError(f"{path}: metadata.memgrid: a mapping with one key, results")
    if "results" in meta and not (isinstance(meta["results"], str) and _is_shared(meta["results"])):
        raise ConfigError(f"{path}: metadata.memgrid.results: a URI (s3://..., gs://...) or an "
                          f"absolute path every node mounts, got {meta['results']!r}")
    for remote, local in (raw.get("file_mounts") or {}).items():
        # `ray up` reads local paths from its working folder: memgrid runs it in the file's
        if not (path.parent / os.path.expanduser(str(local))).exists():
            hint = (" (create a token with `ray get-auth-token --generate`)"
                    if "auth_token" in str(local) else "")
            raise ConfigError(f"{path}: file_mounts.{remote}: {local} does not exist here{hint}")
    return raw


def dashboard_port(cluster: dict) -> int:
    """The head's job server port: `--dashboard-port` of its `ray start`, else Ray's default."""
    for cmd in cluster.get("head_start_ray_commands") or []:
        m = re.search(r"--dashboard-port[= ](\d+)", cmd)
        if m:
            return int(m.group(1))
    return DEFAULT_DASHBOARD_PORT


def results_root(cluster: dict) -> str | None:
    """Where the cluster file says results go (``metadata.memgrid.results``), if it says."""
    return ((cluster.get("metadata") or {}).get("memgrid") or {}).get("results")


# ---------------------------------------------------------------------------------------------
# The provider boundary: Ray's launcher and the cloud SDK under it. Tests replace these three.


def check_provider(cluster_file: str, cluster: dict) -> None:
    """The cloud provider's SDK that Ray's launcher needs is importable (boto3 for aws, ...)."""
    from ray.autoscaler._private.providers import _get_node_provider_cls
    try:
        _get_node_provider_cls(cluster["provider"])
    except ImportError as e:
        raise ConfigError(f"{cluster_file}: provider.type: {one_line(str(e), 300)}") from None


def _ray_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ray.scripts.scripts", *args]


def ray_up(cluster_file: str) -> None:
    """Create or update the cluster with Ray's launcher (`ray up -y`), its output shown, run in
    the cluster file's folder (where its relative `file_mounts` are)."""
    path = Path(cluster_file).absolute()
    rc = subprocess.call(_ray_cli("up", "-y", str(path)), cwd=path.parent)
    if rc != 0:
        raise LaunchError(f"`ray up {cluster_file}` failed (exit status {rc}); see its output above")


def open_tunnel(cluster_file: str, port: int):
    """Forward the head's job server (loopback there) to 127.0.0.1:`port` here over SSH with
    `ray exec --port-forward`. Returns (address, close)."""
    path = Path(cluster_file).absolute()
    proc = subprocess.Popen(
        _ray_cli("exec", str(path), "while true; do sleep 3600; done", "--port-forward", str(port)),
        cwd=path.parent, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def close() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    address = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + TUNNEL_WAIT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace").strip().splitlines()
            raise LaunchError(f"the SSH tunnel to the head's job server (port {port}) closed: "
                              f"{err[-1] if err else 'no output'}")
        try:
            import requests
            requests.get(f"{address}/api/version", timeout=2)
            return address, close
        except OSError:
            time.sleep(1.0)
    close()
    raise LaunchError(f"the head's job server did not answer on {address} within {TUNNEL_WAIT_S:.0f} s")


# ---------------------------------------------------------------------------------------------
# The job.


def is_loopback(address: str) -> bool:
    try:
        host = urlparse(address if "://" in address else f"http://{address}").hostname or ""
    except ValueError:      # not a URL: probe() names it
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_shared(out: str) -> bool:
    return "://" in out or os.path.isabs(out)


def probe(address: str, timeout_s: float = PROBE_S) -> None:
    """ConfigError naming --address within about 2 x `timeout_s` unless an HTTP server answers
    there (Ray's job client would wait on a server that accepts and never answers)."""
    import requests

    url = (address if "://" in address else f"http://{address}").rstrip("/")
    flag = f"command line: --address {address}"
    try:
        requests.get(f"{url}/api/version", timeout=(timeout_s, timeout_s))
    except requests.exceptions.Timeout:
        raise ConfigError(f"{flag}: no answer within {timeout_s:.0f} s: not a Ray job "
                          "server") from None
    except requests.exceptions.ConnectionError as e:
        why = "connection refused" if "refused" in str(e).lower() else one_line(str(e), 160)
        raise ConfigError(f"{flag}: no job server at this address ({why})") from None
    except (requests.exceptions.RequestException, ValueError) as e:
        raise ConfigError(f"{flag}: {one_line(str(e), 160)}") from None


def connect(address: str):
    """A job client for `address`; token auth turned on for a loopback job server when a token
    is available and the user has not chosen (RAY_AUTH_MODE unset)."""
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )
    from ray.job_submission import JobSubmissionClient

    # Ray's client notes (package uploads, "token authentication is enabled") are not news here
    for name in ("ray", "ray.dashboard.modules.dashboard_sdk"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    if is_loopback(address) and "RAY_AUTH_MODE" not in os.environ:
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    try:
        return JobSubmissionClient(address if "://" in address else f"http://{address}")
    except Exception as e:  # noqa: BLE001 - Ray's client raises ConnectionError, RuntimeError, ...
        raise LaunchError(f"job server at {address}: {_auth_hint(e)}") from None


def _auth_hint(e: Exception) -> str:
    msg = one_line(str(e).split("\n\n")[0], 300)
    if type(e).__name__ == "AuthenticationError":
        msg += (" (token authentication: set RAY_AUTH_MODE=token and give the cluster's token as "
                "~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN)")
    return msg


def job_spec(grid_file: str, grid: Grid, out: str, flags: dict, python: str) -> dict:
    """`submit_job` arguments: the entry point, what travels with the job, its id and metadata.
    The grid file keeps its name: a grid without `name:` is named after its file."""
    args = ["run", Path(grid_file).name, "--out", out, "--address", "auto"]
    for k in RUN_FLAGS:
        v = flags.get(k)
        if v is True:
            args.append("--" + k.replace("_", "-"))
        elif v not in (None, False):
            args += ["--" + k.replace("_", "-"), str(v)]
    return dict(
        entrypoint=" ".join(shlex.quote(a) for a in [python, "-m", "memgrid.cli", *args]),
        submission_id=f"memgrid-{grid.name}-{time.strftime('%Y%m%d-%H%M%S')}",
        metadata={"memgrid_grid": grid.name, "memgrid_out": out},
        runtime_env={"py_modules": [str(Path(__file__).parents[1])],
                     "excludes": ["__pycache__", "*.pyc"]},
    )


def check_out(grid: Grid, out: str) -> None:
    """If `out` can be read from here and holds another grid, say so before submitting (the job
    would refuse it too). Storage this machine cannot read is left to the job."""
    if "://" in out and not out.startswith("file://"):
        return   # an object store may need credentials this machine does not have
    try:
        old = read_grid_identity(out)
    except (OSError, ValueError):
        return
    check_identity(grid, out, old)


def job_files(grid_file: str, grid: Grid, dest: Path) -> None:
    """What travels in the job's working directory: the grid file, and the files of the user's
    cells it names (memgrid.user_cells), which a cluster's nodes need not have: each as
    ``cells/<name>.py`` beside the grid, whose `arch` axis then names it there (a module's text
    travels as a file too)."""
    target = dest / Path(grid_file).name
    if not grid.user_cells:
        shutil.copy(grid_file, target)
        return
    raw = load_yaml(read_text(grid_file), grid_file)
    (dest / "cells").mkdir()
    where = {}
    for s in grid.user_cells:
        (dest / "cells" / f"{s.name}.py").write_text(s.code)
        where[s.spec] = f"cells/{s.name}.py:{s.attr}"
    raw["axes"]["arch"] = [where.get(a, a) for a in raw["axes"]["arch"]]
    target.write_text(yaml.safe_dump(raw, sort_keys=False))


def submit(client, grid_file: str, spec: dict, grid: Grid) -> str:
    """Submit the job, refusing a second live job into the same results folder."""
    out = spec["metadata"]["memgrid_out"]
    for job in client.list_jobs():
        if _value(job.status) not in TERMINAL and (job.metadata or {}).get("memgrid_out") == out:
            raise LaunchError(f"job {job.submission_id} is already running into {out}: follow it "
                              f"with --follow {job.submission_id} or stop it with --stop {job.submission_id}")
    with tempfile.TemporaryDirectory(prefix="memgrid-job-") as d:
        job_files(grid_file, grid, Path(d))
        runtime_env = dict(spec["runtime_env"], working_dir=d)
        return client.submit_job(entrypoint=spec["entrypoint"], submission_id=spec["submission_id"],
                                 metadata=spec["metadata"], runtime_env=runtime_env)


def follow(client, job_id: str, *, echo=click.echo) -> str:
    """Echo the job's log as it grows until the job ends. Returns its final status."""
    shown = 0
    while True:
        status = _value(client.get_job_status(job_id))
        logs = client.get_job_logs(job_id)
        if len(logs) > shown:
            echo(logs[shown:].rstrip("\n"))
            shown = len(logs)
        if status in TERMINAL:
            return status
        time.sleep(POLL_S)


def _value(status) -> str:
    """A JobStatus (a str enum) as its plain name."""
    return getattr(status, "value", str(status))


# ---------------------------------------------------------------------------------------------
# The command.


def _fail(msg: str, code: int) -> None:
    click.echo(f"memgrid: error: {msg}", err=True)
    sys.exit(code)


@click.command()
@click.argument("grid_file", metavar="[GRID.yaml]", required=False)
@click.option("--cluster", "cluster_file", metavar="CLUSTER.yaml",
              help="bring this Ray cluster up (ray up) and submit to it over an SSH tunnel")
@click.option("--address", help="job submission address of a running cluster, e.g. http://127.0.0.1:8265")
@click.option("--out", help="results: a URI (s3://, gs://, ...) or an absolute path every node mounts "
              "[cluster file's metadata.memgrid.results/<grid name>; on this machine: results/<grid name>]")
@click.option("--pack", help="points per trial: N, or 'auto' (passed to memgrid run)")
@click.option("--cpus-per-trial", type=float, help="CPU cores per trial (passed to memgrid run)")
@click.option("--gpus-per-trial", type=float, help="GPU share per trial (passed to memgrid run)")
@click.option("--max-epochs", type=int, help="override the grid's max_epochs (passed to memgrid run)")
@click.option("--protocol", help="named training settings: converged or paper (passed to memgrid run)")
@click.option("--no-plateau", is_flag=True, help="never stop at the 0.25 plateau (passed to memgrid run)")
@click.option("--smoke", is_flag=True, help="shrink the grid to a run of a minute or two")
@click.option("--max-points", type=int, help="run a grid this large (memgrid run's limit; passed to it)")
@click.option("--python", "python", help="the cluster's Python with Ray and torch "
              "[python; for a cluster on this machine: this Python]")
@click.option("--no-follow", is_flag=True, help="submit and return; follow later with --follow JOB")
@click.option("--follow", "follow_id", metavar="JOB", help="follow a submitted job until it ends")
@click.option("--status", "status_id", metavar="JOB", help="one line on a submitted job")
@click.option("--stop", "stop_id", metavar="JOB", help="stop a submitted job (stored points stay)")
def launch(grid_file, cluster_file, address, out, pack, cpus_per_trial, gpus_per_trial, max_epochs,
           protocol, no_plateau, smoke, max_points, python, no_follow, follow_id, status_id, stop_id):
    """Run GRID.yaml as a Ray job on a Ray cluster and follow it.

    \b
      memgrid launch --cluster cluster.yaml GRID.yaml     bring the cluster up, submit, follow
      memgrid launch --address http://127.0.0.1:8265 GRID.yaml
      memgrid launch --address ... --status JOB | --follow JOB | --stop JOB

    Launching the same grid into the same --out again trains only the points missing there."""

    with stoppable():   # SIGTERM and SIGHUP too end in `except KeyboardInterrupt`: the tunnel closes
        _launch(grid_file, cluster_file, address, out, python, no_follow, follow_id, status_id,
                stop_id, dict(pack=pack, cpus_per_trial=cpus_per_trial,
                              gpus_per_trial=gpus_per_trial, max_epochs=max_epochs,
                              protocol=protocol, no_plateau=no_plateau, smoke=smoke,
                              max_points=max_points))


def _launch(grid_file, cluster_file, address, out, python, no_follow, follow_id, status_id,
            stop_id, flags: dict) -> None:

    job_ops = [x for x in (follow_id, status_id, stop_id) if x]
    # a job server on this machine's loopback runs the cluster here: its Python is this one
    here = address is not None and is_loopback(address)
    try:
        if bool(cluster_file) == bool(address):
            raise ConfigError("command line: give one of --cluster CLUSTER.yaml or --address URL")
        if len(job_ops) > 1:
            raise ConfigError("command line: give one of --follow, --status, --stop")
        if bool(job_ops) == bool(grid_file):
            raise ConfigError("command line: give GRID.yaml or one of --follow/--status/--stop JOB")
        cluster = load_cluster(cluster_file) if cluster_file else None
        if cluster:
            check_provider(cluster_file, cluster)
        grid, out = _grid_and_out(grid_file, flags, out, cluster, here) if grid_file else (None, None)
    except ConfigError as e:
        _fail(str(e), EXIT_BAD_INPUT)

    where = f"--cluster {cluster_file}" if cluster_file else f"--address {address}"
    close = None
    client = None
    if address is not None:     # an address the user gave: one that does not answer is theirs
        try:
            probe(address)
            client = connect(address)
        except ConfigError as e:
            _fail(str(e), EXIT_BAD_INPUT)
        except LaunchError as e:
            _fail(f"command line: --address {address}: {str(e).split(': ', 1)[-1]}",
                  EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            _fail("interrupted", exit_status())
    try:
        if cluster_file:
            if grid_file:
                ray_up(cluster_file)
            address, close = open_tunnel(cluster_file, dashboard_port(cluster))
            client = connect(address)
        if status_id:
            info = client.get_job_info(status_id)
            meta = info.metadata or {}
            click.echo(f"{status_id}: {_value(info.status)}"
                       + (f"; results in {meta['memgrid_out']}" if "memgrid_out" in meta else "")
                       + (f"; {one_line(info.message.splitlines()[0], 300)}" if info.message else ""))
            return
        if stop_id:
            stopping = client.stop_job(stop_id)
            click.echo(f"{stop_id}: {'stopping' if stopping else _value(client.get_job_status(stop_id))}; "
                       "the points it stored stay (launch the grid again to finish it)")
            return
        if follow_id:
            job_id = follow_id
            out = (client.get_job_info(job_id).metadata or {}).get("memgrid_out", "?")
        else:
            spec = job_spec(grid_file, grid, out, flags, python or (sys.executable if here else "python"))
            job_id = submit(client, grid_file, spec, grid)
            click.echo(f"memgrid: submitted job {job_id}: grid '{grid.name}' -> {out}")
            if no_follow:
                click.echo(f"memgrid: follow it with `memgrid launch {where} --follow {job_id}`")
                return
        try:
            final = follow(client, job_id)
        except KeyboardInterrupt:
            click.echo(f"\nmemgrid: job {job_id} keeps running on the cluster: "
                       f"`memgrid launch {where} --follow {job_id}` (or --stop {job_id})", err=True)
            sys.exit(exit_status())
        if final == "SUCCEEDED":
            click.echo(f"memgrid: job {job_id} succeeded; results in {out} (memgrid status {out})")
        else:
            info = client.get_job_info(job_id)
            click.echo(f"memgrid: job {job_id} {final.lower()}"
                       + (f": {one_line(info.message.splitlines()[0], 300)}" if info.message else "")
                       + f"; launch the same grid again to finish the points missing in {out}", err=True)
            sys.exit(1)
    except LaunchError as e:
        _fail(str(e), 1)
    except KeyboardInterrupt:
        _fail("interrupted", exit_status())
    except Exception as e:  # noqa: BLE001 - a job server's answer, shown as one line
        _fail(f"job server at {address}: {_auth_hint(e)}", 1)
    finally:
        if close is not None:
            close()


def _grid_and_out(grid_file: str, flags: dict, out: str | None, cluster: dict | None,
                  here: bool) -> tuple[Grid, str]:
    """The grid as `memgrid run` will build it, and where its results go: storage every node
    reaches (a relative path is only meaningful for a cluster on this machine)."""
    from .preflight import MAX_POINTS, check_size

    if out == "":
        raise ConfigError("command line: --out: empty; give a URI or an absolute path")
    max_points = flags.get("max_points")
    if max_points is not None and max_points < 1:
        raise ConfigError(f"command line: --max-points: must be >= 1, got {max_points}")
    grid = build_grid(grid_file, **{k: v for k, v in flags.items() if k != "max_points"})
    check_size(grid, max_points or MAX_POINTS)     # as the job's memgrid run will, before it
    check_machine(grid, here=False, driver=False)  # the cluster's machines are not this one
    root = results_root(cluster) if cluster else None
    out = out or (f"{root.rstrip('/')}/{grid.name}" if root else f"results/{grid.name}" if here else None)
    if out is None:
        raise ConfigError("command line: --out: required for a remote cluster "
                          "(a URI or an absolute path every node mounts)")
    if not _is_shared(out):
        if not here:
            raise ConfigError(f"command line: --out: {out!r} is relative: it would land in the job's "
                              "temporary folder on the cluster; give a URI or an absolute path")
        out = str(Path(out).absolute())
    check_out(grid, out)
    return grid, out
