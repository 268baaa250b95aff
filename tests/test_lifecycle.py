"""The credential's life on the server: a login and a setup-token take turns at
`.credentials.json` by upload time, a rotating login is said to be one, and `status` tells the
kinds apart. Real files, real chown to 1001, the installed CLI."""

from __future__ import annotations

import json

import pytest

from tests.helpers import CANARY, Folders, WatchProcess, assert_no_canary, claude_credentials, run_cli, sha12

pytestmark = pytest.mark.system  # root, a real Docker Engine or sshd: see conftest.py
TOKEN = "sk-ant-oat01-fake-" + "s" * 24 + CANARY


def sync(folders: Folders) -> str:
    result = run_cli("sync", *folders.args())
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_a_login_and_a_setup_token_take_turns_by_upload_time(folders: Folders) -> None:
    destination = folders.claude_dir / ".credentials.json"
    login = claude_credentials(serial=1)
    folders.upload(".credentials.json", login)
    sync(folders)
    assert destination.read_bytes() == login
    folders.upload("claude-setup-token", (TOKEN + "\n").encode())
    said = sync(folders)
    assert TOKEN in destination.read_text() and "superseded route=.credentials.json" in said
    inode = destination.stat().st_ino
    again = sync(folders)
    assert destination.stat().st_ino == inode, "a rescan flipped the file between the two uploads"
    assert "published route=" not in again
    newer_login = claude_credentials(serial=2)
    folders.upload(".credentials.json", newer_login)
    said = sync(folders)
    assert destination.read_bytes() == newer_login and "superseded route=claude-setup-token" in said


def test_a_rotating_login_is_said_to_be_one_and_status_tells_the_kinds_apart(folders: Folders) -> None:
    process = WatchProcess(folders, ["--settle-ms=50"]).ready()
    try:
        login = claude_credentials(serial=1)
        folders.upload(".credentials.json", login)
        process.wait_for("published", route=".credentials.json", sha=sha12(login))
        shared = process.wait_for(
            "this login's refresh token is shared with the machine it came from: whichever refreshes first logs the"
            " other out, and jobs that refresh in throwaway copies never write the new one back, so it stops working"
            " when its access token expires; for a server, run `claude setup-token` and upload the token it prints"
            " (`credsync push --setup-token`)"
        )
        assert shared["level"] == "WARNING" and shared["problem"] == "shared-refresh-token"
    finally:
        process.stop()
    report = json.loads(run_cli("status", "--json", *folders.args()).stdout)
    held = next(route for route in report["routes"] if route["route"] == ".credentials.json")["held"]
    assert held["credential"] == "login with a rotating refresh token"
    assert any("shared with the machine it came from" in problem for problem in held["problems"])
    folders.upload("claude-setup-token", (TOKEN + "\n").encode())
    sync(folders)
    text = run_cli("status", *folders.args()).stdout
    assert_no_canary(text, "status")
    assert "credential   long-lived token" in text
