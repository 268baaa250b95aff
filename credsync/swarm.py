"""Beyond one host, through Docker Swarm itself, not a replication of credsync's own.

On a manager, credsync publishes each upload into a private staging folder as usual (read
safely, validated, decided, in the ledger), then stores every staged file as a Swarm secret
(encrypted in the Raft log, sent only to the nodes that run a task using it, on tmpfs) and
points the global delivery service at the new secrets. Swarm rolls that service's tasks under
the service's own update config (the stack file's: every node at once); each task is
`credsync watch` with /run/secrets as its source, publishing into its node's volume and
notifying the consumers on its node.

The state is the staged files: `converge` makes the service spec name their secrets, whatever
happened before (a crash mid-roll, a stack redeployed with no secrets), and removes the secrets
no spec and no running task uses any more.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import docker
import requests
from loguru import logger

from credsync.backoff import retry_delay_s
from credsync.errors import PublishError
from credsync.hashes import short_hash
from credsync.intake import SWARM_SECRET_CAP
from credsync.notify.notifier import describe
from credsync.notify.targets import own_compose_project
from credsync.publisher import ensure_private_folder, read_current
from credsync.routes import Route, RouteTable
from credsync.settings import Settings

MANAGED_LABEL = "io.credsync.managed"
TARGET_LABEL = "io.credsync.target"  # the file name in a delivery task's /run/secrets
SHA_LABEL = "io.credsync.sha256"
SECRET_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
PRUNE_EVERY_S = 30.0  # secrets of tasks still rolling are removed at a later look
ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException, OSError)
# types-docker leaves APIClient's Swarm calls untyped (their version decorator): those lines
# say so with `type: ignore[no-untyped-call]`.


def delivery_name(route: Route, settings: Settings) -> str:
    """The file name of a route's secret in a delivery task's /run/secrets, which is that task's
    upload name: a Claude file by its own name, an AWS file as aws__NAME, any other by the route."""
    if route.destination.is_relative_to(settings.claude_dir):
        return route.destination.relative_to(settings.claude_dir).as_posix().replace("/", "__")
    if settings.aws_dir is not None and route.destination.is_relative_to(settings.aws_dir):
        return "aws__" + route.destination.relative_to(settings.aws_dir).as_posix().replace("/", "__")
    return route.slug


def secret_name(target: str, sha256: str) -> str:
    """`credsync-<target>-<sha12>`: Swarm's name rules, 64 characters at most."""
    stem = SECRET_NAME_UNSAFE.sub("-", target.lstrip("."))[:40]
    return f"credsync-{stem}-{short_hash(sha256)}"


@dataclass(frozen=True)
class Staged:
    target: str
    path: Path


class SwarmRoller:
    """Takes the notifier's place on a manager: told when a staged file changed, it converges
    the delivery service on its own thread (after the debounce, so a burst is one roll)."""

    def __init__(self, settings: Settings, routes: RouteTable) -> None:
        """Creates the staging folders (the routes' destinations on a manager), private to credsync."""
        self.settings = settings
        for folder in routes.destination_dirs():
            ensure_private_folder(folder)
        by_path = {route.destination: delivery_name(route, settings) for route in routes}
        self.staged = [Staged(target, path) for path, target in sorted(by_path.items())]
        self._due = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._too_large_said: set[str] = set()  # hashes of staged files said too large for a secret

    def changed(self, _route: str, _sha256: str) -> None:
        self._due.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="credsync-swarm", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._due.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.notify_timeout_s)

    def _run(self) -> None:
        failures = 0
        wait_s = 0.0  # converge at start: a roll may have been cut short
        while not self._stopping.is_set():
            if self._due.wait(wait_s):
                self._due.clear()
                if self._stopping.wait(self.settings.debounce_ms / 1000):
                    return
            try:
                with connect(self.settings.docker_host) as client:
                    name = resolve_service(client, self.settings.swarm_service or "")
                    converge(client.api, name, self.staged, self.settings.max_bytes, self._too_large_said)
            except Exception as error:  # the Engine's, or a surprise: this thread must go on
                failures += 1
                wait_s = retry_delay_s(failures)
                problem = describe(error) if isinstance(error, ENGINE_ERRORS) else type(error).__name__
                logger.bind(service=self.settings.swarm_service).error(
                    f"cannot roll the delivery service: {problem}; retrying in {wait_s:.1f}s"
                )
                continue
            failures, wait_s = 0, PRUNE_EVERY_S


@contextlib.contextmanager
def connect(docker_host: str) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=docker_host, version="auto", timeout=30)
    try:
        yield client
    finally:
        client.close()


def resolve_service(client: docker.DockerClient, name: str) -> str:
    """The setting as given, or as a service of credsync's own stack (`deliver` → `<stack>_deliver`)."""
    if any(found["Spec"]["Name"] == name for found in client.api.services(filters={"name": name})):  # type: ignore[no-untyped-call]
        return name
    return f"{own_compose_project(client)}_{name}"


def converge(
    client: docker.APIClient,
    service_name: str,
    staged: list[Staged],
    max_bytes: int,
    too_large_said: set[str],
) -> None:
    """One look: a secret for each staged file, the service naming them, unused ones gone.
    `too_large_said`: hashes of staged files already said to be too large for a secret."""
    service = client.inspect_service(service_name)  # type: ignore[no-untyped-call]
    wanted: dict[str, dict[str, Any]] = {}
    for item in staged:
        try:
            data = read_current(item.path, max_bytes)
        except PublishError:  # its staging folder is unreadable: said by the pipeline's publish
            data = None
        if data is None:
            continue
        if len(data) > SWARM_SECRET_CAP.max_bytes:
            # Staged where the intake did not refuse it (an older version, `credsync sync`):
            # SwarmKit would refuse the secret, and with it this whole look. Its nodes keep the
            # secret they have; the other files roll on.
            say_too_large(item, data, too_large_said)
            continue
        wanted[item.target] = ensure_secret(client, item.target, data)
    template = service["Spec"]["TaskTemplate"]
    current = template["ContainerSpec"].get("Secrets") or []
    kept = [ref for ref in current if ref.get("File", {}).get("Name") not in wanted]
    desired = kept + [reference(secret, target) for target, secret in sorted(wanted.items())]
    if ids(desired) != ids(current):
        new_template = {**template, "ContainerSpec": {**template["ContainerSpec"], "Secrets": desired}}
        client.update_service(
            service["ID"], service["Version"]["Index"], task_template=new_template, fetch_current_spec=True
        )
        rolled = {target: secret["Spec"]["Labels"][SHA_LABEL][:12] for target, secret in wanted.items()}
        logger.bind(service=service_name, secrets=rolled).info("rolling the delivery service")
    prune(client, client.inspect_service(service_name))  # type: ignore[no-untyped-call]


def say_too_large(item: Staged, data: bytes, said: set[str]) -> None:
    sha256 = hashlib.sha256(data).hexdigest()
    if sha256 not in said:
        said.add(sha256)
        logger.bind(target=item.target, sha=short_hash(sha256), bytes=len(data)).error(
            f"not stored as a Swarm secret: {SWARM_SECRET_CAP.set_by}; upload a smaller file"
        )


def ensure_secret(client: docker.APIClient, target: str, data: bytes) -> dict[str, Any]:
    sha256 = hashlib.sha256(data).hexdigest()
    name = secret_name(target, sha256)
    for secret in client.secrets(filters={"name": name}):
        if secret["Spec"]["Name"] == name:
            return dict(secret)
    labels = {MANAGED_LABEL: "true", TARGET_LABEL: target, SHA_LABEL: sha256}
    created = client.create_secret(name, data, labels=labels)
    logger.bind(target=target, sha=short_hash(sha256)).info("stored as a Swarm secret")
    return dict(client.inspect_secret(created["ID"]))


def reference(secret: dict[str, Any], target: str) -> dict[str, Any]:
    """Root-only in the task: credsync reads it as root and publishes with the route's owner."""
    file = {"Name": target, "UID": "0", "GID": "0", "Mode": 0o400}
    return {"SecretID": secret["ID"], "SecretName": secret["Spec"]["Name"], "File": file}


def ids(references: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((ref["SecretID"], ref.get("File", {}).get("Name", "")) for ref in references)


def prune(client: docker.APIClient, service: dict[str, Any]) -> None:
    """Remove credsync's secrets that neither the spec nor a task meant to run names."""
    in_use = {ref["SecretID"] for ref in service["Spec"]["TaskTemplate"]["ContainerSpec"].get("Secrets") or []}
    for task in client.tasks(filters={"service": service["ID"], "desired-state": "running"}):  # type: ignore[no-untyped-call]
        in_use |= {ref["SecretID"] for ref in task["Spec"]["ContainerSpec"].get("Secrets") or []}
    for secret in client.secrets(filters={"label": f"{MANAGED_LABEL}=true"}):
        if secret["ID"] not in in_use:
            try:
                client.remove_secret(secret["ID"])
            except docker.errors.APIError:  # taken up again meanwhile: a later look
                continue
            logger.bind(secret=secret["Spec"]["Name"]).info("removed a superseded secret")


class FleetNode(TypedDict):
    node: str
    availability: str
    task_state: str  # of its newest delivery task; "none" before one was scheduled
    sha12_by_target: dict[str, str]
    # Running with the secrets the service names now. Swarm starts a task with a health check as
    # "running" only once healthy, and a delivery task is healthy only with no publish failing.
    in_step: bool


def fleet(client: docker.APIClient, service_name: str) -> list[FleetNode]:
    """Per node, what its delivery task holds: read from the Swarm API alone."""
    service = client.inspect_service(service_name)  # type: ignore[no-untyped-call]
    wanted = ids(service["Spec"]["TaskTemplate"]["ContainerSpec"].get("Secrets") or [])
    newest: dict[str, dict[str, Any]] = {}
    for task in client.tasks(filters={"service": service["ID"]}):  # type: ignore[no-untyped-call]
        node = task.get("NodeID", "")
        if node and task["Version"]["Index"] > newest.get(node, {"Version": {"Index": -1}})["Version"]["Index"]:
            newest[node] = task
    states: list[FleetNode] = []
    for node in client.nodes():
        task = newest.get(node["ID"])
        refs = [] if task is None else task["Spec"]["ContainerSpec"].get("Secrets") or []
        task_state = "none" if task is None else task["Status"]["State"]
        states.append(
            {
                "node": node["Description"]["Hostname"],
                "availability": f"{node['Status']['State']}/{node['Spec']['Availability']}",
                "task_state": task_state,
                "sha12_by_target": {ref["File"]["Name"]: ref["SecretName"].rsplit("-", 1)[-1] for ref in refs},
                "in_step": task_state == "running" and ids(refs) == wanted,
            }
        )
    return sorted(states, key=lambda state: state["node"])
