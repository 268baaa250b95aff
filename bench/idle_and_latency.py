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
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common import (
    CLK_TCK,
    UPLOAD_NAME,
    BenchError,
    Child,
    IdleResult,
    LogLine,
    code_version,
    credential,
    credsync_watch,
    guarded,
    has_message,
    load_average,
    measure_idle,
    percentile,
    ratio,
    sample,
    short_sha,
    write_in_place,
)
from floor import publish

READY_TIMEOUT_S = 20.0
PUBLISH_TIMEOUT_S = 10.0
PERCENTILES = (50, 95, 99)


# --------------------------------------------------------------------------- uploads


def wait_for_bytes(path: Path, data: bytes, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if path.read_bytes() == data:
                return
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"{path} does not hold the published bytes {timeout:g} s after the log said so")
        time.sleep(0.001)


def publish_via_credsync(daemon: Child, source: Path, destination: Path, serial: int) -> float:
    """One upload through the daemon: ms from the close of the last write to the `published`
    line for these bytes."""
    data = credential(serial)
    sha = short_sha(data)
    mark = daemon.mark()
    written = write_in_place(source / UPLOAD_NAME, data)

    def is_ours(line: LogLine) -> bool:
        if line["sha"] != sha:
            return False
        if line["message"] in ("rejected", "failed", "kept-consumer-change"):
            raise BenchError(f"credsync did not publish upload {serial}: {line.raw}")
        return bool(line["message"] == "published")

    deadline = time.monotonic() + PUBLISH_TIMEOUT_S
    line = daemon.wait_for(is_ours, deadline, f"'published' line for upload {serial} (sha {sha})", since=mark)
    wait_for_bytes(destination, data, 1.0)
    return (line.arrived - written) * 1000


@dataclass(frozen=True)
class FloorTiming:
    to_rename_ms: float
    to_dir_fsync_ms: float


def publish_floor(source: Path, destination: Path, serial: int) -> FloorTiming:
    """The least a publisher can do (bench/floor.py's publish: read, temp file, fchown, fsync,
    rename), then fsync the folder; timed from the close of the last write of the upload."""
    data = credential(serial)
    written = write_in_place(source / destination.name, data)
    source_fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    folder_fd = os.open(destination.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        publish(source_fd, folder_fd, destination.name, os.getuid(), os.getgid())
        renamed = time.monotonic()
        os.fsync(folder_fd)
        synced = time.monotonic()
    finally:
        os.close(folder_fd)
        os.close(source_fd)
    if destination.read_bytes() != data:
        raise BenchError(f"floor: {destination} does not hold upload {serial}")
    return FloorTiming((renamed - written) * 1000, (synced - written) * 1000)


# --------------------------------------------------------------------------- statistics and table


@dataclass(frozen=True)
class Distribution:
    label: str
    ms: tuple[float, ...]

    def stats(self) -> list[float]:
        return [*(percentile(self.ms, p) for p in PERCENTILES), max(self.ms), sum(self.ms) / len(self.ms)]


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
    load_at_start = load_average()
    flags = [f"--source={source}", f"--claude-dir={claude_dir}", f"--state-dir={state_dir}", f"--owner={owner}"]
    daemon = credsync_watch("credsync watch", [*flags, f"--settle-ms={args.settle_ms}"])
    children.append(daemon)
    ready = daemon.wait_for(has_message("ready"), time.monotonic() + READY_TIMEOUT_S, "'ready' line")
    startup_s = ready.arrived - daemon.spawned
    if ready["watching"] is not True:
        raise BenchError(f"credsync is ready but not watching: {ready.raw}")

    # Idle: both processes over the same window.
    baseline = Child.start("inotifywait", ["inotifywait", "-m", "-r", str(source)], parse_json=False)
    children.append(baseline)
    deadline = time.monotonic() + READY_TIMEOUT_S
    baseline.wait_for(lambda line: "Watches established" in line.raw, deadline, "'Watches established'")
    quiet_from = daemon.mark()
    measured = measure_idle({"credsync": [daemon.pid], "inotifywait": [baseline.pid]}, args.idle_seconds)
    idle = (measured["credsync"], measured["inotifywait"])
    lines_while_idle = len(daemon.lines) - quiet_from
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
    cpu_before = sample(daemon.pid)
    for serial in range(1, args.uploads + 1):
        gross.append(publish_via_credsync(daemon, source, destination, serial))
        cpu_start = time.process_time()
        timing = publish_floor(floor_source, floor_destination, serial)
        floor_cpu_s += time.process_time() - cpu_start
        floor.append(timing.to_rename_ms)
        floor_sync.append(timing.to_dir_fsync_ms)
    cpu_after = sample(daemon.pid)
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
        f"load average (1/5/15 min) at start {load_at_start}, at end"
        f" {load_average()} (other work on this host skews tails)",
        f"credsync start-up to 'ready': {startup_s:.2f} s",
        f"credsync log lines during the idle window: {lines_while_idle}",
        f"credsync exit code after SIGTERM: {code}"
        + (", logged 'stopped'" if any(line["message"] == "stopped" for line in daemon.lines) else ""),
    ]
    noisy = [line.raw for line in daemon.lines if line["level"] in ("WARNING", "ERROR", "CRITICAL")]
    notes.append(f"credsync WARNING/ERROR lines: {len(noisy)}" + "".join(f"\n      {raw}" for raw in noisy[:5]))
    notes.append(
        "publication time = arrival of the JSON 'published' line on the daemon's stderr (after its"
        " rename, folder fsync, previous-generation copy and ledger write); destination bytes verified"
    )
    notes.append(f"floor: same file system ({root}), same bytes, owner unchanged, run in this process")
    return render_table(args, idle, latency, (daemon_cpu_per_upload_ms, floor_cpu_s * 1000 / args.uploads), notes)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("inotifywait") is None:
        print("bench: inotifywait not found (apt-get install inotify-tools)", file=sys.stderr)
        return 1
    return guarded("bench", lambda: measure_and_print(args))


def measure_and_print(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="credsync-bench-"))
    children: list[Child] = []
    try:
        table = run(args, root, children)
    finally:
        for child in reversed(children):
            child.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
