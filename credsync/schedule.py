"""When each upload is due to be read. The watcher thread arms and extends; the main loop
takes what is due. Pure logic apart from the clock, which tests replace."""

from __future__ import annotations

import random
import threading
import time
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
