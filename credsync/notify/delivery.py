"""Delivering one notification to one container, and checking it survived: still running,
same start time, same restart count, no `die` event during the grace period."""

from __future__ import annotations

import json
import shlex
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import docker
from docker.models.containers import Container


class DeliveryFailed(Exception):
    """The consumer was told but is not well: never retried, an operator must look."""


@dataclass(frozen=True)
class Snapshot:
    container_id: str
    name: str
    started_at: str
    restart_count: int

    @classmethod
    def of(cls, container: Container) -> Snapshot:
        """From a freshly fetched container (no extra inspect)."""
        return cls(
            str(container.id),
            str(container.name),
            str(container.attrs["State"]["StartedAt"]),
            int(container.attrs["RestartCount"]),
        )


def send_signal(container: Container, signal_name: str) -> None:
    container.kill(signal=signal_name)  # a name, never None: the SDK turns None into SIGKILL


def run_exec(container: Container, command: str, timeout_s: float) -> None:
    """Run the command inside the target; its time limit is kept here, not by a `timeout`
    program the consumer's image may lack (busybox without it, distroless)."""
    api = container.client.api if container.client is not None else None
    if api is None:
        raise DeliveryFailed("no Docker client to run the exec command")
    exec_id = api.exec_create(container.id, shlex.split(command), stdout=True, stderr=True)["Id"]
    output = ExecOutput(api, exec_id)
    if not output.finished.wait(timeout_s):
        raise DeliveryFailed(f"exec command still running after {timeout_s:g}s (CREDSYNC_NOTIFY_TIMEOUT_S)")
    if output.error is not None:
        raise output.error
    exit_code = api.exec_inspect(exec_id).get("ExitCode")
    if exit_code != 0:
        # The output is not logged: a consumer's command may print anything, secrets included.
        raise DeliveryFailed(f"exec command exited {exit_code} ({output.size} bytes of output not shown)")


class ExecOutput:
    """Drains an exec's output on a thread of its own, counting bytes and keeping none, so the
    caller can stop waiting at its deadline."""

    def __init__(self, api: docker.APIClient, exec_id: str) -> None:
        self.size = 0
        self.error: Exception | None = None
        self.finished = threading.Event()
        threading.Thread(target=self._drain, args=(api, exec_id), name="credsync-exec", daemon=True).start()

    def _drain(self, api: docker.APIClient, exec_id: str) -> None:
        try:
            for chunk in api.exec_start(exec_id, stream=True):
                self.size += len(chunk)
        except Exception as error:  # reported by the caller, on its own thread
            self.error = error
        finally:
            self.finished.set()


def post_http(url: str, body: dict[str, Any], timeout_s: float) -> int:
    request = urllib.request.Request(  # noqa: S310 - the operator's own URL, http(s) only by validation
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an environment proxy
    try:
        with opener.open(request, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        if error.code >= 500:
            raise ConnectionError(f"HTTP {error.code} from the notify URL") from None  # retried
        raise DeliveryFailed(f"HTTP {error.code} from the notify URL") from None


def verify_survived(client: docker.DockerClient, before: Snapshot, delivered_at: float, grace_s: float) -> None:
    """Watch the target's events from delivery for the grace period, then compare its state."""
    if grace_s > 0:
        # The API takes fractional seconds as text; the stubs only know int and datetime.
        events = client.events(  # type: ignore[call-overload]
            since=f"{delivered_at:.9f}",
            until=f"{delivered_at + grace_s:.9f}",
            filters={"container": before.container_id, "event": ["die", "restart", "oom"]},
            decode=True,
        )
        for event in events:
            raise DeliveryFailed(
                f"container {before.name} reported '{event.get('status', 'die')}' after the notification"
            )
    try:
        container = client.containers.get(before.container_id)
    except docker.errors.NotFound:
        raise DeliveryFailed(f"container {before.name} is gone after the notification") from None
    after = Snapshot.of(container)
    if (after.started_at, after.restart_count) != (before.started_at, before.restart_count):
        raise DeliveryFailed(f"container {before.name} restarted after the notification")
    if container.status != "running":
        raise DeliveryFailed(f"container {before.name} is {container.status} after the notification")
