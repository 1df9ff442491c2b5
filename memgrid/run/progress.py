"""What a run says on the console: the progress line and the words and times it is written in."""

from __future__ import annotations

import math
import sys
import time
from collections import Counter

from ..config import Point
from ..packs import pack_cost, pack_id, pack_seconds


def say(line: str) -> None:
    """One line on stderr, at once."""
    print(line, file=sys.stderr, flush=True)


def plural(n: int, word: str) -> str:
    """`1 point`, `2 points`."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def one_line(e: BaseException | str, limit: int = 200) -> str:
    """A message (an exception's) on one line of at most `limit` characters."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fmt_s(s: float) -> str:
    """Seconds as `mm:ss`, or `h:mm:ss` from an hour."""
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


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
            parts.append(f"{plural(self.running, 'trial')} running")
        parts.append(fmt_s(time.monotonic() - self.t0))
        left = None if final or done >= self.total else self.left_range()
        if left is not None:
            low, high = left
            worse = high >= 1.2 * low + 60     # worth a second figure: 20 % and a minute more
            parts.append(f"~{fmt_s(low)} left"
                         + (f" ({fmt_s(high)} if none stops early)" if worse else ""))
        return "  ".join(parts)

    def show(self, final: bool = False) -> None:
        self.last = time.monotonic()
        line = self.line(final)
        if self.tty:
            print("\r\033[K" + line, end="\n" if final else "", file=self.stream, flush=True)
        else:
            print(line, file=self.stream, flush=True)
