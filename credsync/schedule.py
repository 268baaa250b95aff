"""When each upload is due to be read (the watcher thread arms and extends; the main loop
takes what is due), and how often the rest may happen in a flood: rescans, and log lines about
ignored names. Pure logic apart from the clock, which tests replace."""

from __future__ import annotations

import math
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from credsync.backoff import Random, retry_delay_s


class Schedule:
    def __init__(
        self, settle_s: float, clock: Callable[[], float] = time.monotonic, rng: Random = random.random
    ) -> None:
        self.settle_s = settle_s
        self._clock = clock
        self._rng = rng
        self._due: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._lock = threading.Lock()

    def arm(self, name: str, at_least_s: float = 0.0) -> None:
        """An upload looks complete: read it once it has been quiet for the settle time."""
        with self._lock:
            self._due[name] = self._clock() + max(self.settle_s, at_least_s)

    def expect(self, name: str, backstop_s: float) -> None:
        """An upload is being written: its close will arm it; read it anyway once it has been
        quiet for `backstop_s` (a hard link or a writer that never closes sends no close)."""
        with self._lock:
            quiet_until = self._clock() + max(self.settle_s, backstop_s)
            self._due[name] = max(self._due.get(name, quiet_until), quiet_until)

    def retry(self, name: str) -> float:
        """A publish failed (disk full, read-only...): try again after the backoff's delay."""
        with self._lock:
            failures = self._failures.get(name, 0) + 1
            self._failures[name] = failures
            delay = retry_delay_s(failures, self._rng)
            self._due[name] = self._clock() + delay
            return delay

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(name, None)

    def take_due(self) -> list[str]:
        with self._lock:
            now = self._clock()
            due = [(when, name) for name, when in self._due.items() if when <= now]
            due.sort()
            for _, name in due:
                del self._due[name]
            return [name for _, name in due]

    def seconds_until_next(self) -> float | None:
        with self._lock:
            if not self._due:
                return None
            return max(0.0, min(self._due.values()) - self._clock())


MAX_REASONS = 8  # named in one coalesced rescan's log line


class Coalesced:
    """Requests for one thing (a rescan), done at most once per `interval_s`: a request after a
    quiet interval is due at once, and those that come within the interval after it wait for its
    end and are done as one, under every distinct reason asked for (a mount change must not hide
    an overflow). Used by the loop's thread alone."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._reasons: dict[str, None] = {}  # distinct, in the order asked; a handful of fixed texts
        self._done_at = -math.inf

    def request(self, reason: str) -> None:
        if len(self._reasons) < MAX_REASONS:
            self._reasons.setdefault(reason)

    @property
    def pending(self) -> bool:
        return bool(self._reasons)

    def seconds_until_due(self) -> float | None:
        """None when nothing was requested."""
        if not self._reasons:
            return None
        return max(0.0, self._done_at + self.interval_s - self._clock())

    def take(self) -> str | None:
        """The reasons, `; `-joined, when a request is due now (it is then done, and forgotten)."""
        if not self._reasons:
            return None
        now = self._clock()
        if now < self._done_at + self.interval_s:
            return None
        reasons, self._reasons = self._reasons, {}
        self._done_at = now
        return "; ".join(reasons)


class LineBudget:
    """A token bucket for log lines: `burst` at once, then `per_s` a second. Lines it holds back
    are counted, and saying how many (`held_back`) costs a token too: a flood costs at most
    `burst` lines, then `per_s` a second. Asked `held_back` before each line, the count comes
    first."""

    def __init__(self, burst: int, per_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.per_s = per_s
        self._clock = clock
        self._tokens = float(burst)
        self._filled_at = clock()
        self._held_back = 0

    def _spend(self) -> bool:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._filled_at) * self.per_s)
        self._filled_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def admit(self) -> bool:
        """May this line be said now? If not, it is counted as held back."""
        if self._spend():
            return True
        self._held_back += 1
        return False

    def held_back(self) -> int:
        """How many lines were held back, when a line may say so now (it is then spent, and the
        count starts again); 0 otherwise."""
        if self._held_back == 0 or not self._spend():
            return 0
        held, self._held_back = self._held_back, 0
        return held


class RecentNames:
    """The last `capacity` names seen; one seen again becomes the newest, the oldest is forgotten
    first (a bounded memory that never forgets all at once)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._names: OrderedDict[str, None] = OrderedDict()

    def add(self, name: str) -> bool:
        """Whether `name` is new (not among the last `capacity` names)."""
        if name in self._names:
            self._names.move_to_end(name)
            return False
        self._names[name] = None
        if len(self._names) > self.capacity:
            self._names.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._names)
