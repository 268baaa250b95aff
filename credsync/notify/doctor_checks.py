"""The doctor's Docker checks: the engine and its socket group, the notify target and what the
signal preflight says, and the nested-container host path every Dokploy deployment needs."""

from __future__ import annotations

import os
from pathlib import Path

import docker
from docker.models.containers import Container

from credsync.check import Check
from credsync.container_env import current_container_id
from credsync.notify.notifier import describe, redact_url
from credsync.notify.proc_readers import reader_for
from credsync.notify.procstatus import NO_HANDLER_FIX, ProcReadError, receiver_verdict
from credsync.notify.target_cache import own_pid_mode
from credsync.notify.targets import own_compose_project, parse_target, resolve
from credsync.settings import Settings


def docker_checks(settings: Settings) -> list[Check]:
    host = settings.docker_host
    try:
        client = docker.DockerClient(base_url=host, version="auto", timeout=10)
        client.ping()
    except docker.errors.DockerException as error:
        fix = f"{describe(error)}; mount /var/run/docker.sock (sidecar) or set CREDSYNC_DOCKER_HOST"
        return [Check(False, f"Docker Engine at {host} is reachable", fix)]
    socket = host.removeprefix("unix://") if host.startswith("unix://") else None
    group = f"; its socket's group is {os.stat(socket).st_gid} (the webhook's group_add)" if socket else ""
    own = own_container(client)
    return [
        Check(True, f"Docker Engine at {host} is reachable{group}"),
        *notify_checks(client, settings, own),
        *host_path_checks(client, settings, own),
    ]


def own_container(client: docker.DockerClient) -> Container | None:
    container_id = current_container_id()
    if container_id is None:
        return None
    try:
        return client.containers.get(container_id)
    except docker.errors.NotFound:
        return None


def notify_checks(client: docker.DockerClient, settings: Settings, own: Container | None) -> list[Check]:
    if not settings.notifies:
        return [Check(True, "no notify target: credsync publishes without telling anyone")]
    if settings.notify == "http" and settings.notify_target is None:
        return [Check(True, f"notifies by HTTP POST to {redact_url(str(settings.notify_url))}")]
    assert settings.notify_target is not None
    spec = parse_target(settings.notify_target)
    own_project = own_compose_project(client) if spec.service and spec.project is None and own else None
    targets = resolve(client, spec, own_project)
    if not targets:
        return [
            Check(
                False,
                f"notify target {spec.describe()} has a running container",
                "start it, or fix CREDSYNC_NOTIFY_TARGET",
            )
        ]
    if settings.notify in ("exec", "http"):
        return [
            Check(
                True, f"notify target {spec.describe()}: {', '.join(str(c.name) for c in targets)} ({settings.notify})"
            )
        ]
    pid_mode = own_pid_mode(client)
    return [signal_check(container, settings, pid_mode == f"container:{container.id}") for container in targets]


def signal_check(container: Container, settings: Settings, shares_pid_namespace: bool) -> Check:
    what = f"notify target {container.name}: "
    try:
        reader = reader_for(container, shares_pid_namespace=shares_pid_namespace)
        verdict = receiver_verdict(reader, settings.notify_signal)
    except ProcReadError as error:
        return Check(
            False, what + "signal preflight", f"{error}; the target needs `cat`, or use CREDSYNC_NOTIFY=exec/http"
        )
    if verdict.catches:
        return Check(True, what + verdict.explanation)
    if settings.notify == "auto":
        return Check(True, what + verdict.explanation + "; auto mode publishes without signalling")
    return Check(False, what + verdict.explanation, NO_HANDLER_FIX)


def host_path_checks(client: docker.DockerClient, settings: Settings, own: Container | None) -> list[Check]:
    """Consumers that start nested containers hand them *host* paths (claude-hub: the Claude
    volume as CLAUDE_AUTH_HOST_DIR, the sessions volume as HOST_SESSIONS_DIR): each must be the
    real mountpoint of the volume it names, not a path inside some container."""
    claude_volumes = volumes_behind(client, settings.claude_dir, own)
    checks = []
    for container in client.containers.list():
        if own is not None and container.id == own.id:
            continue
        told = dict(item.split("=", 1) for item in container.attrs["Config"].get("Env") or [] if "=" in item)
        mounts = [mount for mount in container.attrs.get("Mounts", []) if mount.get("Type") == "volume"]
        for variable, container_path in settings.host_path_variables:
            if variable not in told:
                continue
            for mount in mounts:
                if container_path is None:
                    mountpoint = claude_volumes.get(str(mount.get("Name")))
                else:
                    mountpoint = str(mount["Source"]) if mount.get("Destination") == container_path else None
                if mountpoint is None:
                    continue
                what = f"{container.name}: {variable} is the host path of volume {mount['Name']}"
                if os.path.normpath(told[variable]) == os.path.normpath(mountpoint):
                    checks.append(Check(True, what))
                else:
                    checks.append(Check(False, what, f"it is {told[variable]}; set {variable}={mountpoint}"))
    return checks


def volumes_behind(client: docker.DockerClient, folder: Path, own: Container | None) -> dict[str, str]:
    """Volume name → host mountpoint, for the volume that holds `folder` (none in local mode)."""
    if own is not None:  # sidecar: our own mounts say which volume is behind the folder
        return {
            str(mount["Name"]): str(mount["Source"])
            for mount in own.attrs.get("Mounts", [])
            if mount.get("Type") == "volume" and folder.is_relative_to(Path(mount["Destination"]))
        }
    found = {}
    for volume in client.volumes.list():  # host mode: the folder is inside a volume's mountpoint
        mountpoint = Path(str(volume.attrs.get("Mountpoint", "")))
        if folder.is_relative_to(mountpoint):
            found[str(volume.name)] = str(mountpoint)
    return found
