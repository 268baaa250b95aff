"""The notification waiting to be sent: which routes changed, when it is due (debounce with a
maximum wait) and when to retry after a failure (credsync.backoff). Pure logic."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from credsync.backoff import Random, retry_delay_s


@dataclass
class Pending:
    quiet_s: float
    max_wait_s: float
    clock: Callable[[], float]
    rng: Random = random.random
    changes: dict[str, str] = field(default_factory=dict)  # route → content hash
    failures: int = 0
    _first_at: float = 0.0
    _last_at: float = 0.0
    _retry_at: float = 0.0

    def add(self, route: str, sha256: str) -> None:
        now = self.clock()
        if not self.changes:
            self._first_at = now
        self.changes[route] = sha256
        self._last_at = now

    def due_at(self) -> float | None:
        """Quiet for `quiet_s`, or `max_wait_s` after the first change, and not before a retry."""
        if not self.changes:
            return None
        due = min(self._last_at + self.quiet_s, self._first_at + self.max_wait_s)
        return max(due, self._retry_at)

    def take(self) -> dict[str, str]:
        batch, self.changes = self.changes, {}
        return batch

    def failed(self, batch: dict[str, str]) -> float:
        """Put a batch back (newer changes win) and back off; returns the delay."""
        now = self.clock()
        if not self.changes:
            self._first_at = self._last_at = now
        self.changes = {**batch, **self.changes}
        self.failures += 1
        delay = retry_delay_s(self.failures, self.rng)
        self._retry_at = now + delay
        return delay

    def delivered(self) -> None:
        self.failures = 0
        self._retry_at = 0.0
