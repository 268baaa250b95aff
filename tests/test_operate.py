"""Operating credsync: doctor, status, /healthz and /metrics, and the consumer's own rewrites."""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from credsync.exposure import TRUSTED
from tests.docker_env import ConsumerFactory
from tests.helpers import CANARY, Folders, WatchProcess, claude_credentials, run_cli, wait_until

pytestmark = pytest.mark.system  # root, a real Docker Engine or sshd: see conftest.py

HOUR_MS = 3_600_000


@pytest.fixture
def volume(docker_client: docker.DockerClient) -> Iterator[tuple[str, Path]]:
    """A real named volume, as Dokploy makes them, and its host mountpoint."""
    created = docker_client.volumes.create(f"credsynctest{os.urandom(3).hex()}_claude-config")
    mountpoint = Path(created.attrs["Mountpoint"])
    os.chown(mountpoint, 1001, 1001)
    yield str(created.name), mountpoint
    created.remove(force=True)


def doctor(folders: Folders, *args: str) -> tuple[int, list[str]]:
    result = run_cli("doctor", f"--source={folders.source}", f"--state-dir={folders.state_dir}", *args)
    return result.returncode, result.stdout.splitlines()


def test_doctor_finds_the_wrong_host_path_and_names_the_right_one(
    folders: Folders, consumers: ConsumerFactory, volume: tuple[str, Path]
) -> None:
    name, mountpoint = volume
    wrong = consumers("sleep 100000")  # stands in for claude-hub; only its env and mounts matter
    wrong.container.remove(force=True)
    client = wrong.container.client
    assert client is not None
    mismatched = client.containers.run(
        "credsync-test/busybox:latest",
        ["sleep", "100000"],
        detach=True,
        network_mode="none",
        environment={"CLAUDE_AUTH_HOST_DIR": "/claude-auth"},
        volumes={name: {"bind": "/home/node/.claude", "mode": "rw"}},
    )
    try:
        code, lines = doctor(folders, f"--claude-dir={mountpoint}")
        assert code == 1
        failed = lines.index(f"✗ {mismatched.name}: CLAUDE_AUTH_HOST_DIR is the host path of volume {name}")
        assert lines[failed + 1] == f"    fix: it is /claude-auth; set CLAUDE_AUTH_HOST_DIR={mountpoint}"
    finally:
        mismatched.remove(force=True)
    matched = client.containers.run(
        "credsync-test/busybox:latest",
        ["sleep", "100000"],
        detach=True,
        network_mode="none",
        environment={"CLAUDE_AUTH_HOST_DIR": str(mountpoint)},
        volumes={name: {"bind": "/home/node/.claude", "mode": "rw"}},
    )
    try:
        code, lines = doctor(folders, f"--claude-dir={mountpoint}")
        assert f"✓ {matched.name}: CLAUDE_AUTH_HOST_DIR is the host path of volume {name}" in lines
        assert code == 0, lines
    finally:
        matched.remove(force=True)


def test_doctor_reports_an_unwritable_target_and_a_missing_docker_socket(folders: Folders) -> None:
    missing = folders.claude_dir / "gone"
    nowhere = "--docker-host=unix:///nonexistent/docker.sock"
    code, lines = doctor(folders, f"--claude-dir={missing}", nowhere, "--notify-target=webhook")
    assert code == 1
    assert f"✗ destination {missing} is writable and ownership can be set (1001:1001)" in lines
    assert "✗ Docker Engine at unix:///nonexistent/docker.sock is reachable" in lines
    fixes = [line for line in lines if line.startswith("    fix: ")]
    assert any("mount /var/run/docker.sock" in fix for fix in fixes) and len(fixes) == 2
    result = run_cli("doctor", f"--source={folders.source}", f"--claude-dir={missing}", "--json")
    checks = json.loads(result.stdout)
    assert {"ok", "check", "fix"} == set(checks[0]) and not all(check["ok"] for check in checks)


def test_doctor_without_a_notify_target_or_a_socket_skips_the_consumer_checks(folders: Folders) -> None:
    code, lines = doctor(folders, f"--claude-dir={folders.claude_dir}", "--docker-host=unix:///nonexistent/docker.sock")
    assert code == 0, lines
    assert "✓ publishing only: no notify target and no usable Docker socket, so no consumer checks" in lines


def status_json(folders: Folders, *args: str) -> dict[str, object]:
    result = run_cli("status", "--json", *folders.args(), *args)
    assert result.returncode == 0
    report: dict[str, object] = json.loads(result.stdout)
    return report


def test_status_after_real_uploads(folders: Folders) -> None:
    config = "--config-routes=settings.json"
    watch = WatchProcess(folders, ["--settle-ms=50", config]).ready()
    try:
        data = claude_credentials(refreshTokenExpiresAt=2_000_000_000_000)
        folders.upload(".credentials.json", data)
        line = watch.wait_for("published", route=".credentials.json")
        folders.upload("settings.json", b"[1]")
        watch.wait_for("rejected", route="settings.json")
    finally:
        watch.stop()
    report = status_json(folders, config)
    assert CANARY not in json.dumps(report)
    assert report["exposure"] == ["configuration route settings.json is on (claude-settings, allow-listed)"]
    routes = {item["route"]: item for item in report["routes"]}  # type: ignore[attr-defined]
    oauth = routes[".credentials.json"]
    assert oauth["published"]["sha256_prefix"] == line["sha"] == oauth["held"]["sha256_prefix"]
    assert oauth["held"]["owner"] == "1001:1001" and oauth["held"]["mode"] == "0600"
    assert oauth["held"]["owner_and_mode_ok"] is True
    # A login on a consumer that refreshes in throwaway copies (claude-hub's jobs): said to be one.
    shared, expiring = oauth["held"]["problems"]
    assert shared.startswith("this login's refresh token is shared with the machine it came from")
    assert expiring.startswith("the access token expires in 7h") and "claude setup-token" in expiring
    assert oauth["held"]["access_expires_ms"] == json.loads(data)["claudeAiOauth"]["expiresAt"]
    assert oauth["held"]["refresh_expires_ms"] == 2_000_000_000_000
    assert routes["settings.json"]["published"] is None, "a rejected upload is never published"
    text = run_cli("status", *folders.args(), config).stdout
    assert "published    " in text and f"sha {line['sha']}" in text and "1001:1001 0600 ✓" in text
    assert text.startswith("! configuration route settings.json is on")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - 127.0.0.1 only
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_healthz_and_metrics_follow_real_uploads(folders: Folders) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    folders.source.rmdir()  # not watching yet: unhealthy
    process = WatchProcess(
        folders, ["--settle-ms=0", f"--http=127.0.0.1:{port}", "--config-routes=settings.json"]
    ).ready()
    try:
        assert get(f"{base}/healthz")[0] == 503
        folders.source.mkdir()
        wait_until(lambda: get(f"{base}/healthz")[0] == 200, timeout=15)
        folders.upload(".credentials.json", claude_credentials(serial=1))
        process.wait_for("published")
        folders.upload("settings.json", b"{")  # its route is turned on below: rejected as not JSON
        process.wait_for("rejected")
        text = get(f"{base}/metrics")[1]
        assert metric(text, 'credsync_publications_total{outcome="published",route=".credentials.json"}') == 1
        assert metric(text, 'credsync_rejections_total{reason="not-json",route="settings.json"}') == 1
        assert metric(text, "credsync_publish_latency_seconds_count") == 1
        expiry = metric(text, 'credsync_credential_expiry_timestamp_seconds{route=".credentials.json",token="access"}')
        assert expiry > 0
        assert CANARY not in text
        assert get(f"{base}/nothing")[0] == 404
    finally:
        process.stop()


def test_a_consumer_blanking_its_refresh_token_is_reported_not_overwritten(
    folders: Folders, watch: WatchProcess
) -> None:
    folders.upload(".credentials.json", claude_credentials())
    watch.wait_for("published", route=".credentials.json")
    destination = folders.claude_dir / ".credentials.json"
    blanked = claude_credentials(refreshToken="", expires_in_ms=-HOUR_MS)
    temp = folders.claude_dir / ".credentials.json.tmp-claude"
    temp.write_bytes(blanked)
    temp.rename(destination)  # as Claude writes it: a rename onto the published file
    watch.wait_for("consumer rewrote the published file; credsync keeps its version until the next upload")
    warning = watch.wait_for(
        "the refresh token is blank: a refresh failed because the login was rotated elsewhere (another machine"
        " refreshed first); for a server, run `claude setup-token` and upload the token it prints"
        " (`credsync push --setup-token`)"
    )
    assert warning["level"] == "WARNING" and warning["problem"] == "refresh-blank"
    wait_until(lambda: status_json(folders)["routes"][0]["consumer_change"] is not None)  # type: ignore[index]
    report = status_json(folders)
    oauth = report["routes"][0]  # type: ignore[index]
    assert oauth["consumer_change"] is not None and oauth["held"]["has_refresh_token"] is False
    assert oauth["held"]["credential"] == "login with a blanked refresh token"
    assert any("claude setup-token" in problem for problem in oauth["held"]["problems"])
    text = run_cli("status", *folders.args()).stdout
    assert "consumer     rewrote it" in text and "✗ the refresh token is blank" in text
    assert destination.read_bytes() == blanked


def test_trusting_the_uploader_is_said_at_start_in_status_and_in_doctor(folders: Folders) -> None:
    """CREDSYNC_TRUST_UPLOADER lifts every allow-list: an operator who set it once and forgot
    must keep hearing about it, from every command that reads the settings."""
    plain = [f"--source={folders.source}", f"--claude-dir={folders.claude_dir}", f"--state-dir={folders.state_dir}"]
    code, lines = doctor(folders, f"--claude-dir={folders.claude_dir}", "--docker-host=unix:///nonexistent/docker.sock")
    assert code == 0 and "✓ only credentials are published, each judged by its allow-list" in lines
    assert status_json(folders)["exposure"] == []
    trusting = {"CREDSYNC_TRUST_UPLOADER": "true", "CREDSYNC_CONFIG_ROUTES": "settings.json"}
    notes = [TRUSTED, "configuration route settings.json is on (claude-settings, not allow-listed)"]
    process = WatchProcess(folders, ["--settle-ms=50"], env=trusting).ready()
    try:
        said = [(line["level"], line["message"]) for line in process.lines if line["message"] in notes]
        assert said == [("WARNING", note) for note in notes], "said once each, as warnings, at start"
        folders.upload("settings.json", b'{"apiKeyHelper": "true"}')  # what trusting lets through
        process.wait_for("published", route="settings.json")
    finally:
        process.stop()
    report = json.loads(run_cli("status", "--json", *plain, env=trusting).stdout)
    assert report["exposure"] == notes
    text = run_cli("status", *plain, env=trusting).stdout.splitlines()
    assert text[:2] == [f"! {note}" for note in notes]
    checked = run_cli("doctor", *plain, "--docker-host=unix:///nonexistent/docker.sock", env=trusting)
    assert checked.returncode == 0, checked.stdout
    assert all(f"✓ {note}" in checked.stdout.splitlines() for note in notes)
