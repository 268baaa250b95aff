"""Human-readable relative times for log lines and status output."""

from __future__ import annotations

import time


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def relative(target_ms: int, now_ms: int) -> str:
    """`in 7h 59m` or `3h 2m ago`: coarse on purpose, operators read it at a glance."""
    delta_s = (target_ms - now_ms) // 1000
    span = duration(abs(delta_s))
    return f"in {span}" if delta_s >= 0 else f"{span} ago"


def expiry(at_ms: int | None, now_ms: int) -> str:
    """`expires in 7h 59m`, `expired 3h 2m ago`, or `expiry unknown`."""
    if at_ms is None:
        return "expiry unknown"
    return f"{'expired' if at_ms <= now_ms else 'expires'} {relative(at_ms, now_ms)}"


def duration(seconds: int) -> str:
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"
