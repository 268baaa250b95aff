"""Which containers to notify: found again at every notification, so a recreated container is
reached by its new ID. Compose services and Swarm stack services are found by their labels (a
Swarm task asks its own node's Engine, so it finds the consumer's tasks on its own node)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import docker
from docker.models.containers import Container

from credsync.container_env import current_container_id
from credsync.errors import ConfigError

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
ONEOFF_LABEL = "com.docker.compose.oneoff"
STACK_LABEL = "com.docker.stack.namespace"
SWARM_SERVICE_LABEL = "com.docker.swarm.service.name"  # "<stack>_<service>"


@dataclass(frozen=True)
class TargetSpec:
    container: str | None = None  # a name or ID
    project: str | None = None  # None with a service: credsync's own compose project
    service: str | None = None
    pid: int | None = None  # a process in credsync's own PID namespace: no Engine involved

    def describe(self) -> str:
        if self.pid is not None:
            return f"pid:{self.pid}"
        if self.container is not None:
            return self.container
        return f"{self.project or '<own project>'}/{self.service}"


def parse_target(text: str) -> TargetSpec:
    text = text.strip()
    if text.startswith("pid:"):
        number = text.removeprefix("pid:")
        if not (number.isascii() and number.isdigit() and int(number) > 0):
            raise ConfigError("CREDSYNC_NOTIFY_TARGET pid:N needs a process number, e.g. pid:1")
        return TargetSpec(pid=int(number))
    if text.startswith("service:"):
        service = text.removeprefix("service:")
        if not service:
            raise ConfigError("CREDSYNC_NOTIFY_TARGET service:NAME needs a service name")
        return TargetSpec(service=service)
    project, slash, service = text.partition("/")
    if slash:
        if not (project and service):
            raise ConfigError("CREDSYNC_NOTIFY_TARGET PROJECT/SERVICE needs both parts")
        return TargetSpec(project=project, service=service)
    if not text:
        raise ConfigError("CREDSYNC_NOTIFY_TARGET is empty")
    return TargetSpec(container=text)


def own_compose_project(client: docker.DockerClient) -> str:
    container_id = current_container_id()
    if container_id is None:
        raise ConfigError("service:NAME works only when credsync runs in a compose project; use PROJECT/SERVICE")
    labels = client.containers.get(container_id).labels
    project = labels.get(PROJECT_LABEL) or labels.get(STACK_LABEL)
    if not project:
        raise ConfigError("credsync's container has no compose project or stack label; use PROJECT/SERVICE or a name")
    return str(project)


def project_and_service(labels: Mapping[str, str]) -> tuple[str, str] | None:
    """The compose project and service of a container, or its Swarm stack and service; None for
    a one-off `compose run` container or one of neither."""
    if labels.get(ONEOFF_LABEL, "False") == "True":
        return None
    if PROJECT_LABEL in labels and SERVICE_LABEL in labels:
        return labels[PROJECT_LABEL], labels[SERVICE_LABEL]
    stack, swarm_service = labels.get(STACK_LABEL), labels.get(SWARM_SERVICE_LABEL, "")
    if stack and swarm_service.startswith(stack + "_"):
        return stack, swarm_service.removeprefix(stack + "_")
    return None


def resolve(client: docker.DockerClient, spec: TargetSpec, own_project: str | None) -> list[Container]:
    """Running containers of the target, one-off `compose run` containers left out."""
    if spec.container is not None:
        try:
            container = client.containers.get(spec.container)
        except docker.errors.NotFound:
            return []
        return [container] if container.status == "running" else []
    project = spec.project or own_project
    found = []
    for labels in (
        [f"{PROJECT_LABEL}={project}", f"{SERVICE_LABEL}={spec.service}"],
        [f"{STACK_LABEL}={project}", f"{SWARM_SERVICE_LABEL}={project}_{spec.service}"],
    ):
        found += client.containers.list(filters={"label": labels, "status": "running"})
    return [container for container in found if project_and_service(container.labels) == (project, spec.service)]
