"""credsync side by side with the shell script a user would write and with the floor: one
command, one table, every figure measured in the same run on this machine (bench/README.md).
Exits 0 after printing the table (whatever the targets say), 1 when a step fails."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import docker
from typing_extensions import override

from bench import BenchError, extras, floor, report, sidecar
from bench.extras import await_line, proc_status
from bench.report import DEFAULTS, DEFAULTS_GAP_S, FAST, FLOOR, SHELL, SIDECAR, Burst, Idle, Latencies, Results
from tests.docker_env import BUSYBOX_IMAGE, REPO, TRAP_HUP, Consumer, busybox_rootfs, engine_client, wait_for_process
from tests.helpers import LogLine, WatchProcess, claude_credentials, sha12

OWNER, MODE = (1001, 1001), 0o600
UPLOAD_NAME = ".credentials.json"
JSON_ROUTES = (UPLOAD_NAME, ".claude.json", "settings.json")
READY_TIMEOUT_S, ROUND_TIMEOUT_S = 30.0, 10.0
QUIET_S = 1.0  # no further signal for this long: a lane has said all it will say
PUBLISH_ONLY_SPACING_S = 0.12  # three routes in turn: each is rewritten every 0.36 s > settle
ROUTE = '[[route]]\nupload = "b{0:04d}.json"\ndestination = "{{claude_dir}}/b{0:04d}.json"\nkind = "claude-settings"\n'
WRITER_PRIORITY = 10  # SCHED_FIFO, above every normal process and below the kernel's own threads
# Daemon log lines that mean no signal is coming: fail at once with the daemon's reason.
CREDSYNC_FAILURES = frozenset(
    {"published without notifying", "notification failed", "notification pending", "SIGHUP not sent", "cannot notify"}
)


def upload_for(name: str, serial: int) -> bytes:
    """A valid `.credentials.json`, or allow-listed JSON for the other routes; distinct per serial."""
    if name == UPLOAD_NAME:
        return claude_credentials(serial=serial)
    if name == ".claude.json":
        return json.dumps({"numStartups": serial, "theme": "dark", "userID": "b" * 64}).encode()
    return json.dumps({"cleanupPeriodDays": serial, "model": "claude-sonnet-4-5", "outputStyle": "x" * 60}).encode()


def write_all(connection: Connection) -> None:
    """The writer process: a clock read after close() in the bench's process can be late, behind
    its watching threads (the GIL) and the processes the close wakes (a publisher's inotify reader,
    `install`); a single-threaded SCHED_FIFO writer is preempted by neither. Writes each batch of
    (path, bytes) in place (like scp) and sends back (time before the first, [after each close])."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(WRITER_PRIORITY))
        connection.send(True)
    except OSError:
        connection.send(False)
    while (batch := connection.recv()) is not None:
        started, closed = time.monotonic(), []
        for path, data in batch:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            os.write(fd, data)  # a few KiB: one write
            os.close(fd)
            closed.append(time.monotonic())
        connection.send((started, closed))


def cpu_and_switches(pids: Sequence[int]) -> tuple[int, int]:
    """ns on a CPU (schedstat) and context switches, summed over every thread of the processes."""
    run_ns = switches = 0
    for task in (task for pid in pids for task in Path(f"/proc/{pid}/task").iterdir()):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread may just have ended
            run_ns += int((task / "schedstat").read_text().split()[0])
            switches += sum(map(int, re.findall(r"ctxt_switches:\s+(\d+)", (task / "status").read_text())))
    return run_ns, switches


def measure_idle(groups: Mapping[str, Sequence[int]], seconds: float) -> dict[str, Idle]:
    """CPU, wake-ups and peak memory of each group of processes over one shared quiet window."""
    before, started = {lane: cpu_and_switches(pids) for lane, pids in groups.items()}, time.monotonic()
    time.sleep(seconds)
    idle = {}
    for lane, pids in groups.items():
        (run_ns, switches), window = cpu_and_switches(pids), time.monotonic() - started
        hwm_mib = sum(proc_status(pid, "VmHWM") for pid in pids) / 1024
        idle[lane] = Idle(window, (run_ns - before[lane][0]) / 1e9, (switches - before[lane][1]) / window, hwm_mib)
    return idle


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (this kernel has no /proc/PID/task/*/children)."""
    parents = {}
    for entry in os.scandir("/proc"):
        with contextlib.suppress(OSError, ValueError):
            parents[int(entry.name)] = int(Path(entry.path, "stat").read_text().rpartition(")")[2].split()[1])
    found, frontier = set[int](), {pid}
    while frontier := {child for child, parent in parents.items() if parent in frontier} - found:
        found |= frontier
    return found


class Stage:
    """A temporary folder; an inotify reader thread handing each event to its folder's handler
    under `changed` (handlers stamp what they see when they look at the file, not when the event
    was read, which may be before the change); the writer process; the consumer container (the
    tests' busybox, network none, PID 1 traps HUP: one line each in a bind-mounted file)."""

    def __enter__(self) -> Stage:
        self.client = engine_client()
        try:
            self.client.ping()
        except docker.errors.DockerException as error:
            raise BenchError(f"no Docker Engine: {error}; start one with 'bash scripts/dockerd-start'") from None
        self.root = Path(tempfile.mkdtemp(prefix="credsync-vs-"))
        self.root.chmod(0o755)
        self.fd, self.changed, self.error, self.overflowed = floor.inotify_init(), threading.Condition(), "", False
        self.handlers: dict[int, Callable[[int, str], None]] = {}
        self.times: list[float] = []  # times[k]: when the (k+1)-th HUP line was seen
        self.signals_read = 0
        threading.Thread(target=self.read_events, name="inotify", daemon=True).start()
        context = multiprocessing.get_context("spawn")
        self.writer, child_end = context.Pipe()
        context.Process(target=write_all, args=(child_end,), name="bench-writer", daemon=True).start()
        self.realtime = bool(self.writer.recv())
        try:
            folder = self.root / "sig"
            folder.mkdir()
            folder.chmod(0o777)
            self.watch(folder, floor.IN_MODIFY | floor.IN_CLOSE_WRITE | floor.IN_CREATE, self.on_signal)
            repository, tag = BUSYBOX_IMAGE.split(":")
            self.client.api.import_image_from_data(busybox_rootfs(), repository=repository, tag=tag)
            container = self.client.containers.run(
                BUSYBOX_IMAGE,
                ["sh", "-c", TRAP_HUP],
                name=f"credsync-bench-{secrets.token_hex(4)}",
                detach=True,
                network_mode="none",
                volumes={str(folder): {"bind": "/sig", "mode": "rw"}},
            )
            self.consumer = Consumer(container, folder / "signals")
            wait_for_process(container, catching_hup=True)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        with contextlib.suppress(Exception):  # none made, or the engine is gone (the run says so)
            self.consumer.container.remove(force=True)
        with contextlib.suppress(OSError):
            self.writer.send(None)
        shutil.rmtree(self.root, ignore_errors=True)
        self.client.close()

    def watch(self, folder: Path, mask: int, handler: Callable[[int, str], None]) -> None:
        with self.changed:
            self.handlers[floor.add_watch(self.fd, folder, mask)] = handler

    def read_events(self) -> None:
        try:
            while events := floor.read_events(self.fd):
                with self.changed:
                    for wd, mask, name in events:
                        self.overflowed |= bool(mask & floor.IN_Q_OVERFLOW)
                        if handler := self.handlers.get(wd):
                            handler(mask, name)
                    self.changed.notify_all()
        except Exception as error:  # reported to the waiting thread, never lost
            with self.changed:
                self.error = f"{type(error).__name__}: {error}"
                self.changed.notify_all()

    def wait_until(self, condition: Callable[[], bool], deadline: float, what: str, *, required: bool = True) -> bool:
        """Call with or without `changed` held. False at the deadline when not `required`."""
        with self.changed:
            while not condition():
                if self.error:
                    raise BenchError(f"the inotify reader failed: {self.error}")
                if (left := deadline - time.monotonic()) <= 0:
                    if required:
                        raise BenchError(f"timed out waiting for {what}")
                    return False
                self.changed.wait(left)
            return True

    def write_many(self, items: Sequence[tuple[Path, bytes]]) -> tuple[float, list[float]]:
        """By the writer process: (time before the first write, [time after each close])."""
        self.writer.send([(str(path), data) for path, data in items])
        started, closed = self.writer.recv()
        return float(started), [float(moment) for moment in closed]

    def on_signal(self, _mask: int, name: str) -> None:
        seen_at = time.monotonic()  # before the read: a line it finds was there by now
        if name == self.consumer.signal_file.name:
            with open(self.consumer.signal_file, "rb") as file:
                file.seek(self.signals_read)
                data = file.read()
            complete = data[: data.rfind(b"\n") + 1]
            self.signals_read += len(complete)
            self.times += [seen_at] * complete.split().count(b"HUP")

    def signals(self) -> int:
        with self.changed:
            return len(self.times)

    def wait_signal(self, number: int, deadline: float, what: str) -> float:
        """When the number-th HUP (1-based) was seen."""
        self.wait_until(lambda: len(self.times) >= number, deadline, what)
        return self.times[number - 1]

    def wait_quiet(self, deadline: float, what: str) -> None:
        """Until no HUP has arrived for QUIET_S (counting from now at the latest)."""
        called = time.monotonic()
        with self.changed:
            while (now := time.monotonic()) < (quiet_until := max([called, *self.times[-1:]]) + QUIET_S):
                if now >= deadline:
                    raise BenchError(f"timed out waiting for {what}: signals keep arriving")
                self.changed.wait(min(quiet_until, deadline) - now)


@dataclass
class Expected:
    """Bytes a destination must hold (with the owner and mode); when it was first seen holding them."""

    data: bytes
    at: float | None = None


class Command(WatchProcess):
    """The tests' log reader on another command (the sidecar's `docker run`, the shell script, the
    floor); a line also matches a message it starts with (plain text)."""

    def __init__(self, command: list[str]) -> None:
        super().__init__(folders=None, command=command)

    def matching(self, message: str, **fields: Any) -> list[LogLine]:
        return super().matching(message, **fields) or [line for line in self.lines if line.raw.startswith(message)]


class Lane:
    """One publisher under test: its folders, its process, and when its destination first held
    each upload expected of it (checked at every close-after-write, rename and attribute change)."""

    burst_timeout_s, ready = 40.0, "ready"
    proc: WatchProcess | None = None
    routes: Path | None = None

    def __init__(self, key: str, here: Stage) -> None:
        self.key, self.here, self.folder = key, here, here.root / key
        self.source, self.dest, self.state = (self.folder / part for part in ("uploads", "claude-config", "state"))
        self.source.mkdir(parents=True)
        self.dest.mkdir()
        self.expected: dict[str, Expected] = {}
        self.writes = self.satisfied = 0  # close-after-write or moved-to of an expected name; expectations met
        here.watch(self.dest, floor.IN_CLOSE_WRITE | floor.IN_MOVED_TO | floor.IN_ATTRIB, self.on_event)

    def spawn(self) -> WatchProcess:
        raise NotImplementedError

    def start(self) -> float:
        """Spawn and wait for the ready line; seconds from spawn to it."""
        spawned = time.monotonic()
        self.proc = self.spawn()
        self.proc.wait_for(self.ready, timeout=READY_TIMEOUT_S)
        return time.monotonic() - spawned

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.process.pid, signal.SIGTERM)  # for the shell: its whole pipeline
            try:
                proc.stop()
            except subprocess.TimeoutExpired:
                proc.stop(signal.SIGKILL)

    @property
    def running(self) -> WatchProcess:
        assert self.proc is not None, f"{self.key} is not running"
        return self.proc

    def pids(self) -> list[int]:
        return [self.running.process.pid]

    def finish(self, mark: int, final: dict[str, bytes], deadline: float) -> None:
        """Wait until the lane is done with the uploads written since `mark` (final bytes given)."""

    def expect(self, name: str, data: bytes) -> Expected:
        with self.here.changed:
            expected = self.expected[name] = Expected(data)
            return expected

    def on_event(self, mask: int, name: str) -> None:
        if (expected := self.expected.get(name)) is None:
            return
        self.writes += bool(mask & (floor.IN_CLOSE_WRITE | floor.IN_MOVED_TO))
        seen_at = time.monotonic()  # before the read: what it finds was in place by now
        if expected.at is None and self.holds(name, expected.data):
            expected.at = seen_at
            self.satisfied += 1

    def holds(self, name: str, data: bytes) -> bool:
        try:
            fd = os.open(self.dest / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            info = os.fstat(fd)
            owned = (info.st_uid, info.st_gid) == OWNER and info.st_mode & 0o7777 == MODE
            return owned and os.read(fd, len(data) + 1) == data
        finally:
            os.close(fd)

    def published(self, expected: Expected, deadline: float) -> float:
        self.here.wait_until(lambda: expected.at is not None, deadline, f"{self.key} to publish")
        return expected.at or math.nan

    def log_counts(self, mark: int) -> Counter[str]:
        return Counter(str(line["message"]) for line in self.running.lines[mark:])


class CredsyncLane(Lane):
    def __init__(self, key: str, here: Stage, flags: Sequence[str]) -> None:
        super().__init__(key, here)
        self.flags = list(flags)

    def args(self) -> list[str]:
        """The flags WatchProcess passes to `credsync watch` (it adds --log-format=json)."""
        routes = [f"--routes={self.routes}"] if self.routes is not None else []
        folders = f"--source={self.source} --claude-dir={self.dest} --state-dir={self.state}".split()
        owner = ["--owner=1001:1001", "--config-routes=settings.json,.claude.json"]  # JSON_ROUTES' other two
        return [*folders, *owner, f"--notify-target={self.here.consumer.name}", *self.flags, *routes]

    def spawn(self) -> WatchProcess:
        return WatchProcess(self, ["--log-level=INFO"])

    def finish(self, mark: int, final: dict[str, bytes], deadline: float) -> None:
        """Until `notified` lines since `mark` name the final bytes of every upload."""
        wanted, notified = {name: sha12(data) for name, data in final.items()}, dict[str, str]()

        def covers(line: LogLine) -> bool:
            if line["message"] in CREDSYNC_FAILURES:
                raise BenchError(f"{self.key} will not signal: {line.raw}")
            if line["message"] == "notified":
                notified.update(item.rpartition("@")[::2] for item in str(line["routes"]).split(","))
            return all(notified.get(name) == sha for name, sha in wanted.items())

        await_line(self.running, mark, covers, deadline, f"{self.key}: 'notified' for {len(wanted)} upload(s)")


class SidecarLane(CredsyncLane):
    """credsync in its image, run as the default compose file runs the sidecar (bench/sidecar.py):
    its capabilities, read-only root, mounts, and the consumer's PID namespace, where it signals
    the consumer's PID 1 through a pidfd with no Docker socket (CREDSYNC_NOTIFY_TARGET=pid:1 as
    the file sets it). Its log comes through `docker run`'s stderr."""

    def __init__(self, here: Stage, flags: Sequence[str], image: str) -> None:
        super().__init__(SIDECAR, here, flags)
        self.image, self.name = image, f"credsync-bench-sidecar-{os.getpid()}"

    def spawn(self) -> WatchProcess:
        mounts = {"/uploads": self.source, "/claude-config": self.dest, "/var/lib/credsync": self.state}
        mounts |= {"/receipts": self.folder / "receipts", "/claude-aws": self.folder / "claude-aws"}
        options = sidecar.run_options(mounts, self.here.consumer.name)
        # The lanes publish as one owner (OWNER), where the file gives claude-hub's 1001:2000.
        flags = ["--log-format=json", "--owner=1001:1001", *self.flags]
        command = ["docker", "run", "--rm", f"--name={self.name}", "--network=none", *options, self.image, "watch"]
        return Command([*command, *flags])

    def pids(self) -> list[int]:
        return [int(sidecar.run(["docker", "inspect", "--format", "{{.State.Pid}}", self.name], "docker inspect"))]


class ShellLane(Lane):
    burst_timeout_s, ready, resting = 150.0, "Watches established", frozenset[int]()

    def spawn(self) -> WatchProcess:
        script = Path(__file__).with_name("shell_baseline.sh")
        return Command(["bash", str(script), str(self.source), str(self.dest), self.here.consumer.name, "1001:1001"])

    def start(self) -> float:
        seconds, deadline = super().start(), time.monotonic() + READY_TIMEOUT_S
        while len(resting := frozenset(descendants(self.running.process.pid))) < 2:  # its subshell, inotifywait
            if time.monotonic() > deadline:
                raise BenchError(f"the shell pipeline did not come up: {resting}")
        self.resting = resting
        return seconds

    def pids(self) -> list[int]:
        return [self.running.process.pid, *self.resting]

    @override
    def finish(self, mark: int, final: dict[str, bytes], deadline: float) -> None:
        """Until no install or docker process is left (polled from /proc, after the measured path)."""
        while descendants(self.running.process.pid) - self.resting:
            if time.monotonic() > deadline:
                raise BenchError("the shell loop is still running commands")
            time.sleep(0.002)


class FloorLane(Lane):
    def spawn(self) -> WatchProcess:
        return Command([sys.executable, "-m", "bench.floor", str(self.source), str(self.dest), self.here.consumer.name])

    @override
    def finish(self, mark: int, final: dict[str, bytes], deadline: float) -> None:
        await_line(self.running, mark, lambda line: line.raw.startswith("sent"), deadline, "the floor's 'sent'")


def round_trip(lane: Lane, data: bytes, into: Latencies, *, finish: bool) -> float:
    """One upload of .credentials.json by the writer process; records its latencies; returns when
    the HUP was seen."""
    here, deadline = lane.here, time.monotonic() + ROUND_TIMEOUT_S
    base, mark, expected = here.signals(), len(lane.running.lines), lane.expect(UPLOAD_NAME, data)
    written = here.write_many([(lane.source / UPLOAD_NAME, data)])[1][0]
    published = lane.published(expected, deadline)
    seen = here.wait_signal(base + 1, deadline, f"the HUP from {lane.key}")
    if finish:
        lane.finish(mark, {UPLOAD_NAME: data}, deadline)
        if here.signals() != base + 1:
            raise BenchError(f"{lane.key} sent {here.signals() - base} signals for one upload")
    if published <= written:
        raise BenchError(f"{lane.key}: published {(written - published) * 1000:.3f} ms before written")
    into.publish.append(published - written)
    into.signal.append(seen - written)
    return seen


def defaults_rounds(lane: CredsyncLane, rounds: int, total: int, into: Latencies) -> None:
    """Signal rounds, each started DEFAULTS_GAP_S after the previous HUP (the notifier's grace
    check of that HUP then ends before this upload's debounce does), then publish-only uploads
    up to `total`: to the three Claude routes in turn, PUBLISH_ONLY_SPACING_S apart, each route
    written again only after its previous upload was published (notifications not timed)."""
    here, mark, pending, final = lane.here, len(lane.running.lines), dict[str, tuple[Expected, float]](), {}
    base, seen = here.signals(), round_trip(lane, data := upload_for(UPLOAD_NAME, 0), Latencies(), finish=False)
    for serial in range(1, rounds + 1):  # after the warm-up above
        time.sleep(max(0.0, seen + DEFAULTS_GAP_S - time.monotonic()))
        seen = round_trip(lane, data := upload_for(UPLOAD_NAME, serial), into, finish=False)
    lane.finish(mark, {UPLOAD_NAME: data}, time.monotonic() + ROUND_TIMEOUT_S)
    notified, sent = lane.log_counts(mark)["notified"], here.signals() - base
    if notified != rounds + 1 or sent != rounds + 1:
        raise BenchError(f"{lane.key}: {notified} notifications, {sent} HUPs for {rounds + 1} paced rounds")
    mark, next_at = len(lane.running.lines), time.monotonic()
    for serial in range(rounds + 1, total + 1):
        if (name := JSON_ROUTES[serial % len(JSON_ROUTES)]) in pending:
            expected, written = pending.pop(name)
            into.publish.append(lane.published(expected, time.monotonic() + ROUND_TIMEOUT_S) - written)
        time.sleep(max(0.0, next_at - time.monotonic()))
        data = final[name] = upload_for(name, serial)
        pending[name] = (lane.expect(name, data), here.write_many([(lane.source / name, data)])[1][0])
        next_at += PUBLISH_ONLY_SPACING_S
    for expected, written in pending.values():
        into.publish.append(lane.published(expected, time.monotonic() + ROUND_TIMEOUT_S) - written)
    lane.finish(mark, final, time.monotonic() + 15.0)
    here.wait_quiet(time.monotonic() + 15.0, f"{lane.key} to stop signalling")


def burst(lane: Lane, scenario: str, uploads: int) -> Burst:
    """`uploads` written back to back: distinct files, or rewrites of .credentials.json."""
    if scenario == "distinct":
        final = {f"b{serial:04d}.json": upload_for("routed", serial) for serial in range(uploads)}
        items = list(final.items())
    else:
        items = [(UPLOAD_NAME, upload_for(UPLOAD_NAME, 1_000_000 + serial)) for serial in range(uploads)]
        final = dict(items)
    here, expectations = lane.here, [lane.expect(name, data) for name, data in final.items()]
    writes, met, signals, mark = lane.writes, lane.satisfied, here.signals(), len(lane.running.lines)
    started, closed = here.write_many([(lane.source / name, data) for name, data in items])
    done = lambda: lane.satisfied - met >= len(final)  # noqa: E731
    all_met = here.wait_until(done, started + lane.burst_timeout_s, "", required=False)
    note = "" if all_met else f"not all published within {lane.burst_timeout_s:g} s"
    quiet_by = max(started + lane.burst_timeout_s, time.monotonic() + 30.0)  # the shell signals for long after
    try:
        if all_met:
            lane.finish(mark, final, quiet_by)
        here.wait_quiet(quiet_by, f"{lane.key} to stop signalling")
    except BenchError as error:
        note = note or str(error).splitlines()[0]
    sent, lost = here.signals() - signals, sum(not lane.holds(name, data) for name, data in final.items())
    published = max(e.at or 0.0 for e in expectations) - started if all_met else None
    last = here.times[-1] - started if sent else None
    return Burst(uploads, closed[-1] - started, published, last, lane.writes - writes, sent, lost, note)


IMPORTS = {
    "python": "pass",
    "credsync.cli": "import credsync.cli",
    "credsync.cli+notify": "import credsync.cli, credsync.notify",
    "floor": "import bench.floor, docker",
}
RSS_STEPS = ("asyncio", "pydantic", "pydantic_settings", "loguru", "watchdog.observers", "requests", "docker")
RSS_BY_IMPORT = f"""
import re
from credsync.slim_process import keep_out_unused_libraries
keep_out_unused_libraries()  # as the `credsync` command does before any other import
def rss():
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
last = rss()
print("python", last)
for name in {(*RSS_STEPS, "credsync.cli", "credsync.notify")!r}:
    __import__(name)
    print(name, rss() - last)
    last = rss()
"""


def python(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *arguments], cwd=REPO, capture_output=True, text=True, check=True)


def measure_imports(runs: int, results: Results) -> None:
    """Wall time of `python -c CODE`, interleaved (the cost of an import: the difference to `pass`);
    `-X importtime` by top-level package; and the RSS each import adds in turn, in a process that
    keeps out what the `credsync` command keeps out (OpenSSL, the charset guesser)."""
    for _ in range(runs):
        for name, code in IMPORTS.items():
            started = time.perf_counter()
            python("-c", code)
            results.imports.setdefault(name, []).append(time.perf_counter() - started)
    trace, cumulative = python("-X", "importtime", "-c", IMPORTS["credsync.cli+notify"]).stderr, dict[str, float]()
    for match in re.finditer(r"import time:\s+\d+ \|\s+(\d+) \|\s+(\w+)", trace):
        cumulative[match[2]] = max(cumulative.get(match[2], 0.0), int(match[1]) / 1000)
    top = ", ".join(f"{name} {ms:.0f}" for name, ms in sorted(cumulative.items(), key=lambda item: -item[1])[:8])
    results.notes.append(f"-X importtime, cumulative ms by top-level package (credsync.cli, .notify): {top}")
    said = map(str.split, python("-c", RSS_BY_IMPORT).stdout.splitlines())
    steps = ", ".join(f"{name} {int(kib) / 1024:.1f}" for name, kib in said)
    results.notes.append(f"RSS added by each import in turn, MiB: {steps}")


def machine(here: Stage) -> list[str]:
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    memory = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
    mounts = [line.split()[:3] for line in Path("/proc/self/mounts").read_text().splitlines()]
    holding = [m for m in mounts if f"{here.root}/".startswith(m[1].rstrip("/") + "/")]
    device, mount, kind = max(holding, key=lambda m: len(m[1]))
    git = ["git", "-C", str(REPO)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "credsync"], capture_output=True, text=True).stdout
    return [
        f"host: {platform.node()}, {platform.system()} {platform.release()}",
        f"CPU: {os.cpu_count()} x {cpu[1] if cpu else platform.machine()}",
        f"memory: {int(memory[1]) / 1024 / 1024 if memory else math.nan:.1f} GiB",
        f"Python: {platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        f"Docker Engine: {here.client.version().get('Version', '?')}",
        f"file system of the folders: {kind} ({device} on {mount})",
        f"credsync code: {commit or '?'}{' with uncommitted changes in credsync/' if dirty else ' (credsync/ clean)'}",
    ]


def dockerd() -> str | None:
    """PID and start time of the Engine the bench uses (its pid file, not any `dockerd`: other
    engines may run on the host): another value later means it was restarted."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(Path("/var/run/docker.pid").read_text())
        return f"pid {pid}, start tick {Path(f'/proc/{pid}/stat').read_text().rpartition(')')[2].split()[19]}"
    return None


def say(what: str) -> None:
    print(f"bench: {time.strftime('%H:%M:%S')} {what}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace, results: Results) -> None:
    say("parse time of the worst inputs")
    results.sections |= extras.parse_worst()
    say("import time and memory")
    measure_imports(args.import_runs, results)
    zero = ["--settle-ms=0", "--debounce-ms=0", "--notify-grace-ms=0"]
    with Stage() as here:
        results.notes += machine(here)
        fast, defaults = CredsyncLane(FAST, here, zero), CredsyncLane(DEFAULTS, here, [])
        side, shell = SidecarLane(here, zero, sidecar.build_image()), ShellLane(SHELL, here)
        floor_lane = FloorLane(FLOOR, here)
        lanes: list[Lane] = [fast, side, defaults, shell, floor_lane]
        if not here.realtime:
            results.warnings.append("the writer process did not get SCHED_FIFO: write times may be read late")
        try:
            say("start-up to ready")
            for _ in range(args.startup_runs):  # lanes in turn: no lane gets all the cold caches
                for lane in lanes:
                    results.startup.setdefault(lane.key, []).append(lane.start())
                    lane.stop()
            say(f"warm-up, then {args.rounds} interleaved rounds of credsync-0 / sidecar / shell / floor")
            for lane in lanes:
                lane.start()
                results.latency[lane.key] = Latencies()
            for serial in range(args.rounds + 1):  # 0: the warm-up
                for lane in (fast, side, shell, floor_lane):
                    into = results.latency[lane.key] if serial else Latencies()
                    round_trip(lane, upload_for(UPLOAD_NAME, serial), into, finish=True)
            say(f"credsync defaults: {args.default_rounds} paced rounds, publish-only uploads up to {args.rounds}")
            defaults_rounds(defaults, args.default_rounds, args.rounds, results.latency[DEFAULTS])
            say(f"idle window of {args.idle_seconds:g} s")
            results.idle = measure_idle({lane.key: lane.pids() for lane in lanes}, args.idle_seconds)
            say("health check CPU")  # the image's HEALTHCHECK in the running sidecar, its probe file on the host
            in_image = sidecar.image_healthcheck(side.image)
            probe = [sys.executable, "-I", "-S", str(REPO / "credsync" / "health_probe.py"), str(defaults.state)]
            cli = [sys.executable, "-m", "credsync", "health", f"--state-dir={defaults.state}"]
            results.health = {
                SIDECAR: sidecar.cpu_per_run(["docker", "exec", side.name, in_image[0]], args.health_runs, in_image),
                DEFAULTS: sidecar.cpu_per_run([sys.executable], args.health_runs, probe),
                "cli": sidecar.cpu_per_run([sys.executable], max(1, args.health_runs // 5), cli),
            }
            say(f"bursts of {args.burst} uploads")  # not the sidecar: its routes file would have to be mounted too
            for daemon in (fast, defaults):  # restarted with a CREDSYNC_ROUTES file of as many JSON routes
                daemon.stop()
                daemon.routes = daemon.folder / "routes.toml"
                daemon.routes.write_text("\n".join(map(ROUTE.format, range(args.burst))))
                daemon.start()
            for lane in (fast, defaults, shell, floor_lane):
                for scenario in ("distinct", "rewrites"):
                    results.bursts[(lane.key, scenario)] = result = burst(lane, scenario, args.burst)
                    if result.note:
                        lane.stop()  # a backlog would spill into the next measurement
                        lane.start()
            if here.consumer.state()[0] != "running" or here.consumer.state()[2]:
                raise BenchError("the consumer container did not survive the run")
        finally:
            for lane in lanes:
                lane.stop()
        if here.overflowed:
            results.warnings.append("the inotify queue of the bench overflowed; some arrivals may be seen late")
    if args.soak:
        say(f"soak of {args.soak} uploads")
        results.sections |= extras.soak(args.soak)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").split("\n\n")[0])
    for flag, kind, default, help in (
        ("--rounds", int, 200, "uploads timed per lane"),
        ("--default-rounds", int, 50, "signal rounds of credsync at its defaults"),
        ("--idle-seconds", float, 60.0, "idle window"),
        ("--burst", int, 1000, "uploads per burst"),
        ("--startup-runs", int, 5, "spawns per lane for start-up"),
        ("--import-runs", int, 7, "runs per import measurement"),
        ("--health-runs", int, 30, "health checks timed per lane"),
        ("--soak", int, 0, "then N uploads (after 500 warm-up) through one daemon: RSS and fd growth; 10000 in full"),
    ):
        parser.add_argument(flag, type=kind, default=default, help=f"{help} (default {default})")
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/ alone")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 rounds, 5 s idle, bursts of 100")
    args = parser.parse_args(argv)
    args.command = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
    if args.quick:
        args.rounds, args.default_rounds, args.idle_seconds, args.burst = 20, 5, 5.0, 100
        args.startup_runs, args.import_runs, args.health_runs = 2, 2, 5
    if not 1 <= args.default_rounds <= args.rounds or min(args.idle_seconds, args.burst, args.startup_runs) <= 0:
        parser.error("need 1 <= --default-rounds <= --rounds, and --idle-seconds, --burst, --startup-runs > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args, results = parse_args(argv), Results()
    started, date, engine = time.monotonic(), datetime.now(UTC), dockerd()
    for key in [key for key in os.environ if key.startswith("CREDSYNC_")]:
        del os.environ[key]  # only the flags given configure the lanes
    results.notes.append(
        f"load average (1/5/15 min) at start: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}"
    )
    try:
        if missing := [tool for tool in ("inotifywait", "install", "docker", "bash") if not shutil.which(tool)]:
            raise BenchError(f"not found: {', '.join(missing)} (apt-get install inotify-tools docker.io)")
        if os.geteuid() != 0:
            raise BenchError("run as root: the lanes chown to 1001:1001 and talk to the Docker socket")
        if not args.no_docs:
            report.require_plotting()
        run(args, results)
    except (BenchError, AssertionError) as error:
        restarted = "\n(the Docker Engine was restarted during the run: run again)" if dockerd() != engine else ""
        print(f"bench failed: {error}{restarted}", file=sys.stderr)
        return 1
    results.notes.append(f"load average (1/5/15 min) at end: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    if dockerd() != engine:
        results.warnings.append(
            f"the Docker Engine was restarted during the run ({engine} -> {dockerd()}), by other work on this host:"
            " signal latencies and bursts may include its downtime; run again"
        )
    summary = report.Summary(results, args, time.monotonic() - started, date)
    print(summary.render(markdown=False))
    if not args.no_docs:
        for path in summary.write_docs(REPO / "docs"):
            print(f"wrote {path.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
