"""What the benchmarks share: percentiles and tables, uploads, /proc readings, inotify (ctypes,
no watchdog), child processes with timestamped stderr lines, the consumer container that records
every signal it catches, and a description of the machine.

Only the standard library at import time: `bench/floor.py` imports this module and should start
as fast as a minimal publisher can; the Docker SDK is imported where a client is made.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import math
import multiprocessing
import os
import platform
import re
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKER_SOCKET = "unix:///var/run/docker.sock"
UPLOAD_NAME = ".credentials.json"
HASH_PREFIX = 12  # credsync logs the first 12 hex characters of the sha256
HOUR_MS = 3_600_000
STOP_TIMEOUT_S = 10.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


class BenchError(Exception):
    """A step failed or did not finish in time; the message says which."""


def guarded(name: str, body: Callable[[], int]) -> int:
    """Run a benchmark: a BenchError or ^C becomes one line on stderr and exit code 1."""
    try:
        return body()
    except BenchError as error:
        print(f"{name} failed: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{name} interrupted", file=sys.stderr)
    return 1


# --------------------------------------------------------------------------- numbers and tables


def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * p / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def ratio(numerator: float, denominator: float) -> str:
    if math.isnan(numerator) or math.isnan(denominator):
        return "-"
    if denominator <= 0:
        return "n/a"
    value = numerator / denominator
    return f"{value:.2f}x" if value < 10 else f"{value:.0f}x"


NUMBER = re.compile(r"-|n/a|[\d.,]+x?|")


def numeric_columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[bool]:
    """Columns (after the first) whose cells are all figures, ratios, `-` or empty: right-aligned."""
    return [column > 0 and all(NUMBER.fullmatch(row[column]) for row in rows) for column in range(len(header))]


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Figures right-aligned, text left-aligned; a rule under the header."""
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(len(header))]
    right = numeric_columns(header, rows)

    def line(cells: Sequence[str]) -> str:
        aligned = (f"{cell:>{w}}" if r else f"{cell:<{w}}" for cell, w, r in zip(cells, widths, right, strict=True))
        return "  ".join(aligned).rstrip()

    return [line(header), "  ".join("-" * width for width in widths), *(line(row) for row in rows)]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The same as a GitHub table; a cell's leading spaces (a sub-row) become em spaces."""

    def cell(text: str) -> str:
        indent = len(text) - len(text.lstrip(" "))
        return "&emsp;" * (indent // 2) + text.lstrip(" ").replace("|", "\\|")

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell(text) for text in cells) + " |"

    rule = "|" + "|".join("---:" if right else ":---" for right in numeric_columns(header, rows)) + "|"
    return [line(header), rule, *(line(row) for row in rows)]


# --------------------------------------------------------------------------- uploads


def credential(serial: int) -> bytes:
    """A valid, obviously fake `.credentials.json`; `serial` makes each one distinct."""
    oauth = {
        "accessToken": f"fake-access-{serial}",
        "refreshToken": f"fake-refresh-{serial}",
        "expiresAt": time.time_ns() // 1_000_000 + 8 * HOUR_MS,
        "scopes": ["user:inference"],
    }
    return json.dumps({"claudeAiOauth": oauth}, indent=2).encode()


def write_in_place(path: Path, data: bytes) -> float:
    """Like `cp` or `scp`: open (create or truncate), write, close. time.monotonic() after the close."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    return time.monotonic()


def short_sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:HASH_PREFIX]


def write_all(connection: Connection) -> None:
    """The writer process: says whether it got real-time priority, then for each list of
    (path, bytes) received writes them in turn and sends back (time before the first, [time
    after each close])."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(WRITER_PRIORITY))
        connection.send(True)
    except OSError:
        connection.send(False)
    while (batch := connection.recv()) is not None:
        started = time.monotonic()
        connection.send((started, [write_in_place(Path(path), data) for path, data in batch]))


WRITER_PRIORITY = 10  # SCHED_FIFO, above every normal process and below the kernel's own threads


class Writer:
    """Uploads written by a process of its own, at real-time priority. A clock reading taken
    after close() in this process can be late: behind the threads that watch (the GIL), and
    behind the processes the close wakes (a publisher's inotify reader, `install`), which the
    kernel may run first. A single-threaded SCHED_FIFO writer is preempted by neither."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._connection, child_end = context.Pipe()
        self._process = context.Process(target=write_all, args=(child_end,), name="bench-writer", daemon=True)
        self._process.start()
        child_end.close()
        self.realtime = bool(self._connection.recv())

    def write(self, path: Path, data: bytes) -> float:
        """time.monotonic() after the close."""
        return self.write_many([(path, data)])[1][0]

    def write_many(self, items: Sequence[tuple[Path, bytes]]) -> tuple[float, list[float]]:
        """(time before the first write, [time after each close])."""
        self._connection.send([(str(path), data) for path, data in items])
        started, closed = self._connection.recv()
        return float(started), [float(moment) for moment in closed]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._connection.send(None)
        self._process.join(STOP_TIMEOUT_S)
        if self._process.is_alive():
            self._process.kill()
        self._connection.close()


# --------------------------------------------------------------------------- /proc readings


@dataclass(frozen=True)
class ProcSample:
    """CPU time and context switches of one or more processes (all threads) at one moment."""

    ticks: int  # utime + stime from /proc/<pid>/stat, in clock ticks
    run_ns: int  # sum over threads of /proc/<pid>/task/*/schedstat (ns resolution)
    switches: int  # voluntary + involuntary context switches, summed over threads
    threads: int

    def __add__(self, other: ProcSample) -> ProcSample:
        return ProcSample(
            self.ticks + other.ticks,
            self.run_ns + other.run_ns,
            self.switches + other.switches,
            self.threads + other.threads,
        )


def sample(pid: int) -> ProcSample:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # comm may contain spaces and parentheses
    ticks = int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5): utime, stime
    run_ns = switches = threads = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread may just have ended
            run_ns += int((task / "schedstat").read_text().split()[0])
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                    switches += int(line.split()[1])
            threads += 1
    return ProcSample(ticks, run_ns, switches, threads)


def sample_all(pids: Sequence[int]) -> ProcSample:
    total = ProcSample(0, 0, 0, 0)
    for pid in pids:
        total += sample(pid)
    return total


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {key}")


def parent_pids() -> dict[int, int]:
    """pid -> parent pid of every process (this kernel has no /proc/<pid>/task/*/children)."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(entry.path, "stat").read_text()
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    return parents


def descendants(pid: int) -> set[int]:
    parents = parent_pids()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


@dataclass(frozen=True)
class IdleResult:
    label: str
    seconds: float
    cpu_s: float
    run_s: float
    wakeups_per_s: float
    hwm_mib: float  # summed over the processes: an upper bound of their joint peak
    rss_mib: float
    threads: int
    processes: int

    @property
    def cpu_percent(self) -> float:
        """Of one core, from schedstat (ns resolution; clock ticks are 10 ms)."""
        return 100 * self.run_s / self.seconds


def idle_result(label: str, pids: Sequence[int], before: ProcSample, after: ProcSample, seconds: float) -> IdleResult:
    return IdleResult(
        label=label,
        seconds=seconds,
        cpu_s=(after.ticks - before.ticks) / CLK_TCK,
        run_s=(after.run_ns - before.run_ns) / 1e9,
        wakeups_per_s=(after.switches - before.switches) / seconds,
        hwm_mib=sum(status_kib(pid, "VmHWM") for pid in pids) / 1024,
        rss_mib=sum(status_kib(pid, "VmRSS") for pid in pids) / 1024,
        threads=after.threads,
        processes=len(pids),
    )


def measure_idle(groups: Mapping[str, Sequence[int]], seconds: float) -> dict[str, IdleResult]:
    """CPU, wake-ups and memory of each group of processes over one shared quiet window."""
    before = {label: sample_all(pids) for label, pids in groups.items()}
    started = time.monotonic()
    time.sleep(seconds)
    after = {label: sample_all(pids) for label, pids in groups.items()}
    window = time.monotonic() - started
    return {label: idle_result(label, pids, before[label], after[label], window) for label, pids in groups.items()}


# --------------------------------------------------------------------------- inotify(7), via ctypes

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x2, 0x4, 0x8, 0x80, 0x100
IN_Q_OVERFLOW = 0x4000
EVENT_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


@dataclass(frozen=True)
class InotifyEvent:
    wd: int
    mask: int
    name: str


class Inotify:
    """One inotify descriptor; `read_events` returns everything queued (blocking or not)."""

    def __init__(self, *, blocking: bool = False) -> None:
        flags = os.O_CLOEXEC | (0 if blocking else os.O_NONBLOCK)
        self.fd = int(_libc.inotify_init1(flags))
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_init1: {os.strerror(ctypes.get_errno())}")

    def add_watch(self, folder: Path, mask: int) -> int:
        wd = int(_libc.inotify_add_watch(self.fd, os.fsencode(folder), mask))
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {folder}: {os.strerror(ctypes.get_errno())}")
        return wd

    def read_events(self) -> list[InotifyEvent]:
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        events = []
        offset = 0
        while offset < len(data):
            wd, mask, _cookie, length = EVENT_HEADER.unpack_from(data, offset)
            offset += EVENT_HEADER.size
            name = os.fsdecode(data[offset : offset + length].split(b"\0", 1)[0])
            offset += length
            events.append(InotifyEvent(wd, mask, name))
        return events

    def close(self) -> None:
        os.close(self.fd)


Handler = Callable[[InotifyEvent], None]


class FolderWatch:
    """One inotify descriptor and a thread: each event goes to the handler of its folder, under
    `changed`; waiters use `wait_until`. No polling anywhere. Handlers stamp what they see with
    time.monotonic() when they look at the file, not when the event was read: an event read just
    before a change and handled just after it must not date the change early."""

    def __init__(self) -> None:
        self.inotify = Inotify()
        self.changed = threading.Condition()
        self.error: str | None = None
        self.overflowed = False
        self._handlers: dict[int, Handler] = {}
        self._stop_read, self._stop_write = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="folder-watch", daemon=True)
        self._thread.start()

    def watch(self, folder: Path, mask: int, handler: Handler) -> None:
        with self.changed:
            self._handlers[self.inotify.add_watch(folder, mask)] = handler

    def _run(self) -> None:
        try:
            while True:
                readable, _, _ = select.select([self.inotify.fd, self._stop_read], [], [])
                if self._stop_read in readable:
                    return
                while events := self.inotify.read_events():
                    with self.changed:
                        for event in events:
                            if event.mask & IN_Q_OVERFLOW:
                                self.overflowed = True
                            handler = self._handlers.get(event.wd)
                            if handler is not None:
                                handler(event)
                        self.changed.notify_all()
        except Exception as error:  # reported to the waiting thread, never lost
            with self.changed:
                self.error = f"{type(error).__name__}: {error}"
                self.changed.notify_all()

    def wait_until(self, condition: Callable[[], bool], deadline: float, what: str, *, required: bool = True) -> bool:
        """Call with or without `changed` held. False at the deadline when not `required`."""
        with self.changed:
            while not condition():
                if self.error is not None:
                    raise BenchError(f"the folder watch failed: {self.error}")
                left = deadline - time.monotonic()
                if left <= 0:
                    if required:
                        raise BenchError(f"timed out waiting for {what}")
                    return False
                self.changed.wait(left)
            return True

    def close(self) -> None:
        os.write(self._stop_write, b"\0")
        self._thread.join(timeout=2.0)
        for fd in (self.inotify.fd, self._stop_read, self._stop_write):
            with contextlib.suppress(OSError):
                os.close(fd)


SIGNALS_FILE, READY_FILE = "signals", "ready"


class SignalLog:
    """The consumer's bind-mounted folder: one `HUP` line per signal caught; when each was seen."""

    def __init__(self, watch: FolderWatch, folder: Path) -> None:
        self.watch = watch
        self.folder = folder
        self.times: list[float] = []  # times[k]: when the (k+1)-th HUP line was seen
        self.ready_at: float | None = None
        self._offset = 0
        self._partial = b""
        watch.watch(folder, IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE, self._on_event)

    def _on_event(self, event: InotifyEvent) -> None:
        seen_at = time.monotonic()  # before the read: a line it finds was there by now
        if event.name == READY_FILE and self.ready_at is None:
            self.ready_at = seen_at
        if event.name != SIGNALS_FILE:
            return
        try:
            with open(self.folder / SIGNALS_FILE, "rb") as file:
                file.seek(self._offset)
                data = file.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        self.times += [seen_at for line in lines if line == b"HUP"]

    def count(self) -> int:
        with self.watch.changed:
            return len(self.times)

    def wait_for(self, number: int, deadline: float, what: str) -> float:
        """When the number-th HUP (1-based) was seen."""
        self.watch.wait_until(lambda: len(self.times) >= number, deadline, what)
        with self.watch.changed:
            return self.times[number - 1]

    def wait_ready(self, deadline: float, what: str) -> None:
        self.watch.wait_until(lambda: self.ready_at is not None, deadline, what)

    def wait_quiet(self, quiet_s: float, deadline: float, what: str) -> None:
        """Until no HUP has arrived for `quiet_s` (counting from now at the latest)."""
        called = time.monotonic()
        with self.watch.changed:
            while True:
                quiet_until = max([called, *self.times[-1:]]) + quiet_s
                now = time.monotonic()
                if now >= quiet_until:
                    return
                if now >= deadline:
                    raise BenchError(f"timed out waiting for {what}: signals keep arriving")
                self.watch.changed.wait(min(quiet_until, deadline) - now)


@dataclass
class Expected:
    """Bytes, owner and mode a destination must hold; when it was first seen holding them."""

    data: bytes
    satisfied_at: float | None = None


class Publications:
    """A destination folder: when each file first holds the bytes, owner and mode expected of
    it (checked at every close-after-write, rename into place and attribute change of its name),
    and how many times files were written or renamed into place there."""

    def __init__(self, watch: FolderWatch, folder: Path, owner: tuple[int, int], mode: int) -> None:
        self.watch = watch
        self.folder = folder
        self.owner = owner
        self.mode = mode
        self.writes = 0  # close-after-write or moved-to on a name ever expected
        self.satisfied = 0  # expectations met so far
        self._expected: dict[str, Expected] = {}
        self._tracked: set[str] = set()
        watch.watch(folder, IN_CLOSE_WRITE | IN_MOVED_TO | IN_ATTRIB, self._on_event)

    def expect(self, name: str, data: bytes) -> Expected:
        with self.watch.changed:
            expected = self._expected[name] = Expected(data)
            self._tracked.add(name)
            return expected

    def _on_event(self, event: InotifyEvent) -> None:
        if event.name not in self._tracked:
            return
        if event.mask & (IN_CLOSE_WRITE | IN_MOVED_TO):
            self.writes += 1
        expected = self._expected.get(event.name)
        seen_at = time.monotonic()  # before the read: what it finds was in place by now
        if expected is not None and expected.satisfied_at is None and self.holds(event.name, expected.data):
            expected.satisfied_at = seen_at
            self.satisfied += 1

    def holds(self, name: str, data: bytes) -> bool:
        try:
            fd = os.open(self.folder / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            info = os.fstat(fd)
            if (info.st_uid, info.st_gid) != self.owner or info.st_mode & 0o7777 != self.mode:
                return False
            return os.read(fd, len(data) + 1) == data
        finally:
            os.close(fd)

    def wait(self, expected: Expected, deadline: float, what: str) -> float:
        self.watch.wait_until(lambda: expected.satisfied_at is not None, deadline, what)
        assert expected.satisfied_at is not None
        return expected.satisfied_at

    def counts(self) -> tuple[int, int]:
        """(writes, expectations met) so far."""
        with self.watch.changed:
            return self.writes, self.satisfied


# --------------------------------------------------------------------------- child processes


@dataclass(frozen=True)
class LogLine:
    arrived: float  # time.monotonic() when the line was read from the pipe
    raw: str
    fields: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.fields.get(key)


class Child:
    """A subprocess whose stderr is read line by line in a thread, each line timestamped on
    arrival (and parsed, for JSON logs). `spawned` is the time just before the spawn."""

    def __init__(
        self, name: str, process: subprocess.Popen[bytes], *, parse_json: bool, spawned: float, group: bool = False
    ) -> None:
        self.name = name
        self.process = process
        self.parse_json = parse_json
        self.spawned = spawned
        self.group = group  # a process group of its own, signalled as a whole (a shell pipeline)
        self.lines: list[LogLine] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name=f"{name}-stderr", daemon=True)
        self._reader.start()

    @classmethod
    def start(
        cls,
        name: str,
        command: Sequence[str],
        *,
        parse_json: bool,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        group: bool = False,
    ) -> Child:
        spawned = time.monotonic()
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=group,
        )
        return cls(name, process, parse_json=parse_json, spawned=spawned, group=group)

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        stream = self.process.stderr
        assert stream is not None
        for data in stream:
            arrived = time.monotonic()
            raw = data.decode("utf-8", "replace").rstrip("\n")
            fields: dict[str, Any] = {}
            if self.parse_json:
                try:
                    parsed = json.loads(raw)
                except ValueError:
                    parsed = None
                fields = parsed if isinstance(parsed, dict) else {"message": "<not json>"}
            with self._changed:
                self.lines.append(LogLine(arrived, raw, fields))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def mark(self) -> int:
        """Where the next line will be: pass it as `since` to look only at lines after now."""
        with self._changed:
            return len(self.lines)

    def wait_for(self, matches: Callable[[LogLine], bool], deadline: float, what: str, *, since: int = 0) -> LogLine:
        """The first line from `since` on that matches; each line is offered once, in order, so
        `matches` may keep state and may raise BenchError to fail at once."""
        cursor = since
        with self._changed:
            while True:
                while cursor < len(self.lines):
                    line = self.lines[cursor]
                    cursor += 1
                    if matches(line):
                        return line
                if not self._reader.is_alive():
                    self.process.poll()
                    raise BenchError(
                        f"{self.name} ended (exit code {self.process.returncode}) before {what}{self.tail()}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(f"{self.name}: timed out waiting for {what}{self.tail()}")
                self._changed.wait(left)

    def tail(self, count: int = 12) -> str:
        with self._changed:
            last = self.lines[-count:]
        return "; its last stderr lines:\n    " + "\n    ".join(line.raw[:300] for line in last) if last else ""

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit within STOP_TIMEOUT_S; the exit code."""
        if self.group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                print(f"warning: {self.name} ignored SIGTERM for {STOP_TIMEOUT_S:g} s; killing it", file=sys.stderr)
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)
        self._reader.join(STOP_TIMEOUT_S)
        if self.process.stderr is not None:
            self.process.stderr.close()
        return self.process.returncode


def clean_env() -> dict[str, str]:
    """This environment without CREDSYNC_* variables: only the flags given configure credsync."""
    return {key: value for key, value in os.environ.items() if not key.startswith("CREDSYNC_")}


def credsync_watch(name: str, flags: Sequence[str]) -> Child:
    """`credsync watch --log-format=json FLAGS…` with this interpreter, from the repository."""
    command = [sys.executable, "-m", "credsync", "watch", "--log-format=json", *flags]
    return Child.start(name, command, parse_json=True, cwd=REPO_ROOT, env=clean_env())


def connect_docker() -> docker.DockerClient:
    import docker

    try:
        client = docker.DockerClient(base_url=DOCKER_SOCKET, version="auto", timeout=30)
        client.ping()
    except docker.errors.DockerException as error:
        raise BenchError(
            f"no Docker Engine at {DOCKER_SOCKET}: {error}; start one with 'bash scripts/dockerd-start'"
        ) from None
    return client


# PID 1 of the consumer traps HUP (like tests/docker_env.py TRAP_HUP) and says when the trap is set.
CONSUMER_COMMAND = 'trap "echo HUP >> /sig/signals" HUP; echo ready > /sig/ready; while :; do sleep 1 & wait $!; done'


class Consumer:
    """A locally imported busybox container (network none) whose PID 1 shell traps HUP and
    appends a line to a bind-mounted host folder, where a SignalLog sees it arrive."""

    def __init__(self, client: docker.DockerClient, image: str, container: Container, signals: SignalLog) -> None:
        self.client = client
        self.image = image
        self.container = container
        self.signals = signals

    @property
    def name(self) -> str:
        return str(self.container.name)

    @classmethod
    def start(cls, client: docker.DockerClient, folder: Path, watch: FolderWatch, timeout_s: float) -> Consumer:
        sys.path.insert(0, str(REPO_ROOT))
        from tests.docker_env import busybox_rootfs

        folder.mkdir()
        folder.chmod(0o777)
        signals = SignalLog(watch, folder)
        token = secrets.token_hex(4)
        repository, tag = "credsync-bench/busybox", f"run-{token}"
        client.api.import_image_from_data(busybox_rootfs(), repository=repository, tag=tag)
        image = f"{repository}:{tag}"
        try:
            container = client.containers.run(
                image,
                ["sh", "-c", CONSUMER_COMMAND],
                name=f"credsync-bench-{token}",
                detach=True,
                network_mode="none",
                volumes={str(folder): {"bind": "/sig", "mode": "rw"}},
            )
        except BaseException:
            client.images.remove(image)
            raise
        consumer = cls(client, image, container, signals)
        try:
            signals.wait_ready(time.monotonic() + timeout_s, f"container {consumer.name} to set its HUP trap")
        except BaseException:
            consumer.close()
            raise
        return consumer

    def still_running(self) -> bool:
        self.container.reload()
        return self.container.status == "running" and int(self.container.attrs["RestartCount"]) == 0

    def close(self) -> None:
        import docker

        with contextlib.suppress(docker.errors.DockerException):
            self.container.remove(force=True)
        with contextlib.suppress(docker.errors.DockerException):
            self.client.images.remove(self.image)


@dataclass(frozen=True)
class Stage:
    root: Path  # a fresh temporary folder, removed afterwards
    client: docker.DockerClient
    watch: FolderWatch
    consumer: Consumer
    writer: Writer


@contextlib.contextmanager
def stage(prefix: str, timeout_s: float = 30.0) -> Iterator[Stage]:
    """A Docker client, a temporary folder, a folder watch, a writer process and a running
    consumer; all undone after."""
    client = connect_docker()
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    watch = FolderWatch()
    writer = Writer()
    try:
        consumer = Consumer.start(client, root / "sig", watch, timeout_s)
        try:
            yield Stage(root, client, watch, consumer, writer)
        finally:
            consumer.close()
    finally:
        writer.close()
        watch.close()
        shutil.rmtree(root, ignore_errors=True)
        client.close()


def dockerd_identity() -> str | None:
    """PID and start time of the Engine the bench uses (its pid file, not any `dockerd`: other
    engines may run on the host): another value later means it was restarted."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(Path("/var/run/docker.pid").read_text())
        stat = Path(f"/proc/{pid}/stat").read_text()
        return f"pid {pid}, start tick {stat[stat.rindex(')') + 2 :].split()[19]}"
    return None


# --------------------------------------------------------------------------- the machine


def code_version() -> str:
    """The commit of the credsync tree being measured, and whether credsync/ has local changes."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "credsync"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{commit}" + (" with uncommitted changes in credsync/" if dirty else " (credsync/ clean)")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def file_system(path: Path) -> str:
    """Type and device of the mount holding `path`, from /proc/self/mounts."""
    best = ("", "?", "?")
    for line in Path("/proc/self/mounts").read_text().splitlines():
        device, mount_point, fs_type, *_ = line.split()
        if (str(path) + "/").startswith(mount_point.rstrip("/") + "/") and len(mount_point) >= len(best[0]):
            best = (mount_point, fs_type, device)
    return f"{best[1]} ({best[2]} on {best[0]})"


def machine(client: docker.DockerClient | None, folder: Path) -> list[tuple[str, str]]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.machine(),
    )
    memory_kib = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal:")
    )
    engine = "-" if client is None else str(client.version().get("Version", "?"))
    return [
        ("host", f"{platform.node()}, {platform.system()} {platform.release()}"),
        ("CPU", f"{os.cpu_count()} x {cpu}"),
        ("memory", f"{memory_kib / MIB:.1f} GiB"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})"),
        ("Docker Engine", engine),
        ("file system of the folders", file_system(folder)),
        ("credsync code", code_version()),
    ]
