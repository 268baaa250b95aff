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
import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import math
import os
import platform
import secrets
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import docker
from docker.models.containers import Container

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKER_SOCKET = "unix:///var/run/docker.sock"
IMAGE_REPOSITORY, IMAGE_TAG = "credsync-bench/busybox", "notify-latency"
UPLOAD_NAME = ".credentials.json"
HASH_PREFIX = 12  # credsync logs the first 12 hex characters of the sha256
HOUR_MS = 3_600_000
# The trap of tests/docker_env.py TRAP_HUP, plus a marker written once the trap is installed.
CONSUMER_COMMAND = 'trap "echo HUP >> /sig/signals" HUP; echo ready > /sig/ready; while :; do sleep 1 & wait $!; done'
SIGNALS_FILE, READY_FILE = "signals", "ready"

READY_TIMEOUT_S = 30.0  # daemon start-up, consumer start-up
ROUND_TIMEOUT_S = 10.0  # every wait inside one round
COMMAND_TIMEOUT_S = 20.0  # one `docker kill` CLI run
STOP_TIMEOUT_S = 10.0
# Daemon log lines that mean no signal is coming: fail at once with the daemon's reason.
NO_SIGNAL_MESSAGES = frozenset(
    {"published without notifying", "notification failed", "notification pending", "SIGHUP not sent", "rejected"}
)

# inotify(7)
IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x2, 0x8, 0x80, 0x100
IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
EVENT_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len


class BenchError(Exception):
    """A step failed or did not finish in time; the message says which."""


def remaining(deadline: float, what: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise BenchError(f"timed out waiting for {what}")
    return left


# --------------------------------------------------------------------------- the signal file


class SignalWatch:
    """inotify on the bind-mounted folder; a thread timestamps each wake-up, then counts the
    complete `HUP` lines of the signal file and notes the ready marker."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.times: list[float] = []  # times[k]: when the (k+1)-th HUP line was seen
        self.ready_at: float | None = None
        self.error: str | None = None
        self._changed = threading.Condition()
        self._stop_read, self._stop_write = os.pipe2(os.O_CLOEXEC)
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._fd = int(libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
        if self._fd < 0:
            raise BenchError(f"inotify_init1: {os.strerror(ctypes.get_errno())}")
        mask = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
        if int(libc.inotify_add_watch(self._fd, os.fsencode(folder), mask)) < 0:
            error = os.strerror(ctypes.get_errno())
            os.close(self._fd)
            raise BenchError(f"inotify_add_watch {folder}: {error}")
        self._thread = threading.Thread(target=self._run, name="signal-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                readable, _, _ = select.select([self._fd, self._stop_read], [], [])
                seen_at = time.monotonic()  # before any reading: the time the event arrived
                if self._stop_read in readable:
                    return
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._fd, 65536):  # drain; the folder is what we look at
                        pass
                self._look(seen_at)
        except Exception as error:  # reported to the waiting thread, never lost
            with self._changed:
                self.error = f"{type(error).__name__}: {error}"
                self._changed.notify_all()

    def _look(self, seen_at: float) -> None:
        try:
            text = (self.folder / SIGNALS_FILE).read_text()
        except FileNotFoundError:
            text = ""
        count = sum(1 for line in text.splitlines(keepends=True) if line == "HUP\n")
        ready = (self.folder / READY_FILE).exists()
        with self._changed:
            while len(self.times) < count:
                self.times.append(seen_at)
            if ready and self.ready_at is None:
                self.ready_at = seen_at
            self._changed.notify_all()

    def count(self) -> int:
        with self._changed:
            return len(self.times)

    def _wait(self, condition: Callable[[], bool], deadline: float, what: str) -> None:
        with self._changed:
            while not condition():
                if self.error is not None:
                    raise BenchError(f"watching {self.folder} failed: {self.error}")
                self._changed.wait(remaining(deadline, what))

    def wait_for_signal(self, number: int, deadline: float, what: str) -> float:
        """When the number-th HUP line (1-based) was seen."""
        self._wait(lambda: len(self.times) >= number, deadline, what)
        with self._changed:
            if len(self.times) > number:
                raise BenchError(f"{what}: {len(self.times)} signals seen, expected {number}; rounds overlapped")
            return self.times[number - 1]

    def wait_ready(self, deadline: float, what: str) -> None:
        self._wait(lambda: self.ready_at is not None, deadline, what)

    def close(self) -> None:
        os.write(self._stop_write, b"\0")
        self._thread.join(timeout=2.0)
        for fd in (self._fd, self._stop_read, self._stop_write):
            with contextlib.suppress(OSError):
                os.close(fd)


# --------------------------------------------------------------------------- the daemon


@dataclass(frozen=True)
class LogLine:
    arrived: float  # time.monotonic() when the line was read
    fields: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.fields.get(key)


@dataclass
class Daemon:
    """`credsync watch --log-format=json`; every stderr line is timestamped on arrival."""

    process: subprocess.Popen[str]
    lines: list[LogLine] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="daemon-log", daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, args: Sequence[str]) -> Daemon:
        env = {key: value for key, value in os.environ.items() if not key.startswith("CREDSYNC_")}
        process = subprocess.Popen(
            [sys.executable, "-m", "credsync", "watch", *args],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        return cls(process)

    def _read(self) -> None:
        stream: IO[str] | None = self.process.stderr
        if stream is None:
            return
        for raw in stream:
            arrived = time.monotonic()
            try:
                fields = json.loads(raw)
            except ValueError:
                fields = {"message": "<not json>", "raw": raw.rstrip()[:200]}
            if not isinstance(fields, dict):
                fields = {"message": "<not an object>"}
            with self._changed:
                self.lines.append(LogLine(arrived, fields))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, message: str, deadline: float, what: str, **expected: Any) -> LogLine:
        """The first line with this message and these fields; fails at once on a line that
        means no notification is coming, or when the daemon exits."""
        with self._changed:
            while True:
                for line in self.lines:
                    if line["message"] == message and all(line[key] == value for key, value in expected.items()):
                        return line
                    if line["message"] in NO_SIGNAL_MESSAGES:
                        raise BenchError(f"{what}: the daemon said {line.fields}")
                if not self._reader.is_alive():
                    raise BenchError(f"{what}: the daemon exited ({self.process.poll()}); last lines:\n{self.tail()}")
                try:
                    self._changed.wait(remaining(deadline, what))
                except BenchError:
                    raise BenchError(f"timed out waiting for {what}; the daemon's last lines:\n{self.tail()}") from None

    def tail(self, count: int = 12) -> str:
        return "\n".join(f"  {json.dumps(line.fields)}" for line in self.lines[-count:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                print(f"warning: credsync ignored SIGTERM for {STOP_TIMEOUT_S:g} s; killing it", file=sys.stderr)
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)
        self._reader.join(STOP_TIMEOUT_S)


# --------------------------------------------------------------------------- one round of each


def credential(serial: int) -> bytes:
    expires_at = time.time_ns() // 1_000_000 + 8 * HOUR_MS
    oauth = {
        "accessToken": f"fake-access-{serial}",
        "refreshToken": f"fake-refresh-{serial}",
        "expiresAt": expires_at,
        "scopes": ["user:inference"],
    }
    return json.dumps({"claudeAiOauth": oauth}).encode()


@dataclass(frozen=True)
class CredsyncRound:
    published_to_signal: float
    write_to_signal: float
    write_to_published: float
    signal_to_notified: float


def credsync_round(daemon: Daemon, watch: SignalWatch, source: Path, serial: int, signal_number: int) -> CredsyncRound:
    data = credential(serial)
    sha = hashlib.sha256(data).hexdigest()[:HASH_PREFIX]
    deadline = time.monotonic() + ROUND_TIMEOUT_S
    fd = os.open(source / UPLOAD_NAME, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # in place, like cp
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    written = time.monotonic()
    published = daemon.wait_for("published", deadline, f"'published' for upload {serial}", sha=sha)
    seen = watch.wait_for_signal(signal_number, deadline, f"the HUP for upload {serial}")
    notified = daemon.wait_for("notified", deadline, f"'notified' for upload {serial}", routes=f"{UPLOAD_NAME}@{sha}")
    return CredsyncRound(
        published_to_signal=seen - published.arrived,
        write_to_signal=seen - written,
        write_to_published=published.arrived - written,
        signal_to_notified=notified.arrived - seen,
    )


def shell_round(watch: SignalWatch, name: str, signal_number: int) -> tuple[float, float]:
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
    seen = watch.wait_for_signal(signal_number, deadline, "the HUP from docker kill")
    return seen - launched, exited - launched


def sdk_round(watch: SignalWatch, container: Container, signal_number: int) -> float:
    deadline = time.monotonic() + ROUND_TIMEOUT_S
    sent = time.monotonic()
    container.kill(signal="SIGHUP")
    seen = watch.wait_for_signal(signal_number, deadline, "the HUP from the SDK")
    return seen - sent


# --------------------------------------------------------------------------- numbers


def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * p / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


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


def import_image(client: docker.DockerClient) -> str:
    sys.path.insert(0, str(REPO_ROOT))
    from tests.docker_env import busybox_rootfs

    client.api.import_image_from_data(busybox_rootfs(), repository=IMAGE_REPOSITORY, tag=IMAGE_TAG)
    return f"{IMAGE_REPOSITORY}:{IMAGE_TAG}"


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
    try:
        client = docker.DockerClient(base_url=DOCKER_SOCKET, version="auto", timeout=30)
        client.ping()
    except docker.errors.DockerException as error:
        raise BenchError(
            f"no Docker Engine at {DOCKER_SOCKET}: {error}; start one with 'bash scripts/dockerd-start'"
        ) from None
    root = Path(tempfile.mkdtemp(prefix="credsync-notify-bench-"))
    container: Container | None = None
    daemon: Daemon | None = None
    watch: SignalWatch | None = None
    image: str | None = None
    try:
        source, claude_dir, state_dir, sig = (root / part for part in ("uploads", "claude-config", "state", "sig"))
        for folder in (source, claude_dir, sig):
            folder.mkdir()
        sig.chmod(0o777)
        watch = SignalWatch(sig)
        image = import_image(client)
        name = f"credsync-bench-{secrets.token_hex(4)}"
        container = client.containers.run(
            image,
            ["sh", "-c", CONSUMER_COMMAND],
            name=name,
            detach=True,
            network_mode="none",
            volumes={str(sig): {"bind": "/sig", "mode": "rw"}},
        )
        watch.wait_ready(time.monotonic() + READY_TIMEOUT_S, f"container {name} to install its HUP trap")
        preflight = preflight_path(container)

        daemon = Daemon.start(
            [
                f"--source={source}",
                f"--claude-dir={claude_dir}",
                f"--state-dir={state_dir}",
                f"--owner={os.getuid()}:{os.getgid()}",
                "--log-format=json",
                "--settle-ms=0",
                "--debounce-ms=0",
                "--notify-grace-ms=0",
                f"--notify-target={name}",
            ]
        )
        daemon.wait_for("ready", time.monotonic() + READY_TIMEOUT_S, "the daemon's 'ready' line")

        samples = Samples()
        signals = 0
        warmup: tuple[CredsyncRound, float, float] | None = None
        for serial in range(rounds + 1):
            signals += 1
            measured = credsync_round(daemon, watch, source, serial, signals)
            signals += 1
            shell, shell_exit = shell_round(watch, name, signals)
            signals += 1
            floor = sdk_round(watch, container, signals)
            if serial == 0:
                warmup = (measured, shell, floor)
                continue
            samples.add_credsync(measured)
            samples.shell.append(shell)
            samples.shell_exit.append(shell_exit)
            samples.floor.append(floor)
        assert warmup is not None
        container.reload()
        if container.status != "running" or watch.count() != signals:
            raise BenchError(f"consumer is {container.status} with {watch.count()} signals, expected {signals}")

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
        if container is not None:
            with contextlib.suppress(docker.errors.DockerException):
                container.remove(force=True)
        if image is not None:
            with contextlib.suppress(docker.errors.DockerException):
                client.images.remove(image)
        if watch is not None:
            watch.close()
        shutil.rmtree(root, ignore_errors=True)
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=50, help="measured rounds of each method (default 50)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    try:
        return run(args.rounds)
    except BenchError as error:
        print(f"notify_latency: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
