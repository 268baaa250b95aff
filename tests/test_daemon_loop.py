"""The daemon's loop in-process and unprivileged: a watcher the test drives, a clock it moves,
the real pipeline publishing on tmp_path (owned by whoever runs the tests). Every wait here
awaits an outcome the loop reports; the clock, not the wall, decides when an upload is due."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from loguru import logger

if TYPE_CHECKING:
    from loguru import Message

from credsync.backoff import CAP_S as RETRY_CAP_S
from credsync.daemon import RESCAN_MIN_INTERVAL_S, WRITE_BACKSTOP_S, Daemon
from credsync.health_probe import HEALTH_FILE, Unhealthy, check_health
from credsync.intake import SWARM_SECRET_CAP
from credsync.ledger import Ledger
from credsync.liveness import Liveness, SystemdEnvironment
from credsync.pipeline import Pipeline
from credsync.receipts import receipt_name
from credsync.routes import load_routes
from credsync.settings import Settings, load_settings
from credsync.tally import Tally
from credsync.watcher import Callbacks
from tests.helpers import FakeClock, aws_credentials, claude_credentials, own_settings, sha12, wait_until

CREDENTIALS = ".credentials.json"
OUTCOME_TIMEOUT_S = 10.0


class FakeWatcher:
    """Reports what the test tells it to; healthy until told otherwise."""

    def __init__(self, callbacks: Callbacks) -> None:
        self.callbacks = callbacks
        self.starts = 0
        self.watching = False
        self.looks = 0  # the loop looks once per wake-up, at the end of a pass: a count of passes

    def start(self) -> None:
        self.starts += 1
        self.watching = True

    def stop(self) -> None:
        self.watching = False

    def healthy(self) -> bool:
        self.looks += 1
        return self.watching

    def fileno(self) -> int | None:
        return None  # it reports from the test's thread, which wakes the loop itself

    def dispatch(self) -> None:
        raise AssertionError("the loop dispatched a watcher that has no descriptor")


@dataclass
class Loop:
    settings: Settings
    daemon: Daemon
    clock: FakeClock
    published: queue.Queue[tuple[str, str]] = field(default_factory=queue.Queue)
    said: queue.Queue[str] = field(default_factory=queue.Queue)

    @property
    def watcher(self) -> FakeWatcher:
        assert isinstance(self.daemon.watcher, FakeWatcher)
        return self.daemon.watcher

    def upload(self, name: str, data: bytes) -> None:
        (self.settings.source / name).write_bytes(data)

    def advance(self, seconds: float) -> None:
        """Move the clock and wait until the loop has made a whole pass after the move. A pass
        takes what is due, then looks at the watcher: the look that ends a pass under way may
        come after the move, so the pass woken after that look is the one known to start
        after it."""
        self.clock.now += seconds
        for _ in range(2):
            self.pass_done()

    def pass_done(self) -> None:
        looks = self.watcher.looks
        self.daemon.wakeup.poke()
        wait_until(lambda: self.watcher.looks > looks, timeout=OUTCOME_TIMEOUT_S)

    def next_publication(self) -> tuple[str, str]:
        return self.published.get(timeout=OUTCOME_TIMEOUT_S)

    def next_said(self, message: str) -> None:
        while self.said.get(timeout=OUTCOME_TIMEOUT_S) != message:
            pass


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Loop]:
    # Settle 0: the intake's own settle check compares the upload's ctime with the wall clock,
    # which a fake clock cannot move; the loop's timing is shown by the write backstop instead.
    with running(own_settings(tmp_path)) as running_loop:
        yield running_loop


@contextlib.contextmanager
def running(settings: Settings) -> Iterator[Loop]:
    """The daemon's loop on its own thread, ready (first reconcile done), stopped after."""
    tally = Tally()
    pipeline = Pipeline(settings, load_routes(settings), Ledger(settings.state_dir), tally=tally)
    clock = FakeClock()
    liveness = Liveness(settings.state_dir, SystemdEnvironment(), tally)
    daemon = Daemon(pipeline, None, liveness, watcher=FakeWatcher, clock=clock)
    running = Loop(settings, daemon, clock)
    pipeline.on_published = lambda route, sha256: running.published.put((route, sha256))
    sink = logger.add(lambda message: running.said.put(message.record["message"]), level="DEBUG")
    thread = threading.Thread(target=daemon.serve, name="daemon-under-test")
    thread.start()
    try:
        wait_until(lambda: is_healthy(settings.state_dir), timeout=OUTCOME_TIMEOUT_S)
        yield running
    finally:
        daemon.stop()
        thread.join(OUTCOME_TIMEOUT_S)
        logger.remove(sink)
    assert not thread.is_alive(), "the loop did not stop"


def is_healthy(state_dir: Path) -> bool:
    try:
        return check_health(str(state_dir)).startswith("healthy")
    except Unhealthy:
        return False


def test_a_closed_upload_is_published(loop: Loop) -> None:
    data = claude_credentials(serial=1)
    loop.upload(CREDENTIALS, data)
    loop.watcher.callbacks.ready(CREDENTIALS)
    route, _ = loop.next_publication()
    destination = loop.settings.claude_dir / CREDENTIALS
    assert route == CREDENTIALS and destination.read_bytes() == data
    assert stat.S_IMODE(destination.stat().st_mode) == 0o600


def test_a_write_that_never_closes_is_read_by_the_backstop(loop: Loop) -> None:
    """Hard links and held-open files give no close: the write itself arms a later read."""
    data = claude_credentials(serial=2)
    loop.upload(CREDENTIALS, data)
    loop.watcher.callbacks.writing(CREDENTIALS)
    loop.advance(WRITE_BACKSTOP_S / 2)
    assert loop.published.empty(), "read before the backstop was due on the clock"
    loop.advance(WRITE_BACKSTOP_S / 2)
    assert loop.next_publication()[0] == CREDENTIALS
    assert (loop.settings.claude_dir / CREDENTIALS).read_bytes() == data


def test_a_closed_broken_upload_is_rejected_at_once_not_left_incomplete(loop: Loop) -> None:
    loop.upload(CREDENTIALS, b'{"claudeAiOauth": {"accessToken": ')
    loop.watcher.callbacks.ready(CREDENTIALS)
    loop.next_said("rejected")
    assert not (loop.settings.claude_dir / CREDENTIALS).exists()


def test_a_lost_watch_is_restarted_and_the_rescan_publishes_what_came_meanwhile(loop: Loop) -> None:
    data = claude_credentials(serial=3)
    loop.watcher.watching = False  # the folder was swapped: nothing was reported for this upload
    loop.upload(CREDENTIALS, data)
    loop.watcher.callbacks.lost("the source folder was replaced")
    assert loop.next_publication()[0] == CREDENTIALS
    assert loop.watcher.starts == 2 and loop.watcher.watching
    assert (loop.settings.claude_dir / CREDENTIALS).read_bytes() == data


def test_a_second_upload_to_the_same_route_replaces_the_first_and_keeps_it_private(loop: Loop) -> None:
    first, second = claude_credentials(serial=4), claude_credentials(serial=5)
    for data in (first, second):
        loop.upload(CREDENTIALS, data)
        loop.watcher.callbacks.ready(CREDENTIALS)
        loop.next_said("published")  # said after the replaced version is kept, unlike the hook
    assert (loop.settings.claude_dir / CREDENTIALS).read_bytes() == second
    kept = loop.settings.state_dir / "previous" / CREDENTIALS
    assert json.loads(kept.read_bytes()) == json.loads(first)
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600


def unhealthy_reason(state_dir: Path) -> str:
    try:
        return check_health(str(state_dir))
    except Unhealthy as reason:
        return str(reason)


def test_a_failed_publish_makes_the_daemon_unhealthy_until_its_retry_succeeds(loop: Loop) -> None:
    """A Swarm roll counts a delivery task as updated once healthy: healthy must mean in place."""
    claude = loop.settings.claude_dir
    away = claude.rename(claude.with_name("claude-away"))  # the destination's folder gone: publish fails
    data = claude_credentials(serial=6)
    loop.upload(CREDENTIALS, data)
    loop.watcher.callbacks.ready(CREDENTIALS)
    loop.next_said("failed")
    loop.pass_done()
    assert "1 upload(s) could not be published" in unhealthy_reason(loop.settings.state_dir)
    away.rename(claude)
    loop.advance(RETRY_CAP_S * 2)  # past any retry delay
    assert loop.next_publication()[0] == CREDENTIALS
    loop.pass_done()
    assert is_healthy(loop.settings.state_dir), unhealthy_reason(loop.settings.state_dir)
    assert (claude / CREDENTIALS).read_bytes() == data


def test_a_failed_upload_that_is_removed_leaves_the_daemon_healthy(loop: Loop) -> None:
    claude = loop.settings.claude_dir
    away = claude.rename(claude.with_name("claude-away"))
    loop.upload(CREDENTIALS, claude_credentials(serial=7))
    loop.watcher.callbacks.ready(CREDENTIALS)
    loop.next_said("failed")
    loop.pass_done()
    assert not is_healthy(loop.settings.state_dir)
    (loop.settings.source / CREDENTIALS).unlink()  # the operator took it back: nothing waits
    loop.advance(RETRY_CAP_S * 2)
    loop.pass_done()
    assert is_healthy(loop.settings.state_dir), unhealthy_reason(loop.settings.state_dir)
    assert not (away / CREDENTIALS).exists()


def test_a_health_record_left_by_a_killed_predecessor_is_not_read_as_this_daemons(tmp_path: Path) -> None:
    """In a container every daemon is pid 1: a dead one's record would pass the pid check."""
    record = tmp_path / HEALTH_FILE
    record.write_text(f"pid={os.getpid()} ready=1 watching=1 failing=0 heartbeat_ms=9 interval_s=30\n")
    Liveness(tmp_path, SystemdEnvironment(), Tally())
    assert not record.exists()


def test_rescans_asked_for_again_and_again_are_done_once_a_second_and_hold_back_no_upload(loop: Loop) -> None:
    """A folder renamed in a loop asks for a rescan at every event: the first is done at once,
    those that follow within a second of the clock wait for its end and are done as one."""
    reasons: queue.Queue[str] = queue.Queue()

    def rescanned(message: Message) -> None:
        if message.record["message"] == "reconcile":
            reasons.put(str(message.record["extra"]["reason"]))

    sink = logger.add(rescanned, level="DEBUG")
    try:
        loop.watcher.callbacks.lost("first")
        assert reasons.get(timeout=OUTCOME_TIMEOUT_S) == "first"
        loop.pass_done()  # that rescan is over
        for reason in ("second", "third", "fourth"):
            loop.watcher.callbacks.lost(reason)
        # Two uploads, one after the other: the pass that took the first has ended once the
        # second is published, and a rescan not held back would have been done in it.
        for serial in (8, 9):
            data = claude_credentials(serial=serial)
            loop.upload(CREDENTIALS, data)
            loop.watcher.callbacks.ready(CREDENTIALS)
            assert loop.next_publication()[0] == CREDENTIALS, "an upload waits for no rescan"
        assert reasons.empty(), "a rescan was done before a second of the clock had passed"
        loop.advance(RESCAN_MIN_INTERVAL_S)
        assert reasons.get(timeout=OUTCOME_TIMEOUT_S) == "second"
        loop.advance(RESCAN_MIN_INTERVAL_S)
        assert reasons.empty(), "the requests that came together were done apart"
    finally:
        logger.remove(sink)
    assert (loop.settings.claude_dir / CREDENTIALS).read_bytes() == data


def padded(data: bytes, size: int) -> bytes:
    """Valid JSON of exactly `size` bytes: the credential, then white space."""
    return data + b" " * (size - len(data))


def swarm_settings(root: Path) -> Settings:
    """As on a Swarm manager's intake (CREDSYNC_SWARM_SERVICE), with an AWS route and receipts."""
    for folder in ("uploads", "uploads/aws", "claude", "aws", "receipts"):
        (root / folder).mkdir(mode=0o700)
    owner = f"{os.getuid()}:{os.getgid()}"
    return load_settings(
        {
            "source": root / "uploads",
            "claude_dir": root / "claude",
            "aws_dir": root / "aws",
            "state_dir": root / "state",
            "receipts_dir": root / "receipts",
            "owner": owner,
            "aws_owner": owner,
            "settle_ms": 0,
            "swarm_service": "deliver",
        }
    )


def receipt(settings: Settings, route: str, outcome: str) -> dict[str, str]:
    """The route's receipt once it says `outcome` (written just after the decision's line)."""
    assert settings.receipts_dir is not None
    path = settings.receipts_dir / receipt_name(route)

    def written() -> bool:
        return path.exists() and json.loads(path.read_bytes())["outcome"] == outcome

    wait_until(written, timeout=OUTCOME_TIMEOUT_S)
    said: dict[str, str] = json.loads(path.read_bytes())
    return said


def test_on_a_swarm_manager_a_file_swarmkit_would_refuse_is_rejected_at_the_intake_and_holds_back_no_route(
    tmp_path: Path,
) -> None:
    """SwarmKit refuses a secret of 500 KiB or more: such an upload is rejected with that reason
    (and its receipt says so), never staged; another route's upload is published meanwhile."""
    with running(swarm_settings(tmp_path)) as loop:
        too_large = padded(claude_credentials(serial=9), 500 * 1024)
        aws = aws_credentials()
        loop.upload(CREDENTIALS, too_large)
        loop.upload("aws/credentials", aws)
        loop.watcher.callbacks.ready(CREDENTIALS)
        loop.watcher.callbacks.ready("aws/credentials")
        assert loop.next_publication()[0] == "aws/credentials"
        refused = receipt(loop.settings, CREDENTIALS, "rejected")
        assert refused["reason_code"] == "too-large"
        assert "SwarmKit" in refused["reason"] and f"{len(too_large)} bytes" in refused["reason"]
        assert str(SWARM_SECRET_CAP.max_bytes) in refused["reason"]
        assert not (loop.settings.claude_dir / CREDENTIALS).exists(), "staged, so it would be rolled out"
        assert receipt(loop.settings, "aws/credentials", "published")["upload_sha256_prefix"] == sha12(aws)
        largest = padded(claude_credentials(serial=10), 500 * 1024 - 1)
        loop.upload(CREDENTIALS, largest)
        loop.watcher.callbacks.ready(CREDENTIALS)
        assert loop.next_publication()[0] == CREDENTIALS
        assert (loop.settings.claude_dir / CREDENTIALS).read_bytes() == largest
        assert receipt(loop.settings, CREDENTIALS, "published")["upload_sha256_prefix"] == sha12(largest)


def test_off_a_swarm_manager_only_max_bytes_caps_an_upload(loop: Loop) -> None:
    data = padded(claude_credentials(serial=11), 500 * 1024)
    loop.upload(CREDENTIALS, data)
    loop.watcher.callbacks.ready(CREDENTIALS)
    assert loop.next_publication()[0] == CREDENTIALS
    assert (loop.settings.claude_dir / CREDENTIALS).read_bytes() == data
