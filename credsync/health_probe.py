"""Is `credsync watch` ready, watching, beating and publishing? Read from the health file it
keeps in its state folder. Runnable as a file by `python -I -S`, importing only modules the
interpreter has loaded at start-up (posix, sys, time), so Docker's HEALTHCHECK costs a bare
interpreter start (about 15 ms of CPU), not the whole CLI's imports. (The file is `key=value`
words, not JSON: `import json` alone would double the cost.)

    python3 -I -S /opt/credsync/health_probe.py [STATE_DIR]

STATE_DIR defaults to $CREDSYNC_STATE_DIR, else /var/lib/credsync. Exit 0 healthy, 1 not."""

import posix  # not os: under -S nothing has imported os yet, and it costs about 2 ms
import sys
import time

HEALTH_FILE = "health"
STALE_AFTER_BEATS = 3
DEFAULT_STATE_DIR = "/var/lib/credsync"


class Unhealthy(Exception):
    """Why the daemon is not healthy, in one line."""


def check_health(state_dir: str) -> str:
    """Healthy: the daemon that wrote the file is alive, did its first reconcile, its watcher
    lives, its heartbeat is recent, and no upload it took is waiting on a failed publish (a
    Swarm roll counts a delivery task as updated once it is healthy, so one that cannot publish
    never is). Returns a summary or raises Unhealthy with why not."""
    path = f"{state_dir.rstrip('/')}/{HEALTH_FILE}"
    try:
        with open(path, encoding="utf-8") as file:
            record = parse_record(file.read(4096))
        pid, ready, watching = int(record["pid"]), record["ready"] == "1", record["watching"] == "1"
        failing = int(record.get("failing", "0"))  # absent in a record an older credsync wrote
        heartbeat_s, interval_s = int(record["heartbeat_ms"]) / 1000, float(record["interval_s"])
        came_back_ms = int(record["came_back_ms"]) if "came_back_ms" in record else None
    except FileNotFoundError:
        raise Unhealthy(
            f"no {path}: credsync watch is not running or not ready yet (or it uses another --state-dir)"
        ) from None
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise Unhealthy(f"unreadable {path}: {type(error).__name__}") from None
    try:
        posix.kill(pid, 0)
    except ProcessLookupError:
        raise Unhealthy(f"credsync watch (pid {pid}) is not running") from None
    except PermissionError:
        pass  # alive, owned by someone else
    age_s = time.time() - heartbeat_s
    if not ready:
        raise Unhealthy("credsync watch has not finished its first reconcile")
    if not watching:
        raise Unhealthy("the watcher is down: the source folder cannot be watched")
    if age_s > STALE_AFTER_BEATS * interval_s:
        raise Unhealthy(f"no heartbeat for {age_s:.0f}s: the daemon is stuck")
    if failing:
        raise Unhealthy(f"{failing} upload(s) could not be published; the log says why, and credsync retries")
    summary = f"healthy: pid {pid}, watching, heartbeat {age_s:.0f}s ago"
    if came_back_ms is not None:
        since_s = time.time() - came_back_ms / 1000
        summary += f"; came back {since_s:.0f}s ago after an unclean stop"
    return summary


def format_record(
    pid: int,
    *,
    ready: bool,
    watching: bool,
    failing: int,
    heartbeat_ms: int,
    interval_s: float,
    came_back_ms: int | None = None,
) -> str:
    came_back = "" if came_back_ms is None else f" came_back_ms={came_back_ms}"
    return (
        f"pid={pid} ready={int(ready)} watching={int(watching)} failing={failing}"
        f" heartbeat_ms={heartbeat_ms} interval_s={interval_s}{came_back}\n"
    )


def parse_record(text: str) -> dict[str, str]:
    fields = dict(word.partition("=")[::2] for word in text.split())
    missing = {"pid", "ready", "watching", "heartbeat_ms", "interval_s"} - fields.keys()
    if missing:
        raise ValueError(f"no {', '.join(sorted(missing))}")
    return fields


def main(argv: list[str]) -> int:
    from_environment = posix.environ.get(b"CREDSYNC_STATE_DIR", DEFAULT_STATE_DIR.encode())
    state_dir = argv[1] if len(argv) > 1 else from_environment.decode()
    try:
        print(check_health(state_dir))
    except Unhealthy as reason:
        print(f"unhealthy: {reason}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
