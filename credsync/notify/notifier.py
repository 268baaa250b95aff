"""The notifier thread: collects publications, waits out the debounce, tells every running
container of the target once per batch, and keeps a failed notification pending with capped
backoff until it is delivered. Publishing never waits for it."""

from __future__ import annotations

import threading
import time
import urllib.error
from collections.abc import Callable, Collection, Mapping
from enum import IntEnum
from urllib.parse import urlsplit

import docker
import requests
from docker.models.containers import Container
from loguru import logger

from credsync.errors import ConfigError, printable
from credsync.events import Events
from credsync.hashes import short_hash
from credsync.notify.delivery import DeliveryFailed, Snapshot, post_http, run_exec, send_signal, verify_survived
from credsync.notify.pending import Pending
from credsync.notify.proc_readers import reader_for
from credsync.notify.procstatus import ProcReadError, receiver_verdict
from credsync.notify.targets import TargetSpec, own_compose_project, parse_target, resolve
from credsync.notify_record import write_notification
from credsync.settings import Settings


class Delivery(IntEnum):
    """The outcome of one attempt, in rising severity; a batch reports its worst target."""

    DELIVERED = 0
    SKIPPED = 1  # auto mode: the consumer does not catch the signal, so it is not sent
    FAILED = 2  # final: refused, or the consumer did not survive; an operator must look
    PENDING = 3  # Docker or the target unavailable: retried


# Worth retrying: the engine or the consumer may come back. Anything else is reported, not retried.
TRANSIENT_ERRORS = (
    docker.errors.DockerException,
    requests.exceptions.RequestException,
    urllib.error.URLError,
    ProcReadError,
    ConnectionError,
    TimeoutError,
)


OutcomeListener = Callable[[Collection[str], str], None]


class Notifier:
    def __init__(
        self, settings: Settings, events: Events | None = None, listener: OutcomeListener | None = None
    ) -> None:
        """`listener(routes, outcome)` hears every final outcome (delivered, skipped, failed)."""
        self.settings = settings
        self.events = events or Events()
        self.listener = listener
        self.mode = settings.notify
        self.spec: TargetSpec | None = parse_target(settings.notify_target) if settings.notify_target else None
        self._pending = Pending(settings.debounce_ms / 1000, settings.debounce_max_ms / 1000, time.monotonic)
        self._changed = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="credsync-notifier", daemon=True)
        self._client: docker.DockerClient | None = None
        self._own_project: str | None = None
        self._said: set[tuple[str, ...]] = set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=0.5)

    def changed(self, route: str, sha256: str) -> None:
        """A destination changed: notify after the debounce. Never blocks on Docker."""
        with self._changed:
            self._pending.add(route, sha256)
            self.events.pending_notifications(len(self._pending.changes))
            self._changed.notify()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._stopping:
                    due = self._pending.due_at()
                    if due is not None and due <= time.monotonic():
                        break
                    self._changed.wait(None if due is None else due - time.monotonic())
                if self._stopping:
                    return
                batch = self._pending.take()
            outcome = self.deliver(batch)
            with self._changed:
                if outcome is not Delivery.PENDING:
                    self._pending.delivered()
                else:
                    delay = self._pending.failed(batch)
                    logger.bind(retry_in_s=delay, routes=describe_batch(batch)).debug("notification pending")
                self.events.pending_notifications(len(self._pending.changes))

    def deliver(self, batch: Mapping[str, str]) -> Delivery:
        """One attempt at telling every target about the batch; the outcome is recorded for
        `credsync status` and counted."""
        outcome = self._attempt(batch)
        self.events.notification(outcome.name.lower())
        write_notification(self.settings.state_dir, outcome.name.lower(), describe_batch(batch))
        if self.listener is not None and outcome is not Delivery.PENDING:
            self.listener(list(batch), outcome.name.lower())
        return outcome

    def _attempt(self, batch: Mapping[str, str]) -> Delivery:
        try:
            client = self._docker()
            targets = self._targets(client)
            if self.spec is not None and not targets:
                self._say_once(
                    ("no-target",),
                    "WARNING",
                    "notification pending",
                    reason=f"no running container for {self.spec.describe()}",
                )
                return Delivery.PENDING
            if self.mode == "http":
                outcome = self._notify_http(client, targets, batch)
            else:
                outcomes = [self._notify_container(client, container, batch) for container in targets]
                outcome = max(outcomes, default=Delivery.DELIVERED)
        except TRANSIENT_ERRORS as error:
            self._client = None  # reconnect next time: the engine may have restarted
            self._say_once(
                ("unreachable", type(error).__name__), "WARNING", "notification pending", reason=describe(error)
            )
            return Delivery.PENDING
        except ConfigError as error:
            self._say_once(("config", error.reason), "ERROR", "cannot notify", reason=error.reason)
            return Delivery.FAILED
        except Exception as error:  # the notifier thread must outlive any surprise
            self._client = None
            # The type only: an unexpected error's text may quote what a container answered.
            reason = f"unexpected {type(error).__name__}"
            self._say_once(("unexpected", type(error).__name__), "ERROR", "notification pending", reason=reason)
            return Delivery.PENDING
        self._said = {key for key in self._said if key[0] == "skip"}  # a recovery may be reported again
        return outcome

    def _docker(self) -> docker.DockerClient:
        if self._client is None:
            timeout = int(self.settings.notify_timeout_s + self.settings.notify_grace_ms / 1000 + 5)
            self._client = docker.DockerClient(base_url=self.settings.docker_host, version="auto", timeout=timeout)
        return self._client

    def _targets(self, client: docker.DockerClient) -> list[Container]:
        if self.spec is None:
            return []
        if self.spec.service is not None and self.spec.project is None and self._own_project is None:
            self._own_project = own_compose_project(client)
        return resolve(client, self.spec, self._own_project)

    def _notify_container(
        self, client: docker.DockerClient, container: Container, batch: Mapping[str, str]
    ) -> Delivery:
        before = Snapshot.of(container)
        fields = {"target": before.name, "container": before.container_id[:12], "notify": self.mode}
        if self.mode == "exec":
            command, timeout_s = self.settings.notify_exec or "", self.settings.notify_timeout_s
            return self._deliver_checked(
                client, [before], batch, lambda: run_exec(container, command, timeout_s), fields
            )
        signal_name = self.settings.notify_signal
        verdict = receiver_verdict(reader_for(container), signal_name)
        if verdict.catches:
            return self._deliver_checked(client, [before], batch, lambda: send_signal(container, signal_name), fields)
        return self._refuse_signal(before, verdict.explanation)

    def _notify_http(self, client: docker.DockerClient, targets: list[Container], batch: Mapping[str, str]) -> Delivery:
        url = str(self.settings.notify_url)
        body = {"routes": [{"route": route, "sha256_prefix": short_hash(sha)} for route, sha in sorted(batch.items())]}
        snapshots = [Snapshot.of(container) for container in targets]
        fields = {"notify": "http", "url": redact_url(url)}
        return self._deliver_checked(
            client, snapshots, batch, lambda: post_http(url, body, self.settings.notify_timeout_s), fields
        )

    def _deliver_checked(
        self,
        client: docker.DockerClient,
        targets: list[Snapshot],
        batch: Mapping[str, str],
        deliver: Callable[[], object],
        fields: dict[str, str],
    ) -> Delivery:
        """Deliver, then prove every target survived; one log line for the outcome."""
        delivered_at = time.time()
        try:
            deliver()
            for before in targets:
                verify_survived(client, before, delivered_at, self.settings.notify_grace_ms / 1000)
        except DeliveryFailed as failure:
            logger.bind(**fields, reason=failure.args[0], routes=describe_batch(batch)).error("notification failed")
            return Delivery.FAILED
        logger.bind(**fields, routes=describe_batch(batch)).info("notified")
        return Delivery.DELIVERED

    def _refuse_signal(self, before: Snapshot, explanation: str) -> Delivery:
        """Never send a signal the receiver does not catch: it is ignored or it kills the consumer."""
        fix = "set CREDSYNC_NOTIFY=exec or http, or give the consumer a handler"
        key = ("skip", before.container_id, before.started_at)
        if self.mode == "auto":
            self._say_once(
                key, "WARNING", "published without notifying", target=before.name, reason=explanation, fix=fix
            )
            return Delivery.SKIPPED
        message = f"{self.settings.notify_signal} not sent"
        self._say_once(key, "ERROR", message, target=before.name, reason=explanation, fix=fix)
        return Delivery.FAILED

    def _say_once(self, key: tuple[str, ...], level: str, message: str, **fields: object) -> None:
        """A condition that persists is logged when it starts, not at every retry."""
        if key in self._said:
            return
        self._said.add(key)
        logger.bind(**fields).log(level, message)


def describe_batch(batch: Mapping[str, str]) -> str:
    return ",".join(f"{printable(route)}@{short_hash(sha)}" for route, sha in sorted(batch.items()))


def redact_url(url: str) -> str:
    """Scheme, host and path only: a URL's user info or query may carry a token."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


def describe(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__
