"""Notification through a real Docker Engine, with real containers."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import docker
import pytest

from credsync.notify.proc_readers import ExecProc
from credsync.notify.procstatus import receiver_verdict
from credsync.notify.target_cache import TargetCache
from credsync.notify.targets import TargetSpec
from tests.docker_env import ConsumerFactory, Engine
from tests.helpers import (
    CANARY,
    Folders,
    WatchProcess,
    assert_no_canary,
    claude_credentials,
    run_cli,
    sha12,
    wait_until,
)

pytestmark = pytest.mark.system  # root, a real Docker Engine or sshd: see conftest.py

FAST_NOTIFY = ["--settle-ms=50", "--debounce-ms=200", "--notify-grace-ms=300"]


def watching(folders: Folders, *args: str) -> WatchProcess:
    return WatchProcess(folders, [*FAST_NOTIFY, *args]).ready()


def test_one_hup_per_batch_including_a_burst_of_20(folders: Folders, consumers: ConsumerFactory) -> None:
    consumer = consumers()
    before = consumer.state()
    process = watching(folders, f"--notify-target={consumer.name}")
    try:
        first = claude_credentials(serial=0)
        folders.upload(".credentials.json", first)
        process.wait_for("notified", routes=f".credentials.json@{sha12(first)}")
        assert consumer.signals() == ["HUP"]
        burst = [claude_credentials(serial=n) for n in range(1, 21)]
        for data in burst:
            folders.upload(".credentials.json", data)
        process.wait_for("notified", routes=f".credentials.json@{sha12(burst[-1])}")
        folders.upload(".credentials.json", burst[-1])  # the same bytes again: no notification
        process.wait_for("unchanged", sha=sha12(burst[-1]))
    finally:
        process.stop()
    assert len(process.matching("notified")) == 2
    assert consumer.signals() == ["HUP", "HUP"]
    assert consumer.state() == before


def test_on_the_host_the_signal_goes_straight_to_the_process_not_through_the_engine(
    folders: Folders, consumers: ConsumerFactory, docker_client: docker.DockerClient
) -> None:
    consumer = consumers()
    since = int(time.time())
    process = watching(folders, f"--notify-target={consumer.name}")
    try:
        data = claude_credentials(serial=7)
        folders.upload(".credentials.json", data)
        process.wait_for("notified", routes=f".credentials.json@{sha12(data)}")
    finally:
        process.stop()
    until = int(time.time()) + 1
    kills = docker_client.events(
        since=since, until=until, filters={"container": consumer.container.id, "event": "kill"}, decode=True
    )
    assert consumer.signals() == ["HUP"]
    assert list(kills) == [], "the signal went through the Engine (docker kill), not a pidfd"
    assert not process.matching("signalling through the Docker Engine")


def test_a_second_notification_does_not_wait_for_the_first_ones_survival_check(
    folders: Folders, consumers: ConsumerFactory
) -> None:
    consumer = consumers()
    before = consumer.state()
    grace = ["--settle-ms=0", "--debounce-ms=0", "--notify-grace-ms=10000"]  # far longer than a round trip
    process = WatchProcess(folders, [*grace, f"--notify-target={consumer.name}"]).ready()
    try:
        first, second = claude_credentials(serial=1), claude_credentials(serial=2)
        folders.upload(".credentials.json", first)
        wait_until(lambda: consumer.signals() == ["HUP"], timeout=10)
        folders.upload(".credentials.json", second)
        wait_until(lambda: consumer.signals() == ["HUP", "HUP"], timeout=10)
        assert not process.matching("notified"), "the second signal waited for the first one's 10 s check"
        process.wait_for("notified", routes=f".credentials.json@{sha12(first)}", timeout=20)
        process.wait_for("notified", routes=f".credentials.json@{sha12(second)}", timeout=20)
    finally:
        process.stop()
    assert consumer.state() == before


# PID 1 catches HUP in its first life only: /tmp, in the container's own layer, outlives a restart.
TRAP_FIRST_LIFE = (
    'if [ ! -e /tmp/lived ]; then touch /tmp/lived; trap "echo HUP >> /sig/signals" HUP; fi; '
    "while true; do sleep 1; done"
)


def test_a_kept_verdict_is_dropped_when_the_target_restarts_without_its_handler(
    consumers: ConsumerFactory, docker_client: docker.DockerClient
) -> None:
    """The sidecar's path: the verdict read by `docker exec` is kept, and the Engine's events
    drop it when the target restarts. (On the host /proc is read afresh every time.)"""
    consumer = consumers(TRAP_FIRST_LIFE)
    wait_until(lambda: receiver_verdict(ExecProc(consumer.container), "SIGHUP").catches)
    subscribed = threading.Event()
    spec = TargetSpec(container=consumer.name)
    cache = TargetCache(
        lambda: docker_client,
        spec,
        lambda _: None,
        "SIGHUP",
        subscribed.set,
        reader=lambda container, **_: ExecProc(container),
        startup_s=0,
    )
    cache.start()
    try:
        wait_until(subscribed.is_set)
        [kept] = cache.targets()
        assert kept.verdict is not None and kept.verdict.catches
        assert cache.targets()[0] is kept and cache.warm  # known: no second look at the Engine
        consumer.container.restart(timeout=1)
        wait_until(lambda: [t.before.started_at for t in cache.targets()] not in ([], [kept.before.started_at]))
        [fresh] = cache.targets()
        assert fresh.verdict is None and not cache.verdict(fresh).catches
    finally:
        cache.stop()


@pytest.mark.parametrize("init", [False, True], ids=["node-as-pid-1", "behind-init"])
def test_a_consumer_without_a_handler_is_never_signalled(
    folders: Folders, consumers: ConsumerFactory, init: bool
) -> None:
    consumer = consumers("sleep 100000", init=init)
    before = consumer.state()
    process = watching(folders, f"--notify-target={consumer.name}")
    try:
        folders.upload(".credentials.json", claude_credentials(serial=1))
        process.wait_for("published", route=".credentials.json")
        why = process.wait_for("published without notifying", target=consumer.name)
        receiver, fate = ("sleep (child of docker-init)", "kill") if init else ("sleep (PID 1)", "be ignored")
        assert why["reason"].startswith(f"{receiver} has no SIGHUP handler") and fate in why["reason"]
        assert "CREDSYNC_NOTIFY=exec" in why["fix"]
        folders.upload(".credentials.json", claude_credentials(serial=2))
        process.wait_for("published", count=2, route=".credentials.json")
    finally:
        process.stop()
    assert consumer.state() == before and before[0] == "running"
    assert not process.matching("notified")
    assert len(process.matching("published without notifying")) == 1  # said once, not per upload


def test_signal_mode_refuses_loudly_and_sync_exits_4(folders: Folders, consumers: ConsumerFactory) -> None:
    consumer = consumers("sleep 100000", init=True)
    folders.upload(".credentials.json", claude_credentials())
    result = run_cli("sync", *folders.args(), "--notify=signal", f"--notify-target={consumer.name}")
    assert result.returncode == 4
    assert "ERROR   SIGHUP not sent" in result.stderr and "kill the process" in result.stderr
    assert consumer.state()[0] == "running"


def test_a_recreated_target_is_found_by_its_new_id(folders: Folders, consumers: ConsumerFactory) -> None:
    old = consumers(name="credsync-test-recreated")
    process = watching(folders, "--notify-target=credsync-test-recreated")
    try:
        folders.upload(".credentials.json", claude_credentials(serial=1))
        first = process.wait_for("notified")
        assert first["container"] == str(old.container.id)[:12]
        old.container.remove(force=True)
        new = consumers(name="credsync-test-recreated")
        folders.upload(".credentials.json", claude_credentials(serial=2))
        second = process.wait_for("notified", count=2)
    finally:
        process.stop()
    assert second["container"] == str(new.container.id)[:12]
    assert new.signals() == ["HUP"]


def test_compose_service_targets_reach_every_running_replica(folders: Folders, consumers: ConsumerFactory) -> None:
    labels = {"com.docker.compose.project": "credsynctest", "com.docker.compose.service": "webhook"}
    replicas = [consumers(labels=labels), consumers(labels=labels)]
    oneoff = consumers(labels={**labels, "com.docker.compose.oneoff": "True"})
    process = watching(folders, "--notify-target=credsynctest/webhook")
    try:
        folders.upload(".credentials.json", claude_credentials())
        process.wait_for("notified", count=2)
    finally:
        process.stop()
    assert [replica.signals() for replica in replicas] == [["HUP"], ["HUP"]]
    assert oneoff.signals() == []


def test_a_notification_survives_the_engine_being_stopped(
    folders: Folders, consumers: ConsumerFactory, engine: Engine
) -> None:
    consumer = consumers()
    process = watching(folders, f"--notify-target={consumer.name}")
    try:
        engine.stop()
        data = claude_credentials()
        folders.upload(".credentials.json", data)
        process.wait_for("published", route=".credentials.json")  # publishing does not wait for Docker
        assert (folders.claude_dir / ".credentials.json").read_bytes() == data
        pending = process.wait_for("notification pending")
        assert consumer.signals() == []
        engine.start()
        process.wait_for("notified", timeout=60)
    finally:
        process.stop()
    assert "Error" in pending["reason"]
    assert consumer.signals() == ["HUP"]
    assert len(process.matching("notified")) == 1


def test_exec_mode_runs_the_command_inside_the_target(folders: Folders, consumers: ConsumerFactory) -> None:
    consumer = consumers("sleep 100000")
    command = "sh -c 'echo EXEC >> /sig/signals'"
    process = watching(folders, "--notify=exec", f"--notify-target={consumer.name}", f"--notify-exec={command}")
    try:
        folders.upload(".credentials.json", claude_credentials())
        process.wait_for("notified")
        assert consumer.signals() == ["EXEC"]
    finally:
        process.stop()
    failed = watching(folders, "--notify=exec", f"--notify-target={consumer.name}", "--notify-exec=false")
    try:
        folders.upload(".credentials.json", claude_credentials(serial=5))
        line = failed.wait_for("notification failed")
        assert "exited 1" in line["reason"]
    finally:
        failed.stop()


def test_an_exec_command_that_hangs_is_given_up_on_at_credsyncs_own_deadline(
    folders: Folders, consumers: ConsumerFactory
) -> None:
    """No `timeout` program is run inside the consumer: credsync keeps the time limit itself."""
    consumer = consumers("sleep 100000")
    hang = "sh -c 'echo STARTED >> /sig/signals; sleep 30'"
    process = watching(
        folders, "--notify=exec", f"--notify-target={consumer.name}", f"--notify-exec={hang}", "--notify-timeout-s=1"
    )
    try:
        started = time.monotonic()
        folders.upload(".credentials.json", claude_credentials(serial=6))
        line = process.wait_for("notification failed", timeout=20)
        assert "still running after 1s (CREDSYNC_NOTIFY_TIMEOUT_S)" in line["reason"]
        assert time.monotonic() - started < 10 and consumer.signals() == ["STARTED"]
        assert process.process.poll() is None
    finally:
        process.stop()


class Recorder(BaseHTTPRequestHandler):
    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        Recorder.bodies.append(self.rfile.read(length))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_receiver() -> Iterator[HTTPServer]:
    Recorder.bodies = []
    server = HTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    thread.join(5)


def test_http_mode_posts_changed_routes_with_hash_prefixes(
    folders: Folders, consumers: ConsumerFactory, http_receiver: HTTPServer
) -> None:
    consumer = consumers()
    port = http_receiver.server_address[1]
    url = f"http://127.0.0.1:{port}/credsync?token=not-for-logs"
    process = watching(
        folders,
        "--notify=http",
        f"--notify-url={url}",
        f"--notify-target={consumer.name}",
        "--config-routes=settings.json",  # a second route, turned on, with an allow-listed file
    )
    data, preferences = claude_credentials(), b'{"model": "claude-sonnet-4-5"}'
    try:
        folders.upload(".credentials.json", data)
        folders.upload("settings.json", preferences)
        line = process.wait_for("notified")
        # One batch or two, depending on when the debounce window closed: wait for both.
        wait_until(lambda: b'"settings.json"' in b"".join(Recorder.bodies), timeout=10)
    finally:
        process.stop()
    assert "token" not in line["url"]
    bodies = [json.loads(body) for body in Recorder.bodies]
    routes = {entry["route"]: entry["sha256_prefix"] for body in bodies for entry in body["routes"]}
    assert routes == {".credentials.json": sha12(data), "settings.json": sha12(preferences)}
    assert_no_canary(b"".join(Recorder.bodies).decode(), "the HTTP notification body")
    assert CANARY not in json.dumps(bodies)
    assert consumer.signals() == []  # http mode sends no signal
