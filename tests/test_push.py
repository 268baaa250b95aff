"""`credsync push` as an operator runs it: against a real sshd on 127.0.0.1 as an unprivileged
user, with a real `credsync watch` on each "server" (an upload folder and a receipts folder of
that user's, as the compose file mounts them). No token appears in any output, in a receipt,
or in the argv of any process while push runs."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import (
    CANARY,
    Folders,
    WatchProcess,
    assert_no_canary,
    assert_published,
    claude_credentials,
    credsync_command,
    sha12,
)
from tests.sshd import SshServer

pytestmark = pytest.mark.system  # root, a real Docker Engine or sshd: see conftest.py

TOKEN = "sk-ant-oat01-fake-" + "t" * 24 + CANARY
TIMEOUT_S = 20


@dataclass
class Site(Folders):
    """One server: the SSH user's upload and receipts folders, the consumer's volume."""

    remote_dir: str  # the upload folder, relative to the SSH user's home
    receipts: Path


def make_site(sshd: SshServer, tmp_path: Path, name: str) -> Site:
    home = Path(sshd.user.home)
    base = home / f"push-{tmp_path.name}-{name}"
    uploads, receipts = base / "claude-uploads", base / "claude-receipts"
    shutil.rmtree(base, ignore_errors=True)  # left by an interrupted run
    for folder in (base, uploads, receipts):
        folder.mkdir(mode=0o700)
        os.chown(folder, sshd.user.uid, sshd.user.gid)
    claude_dir, aws_dir = tmp_path / name / "claude-config", tmp_path / name / "aws"
    claude_dir.mkdir(parents=True)
    aws_dir.mkdir()
    os.chown(claude_dir, 1001, 1001)
    return Site(uploads, claude_dir, tmp_path / name / "state", aws_dir, str(uploads.relative_to(home)), receipts)


@pytest.fixture
def servers(sshd: SshServer, tmp_path: Path) -> Iterator[list[tuple[Site, WatchProcess]]]:
    started = []
    for name in ("a", "b"):
        site = make_site(sshd, tmp_path, name)
        started.append((site, WatchProcess(site, ["--settle-ms=50", f"--receipts-dir={site.receipts}"]).ready()))
    yield started
    for site, process in started:
        process.stop()
        shutil.rmtree(site.source.parent)


class ArgvWatch:
    """Samples every process's argv while push runs: the token must never be in one."""

    def __init__(self) -> None:
        self.seen = 0
        self.leaks: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> ArgvWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                self.seen += 1
                if CANARY.encode() in argv:
                    self.leaks.append(pid)


def push(
    sshd: SshServer, sites: list[Site], *source: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    ssh = shlex.join(["ssh", *sshd.ssh_options(), "-p", str(sshd.port)])
    targets = [f"{sshd.user.name}@127.0.0.1:{site.remote_dir}" for site in sites]
    with ArgvWatch() as argv:
        result = subprocess.run(
            credsync_command("push", f"--ssh={ssh}", f"--timeout={TIMEOUT_S}", *source, *targets),
            input=stdin.decode(),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S + 90,
            env={**os.environ, **(env or {})},
            check=False,
        )
    assert argv.seen > 0 and not argv.leaks, "a token was on a command line"
    assert_no_canary(result.stdout + result.stderr, "push's output")
    return result


def receipts_are_clean(sites: list[Site]) -> None:
    for site in sites:
        for receipt in site.receipts.iterdir():
            assert_no_canary(receipt.read_text(), "a receipt")
            assert receipt.stat().st_uid == int(site.source.stat().st_uid), "a receipt its reader does not own"


def test_push_publishes_to_two_servers_then_says_unchanged(
    sshd: SshServer, servers: list[tuple[Site, WatchProcess]], tmp_path: Path
) -> None:
    sites = [site for site, _ in servers]
    local = tmp_path / ".credentials.json"
    data = claude_credentials(serial=1)
    local.write_bytes(data)
    first = push(sshd, sites, f"--file={local}")
    assert first.returncode == 0, first.stdout + first.stderr
    for site, process in servers:
        process.wait_for("published", route=".credentials.json", sha=sha12(data))
        assert_published(site.claude_dir / ".credentials.json", data)
    assert first.stdout.count(f"published, sha {sha12(data)}") == 2
    second = push(sshd, sites, f"--file={local}")
    assert second.returncode == 0 and second.stdout.count("unchanged") == 2, second.stdout
    receipts_are_clean(sites)
    # What the SSH user sees: the receipt by a name `ls` shows.
    assert sshd.ssh(f"ls {shlex.quote(str(sites[0].receipts))}").stdout.split() == ["receipt-.credentials.json"]
    assert not list(sites[0].source.glob(".credsync-push.*")), "a temporary file was left behind"


def test_a_locally_invalid_credential_is_never_uploaded(
    sshd: SshServer, servers: list[tuple[Site, WatchProcess]], tmp_path: Path
) -> None:
    sites = [site for site, _ in servers]
    local = tmp_path / ".credentials.json"
    local.write_bytes(claude_credentials(serial=1)[:-20])
    result = push(sshd, sites, f"--file={local}")
    assert result.returncode == 1 and "not sent: not valid JSON" in result.stderr
    assert not (sites[0].source / ".credentials.json").exists() and not (sites[1].source / ".credentials.json").exists()


def test_a_server_that_refuses_says_why_with_exit_1(
    sshd: SshServer, servers: list[tuple[Site, WatchProcess]], tmp_path: Path
) -> None:
    sites = [site for site, _ in servers]
    strict_site, strict = servers[1]
    strict.stop()
    stricter = WatchProcess(
        strict_site, ["--settle-ms=50", f"--receipts-dir={strict_site.receipts}", "--max-bytes=100"]
    ).ready()
    try:
        local = tmp_path / ".credentials.json"
        local.write_bytes(claude_credentials(serial=2))
        result = push(sshd, sites, f"--file={local}")
    finally:
        stricter.stop()
    assert result.returncode == 1, result.stdout
    lines = result.stdout.splitlines()
    assert any("published" in line for line in lines) and any("rejected: upload is" in line for line in lines)


def test_a_server_without_credsync_times_out_with_exit_5(sshd: SshServer, tmp_path: Path) -> None:
    silent = make_site(sshd, tmp_path, "silent")
    local = tmp_path / ".credentials.json"
    local.write_bytes(claude_credentials(serial=3))
    try:
        result = push(sshd, [silent], f"--file={local}", "--timeout=2")
    finally:
        shutil.rmtree(silent.source.parent)
    assert result.returncode == 5 and "no receipt within 2s" in result.stdout


def test_a_setup_token_from_standard_input_is_published_as_a_long_lived_credential(
    sshd: SshServer, servers: list[tuple[Site, WatchProcess]]
) -> None:
    site, process = servers[0]
    result = push(sshd, [site], "--setup-token", stdin=(TOKEN + "\n").encode())
    assert result.returncode == 0, result.stdout + result.stderr
    process.wait_for("published", route="claude-setup-token")
    published = (site.claude_dir / ".credentials.json").read_text()
    assert TOKEN in published and "refreshToken" not in published


def test_the_keychain_is_read_through_security(
    sshd: SshServer, servers: list[tuple[Site, WatchProcess]], tmp_path: Path
) -> None:
    site, process = servers[0]
    data = claude_credentials(serial=4)
    stand_in = tmp_path / "bin"
    stand_in.mkdir()
    (tmp_path / "keychain.json").write_bytes(data)
    security = stand_in / "security"
    security.write_text(
        "#!/bin/sh\n# a stand-in for macOS's security(1): find-generic-password -s SERVICE -w\n"
        f'[ "$3" = "Claude Code-credentials" ] && [ -f {tmp_path}/keychain.json ] || exit 44\n'
        f"cat {tmp_path}/keychain.json; echo\n"
    )
    security.chmod(0o755)
    path = f"{stand_in}:{os.environ['PATH']}"
    result = push(sshd, [site], "--keychain", env={"PATH": path})
    assert result.returncode == 0, result.stdout + result.stderr
    process.wait_for("published", route=".credentials.json", sha=sha12(data))
    (tmp_path / "keychain.json").unlink()
    missing = push(sshd, [site], "--keychain", env={"PATH": path})
    assert missing.returncode == 1 and "no 'Claude Code-credentials' item in the login Keychain" in missing.stderr
