"""Floods against a real `credsync watch` on real folders (real inotify, real files), as root:
near-miss names rewritten in a loop, and an upload folder renamed in a loop. Each measures what
the flood costs (log lines, CPU time from /proc) and that a real upload is still published
promptly; the bounds have wide margins (a 2-core machine shares them with the flood itself)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from credsync.daemon import RESCAN_MIN_INTERVAL_S
from credsync.health_probe import check_health
from credsync.pipeline import IGNORED_BURST, IGNORED_LINES_PER_S, IGNORED_MEMORY
from tests.helpers import Folders, WatchProcess, aws_credentials, claude_credentials, sha12, wait_until

pytestmark = pytest.mark.system  # root: see conftest.py

FLOOD_S = 6.0
PUBLISH_BOUND_S = 2.0
CREDENTIALS = ".credentials.json"
# Renames the folder away and back as fast as Python can, for the seconds given, then prints
# how many times: harsher than `mv` in a shell loop, which forks twice per round.
RENAME_LOOP = """
import os, sys, time
os.chdir(sys.argv[1])
end = time.monotonic() + float(sys.argv[2])
rounds = 0
while time.monotonic() < end:
    os.rename("aws", "aws2")
    os.rename("aws2", "aws")
    rounds += 1
print(rounds)
"""


def cpu_seconds(pid: int) -> float:
    """User and system time of a process so far (/proc/PID/stat: utime and stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def case_variants(word: str, count: int) -> list[str]:
    """`count` distinct spellings of `word` in other cases (the word itself left out)."""
    spellings = dict.fromkeys(
        "".join(letter.upper() if upper else letter for letter, upper in zip(word, pattern, strict=True))
        for pattern in itertools.product((False, True), repeat=len(word))
    )
    spellings.pop(word)
    assert len(spellings) >= count
    return list(spellings)[:count]


def near_miss_names() -> list[str]:
    """More names than the ignored-name memory holds, each one credsync says it probably
    meant (`credentials.json` for `.credentials.json`, `aws/CREDENTIALS` for `aws/credentials`)."""
    names = case_variants("credentials.json", 1_000) + ["aws/" + name for name in case_variants("credentials", 100)]
    assert len(set(names)) == len(names) > IGNORED_MEMORY
    return names


def logged_at(line_time: object) -> float:
    assert isinstance(line_time, str)
    return datetime.fromisoformat(line_time).timestamp()


def test_a_flood_of_near_miss_names_costs_a_bounded_number_of_lines_and_uploads_still_publish(
    folders: Folders,
) -> None:
    """Before: the memory of names said was cleared whenever it filled, so 1,100 names
    rewritten in a loop were all said again at every round (25,254 lines, 4.5 MB in 10 s)."""
    (folders.source / "aws").mkdir()
    names = near_miss_names()
    process = WatchProcess(folders, ["--settle-ms=50", "--log-level=INFO"]).ready()
    started = time.monotonic()
    cpu_before = cpu_seconds(process.process.pid)
    data = claude_credentials(serial=1)
    uploaded_at: float | None = None
    rounds = 0
    try:
        while time.monotonic() - started < FLOOD_S:
            for name in names:
                (folders.source / name).write_bytes(b"{}")
            rounds += 1
            if uploaded_at is None and time.monotonic() - started > FLOOD_S / 2:
                folders.upload(CREDENTIALS, data)
                uploaded_at = time.time()
            # Past the settle time: every name is read again at every round, as in the report.
            time.sleep(0.1)
        published = process.wait_for("published", route=CREDENTIALS, sha=sha12(data), timeout=10)
        # Every name of the last round read: the flood is over for the daemon too.
        cpu_spent = cpu_seconds(process.process.pid) - cpu_before
    finally:
        process.stop()
    lifetime_s = time.monotonic() - started + 1.0  # and its start, before `started`
    ignored = process.matching("ignored: no route for this name")
    not_shown = process.matching("more ignored names not shown")
    print(
        f"{rounds} rounds of {len(names)} names: {len(ignored)} names said, {len(not_shown)} counts,"
        f" {sum(len(line.raw) for line in process.lines)} bytes logged; daemon CPU {cpu_spent:.2f}s"
    )
    assert uploaded_at is not None and rounds >= 3
    assert len(ignored) + len(not_shown) <= IGNORED_BURST + IGNORED_LINES_PER_S * lifetime_s + 1
    assert len(ignored) >= IGNORED_BURST, "the first names are said, each with its hint"
    assert all(line["hint"] for line in ignored)
    counted = sum(int(line["count"]) for line in not_shown)
    assert counted + len(ignored) >= 2 * len(names), "the names were read again and again, and counted"
    assert sum(len(line.raw) for line in process.lines) < 64 * 1024
    assert logged_at(published["time"]) - uploaded_at < PUBLISH_BOUND_S


def test_a_folder_renamed_in_a_loop_costs_about_one_rescan_a_second_and_uploads_still_publish(
    folders: Folders,
) -> None:
    """Before: every rename asked for a rescan and every event was read as it came: 85 to 98 % of
    a core, and an upload written meanwhile was not published within 5 s. A watch restarted
    while the folder was away also failed the whole watcher, for 5 s at a time."""
    (folders.source / "aws").mkdir()
    process = WatchProcess(folders, ["--settle-ms=50"]).ready()
    pid = process.process.pid
    cpu_before, started = cpu_seconds(pid), time.monotonic()
    renamer = subprocess.Popen(
        [sys.executable, "-c", RENAME_LOOP, str(folders.source), str(FLOOD_S)], stdout=subprocess.PIPE, text=True
    )
    try:

        def rescans() -> list[str]:
            return [str(line["reason"]) for line in process.matching("reconcile") if line["reason"] != "start-up"]

        wait_until(lambda: len(rescans()) >= 2, timeout=FLOOD_S / 2)  # the storm has reached the daemon
        data = claude_credentials(serial=2)
        folders.upload(CREDENTIALS, data)
        uploaded_at = time.time()
        published = process.wait_for("published", route=CREDENTIALS, sha=sha12(data), timeout=10)
        output, _ = renamer.communicate(timeout=FLOOD_S + 30)
        storm_s = time.monotonic() - started
        cpu_share = (cpu_seconds(pid) - cpu_before) / storm_s
        during = len(rescans())
        # After the storm: the folder's watch is back, so an upload there is seen at once.
        aws = aws_credentials()
        folders.upload("aws/credentials", aws)
        process.wait_for("published", route="aws/credentials", sha=sha12(aws), timeout=5)
        assert check_health(str(folders.state_dir)).startswith("healthy")
    finally:
        renamer.kill()
        renamer.wait()
        process.stop()
    renames = int(output)
    latency = logged_at(published["time"]) - uploaded_at
    print(
        f"{renames} renames in {storm_s:.1f}s: {during} rescans, daemon CPU {cpu_share:.0%} of a core,"
        f" upload published {latency:.2f}s after its write"
    )
    assert renames >= 1_000, "the storm was a storm"
    assert during <= 1.5 * storm_s / RESCAN_MIN_INTERVAL_S + 3
    assert cpu_share < 0.5
    assert latency < PUBLISH_BOUND_S
    assert not process.matching("cannot watch the source folder; retrying every 5s")
