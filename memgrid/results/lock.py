"""One writer per results folder.

`memgrid run` holds its results folder's lock from before it writes anything until it exits, so
that a second run into the same folder ends at once (exit 2, naming the holder) instead of
training the same points beside the first and storing them twice.

- A local folder (or a ``file://`` URI): ``fcntl.flock`` on ``<folder>/.memgrid-lock``. The
  kernel releases it when the holder exits in any way, ``kill -9`` included, so a killed run
  never leaves it stuck; the file only says who holds it (host, pid, start, command). A run that
  ends removes the file. On a network file system this is as good as its locks (NFSv4, or v3
  with lockd); where the system has no flock, the best effort below is used.
- Another URI (``s3://``, ``gs://``, ...): object stores have no locks, so this is a best effort.
  The lock object says host, pid and the process's start; one whose holder is on this host and
  gone (no such process, or another process under its pid, or a reboot since) is stale and
  taken over. One held from another host is respected: delete ``<folder>/.memgrid-lock`` by hand
  if that run is known to be gone. Two runs started within moments of each other may both get
  it.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs

from .layout import resolve

LOCK_NAME = ".memgrid-lock"
"""the lock file inside a results folder (hidden: pyarrow and pandas skip it)"""


class FolderBusy(Exception):
    """Another `memgrid run` is writing the folder. The message names it; `holder` says who
    (pid, host, since, command)."""

    def __init__(self, message: str, holder: str):
        super().__init__(message)
        self.holder = holder


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, /proc/<pid>/stat), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])   # field 22; the name may hold spaces


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:       # someone else's process
        return True
    return True


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _start_ticks(os.getpid()),
            "boot_id": _boot_id(), "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join(["memgrid", *sys.argv[1:]])}


def _describe(info: dict | None) -> str:
    if not info:
        return "another process"
    return (f"pid {info.get('pid')} on {info.get('host')}, since {info.get('since')}: "
            f"{info.get('command', '?')}")


def _stale(info: dict) -> bool:
    """The holder is on this host and gone."""
    if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
        return False
    if info.get("boot_id") and _boot_id() and info["boot_id"] != _boot_id():
        return True
    if not _alive(info["pid"]):
        return True
    start = _start_ticks(info["pid"])
    return info.get("pid_start") is not None and start is not None and start != info["pid_start"]


class FolderLock:
    """The lock of results folder `uri`: `acquire()` (FolderBusy if held), `release()`; or a
    context manager. Acquiring makes the folder if it is missing; releasing removes what
    acquiring made where nothing else was written."""

    def __init__(self, uri: str):
        self.uri = uri
        self._fd: int | None = None
        self._object: tuple[pafs.FileSystem, str, dict] | None = None   # fs, path, what it says
        self._made: list[Path] = []

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _busy(self, info: dict | None) -> FolderBusy:
        return FolderBusy(f"{self.uri}: another memgrid run is writing this results folder "
                          f"({_describe(info)}); wait for it to end, or use another --out",
                          _describe(info))

    def acquire(self) -> None:
        fs, base = resolve(self.uri)
        if isinstance(fs, pafs.LocalFileSystem):
            folder = Path(base)
            missing = [p for p in [folder, *folder.parents] if not p.exists()]
            folder.mkdir(parents=True, exist_ok=True)
            self._made = missing                          # deepest first
            try:
                if not self._flock(folder / LOCK_NAME):
                    self._best_effort(fs, f"{base}/{LOCK_NAME}")
            except BaseException:
                self._remove_made()
                raise
        else:
            fs.create_dir(base, recursive=True)
            self._best_effort(fs, f"{base}/{LOCK_NAME}")

    def _flock(self, path: Path) -> bool:
        """Take the flock; False where this file system has none."""
        import fcntl
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                info = _parse(os.read(fd, 65536))
                os.close(fd)
                raise self._busy(info) from None
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    return False
                raise
            # a holder that ended removed the file after we opened it: lock the file there now
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_me()).encode())
        self._fd = fd
        return True

    def _best_effort(self, fs: pafs.FileSystem, path: str) -> None:
        info = _read_object(fs, path)
        if info is not None and not _stale(info):
            raise self._busy(info)
        me = _me()
        with fs.open_output_stream(path) as f:
            f.write(json.dumps(me).encode())
        back = _read_object(fs, path)            # a run that wrote at the same moment wins
        if back != me:
            raise self._busy(back)
        self._object = (fs, path, me)

    def release(self) -> None:
        """Let go (safe to call twice)."""
        if self._fd is not None:
            try:
                os.unlink(Path(resolve(self.uri)[1]) / LOCK_NAME)   # while still holding it
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None
        if self._object is not None:
            fs, path, me = self._object
            self._object = None
            try:
                if _read_object(fs, path) == me:     # still ours: not taken over as stale
                    fs.delete_file(path)
            except OSError:
                pass
        self._remove_made()

    def _remove_made(self) -> None:
        for p in self._made:                   # deepest first; only folders left empty
            try:
                p.rmdir()
            except OSError:
                break
        self._made = []


def _parse(data: bytes) -> dict | None:
    try:
        info = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _read_object(fs: pafs.FileSystem, path: str) -> dict | None:
    try:
        if fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with fs.open_input_stream(path) as f:
            return _parse(f.read())
    except OSError:
        return None
