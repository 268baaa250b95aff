"""Idle cost and publication latency of `credsync watch`, each next to a baseline measured in
the same run.

    python bench/idle_and_latency.py [--idle-seconds N] [--uploads N] [--settle-ms S]

Idle: the daemon's CPU time and peak RSS over a quiet window, next to an idle
`inotifywait -m -r <source>` watching the same folder over the same window.

Latency: N uploads of a distinct `.credentials.json`, written in place like `cp`; the time from
the close of the last write to the arrival of the daemon's JSON `published` log line for those
bytes (destination checked to hold them). The baseline ("floor"), interleaved upload by upload,
is the least work any publisher must do: write in place, read back, temp file in the destination
folder, fsync, rename, fsync the folder; no watching, no settle time.

Exits 0 after printing one table, 1 when a step fails or takes too long.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
UPLOAD_NAME = ".credentials.json"
HASH_PREFIX = 12  # credsync logs the first 12 hex chars of the sha256 as "sha"
READY_TIMEOUT_S = 20.0
PUBLISH_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
HOUR_MS = 3_600_000
CLK_TCK = os.sysconf("SC_CLK_TCK")
PERCENTILES = (50, 95, 99)
MIB = 1024 * 1024
MS = 1_000_000  # ns


class BenchError(Exception):
    """A step failed or did not finish in time; the message says which."""


# --------------------------------------------------------------------------- /proc readings


@dataclass(frozen=True)
class ProcSample:
    """CPU time and context switches of a process (all threads) at one moment."""

    ticks: int  # utime + stime from /proc/<pid>/stat, in clock ticks
    run_ns: int  # sum over threads of /proc/<pid>/task/*/schedstat (ns resolution)
    switches: int  # voluntary + involuntary context switches, summed over threads
    threads: int


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


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {key}")


@dataclass(frozen=True)
class IdleResult:
    label: str
    seconds: float
    cpu_s: float
    run_s: float
    wakeups_per_s: float
    hwm_mib: float
    rss_mib: float
    threads: int


def idle_result(label: str, pid: int, before: ProcSample, after: ProcSample, seconds: float) -> IdleResult:
    return IdleResult(
        label=label,
        seconds=seconds,
        cpu_s=(after.ticks - before.ticks) / CLK_TCK,
        run_s=(after.run_ns - before.run_ns) / 1e9,
        wakeups_per_s=(after.switches - before.switches) / seconds,
        hwm_mib=status_kib(pid, "VmHWM") / 1024,
        rss_mib=status_kib(pid, "VmRSS") / 1024,
        threads=after.threads,
    )


# --------------------------------------------------------------------------- child processes


@dataclass
class LogLine:
    arrived_ns: int  # time.monotonic_ns() when the line was read from the pipe
    raw: str
    fields: dict[str, Any]


@dataclass
class Child:
    """A subprocess whose stderr is read line by line, in a thread, with arrival times."""

    name: str
    process: subprocess.Popen[bytes]
    parse_json: bool
    lines: queue.Queue[LogLine | None] = field(default_factory=queue.Queue)
    history: list[LogLine] = field(default_factory=list)
    reader: threading.Thread | None = None

    @classmethod
    def start(cls, name: str, command: Sequence[str], *, parse_json: bool, cwd: Path | None = None) -> Child:
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=cwd,
        )
        child = cls(name, process, parse_json)
        child.reader = threading.Thread(target=child._read, name=f"{name}-stderr", daemon=True)
        child.reader.start()
        return child

    def _read(self) -> None:
        stream = self.process.stderr
        assert stream is not None
        for data in stream:
            arrived = time.monotonic_ns()
            raw = data.decode("utf-8", "replace").rstrip("\n")
            fields: dict[str, Any] = {}
            if self.parse_json:
                try:
                    parsed = json.loads(raw)
                except ValueError:
                    parsed = None
                fields = parsed if isinstance(parsed, dict) else {"message": "<not json>"}
            line = LogLine(arrived, raw, fields)
            self.history.append(line)
            self.lines.put(line)
        self.lines.put(None)  # end of stream

    def wait_for(self, matches: Callable[[LogLine], bool], timeout: float, what: str) -> LogLine:
        """The next line that matches, read from the queue; BenchError after `timeout` seconds
        or when the process closes its stderr first."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"{self.name}: no {what} within {timeout:g} s{self.tail()}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.process.poll()
                raise BenchError(f"{self.name} ended (exit code {self.process.returncode}) before {what}{self.tail()}")
            if matches(line):
                return line

    def tail(self, count: int = 15) -> str:
        if not self.history:
            return ""
        return "; its last stderr lines:\n    " + "\n    ".join(line.raw for line in self.history[-count:])

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit within STOP_TIMEOUT_S; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                print(f"warning: {self.name} ignored SIGTERM for {STOP_TIMEOUT_S:g} s; killing it", file=sys.stderr)
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)
        if self.reader is not None:
            self.reader.join(STOP_TIMEOUT_S)
        if self.process.stderr is not None:
            self.process.stderr.close()
        return self.process.returncode


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


def write_in_place(path: Path, data: bytes) -> int:
    """Like `cp`: open (create or truncate), write, close. The monotonic time after the close."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    return time.monotonic_ns()


def short_sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:HASH_PREFIX]


def wait_for_bytes(path: Path, data: bytes, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError):
            if path.read_bytes() == data:
                return
        if time.monotonic() > deadline:
            raise BenchError(f"{path} does not hold the published bytes {timeout:g} s after the log said so")
        time.sleep(0.001)


def publish_via_credsync(daemon: Child, source: Path, destination: Path, serial: int) -> int:
    """One upload through the daemon: ns from the close of the last write to the `published`
    line for these bytes."""
    data = credential(serial)
    sha = short_sha(data)
    written = write_in_place(source / UPLOAD_NAME, data)

    def is_ours(line: LogLine) -> bool:
        if line.fields.get("sha") != sha:
            return False
        message = line.fields.get("message")
        if message in ("rejected", "failed", "kept-consumer-change"):
            raise BenchError(f"credsync did not publish upload {serial}: {line.raw}")
        return message == "published"

    line = daemon.wait_for(is_ours, PUBLISH_TIMEOUT_S, f"'published' line for upload {serial} (sha {sha})")
    wait_for_bytes(destination, data, 1.0)
    return line.arrived_ns - written


@dataclass(frozen=True)
class FloorTiming:
    to_rename_ns: int
    to_dir_fsync_ns: int


def publish_floor(source: Path, destination: Path, serial: int) -> FloorTiming:
    """The least a publisher can do, timed from the close of the last write of the upload."""
    data = credential(serial)
    upload = source / UPLOAD_NAME
    written = write_in_place(upload, data)
    fd = os.open(upload, os.O_RDONLY | os.O_CLOEXEC)
    try:
        read_back = os.read(fd, len(data) + 1)
    finally:
        os.close(fd)
    folder_fd = os.open(destination.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        temp = f".floor.{serial}.tmp"
        file_fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=folder_fd)
        try:
            view = memoryview(read_back)
            while view:
                view = view[os.write(file_fd, view) :]
            os.fsync(file_fd)
        finally:
            os.close(file_fd)
        os.rename(temp, destination.name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
        renamed = time.monotonic_ns()
        os.fsync(folder_fd)
        synced = time.monotonic_ns()
    finally:
        os.close(folder_fd)
    if destination.read_bytes() != data:
        raise BenchError(f"floor: {destination} does not hold upload {serial}")
    return FloorTiming(renamed - written, synced - written)


# --------------------------------------------------------------------------- statistics and table


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Distribution:
    label: str
    ms: tuple[float, ...]

    def stats(self) -> list[float]:
        return [*(percentile(self.ms, p) for p in PERCENTILES), max(self.ms), sum(self.ms) / len(self.ms)]


def ratio(numerator: float, denominator: float) -> str:
    if denominator <= 0:
        return "n/a (baseline 0)"
    return f"{numerator / denominator:.1f}x"


def render_table(
    args: argparse.Namespace,
    idle: tuple[IdleResult, IdleResult],
    latency: list[Distribution],
    cpu_per_upload_ms: tuple[float, float],
    notes: list[str],
) -> str:
    ours, base = idle
    out: list[str] = []
    rule = "=" * 96
    out += [
        rule,
        f"credsync idle & latency bench - {platform.node()}, {platform.system()} {platform.release()},"
        f" {os.cpu_count()} CPUs, Python {platform.python_version()}",
        f"idle window {ours.seconds:.1f} s; {args.uploads} uploads (+1 warm-up each, not counted);"
        f" settle {args.settle_ms} ms; clock tick {1000 / CLK_TCK:g} ms",
        rule,
        "",
        f"IDLE ({ours.seconds:.1f} s, both measured over the same window)",
        f"  {'':<34}{'credsync watch':>16}{'inotifywait -m -r':>20}{'ratio':>18}",
    ]
    rows: list[tuple[str, float, float, str]] = [
        ("CPU seconds (utime+stime)", ours.cpu_s, base.cpu_s, "{:.3f}"),
        ("CPU % of one core", 100 * ours.cpu_s / ours.seconds, 100 * base.cpu_s / base.seconds, "{:.3f} %"),
        ("CPU seconds (schedstat, ns res.)", ours.run_s, base.run_s, "{:.4f}"),
        ("peak RSS (VmHWM), MiB", ours.hwm_mib, base.hwm_mib, "{:.1f}"),
        ("RSS at end of window, MiB", ours.rss_mib, base.rss_mib, "{:.1f}"),
        ("context switches / s (wakeups)", ours.wakeups_per_s, base.wakeups_per_s, "{:.1f}"),
        ("threads", ours.threads, base.threads, "{:.0f}"),
    ]
    for name, mine, theirs, fmt in rows:
        out.append(f"  {name:<34}{fmt.format(mine):>16}{fmt.format(theirs):>20}{ratio(mine, theirs):>18}")
    out += [
        "",
        f"LATENCY, last write closed -> published, ms ({args.uploads} uploads, floor interleaved)",
        f"  {'':<42}" + "".join(f"{h:>9}" for h in ("p50", "p95", "p99", "max", "mean")),
    ]
    for dist in latency:
        out.append(f"  {dist.label:<42}" + "".join(f"{value:>9.2f}" for value in dist.stats()))
    by_label = {dist.label: dist for dist in latency}
    net = by_label[LABEL_NET].stats()
    for floor_label, name in (
        (LABEL_FLOOR, "ratio (credsync - settle) / floor (rename)"),
        (LABEL_FLOOR_SYNC, "ratio (credsync - settle) / floor+fsync"),
    ):
        floor = by_label[floor_label].stats()
        out.append(f"  {name:<42}" + "".join(f"{ratio(a, b):>9}" for a, b in zip(net, floor, strict=True)))
    out += [
        "",
        f"  CPU per upload, ms: credsync daemon {cpu_per_upload_ms[0]:.2f}"
        f" (utime+stime delta / uploads), floor loop {cpu_per_upload_ms[1]:.2f} (process_time)",
        "",
        "NOTES",
        *(f"  - {note}" for note in notes),
        rule,
    ]
    return "\n".join(out)


LABEL_GROSS = "credsync (log line arrival)"
LABEL_NET = "credsync - settle"
LABEL_FLOOR = "floor (-> rename done)"
LABEL_FLOOR_SYNC = "floor (-> rename + folder fsync done)"


# --------------------------------------------------------------------------- the run


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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="idle window (default 60)")
    parser.add_argument("--uploads", type=int, default=200, help="uploads timed (default 200)")
    parser.add_argument("--settle-ms", type=int, default=250, help="credsync --settle-ms (default 250)")
    args = parser.parse_args(argv)
    if args.idle_seconds <= 0 or args.uploads < 1 or args.settle_ms < 0:
        parser.error("--idle-seconds must be > 0, --uploads >= 1, --settle-ms >= 0")
    return args


def run(args: argparse.Namespace, root: Path, children: list[Child]) -> str:
    source, claude_dir, state_dir = root / "source", root / "claude-config", root / "state"
    floor_source, floor_dest = root / "floor-source", root / "floor-dest"
    for folder in (source, claude_dir, floor_source, floor_dest):
        folder.mkdir()
    owner = f"{os.getuid()}:{os.getgid()}"
    load_at_start = Path("/proc/loadavg").read_text().split()[:3]
    daemon = Child.start(
        "credsync watch",
        [
            sys.executable,
            "-m",
            "credsync",
            "watch",
            f"--source={source}",
            f"--claude-dir={claude_dir}",
            f"--state-dir={state_dir}",
            f"--owner={owner}",
            "--log-format=json",
            f"--settle-ms={args.settle_ms}",
        ],
        parse_json=True,
        cwd=REPO_ROOT,
    )
    children.append(daemon)
    started = time.monotonic()
    ready = daemon.wait_for(lambda line: line.fields.get("message") == "ready", READY_TIMEOUT_S, "'ready' line")
    startup_s = time.monotonic() - started
    if ready.fields.get("watching") is not True:
        raise BenchError(f"credsync is ready but not watching: {ready.raw}")

    # Idle: both processes over the same window.
    baseline = Child.start("inotifywait", ["inotifywait", "-m", "-r", str(source)], parse_json=False)
    children.append(baseline)
    baseline.wait_for(lambda line: "Watches established" in line.raw, READY_TIMEOUT_S, "'Watches established'")
    pids = (daemon.process.pid, baseline.process.pid)
    before = [sample(pid) for pid in pids]
    window_start = time.monotonic()
    time.sleep(args.idle_seconds)
    after = [sample(pid) for pid in pids]
    window = time.monotonic() - window_start
    idle = (
        idle_result("credsync", pids[0], before[0], after[0], window),
        idle_result("inotifywait", pids[1], before[1], after[1], window),
    )
    lines_while_idle = [line.raw for line in daemon.history if line.arrived_ns > ready.arrived_ns]
    baseline.stop()

    # Latency: credsync and the floor, interleaved so both see the same disk conditions.
    destination = claude_dir / UPLOAD_NAME
    floor_destination = floor_dest / UPLOAD_NAME
    publish_via_credsync(daemon, source, destination, 0)  # warm-up
    publish_floor(floor_source, floor_destination, 0)
    gross: list[float] = []
    floor: list[float] = []
    floor_sync: list[float] = []
    floor_cpu_s = 0.0
    cpu_before = sample(daemon.process.pid)
    for serial in range(1, args.uploads + 1):
        gross.append(publish_via_credsync(daemon, source, destination, serial) / MS)
        cpu_start = time.process_time()
        timing = publish_floor(floor_source, floor_destination, serial)
        floor_cpu_s += time.process_time() - cpu_start
        floor.append(timing.to_rename_ns / MS)
        floor_sync.append(timing.to_dir_fsync_ns / MS)
    cpu_after = sample(daemon.process.pid)
    daemon_cpu_per_upload_ms = (cpu_after.ticks - cpu_before.ticks) / CLK_TCK * 1000 / args.uploads
    latency = [
        Distribution(LABEL_GROSS, tuple(gross)),
        Distribution(LABEL_NET, tuple(ms - args.settle_ms for ms in gross)),
        Distribution(LABEL_FLOOR, tuple(floor)),
        Distribution(LABEL_FLOOR_SYNC, tuple(floor_sync)),
    ]

    code = daemon.stop()
    notes = [
        f"credsync code: {code_version()}",
        f"load average (1/5/15 min) at start {' '.join(load_at_start)}, at end"
        f" {' '.join(Path('/proc/loadavg').read_text().split()[:3])} (other work on this host skews tails)",
        f"credsync start-up to 'ready': {startup_s:.2f} s",
        f"credsync log lines during the idle window: {len(lines_while_idle)}",
        f"credsync exit code after SIGTERM: {code}"
        + (", logged 'stopped'" if any(line.fields.get("message") == "stopped" for line in daemon.history) else ""),
    ]
    noisy = [line.raw for line in daemon.history if line.fields.get("level") in ("WARNING", "ERROR", "CRITICAL")]
    notes.append(f"credsync WARNING/ERROR lines: {len(noisy)}" + "".join(f"\n      {raw}" for raw in noisy[:5]))
    notes.append(
        "publication time = arrival of the JSON 'published' line on the daemon's stderr (after its"
        " rename, folder fsync, previous-generation copy and ledger write); destination bytes verified"
    )
    notes.append(f"floor: same file system ({root}), same bytes, no owner/mode change, run in this process")
    return render_table(args, idle, latency, (daemon_cpu_per_upload_ms, floor_cpu_s * 1000 / args.uploads), notes)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("inotifywait") is None:
        print("bench: inotifywait not found (apt-get install inotify-tools)", file=sys.stderr)
        return 1
    root = Path(tempfile.mkdtemp(prefix="credsync-bench-"))
    children: list[Child] = []
    try:
        table = run(args, root, children)
    except BenchError as error:
        print(f"bench failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench interrupted", file=sys.stderr)
        return 1
    finally:
        for child in reversed(children):
            child.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
