"""Signalling a process of credsync's own PID namespace without the Engine (pid:N targets): real
processes, no root. The receiver is judged first and signalled only if it catches the signal;
its survival is watched through a pidfd for the grace period."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from credsync.errors import ConfigError
from credsync.notify.delivery import DeliveryFailed
from credsync.notify.own_namespace import own_namespace_check, parse_stat, signal_in_own_namespace, snapshot
from credsync.notify.procstatus import ProcReadError
from credsync.notify.targets import parse_target

# A receiver that says when its handler is in place, then counts HUPs; "exit" makes HUP fatal.
RECEIVER = """
import signal, sys, time
mode = sys.argv[1]
if mode == "handles":
    signal.signal(signal.SIGHUP, lambda *_: print("HUP", flush=True))
elif mode == "exits":
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(3))
print("ready", flush=True)
while True:
    time.sleep(3600)
"""


Receiver = Callable[[str], "subprocess.Popen[str]"]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started: list[subprocess.Popen[str]] = []

    def start(mode: str) -> subprocess.Popen[str]:
        process = subprocess.Popen([sys.executable, "-c", RECEIVER, mode], stdout=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout is not None and process.stdout.readline() == "ready\n"  # its handler is in place
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


def test_pid_targets_parse_and_bad_ones_say_how() -> None:
    assert parse_target("pid:1").pid == 1 and parse_target(" pid:42 ").describe() == "pid:42"
    for bad in ("pid:", "pid:0", "pid:x", "pid:²"):
        with pytest.raises(ConfigError, match="pid:N needs a process number"):
            parse_target(bad)


def test_the_start_time_is_read_past_a_command_name_with_spaces_and_parentheses() -> None:
    fields = " ".join(["S", *["0"] * 18, "98765", "0"])
    parsed = parse_stat(7, f"7 (a) b (c) {fields}")
    assert (parsed.name, parsed.start_ticks) == ("a) b (c", 98765)
    with pytest.raises(ProcReadError):
        parse_stat(7, "7 (cut")


def test_a_receiver_that_handles_the_signal_gets_exactly_one_and_is_seen_to_survive(receiver: Receiver) -> None:
    process = receiver("handles")
    verdict, signalled = signal_in_own_namespace(process.pid, "SIGHUP")
    assert verdict.catches and signalled is not None
    signalled.survived(0.2)
    assert process.stdout is not None and process.stdout.readline() == "HUP\n"
    assert process.poll() is None


def test_a_receiver_without_a_handler_is_never_signalled(receiver: Receiver) -> None:
    process = receiver("default")
    verdict, signalled = signal_in_own_namespace(process.pid, "SIGHUP")
    assert not verdict.catches and signalled is None and "no SIGHUP handler" in verdict.explanation
    assert process.poll() is None  # a HUP would have killed it


def test_a_receiver_that_dies_of_the_signal_fails_the_survival_check_at_once(receiver: Receiver) -> None:
    process = receiver("exits")
    verdict, signalled = signal_in_own_namespace(process.pid, "SIGHUP")
    assert verdict.catches and signalled is not None
    with pytest.raises(DeliveryFailed, match="exited after the notification"):
        signalled.survived(30.0)  # the pidfd wakes the check when it exits, long before 30 s
    assert process.wait(timeout=5) == 3


def test_a_gone_process_is_a_transient_error_and_the_doctor_says_how_to_fix_it(receiver: Receiver) -> None:
    process = receiver("handles")
    before = snapshot(process.pid)
    process.kill()
    process.wait()
    with pytest.raises(ProcReadError):
        signal_in_own_namespace(before.pid, "SIGHUP")
    check = own_namespace_check(before.pid, "SIGHUP", auto=True)
    assert not check.ok and 'pid: "service:webhook"' in check.fix


def test_the_doctor_judges_a_live_receiver(receiver: Receiver) -> None:
    handles, default = receiver("handles"), receiver("default")
    assert own_namespace_check(handles.pid, "SIGHUP", auto=False).ok
    refused = own_namespace_check(default.pid, "SIGHUP", auto=False)
    assert not refused.ok and "CREDSYNC_NOTIFY=exec" in refused.fix
    assert own_namespace_check(default.pid, "SIGHUP", auto=True).ok  # auto publishes without signalling
