"""The runner's steps outside the lanes: parse time of the worst inputs (always), and the soak
(`--soak N`); each gives the report a section of preformatted lines. Also what they share with
the lanes: a polled wait on log lines, and /proc/PID/status."""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import re
import shutil
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bench import BenchError
from credsync.errors import Rejection
from credsync.routes import Kind
from credsync.validators import validate
from tests.helpers import LogLine, WatchProcess, claude_credentials, make_folders, sha12, wait_until


def await_line(proc: WatchProcess, since: int, done: Callable[[LogLine], bool], deadline: float, what: str) -> None:
    """Until a line from `since` on makes `done` true (off the measured path: polled). `done` sees
    each line once, in order: it may keep state, or raise BenchError to fail at once."""
    cursor = since

    def found() -> bool:
        nonlocal cursor
        while cursor < len(proc.lines):
            cursor += 1
            if done(proc.lines[cursor - 1]):
                return True
        return False

    try:
        wait_until(found, deadline - time.monotonic(), interval=0.002)
    except AssertionError:
        tail = "".join(line.raw for line in proc.lines[-8:])
        raise BenchError(f"timed out waiting for {what}; the last lines:\n{tail}") from None


def has_fields(wanted: dict[str, str], line: LogLine) -> bool:
    return all(line[key] == value for key, value in wanted.items())


def proc_status(pid: int, key: str) -> int:
    """A number from /proc/PID/status (VmRSS, VmHWM in KiB; Threads)."""
    match = re.search(rf"^{key}:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    if match is None:
        raise BenchError(f"/proc/{pid}/status has no {key}")
    return int(match.group(1))


SIZES = (64 << 10, 256 << 10, 1 << 20)
MAX_GROWTH = 6.0  # time(1 MiB) / time(256 KiB): 4 when linear, 16 when quadratic
NOISE_MS = 20.0  # below this, cache effects swamp the ratio
WORST: dict[str, tuple[Kind, Callable[[int], bytes]]] = {  # by size in bytes
    "json: unterminated escapes": ("claude-settings", lambda n: b'"' + b'\\"' * (n // 2 - 1)),
    "json: 31-deep arrays": (
        "claude-settings",
        lambda n: b'{"a": [' + b",".join([b"[" * 31 + b"]" * 31] * (n // 64)) + b"]}",
    ),
    "json: many empty objects": ("claude-settings", lambda n: b'{"a": [' + b",".join([b"{}"] * (n // 3)) + b"]}"),
    "json: an allow-listed list": (
        "claude-settings",
        lambda n: b'{"availableModels": [' + b",".join([b'"claude-opus-4-1"'] * (n // 18)) + b"]}",
    ),
    "ini: 16 KB lines of blanks": (
        "aws-config",
        lambda n: b"[default]\n" + (b"a" + b" " * 16_000 + b"b\n") * (n // 16_003),
    ),
    "ini: sections to the line cap": (
        "aws-config",
        lambda n: b"".join(b"[s%d]\n" % i for i in range(min(n // 8, 9_999))),
    ),
}
OLD_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)  # credsync's pattern before: quadratic


def median_ms(work: Callable[[], object], runs: int) -> float:
    def once() -> float:
        started = time.perf_counter()
        with contextlib.suppress(Rejection, configparser.Error):
            work()
        return (time.perf_counter() - started) * 1000

    return statistics.median(once() for _ in range(runs))


def parse_worst(runs: int = 3) -> dict[str, list[str]]:
    """Each worst input at growing sizes up to the 1 MiB cap (linear: 4x the bytes, about 4x the
    time), against `json.loads` of a benign document of the same size (the floor) and the patterns
    credsync used before (quadratic), at sizes small enough to finish."""
    lines = [f"{'input':36} " + " ".join(f"{size >> 10:>7} KiB" for size in SIZES) + "   growth  verdict"]
    for name, (kind, build) in WORST.items():
        timings = [median_ms(partial(validate, kind, build(size), max_bytes=2 << 20, now_ms=0), runs) for size in SIZES]
        growth = timings[-1] / max(timings[-2], 0.01)
        verdict = "linear" if growth <= MAX_GROWTH or timings[-1] < NOISE_MS else "NOT LINEAR"
        lines.append(f"{name:36} " + " ".join(f"{ms:8.1f} ms" for ms in timings) + f"   {growth:5.1f}x  {verdict}")
    benign = [json.dumps({f"key{i}": "value " * 4 for i in range(size // 40)}) for size in SIZES]
    floor = " ".join(f"{median_ms(partial(json.loads, text), runs):8.1f} ms" for text in benign)
    lines += [
        f"{'floor: json.loads, benign document':36} {floor}",
        "before (the patterns credsync used), at sizes that finish:",
    ]
    for size in (5_000, 10_000, 20_000):
        regex = median_ms(partial(OLD_JSON_STRING.findall, '"' + '\\"' * (size // 2 - 1)), 1)
        ini = median_ms(
            partial(configparser.ConfigParser(interpolation=None).read_string, f"[default]\na{' ' * size}b\n"), 1
        )
        lines.append(f"  {size // 1000:>3} KB: JSON string regex {regex:8.1f} ms, configparser {ini:8.1f} ms")
    return {"Parse time of the worst inputs (credsync.validators), median of each": lines}


SOAK_ROUTES = (".credentials.json", "settings.json", ".claude.json", "aws/credentials", "aws/config")
SOAK_WARMUP, SOAK_PACE_S = 500, 180 / 10_500  # 10,000 uploads and the warm-up over three minutes at least
RSS_BOUND_MIB, FD_BOUND = 8.0, 2


def soak_upload(route: str, serial: int) -> bytes:
    """Valid and distinct per serial; every twentieth invalid (cut short, or INI interpolation)."""
    if route.startswith("aws/") and serial % 20 == 0:
        return b"[default]\nregion = %(serial)s\n"
    if route == "aws/credentials":
        data = f"[default]\naws_access_key_id = AKIAFAKEKEY{serial:09d}\naws_secret_access_key = fake{serial}\n"
    elif route == "aws/config":
        data = f"[default]\nregion = eu-west-{serial}\n"
    else:
        data = claude_credentials(serial=serial).decode() if route == ".credentials.json" else json.dumps({"n": serial})
    return data.encode()[: -3 if serial % 20 == 0 else None]


def soak_sample(pid: int, uploads: int) -> tuple[int, int, int, int, float]:
    """(uploads, RSS KiB, peak RSS KiB, open fds, CPU s); fds the least of five readings 2 ms apart,
    so that the two or three a publication holds for a moment are not taken for a leak."""
    fds = []
    for _ in range(5):
        fds.append(len(os.listdir(f"/proc/{pid}/fd")))
        time.sleep(0.002)
    stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    cpu_s = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return uploads, proc_status(pid, "VmRSS"), proc_status(pid, "VmHWM"), min(fds), cpu_s


def soak(uploads: int) -> dict[str, list[str]]:
    """`uploads` uploads (after SOAK_WARMUP) through one `credsync watch --settle-ms=0`, over the
    five default routes, alternately written in place (like scp) and renamed into place (like
    rsync), one in twenty invalid and every tenth beside a stray file no route takes, each waited
    for (its `published` or `rejected` line); RSS and open descriptors against the warm-up's."""
    root, total = Path(tempfile.mkdtemp(prefix="credsync-soak-")), SOAK_WARMUP + uploads
    folders = make_folders(root)
    (folders.source / "aws").mkdir()
    owner = f"{os.getuid()}:{os.getgid()}"
    proc = WatchProcess(folders, ["--log-level=INFO", f"--owner={owner}", f"--aws-owner={owner}", "--settle-ms=0"])
    try:
        samples, started = [soak_sample(proc.ready().process.pid, 0)], time.monotonic()
        for serial in range(1, total + 1):
            time.sleep(max(0.0, started + serial * SOAK_PACE_S - time.monotonic()))
            route = SOAK_ROUTES[(serial // 20 if serial % 20 == 0 else serial) % len(SOAK_ROUTES)]
            data, mark, path = soak_upload(route, serial), len(proc.lines), folders.source / route
            temp = path.with_name(f".{path.name}.{serial:06d}") if serial % 2 == 0 else path  # rsync's temp name
            temp.write_bytes(data)
            temp.rename(path)  # onto itself (in place): nothing happens
            wanted = {"message": "rejected" if serial % 20 == 0 else "published", "route": route, "sha": sha12(data)}
            await_line(proc, mark, partial(has_fields, wanted), time.monotonic() + 10, f"{wanted}")
            if serial % 10 == 0:
                (folders.source / f"stray-{serial}.txt").write_bytes(b"not an upload")  # ignored
                (folders.source / f"stray-{serial - 10}.txt").unlink(missing_ok=True)
            if serial % max(1, total // 20) == 0 or serial in (SOAK_WARMUP, total):
                time.sleep(1 if serial == total else 0)  # the last stray file's events drain first
                samples.append(soak_sample(proc.process.pid, serial))
        seconds = time.monotonic() - started
    finally:
        code = proc.stop()
        shutil.rmtree(root, ignore_errors=True)
    noisy = Counter(str(line["message"])[:48] for line in proc.lines if line["level"] in ("WARNING", "ERROR"))
    base = next(sample for sample in samples if sample[0] == SOAK_WARMUP)
    rss_growth = max((sample[1] - base[1]) / 1024 for sample in samples if sample[0] >= SOAK_WARMUP)
    fd_growth = max(sample[3] - base[3] for sample in samples if sample[0] >= SOAK_WARMUP)
    return {
        f"Soak: {uploads} uploads through one credsync watch, RSS and descriptors": [
            f"{total} uploads ({SOAK_WARMUP} warm-up) over {len(SOAK_ROUTES)} routes in {seconds:.0f} s, settle 0 ms;"
            f" {total // 20} invalid on purpose, {total // 10} stray files; exit code after SIGTERM: {code}",
            "warnings and errors in the log: " + ", ".join(f"{count} x {text}" for text, count in noisy.items()),
            f"{'after upload':>14}{'RSS MiB':>10}{'peak MiB':>10}{'fds':>6}{'CPU s':>9}",
            *(f"{n:>14}{rss / 1024:>10.1f}{hwm / 1024:>10.1f}{fds:>6}{cpu:>9.1f}" for n, rss, hwm, fds, cpu in samples),
            f"RSS growth after the warm-up: {(samples[-1][1] - base[1]) / 1024:+.2f} MiB at the end, {rss_growth:+.2f}"
            f" MiB at most (bound {RSS_BOUND_MIB:g} MiB): {'OK' if rss_growth <= RSS_BOUND_MIB else 'OVER'}",
            f"open fd growth after the warm-up: {samples[-1][3] - base[3]:+d} at the end, {fd_growth:+d} at most"
            f" (bound {FD_BOUND}): {'OK' if fd_growth <= FD_BOUND else 'OVER'}",
            f"CPU per upload: {(samples[-1][4] - base[4]) * 1000 / uploads:.2f} ms",
        ]
    }
