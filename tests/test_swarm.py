"""Beyond one host: a real Swarm of three Docker Engines on this machine (scripts/swarm-lab: each
its own dockerd, data root and network namespace), the stack file deployed as shipped, a
consumer service with a task on every node, and one real scp to the manager."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.docker_env import BUSYBOX_IMAGE
from tests.helpers import CANARY, claude_credentials, wait_until
from tests.image_build import OfflineBuild, clean_clone
from tests.sshd import SshServer

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parent.parent
LAB = ["bash", str(REPO / "scripts" / "swarm-lab")]
NODES = ("csw1", "csw2", "csw3")
IMAGE = "credsync:swarm-test"
IN_PLACE_BOUND_S = 120.0  # three nodes, one at a time, each waiting for its task's health check
CONSUMER_STACK = """
version: "3.8"
services:
  webhook:
    image: %s
    command: ["sh", "-c", "trap 'echo HUP >> /sig/signals' HUP; while :; do sleep 1 & wait $$!; done"]
    volumes: ["signals:/sig"]
    deploy: {mode: global}
volumes:
  signals:
"""


def socket_of(node: str) -> str:
    return f"unix:///run/credsync-swarm/{node}.sock"


def docker(node: str, *args: str, check: bool = True) -> str:
    done = subprocess.run(
        ["docker", "-H", socket_of(node), *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} on {node}: {done.stderr.strip()[-500:]}")
    return done.stdout


def intake_log() -> str:
    """The intake task's log lines (credsync logs to stderr, which `docker logs` replays there)."""
    container = docker("csw1", "ps", "-q", "--filter", "label=com.docker.swarm.service.name=credsync_intake").split()
    assert container, "no intake task on the manager"
    done = subprocess.run(
        ["docker", "-H", socket_of("csw1"), "logs", container[0]],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stderr


@dataclass
class Swarm:
    uploads: Path  # the sshd user's, made for this module (others' tests leave uploads in theirs)
    valid_sha12s: list[str] = field(default_factory=list)  # of every valid upload so far

    def held(self, node: str) -> tuple[str, str] | None:
        """Owner:group:mode and sha256 of the node's published .credentials.json, or None."""
        said = docker(
            node,
            "run",
            "--rm",
            "-v",
            "claude-config:/v",
            BUSYBOX_IMAGE,
            "sh",
            "-c",
            "stat -c %u:%g:%a /v/.credentials.json && sha256sum /v/.credentials.json",
            check=False,
        ).split()
        return (said[0], said[1]) if len(said) >= 2 else None

    def signals(self, node: str) -> int:
        said = docker(node, "run", "--rm", "-v", "hub_signals:/sig", BUSYBOX_IMAGE, "cat", "/sig/signals", check=False)
        return said.count("HUP")

    def consumer_containers(self, node: str) -> set[str]:
        return set(
            docker(
                node, "ps", "-q", "--no-trunc", "--filter", "label=com.docker.swarm.service.name=hub_webhook"
            ).split()
        )

    def secrets(self) -> list[str]:
        return sorted(
            docker("csw1", "secret", "ls", "--filter", "label=io.credsync.managed", "--format", "{{.Name}}").split()
        )

    def status(self) -> dict[str, object]:
        container = docker(
            "csw1", "ps", "-q", "--filter", "label=com.docker.swarm.service.name=credsync_intake"
        ).split()
        assert container, "no intake task on the manager"
        report: dict[str, object] = json.loads(docker("csw1", "exec", container[0], "credsync", "status", "--json"))
        return report


@pytest.fixture(scope="module")
def swarm(offline_build: OfflineBuild, sshd: SshServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    clone = clean_clone(tmp_path_factory.mktemp("swarm") / "clone")
    subprocess.run(
        ["docker", "build", "--quiet", *offline_build.build_args(), "--tag", IMAGE, str(clone)], check=True, timeout=600
    )
    subprocess.run([*LAB, "up"], check=True, timeout=300)
    try:
        subprocess.run([*LAB, "load", IMAGE, BUSYBOX_IMAGE], check=True, timeout=600)
        stack = tmp_path_factory.mktemp("hub") / "hub.yml"
        stack.write_text(CONSUMER_STACK % BUSYBOX_IMAGE)
        docker("csw1", "stack", "deploy", "--resolve-image", "never", "-c", str(stack), "hub")
        uploads = sshd.user.home / f"swarm-uploads-{secrets.token_hex(4)}"
        uploads.mkdir(mode=0o700)
        os.chown(uploads, sshd.user.uid, sshd.user.gid)
        environment = {
            **os.environ,
            "DOCKER_HOST": socket_of("csw1"),
            "CREDSYNC_IMAGE": IMAGE,
            "CREDSYNC_UPLOADS": str(uploads),
            "CREDSYNC_NOTIFY_TARGET": "hub/webhook",
            "CREDSYNC_DOCKER_SOCKET": "/run/credsync-swarm/{{.Node.Hostname}}.sock",
        }
        subprocess.run(
            ["docker", "stack", "deploy", "--resolve-image", "never", "-c", "docker-stack.credsync.yml", "credsync"],
            cwd=clone,
            env=environment,
            check=True,
            timeout=120,
            capture_output=True,
        )
        lab = Swarm(uploads)
        wait_until(lambda: all(lab.consumer_containers(node) for node in NODES), timeout=60, interval=1)
        yield lab
    finally:
        subprocess.run([*LAB, "down"], check=False, timeout=300)
        for leftover in sshd.user.home.glob("swarm-uploads-*"):
            shutil.rmtree(leftover, ignore_errors=True)


def upload(sshd: SshServer, swarm: Swarm, tmp_path: Path, data: bytes, *, valid: bool = True) -> None:
    """scp to the manager's upload folder; a valid upload's hash is remembered."""
    if valid:
        swarm.valid_sha12s.append(hashlib.sha256(data).hexdigest()[:12])
    local = tmp_path / "upload.json"
    local.write_bytes(data)
    sshd.scp(local, f"{swarm.uploads.name}/.credentials.json", legacy=False)


def test_one_scp_to_the_manager_reaches_every_node_once_without_restarting_a_consumer(
    swarm: Swarm, sshd: SshServer, tmp_path: Path
) -> None:
    consumers = {node: swarm.consumer_containers(node) for node in NODES}
    data = claude_credentials(serial=1)
    expected = ("1001:1001:600", hashlib.sha256(data).hexdigest())
    started = time.monotonic()
    upload(sshd, swarm, tmp_path, data)
    wait_until(lambda: all(swarm.held(node) == expected for node in NODES), timeout=IN_PLACE_BOUND_S, interval=0.5)
    in_place_s = time.monotonic() - started
    wait_until(lambda: all(swarm.signals(node) == 1 for node in NODES), timeout=30, interval=0.5)
    wait_until(lambda: fleet_in_step(swarm.status()) == len(NODES), timeout=60, interval=1)
    assert {node: swarm.signals(node) for node in NODES} == dict.fromkeys(NODES, 1), "one notification per node"
    assert {node: swarm.consumer_containers(node) for node in NODES} == consumers, "a consumer was restarted"
    assert swarm.secrets() == [f"credsync-credentials.json-{expected[1][:12]}"]
    assert CANARY not in json.dumps(swarm.status())
    print(f"upload -> every node in place: {in_place_s:.1f} s")


def test_an_invalid_upload_creates_no_secret_and_changes_no_node(swarm: Swarm, sshd: SshServer, tmp_path: Path) -> None:
    before = ({node: swarm.held(node) for node in NODES}, swarm.secrets())
    upload(sshd, swarm, tmp_path, b'{"claudeAiOauth": {"accessToken": "' + CANARY.encode() + b'"}}', valid=False)
    # The intake's decision is the event to await; a roll, had there been one, starts after it.
    wait_until(lambda: '"rejected"' in intake_log(), timeout=30, interval=0.5)
    assert ({node: swarm.held(node) for node in NODES}, swarm.secrets()) == before
    assert CANARY not in intake_log()


def test_a_new_upload_rolls_every_node_and_the_superseded_secret_goes(
    swarm: Swarm, sshd: SshServer, tmp_path: Path
) -> None:
    data = claude_credentials(serial=2)
    sha = hashlib.sha256(data).hexdigest()
    upload(sshd, swarm, tmp_path, data)
    wait_until(lambda: all(swarm.held(node) == ("1001:1001:600", sha) for node in NODES), timeout=IN_PLACE_BOUND_S)
    wait_until(lambda: swarm.secrets() == [f"credsync-credentials.json-{sha[:12]}"], timeout=90, interval=1)
    stored = [json.loads(line)["sha"] for line in intake_log().splitlines() if "stored as a Swarm secret" in line]
    assert stored == swarm.valid_sha12s, f"secrets stored for {stored}, valid uploads {swarm.valid_sha12s}"


def fleet_in_step(report: dict[str, object]) -> int:
    fleet = report.get("fleet")
    assert isinstance(fleet, dict) and "problem" not in fleet, fleet
    return sum(1 for node in fleet["nodes"] if node["in_step"])


def test_a_worker_down_during_the_upload_catches_up_when_it_returns(
    swarm: Swarm, sshd: SshServer, tmp_path: Path
) -> None:
    subprocess.run([*LAB, "stop-node", "csw3"], check=True, timeout=120)
    try:
        data = claude_credentials(serial=3)
        expected = ("1001:1001:600", hashlib.sha256(data).hexdigest())
        upload(sshd, swarm, tmp_path, data)
        wait_until(lambda: all(swarm.held(node) == expected for node in NODES[:2]), timeout=IN_PLACE_BOUND_S)
    finally:
        subprocess.run([*LAB, "start-node", "csw3"], check=True, timeout=180)
    wait_until(lambda: swarm.held("csw3") == expected, timeout=IN_PLACE_BOUND_S, interval=0.5)
    wait_until(lambda: fleet_in_step(swarm.status()) == len(NODES), timeout=90, interval=1)


def test_a_node_that_joins_later_gets_the_current_credential(swarm: Swarm) -> None:
    current = swarm.held("csw1")
    assert current is not None
    subprocess.run([*LAB, "add-node", "csw4"], check=True, timeout=300)
    wait_until(lambda: swarm.held("csw4") == current, timeout=IN_PLACE_BOUND_S, interval=0.5)
    wait_until(lambda: fleet_in_step(swarm.status()) == len(NODES) + 1, timeout=90, interval=1)
