"""What the driver asks of Ray, checked before a trial starts: an address where a Ray cluster
answers (:func:`check_address`, within seconds: ray.init itself would retry for minutes), and
a node that can take a trial (:func:`check_fits`: Ray would leave every trial waiting)."""

from __future__ import annotations

import os
import socket

from ..config import ConfigError
from .progress import one_line

PROBE_S = 3.0
"""seconds an --address may take to answer before the run ends"""


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


def dialed(address: str) -> tuple[str, str, int] | None:
    """(what ray.init will dial, its host, its port) for `address` (host:port of a GCS, `auto`,
    or `ray://host:port`), or None for `local` (an embedded Ray after all). Raises ConfigError
    naming --address where it cannot be one; contacts nothing but what `auto` reads."""
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
            raise ConfigError(f"{flag}: {one_line(e)}") from None
        if target is None:
            return None
    hp = parse_address(target)
    if hp is None or not hp[1].isdigit() or not 0 < int(hp[1]) < 65536:
        raise ConfigError(f"{flag}: not host:port")
    return target, hp[0], int(hp[1])


def check_address(address: str, timeout_s: float = PROBE_S) -> None:
    """Raise ConfigError naming --address within about `timeout_s` unless a Ray cluster answers
    at `address` (:func:`dialed`): ray.init itself would retry for minutes and not hear Ctrl-C
    meanwhile."""
    flag = f"command line: --address {address}"
    where = dialed(address)
    if where is None:      # `local`: an embedded Ray after all
        return
    target, host, port = where
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
        via = "" if target == address else f" (Ray dials {target})"
        raise ConfigError(f"{flag}: no Ray cluster at this address{via}: {why}")


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
