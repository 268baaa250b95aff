"""A real Swarm of three Docker Engines on this machine (scripts/swarm-lab: each its own dockerd,
data root and network namespace) with a consumer service on every node and credsync's stack
file deployed as shipped. The Swarm tests and `python -m bench.swarm` both stand on it."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import string
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.docker_env import BUSYBOX_IMAGE
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parent.parent
LAB = ["bash", str(REPO / "scripts" / "swarm-lab")]
NODES = ("csw1", "csw2", "csw3")
MANAGER = NODES[0]
CONSUMER_SERVICE = "hub_webhook"
# As Dokploy names a stack app (`<name>-<6 random characters>`) and deploys it under that name:
# the intake must find its own stack's `deliver` by its stack's name, whatever that is.
STACK = "credsync-" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(6))
INTAKE_SERVICE, DELIVER_SERVICE = f"{STACK}_intake", f"{STACK}_deliver"
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


def containers_of(node: str, service: str, *, every: bool = False) -> list[str]:
    """The node's containers of a Swarm service, newest first; `every`: stopped ones too."""
    listed = ["-a"] if every else []
    label = f"label=com.docker.swarm.service.name={service}"
    return docker(node, "ps", *listed, "-q", "--no-trunc", "--filter", label).split()


def container_log(node: str, container: str) -> str:
    """What the container wrote, as `docker logs` replays it (credsync logs to stderr); nothing
    for a container Swarm removed meanwhile (it keeps a few old tasks per slot)."""
    done = subprocess.run(
        ["docker", "-H", socket_of(node), "logs", container], capture_output=True, text=True, timeout=60, check=False
    )
    return done.stderr


def intake_log() -> str:
    """Every intake task's log, oldest task first (one may have been killed and replaced)."""
    containers = containers_of(MANAGER, INTAKE_SERVICE, every=True)
    assert containers, "no intake task on the manager"
    return "".join(container_log(MANAGER, container) for container in reversed(containers))  # newest first


def json_lines(log: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def hups(node: str) -> int:
    """HUPs the node's consumer task has caught, as it wrote them to its volume."""
    said = docker(node, "run", "--rm", "-v", "hub_signals:/sig", BUSYBOX_IMAGE, "cat", "/sig/signals", check=False)
    return said.count("HUP")


def lab(*args: str, timeout: float = 300) -> None:
    subprocess.run([*LAB, *args], check=True, timeout=timeout)


@contextlib.contextmanager
def deployed(image: str, uploads: Path, stack_dir: Path, workdir: Path) -> Iterator[None]:
    """The lab up with `image` and the tests' busybox on every node, the consumer stack `hub` and
    credsync's stack (`stack_dir`'s docker-stack.credsync.yml, with the notify layer: the
    consumer's tasks catch HUP) watching `uploads`; down after."""
    lab("up")
    try:
        lab("load", image, BUSYBOX_IMAGE, timeout=600)
        stack = workdir / "hub.yml"
        stack.write_text(CONSUMER_STACK % BUSYBOX_IMAGE)
        docker(MANAGER, "stack", "deploy", "--resolve-image", "never", "-c", str(stack), "hub")
        environment = {
            **os.environ,
            "DOCKER_HOST": socket_of(MANAGER),
            "CREDSYNC_IMAGE": image,
            "CREDSYNC_UPLOADS": str(uploads),
            "CREDSYNC_NOTIFY_TARGET": "hub/webhook",
            "CREDSYNC_DOCKER_SOCKET": "/run/credsync-swarm/{{.Node.Hostname}}.sock",
            "CREDSYNC_DELIVER_SOCKET": "/run/credsync-swarm/{{.Node.Hostname}}.sock",
        }
        deploy = ["docker", "stack", "deploy", "--prune", "--resolve-image", "never"]
        subprocess.run(
            [*deploy, "-c", "docker-stack.credsync.yml", "-c", "docker-stack.notify.yml", STACK],
            cwd=stack_dir,
            env=environment,
            check=True,
            timeout=120,
            capture_output=True,
        )
        wait_until(lambda: all(containers_of(node, CONSUMER_SERVICE) for node in NODES), timeout=60, interval=1)
        yield
    finally:
        subprocess.run([*LAB, "down"], check=False, timeout=300)
