"""Supervision: `credsync health` for Docker's HEALTHCHECK and sd_notify for systemd, against a
real notify socket the test listens on."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from credsync import health_probe
from tests.helpers import Folders, WatchProcess, claude_credentials, run_cli, wait_until

pytestmark = pytest.mark.system  # root, a real Docker Engine or sshd: see conftest.py


def health(folders: Folders) -> tuple[int, str]:
    """`credsync health`, checked against the image's HEALTHCHECK: the probe run as a bare file."""
    result = run_cli("health", f"--state-dir={folders.state_dir}", f"--source={folders.source}")
    probe = subprocess.run(
        [sys.executable, "-I", "-S", health_probe.__file__, str(folders.state_dir)],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    said = result.stdout.strip()
    assert (probe.returncode, re.sub(r"\d+", "N", probe.stdout.strip())) == (
        result.returncode,
        re.sub(r"\d+", "N", said),
    )
    return result.returncode, said


def test_health_follows_the_daemon(folders: Folders) -> None:
    code, said = health(folders)
    assert code == 1 and "not running or not ready" in said
    process = WatchProcess(folders).ready()
    try:
        code, said = health(folders)
        assert code == 0 and said.startswith("healthy: pid")
        shutil.rmtree(folders.source)
        refused = process.wait_for("cannot watch the source folder; retrying every 5s")
        assert str(refused["reason"]).endswith("does not exist")
        wait_until(lambda: health(folders)[0] == 1)
        assert "watcher is down" in health(folders)[1]
        folders.source.mkdir()
        process.wait_for("reconcile", count=2, timeout=15)  # the 5-second retry finds it again
        wait_until(lambda: health(folders)[0] == 0)
    finally:
        process.stop()
    code, said = health(folders)
    assert code == 1


def receive_all(listener: socket.socket) -> list[str]:
    messages = []
    listener.setblocking(False)
    while True:
        try:
            messages.append(listener.recv(4096).decode())
        except BlockingIOError:
            return messages


def test_sd_notify_messages_arrive_in_order(folders: Folders, tmp_path: Path) -> None:
    address = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(address))
    env = {"NOTIFY_SOCKET": str(address), "WATCHDOG_USEC": "400000"}
    process = WatchProcess(folders, ["--settle-ms=0"], env=env).ready()
    try:
        listener.settimeout(5)
        first = listener.recv(4096).decode()
        assert first.startswith("READY=1\nSTATUS=watching")
        assert listener.recv(4096).decode() == "WATCHDOG=1"  # every WATCHDOG_USEC / 2
        folders.upload(".credentials.json", claude_credentials())
        line = process.wait_for("published")
    finally:
        process.stop(signal.SIGTERM)
    messages = receive_all(listener)
    listener.close()
    assert f"STATUS=published .credentials.json {line['sha']}" in messages
    assert messages[-1] == "STOPPING=1"
    assert messages.count("STOPPING=1") == 1
    assert set(messages) - {"WATCHDOG=1", "STOPPING=1"} == {f"STATUS=published .credentials.json {line['sha']}"}
