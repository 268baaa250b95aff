"""The shipped deployment, end to end: the sidecar image built offline, the Dokploy compose
file brought up with the real docker-compose, a real scp by an unprivileged user."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from docker.models.containers import Container

from tests.docker_env import REPO
from tests.helpers import assert_no_canary, claude_credentials, wait_until
from tests.sshd import SshServer

SIDECAR_IMAGE = "credsync:test"
BASE_IMAGE = "credsync-base:bookworm"
# Docker runs a health check only every `interval`; the test shortens it, nothing else.
FAST_HEALTHCHECK = """
services:
  credsync:
    healthcheck:
      interval: 1s
      start_period: 0s
"""
CAP_CHOWN, CAP_DAC_OVERRIDE = 0, 1


@pytest.fixture(scope="session")
def sidecar_image() -> str:
    """Built the way an operator without a registry would: base image, wheels, docker build."""
    subprocess.run(["bash", str(REPO / "scripts" / "build-base-image"), BASE_IMAGE], check=True, timeout=600)
    subprocess.run(["bash", str(REPO / "scripts" / "build-image"), SIDECAR_IMAGE, BASE_IMAGE], check=True, timeout=600)
    return SIDECAR_IMAGE


@dataclass
class Stack:
    project: str
    uploads: Path
    env: dict[str, str]
    client: docker.DockerClient
    compose_files: list[str]

    def compose(self, *args: str) -> subprocess.CompletedProcess[str]:
        files = [part for name in self.compose_files for part in ("-f", name)]
        command = ["docker-compose", "-p", self.project, *files, *args]
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=300, check=True)

    def container(self, service: str) -> Container:
        labels = [f"com.docker.compose.project={self.project}", f"com.docker.compose.service={service}"]
        (found,) = self.client.containers.list(filters={"label": labels})
        return found

    def exec(self, service: str, *argv: str) -> str:
        exit_code, output = self.container(service).exec_run(list(argv))
        assert isinstance(output, bytes)
        assert exit_code == 0, f"{argv[0]} in {service} exited {exit_code}: {output.decode()[-600:]}"
        return output.decode()

    def sidecar_log(self) -> str:
        log = bytes(self.container("credsync").logs()).decode()
        assert_no_canary(log, "the sidecar's log")
        return log


@pytest.fixture
def stack(
    sidecar_image: str, webhook_image: str, docker_client: docker.DockerClient, sshd: SshServer, tmp_path: Path
) -> Iterator[Stack]:
    project = f"credsynce2e{secrets.token_hex(3)}"
    uploads = Path(sshd.user.home) / f"claude-uploads-{project}"
    uploads.mkdir(mode=0o700)
    os.chown(uploads, sshd.user.uid, sshd.user.gid)
    network = docker_client.networks.create(f"{project}-net", internal=True)  # no way out of this machine
    override = tmp_path / "fast-healthcheck.yml"
    override.write_text(FAST_HEALTHCHECK)
    env = {
        **os.environ,
        "COMPOSE_PROJECT_NAME": project,  # Compose v1 does not derive it from -p
        "WEBHOOK_IMAGE": webhook_image,
        "CREDSYNC_IMAGE": sidecar_image,
        "UPLOADS_DIR": str(uploads),
        "DOCKER_GID": str(Path("/var/run/docker.sock").stat().st_gid),
        "DOKPLOY_NETWORK": network.name or "",
    }
    stack = Stack(project, uploads, env, docker_client, [str(REPO / "docker-compose.dokploy.yml"), str(override)])
    stack.compose("up", "-d")
    try:
        yield stack
    finally:
        stack.compose("down", "-v", "--timeout", "5")
        network.remove()
        shutil.rmtree(uploads)


def healthy(container: Container) -> bool:
    container.reload()
    return bool(container.attrs["State"].get("Health", {}).get("Status") == "healthy")


def published_file(stack: Stack) -> tuple[str, str]:
    """The credential as the webhook sees it, and its owner and mode."""
    path = "/home/node/.claude/.credentials.json"
    return stack.exec("webhook", "cat", path), stack.exec("webhook", "stat", "-c", "%u:%g %a", path).strip()


def test_scp_upload_reaches_the_webhook_notified_not_restarted(stack: Stack, sshd: SshServer, tmp_path: Path) -> None:
    sidecar, webhook = stack.container("credsync"), stack.container("webhook")
    wait_until(lambda: healthy(sidecar), timeout=60)
    before = (webhook.attrs["State"]["StartedAt"], webhook.attrs["RestartCount"])

    # The sidecar runs with what the compose file promises, and nothing more.
    host_config = sidecar.attrs["HostConfig"]
    added = sorted(name.removeprefix("CAP_") for name in host_config["CapAdd"])
    assert host_config["CapDrop"] == ["ALL"] and added == ["CHOWN", "DAC_OVERRIDE"]
    assert host_config["ReadonlyRootfs"] is True and "no-new-privileges:true" in host_config["SecurityOpt"]
    assert host_config["NetworkMode"] == "none"
    status = stack.exec("credsync", "cat", "/proc/1/status")
    effective = int(next(line for line in status.splitlines() if line.startswith("CapEff:")).split()[1], 16)
    assert effective == (1 << CAP_CHOWN) | (1 << CAP_DAC_OVERRIDE)
    mounts = {mount["Destination"]: mount for mount in sidecar.attrs["Mounts"]}
    assert mounts["/uploads"]["RW"] is False

    # The webhook is told the real host path of the claude-config volume.
    volume = stack.client.volumes.get(f"{stack.project}_claude-config")
    webhook_env = dict(item.split("=", 1) for item in webhook.attrs["Config"]["Env"])
    assert webhook_env["CLAUDE_AUTH_HOST_DIR"] == volume.attrs["Mountpoint"]
    doctor = stack.exec("credsync", "credsync", "doctor").splitlines()  # exit 0: every check passes
    assert f"✓ {webhook.name}: CLAUDE_AUTH_HOST_DIR is the host path of volume {volume.name}" in doctor
    assert "✓ source /uploads is readable and mounted read-only" in doctor
    assert f"✓ notify target {webhook.name}: sh (PID 1) handles SIGHUP" in doctor

    data = claude_credentials(serial=1)
    local = tmp_path / ".credentials.json"
    local.write_bytes(data)
    sshd.scp(local, stack.uploads / ".credentials.json", legacy=False)
    assert (stack.uploads / ".credentials.json").stat().st_uid == sshd.user.uid
    started = time.monotonic()
    wait_until(lambda: "published" in stack.sidecar_log(), timeout=20)
    content, owner_mode = published_file(stack)
    assert content.encode() == data, "the webhook does not see the uploaded bytes"
    assert owner_mode == "1001:1001 600"
    assert time.monotonic() - started < 10
    wait_until(lambda: "notified" in stack.sidecar_log(), timeout=20)
    assert stack.exec("webhook", "cat", "/tmp/signals").split() == ["HUP"]
    webhook.reload()
    assert (webhook.attrs["State"]["StartedAt"], webhook.attrs["RestartCount"]) == before

    # An invalid upload changes nothing inside the webhook.
    local.write_bytes(data[: len(data) // 2])
    sshd.scp(local, stack.uploads / ".credentials.json", legacy=True)
    wait_until(lambda: "rejected" in stack.sidecar_log(), timeout=20)
    assert published_file(stack) == (data.decode(), "1001:1001 600")
    assert stack.exec("webhook", "cat", "/tmp/signals").split() == ["HUP"]

    # A restarted sidecar re-publishes nothing and sends no notification.
    inode_mtime = stack.exec("webhook", "stat", "-c", "%i %Y", "/home/node/.claude/.credentials.json")
    local.write_bytes(data)
    sshd.scp(local, stack.uploads / ".credentials.json", legacy=False)  # the good file back, unchanged
    wait_until(lambda: "unchanged" in stack.sidecar_log(), timeout=20)
    sidecar.restart(timeout=5)
    wait_until(lambda: stack.sidecar_log().count(" ready ") == 2, timeout=60)
    second_run = stack.sidecar_log().rsplit("watching source=", 1)[-1]
    assert "unchanged route=.credentials.json" in second_run
    assert "published" not in second_run and "notified" not in second_run
    wait_until(lambda: healthy(sidecar), timeout=60)
    assert stack.exec("webhook", "stat", "-c", "%i %Y", "/home/node/.claude/.credentials.json") == inode_mtime
    assert stack.exec("webhook", "cat", "/tmp/signals").split() == ["HUP"]
