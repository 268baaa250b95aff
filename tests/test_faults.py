"""Faults, end to end: `credsync watch` killed at random moments, a full or read-only disk,
lost file system events, a replaced upload folder, and a Docker Engine that dies, a target
that keeps restarting, a socket that refuses. Real processes, real mounts, a real engine."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from docker.models.containers import Container

from credsync.health_probe import HEALTH_FILE, parse_record
from tests import helpers
from tests.docker_env import ConsumerFactory, Engine
from tests.helpers import Folders, LogLine, WatchProcess, assert_published, claude_credentials, sha12, wait_until

pytestmark = pytest.mark.system  # root, a real Docker Engine or sshd: see conftest.py

CREDENTIALS = ".credentials.json"
TEMP_PREFIX, TEMP_SUFFIX = ".credsync.", ".tmp"
CRASH_ROUNDS = 200
FAST = ["--settle-ms=50"]
FAST_NOTIFY = ["--settle-ms=50", "--debounce-ms=200", "--notify-grace-ms=300"]
DOCKER_SOCKET = Path("/var/run/docker.sock")
DOCKERD_PIDFILE = Path("/var/run/docker.pid")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def temp_files(*folders: Path) -> list[Path]:
    """credsync's own temp files anywhere below the folders."""
    found = []
    for folder in folders:
        for parent, _, names in os.walk(folder):
            found += [
                Path(parent, name) for name in names if name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)
            ]
    return found


def logged(process: WatchProcess, prefix: str) -> list[LogLine]:
    """Lines whose message starts with `prefix` (for messages that carry a detail)."""
    return [line for line in list(process.lines) if str(line["message"]).startswith(prefix)]


def wait_for_prefix(process: WatchProcess, prefix: str, timeout: float = 15.0) -> LogLine:
    deadline = time.monotonic() + timeout
    while not (found := logged(process, prefix)):
        if time.monotonic() > deadline or process.process.poll() is not None:
            tail = [(line["message"], line["route"], line["reason"]) for line in process.lines[-15:]]
            raise AssertionError(f"no line starting {prefix!r} within {timeout}s; last lines: {tail}")
        time.sleep(0.02)
    return found[0]


def publish_first(process: WatchProcess, folders: Folders, data: bytes) -> None:
    folders.upload(CREDENTIALS, data)
    process.wait_for("published", route=CREDENTIALS, sha=sha12(data))


# --------------------------------------------------------------------------- crash safety


class Uploader(threading.Thread):
    """Keeps uploading distinct versions, alternately in place (like scp) and renamed into
    place (like rsync). Every version is registered before its first byte is written."""

    def __init__(self, folders: Folders, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.folders = folders
        self.rng = rng
        self.known: set[str] = set()
        self.last = b""
        self.count = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        upload = self.folders.source / CREDENTIALS
        while not self.stopping.is_set():
            self.count += 1
            data = claude_credentials(serial=self.count)
            self.known.add(sha(data))
            if self.count % 2:
                upload.write_bytes(data)
            else:
                temp = self.folders.source / f"..credentials.json.{secrets.token_hex(3)}"
                temp.write_bytes(data)
                temp.rename(upload)
            self.last = data
            time.sleep(self.rng.uniform(0.002, 0.03))


class DestinationReader(threading.Thread):
    """Reads the destination over and over, as the consumer would, and notes anything that is
    not exactly one of the uploaded versions."""

    def __init__(self, destination: Path, known: set[str]) -> None:
        super().__init__(daemon=True)
        self.destination = destination
        self.known = known
        self.reads = 0
        self.violations: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                data = self.destination.read_bytes()
            except FileNotFoundError:
                time.sleep(0.001)
                continue
            self.reads += 1
            if sha(data) not in self.known:
                self.violations.append(f"read {len(data)} bytes that were never uploaded whole")
            time.sleep(0.001)


def check_after_kill(folders: Folders, known: set[str], round_number: int) -> None:
    destination = folders.claude_dir / CREDENTIALS
    if destination.exists():
        data = destination.read_bytes()
        assert sha(data) in known, f"round {round_number}: the destination is not one of the uploaded versions"
        json.loads(data)
        info = destination.stat()
        assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (1001, 1001, 0o600), f"round {round_number}"
    # Written atomically too: never half a file.
    ledger, health = folders.state_dir / "ledger.json", folders.state_dir / HEALTH_FILE
    if ledger.exists():
        json.loads(ledger.read_bytes())
    if health.exists():
        parse_record(health.read_text())
    previous = folders.state_dir / "previous" / CREDENTIALS
    if previous.exists():
        assert sha(previous.read_bytes()) in known, f"round {round_number}: the previous generation is damaged"


@pytest.mark.timeout(420)
def test_sigkill_at_random_moments_never_exposes_a_partial_or_foreign_destination(folders: Folders) -> None:
    seed = secrets.randbits(32)
    rng = random.Random(seed)
    destination = folders.claude_dir / CREDENTIALS
    uploader = Uploader(folders, rng)
    reader = DestinationReader(destination, uploader.known)
    rounds_publishing = interrupted_publishes = 0
    started = time.monotonic()
    uploader.start()
    reader.start()
    try:
        for round_number in range(CRASH_ROUNDS):
            process = WatchProcess(folders, ["--settle-ms=0"])
            if round_number % 2:  # steady publishing: after the first reconcile, whenever that came
                process.ready()
                time.sleep(rng.uniform(0.05, 0.4))
            else:  # imports, start-up reconcile, or the first publications
                time.sleep(rng.uniform(0.0, 0.8))
            code = process.stop(signal.SIGKILL)
            assert code == -signal.SIGKILL, f"seed {seed} round {round_number}: credsync exited {code} on its own"
            rounds_publishing += bool(process.matching("published"))
            interrupted_publishes += len(process.matching("removed a temp file left by an interrupted publish"))
            check_after_kill(folders, uploader.known, round_number)
    finally:
        uploader.stopping.set()
        uploader.join(5)
    last = uploader.last
    final = WatchProcess(folders, ["--settle-ms=0"]).ready()
    try:
        wait_until(lambda: destination.read_bytes() == last, timeout=10)
        outcomes = [line["message"] for line in final.matching("published") + final.matching("unchanged")]
        assert any(line["sha"] == sha12(last) for line in final.lines if line["message"] in ("published", "unchanged"))
    finally:
        reader.stopping.set()
        reader.join(5)
        assert final.stop() == 0
    elapsed = time.monotonic() - started
    print(
        f"seed {seed}: {CRASH_ROUNDS} SIGKILLs in {elapsed:.0f}s, {uploader.count} uploads, {reader.reads} reads;"
        f" {rounds_publishing} rounds published before the kill; {interrupted_publishes} temp files of"
        f" interrupted publishes cleaned at the next start; final outcomes {outcomes};"
        f" {len(temp_files(folders.state_dir))} temp files left in the state folder"
    )
    assert not reader.violations, f"seed {seed}: {reader.violations[:3]}"
    assert rounds_publishing >= CRASH_ROUNDS // 3, "too few kills landed while credsync was publishing"
    assert_published(destination, last)
    assert temp_files(folders.claude_dir, folders.aws_dir) == []
    assert sorted(os.listdir(folders.claude_dir)) == [CREDENTIALS]


def test_temp_files_a_crash_leaves_in_the_state_folder_are_removed_at_start(folders: Folders) -> None:
    """The ledger, the health file and the previous generation are written through the same
    temp-file-and-rename as destinations; a SIGKILL can leave their temp files behind too."""
    (folders.state_dir / "previous").mkdir(parents=True, mode=0o700)
    planted = [
        folders.state_dir / ".credsync.ledger.json.0badf00d.tmp",
        folders.state_dir / ".credsync.health.0badf00d.tmp",
        folders.state_dir / "previous" / ".credsync..credentials.json.0badf00d.tmp",
    ]
    for path in planted:
        path.write_bytes(claude_credentials(serial=7))  # what an interrupted copy of the previous generation holds
    process = WatchProcess(folders).ready()
    try:
        assert temp_files(folders.state_dir) == []
    finally:
        process.stop()


def test_a_crash_before_the_ledger_is_written_never_lets_an_old_upload_revert_a_consumer_refresh(
    folders: Folders,
) -> None:
    """The state a SIGKILL between the rename of a publication and the ledger write leaves:
    the destination holds upload Y, the ledger still names X. After the restart the consumer
    refreshes its tokens in place; credsync must keep the consumer's version."""
    older, newer = claude_credentials(serial=1), claude_credentials(serial=2)
    first = WatchProcess(folders, FAST).ready()
    publish_first(first, folders, older)
    assert first.stop() == 0
    destination = folders.claude_dir / CREDENTIALS
    folders.upload(CREDENTIALS, newer)
    staged = folders.claude_dir / "staged"  # what credsync's rename had put in place before it died
    staged.write_bytes(newer)
    os.chown(staged, 1001, 1001)
    staged.chmod(0o600)
    staged.rename(destination)
    time.sleep(0.1)
    process = WatchProcess(folders, FAST).ready()
    try:
        process.wait_for("unchanged", route=CREDENTIALS, sha=sha12(newer))
        refreshed = claude_credentials(serial=3)  # Claude refreshes: a rename onto its file
        temp = folders.claude_dir / ".credentials.json.tmp-claude"
        temp.write_bytes(refreshed)
        temp.rename(destination)
        process.wait_for("consumer rewrote the published file; credsync keeps its version until the next upload")
        process.process.send_signal(signal.SIGHUP)
        process.wait_for("kept-consumer-change", route=CREDENTIALS, timeout=5)
        assert destination.read_bytes() == refreshed, "credsync reverted the consumer's refresh"
    finally:
        process.stop()


# --------------------------------------------------------------------------- full and read-only disks


def unmount(target: Path) -> None:
    for _ in range(50):
        if subprocess.run(["umount", str(target)], capture_output=True, check=False).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "--lazy", str(target)], check=True)


@contextlib.contextmanager
def tmpfs(target: Path, options: str) -> Iterator[Path]:
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "credsync-test", str(target)], check=True)
    try:
        yield target
    finally:
        unmount(target)


def fill(folder: Path) -> Path:
    """Write a file until the file system is full; returns it."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 1024)
    except OSError as error:
        assert error.errno == errno.ENOSPC, error
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_keeps_the_old_credential_and_publishes_once_space_is_freed(folders: Folders) -> None:
    with tmpfs(folders.claude_dir, "size=32k,uid=1001,gid=1001,mode=0755"):
        process = WatchProcess(folders, FAST).ready()
        try:
            old, new = claude_credentials(serial=1), claude_credentials(serial=2)
            publish_first(process, folders, old)
            destination = folders.claude_dir / CREDENTIALS
            filler = fill(folders.claude_dir)
            folders.upload(CREDENTIALS, new)
            failed = process.wait_for("failed", route=CREDENTIALS, sha=sha12(new))
            assert failed["level"] == "ERROR" and "no space left on the device" in failed["reason"]
            process.wait_for("failed", count=3, route=CREDENTIALS, timeout=20)  # retried on its own, quietly
            assert_published(destination, old)
            assert sorted(os.listdir(folders.claude_dir)) == [CREDENTIALS, "filler"]  # no temp file left
            filler.unlink()
            process.wait_for("published", route=CREDENTIALS, sha=sha12(new), timeout=30)
            assert_published(destination, new)
            assert process.process.poll() is None
        finally:
            process.stop()
    errors = [line for line in process.matching("failed") if line["level"] == "ERROR"]
    assert len(errors) == 1, "the same failure was logged at ERROR more than once"


def test_a_read_only_destination_is_a_clear_error_and_recovers_without_a_restart(folders: Folders) -> None:
    with tmpfs(folders.claude_dir, "size=1m,uid=1001,gid=1001,mode=0755"):
        process = WatchProcess(folders, FAST).ready()
        try:
            old, new = claude_credentials(serial=1), claude_credentials(serial=2)
            publish_first(process, folders, old)
            subprocess.run(["mount", "-o", "remount,ro", str(folders.claude_dir)], check=True)
            folders.upload(CREDENTIALS, new)
            failed = process.wait_for("failed", route=CREDENTIALS, sha=sha12(new))
            assert failed["level"] == "ERROR"
            assert "read-only; mount the destination read-write" in failed["reason"]
            assert_published(folders.claude_dir / CREDENTIALS, old)
            subprocess.run(["mount", "-o", "remount,rw", str(folders.claude_dir)], check=True)
            process.wait_for("published", route=CREDENTIALS, sha=sha12(new), timeout=30)
            assert_published(folders.claude_dir / CREDENTIALS, new)
        finally:
            process.stop()
    assert len([line for line in process.matching("failed") if line["level"] == "ERROR"]) == 1


# --------------------------------------------------------------------------- lost events, replaced folders


@contextlib.contextmanager
def inotify_queue_limit(events: int) -> Iterator[None]:
    """A tiny per-instance queue for inotify instances created meanwhile (global: restored at once)."""
    knob = Path("/proc/sys/fs/inotify/max_queued_events")
    saved = knob.read_text()
    knob.write_text(f"{events}\n")
    try:
        yield
    finally:
        knob.write_text(saved)


def test_an_inotify_overflow_triggers_a_rescan_that_converges(folders: Folders) -> None:
    with inotify_queue_limit(16):
        process = WatchProcess(folders, FAST).ready()  # its inotify queue holds 16 events
    try:
        data = claude_credentials(serial=1)
        for batch in range(3):
            for n in range(400):
                (folders.source / f"flood-{batch}-{n}").write_bytes(b"x")
            if batch == 1:
                folders.upload(CREDENTIALS, data)  # its events may well be among the lost ones
        wait_until(lambda: any("overflow" in line["reason"] for line in process.matching("reconcile")), timeout=15)
        process.wait_for("published", route=CREDENTIALS, sha=sha12(data))
        assert_published(folders.claude_dir / CREDENTIALS, data)
        newer = claude_credentials(serial=2)  # the rebuilt watch still sees uploads
        started = time.monotonic()
        folders.upload(CREDENTIALS, newer)
        process.wait_for("published", route=CREDENTIALS, sha=sha12(newer), timeout=5)
        assert time.monotonic() - started < 2
    finally:
        process.stop()


def upload_is_seen_by_events(process: WatchProcess, folders: Folders, serial: int) -> None:
    """An upload published within 2 s: a live watch, not a timer, picked it up."""
    data = claude_credentials(serial=serial)
    started = time.monotonic()
    folders.upload(CREDENTIALS, data)
    process.wait_for("published", route=CREDENTIALS, sha=sha12(data), timeout=5)
    assert time.monotonic() - started < 2


def test_an_upload_folder_deleted_and_recreated_later_is_watched_again(folders: Folders) -> None:
    process = WatchProcess(folders, FAST).ready()
    try:
        publish_first(process, folders, claude_credentials(serial=1))
        subprocess.run(["rm", "-rf", str(folders.source)], check=True)
        failure = wait_for_prefix(process, "cannot watch the source folder")
        assert failure["level"] == "ERROR" and "retrying every 5s" in failure["message"]
        assert process.process.poll() is None
        folders.source.mkdir()
        second = claude_credentials(serial=2)
        folders.upload(CREDENTIALS, second)
        process.wait_for("published", route=CREDENTIALS, sha=sha12(second), timeout=20)
        assert_published(folders.claude_dir / CREDENTIALS, second)
        upload_is_seen_by_events(process, folders, serial=3)
    finally:
        process.stop()


def test_an_upload_folder_recreated_on_the_same_inode_is_watched_again(folders: Folders) -> None:
    process = WatchProcess(folders, FAST).ready()
    try:
        publish_first(process, folders, claude_credentials(serial=1))
        for attempt in range(1, 41):  # ext4 reuses a freed inode often, not always: others may take it
            old_inode = folders.source.stat().st_ino
            os.kill(process.process.pid, signal.SIGSTOP)  # so the new folder exists before credsync looks
            try:
                subprocess.run(["rm", "-rf", str(folders.source)], check=True)
                folders.source.mkdir()  # ext4 hands out the freed inode again, unless another process took it
            finally:
                os.kill(process.process.pid, signal.SIGCONT)
            process.wait_for("reconcile", count=attempt, reason="the source folder was replaced")
            if folders.source.stat().st_ino == old_inode:
                break
        assert folders.source.stat().st_ino == old_inode, "precondition: the file system never reused the inode"
        upload_is_seen_by_events(process, folders, serial=2)
    finally:
        process.stop()


def test_an_upload_folder_moved_aside_and_recreated_is_watched_again(folders: Folders) -> None:
    process = WatchProcess(folders, FAST).ready()
    try:
        publish_first(process, folders, claude_credentials(serial=1))
        folders.source.rename(folders.source.with_name("uploads.old"))
        folders.source.mkdir()
        second = claude_credentials(serial=2)
        folders.upload(CREDENTIALS, second)
        process.wait_for("published", route=CREDENTIALS, sha=sha12(second), timeout=15)
        upload_is_seen_by_events(process, folders, serial=3)
    finally:
        process.stop()


@contextlib.contextmanager
def bind_mount(source: Path, target: Path) -> Iterator[None]:
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
    try:
        yield
    finally:
        while subprocess.run(["mountpoint", "-q", str(target)], check=False).returncode == 0:
            unmount(target)


def test_a_replaced_bind_mount_of_the_upload_folder_is_watched_again(folders: Folders, tmp_path: Path) -> None:
    first_dir, second_dir = tmp_path / "uploads-a", tmp_path / "uploads-b"
    first_dir.mkdir()
    second_dir.mkdir()
    with bind_mount(first_dir, folders.source):
        process = WatchProcess(folders, FAST).ready()
        try:
            publish_first(process, folders, claude_credentials(serial=1))
            unmount(folders.source)
            subprocess.run(["mount", "--bind", str(second_dir), str(folders.source)], check=True)
            second = claude_credentials(serial=2)
            folders.upload(CREDENTIALS, second)  # lands in second_dir, which no watch covers yet
            process.wait_for("published", route=CREDENTIALS, sha=sha12(second), timeout=15)
            assert_published(folders.claude_dir / CREDENTIALS, second)
            upload_is_seen_by_events(process, folders, serial=3)
        finally:
            process.stop()


# --------------------------------------------------------------------------- Docker faults


def kill_engine() -> None:
    """SIGKILL dockerd (by the PID in its pid file); containers live on (--live-restore)."""
    pid = int(DOCKERD_PIDFILE.read_text())
    os.kill(pid, signal.SIGKILL)

    # Gone, not a zombie: a new dockerd refuses to start while the PID in its pid file exists.
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=30)


def test_an_engine_killed_mid_notification_is_retried_and_publishing_goes_on(
    folders: Folders, consumers: ConsumerFactory, engine: Engine
) -> None:
    consumer = consumers()
    before = consumer.state()
    # A long grace period: the engine dies while credsync is checking that the target survived.
    process = WatchProcess(
        folders, ["--settle-ms=50", "--debounce-ms=100", "--notify-grace-ms=4000", f"--notify-target={consumer.name}"]
    ).ready()
    try:
        first = claude_credentials(serial=1)
        publish_first(process, folders, first)
        wait_until(lambda: consumer.signals() == ["HUP"], timeout=10)
        kill_engine()
        pending = process.wait_for("notification pending", timeout=20)
        second = claude_credentials(serial=2)
        started = time.monotonic()
        folders.upload(CREDENTIALS, second)
        process.wait_for("published", route=CREDENTIALS, sha=sha12(second), timeout=5)
        assert time.monotonic() - started < 2, "publishing waited for Docker"
        assert not process.matching("notified")
        engine.start()
        notified = process.wait_for("notified", timeout=90)
        assert process.process.poll() is None
    finally:
        process.stop()
    assert pending["level"] == "WARNING"
    assert sha12(second) in notified["routes"]  # the pending batch carries the newest publication
    assert consumer.state() == before, "the consumer was restarted"
    assert consumer.signals() in (["HUP"], ["HUP", "HUP"])  # at least once: the interrupted check is redone
    assert not process.matching("notification failed")


@pytest.fixture
def looping_container(docker_client: docker.DockerClient, busybox_image: str) -> Iterator[Container]:
    """A target that exits at once and is restarted by its restart policy, over and over."""
    container = docker_client.containers.run(
        busybox_image,
        ["sh", "-c", "exit 3"],
        name=f"credsync-test-loop-{secrets.token_hex(4)}",
        detach=True,
        network_mode="none",
        restart_policy={"Name": "always"},
    )
    try:
        yield container
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


def test_a_target_in_a_restart_loop_leaves_publishing_alone_and_is_notified_once_stable(
    folders: Folders, consumers: ConsumerFactory, looping_container: Container
) -> None:
    name = str(looping_container.name)

    def restarts() -> int:
        looping_container.reload()
        return int(looping_container.attrs["RestartCount"])

    wait_until(lambda: restarts() >= 2, timeout=20)
    process = WatchProcess(folders, [*FAST_NOTIFY, f"--notify-target={name}"]).ready()
    try:
        for serial in range(1, 4):
            data = claude_credentials(serial=serial)
            started = time.monotonic()
            folders.upload(CREDENTIALS, data)
            process.wait_for("published", route=CREDENTIALS, sha=sha12(data), timeout=5)
            assert time.monotonic() - started < 2, "publishing waited for the notification"
            time.sleep(1)
        waiting = f"no running container for {name}"  # (or a transient error if caught mid-restart)
        wait_until(lambda: any(line["reason"] == waiting for line in process.matching("notification pending")))
        assert not process.matching("notified")
        attempts = len([line for line in process.matching("notification pending") if line["level"] == "DEBUG"])
        assert attempts <= 6, f"{attempts} attempts in about 4 s: no backoff"
        looping_container.remove(force=True)
        stable = consumers(name=name)  # the operator fixes the webhook: same name, now it stays up
        if process.matching("notification failed"):  # caught running for an instant, then it died: not pending
            folders.upload(CREDENTIALS, claude_credentials(serial=9))
        notified = process.wait_for("notified", timeout=60)
        assert process.process.poll() is None
    finally:
        process.stop()
    assert notified["target"] == name and notified["container"] == str(stable.container.id)[:12]
    assert stable.signals() == ["HUP"]
    assert len(process.matching("notified")) == 1


def refusing_socket(path: Path, how: str) -> None:
    if how == "missing":
        return
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))  # bound, never listening: connections are refused
    server.close()
    if how == "denied":
        path.chmod(0o000)


WITHOUT_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


@pytest.mark.parametrize("how", ["denied", "refused", "missing"])
def test_a_docker_socket_that_refuses_keeps_the_notification_pending_until_it_answers(
    folders: Folders, consumers: ConsumerFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, how: str
) -> None:
    """`denied`: a mode 000 socket, and credsync runs as root without CAP_DAC_OVERRIDE (as root
    with it, permissions would not apply). `refused`: nobody listens. `missing`: no such file.
    The fix: the path becomes a link to the real socket, and the pending notification goes out."""
    consumer = consumers()
    os.chown(folders.claude_dir, 0, 0)  # without CAP_DAC_OVERRIDE credsync writes and reads back only its own
    docker_host = tmp_path / "docker.sock"
    refusing_socket(docker_host, how)
    original = helpers.credsync_command
    monkeypatch.setattr(helpers, "credsync_command", lambda *args: [*WITHOUT_DAC, *original(*args)])
    options = [*FAST_NOTIFY, "--owner=0:0", f"--notify-target={consumer.name}", f"--docker-host=unix://{docker_host}"]
    process = WatchProcess(folders, options).ready()
    try:
        first = claude_credentials(serial=1)
        publish_first(process, folders, first)
        pending = process.wait_for("notification pending")
        second = claude_credentials(serial=2)
        started = time.monotonic()
        folders.upload(CREDENTIALS, second)
        process.wait_for("published", route=CREDENTIALS, sha=sha12(second), timeout=5)
        assert time.monotonic() - started < 2
        assert_published(folders.claude_dir / CREDENTIALS, second, owner=(0, 0))
        assert consumer.signals() == []
        link = tmp_path / "docker.sock.new"
        link.symlink_to(DOCKER_SOCKET)
        link.replace(docker_host)
        notified = process.wait_for("notified", timeout=60)
        assert process.process.poll() is None
    finally:
        process.stop()
    expected = {"denied": "Permission denied", "refused": "Connection refused", "missing": "No such file"}[how]
    assert expected in pending["reason"] and pending["level"] == "WARNING"
    said = [line for line in process.matching("notification pending") if expected in str(line["reason"])]
    assert [line["level"] for line in said] == ["WARNING"], "said once, not at every retry"
    assert sha12(second) in notified["routes"]
    assert consumer.signals() == ["HUP"]
