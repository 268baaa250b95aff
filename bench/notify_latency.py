"""Notification latency of `credsync watch`, next to two baselines measured in the same run.

    python bench/notify_latency.py [--rounds N]

One consumer container (a locally imported busybox, network none) runs a PID 1 shell that traps
HUP and appends a line to a file in a bind-mounted host folder. The host sees each line arrive
through inotify on that folder (event-driven, no polling) and timestamps it with
time.monotonic(). Per round, interleaved:

- credsync: a distinct `.credentials.json` is written in place into the source of a running
  `credsync watch` (settle, debounce and grace all 0). Measured: arrival of the daemon's
  `published` log line -> signal seen, and close of the last write -> signal seen. The round ends
  at the `notified` line, so rounds never overlap.
- shell: `docker kill -s HUP <container>` through the docker CLI; just before launch -> signal.
- floor: `container.kill(signal="SIGHUP")` on an already-open Docker SDK client.

One unmeasured warm-up round of each comes first (the daemon's first notification also opens its
Docker client). Exits 0 after printing one table, 1 when a step fails or takes too long.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    UPLOAD_NAME,
    BenchError,
    Child,
    LogLine,
    SignalLog,
    Stage,
    credential,
    credsync_watch,
    guarded,
    has_message,
    percentile,
    short_sha,
    stage,
    write_in_place,
)
from docker.models.containers import Container

READY_TIMEOUT_S = 30.0  # daemon start-up, consumer start-up
ROUND_TIMEOUT_S = 10.0  # every wait inside one round
COMMAND_TIMEOUT_S = 20.0  # one `docker kill` CLI run
# Daemon log lines that mean no signal is coming: fail at once with the daemon's reason.
NO_SIGNAL_MESSAGES = frozenset(
    {"published without notifying", "notification failed", "notification pending", "SIGHUP not sent", "rejected"}
)


def signal_number(signals: SignalLog, number: int, deadline: float, what: str) -> float:
    """When the number-th HUP was seen; an error when more have been: rounds overlapped."""
    seen = signals.wait_for(number, deadline, what)
    if signals.count() > number:
        raise BenchError(f"{what}: {signals.count()} signals seen, expected {number}; rounds overlapped")
    return seen


def daemon_line(daemon: Child, message: str, deadline: float, what: str, since: int, **expected: str) -> LogLine:
    """The first line from `since` with this message and these fields; fails at once on a line
    that means no notification is coming."""

    def matches(line: LogLine) -> bool:
        if line["message"] in NO_SIGNAL_MESSAGES:
            raise BenchError(f"{what}: the daemon said {line.raw}")
        return line["message"] == message and all(line[key] == value for key, value in expected.items())

    return daemon.wait_for(matches, deadline, what, since=since)


# --------------------------------------------------------------------------- one round of each


@dataclass(frozen=True)
class CredsyncRound:
    published_to_signal: float
    write_to_signal: float
    write_to_published: float
    signal_to_notified: float


def credsync_round(daemon: Child, signals: SignalLog, source: Path, serial: int, number: int) -> CredsyncRound:
    data = credential(serial)
    sha = short_sha(data)
    deadline = time.monotonic() + ROUND_TIMEOUT_S
    mark = daemon.mark()
    written = write_in_place(source / UPLOAD_NAME, data)  # in place, like cp
    published = daemon_line(daemon, "published", deadline, f"'published' for upload {serial}", mark, sha=sha)
    seen = signal_number(signals, number, deadline, f"the HUP for upload {serial}")
    notified = daemon_line(
        daemon, "notified", deadline, f"'notified' for upload {serial}", mark, routes=f"{UPLOAD_NAME}@{sha}"
    )
    return CredsyncRound(
        published_to_signal=seen - published.arrived,
        write_to_signal=seen - written,
        write_to_published=published.arrived - written,
        signal_to_notified=notified.arrived - seen,
    )


def shell_round(signals: SignalLog, name: str, number: int) -> tuple[float, float]:
    """(launch -> signal seen, launch -> command exited)"""
    deadline = time.monotonic() + ROUND_TIMEOUT_S
    launched = time.monotonic()
    try:
        result = subprocess.run(
            ["docker", "kill", "-s", "HUP", name],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"docker kill -s HUP {name} took more than {COMMAND_TIMEOUT_S:g} s") from None
    exited = time.monotonic()
    if result.returncode != 0:
        raise BenchError(f"docker kill -s HUP {name} exited {result.returncode}: {result.stderr.strip()}")
    seen = signal_number(signals, number, deadline, "the HUP from docker kill")
    return seen - launched, exited - launched


def sdk_round(signals: SignalLog, container: Container, number: int) -> float:
    deadline = time.monotonic() + ROUND_TIMEOUT_S
    sent = time.monotonic()
    container.kill(signal="SIGHUP")
    seen = signal_number(signals, number, deadline, "the HUP from the SDK")
    return seen - sent


# --------------------------------------------------------------------------- numbers


def stats_ms(values: Sequence[float]) -> tuple[float, float, float]:
    return percentile(values, 50) * 1000, percentile(values, 95) * 1000, max(values) * 1000


@dataclass
class Samples:
    published_to_signal: list[float] = field(default_factory=list)
    write_to_signal: list[float] = field(default_factory=list)
    write_to_published: list[float] = field(default_factory=list)
    signal_to_notified: list[float] = field(default_factory=list)
    shell: list[float] = field(default_factory=list)
    shell_exit: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)

    def add_credsync(self, result: CredsyncRound) -> None:
        self.published_to_signal.append(result.published_to_signal)
        self.write_to_signal.append(result.write_to_signal)
        self.write_to_published.append(result.write_to_published)
        self.signal_to_notified.append(result.signal_to_notified)


def render(samples: Samples, warmup: tuple[CredsyncRound, float, float], context: list[str]) -> str:
    width = 46
    rows: list[tuple[str, list[float]]] = [
        ("credsync publish -> signal", samples.published_to_signal),
        ("credsync last-write -> signal", samples.write_to_signal),
        ("docker kill -s HUP (shell) launch -> signal", samples.shell),
        ("SDK container.kill (floor) call -> signal", samples.floor),
    ]
    breakdown: list[tuple[str, list[float]]] = [
        ("  credsync last-write -> published (log)", samples.write_to_published),
        ("  credsync signal -> notified (post-checks)", samples.signal_to_notified),
        ("  docker kill -s HUP launch -> CLI exit", samples.shell_exit),
    ]
    lines = [*context, "", f"{'ms':<{width}} {'p50':>8} {'p95':>8} {'max':>8}", "-" * (width + 27)]
    for label, values in rows:
        p50, p95, top = stats_ms(values)
        lines.append(f"{label:<{width}} {p50:8.2f} {p95:8.2f} {top:8.2f}")
    lines.append("breakdown:")
    for label, values in breakdown:
        p50, p95, top = stats_ms(values)
        lines.append(f"{label:<{width}} {p50:8.2f} {p95:8.2f} {top:8.2f}")
    lines.append("-" * (width + 27))
    credsync = stats_ms(samples.published_to_signal)
    for label, baseline in (("shell", samples.shell), ("floor", samples.floor)):
        base = stats_ms(baseline)
        ratios = [a / b if b > 0 else math.inf for a, b in zip(credsync, base, strict=True)]
        lines.append(
            f"{'ratio credsync publish->signal / ' + label:<{width}} "
            f"{ratios[0]:7.2f}x {ratios[1]:7.2f}x {ratios[2]:7.2f}x"
        )
    first, shell_first, floor_first = warmup
    lines.append(
        f"warm-up round (excluded): credsync publish -> signal {first.published_to_signal * 1000:.2f} ms, "
        f"shell {shell_first * 1000:.2f} ms, floor {floor_first * 1000:.2f} ms"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------- set-up and run


def preflight_path(container: Container) -> str:
    """Which /proc reader credsync's signal preflight picks for this container, from here."""
    from credsync.notify.proc_readers import HostProc, reader_for

    container.reload()
    reader = reader_for(container)
    if isinstance(reader, HostProc):
        return f"host /proc/{reader.root_pid} (HostProc)"
    return "docker exec cat /proc/1/... inside the container (ExecProc)"


def run(rounds: int) -> int:
    started = time.monotonic()
    with stage("credsync-notify-bench-", READY_TIMEOUT_S) as here:
        return measure(here, rounds, started)


def measure(here: Stage, rounds: int, started: float) -> int:
    client, root, consumer = here.client, here.root, here.consumer
    daemon: Child | None = None
    try:
        source, claude_dir, state_dir = (root / part for part in ("uploads", "claude-config", "state"))
        for folder in (source, claude_dir):
            folder.mkdir()
        signals, name = consumer.signals, consumer.name
        preflight = preflight_path(consumer.container)

        daemon = credsync_watch(
            "credsync watch",
            [
                f"--source={source}",
                f"--claude-dir={claude_dir}",
                f"--state-dir={state_dir}",
                f"--owner={os.getuid()}:{os.getgid()}",
                "--settle-ms=0",
                "--debounce-ms=0",
                "--notify-grace-ms=0",
                f"--notify-target={name}",
            ],
        )
        daemon.wait_for(has_message("ready"), time.monotonic() + READY_TIMEOUT_S, "the daemon's 'ready' line")

        samples = Samples()
        number = 0
        warmup: tuple[CredsyncRound, float, float] | None = None
        for serial in range(rounds + 1):
            number += 1
            measured = credsync_round(daemon, signals, source, serial, number)
            number += 1
            shell, shell_exit = shell_round(signals, name, number)
            number += 1
            floor = sdk_round(signals, consumer.container, number)
            if serial == 0:
                warmup = (measured, shell, floor)
                continue
            samples.add_credsync(measured)
            samples.shell.append(shell)
            samples.shell_exit.append(shell_exit)
            samples.floor.append(floor)
        assert warmup is not None
        if not consumer.still_running() or signals.count() != number:
            raise BenchError(
                f"consumer is {consumer.container.status} with {signals.count()} signals, expected {number}"
            )

        engine = client.version()
        context = [
            f"credsync notification latency: {rounds} rounds (+1 warm-up), interleaved credsync / shell / SDK",
            f"host: {platform.node()} {platform.release()}, {os.cpu_count()} CPUs, "
            f"Docker Engine {engine.get('Version', '?')}, Python {platform.python_version()}",
            "credsync: --settle-ms=0 --debounce-ms=0 --notify-grace-ms=0, notify auto, target by name",
            f"signal preflight reads: {preflight}",
            f"consumer: busybox sh as PID 1 traps HUP, appends to a bind-mounted file; seen by inotify. "
            f"Wall time {time.monotonic() - started:.1f} s",
        ]
        print(render(samples, warmup, context))
        return 0
    finally:
        if daemon is not None:
            daemon.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=50, help="measured rounds of each method (default 50)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return guarded("notify_latency", lambda: run(args.rounds))


if __name__ == "__main__":
    sys.exit(main())
