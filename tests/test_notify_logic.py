"""Pure notification logic: debounce and backoff, /proc status parsing, target syntax, which
Engine events concern the target, the health probe."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from credsync.backoff import CAP_S
from credsync.container_env import own_container_id
from credsync.errors import ConfigError
from credsync.health_probe import HEALTH_FILE, Unhealthy, check_health, format_record
from credsync.notify.notifier import describe_batch, redact_url
from credsync.notify.pending import Pending
from credsync.notify.procstatus import ProcReadError, parse_pid, parse_status, receiver_verdict
from credsync.notify.target_cache import STARTUP_S, concerns, settled
from credsync.notify.targets import TargetSpec, parse_target
from credsync.settings import load_settings
from tests.helpers import FakeClock


def test_a_burst_is_one_batch_sent_after_the_quiet_time() -> None:
    clock = FakeClock()
    pending = Pending(0.5, 5.0, clock)
    assert pending.due_at() is None
    for n in range(20):
        pending.add(".credentials.json", f"sha{n}")
        clock.now += 0.1
    pending.add("settings.json", "s")
    assert pending.due_at() == pytest.approx(clock.now + 0.5)
    assert pending.take() == {".credentials.json": "sha19", "settings.json": "s"}
    assert pending.due_at() is None


def test_a_never_ending_burst_is_sent_after_the_maximum_wait() -> None:
    clock = FakeClock()
    pending = Pending(0.5, 2.0, clock)
    start = clock.now
    for _ in range(100):
        pending.add("a", "x")
        clock.now += 0.2
    assert pending.due_at() == pytest.approx(start + 2.0)


def test_failures_back_off_and_newer_changes_win() -> None:
    clock = FakeClock()
    pending = Pending(0.0, 0.0, clock, rng=lambda: 0.5)  # the middle of the jitter: the plain delays
    pending.add("a", "old")
    batch = pending.take()
    pending.add("a", "new")
    delays = [pending.failed(batch)]
    assert pending.changes == {"a": "new"} and pending.due_at() == pytest.approx(clock.now + 1.0)
    delays += [pending.failed({}) for _ in range(8)]
    assert delays[:3] == [1.0, 2.0, 4.0] and delays[-1] == CAP_S
    pending.delivered()
    assert pending.due_at() == pytest.approx(clock.now)


STATUS = "Name:\t{name}\nPid:\t{pid}\nSigIgn:\t0000000000000000\nSigCgt:\t{caught}\n"


@dataclass
class FakeProc:
    processes: dict[int, tuple[str, str]]  # pid → (name, SigCgt)
    children: dict[int, list[int]] = field(default_factory=dict)
    root_pid: int = 1

    def read(self, pid: int, name: str) -> str:
        if name == "status":
            process, caught = self.processes[pid]
            return STATUS.format(name=process, pid=pid, caught=caught)
        return " ".join(str(child) for child in self.children.get(pid, []))


def test_a_pid_1_that_traps_hup_catches_it() -> None:
    verdict = receiver_verdict(FakeProc({1: ("sh", "0000000000010003")}), "SIGHUP")
    assert verdict.catches and verdict.explanation == "sh (PID 1) handles SIGHUP"


def test_node_as_pid_1_without_handler_would_ignore_it() -> None:
    verdict = receiver_verdict(FakeProc({1: ("node", "0000000000004002")}), "SIGHUP")
    assert not verdict.catches and "would be ignored" in verdict.explanation


def test_behind_an_init_the_child_decides() -> None:
    proc = FakeProc({1: ("docker-init", "0"), 7: ("node", "0000000000004002")}, {1: [7]})
    verdict = receiver_verdict(proc, "SIGHUP")
    assert not verdict.catches and verdict.explanation.startswith("node (child of docker-init) has no SIGHUP handler")
    assert "kill the process" in verdict.explanation
    assert receiver_verdict(proc, "SIGWINCH").explanation.endswith("so it would be ignored")
    caught = FakeProc({1: ("tini", "0"), 7: ("node", "0000000000000001")}, {1: [7]})
    assert receiver_verdict(caught, "SIGHUP").catches


def test_an_init_with_no_single_child_is_not_a_receiver() -> None:
    verdict = receiver_verdict(FakeProc({1: ("tini", "0")}, {1: []}), "SIGUSR1")
    assert not verdict.catches and "0 children" in verdict.explanation


def test_parse_status_reads_the_masks() -> None:
    status = parse_status(STATUS.format(name="node", pid=1, caught="0000000000000202"))
    assert status.catches(2) and status.catches(10) and not status.catches(1)


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("claude-hub-webhook-1", TargetSpec(container="claude-hub-webhook-1")),
        ("service:webhook", TargetSpec(service="webhook")),
        ("myapp/webhook", TargetSpec(project="myapp", service="webhook")),
    ],
)
def test_target_syntax(text: str, spec: TargetSpec) -> None:
    assert parse_target(text) == spec


@pytest.mark.parametrize("text", ["service:", "/webhook", "app/", " "])
def test_bad_targets_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_target(text)


def test_own_container_id_comes_from_the_hostname_mount() -> None:
    container_id = "ab" * 32
    mountinfo = (
        "1 0 0:1 / / rw - overlay overlay rw\n"
        f"2 1 8:1 /var/lib/docker/containers/{container_id}/hostname /etc/hostname rw - ext4 /dev/sda1 rw\n"
    )
    assert own_container_id(mountinfo) == container_id
    assert own_container_id("1 0 0:1 / / rw - ext4 /dev/sda1 rw\n") is None


def test_urls_and_batches_are_logged_without_secrets() -> None:
    assert redact_url("https://user:pw@hub.example:8443/hook?token=t") == "https://hub.example:8443/hook"
    assert describe_batch({"b": "2" * 64, "a": "1" * 64}) == f"a@{'1' * 12},b@{'2' * 12}"


def test_notify_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="CREDSYNC_NOTIFY=signal needs CREDSYNC_NOTIFY_TARGET"):
        load_settings({"notify": "signal"})
    with pytest.raises(ConfigError, match="CREDSYNC_NOTIFY_SIGNAL"):
        load_settings({"notify_signal": "SIGKILL"})
    with pytest.raises(ConfigError, match="CREDSYNC_NOTIFY_URL"):
        load_settings({"notify": "http", "notify_url": "file:///etc/passwd"})
    assert load_settings({"notify_signal": "usr1"}).notify_signal == "SIGUSR1"


COMPOSE = {"com.docker.compose.project": "app-x1", "com.docker.compose.service": "webhook"}
STACK = {"com.docker.stack.namespace": "hub", "com.docker.swarm.service.name": "hub_webhook"}


@pytest.mark.parametrize(
    ("spec", "container_id", "attributes", "expected"),
    [
        (TargetSpec(project="app-x1", service="webhook"), "c1", {**COMPOSE, "name": "app-x1-webhook-1"}, True),
        (TargetSpec(project="other", service="webhook"), "c1", COMPOSE, False),
        (TargetSpec(service="webhook"), "c1", COMPOSE, True),  # own project: known only later, so any
        (TargetSpec(service="webhook"), "c1", {**COMPOSE, "com.docker.compose.oneoff": "True"}, False),
        (TargetSpec(service="job"), "c1", COMPOSE, False),
        (TargetSpec(container="hub"), "c1", {"name": "hub"}, True),
        (TargetSpec(container="hub"), "c1", {"name": "hub-2", "oldName": "/hub"}, True),  # renamed away
        (TargetSpec(container="hub"), "c1", {"name": "job-7"}, False),
        (TargetSpec(container="0123456789ab"), "0123456789abcdef", {"name": "x"}, True),
        (TargetSpec(project="hub", service="webhook"), "c2", STACK, True),  # a Swarm stack's task
        (TargetSpec(service="webhook"), "c2", STACK, True),
        (TargetSpec(project="hub2", service="webhook"), "c2", STACK, False),
        (
            TargetSpec(project="hub", service="web"),
            "c2",
            {**STACK, "com.docker.swarm.service.name": "hub_webhook2"},
            False,
        ),
    ],
)
def test_which_engine_events_concern_the_target(
    spec: TargetSpec, container_id: str, attributes: dict[str, str], expected: bool
) -> None:
    assert concerns(spec, container_id, attributes) is expected


def test_a_verdict_is_kept_only_once_the_container_has_settled() -> None:
    started = time.strftime("%Y-%m-%dT%H:%M:%S.123456789Z", time.gmtime(1_800_000_000))
    assert not settled(started, 1_800_000_000 + STARTUP_S - 1)
    assert settled(started, 1_800_000_000 + STARTUP_S)
    assert not settled("not a time", 1_800_000_000)


def write_health(state_dir: Path, *, pid: int, ready: bool, watching: bool, age_s: float, failing: int = 0) -> None:
    heartbeat_ms = int((time.time() - age_s) * 1000)
    record = format_record(
        pid, ready=ready, watching=watching, failing=failing, heartbeat_ms=heartbeat_ms, interval_s=30.0
    )
    (state_dir / HEALTH_FILE).write_text(record)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"ready": False}, "has not finished its first reconcile"),
        ({"watching": False}, "the watcher is down"),
        ({"age_s": 91.0}, "no heartbeat for 91s"),
        ({"pid": 2**22 + 1}, "is not running"),
        ({"failing": 2}, r"2 upload\(s\) could not be published"),
    ],
)
def test_the_health_probe_tells_why_not(tmp_path: Path, fields: dict[str, object], reason: str) -> None:
    write_health(tmp_path, **{"pid": os.getpid(), "ready": True, "watching": True, "age_s": 0.0, **fields})  # type: ignore[arg-type]
    with pytest.raises(Unhealthy, match=reason):
        check_health(str(tmp_path))


def test_the_health_probe_passes_a_live_daemon_and_refuses_garbage(tmp_path: Path) -> None:
    write_health(tmp_path, pid=os.getpid(), ready=True, watching=True, age_s=1.0)
    assert check_health(str(tmp_path)).startswith(f"healthy: pid {os.getpid()}")
    for garbage in ("pid=1;rm ready=1 watching=1 failing=0 heartbeat_ms=1 interval_s=1", "pid=1", "\u00e9t\u00e9"):
        (tmp_path / HEALTH_FILE).write_text(garbage)
        with pytest.raises(Unhealthy, match=r"unreadable .*: (ValueError|UnicodeDecodeError)"):
            check_health(str(tmp_path))


def test_a_child_list_of_unicode_digits_is_a_read_error_not_a_crash() -> None:
    """str.isdigit accepts "²"; int() does not. Found by the property test of any /proc answer."""
    with pytest.raises(ProcReadError, match="not a process id"):
        parse_pid("²")
    assert parse_pid("42") == 42
