"""`credsync init` as an operator runs it: over a real sshd on 127.0.0.1 as the unprivileged
SSH user, before credsync runs and then against a running `credsync watch` (as the sidecar runs
it: root, the user's upload folder as its source, the user's receipts folder); then
`credsync push` through the folders init made, and a misnamed upload, each with a receipt the
user finds with `ls`. Also what init refuses: root, a SERVER that ssh would take as an option."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import WatchProcess, claude_credentials, credsync_command, run_cli, sha12, wait_until
from tests.sshd import SshServer
from tests.test_push import Site, push

pytestmark = pytest.mark.system  # root, a real Docker Engine or sshd: see conftest.py


def init(sshd: SshServer, remote_dir: str, *options: str) -> tuple[subprocess.CompletedProcess[str], float]:
    ssh = shlex.join(["ssh", *sshd.ssh_options(), "-p", str(sshd.port)])
    started = time.monotonic()
    result = run_cli("init", f"--ssh={ssh}", *options, f"{sshd.user.name}@127.0.0.1:{remote_dir}")
    return result, time.monotonic() - started


@pytest.fixture
def site(sshd: SshServer, tmp_path: Path) -> Iterator[Site]:
    """Where init will make the folders (a base folder of the user's, so each test has its own),
    and the consumer's volume; nothing made yet."""
    base = sshd.user.home / f"init-{tmp_path.name}"
    shutil.rmtree(base, ignore_errors=True)  # left by an interrupted run
    base.mkdir(mode=0o700)
    os.chown(base, sshd.user.uid, sshd.user.gid)
    claude_dir = tmp_path / "claude-config"
    claude_dir.mkdir()
    os.chown(claude_dir, 1001, 1001)
    uploads = base / "claude-uploads"
    remote_dir = str(uploads.relative_to(sshd.user.home))
    yield Site(uploads, claude_dir, tmp_path / "state", tmp_path / "aws", remote_dir, base / "claude-receipts")
    shutil.rmtree(base)


def test_init_then_push_against_a_running_credsync_with_receipts_found_by_ls(
    sshd: SshServer, site: Site, tmp_path: Path
) -> None:
    first, first_s = init(sshd, site.remote_dir, "--timeout=1")
    assert first.returncode == 0, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    for folder in (site.source, site.source / "aws", site.receipts):
        assert f"  created {folder} (0700)" in lines
        info = folder.stat()
        assert (info.st_uid, info.st_mode & 0o7777) == (sshd.user.uid, 0o700), folder
    # The lines to paste, absolute, each on a line of its own.
    for line in (f"UPLOADS_DIR={site.source}", f"RECEIPTS_DIR={site.receipts}"):
        assert line in lines
    for line in (f"CREDSYNC_SOURCE={site.source}", f"CREDSYNC_RECEIPTS_DIR={site.receipts}"):
        assert line in lines
    assert "  no credsync answered within 1s: expected before the first deploy" in first.stdout

    site.aws_dir.mkdir()
    watch = WatchProcess(site, ["--settle-ms=50", f"--receipts-dir={site.receipts}"]).ready()
    try:
        second, second_s = init(sshd, site.remote_dir)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "  nothing changed:" in second.stdout and "created" not in second.stdout
        answered = next(line for line in second.stdout.splitlines() if "credsync answered within" in line)
        assert "watches this upload folder and writes receipts here" in answered
        assert os.listdir(site.source) == ["aws"] and os.listdir(site.receipts) == [], "the probe was left behind"

        local = tmp_path / ".credentials.json"
        data = claude_credentials(serial=1)
        local.write_bytes(data)
        pushed = push(sshd, [site], f"--file={local}")
        assert pushed.returncode == 0 and f"published, sha {sha12(data)}" in pushed.stdout, pushed.stdout
        misnamed = tmp_path / "credentials.json"
        misnamed.write_bytes(data)
        sshd.scp(misnamed, site.source, legacy=False)
        wait_until((site.receipts / "receipt-credentials.json").exists, timeout=10)
    finally:
        watch.stop()
    listed = sshd.ssh(f"ls {shlex.quote(str(site.receipts))}").stdout.split()
    assert listed == ["receipt-.credentials.json", "receipt-credentials.json"], listed
    receipt = json.loads(sshd.ssh(f"cat {shlex.quote(str(site.receipts / listed[0]))}").stdout)
    assert (receipt["outcome"], receipt["upload_sha256_prefix"]) == ("published", sha12(data))
    assert receipt["at_utc"].endswith("Z") and receipt["at_utc"][:4].isdigit()
    ignored = json.loads((site.receipts / "receipt-credentials.json").read_text())
    assert (ignored["outcome"], ignored["reason"]) == (
        "ignored",
        "no route takes this name: did you mean .credentials.json?",
    )
    print(f"init: {first_s:.2f}s with no credsync (1 s probe), {second_s:.2f}s with one; {answered.strip()}")


def test_init_names_a_wrong_mode_and_a_wrong_owner_with_their_fixes_and_changes_neither(
    sshd: SshServer, site: Site
) -> None:
    made, _ = init(sshd, site.remote_dir, "--timeout=0")
    assert made.returncode == 0, made.stdout
    site.source.chmod(0o755)
    loose, _ = init(sshd, site.remote_dir, "--timeout=0")
    assert loose.returncode == 3
    assert "has mode drwxr-xr-x" in loose.stdout and f"    fix: chmod 700 {site.source}" in loose.stdout
    assert site.source.stat().st_mode & 0o777 == 0o755
    site.source.chmod(0o700)
    os.chown(site.receipts, 0, 0)  # as Docker makes a bind-mounted folder that was missing
    taken, _ = init(sshd, site.remote_dir, "--timeout=0")
    assert taken.returncode == 3
    assert f"{site.receipts} belongs to UID 0, not to you, {sshd.user.name} (UID {sshd.user.uid})" in taken.stdout
    assert f"    fix: as root: chown {sshd.user.name}: {site.receipts}" in taken.stdout
    assert site.receipts.stat().st_uid == 0


def test_a_server_ssh_would_take_as_an_option_is_refused_with_exit_2(tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    result = subprocess.run(
        credsync_command("init", "--", f"-oProxyCommand=touch {pwned}"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and "starts with '-'" in result.stderr
    assert not pwned.exists()


def test_root_is_refused_here_with_exit_2_and_nothing_is_made(tmp_path: Path) -> None:
    result = run_cli("init", env={"HOME": str(tmp_path)})
    assert result.returncode == 2 and "not as root" in result.stdout
    assert os.listdir(tmp_path) == []
