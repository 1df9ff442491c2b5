"""Signals and child processes: however a command ends, it ends cleanly.

A command that changes a results folder, or runs Ray, ends on SIGINT, SIGTERM or SIGHUP with
one line and the exit status a shell reports (130, 143, 129): the signals raise
:class:`Interrupted` (:func:`interruptible`, :func:`stoppable`), changes that must not be cut
short hold them (:func:`signals_held`), and the processes a run started are ended before it
returns (:func:`descendants`, :func:`end_processes`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""the signals that end a command cleanly: Ctrl-C, `kill`, the terminal closed"""
SIGNALS: list[int] = []
"""the signals that interrupted this process, first first"""


class Interrupted(KeyboardInterrupt):
    """A signal of STOP_SIGNALS ended the command, with what it had stored kept; its exit
    status is 128 + `signum` (130, 143, 129), as a shell reports it. A KeyboardInterrupt, so
    that code in between (Tune, Ray) lets it through as it would Ctrl-C."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def signals_held():
    """Changes of the folder (or clean-up) that a signal must not cut short: the signals of
    STOP_SIGNALS are noted in the list this yields (and in SIGNALS) while it runs, for the
    block to stop at a point of its choosing, and raised as :class:`Interrupted` after it,
    unless an exception is on its way already. Outside the main thread it holds nothing."""
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return

    def note(signum, frame):
        got.append(signum)
        SIGNALS.append(signum)

    old = {s: signal.signal(s, note) for s in STOP_SIGNALS}
    try:
        yield got
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if got:
        raise Interrupted(got[0])


def exit_status() -> int:
    """128 + the first signal that interrupted the run, as a shell reports it: 130 for SIGINT
    (also for a KeyboardInterrupt without one), 143 for SIGTERM, 129 for SIGHUP."""
    return 128 + (SIGNALS[0] if SIGNALS else signal.SIGINT)


def _interrupt(signum, frame):
    SIGNALS.append(signum)
    raise Interrupted(signum)


def catch_signals() -> None:
    """SIGINT, SIGTERM and SIGHUP (STOP_SIGNALS) raise :class:`Interrupted` in the main
    thread. `memgrid run` calls it first thing; run_grid calls it again after ray.init, which
    puts its own SIGTERM handler (sys.exit) in place."""
    if threading.current_thread() is threading.main_thread():
        for s in STOP_SIGNALS:
            signal.signal(s, _interrupt)


def catching() -> bool:
    """Whether the signals raise :class:`Interrupted` here (catch_signals)."""
    return signal.getsignal(signal.SIGINT) is _interrupt


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state letter) of every process (Linux /proc; empty elsewhere)."""
    table = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return table
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()   # after "pid (comm) ": state, ppid, ...
        table[int(name)] = (int(fields[1]), fields[0])
    return table


def descendants(root: int | None = None, *, zombies: bool = False) -> set[int]:
    """Processes under `root` (default: this one), children of children included; zombies
    (ended, not yet collected) only if asked."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [os.getpid() if root is None else root]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in found:
                found.add(c)
                todo.append(c)
    return found if zombies else {p for p in found if table[p][1] != "Z"}


LAUNCH_SLACK_S = 5.0
"""the longest a Python start may take before it imports memgrid"""


def launch_time() -> float:
    """When this process started, on the time.monotonic() clock (Linux: from /proc, so that a
    clock shown from it counts the imports too; elsewhere: when memgrid was imported), but no
    earlier than LAUNCH_SLACK_S before memgrid was imported: a process that began as something
    else (`bash -c "pip install ... && memgrid run ..."` execs memgrid in the shell's process)
    or a clock that jumped would otherwise count time that was not this run's."""
    from . import IMPORTED

    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])   # field 22: starttime
        with open("/proc/uptime") as f:
            uptime_s = float(f.read().split()[0])
        started = time.monotonic() - max(0.0, uptime_s - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return IMPORTED
    return max(started, IMPORTED - LAUNCH_SLACK_S)


def _subreaper(on: bool) -> None:
    """While on, processes orphaned under this one (a Ray agent whose raylet ended first)
    become children of this process instead of init's, so that end_processes finds them.
    Linux; elsewhere a no-op."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(36, int(on), 0, 0, 0)   # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def interruptible(*, subreaper: bool = False):
    """A command's whole run: SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` (catch_signals),
    and with `subreaper` orphaned processes come back to this one to be ended; both undone
    at the end (a command run inside another process, such as a test's, leaves it as it was)."""
    main = threading.current_thread() is threading.main_thread()
    old = {s: signal.getsignal(s) for s in STOP_SIGNALS} if main else {}
    SIGNALS.clear()
    catch_signals()
    if subreaper:
        _subreaper(True)
    try:
        yield
    finally:
        if subreaper:
            _subreaper(False)
        for s, h in old.items():
            signal.signal(s, h)


def end_processes(keep: set[int], grace_s: float = 3.0) -> None:
    """End every process under this one except `keep` (those there before Ray started):
    SIGTERM, then SIGKILL for what is left after `grace_s`; looked for again until none is
    left, since a process may start another as it ends. Collects the ended children."""
    deadline = time.monotonic() + grace_s
    sent: dict[int, int] = {}
    while True:
        for pid in descendants(zombies=True) - keep:    # collect what ended (our children only)
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        left = descendants() - keep
        if not left or time.monotonic() > deadline + 10.0:   # SIGKILL sent 10 s ago: give up
            return
        sig = signal.SIGKILL if time.monotonic() > deadline else signal.SIGTERM
        for pid in left:
            if sent.get(pid) != sig:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
                sent[pid] = sig
        time.sleep(0.05)


@contextlib.contextmanager
def stoppable(*, subreaper: bool = False):
    """A command's run: SIGINT, SIGTERM and SIGHUP (its terminal closed) raise a
    KeyboardInterrupt (:func:`interruptible`, with its `subreaper`), after which
    :func:`exit_status` gives 130, 143 or 129. Undone at the end."""
    with interruptible(subreaper=subreaper):
        old = signal.signal(signal.SIGHUP, signal.getsignal(signal.SIGTERM)) \
            if threading.current_thread() is threading.main_thread() else None
        try:
            yield
        finally:
            if old is not None:
                signal.signal(signal.SIGHUP, old)
