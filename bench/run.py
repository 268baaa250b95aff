"""credsync side by side with the shell script a user would write and with the floor: one
command, one table, every figure measured in the same run on this machine.

    python bench/run.py [--rounds N] [--default-rounds N] [--idle-seconds S] [--burst N]
                        [--startup-runs N] [--no-docs] [--quick]

Four lanes, each with its own folders of one layout (uploads/ → claude-config/, owner 1001:1001,
mode 0600), all notifying the same consumer container (busybox, network none, PID 1 traps HUP
and appends a line to a bind-mounted file):

  credsync-0  `credsync watch --settle-ms=0 --debounce-ms=0 --notify-grace-ms=0`
  credsync    `credsync watch` at its defaults (settle 250 ms, debounce 500 ms, grace 1000 ms)
  shell       bench/shell_baseline.sh: inotifywait | install -o -g -m + docker kill -s HUP
  floor       bench/floor.py: inotify + read + temp + fchown + fsync + rename + one API kill

Arrivals are seen by inotify, event-driven: a destination counts as published when it holds
the upload's bytes with owner 1001:1001 and mode 0600; a signal when the consumer's line lands.

Figures: (1) close of the last write → published and (2) → HUP seen, over --rounds uploads
each, interleaved credsync-0 / shell / floor; credsync at its defaults gets --default-rounds
signal rounds (each costs ≥ 1.1 s by design) plus publish-only uploads up to --rounds. (3) a
burst of --burst uploads, written back to back: distinct files (a routes file gives credsync
that many routes) and rewrites of `.credentials.json`. (4) idle CPU and peak RSS of all lanes
over one shared window. (5) spawn → ready. (6) import time of credsync.cli.

Writes docs/benchmarks.md and docs/benchmarks-latency-cdf.png (unless --no-docs). Exits 0
after printing the table (whatever the targets say), 1 when a step fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import report
import sidecar
from common import (
    REPO_ROOT,
    UPLOAD_NAME,
    BenchError,
    Child,
    Consumer,
    Expected,
    FolderWatch,
    LogLine,
    Publications,
    Stage,
    clean_env,
    credential,
    credsync_watch,
    descendants,
    dockerd_identity,
    guarded,
    load_average,
    machine,
    measure_idle,
    short_sha,
    stage,
)
from report import DEFAULTS, DEFAULTS_GAP_S, FAST, FLOOR, SHELL, SIDECAR, Burst, Latencies, Results
from typing_extensions import override

BENCH = Path(__file__).resolve().parent
OWNER, MODE = (1001, 1001), 0o600
READY_TIMEOUT_S = 30.0
ROUND_TIMEOUT_S = 10.0
QUIET_S = 1.0  # no further signal for this long: a lane has said all it will say
PUBLISH_ONLY_SPACING_S = 0.12  # three routes in turn: each is rewritten every 0.36 s > settle
# Daemon log lines that mean no signal is coming: fail at once with the daemon's reason.
CREDSYNC_FAILURES = frozenset(
    {"published without notifying", "notification failed", "notification pending", "SIGHUP not sent", "cannot notify"}
)
JSON_ROUTES = (UPLOAD_NAME, ".claude.json", "settings.json")


def json_upload(serial: int) -> bytes:
    """A valid `.claude.json`, `settings.json` or routed JSON file; distinct per serial."""
    return json.dumps({"bench": serial, "theme": "dark", "padding": "x" * 64}).encode()


def upload_for(name: str, serial: int) -> bytes:
    return credential(serial) if name == UPLOAD_NAME else json_upload(serial)


# --------------------------------------------------------------------------- lanes


class Lane:
    """One publisher under test, its folders and its process."""

    burst_timeout_s = 40.0

    def __init__(self, key: str, root: Path, watch: FolderWatch, consumer: Consumer) -> None:
        self.key = key
        self.folder = root / key
        self.source, self.dest, self.state = (self.folder / part for part in ("uploads", "claude-config", "state"))
        for folder in (self.source, self.dest):
            folder.mkdir(parents=True)
        self.consumer = consumer
        self.publications = Publications(watch, self.dest, OWNER, MODE)
        self.child: Child | None = None
        self.routes: Path | None = None

    def spawn(self) -> Child:
        raise NotImplementedError

    def is_ready(self, line: LogLine) -> bool:
        raise NotImplementedError

    def start(self) -> float:
        """Spawn and wait for ready; seconds from spawn to the ready line."""
        child = self.spawn()
        self.child = child
        ready = child.wait_for(self.is_ready, time.monotonic() + READY_TIMEOUT_S, "its ready line")
        return ready.arrived - child.spawned

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
            self.child = None

    @property
    def running(self) -> Child:
        if self.child is None:
            raise BenchError(f"{self.key} is not running")
        return self.child

    def pids(self) -> list[int]:
        return [self.running.pid]

    def finish(self, mark: int, final: dict[str, bytes], deadline: float) -> None:
        """Wait until the lane is done with the uploads written since `mark` (final bytes given)."""


class CredsyncLane(Lane):
    def __init__(self, key: str, root: Path, watch: FolderWatch, consumer: Consumer, flags: Sequence[str]) -> None:
        super().__init__(key, root, watch, consumer)
        self.flags = list(flags)

    def spawn(self) -> Child:
        flags = [
            f"--source={self.source}",
            f"--claude-dir={self.dest}",
            f"--state-dir={self.state}",
            f"--owner={OWNER[0]}:{OWNER[1]}",
            f"--notify-target={self.consumer.name}",
            *self.flags,
            *([f"--routes={self.routes}"] if self.routes is not None else []),
        ]
        return credsync_watch(self.key, flags)

    def is_ready(self, line: LogLine) -> bool:
        if line["message"] == "ready" and line["watching"] is not True:
            raise BenchError(f"{self.key} is ready but not watching: {line.raw}")
        return bool(line["message"] == "ready")

    def finish(self, mark: int, final: dict[str, bytes], deadline: float) -> None:
        """Until `notified` lines since `mark` name the final bytes of every upload."""
        wanted = {name: short_sha(data) for name, data in final.items()}
        notified: dict[str, str] = {}

        def covers(line: LogLine) -> bool:
            if line["message"] in CREDSYNC_FAILURES:
                raise BenchError(f"{self.key} will not signal: {line.raw}")
            if line["message"] == "notified":
                for item in str(line["routes"]).split(","):
                    route, _, sha = item.rpartition("@")
                    notified[route] = sha
            return all(notified.get(name) == sha for name, sha in wanted.items())

        self.running.wait_for(covers, deadline, f"'notified' for {len(wanted)} final upload(s)", since=mark)

    def published_line(self, mark: int, data: bytes) -> float | None:
        """When the `published` line for these bytes arrived (after the ledger write)."""
        sha = short_sha(data)
        lines = self.running.lines[mark:]
        return next((line.arrived for line in lines if line["message"] == "published" and line["sha"] == sha), None)

    def count_lines(self, mark: int) -> dict[str, int]:
        counts: dict[str, int] = {}
        for line in self.running.lines[mark:]:
            counts[str(line["message"])] = counts.get(str(line["message"]), 0) + 1
        return counts


class SidecarLane(CredsyncLane):
    """credsync in its image, run as the compose file runs the sidecar (bench/sidecar.py): its
    capabilities, read-only root, mounts, and the notify layer's Docker socket and the consumer's
    PID namespace (so it signals through a pidfd). Its log comes through `docker run`'s stderr."""

    def __init__(self, root: Path, watch: FolderWatch, consumer: Consumer, flags: Sequence[str], image: str) -> None:
        super().__init__(SIDECAR, root, watch, consumer, flags)
        self.image = image
        self.name = f"credsync-bench-sidecar-{os.getpid()}"
        self.mounts = {
            "/uploads": self.source,
            "/claude-config": self.dest,
            "/var/lib/credsync": self.state,
            "/receipts": self.folder / "receipts",
            "/claude-aws": self.folder / "claude-aws",
        }

    def spawn(self) -> Child:
        options = sidecar.run_options(self.mounts, self.consumer.name)
        flags = ["--log-format=json", f"--notify-target={self.consumer.name}", *self.flags]
        command = [
            "docker",
            "run",
            "--rm",
            "--name",
            self.name,
            "--network=none",
            *options,
            self.image,
            "watch",
            *flags,
        ]
        return Child.start(self.key, command, parse_json=True, env=clean_env())

    def pids(self) -> list[int]:
        return [sidecar.container_pid(self.name)]


class ShellLane(Lane):
    burst_timeout_s = 150.0

    def __init__(self, root: Path, watch: FolderWatch, consumer: Consumer) -> None:
        super().__init__(SHELL, root, watch, consumer)
        self.resting: set[int] = set()

    def spawn(self) -> Child:
        script = BENCH / "shell_baseline.sh"
        command = ["bash", str(script), str(self.source), str(self.dest), self.consumer.name, "{}:{}".format(*OWNER)]
        return Child.start(self.key, command, parse_json=False, group=True)

    def is_ready(self, line: LogLine) -> bool:
        return "Watches established" in line.raw

    def start(self) -> float:
        seconds = super().start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        self.resting = set()
        while len(self.resting) < 2:  # the loop's subshell and inotifywait
            if time.monotonic() > deadline:
                raise BenchError(f"the shell pipeline did not come up: {self.resting}")
            self.resting = descendants(self.running.pid)
        return seconds

    def pids(self) -> list[int]:
        return [self.running.pid, *sorted(self.resting)]

    @override
    def finish(self, mark: int, final: dict[str, bytes], deadline: float) -> None:
        """Until no install or docker process is left (polled from /proc, after the measured path)."""
        while descendants(self.running.pid) - self.resting:
            if time.monotonic() > deadline:
                raise BenchError("the shell loop is still running commands")
            time.sleep(0.002)


class FloorLane(Lane):
    def spawn(self) -> Child:
        command = [sys.executable, str(BENCH / "floor.py"), str(self.source), str(self.dest), self.consumer.name]
        return Child.start(self.key, [*command, "--owner={}:{}".format(*OWNER)], parse_json=False, env=clean_env())

    def is_ready(self, line: LogLine) -> bool:
        return line.raw == "ready"

    @override
    def finish(self, mark: int, final: dict[str, bytes], deadline: float) -> None:
        self.running.wait_for(lambda line: line.raw.startswith("sent"), deadline, "'sent'", since=mark)


@dataclass
class Lanes:
    fast: CredsyncLane  # settle, debounce, grace 0
    sidecar: SidecarLane  # the same, in its container
    defaults: CredsyncLane
    shell: ShellLane
    floor: FloorLane

    def all(self) -> list[Lane]:
        return [self.fast, self.sidecar, self.defaults, self.shell, self.floor]


def make_lanes(root: Path, watch: FolderWatch, consumer: Consumer, image: str) -> Lanes:
    zero = ["--settle-ms=0", "--debounce-ms=0", "--notify-grace-ms=0"]
    return Lanes(
        CredsyncLane(FAST, root, watch, consumer, zero),
        SidecarLane(root, watch, consumer, zero, image),
        CredsyncLane(DEFAULTS, root, watch, consumer, []),
        ShellLane(root, watch, consumer),
        FloorLane(FLOOR, root, watch, consumer),
    )


# --------------------------------------------------------------------------- measurements


def round_trip(here: Stage, lane: Lane, name: str, data: bytes, into: Latencies, *, finish: bool) -> float:
    """One upload, written in place by the writer process; records its latencies; returns when
    the HUP was seen."""
    signals, child = here.consumer.signals, lane.running
    base, mark = signals.count(), child.mark()
    expected = lane.publications.expect(name, data)
    deadline = time.monotonic() + ROUND_TIMEOUT_S
    written = here.writer.write(lane.source / name, data)
    published = lane.publications.wait(expected, deadline, f"{lane.key} to publish {name}")
    seen = signals.wait_for(base + 1, deadline, f"the HUP from {lane.key}")
    if finish:
        lane.finish(mark, {name: data}, deadline)
        if signals.count() != base + 1:
            raise BenchError(f"{lane.key} sent {signals.count() - base} signals for one upload")
    if published <= written:
        raise BenchError(
            f"{lane.key}: published {(written - published) * 1000:.3f} ms before written: clocks out of order"
        )
    into.publish.append(published - written)
    into.signal.append(seen - written)
    if isinstance(lane, CredsyncLane) and finish:
        logged = lane.published_line(mark, data)
        if logged is not None:
            into.log.append(logged - written)
    return seen


def interleaved_rounds(here: Stage, lanes: Sequence[Lane], rounds: int, results: Results) -> None:
    for lane in lanes:
        results.latency[lane.key] = Latencies()
        round_trip(here, lane, UPLOAD_NAME, credential(0), Latencies(), finish=True)  # warm-up
    for serial in range(1, rounds + 1):
        for lane in lanes:
            round_trip(here, lane, UPLOAD_NAME, credential(serial), results.latency[lane.key], finish=True)


def defaults_rounds(here: Stage, lane: CredsyncLane, rounds: int, total: int, results: Results) -> None:
    """Signal rounds, each started DEFAULTS_GAP_S after the previous HUP (the notifier's grace
    check of that HUP then ends before this upload's debounce does), then publish-only uploads
    up to `total`."""
    signals = here.consumer.signals
    into = results.latency[lane.key] = Latencies()
    mark, base = lane.running.mark(), signals.count()
    data = credential(0)
    seen = round_trip(here, lane, UPLOAD_NAME, data, Latencies(), finish=False)  # warm-up
    for serial in range(1, rounds + 1):
        time.sleep(max(0.0, seen + DEFAULTS_GAP_S - time.monotonic()))
        data = credential(serial)
        seen = round_trip(here, lane, UPLOAD_NAME, data, into, finish=False)
    lane.finish(mark, {UPLOAD_NAME: data}, time.monotonic() + ROUND_TIMEOUT_S)
    notified, sent = lane.count_lines(mark).get("notified", 0), signals.count() - base
    if notified != rounds + 1 or sent != rounds + 1:
        raise BenchError(f"{lane.key}: {notified} notifications, {sent} HUPs for {rounds + 1} paced rounds")
    into.publish += publish_only(here, lane, total - rounds, rounds + 1)


def publish_only(here: Stage, lane: CredsyncLane, count: int, first_serial: int) -> list[float]:
    """Uploads to the three Claude routes in turn, PUBLISH_ONLY_SPACING_S apart; each route is
    written again only after its previous upload was published. Notifications are not timed."""
    latencies: list[float] = []
    pending: dict[str, tuple[Expected, float]] = {}
    final: dict[str, bytes] = {}
    mark = lane.running.mark()
    next_at = time.monotonic()
    for serial in range(first_serial, first_serial + count):
        name = JSON_ROUTES[serial % len(JSON_ROUTES)]
        if name in pending:
            expected, written = pending.pop(name)
            published = lane.publications.wait(expected, time.monotonic() + ROUND_TIMEOUT_S, f"{name} published")
            latencies.append(published - written)
        time.sleep(max(0.0, next_at - time.monotonic()))
        data = final[name] = upload_for(name, serial)
        expected = lane.publications.expect(name, data)
        pending[name] = (expected, here.writer.write(lane.source / name, data))
        next_at += PUBLISH_ONLY_SPACING_S
    for expected, written in pending.values():
        published = lane.publications.wait(expected, time.monotonic() + ROUND_TIMEOUT_S, "publish-only upload")
        latencies.append(published - written)
    lane.finish(mark, final, time.monotonic() + 15.0)
    here.consumer.signals.wait_quiet(QUIET_S, time.monotonic() + 15.0, f"{lane.key} to stop signalling")
    return latencies


def routes_file(path: Path, names: Sequence[str]) -> Path:
    """A CREDSYNC_ROUTES file adding one JSON route per name, into the Claude folder."""
    lines = [f'[[route]]\nupload = "{name}"\ndestination = "{{claude_dir}}/{name}"\nkind = "json"\n' for name in names]
    path.write_text("\n".join(lines))
    return path


def burst(here: Stage, lane: Lane, scenario: str, uploads: int) -> Burst:
    if scenario == "distinct":
        items = [(f"b{serial:04d}.json", json_upload(serial)) for serial in range(uploads)]
    else:
        items = [(UPLOAD_NAME, credential(1_000_000 + serial)) for serial in range(uploads)]
    signals, final = here.consumer.signals, dict(items)
    expectations = {name: lane.publications.expect(name, data) for name, data in final.items()}
    writes_before, met_before = lane.publications.counts()
    signals_before, mark = signals.count(), lane.running.mark()
    started, closed = here.writer.write_many([(lane.source / name, data) for name, data in items])
    all_met = here.watch.wait_until(
        lambda: lane.publications.satisfied - met_before >= len(final),
        started + lane.burst_timeout_s,
        "the burst",
        required=False,
    )
    published = max(e.satisfied_at or 0.0 for e in expectations.values()) if all_met else None
    note = ""
    quiet_by = max(started + lane.burst_timeout_s, time.monotonic() + 30.0)  # the shell signals for long after
    try:
        if all_met:
            lane.finish(mark, final, quiet_by)
        signals.wait_quiet(QUIET_S, quiet_by, f"{lane.key} to stop signalling")
    except BenchError as error:
        note = str(error).splitlines()[0]
    if not all_met:
        note = note or f"not all published within {lane.burst_timeout_s:g} s"
    writes, _ = lane.publications.counts()
    sent = signals.count() - signals_before
    return Burst(
        uploads=uploads,
        files=len(final),
        write_s=closed[-1] - started,
        published_s=None if published is None else published - started,
        last_signal_s=signals.times[-1] - started if sent else None,
        publications=writes - writes_before,
        signals=sent,
        lost=sum(1 for name, data in final.items() if not lane.publications.holds(name, data)),
        log=lane.count_lines(mark) if isinstance(lane, CredsyncLane) else {},
        note=note,
    )


def run_bursts(here: Stage, lanes: Lanes, args: argparse.Namespace, results: Results) -> None:
    names = [f"b{serial:04d}.json" for serial in range(args.burst)]
    for daemon in (lanes.fast, lanes.defaults):
        daemon.stop()
        daemon.routes = routes_file(daemon.folder / "routes.toml", names)
        daemon.start()
    for lane in lanes.all():
        if lane is lanes.sidecar:  # its routes file would have to be mounted too; the host lanes show bursts
            continue
        for scenario in ("distinct", "rewrites"):
            result = burst(here, lane, scenario, args.burst)
            results.bursts[(lane.key, scenario)] = result
            print(f"  burst {scenario:<9} {lane.key:<11} {describe_burst(result)}", file=sys.stderr)
            if result.note:  # a backlog would spill into the next measurement
                lane.stop()
                lane.start()


def describe_burst(result: Burst) -> str:
    published = "not all" if result.published_s is None else f"{result.published_s:.2f} s"
    return f"published {published}, {result.publications} publications, {result.signals} HUPs, {result.lost} lost"


def measure_startup(lanes: Lanes, runs: int, results: Results) -> None:
    """Spawn -> ready of each lane, `runs` times, lanes in turn (no lane gets all the cold caches)."""
    for lane in lanes.all():
        results.startup[lane.key] = []
    for _ in range(runs):
        for lane in lanes.all():
            results.startup[lane.key].append(lane.start())
            lane.stop()


IMPORTS = {
    "python": "pass",
    "credsync.cli": "import credsync.cli",
    "credsync.cli+notify": "import credsync.cli, credsync.notify",
    "floor": "import sys; sys.path.insert(0, 'bench'); import common, docker",
}


def measure_imports(runs: int, results: Results) -> None:
    """Wall time of `python -c CODE`, interleaved; the cost of the import is the difference to `pass`."""
    for name in IMPORTS:
        results.imports[name] = []
    for _ in range(runs):
        for name, code in IMPORTS.items():
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=clean_env(), check=True)
            results.imports[name].append(time.perf_counter() - started)
    trace = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", IMPORTS["credsync.cli+notify"]],
        cwd=REPO_ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    results.importtime = top_level_imports(trace)


RSS_STEPS = (
    "asyncio",
    "pydantic",
    "pydantic_settings",
    "loguru",
    "watchdog.observers",
    "requests",
    "docker",
    "credsync.cli",
    "credsync.notify",
)
RSS_BY_IMPORT = f"""
import re
from credsync.slim_process import keep_out_unused_libraries
keep_out_unused_libraries()  # as the `credsync` command does before any other import
def rss():
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
last = rss()
print("python", last)
for name in {RSS_STEPS!r}:
    __import__(name)
    now = rss()
    print(name, now - last)
    last = now
"""


def measure_rss_by_import(results: Results) -> None:
    """Where the daemon's memory goes: RSS added by each import, in the order given (each one
    counts only what the ones before it did not load), in a process that keeps out what the
    `credsync` command keeps out (OpenSSL, the charset guesser)."""
    said = subprocess.run(
        [sys.executable, "-c", RSS_BY_IMPORT],
        cwd=REPO_ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    steps = [line.split() for line in said if line]
    results.notes.append(
        "RSS added by each import in turn, MiB: " + ", ".join(f"{name} {int(kib) / 1024:.1f}" for name, kib in steps)
    )


def top_level_imports(trace: str) -> list[tuple[str, float]]:
    """Cumulative ms of each top-level package in `-X importtime` output, largest first."""
    cumulative: dict[str, float] = {}
    for line in trace.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s+)(\S+)", line)
        if match is None:
            continue
        package = match.group(4).split(".")[0]
        cumulative[package] = max(cumulative.get(package, 0.0), int(match.group(2)) / 1000)
    return sorted(cumulative.items(), key=lambda item: -item[1])


def measure_health_checks(lanes: Lanes, runs: int, results: Results) -> None:
    """CPU per run of the image's HEALTHCHECK command, in the running sidecar and on the host
    (the probe file against the host lane's state), and of `credsync health` (the whole CLI)."""
    probe = [sys.executable, "-I", "-S", str(REPO_ROOT / "credsync" / "health_probe.py"), str(lanes.defaults.state)]
    in_image = sidecar.image_healthcheck(lanes.sidecar.image)
    cli = [sys.executable, "-m", "credsync", "health", f"--state-dir={lanes.defaults.state}"]
    results.health = {
        SIDECAR: sidecar.cpu_per_run(["docker", "exec", lanes.sidecar.name, in_image[0]], runs, in_image),
        DEFAULTS: sidecar.cpu_per_run([sys.executable], runs, probe),
        "cli": sidecar.cpu_per_run([sys.executable], max(1, runs // 5), cli),
    }


# --------------------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> Results:
    results = Results()
    results.notes.append(f"load average (1/5/15 min) at start: {load_average()}")
    engine = dockerd_identity()
    with stage("credsync-vs-", READY_TIMEOUT_S) as here:
        results.notes += [f"{name}: {value}" for name, value in machine(here.client, here.root)]
        image = sidecar.build_image()
        lanes = make_lanes(here.root, here.watch, here.consumer, image)
        try:
            measure(lanes, here, args, results)
        except BenchError as error:
            if dockerd_identity() != engine:
                raise BenchError(f"{error}\n(the Docker Engine was restarted during the run: run again)") from None
            raise
        finally:
            for lane in lanes.all():
                lane.stop()
    results.notes.append(f"load average (1/5/15 min) at end: {load_average()}")
    if dockerd_identity() != engine:
        results.warnings.append(
            f"the Docker Engine was restarted during the run ({engine} -> {dockerd_identity()}), by other work on"
            " this host: signal latencies and bursts may include its downtime; run again"
        )
    return results


def measure(lanes: Lanes, here: Stage, args: argparse.Namespace, results: Results) -> None:
    if not here.writer.realtime:
        results.warnings.append("the writer process did not get SCHED_FIFO: write times may be read late")
    step("import time", lambda: measure_imports(args.import_runs, results))
    step("memory by import", lambda: measure_rss_by_import(results))
    step("start-up to ready", lambda: measure_startup(lanes, args.startup_runs, results))
    for lane in lanes.all():
        lane.start()
    fast = [lanes.fast, lanes.sidecar, lanes.shell, lanes.floor]
    step(
        f"warm-up, then {args.rounds} interleaved rounds of credsync-0 / sidecar / shell / floor",
        lambda: interleaved_rounds(here, fast, args.rounds, results),
    )
    step(
        f"credsync defaults: {args.default_rounds} paced rounds + {args.rounds - args.default_rounds} publish-only",
        lambda: defaults_rounds(here, lanes.defaults, args.default_rounds, args.rounds, results),
    )
    groups = {lane.key: lane.pids() for lane in lanes.all()}
    step(
        f"idle window of {args.idle_seconds:g} s",
        lambda: results.idle.update(measure_idle(groups, args.idle_seconds)),
    )
    step("health check CPU", lambda: measure_health_checks(lanes, args.health_runs, results))
    step(f"bursts of {args.burst} uploads", lambda: run_bursts(here, lanes, args, results))
    if not here.consumer.still_running():
        raise BenchError("the consumer container did not survive the run")
    if here.watch.overflowed:
        results.warnings.append("the inotify queue of the bench overflowed; some arrivals may be seen late")


def step(what: str, action: Callable[[], None]) -> None:
    started = time.monotonic()
    print(f"bench: {what} ...", file=sys.stderr, flush=True)
    action()
    print(f"bench: {what}: {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=200, help="uploads timed per lane (default 200)")
    parser.add_argument(
        "--default-rounds", type=int, default=50, help="signal rounds of credsync at its defaults (default 50)"
    )
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="idle window (default 60)")
    parser.add_argument("--burst", type=int, default=1000, help="uploads per burst (default 1000)")
    parser.add_argument("--startup-runs", type=int, default=5, help="spawns per lane for start-up (default 5)")
    parser.add_argument("--import-runs", type=int, default=7, help="runs per import measurement (default 7)")
    parser.add_argument("--health-runs", type=int, default=30, help="health checks timed per lane (default 30)")
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/ alone")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 rounds, 5 s idle, bursts of 100")
    args = parser.parse_args(argv)
    args.command = shlex.join(["python", "bench/run.py", *(sys.argv[1:] if argv is None else argv)])
    if args.quick:
        args.rounds, args.default_rounds, args.idle_seconds, args.burst = 20, 5, 5.0, 100
        args.startup_runs, args.import_runs, args.health_runs = 2, 2, 5
    if not 1 <= args.default_rounds <= args.rounds or args.idle_seconds <= 0 or args.burst < 1:
        parser.error("need 1 <= --default-rounds <= --rounds, --idle-seconds > 0, --burst >= 1")
    if args.startup_runs < 1 or args.import_runs < 1:
        parser.error("--startup-runs and --import-runs must be at least 1")
    return args


def preflight(args: argparse.Namespace) -> None:
    missing = [tool for tool in ("inotifywait", "install", "docker", "bash") if shutil.which(tool) is None]
    if missing:
        raise BenchError(f"not found: {', '.join(missing)} (apt-get install inotify-tools docker.io)")
    if os.geteuid() != 0:
        raise BenchError("run as root: the lanes chown to 1001:1001 and talk to the Docker socket")
    if not args.no_docs:
        report.require_plotting()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return guarded("bench", lambda: run_and_report(args))


def run_and_report(args: argparse.Namespace) -> int:
    started = time.monotonic()
    date = datetime.now(UTC)
    preflight(args)
    results = run(args)
    summary = report.Summary.of(results, args, time.monotonic() - started, date)
    print(summary.text())
    if not args.no_docs:
        for path in summary.write_docs(REPO_ROOT / "docs"):
            print(f"wrote {path.relative_to(REPO_ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
