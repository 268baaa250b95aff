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
from typing import Any

import pytest

from tests.docker_env import BUSYBOX_IMAGE
from tests.helpers import CANARY, claude_credentials, wait_until
from tests.image_build import OfflineBuild, clean_clone
from tests.sshd import SshServer
from tests.swarm_lab import (
    CONSUMER_SERVICE,
    DELIVER_SERVICE,
    INTAKE_SERVICE,
    MANAGER,
    NODES,
    containers_of,
    deployed,
    docker,
    hups,
    intake_log,
    json_lines,
    lab,
)

pytestmark = pytest.mark.system

IMAGE = "credsync:swarm-test"
IN_PLACE_BOUND_S = 120.0  # every node at once: a task start and its first health check, 10 s later


def logged(log: str, message: str) -> list[dict[str, Any]]:
    """The JSON lines of `log` that say `message`."""
    return [line for line in json_lines(log) if line.get("message") == message]


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

    def consumer_containers(self, node: str) -> set[str]:
        return set(containers_of(node, CONSUMER_SERVICE))

    def secrets(self) -> list[str]:
        return sorted(
            docker(MANAGER, "secret", "ls", "--filter", "label=io.credsync.managed", "--format", "{{.Name}}").split()
        )

    def status(self) -> dict[str, object]:
        container = containers_of(MANAGER, INTAKE_SERVICE)
        assert container, "no intake task on the manager"
        report: dict[str, object] = json.loads(docker(MANAGER, "exec", container[0], "credsync", "status", "--json"))
        return report


@pytest.fixture(scope="module")
def swarm(offline_build: OfflineBuild, sshd: SshServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    clone = clean_clone(tmp_path_factory.mktemp("swarm") / "clone")
    subprocess.run(
        ["docker", "build", "--quiet", *offline_build.build_args(), "--tag", IMAGE, str(clone)], check=True, timeout=600
    )
    uploads = sshd.user.home / f"swarm-uploads-{secrets.token_hex(4)}"
    uploads.mkdir(mode=0o700)
    os.chown(uploads, sshd.user.uid, sshd.user.gid)
    try:
        with deployed(IMAGE, uploads, clone, tmp_path_factory.mktemp("hub")):
            yield Swarm(uploads)
    finally:
        shutil.rmtree(uploads, ignore_errors=True)


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
    wait_until(lambda: all(hups(node) == 1 for node in NODES), timeout=30, interval=0.5)
    wait_until(lambda: fleet_in_step(swarm.status()) == len(NODES), timeout=60, interval=1)
    assert {node: hups(node) for node in NODES} == dict.fromkeys(NODES, 1), "one notification per node"
    assert {node: swarm.consumer_containers(node) for node in NODES} == consumers, "a consumer was restarted"
    assert swarm.secrets() == [f"credsync-credentials.json-{expected[1][:12]}"]
    assert CANARY not in json.dumps(swarm.status())
    print(f"upload -> every node in place: {in_place_s:.1f} s")


@pytest.mark.usefixtures("swarm")
def test_credsync_tasks_run_with_least_privilege() -> None:
    """Read-only root, every capability dropped but CHOWN and DAC_OVERRIDE, on every task."""
    tasks = [(MANAGER, INTAKE_SERVICE)] + [(node, DELIVER_SERVICE) for node in NODES]
    for node, service in tasks:
        container = containers_of(node, service)
        assert container, f"no {service} task on {node}"
        host = json.loads(docker(node, "inspect", container[0]))[0]["HostConfig"]
        names = [[name.removeprefix("CAP_") for name in host[key] or []] for key in ("CapDrop", "CapAdd")]
        granted = (host["ReadonlyRootfs"], names[0], sorted(names[1]))
        assert granted == (True, ["ALL"], ["CHOWN", "DAC_OVERRIDE"]), f"{service} on {node}: {granted}"


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
    stored = [line["sha"] for line in logged(intake_log(), "stored as a Swarm secret")]
    assert stored == swarm.valid_sha12s, f"secrets stored for {stored}, valid uploads {swarm.valid_sha12s}"


# What an older intake (or `credsync sync`) could have staged: SwarmKit would refuse its secret.
STAGE_TOO_LARGE = """
import os, sys
path = "/var/lib/credsync/staged/aws/credentials"
if sys.argv[1] == "stage":
    with open(path, "wb") as staged:
        staged.write(b"[default]\\n" + b"#" * (500 * 1024) + b"\\n")
    os.chmod(path, 0o600)
else:
    os.unlink(path)
"""


def test_a_file_swarmkit_would_refuse_is_rejected_at_the_intake_and_holds_back_no_other_file(
    swarm: Swarm, sshd: SshServer, tmp_path: Path
) -> None:
    """SwarmKit refuses a secret of 500 KiB or more: the intake rejects such an upload, saying
    so, and stores nothing. One staged before is left out of the roll; the other files roll on."""
    before = ({node: swarm.held(node) for node in NODES}, swarm.secrets())
    too_large = claude_credentials(serial=7)
    upload(sshd, swarm, tmp_path, too_large + b" " * (500 * 1024 - len(too_large)), valid=False)

    def refused() -> list[dict[str, Any]]:
        return [line for line in logged(intake_log(), "rejected") if "SwarmKit" in str(line.get("reason"))]

    wait_until(lambda: bool(refused()), timeout=30, interval=0.5)
    assert refused()[0]["route"] == ".credentials.json"
    assert ({node: swarm.held(node) for node in NODES}, swarm.secrets()) == before
    intake = containers_of(MANAGER, INTAKE_SERVICE)[0]
    docker(MANAGER, "exec", intake, "python", "-c", STAGE_TOO_LARGE, "stage")
    try:
        data = claude_credentials(serial=8)
        sha = hashlib.sha256(data).hexdigest()
        upload(sshd, swarm, tmp_path, data)
        wait_until(lambda: all(swarm.held(node) == ("1001:1001:600", sha) for node in NODES), timeout=IN_PLACE_BOUND_S)
        wait_until(lambda: swarm.secrets() == [f"credsync-credentials.json-{sha[:12]}"], timeout=90, interval=1)
        left_out = [line for line in json_lines(intake_log()) if "not stored as a Swarm secret" in line["message"]]
        assert [line["target"] for line in left_out] == ["aws__credentials"], "said once, naming the file"
    finally:
        docker(MANAGER, "exec", intake, "python", "-c", STAGE_TOO_LARGE, "remove")
    assert CANARY not in intake_log()


def fleet_in_step(report: dict[str, object]) -> int:
    fleet = report.get("fleet")
    assert isinstance(fleet, dict) and "problem" not in fleet, fleet
    return sum(1 for node in fleet["nodes"] if node["in_step"])


def test_a_worker_down_during_the_upload_catches_up_when_it_returns(
    swarm: Swarm, sshd: SshServer, tmp_path: Path
) -> None:
    lab("stop-node", "csw3", timeout=120)
    try:
        data = claude_credentials(serial=3)
        expected = ("1001:1001:600", hashlib.sha256(data).hexdigest())
        upload(sshd, swarm, tmp_path, data)
        wait_until(lambda: all(swarm.held(node) == expected for node in NODES[:2]), timeout=IN_PLACE_BOUND_S)
    finally:
        lab("start-node", "csw3", timeout=180)
    wait_until(lambda: swarm.held("csw3") == expected, timeout=IN_PLACE_BOUND_S, interval=0.5)
    wait_until(lambda: fleet_in_step(swarm.status()) == len(NODES), timeout=90, interval=1)


def temp_files(node: str) -> list[str]:
    """What an interrupted publish could leave in the node's volume: credsync's temp files."""
    listing = docker(node, "run", "--rm", "-v", "claude-config:/v", BUSYBOX_IMAGE, "ls", "-a", "/v")
    return [name for name in listing.split() if name.startswith(".credsync.")]


def test_killing_the_managers_credsync_mid_roll_loses_nothing(swarm: Swarm, sshd: SshServer, tmp_path: Path) -> None:
    consumers = {node: swarm.consumer_containers(node) for node in NODES}
    signals = {node: hups(node) for node in NODES}
    data = claude_credentials(serial=4)
    sha = hashlib.sha256(data).hexdigest()
    upload(sshd, swarm, tmp_path, data)

    def rolling() -> bool:
        rolls = logged(intake_log(), "rolling the delivery service")
        return any(sha[:12] in roll["secrets"].values() for roll in rolls)

    wait_until(rolling, timeout=60, interval=0.2)
    docker(MANAGER, "kill", *containers_of(MANAGER, INTAKE_SERVICE))  # SIGKILL: no clean-up of its own
    wait_until(lambda: all(swarm.held(node) == ("1001:1001:600", sha) for node in NODES), timeout=IN_PLACE_BOUND_S)
    wait_until(lambda: swarm.secrets() == [f"credsync-credentials.json-{sha[:12]}"], timeout=90, interval=1)
    wait_until(lambda: fleet_in_step(swarm.status()) == len(NODES), timeout=90, interval=1)
    assert {node: hups(node) - signals[node] for node in NODES} == dict.fromkeys(NODES, 1)
    assert {node: swarm.consumer_containers(node) for node in NODES} == consumers, "a consumer was restarted"


def test_killing_a_workers_engine_as_its_task_starts_loses_nothing(
    swarm: Swarm, sshd: SshServer, tmp_path: Path
) -> None:
    """The worker's dockerd, containerd and every process of its containers killed at once (a
    power loss) the moment its new delivery container exists: most often while its Python
    starts, before its publish; nothing here pins it to the publish itself."""
    others = NODES[:2]
    consumers = {node: swarm.consumer_containers(node) for node in others}
    signals = {node: hups(node) for node in others}
    tasks_before = set(containers_of("csw3", DELIVER_SERVICE, every=True))

    def new_delivery_task() -> bool:
        return bool(set(containers_of("csw3", DELIVER_SERVICE, every=True)) - tasks_before)

    data = claude_credentials(serial=5)
    expected = ("1001:1001:600", hashlib.sha256(data).hexdigest())
    upload(sshd, swarm, tmp_path, data)
    try:
        wait_until(new_delivery_task, timeout=IN_PLACE_BOUND_S, interval=0.05)
        lab("stop-node", "csw3", "--kill", timeout=120)
        wait_until(lambda: all(swarm.held(node) == expected for node in others), timeout=IN_PLACE_BOUND_S)
    finally:
        lab("start-node", "csw3", timeout=180)
    wait_until(lambda: swarm.held("csw3") == expected, timeout=IN_PLACE_BOUND_S, interval=0.5)
    wait_until(lambda: fleet_in_step(swarm.status()) == len(NODES), timeout=90, interval=1)
    wait_until(lambda: swarm.secrets() == [f"credsync-credentials.json-{expected[1][:12]}"], timeout=90, interval=1)
    assert temp_files("csw3") == []
    assert {node: hups(node) - signals[node] for node in others} == dict.fromkeys(others, 1)
    assert {node: swarm.consumer_containers(node) for node in others} == consumers, "a consumer was restarted"


def in_volume(node: str, command: str) -> None:
    docker(node, "run", "--rm", "-v", "claude-config:/v", BUSYBOX_IMAGE, "sh", "-ec", command)


def test_a_node_that_cannot_publish_holds_back_no_other_node_and_catches_up_once_fixed(
    swarm: Swarm, sshd: SshServer, tmp_path: Path
) -> None:
    """A folder where csw2's file should be: its new task cannot publish, so it is never healthy.
    The roll goes on (no rollback, which would publish the previous credential on the others
    again), and csw2's task is restarted until it publishes."""
    others = ("csw1", "csw3")
    signals = {node: hups(node) for node in others}
    tasks_before = set(containers_of("csw2", DELIVER_SERVICE, every=True))

    def restarted_on_csw2() -> bool:
        """Swarm failed csw2's new task (unhealthy: 3 checks 10 s apart) and started another."""
        return len(set(containers_of("csw2", DELIVER_SERVICE, every=True)) - tasks_before) >= 2

    in_volume("csw2", "rm -f /v/.credentials.json && mkdir /v/.credentials.json")
    try:
        data = claude_credentials(serial=6)
        expected = ("1001:1001:600", hashlib.sha256(data).hexdigest())
        upload(sshd, swarm, tmp_path, data)
        wait_until(lambda: all(swarm.held(node) == expected for node in others), timeout=IN_PLACE_BOUND_S)
        wait_until(restarted_on_csw2, timeout=150, interval=1)
        update = json.loads(docker(MANAGER, "service", "inspect", DELIVER_SERVICE))[0].get("UpdateStatus", {})
        assert not str(update.get("State", "")).startswith("rollback"), f"the roll went back: {update}"
        assert all(swarm.held(node) == expected for node in others), "the others were taken back"
        assert fleet_in_step(swarm.status()) == len(others)
        assert swarm.held("csw2") is None, "a folder stands where csw2's file should be"
    finally:
        in_volume("csw2", "rmdir /v/.credentials.json 2>/dev/null || true")
    wait_until(lambda: swarm.held("csw2") == expected, timeout=IN_PLACE_BOUND_S, interval=0.5)
    wait_until(lambda: fleet_in_step(swarm.status()) == len(NODES), timeout=90, interval=1)
    assert {node: hups(node) - signals[node] for node in others} == dict.fromkeys(others, 1), "downgraded"


def test_a_node_that_joins_later_gets_the_current_credential(swarm: Swarm) -> None:
    """Last: the fleet has four nodes after it."""
    current = swarm.held("csw1")
    assert current is not None
    lab("add-node", "csw4")
    wait_until(lambda: swarm.held("csw4") == current, timeout=IN_PLACE_BOUND_S, interval=0.5)
    wait_until(lambda: fleet_in_step(swarm.status()) == len(NODES) + 1, timeout=90, interval=1)
