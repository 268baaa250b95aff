"""`credsync watch` as a real process on real folders, as root."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable

import pytest

from tests.helpers import (
    Folders,
    WatchProcess,
    assert_published,
    aws_credentials,
    claude_credentials,
    sha12,
    wait_until,
)

pytestmark = pytest.mark.system  # root, a real Docker Engine or sshd: see conftest.py


def test_an_upload_is_published_with_owner_mode_and_hash_in_the_log(folders: Folders, watch: WatchProcess) -> None:
    data = claude_credentials()
    folders.upload(".credentials.json", data)
    line = watch.wait_for("published", route=".credentials.json")
    assert line["sha"] == sha12(data) and line["bytes"] == len(data)
    assert_published(folders.claude_dir / ".credentials.json", data)
    assert sorted(os.listdir(folders.claude_dir)) == [".credentials.json"]  # no temp file left
    ledger = folders.state_dir / "ledger.json"
    wait_until(ledger.exists)  # written once the batch is done, just after the log line
    assert ledger.stat().st_mode & 0o777 == 0o600


def test_aws_files_go_to_the_aws_folder_root_owned(folders: Folders, watch: WatchProcess) -> None:
    data = aws_credentials()
    folders.upload("aws/credentials", data)
    watch.wait_for("published", route="aws/credentials")
    assert_published(folders.aws_dir / "credentials", data, owner=(0, 0))


def test_an_rsync_style_rename_is_published(folders: Folders, watch: WatchProcess) -> None:
    data = claude_credentials()
    temp = folders.upload("..credentials.json.Xy12Ab", data)
    temp.rename(folders.source / ".credentials.json")
    watch.wait_for("published", route=".credentials.json")
    assert_published(folders.claude_dir / ".credentials.json", data)
    assert not watch.matching("ignored: no route for this name")


def test_bad_uploads_are_rejected_and_the_next_good_one_is_published(folders: Folders, watch: WatchProcess) -> None:
    good = claude_credentials(serial=1)
    folders.upload(".credentials.json", good)
    watch.wait_for("published", route=".credentials.json")
    destination = folders.claude_dir / ".credentials.json"
    before = destination.stat()
    secret = folders.source.parent / "root-only"
    secret.write_bytes(claude_credentials(serial=99))
    secret.chmod(0o600)
    upload = folders.source / ".credentials.json"

    def replaced_by(make: Callable[[], object]) -> Callable[[], None]:
        def replace() -> None:
            upload.unlink()
            make()

        return replace

    bad_uploads: list[tuple[Callable[[], object], str]] = [
        (lambda: upload.write_bytes(good[: len(good) // 2]), "not valid JSON"),
        (lambda: upload.write_bytes(b'{"claudeAiOauth": {"accessToken": "x"}}'), "expiresAt: Field required"),
        (replaced_by(lambda: upload.symlink_to(secret)), "symlink"),
        (replaced_by(lambda: os.mkfifo(upload)), "FIFO"),
        (replaced_by(lambda: os.link(secret, upload)), "hard links"),
        (replaced_by(upload.mkdir), "directory"),
    ]
    for count, (make_bad, reason) in enumerate(bad_uploads, start=1):
        make_bad()
        line = watch.wait_for("rejected", count=count, route=".credentials.json")
        assert reason in line["reason"]
        assert destination.read_bytes() == good and destination.stat().st_ino == before.st_ino
    upload.rmdir()
    newer = claude_credentials(serial=2)
    folders.upload(".credentials.json", newer)
    watch.wait_for("published", count=2, route=".credentials.json")
    assert_published(destination, newer)
    assert watch.process.poll() is None


def test_a_restart_with_nothing_new_republishes_nothing(folders: Folders) -> None:
    data = claude_credentials()
    folders.upload(".credentials.json", data)
    first = WatchProcess(folders).ready()
    first.wait_for("published", route=".credentials.json")
    assert first.stop() == 0
    destination = folders.claude_dir / ".credentials.json"
    before = destination.stat()
    second = WatchProcess(folders).ready()
    try:
        assert second.wait_for("unchanged", route=".credentials.json")["sha"] == sha12(data)
        after = destination.stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        assert not second.matching("published")
    finally:
        assert second.stop() == 0


def test_a_consumer_rewrite_is_kept_and_a_lost_destination_is_repaired(folders: Folders, watch: WatchProcess) -> None:
    data = claude_credentials()
    folders.upload(".credentials.json", data)
    watch.wait_for("published", route=".credentials.json")
    destination = folders.claude_dir / ".credentials.json"
    consumer_version = claude_credentials(refreshToken="")  # Claude blanks a rejected refresh token
    destination.write_bytes(consumer_version)
    watch.process.send_signal(signal.SIGHUP)
    kept = watch.wait_for("kept-consumer-change", route=".credentials.json")
    assert "upload anew" in kept["reason"]
    assert destination.read_bytes() == consumer_version
    destination.unlink()
    watch.process.send_signal(signal.SIGHUP)
    watch.wait_for("repaired", route=".credentials.json")
    assert_published(destination, data)
    destination.write_bytes(data[:10])  # truncated: not sound, so repaired as well
    watch.process.send_signal(signal.SIGHUP)
    watch.wait_for("repaired", count=2, route=".credentials.json")
    assert_published(destination, data)


def test_a_published_file_the_consumer_deletes_is_noticed_at_once(folders: Folders) -> None:
    data = claude_credentials()
    folders.upload(".credentials.json", data)
    first = WatchProcess(folders).ready()
    first.wait_for("published", route=".credentials.json")
    assert first.stop() == 0
    # A fresh daemon has no check of its own publication pending: only the deletion can say it.
    second = WatchProcess(folders).ready()
    try:
        second.wait_for("unchanged", route=".credentials.json")
        (folders.claude_dir / ".credentials.json").unlink()
        second.wait_for("the published file is gone or no longer a regular file", route=".credentials.json")
    finally:
        assert second.stop() == 0


def test_the_periodic_rescan_repairs_without_any_event(folders: Folders) -> None:
    data = claude_credentials()
    folders.upload(".credentials.json", data)
    process = WatchProcess(folders, ["--reconcile-s=1"]).ready()
    try:
        process.wait_for("published", route=".credentials.json")
        (folders.claude_dir / ".credentials.json").unlink()
        process.wait_for("repaired", route=".credentials.json", timeout=5)
        assert_published(folders.claude_dir / ".credentials.json", data)
    finally:
        process.stop()


def test_previous_generation_is_kept_privately(folders: Folders, watch: WatchProcess) -> None:
    first, second = claude_credentials(serial=1), claude_credentials(serial=2)
    folders.upload(".credentials.json", first)
    watch.wait_for("published", route=".credentials.json")
    folders.upload(".credentials.json", second)
    watch.wait_for("published", count=2, route=".credentials.json")
    previous = folders.state_dir / "previous" / ".credentials.json"
    assert previous.read_bytes() == first
    assert previous.stat().st_mode & 0o777 == 0o600
    expected = hashlib.sha256(second).hexdigest()

    def ledger_records_second() -> bool:
        routes = json.loads((folders.state_dir / "ledger.json").read_text())["routes"]
        return bool(routes[".credentials.json"]["sha256"] == expected)

    wait_until(ledger_records_second)  # written once the batch is done, just after the log line
    ledger = json.loads((folders.state_dir / "ledger.json").read_text())
    assert "CANARY" not in json.dumps(ledger)


def test_stale_temp_files_are_removed_at_start(folders: Folders) -> None:
    stale = folders.claude_dir / ".credsync..credentials.json.deadbeef.tmp"
    stale.write_bytes(b"partial")
    process = WatchProcess(folders).ready()
    try:
        assert not stale.exists()
        assert process.matching("removed a temp file left by an interrupted publish")
    finally:
        process.stop()


def test_sigterm_stops_within_a_second(folders: Folders) -> None:
    process = WatchProcess(folders).ready()
    started = time.monotonic()
    assert process.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 1.0
    assert process.matching("stopped")


def test_sigint_stops_cleanly(folders: Folders) -> None:
    process = WatchProcess(folders).ready()
    assert process.stop(signal.SIGINT) == 0


def test_slow_and_interrupted_writers_never_expose_a_partial_destination(folders: Folders, watch: WatchProcess) -> None:
    """A reader polls the destination throughout: it only ever sees complete, valid versions."""
    versions = [claude_credentials(serial=n) for n in range(3)]
    destination = folders.claude_dir / ".credentials.json"
    seen: set[bytes] = set()
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                seen.add(destination.read_bytes())

    reader = threading.Thread(target=poll, daemon=True)
    reader.start()
    try:
        folders.upload(".credentials.json", versions[0])
        watch.wait_for("published", route=".credentials.json")
        with (folders.source / ".credentials.json").open("wb") as slow:  # half, a pause past the settle time, rest
            slow.write(versions[1][:100])
            slow.flush()
            watch.wait_for("incomplete", route=".credentials.json")  # read by the backstop, not reported
            slow.write(versions[1][100:])
        watch.wait_for("published", count=2, route=".credentials.json")
        folders.upload(".credentials.json", versions[2][:-20])  # a transfer cut short
        watch.wait_for("rejected", route=".credentials.json")
        wait_until(lambda: destination.read_bytes() in seen)
    finally:
        stop.set()
        reader.join(5)
    assert seen <= {versions[0], versions[1]}, "the reader saw a version that was never uploaded whole"
    assert destination.read_bytes() == versions[1]
    assert len(watch.matching("rejected")) == 1, "a half-written upload still open was reported as rejected"


def test_a_burst_of_rewrites_converges_on_the_last(folders: Folders, watch: WatchProcess) -> None:
    versions = [claude_credentials(serial=n) for n in range(50)]
    for data in versions:
        folders.upload(".credentials.json", data)
    last = sha12(versions[-1])
    watch.wait_for("published", route=".credentials.json", sha=last)
    assert_published(folders.claude_dir / ".credentials.json", versions[-1])
