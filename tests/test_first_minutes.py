"""What a new operator tripped over, driven the way an operator drives it: the installed
`credsync`, as an unprivileged user where the point is about one, and a fresh clone followed
by the README's own command."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from credsync.timefmt import expiry
from tests.helpers import (
    Folders,
    WatchProcess,
    assert_no_canary,
    claude_credentials,
    credsync_command,
    run_cli,
    wait_until,
)
from tests.image_build import clean_clone

pytestmark = pytest.mark.system  # root, a real Docker Engine or sshd: see conftest.py

OPERATOR = 1000
# A login's environment: a plain PATH, and the machine's pip settings (its package index).
OPERATOR_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", **{k: v for k, v in os.environ.items() if k.startswith("PIP_")}}


def as_operator(
    argv: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    command = ["setpriv", f"--reuid={OPERATOR}", f"--regid={OPERATOR}", "--clear-groups", *argv]
    environment = {**OPERATOR_ENV, "HOME": str(cwd), **(env or {})}
    result = subprocess.run(
        command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert_no_canary(result.stdout + result.stderr, f"{argv[0]} as the operator")
    return result


@pytest.fixture
def operator_home() -> Iterator[Path]:
    # Not under pytest's tmp_path: that is root's 0700 folder.
    home = Path(tempfile.mkdtemp(prefix="credsync-operator-"))
    os.chown(home, OPERATOR, OPERATOR)
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.timeout(600)  # run-local makes its virtualenv first: about two minutes here
def test_a_fresh_clone_reaches_a_published_file_and_clean_status_health_doctor(operator_home: Path) -> None:
    clone = clean_clone(operator_home / "credsync")
    subprocess.run(["chown", "-R", f"{OPERATOR}:{OPERATOR}", str(clone)], check=True)
    # The README's first command, as the operator, until the daemon is ready.
    log_path = operator_home / "run-local.log"
    with log_path.open("w") as log_file:
        daemon = subprocess.Popen(
            ["setpriv", f"--reuid={OPERATOR}", f"--regid={OPERATOR}", "--clear-groups", "bash", "scripts/run-local"],
            cwd=clone,
            env={**OPERATOR_ENV, "HOME": str(operator_home)},
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    try:
        ready = clone / "var" / "state" / "health"
        try:
            wait_until(lambda: ready.exists() or daemon.poll() is not None, timeout=400, interval=0.2)
        finally:
            assert ready.exists(), f"run-local did not get ready: {log_path.read_text()[-1500:]}"
        upload = clone / "var" / "uploads" / ".credentials.json"
        as_operator(["sh", "-c", f"cat > {upload}"], cwd=clone)  # an empty file first: rejected, then the real one
        data = claude_credentials(serial=1)
        staged = operator_home / "staged"
        staged.write_bytes(data)
        os.chown(staged, OPERATOR, OPERATOR)
        as_operator(["cp", str(staged), str(upload)], cwd=clone)
        published = clone / "var" / "claude-config" / ".credentials.json"
        wait_until(lambda: published.exists() and published.read_bytes() == data, timeout=20)
        info = published.stat()
        assert (info.st_uid, info.st_mode & 0o777) == (OPERATOR, 0o600)
        for command in ("status", "health", "doctor"):
            said = as_operator(["sh", "-c", f". var/credsync.env && credsync {command}"], cwd=clone)
            assert said.returncode == 0, f"credsync {command}: {said.stdout}{said.stderr}"
        assert "healthy" in as_operator(["sh", "-c", ". var/credsync.env && credsync health"], cwd=clone).stdout
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
    log = log_path.read_text()
    assert_no_canary(log, "run-local's log")
    assert "In another terminal" in log and "Traceback" not in log


def test_a_mode_that_lets_others_read_is_refused_at_start(folders: Folders) -> None:
    result = run_cli("sync", *folders.args(), "--mode=777")
    assert result.returncode == 2
    assert result.stderr.strip().endswith(
        "CREDSYNC_MODE (--mode): 0777 lets others read or anyone execute a credential; use 0600 (or 0640)"
    )


def test_owner_and_mode_drift_is_repaired_though_the_bytes_are_unchanged(folders: Folders) -> None:
    data = claude_credentials(serial=1)
    folders.upload(".credentials.json", data)
    assert run_cli("sync", *folders.args()).returncode == 0
    destination = folders.claude_dir / ".credentials.json"
    destination.chmod(0o644)  # what the consumer, who owns the file, may do to it
    again = run_cli("sync", *folders.args())
    assert (
        again.returncode == 0 and "repaired owner and mode" in again.stderr and 'was="1001:1001 0644"' in again.stderr
    )
    assert destination.stat().st_mode & 0o777 == 0o600 and destination.read_bytes() == data


def test_a_second_daemon_on_one_state_folder_is_refused_naming_the_first(folders: Folders) -> None:
    first = WatchProcess(folders, ["--settle-ms=50"]).ready()
    try:
        second = subprocess.run(
            credsync_command("watch", *folders.args()), capture_output=True, text=True, timeout=60, check=False
        )
        assert second.returncode == 2
        assert (
            f"another credsync watch (PID {first.process.pid}) uses the state folder {folders.state_dir}"
            in second.stderr
        )
        health = run_cli("health", f"--state-dir={folders.state_dir}")
        assert health.returncode == 0 and health.stdout.startswith("healthy")
    finally:
        first.stop()


def test_an_unprivileged_user_is_told_which_owner_setting_to_change(operator_home: Path) -> None:
    source, claude = operator_home / "uploads", operator_home / "claude"
    as_operator(["mkdir", str(source), str(claude)], cwd=operator_home)
    staged = operator_home / "staged"
    staged.write_bytes(claude_credentials(serial=2))
    os.chown(staged, OPERATOR, OPERATOR)
    as_operator(["cp", str(staged), str(source / ".credentials.json")], cwd=operator_home)
    flags = [f"--source={source}", f"--claude-dir={claude}", f"--state-dir={operator_home / 'state'}"]
    result = as_operator(credsync_command("sync", *flags), cwd=operator_home)
    assert result.returncode == 3
    assert "not permitted to set the owner" in result.stderr and "CREDSYNC_OWNER" in result.stderr


def test_near_misses_are_said_with_the_name_meant(folders: Folders) -> None:
    folders.upload("credentials.json", claude_credentials(serial=3))
    (folders.source / ".claude").mkdir()
    result = run_cli("sync", *folders.args())
    assert 'upload=credentials.json hint="did you mean .credentials.json?"' in result.stderr
    assert 'upload=.claude hint="upload the files inside .claude/ into the upload folder itself"' in result.stderr
    assert " INFO    ignored" in result.stderr


def test_a_missing_aws_destination_is_not_blamed_on_the_source(folders: Folders) -> None:
    shutil.rmtree(folders.aws_dir)
    process = WatchProcess(folders, ["--settle-ms=50"]).ready()
    try:
        warned = process.wait_for("cannot watch a destination folder: " + f"{folders.aws_dir} does not exist")
        assert warned["level"] == "WARNING"
        assert not [line for line in process.lines if "cannot watch the source folder" in str(line["message"])]
    finally:
        process.stop()


def test_messages_name_the_setting_that_fixes_them(folders: Folders) -> None:
    folders.upload(".credentials.json", b"{" + b" " * 2_000_000 + b"}")
    folders.upload("aws/config", b"[default]\nregion = eu-west-1")
    said = run_cli("sync", *folders.args(), "--config-routes=aws/config").stderr
    assert "over the limit of 1048576 (CREDSYNC_MAX_BYTES)" in said
    assert "if it is whole, add a final newline" in said
    now = int(time.time() * 1000)
    assert expiry(now - 3_600_000, now) == "expired 1h 0m ago" and expiry(now + 3_600_000, now).startswith("expires in")
