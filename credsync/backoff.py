"""One retry policy for all that credsync retries (a publish that failed, a notification kept
pending): exponential from FIRST_S, capped at CAP_S, each delay spread by ±JITTER so retries
after one shared cause (the engine back, a full disk freed) do not all land at once. Pure."""

from __future__ import annotations

import random
from collections.abc import Callable

FIRST_S = 1.0
CAP_S = 30.0
JITTER = 0.2

Random = Callable[[], float]  # uniform in [0, 1)


def retry_delay_s(failures: int, rng: Random = random.random) -> float:
    """Seconds before retrying after `failures` failures in a row (1 → about FIRST_S)."""
    base = min(CAP_S, FIRST_S * 2.0 ** (max(failures, 1) - 1))
    return base * (1.0 - JITTER + 2.0 * JITTER * rng())
