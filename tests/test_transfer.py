"""Real uploads, end to end: the real `scp` (SFTP mode and legacy `-O`) and `rsync` clients write
into the source folder as an unprivileged user over a real sshd, and a running `credsync watch`
publishes the result byte-identical, with the consumer's owner and mode."""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from credsync.daemon import WRITE_BACKSTOP_S
from tests.helpers import (
    Folders,
    WatchProcess,
    assert_published,
    aws_credentials,
    claude_credentials,
    mcp_sign_ins,
    sha12,
)
from tests.sshd import SshServer

pytestmark = [pytest.mark.system, pytest.mark.transfer, pytest.mark.timeout(120)]

CLAUDE_ROUTE = ".credentials.json"
AWS_ROUTE = "aws/credentials"
CLAUDE_OWNER = (1001, 1001)
AWS_OWNER = (0, 0)
METHODS = ["scp", "scp -O", "rsync"]
UPLOAD_PADDING = 300_000
SFTP_BURST = 256 * 1024  # what SFTP-mode scp sends before its bandwidth limit starts to pause
THROTTLE_KBYTE_S = 500
STALL_KBYTE_S = 150


@pytest.fixture
def upload_folders(tmp_path: Path, sshd: SshServer) -> Iterator[Folders]:
    """The source folder belongs to the upload user, mode 0700, as `~/claude-uploads` would; the
    destinations and the state folder are the test's own."""
    user = sshd.user
    source = user.home / f"claude-uploads-{secrets.token_hex(6)}"
    source.mkdir(mode=0o700)
    try:
        os.chown(source, user.uid, user.gid)
        source.chmod(0o700)
        folders = Folders(source, tmp_path / "claude-config", tmp_path / "state", tmp_path / "aws")
        folders.claude_dir.mkdir()
        os.chown(folders.claude_dir, *CLAUDE_OWNER)
        folders.aws_dir.mkdir()
        yield folders
    finally:
        shutil.rmtree(source, ignore_errors=True)


@pytest.fixture
def watch_uploads(upload_folders: Folders) -> Iterator[WatchProcess]:
    """`credsync watch` on the upload user's folder; it must stop cleanly and log no error."""
    process = WatchProcess(upload_folders, ["--settle-ms=50"])
    try:
        yield process.ready()
    finally:
        code = process.stop()  # also asserts that no secret reached the log
    assert code == 0, f"credsync watch exited {code} on SIGTERM"
    errors = [(line["message"], line["route"]) for line in process.lines if line["level"] == "ERROR"]
    assert not errors, f"credsync logged errors: {errors}"


def outbox_file(tmp_path: Path, name: str, data: bytes) -> Path:
    """The operator's local copy: a private file on the client side."""
    outbox = tmp_path / "outbox"
    outbox.mkdir(mode=0o700, exist_ok=True)
    path = outbox / name
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def upload(
    sshd: SshServer,
    method: str,
    local: Path,
    remote: Path,
    *,
    kbyte_per_s: int | None = None,
) -> None:
    """`kbyte_per_s` throttles the client, so the upload stays open and is written in pieces."""
    if method == "rsync":
        sshd.rsync(local, remote, limit_kbyte=kbyte_per_s)
    else:
        limit_kbit = None if kbyte_per_s is None else kbyte_per_s * 8
        sshd.scp(local, remote, legacy=method == "scp -O", limit_kbit=limit_kbit)


def assert_written_by(path: Path, sshd: SshServer) -> None:
    """The upload in the source folder was written by the upload user, not by root."""
    info = os.lstat(path)
    assert info.st_uid == sshd.user.uid, f"{path} is owned by UID {info.st_uid}, not the upload user"


@pytest.mark.parametrize("method", METHODS)
def test_a_real_upload_is_published_byte_identical_owned_by_the_consumer_and_private(
    method: str,
    sshd: SshServer,
    watch_uploads: WatchProcess,
    upload_folders: Folders,
    tmp_path: Path,
) -> None:
    destination = upload_folders.claude_dir / CLAUDE_ROUTE
    remote = upload_folders.source / CLAUDE_ROUTE
    # Twice: the first upload creates the destination, the second replaces it (and, for scp,
    # rewrites the upload in place).
    for serial in (1, 2):
        data = claude_credentials(serial=serial)
        upload(sshd, method, outbox_file(tmp_path, CLAUDE_ROUTE, data), remote)
        line = watch_uploads.wait_for("published", count=serial, route=CLAUDE_ROUTE)
        assert line["bytes"] == len(data), f"published {line['bytes']} bytes, uploaded {len(data)}"
        assert line["sha"] == sha12(data), "the published hash is not the upload's"
        assert_written_by(remote, sshd)
        assert_published(destination, data, CLAUDE_OWNER)
    rejections = [line["reason"] for line in watch_uploads.matching("rejected", route=CLAUDE_ROUTE)]
    assert not rejections, f"a complete upload was rejected (read too early?): {rejections}"


def test_aws_credentials_uploaded_by_rsync_into_a_new_subfolder_are_published_root_owned(
    sshd: SshServer,
    watch_uploads: WatchProcess,
    upload_folders: Folders,
    tmp_path: Path,
) -> None:
    # The operator makes the folder over ssh while the daemon runs; the watcher must notice it.
    aws_folder = upload_folders.source / "aws"
    sshd.ssh(f"mkdir -m 700 {aws_folder}")  # at once followed by the upload: watchdog must not miss it
    data = aws_credentials()
    sshd.rsync(outbox_file(tmp_path, "credentials", data), upload_folders.source / AWS_ROUTE)
    line = watch_uploads.wait_for("published", route=AWS_ROUTE)
    assert line["dest"] == str(upload_folders.aws_dir / "credentials"), f"published to {line['dest']}"
    assert_written_by(upload_folders.source / AWS_ROUTE, sshd)
    assert_published(upload_folders.aws_dir / "credentials", data, AWS_OWNER)


@pytest.mark.parametrize("method", ["scp", "scp -O"])
def test_a_truncated_scp_upload_is_rejected_and_the_good_version_stays(
    method: str,
    sshd: SshServer,
    watch_uploads: WatchProcess,
    upload_folders: Folders,
    tmp_path: Path,
) -> None:
    """What a dropped scp leaves behind: the first half of the file, closed after write."""
    destination = upload_folders.claude_dir / CLAUDE_ROUTE
    remote = upload_folders.source / CLAUDE_ROUTE
    good = claude_credentials(serial=1)
    upload(sshd, method, outbox_file(tmp_path, CLAUDE_ROUTE, good), remote)
    watch_uploads.wait_for("published", route=CLAUDE_ROUTE)
    assert_published(destination, good, CLAUDE_OWNER)

    truncated = good[: len(good) // 2]
    upload(sshd, method, outbox_file(tmp_path, CLAUDE_ROUTE, truncated), remote)
    rejected = watch_uploads.wait_for("rejected", route=CLAUDE_ROUTE)
    assert rejected["level"] == "WARNING", f"a rejection logged at {rejected['level']}"
    assert rejected["reason"], "a rejection without a reason"
    assert remote.stat().st_size == len(truncated), "the truncated upload is not what the source holds"
    assert_published(destination, good, CLAUDE_OWNER)
    assert published_hashes(watch_uploads, CLAUDE_ROUTE) == [sha12(good)], "the truncated upload was published"

    # The operator retries: the next complete upload is published as usual.
    retry = claude_credentials(serial=2)
    upload(sshd, method, outbox_file(tmp_path, CLAUDE_ROUTE, retry), remote)
    watch_uploads.wait_for("published", count=2, route=CLAUDE_ROUTE)
    assert_published(destination, retry, CLAUDE_OWNER)


def padded_credentials(serial: int) -> bytes:
    """A valid `.credentials.json` of about 300 KB: past SFTP-mode scp's unthrottled first
    256 KiB or so, and cut anywhere it is invalid JSON."""
    return claude_credentials(serial=serial, top_level=mcp_sign_ins(padding="x" * UPLOAD_PADDING))


def published_hashes(watch: WatchProcess, route: str) -> list[str]:
    return [str(line["sha"]) for line in watch.matching("published", route=route)]


@pytest.mark.parametrize("method", METHODS)
def test_a_throttled_upload_is_read_only_once_complete(
    method: str,
    sshd: SshServer,
    watch_uploads: WatchProcess,
    upload_folders: Folders,
    tmp_path: Path,
) -> None:
    """At about 500 KB/s the upload is written in pieces for over half a second, with pauses far
    longer than the settle time (SFTP-mode scp: about 0.5 s after its first burst) but shorter
    than the daemon's write backstop: only the close may trigger the read."""
    assert SFTP_BURST / (THROTTLE_KBYTE_S * 1000) < WRITE_BACKSTOP_S * 0.6, "the throttle pauses near the backstop"
    data = padded_credentials(serial=1)
    started = time.monotonic()
    upload(
        sshd,
        method,
        outbox_file(tmp_path, CLAUDE_ROUTE, data),
        upload_folders.source / CLAUDE_ROUTE,
        kbyte_per_s=THROTTLE_KBYTE_S,
    )
    took = time.monotonic() - started
    watch_uploads.wait_for("published", route=CLAUDE_ROUTE)
    assert took > 0.4, f"the upload took {took:.2f}s: too fast to prove anything, lower the throttle"
    rejections = [line["reason"] for line in watch_uploads.matching("rejected", route=CLAUDE_ROUTE)]
    assert not rejections, f"a partly written upload was read: {rejections}"
    assert published_hashes(watch_uploads, CLAUDE_ROUTE) == [sha12(data)], "published other bytes, or twice"
    assert_published(upload_folders.claude_dir / CLAUDE_ROUTE, data, CLAUDE_OWNER)


def test_an_scp_stalled_past_the_write_backstop_publishes_only_the_whole_upload(
    sshd: SshServer,
    watch_uploads: WatchProcess,
    upload_folders: Folders,
    tmp_path: Path,
) -> None:
    """SFTP-mode scp throttled to 150 KB/s sends about 256 KiB, then holds the file open with no
    write for about 1.7 s, as a stalled network would: longer than the daemon's write backstop,
    so it may read the open file (and reject it). The destination must only ever get the whole
    upload."""
    good = claude_credentials(serial=1)
    upload(sshd, "scp", outbox_file(tmp_path, CLAUDE_ROUTE, good), upload_folders.source / CLAUDE_ROUTE)
    watch_uploads.wait_for("published", route=CLAUDE_ROUTE)
    data = padded_credentials(serial=2)
    started = time.monotonic()
    upload(
        sshd,
        "scp",
        outbox_file(tmp_path, CLAUDE_ROUTE, data),
        upload_folders.source / CLAUDE_ROUTE,
        kbyte_per_s=STALL_KBYTE_S,
    )
    took = time.monotonic() - started
    watch_uploads.wait_for("published", count=2, route=CLAUDE_ROUTE)
    assert took > WRITE_BACKSTOP_S + 0.3, f"the upload took {took:.2f}s: no stall past the backstop, lower the throttle"
    assert published_hashes(watch_uploads, CLAUDE_ROUTE) == [sha12(good), sha12(data)], "a partial upload was published"
    assert_published(upload_folders.claude_dir / CLAUDE_ROUTE, data, CLAUDE_OWNER)
