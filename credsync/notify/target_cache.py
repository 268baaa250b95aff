"""The notify target, known before an upload arrives: its running containers and, for a signal,
whether each one's receiver catches it. Kept true by the Engine's event stream: a start, die,
destroy, rename, pause or unpause of a container that is or could be the target drops what is
known, and it is found again. Without a live stream nothing is kept: every notification then
resolves afresh, as it would with no cache.

A verdict read through `docker exec` (about 55 ms each) is kept only when it is "catches" and
the container has been up for STARTUP_S: a process that is still starting may not have
installed its handler yet, and a refusal is re-checked at every notification. Read from the
host's /proc (about 0.1 ms) a verdict is never kept."""

from __future__ import annotations

import re
import threading
import time
from calendar import timegm
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import docker
from docker.models.containers import Container

from credsync.container_env import current_container_id
from credsync.notify.delivery import Snapshot
from credsync.notify.proc_readers import ExecProc, HostProc, reader_for
from credsync.notify.procstatus import ProcReadError, Verdict, receiver_verdict
from credsync.notify.targets import TargetSpec, project_and_service, resolve

WATCHED_ACTIONS = ("start", "die", "destroy", "rename", "pause", "unpause")
STARTUP_S = 10.0  # a verdict is not kept for a container younger than this: handlers are being installed
RECONNECT_S = 2.0
DOCKER_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)")


@dataclass(frozen=True)
class Target:
    container: Container
    before: Snapshot
    verdict: Verdict | None  # kept from the last look; None: read it at the notification
    shares_pid_namespace: bool = False  # credsync runs in the target's PID namespace


class TargetCache:
    def __init__(
        self,
        client: Callable[[], docker.DockerClient],
        spec: TargetSpec,
        project: Callable[[docker.DockerClient], str | None],
        signal_name: str | None,
        changed: Callable[[], None],
        *,
        reader: Callable[..., HostProc | ExecProc] = reader_for,
        startup_s: float = STARTUP_S,
    ) -> None:
        """`project(client)` is the compose project of a service target; `signal_name` None for
        exec and HTTP; `changed()` is called from the event thread when what is known was dropped."""
        self._client = client
        self._spec = spec
        self._project = project
        self._signal_name = signal_name
        self._changed = changed
        self._reader = reader
        self._startup_s = startup_s
        self._lock = threading.Lock()
        self._known: list[Target] | None = None
        self._pid_mode: str | None = None
        self._generation = 0
        self._live = False
        self._stopping = threading.Event()
        self._stream: Any = None
        self._thread = threading.Thread(target=self._follow, name="credsync-target-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.close()  # ends the blocking read on the event thread
        self._thread.join(timeout=0.5)

    @property
    def warm(self) -> bool:
        """Whether the next notification can go without asking the Engine first."""
        with self._lock:
            return not self._live or self._known is not None

    def forget(self) -> None:
        """A delivery failed or was refused: look again next time."""
        with self._lock:
            self._known = None
            self._generation += 1

    def targets(self) -> list[Target]:
        """The running targets. Known ones as kept; otherwise resolved now (Docker errors
        propagate to the caller, who retries)."""
        with self._lock:
            if self._live and self._known is not None:
                return self._known
            generation = self._generation
        client = self._client()
        if self._pid_mode is None:  # fixed when credsync's container was created: looked up once
            self._pid_mode = own_pid_mode(client)
        pid_mode = self._pid_mode
        found = [
            self._look_at(container, pid_mode == f"container:{container.id}")
            for container in resolve(client, self._spec, self._project(client))
        ]
        with self._lock:
            if self._live and generation == self._generation:
                self._known = found
        return found

    def reader(self, target: Target) -> HostProc | ExecProc:
        """Where the target's /proc is read: our own /proc if it shows the process, else `docker exec`."""
        return self._reader(target.container, shares_pid_namespace=target.shares_pid_namespace)

    def verdict(self, target: Target) -> Verdict:
        """Whether the target's receiver catches the signal: as kept, else read now."""
        if target.verdict is not None:
            return target.verdict
        return receiver_verdict(self.reader(target), self._signal_name or "SIGHUP")

    def _look_at(self, container: Container, shares_pid_namespace: bool) -> Target:
        target = Target(container, Snapshot.of(container), None, shares_pid_namespace)
        if self._signal_name is None:
            return target
        reader = self.reader(target)
        if not isinstance(reader, ExecProc) or not settled(target.before.started_at, time.time(), self._startup_s):
            return target
        try:
            verdict = receiver_verdict(reader, self._signal_name)
        except ProcReadError:  # no `cat` in the image, say: read (and said) at the notification
            return target
        return Target(container, target.before, verdict if verdict.catches else None, shares_pid_namespace)

    def _follow(self) -> None:
        while not self._stopping.is_set():
            try:
                stream = self._client().events(
                    filters={"type": "container", "event": list(WATCHED_ACTIONS)}, decode=True
                )
            except Exception:  # DockerException, or requests' own errors once the client exists
                self._stopping.wait(RECONNECT_S)
                continue
            with self._lock:  # subscribed: from here on no change goes unseen
                self._stream, self._live = stream, True
                self._drop()
            if self._stopping.is_set():  # stop() came before the stream was there to close
                stream.close()
            self._changed()
            try:
                for event in stream:
                    if self._concerns(event):
                        with self._lock:
                            self._drop()
                        self._changed()
            except Exception:  # noqa: S110 - the stream broke or was closed; the loop decides which
                pass
            with self._lock:
                self._stream, self._live = None, False
                self._drop()
            self._stopping.wait(RECONNECT_S)

    def _drop(self) -> None:
        self._known = None
        self._generation += 1

    def _concerns(self, event: Mapping[str, Any]) -> bool:
        actor = event.get("Actor") or {}
        attributes: Mapping[str, str] = actor.get("Attributes") or {}
        with self._lock:
            known_ids = {target.before.container_id for target in self._known or ()}
        if actor.get("ID") in known_ids:
            return True
        return concerns(self._spec, str(actor.get("ID", "")), attributes)


def own_pid_mode(client: docker.DockerClient) -> str:
    """credsync's own container's PID mode (`container:<id>` when it joined another's), or ""."""
    own = current_container_id()
    if own is None:
        return ""
    try:
        return str(client.containers.get(own).attrs["HostConfig"].get("PidMode") or "")
    except docker.errors.NotFound:
        return ""


def concerns(spec: TargetSpec, container_id: str, attributes: Mapping[str, str]) -> bool:
    """Could this container be the target? By name or ID, or by its compose or stack labels."""
    if spec.container is not None:
        names = {attributes.get("name", ""), attributes.get("oldName", "").lstrip("/")}
        return spec.container in names or (len(spec.container) >= 12 and container_id.startswith(spec.container))
    found = project_and_service(attributes)
    return found is not None and found[1] == spec.service and spec.project in (None, found[0])


def settled(started_at: str, now: float, startup_s: float = STARTUP_S) -> bool:
    """Up for at least `startup_s`, by Docker's StartedAt (RFC 3339 in UTC)."""
    match = DOCKER_TIME.match(started_at)
    if match is None:
        return False
    started = timegm((*(int(part) for part in match.groups()), 0, 0, 0))
    return now - started >= startup_s
