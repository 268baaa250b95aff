"""The command line as a user runs it: exit codes, one-line reasons, no secrets in output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from credsync import __version__
from tests.helpers import CONFIG_ROUTES, Folders, aws_credentials, claude_credentials, run_cli

pytestmark = pytest.mark.system  # root, a real Docker Engine or sshd: see conftest.py


def test_version_and_help() -> None:
    assert run_cli("--version").stdout.strip() == f"credsync {__version__}"
    helped = run_cli("sync", "--help")
    assert helped.returncode == 0 and "--claude-dir" in helped.stdout and "CREDSYNC_" in helped.stdout


def test_sync_publishes_then_reports_unchanged(folders: Folders) -> None:
    data = claude_credentials()
    folders.upload(".credentials.json", data)
    first = run_cli("sync", *folders.args())
    assert first.returncode == 0
    assert "published" in first.stderr and "route=.credentials.json" in first.stderr
    assert (folders.claude_dir / ".credentials.json").read_bytes() == data
    second = run_cli("sync", *folders.args())
    assert second.returncode == 0 and "unchanged" in second.stderr and "published" not in second.stderr


def test_sync_exits_1_on_a_rejection_and_publishes_the_rest(folders: Folders) -> None:
    folders.upload(".credentials.json", b'{"claudeAiOauth": {}}')
    folders.upload("aws/credentials", aws_credentials())
    result = run_cli("sync", *folders.args())
    assert result.returncode == 1
    assert "rejected" in result.stderr and "accessToken: Field required" in result.stderr
    assert not (folders.claude_dir / ".credentials.json").exists()
    assert (folders.aws_dir / "credentials").read_bytes() == aws_credentials()


def test_sync_exits_3_when_publishing_fails(folders: Folders) -> None:
    folders.upload(".credentials.json", claude_credentials())
    folders.claude_dir.rmdir()
    result = run_cli("sync", *folders.args())
    assert result.returncode == 3 and "cannot open the destination folder" in result.stderr


def test_dry_run_writes_nothing(folders: Folders) -> None:
    folders.upload(".credentials.json", claude_credentials())
    result = run_cli("sync", "--dry-run", *folders.args())
    assert result.returncode == 0 and "dry_run=True" in result.stderr
    assert "would be published route=.credentials.json" in result.stderr and "INFO    published" not in result.stderr
    assert os.listdir(folders.claude_dir) == [] and not folders.state_dir.exists()


def test_bad_configuration_exits_2_with_one_line(folders: Folders) -> None:
    result = run_cli("sync", *folders.args(), "--mode=rw")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "CREDSYNC_MODE (--mode)" in result.stderr
    env_result = run_cli("sync", "--routes=/nonexistent/routes.toml", *folders.args())
    assert env_result.returncode == 2 and "routes file /nonexistent/routes.toml" in env_result.stderr


def test_json_logs_are_one_object_per_line(folders: Folders) -> None:
    folders.upload(".credentials.json", claude_credentials())
    folders.upload("settings.json", b"{")
    result = run_cli("sync", *folders.args(), "--log-format=json", "--config-routes=settings.json")
    records = [json.loads(line) for line in result.stderr.splitlines()]
    decisions = {
        record["route"]: record["message"] for record in records if "route" in record and "problem" not in record
    }
    assert decisions == {".credentials.json": "published", "settings.json": "rejected"}
    assert all({"time", "level", "message"} <= record.keys() for record in records)


def test_validate_reports_each_file(tmp_path: Path) -> None:
    good = tmp_path / ".credentials.json"
    good.write_bytes(claude_credentials())
    bad = tmp_path / "settings.json"
    bad.write_bytes(b"[]")
    result = run_cli("validate", str(good), str(bad))
    assert result.returncode == 1
    described = "access token expires in 7h 59m; scopes user:inference user:profile"
    assert result.stdout.splitlines() == [
        f"{good}: valid claude-oauth ({described})",
        f"{bad}: invalid claude-settings: JSON top level is an array, expected an object",
    ]
    assert run_cli("validate", str(good)).returncode == 0


def test_validate_tells_the_kind_from_the_content_when_the_name_does_not(tmp_path: Path) -> None:
    other = tmp_path / "creds.json"
    other.write_bytes(claude_credentials())
    assumed = run_cli("validate", str(other))
    assert assumed.returncode == 0
    assert assumed.stdout.startswith(f"{other}: valid claude-oauth (access token expires in ")
    assert "(kind assumed from the content; pass --kind" in assumed.stdout
    assert run_cli("validate", "--kind=claude-oauth", str(other)).returncode == 0
    unknown = tmp_path / "notes.txt"
    unknown.write_bytes(b"hello\n")
    said = run_cli("validate", str(unknown))
    assert said.returncode == 2 and "cannot tell the kind from the name or the content" in said.stdout


def test_hostile_file_names_are_printed_safely(tmp_path: Path) -> None:
    hostile = tmp_path / "evil\n\x1b[31mred"
    hostile.write_bytes(b"{}")
    result = run_cli("validate", "--kind=claude-settings", str(hostile))
    assert result.returncode == 0
    assert "\x1b" not in result.stdout and len(result.stdout.splitlines()) == 1
    assert "evil\\n\\x1b[31mred" in result.stdout


def test_validate_refuses_a_symlink_like_the_daemon(tmp_path: Path) -> None:
    target = tmp_path / "real.json"
    target.write_bytes(b"{}")
    link = tmp_path / "settings.json"
    link.symlink_to(target)
    result = run_cli("validate", str(link))
    assert result.returncode == 1 and "symlink" in result.stdout


def test_configuration_files_are_published_only_when_their_route_is_turned_on(folders: Folders) -> None:
    """settings.json, .claude.json and aws/config are configuration, not credentials: an upload
    of one changes nothing until the operator turns its route on, and then it is allow-listed."""
    uploads = {
        "settings.json": (b'{"model": "claude-sonnet-4-5"}\n', folders.claude_dir / "settings.json"),
        ".claude.json": (b'{"theme": "dark", "hasCompletedOnboarding": true}\n', folders.claude_dir / ".claude.json"),
        "aws/config": (b"[default]\nregion = eu-west-1\n", folders.aws_dir / "config"),
    }
    for name, (data, _) in uploads.items():
        folders.upload(name, data)
    off = run_cli("sync", *folders.args())
    assert off.returncode == 0
    assert not any(destination.exists() for _, destination in uploads.values()), "published with its route off"
    assert not any(f"route={name}" in off.stderr for name in uploads)
    on = run_cli("sync", *folders.args(), CONFIG_ROUTES)
    assert on.returncode == 0, on.stderr
    for name, (data, destination) in uploads.items():
        assert f"published route={name}" in on.stderr and f"configuration route {name} is on" in on.stderr
        assert destination.read_bytes() == data
    by_variable = run_cli("sync", *folders.args(), env={"CREDSYNC_CONFIG_ROUTES": "settings.json"})
    assert by_variable.returncode == 0 and "unchanged route=settings.json" in by_variable.stderr
    assert "route=.claude.json" not in by_variable.stderr
    unknown = run_cli("sync", *folders.args(), "--config-routes=settings.json,hooks.json")
    assert unknown.returncode == 2 and "CREDSYNC_CONFIG_ROUTES (--config-routes)" in unknown.stderr


def test_the_retired_allow_commands_setting_stops_the_start(folders: Folders) -> None:
    """Ignoring it would silently refuse what an operator meant to allow; honouring it would
    silently keep the old, narrower meaning. Either way the start fails, naming the new one."""
    for value in ("true", "false"):
        result = run_cli("sync", *folders.args(), env={"CREDSYNC_ALLOW_COMMANDS": value})
        assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
        assert "CREDSYNC_ALLOW_COMMANDS is gone: use CREDSYNC_TRUST_UPLOADER" in result.stderr
    assert run_cli("sync", *folders.args(), "--allow-commands=true").returncode == 2
