"""Load: 10,000 uploads through one `credsync watch`, with its resident memory and open file
descriptors sampled from /proc along the way; the growth after a warm-up is printed against a
bound.

    python bench/load.py [--uploads N] [--warmup N] [--sample-every N] [--settle-ms S]
                         [--min-seconds S] [--rss-bound-mib M] [--fd-bound N]

The uploads cycle through all five default routes (Claude and AWS), alternately written in
place (like scp) and renamed into place (like rsync); one in twenty is invalid and must be
rejected, and every tenth upload is accompanied by a file with a new name that no route
takes (ignored, then deleted). Each upload is waited for: the daemon's JSON log line for
exactly those bytes (`published`, or `rejected` for the invalid ones) before the next one.
Uploads are paced to last at least --min-seconds (default 180), so that anything that grows
with time rather than with uploads shows too.

Memory is VmRSS from /proc/<pid>/status, descriptors the entries of /proc/<pid>/fd (the least
of five readings 2 ms apart, as a publication holds two or three for a moment). The
baseline is taken after the warm-up uploads (imports, caches and the allocator settle
there); growth is the last sample minus the baseline, and the slope a least-squares fit over
all samples after the warm-up. Self-contained (standard library only): it starts credsync
with this interpreter, `python -m credsync`.

Exits 0 when RSS and descriptor growth are within their bounds, 1 when not or a step fails.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
HASH_PREFIX = 12
HOUR_MS = 3_600_000
KIB = 1024
READY_TIMEOUT_S = 30.0
OUTCOME_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
ROUTES = (".credentials.json", "settings.json", ".claude.json", "aws/credentials", "aws/config")


class BenchError(Exception):
    """A step failed or took too long; the message says which."""


# --------------------------------------------------------------------------- the daemon


@dataclass(frozen=True)
class Line:
    raw: str
    fields: dict[str, Any]


class Daemon:
    """`credsync watch` with its JSON log read line by line in a thread."""

    def __init__(self, command: Sequence[str]) -> None:
        self.process = subprocess.Popen(
            list(command), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO_ROOT
        )
        self.lines: queue.Queue[Line | None] = queue.Queue()
        self.tail: list[str] = []
        self.warnings = 0
        self._reader = threading.Thread(target=self._read, name="credsync-log", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for data in self.process.stderr:
            raw = data.decode("utf-8", "replace").rstrip("\n")
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
            fields = parsed if isinstance(parsed, dict) else {"message": "<not json>"}
            self.tail = [*self.tail[-19:], raw]
            self.lines.put(Line(raw, fields))
        self.lines.put(None)

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_for(self, message: str, timeout: float, **fields: object) -> Line:
        """The next line with this message and these fields; BenchError on timeout or exit.
        Unexpected warnings and errors on the way are counted."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(
                    f"no {message!r} {fields} within {timeout:g} s; last lines:\n  " + "\n  ".join(self.tail)
                )
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise BenchError(
                    f"credsync exited ({self.process.poll()}) before {message!r}:\n  " + "\n  ".join(self.tail)
                )
            if line.fields.get("message") == message and all(line.fields.get(k) == v for k, v in fields.items()):
                return line
            if line.fields.get("level") in ("WARNING", "ERROR", "CRITICAL"):
                self.warnings += 1

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)
        self._reader.join(STOP_TIMEOUT_S)
        return self.process.returncode


# --------------------------------------------------------------------------- /proc


@dataclass(frozen=True)
class Sample:
    uploads: int
    rss_kib: int
    hwm_kib: int
    fds: int
    threads: int
    cpu_s: float


def sample(pid: int, uploads: int) -> Sample:
    status: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        status[key] = value.strip()
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return Sample(
        uploads=uploads,
        rss_kib=int(status["VmRSS"].split()[0]),
        hwm_kib=int(status["VmHWM"].split()[0]),
        fds=open_fds(pid),
        threads=int(status["Threads"]),
        cpu_s=cpu_s,
    )


def open_fds(pid: int) -> int:
    """Descriptors held open: the least of a few readings 2 ms apart, so that the two or three a
    publication holds for a moment are not taken for a leak (a leak stays)."""
    readings = []
    for _ in range(5):
        readings.append(len(os.listdir(f"/proc/{pid}/fd")))
        time.sleep(0.002)
    return min(readings)


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0 for fewer than two points)."""
    if len(points) < 2:
        return 0.0
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return 0.0 if spread == 0 else sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


# --------------------------------------------------------------------------- uploads


def content(route: str, serial: int) -> bytes:
    """A valid, obviously fake upload for the route; `serial` makes each one distinct."""
    if route == ".credentials.json":
        oauth = {
            "accessToken": f"fake-access-{serial}",
            "refreshToken": f"fake-refresh-{serial}",
            "expiresAt": time.time_ns() // 1_000_000 + 8 * HOUR_MS,
            "scopes": ["user:inference", "user:profile"],
        }
        return json.dumps({"claudeAiOauth": oauth}, indent=2).encode()
    if route == "aws/credentials":
        return (
            f"[default]\naws_access_key_id = AKIAFAKEKEY{serial:09d}\naws_secret_access_key = fake{serial}\n".encode()
        )
    if route == "aws/config":
        return f"[default]\nregion = eu-west-{serial}\n".encode()
    return json.dumps({"serial": serial, "theme": "dark"}).encode()


def invalid(route: str, serial: int) -> bytes:
    if route.startswith("aws/"):
        return f"[default]\nregion = %(serial{serial})s\n".encode()  # interpolation: refused
    return content(route, serial)[:-3]  # cut short: not JSON


def write(source: Path, route: str, data: bytes, serial: int) -> None:
    path = source / route
    if serial % 2:
        path.write_bytes(data)  # in place, like scp and cp
    else:
        temp = path.with_name(f".{path.name}.{serial % 1_000_000:06d}")  # rsync's temp name
        temp.write_bytes(data)
        temp.rename(path)


def short_sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:HASH_PREFIX]


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class Outcome:
    samples: list[Sample]
    baseline: Sample
    seconds: float
    published: int
    rejected: int
    ignored_files: int
    warnings: int
    exit_code: int | None


def run(args: argparse.Namespace, root: Path) -> Outcome:
    source, claude_dir, aws_dir, state_dir = root / "uploads", root / "claude", root / "aws", root / "state"
    for folder in (source, source / "aws", claude_dir, aws_dir):
        folder.mkdir(parents=True)
    owner = f"{os.getuid()}:{os.getgid()}"
    daemon = Daemon(
        [
            sys.executable,
            "-m",
            "credsync",
            "watch",
            f"--source={source}",
            f"--claude-dir={claude_dir}",
            f"--aws-dir={aws_dir}",
            f"--state-dir={state_dir}",
            f"--owner={owner}",
            f"--aws-owner={owner}",
            f"--settle-ms={args.settle_ms}",
            "--log-format=json",
            "--log-level=INFO",
        ]
    )
    try:
        daemon.wait_for("ready", READY_TIMEOUT_S)
        total = args.warmup + args.uploads
        samples: list[Sample] = [sample(daemon.pid, 0)]
        published = rejected = ignored = 0
        started = time.monotonic()
        for serial in range(1, total + 1):
            ahead = started + args.min_seconds * serial / total - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            route = ROUTES[serial % len(ROUTES)]
            if serial % 20 == 0:
                route = ROUTES[(serial // 20) % len(ROUTES)]
                data = invalid(route, serial)
                write(source, route, data, serial)
                daemon.wait_for("rejected", OUTCOME_TIMEOUT_S, route=route, sha=short_sha(data))
                rejected += 1
            else:
                data = content(route, serial)
                write(source, route, data, serial)
                daemon.wait_for("published", OUTCOME_TIMEOUT_S, route=route, sha=short_sha(data))
                published += 1
            if serial % 10 == 0:
                stray = source / f"stray-{serial}.txt"  # a name no route takes: ignored
                stray.write_bytes(b"not an upload")
                with contextlib.suppress(FileNotFoundError):
                    (source / f"stray-{serial - 10}.txt").unlink()
                ignored += 1
            if (serial % args.sample_every == 0 or serial == args.warmup) and serial != total:
                samples.append(sample(daemon.pid, serial))
            if serial % 1000 == 0:
                print(f"  {serial}/{total} uploads, {time.monotonic() - started:.0f} s", file=sys.stderr)
        seconds = time.monotonic() - started
        time.sleep(1)  # let the last stray file's events drain
        samples.append(sample(daemon.pid, total))
        baseline = next(item for item in samples if item.uploads == args.warmup)
    finally:
        code = daemon.stop()
    return Outcome(samples, baseline, seconds, published, rejected, ignored, daemon.warnings, code)


def render(args: argparse.Namespace, outcome: Outcome) -> tuple[str, bool]:
    after = [item for item in outcome.samples if item.uploads >= args.warmup]
    last, base = outcome.samples[-1], outcome.baseline
    rss_growth_mib = (last.rss_kib - base.rss_kib) / KIB
    peak_growth_mib = (max(item.rss_kib for item in after) - base.rss_kib) / KIB
    fd_growth = last.fds - base.fds
    fd_peak_growth = max(item.fds for item in after) - base.fds
    rss_slope = slope([(item.uploads, item.rss_kib) for item in after]) * 1000
    rss_ok = rss_growth_mib <= args.rss_bound_mib and peak_growth_mib <= args.rss_bound_mib
    fd_ok = fd_peak_growth <= args.fd_bound
    uploads = args.warmup + args.uploads
    rule = "=" * 78
    out = [
        rule,
        f"credsync load bench - {platform.node()}, {platform.system()} {platform.release()}, {os.cpu_count()} CPUs,"
        f" Python {platform.python_version()}",
        f"{uploads} uploads ({args.warmup} warm-up) over {len(ROUTES)} routes in {outcome.seconds:.0f} s"
        f" ({uploads / outcome.seconds:.0f}/s); settle {args.settle_ms} ms",
        f"{outcome.published} published, {outcome.rejected} rejected on purpose, {outcome.ignored_files} ignored"
        f" files; other warnings/errors in the log: {outcome.warnings}; exit code after SIGTERM: {outcome.exit_code}",
        rule,
        f"{'after upload':>14}{'RSS MiB':>10}{'peak MiB':>10}{'fds':>6}{'threads':>9}{'CPU s':>9}",
    ]
    for item in outcome.samples:
        mark = "  <- baseline" if item is base else ""
        out.append(
            f"{item.uploads:>14}{item.rss_kib / KIB:>10.1f}{item.hwm_kib / KIB:>10.1f}{item.fds:>6}{item.threads:>9}"
            f"{item.cpu_s:>9.1f}{mark}"
        )
    out += [
        "",
        f"RSS growth after warm-up: {rss_growth_mib:+.2f} MiB at the end, {peak_growth_mib:+.2f} MiB at most"
        f" (bound {args.rss_bound_mib:g} MiB): {'OK' if rss_ok else 'OVER'}",
        f"RSS trend after warm-up: {rss_slope:+.1f} KiB per 1000 uploads",
        f"open fd growth after warm-up: {fd_growth:+d} at the end, {fd_peak_growth:+d} at most"
        f" (bound {args.fd_bound}): {'OK' if fd_ok else 'OVER'}",
        f"CPU per upload: {(last.cpu_s - base.cpu_s) * 1000 / max(1, args.uploads):.2f} ms",
        rule,
    ]
    return "\n".join(out), rss_ok and fd_ok


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=10_000, help="uploads measured after the warm-up (10000)")
    parser.add_argument("--warmup", type=int, default=500, help="uploads before the baseline sample (500)")
    parser.add_argument("--sample-every", type=int, default=500, help="uploads between samples (500)")
    parser.add_argument("--settle-ms", type=int, default=0, help="credsync --settle-ms (0: as fast as it goes)")
    parser.add_argument("--min-seconds", type=float, default=180.0, help="spread the uploads over at least this (180)")
    parser.add_argument("--rss-bound-mib", type=float, default=8.0, help="largest RSS growth accepted (8 MiB)")
    parser.add_argument("--fd-bound", type=int, default=2, help="largest open-fd growth accepted (2)")
    args = parser.parse_args(argv)
    if args.uploads < 1 or args.warmup < 1 or args.sample_every < 1 or args.settle_ms < 0 or args.min_seconds < 0:
        parser.error("--uploads, --warmup and --sample-every must be >= 1, --settle-ms and --min-seconds >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="credsync-load-"))
    try:
        outcome = run(args, root)
    except BenchError as error:
        print(f"load bench failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("load bench interrupted", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
    table, within = render(args, outcome)
    print(table)
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())
