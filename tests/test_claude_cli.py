"""The real consumer: Claude Code's own CLI (npm `@anthropic-ai/claude-code`, installed by
scripts/test-deps) reads what credsync published the way claude-hub's job does: the credentials
folder copied into a private workspace, owned by `node` (UID 1000), `claude` run as that user
with HOME there. `claude auth status` needs no network."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from credsync.setup_token import TOKEN_LIFETIME_MS
from tests.helpers import (
    CANARY,
    JOB_USER,
    Folders,
    as_a_job_reads_it,
    auth_status,
    claude_credentials,
    mcp_sign_ins,
    now_ms,
    run_cli,
)

pytestmark = pytest.mark.system  # root, a real Docker Engine or sshd: see conftest.py

TOKEN = "sk-ant-oat01-fake-" + "k" * 24 + CANARY


def sync(folders: Folders) -> int:
    return run_cli("sync", *folders.args()).returncode


def test_a_published_setup_token_logs_claude_in(claude: Path, folders: Folders, workspace: Path) -> None:
    folders.upload("claude-setup-token", (TOKEN + "\n").encode())
    assert sync(folders) == 0
    status = as_a_job_reads_it(claude, folders.claude_dir, workspace)
    assert status["loggedIn"] is True and status["authMethod"] == "claude.ai"
    published = json.loads((folders.claude_dir / ".credentials.json").read_bytes())["claudeAiOauth"]
    assert "refreshToken" not in published, "a long-lived token has nothing to rotate"


def test_a_published_login_logs_claude_in(claude: Path, folders: Folders, workspace: Path) -> None:
    folders.upload(".credentials.json", claude_credentials(serial=1))
    assert sync(folders) == 0
    assert as_a_job_reads_it(claude, folders.claude_dir, workspace)["loggedIn"] is True


def test_what_credsync_refused_leaves_claude_logged_out(claude: Path, folders: Folders, workspace: Path) -> None:
    document = json.loads(claude_credentials(serial=2))
    del document["claudeAiOauth"]["scopes"]  # Claude ignores a credential without scopes
    folders.upload(".credentials.json", json.dumps(document).encode())
    assert sync(folders) == 1
    assert not (folders.claude_dir / ".credentials.json").exists()
    assert as_a_job_reads_it(claude, folders.claude_dir, workspace)["loggedIn"] is False


def test_the_published_file_is_private_to_its_owner(claude: Path, folders: Folders, workspace: Path) -> None:
    """0600 for UID 1001: read in place by another UID (node, 1000), Claude is logged out."""
    folders.upload(".credentials.json", claude_credentials(serial=3))
    assert sync(folders) == 0
    home = workspace / "home"
    (home / ".claude").mkdir(parents=True)
    os.chown(home, JOB_USER, JOB_USER)
    shutil.copy2(folders.claude_dir / ".credentials.json", home / ".claude" / ".credentials.json")
    os.chown(home / ".claude" / ".credentials.json", 1001, 1001)  # as published: 1001, 0600
    assert auth_status(claude, home)["loggedIn"] is False


def test_a_laptop_login_with_mcp_sign_ins_is_published_and_logs_claude_in(
    claude: Path, folders: Folders, workspace: Path
) -> None:
    """The allow-list keeps what Claude Code 2.1 writes on a laptop: `clientId` and the plan's
    fields in the login, the tokens of remote MCP servers beside it."""
    login = claude_credentials(serial=4, clientId="9d1c250a-e61b-44d9-88ed-5944d1962f5e", top_level=mcp_sign_ins(2))
    folders.upload(".credentials.json", login)
    assert sync(folders) == 0
    assert (folders.claude_dir / ".credentials.json").read_bytes() == login
    assert as_a_job_reads_it(claude, folders.claude_dir, workspace)["loggedIn"] is True


def test_a_setup_token_expires_a_year_after_credsync_first_saw_it_whatever_the_files_time(
    claude: Path, folders: Folders, workspace: Path
) -> None:
    """The uploader sets the file's time: dated ten years ahead, it must not push the expiry
    Claude reads out by ten years; sent again (dated otherwise), the same token is unchanged."""
    data = (TOKEN + "\n").encode()
    upload = folders.upload("claude-setup-token", data)
    ahead = time.time() + 10 * 365 * 86_400
    os.utime(upload, (ahead, ahead))
    before = now_ms()
    first = run_cli("sync", *folders.args())
    after = now_ms()
    assert first.returncode == 0 and "published route=claude-setup-token" in first.stderr
    destination = folders.claude_dir / ".credentials.json"
    published = destination.read_bytes()
    expires = json.loads(published)["claudeAiOauth"]["expiresAt"]
    assert before + TOKEN_LIFETIME_MS <= expires <= after + TOKEN_LIFETIME_MS, "not counted from first sight"
    for dated in (ahead + 86_400, time.time() - 86_400):  # pushed again, later or dated back
        folders.upload("claude-setup-token", data)
        os.utime(upload, (dated, dated))
        again = run_cli("sync", *folders.args())
        assert again.returncode == 0 and "unchanged route=claude-setup-token" in again.stderr, again.stderr
        assert destination.read_bytes() == published
    assert as_a_job_reads_it(claude, folders.claude_dir, workspace)["loggedIn"] is True
