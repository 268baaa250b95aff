"""The notifier thread: collects publications, waits out the debounce, tells every running
container of the target once per batch, and keeps a failed notification pending with capped
backoff until it is delivered. Publishing never waits for it, and the next notification never
waits for the previous one's survival check: that runs on a thread of its own."""

from __future__ import annotations

import threading
import time
import urllib.error
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from functools import partial
from urllib.parse import urlsplit

import docker
import requests
from loguru import logger

from credsync.errors import ConfigError, printable
from credsync.hashes import short_hash
from credsync.notify.delivery import DeliveryFailed, Snapshot, post_http, run_exec, send_signal, verify_survived
from credsync.notify.direct_signal import DirectUnavailable, signal_directly
from credsync.notify.own_namespace import signal_in_own_namespace
from credsync.notify.pending import Pending
from credsync.notify.proc_readers import HostProc, host_pid_belongs
from credsync.notify.procstatus import NO_HANDLER_FIX, ProcReadError, receiver_verdict
from credsync.notify.target_cache import Target, TargetCache
from credsync.notify.targets import TargetSpec, own_compose_project, parse_target
from credsync.notify_record import write_notification
from credsync.settings import Settings
from credsync.tally import Tally


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
# Survival checks running at once; one more notification waits for the oldest to end.
MAX_CHECKS = 4
WARM_RETRY_S = 5.0


OutcomeListener = Callable[[Mapping[str, str], str], None]  # (route → published hash, outcome)


@dataclass(frozen=True)
class Sent:
    """A notification that went out; `survived()` proves its targets' survival (raises
    DeliveryFailed, or a transient error when it cannot tell)."""

    survived: Callable[[], None]
    fields: dict[str, str]


@dataclass
class Attempt:
    outcome: Delivery
    sent: list[Sent] = field(default_factory=list)

    def merge(self, other: Attempt) -> Attempt:
        return Attempt(max(self.outcome, other.outcome), self.sent + other.sent)


class Notifier:
    def __init__(self, settings: Settings, tally: Tally | None = None, listener: OutcomeListener | None = None) -> None:
        """`listener(routes, outcome)` hears every final outcome (delivered, skipped, failed)."""
        self.settings = settings
        self.tally = tally or Tally()
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
        self._saying = threading.Lock()
        self._checks = threading.BoundedSemaphore(MAX_CHECKS)
        self._recording = threading.Lock()
        self._warm_retry_at = 0.0
        signal_name = settings.notify_signal if self.mode in ("signal", "auto") else None
        self.targets = (
            None
            if self.spec is None or self.spec.pid is not None
            else TargetCache(self._docker, self.spec, self._project_of, signal_name, self._poke)
        )

    def start(self) -> None:
        if self.targets is not None:
            self.targets.start()
        self._thread.start()

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify()
        if self.targets is not None:
            self.targets.stop()
        if self._thread.is_alive():
            self._thread.join(timeout=0.5)

    def changed(self, route: str, sha256: str) -> None:
        """A destination changed: notify after the debounce. Never blocks on Docker."""
        with self._changed:
            self._pending.add(route, sha256)
            self.tally.pending_notifications(len(self._pending.changes))
            self._changed.notify()

    def _poke(self) -> None:
        with self._changed:
            self._changed.notify()

    def _run(self) -> None:
        while True:
            with self._changed:
                batch = self._next_batch()
            if batch is None:
                return
            if not batch:
                self._warm()
                continue
            self._checks.acquire()  # released when this batch's survival check ends
            outcome = self.deliver(batch, wait=False)
            if outcome is not None:  # else its survival check settles it, on its own thread
                self._settle(batch, outcome)

    def _settle(self, batch: Mapping[str, str], outcome: Delivery) -> None:
        """A final outcome ends the backoff; a pending one puts the batch back, to be sent again
        after the backoff's delay."""
        with self._changed:
            if outcome is not Delivery.PENDING:
                self._pending.delivered()
            else:
                delay = self._pending.failed(dict(batch))
                logger.bind(retry_in_s=delay, routes=describe_batch(batch)).debug("notification pending")
                self._changed.notify()
            self.tally.pending_notifications(len(self._pending.changes))

    def _next_batch(self) -> dict[str, str] | None:
        """Waits (holding the condition) for a due batch; {} when the target should be looked
        at while nothing is due; None when stopping."""
        while not self._stopping:
            now = time.monotonic()
            due = self._pending.due_at()
            if due is not None and due <= now:
                return self._pending.take()
            wake_at = due
            if self.targets is not None and not self.targets.warm:
                if now >= self._warm_retry_at:
                    return {}
                wake_at = self._warm_retry_at if due is None else min(due, self._warm_retry_at)
            self._changed.wait(None if wake_at is None else wake_at - now)
        return None

    def _warm(self) -> None:
        """Find the target and read its signal handling before any upload needs it."""
        if self.targets is None:
            return
        try:
            self.targets.targets()
        except TRANSIENT_ERRORS:  # said, if it persists, by the notification that needs it
            self._client = None
            self._warm_retry_at = time.monotonic() + WARM_RETRY_S
        except Exception:  # the notification that needs it says what
            self._warm_retry_at = time.monotonic() + WARM_RETRY_S

    def deliver(self, batch: Mapping[str, str], *, wait: bool = True) -> Delivery | None:
        """One attempt at telling every target about the batch. With `wait`, the survival check
        is done before returning and the final outcome returned. Without, a check runs on a
        thread of its own, which settles the batch and releases `_checks`, and None is returned;
        when nothing was sent, `_checks` is released here. Final outcomes are recorded for
        `credsync status` and counted."""
        attempt = self._attempt(batch)  # never raises: every error is an outcome
        if wait:
            return self._conclude(batch, attempt)
        if attempt.sent:
            checking = threading.Thread(
                target=self._conclude_and_settle, args=(batch, attempt), name="credsync-survival", daemon=True
            )
            try:
                checking.start()
                return None
            except RuntimeError:  # no thread to be had: check here, as `wait` would
                pass
        try:
            return self._conclude(batch, attempt)
        finally:
            self._checks.release()

    def _conclude_and_settle(self, batch: Mapping[str, str], attempt: Attempt) -> None:
        try:
            self._settle(batch, self._conclude(batch, attempt))
        finally:
            self._checks.release()

    def _conclude(self, batch: Mapping[str, str], attempt: Attempt) -> Delivery:
        """Prove every sent-to target survived; one log line per sent notification."""
        outcome = attempt.outcome
        for sent in attempt.sent:
            try:
                sent.survived()
            except DeliveryFailed as failure:
                logger.bind(**sent.fields, reason=failure.args[0], routes=describe_batch(batch)).error(
                    "notification failed"
                )
                outcome = max(outcome, Delivery.FAILED)
            except TRANSIENT_ERRORS as error:  # survival not proved: the batch is sent and checked again
                self._forget()
                self._say_once(
                    ("unreachable", type(error).__name__), "WARNING", "notification pending", reason=describe(error)
                )
                outcome = Delivery.PENDING
            except Exception as error:  # a survival thread must not lose the batch to a surprise
                self._forget()
                reason = f"unexpected {type(error).__name__}"
                self._say_once(("unexpected", type(error).__name__), "ERROR", "notification pending", reason=reason)
                outcome = Delivery.PENDING
            else:
                logger.bind(**sent.fields, routes=describe_batch(batch)).info("notified")
        with self._recording:
            self.tally.notification(outcome.name.lower())
            write_notification(self.settings.state_dir, outcome.name.lower(), describe_batch(batch))
            if self.listener is not None and outcome is not Delivery.PENDING:
                self.listener(dict(batch), outcome.name.lower())
        return outcome

    def _attempt(self, batch: Mapping[str, str]) -> Attempt:
        try:
            if self.spec is not None and self.spec.pid is not None:
                return self._signal_own_namespace(self.spec.pid)  # no Engine: nothing to connect to
            client = self._docker()
            targets = self.targets.targets() if self.targets is not None else []
            if self.spec is not None and not targets:
                self._say_once(
                    ("no-target",),
                    "WARNING",
                    "notification pending",
                    reason=f"no running container for {self.spec.describe()}",
                )
                return Attempt(Delivery.PENDING)
            if self.mode == "http":
                attempt = self._notify_http(client, targets, batch)
            else:
                attempt = Attempt(Delivery.DELIVERED)
                for target in targets:
                    attempt = attempt.merge(self._notify_container(client, target))
        except TRANSIENT_ERRORS as error:
            self._forget()  # reconnect next time: the engine may have restarted, the target changed
            self._say_once(
                ("unreachable", type(error).__name__), "WARNING", "notification pending", reason=describe(error)
            )
            return Attempt(Delivery.PENDING)
        except ConfigError as error:
            self._say_once(("config", error.reason), "ERROR", "cannot notify", reason=error.reason)
            return Attempt(Delivery.FAILED)
        except Exception as error:  # the notifier thread must outlive any surprise
            self._forget()
            # The type only: an unexpected error's text may quote what a container answered.
            reason = f"unexpected {type(error).__name__}"
            self._say_once(("unexpected", type(error).__name__), "ERROR", "notification pending", reason=reason)
            return Attempt(Delivery.PENDING)
        with self._saying:  # a recovery may be reported again; a refusal or a fallback is said once
            self._said = {key for key in self._said if key[0] in ("skip", "direct")}
        return attempt

    def _forget(self) -> None:
        self._client = None
        if self.targets is not None:
            self.targets.forget()

    def _docker(self) -> docker.DockerClient:
        client = self._client
        if client is None:
            timeout = int(self.settings.notify_timeout_s + self.settings.notify_grace_ms / 1000 + 5)
            client = self._client = docker.DockerClient(
                base_url=self.settings.docker_host, version="auto", timeout=timeout
            )
        return client

    def _project_of(self, client: docker.DockerClient) -> str | None:
        """credsync's own compose project, for a `service:NAME` target; looked up once."""
        if self.spec is None or self.spec.service is None or self.spec.project is not None:
            return None
        if self._own_project is None:
            self._own_project = own_compose_project(client)
        return self._own_project

    def _notify_container(self, client: docker.DockerClient, target: Target) -> Attempt:
        container, before = target.container, target.before
        fields = {"target": before.name, "container": before.container_id[:12], "notify": self.mode}
        if self.mode == "exec":
            command, timeout_s = self.settings.notify_exec or "", self.settings.notify_timeout_s
            return self._send(client, [before], lambda: run_exec(container, command, timeout_s), fields)
        assert self.targets is not None  # a container target means a target cache
        signal_name = self.settings.notify_signal
        reader = self.targets.reader(target)
        if isinstance(reader, HostProc):
            try:
                return self._signal_directly(client, target, reader, fields)
            except DirectUnavailable as why:
                self._say_once(("direct", str(why)), "INFO", "signalling through the Docker Engine", reason=str(why))
        verdict = self.targets.verdict(target)
        if verdict.catches:
            return self._send(client, [before], lambda: send_signal(container, signal_name), fields)
        self.targets.forget()  # a refusal is looked at afresh next time
        return Attempt(self._refuse_signal(before.name, (before.container_id, before.started_at), verdict.explanation))

    def _signal_directly(
        self, client: docker.DockerClient, target: Target, reader: HostProc, fields: dict[str, str]
    ) -> Attempt:
        """Straight to the process credsync sees: judged and signalled through one pidfd."""
        assert self.targets is not None
        container, before = target.container, target.before

        def belongs() -> bool:  # PID 1 of a namespace we share is its init for as long as it exists
            return target.shares_pid_namespace or host_pid_belongs(container)

        at = time.time()
        verdict = signal_directly(reader, self.settings.notify_signal, receiver_verdict, belongs)
        if verdict.catches:
            return Attempt(Delivery.DELIVERED, [Sent(self._engine_check(client, [before], at), fields)])
        self.targets.forget()
        return Attempt(self._refuse_signal(before.name, (before.container_id, before.started_at), verdict.explanation))

    def _signal_own_namespace(self, pid: int) -> Attempt:
        """Straight to a process of credsync's own PID namespace, with no Engine at all."""
        fields = {"target": f"pid:{pid}", "notify": self.mode}
        try:
            verdict, signalled = signal_in_own_namespace(pid, self.settings.notify_signal)
        except DirectUnavailable as why:
            fix = 'the sidecar needs CAP_KILL and the webhook\'s PID namespace (compose: pid: "service:webhook")'
            self._say_once(("direct", str(why)), "ERROR", "cannot notify", reason=str(why), fix=fix)
            return Attempt(Delivery.FAILED)
        if signalled is None:
            return Attempt(self._refuse_signal(f"pid:{pid}", ("pid", str(pid)), verdict.explanation))
        grace_s = self.settings.notify_grace_ms / 1000
        return Attempt(Delivery.DELIVERED, [Sent(partial(signalled.survived, grace_s), fields)])

    def _engine_check(self, client: docker.DockerClient, targets: list[Snapshot], at: float) -> Callable[[], None]:
        """Each container still running, not restarted, no `die` event in the grace period."""
        grace_s = self.settings.notify_grace_ms / 1000

        def survived() -> None:
            for before in targets:
                verify_survived(client, before, at, grace_s)

        return survived

    def _notify_http(self, client: docker.DockerClient, targets: list[Target], batch: Mapping[str, str]) -> Attempt:
        url = str(self.settings.notify_url)
        body = {"routes": [{"route": route, "sha256_prefix": short_hash(sha)} for route, sha in sorted(batch.items())]}
        fields = {"notify": "http", "url": redact_url(url)}
        snapshots = [target.before for target in targets]
        return self._send(client, snapshots, lambda: post_http(url, body, self.settings.notify_timeout_s), fields)

    def _send(
        self,
        client: docker.DockerClient,
        targets: list[Snapshot],
        deliver: Callable[[], object],
        fields: dict[str, str],
    ) -> Attempt:
        """Deliver; the targets' survival is proved later, by `_conclude`."""
        at = time.time()
        try:
            deliver()
        except DeliveryFailed as failure:
            logger.bind(**fields, reason=failure.args[0]).error("notification failed")
            return Attempt(Delivery.FAILED)
        return Attempt(Delivery.DELIVERED, [Sent(self._engine_check(client, targets, at), fields)])

    def _refuse_signal(self, name: str, instance: tuple[str, str], explanation: str) -> Delivery:
        """Never send a signal the receiver does not catch: it is ignored or it kills the consumer.
        Said once per `instance` of the target (a restarted one is judged and said again)."""
        fix = NO_HANDLER_FIX
        key = ("skip", *instance)
        if self.mode == "auto":
            self._say_once(key, "WARNING", "published without notifying", target=name, reason=explanation, fix=fix)
            return Delivery.SKIPPED
        message = f"{self.settings.notify_signal} not sent"
        self._say_once(key, "ERROR", message, target=name, reason=explanation, fix=fix)
        return Delivery.FAILED

    def _say_once(self, key: tuple[str, ...], level: str, message: str, **fields: object) -> None:
        """A condition that persists is logged when it starts, not at every retry."""
        with self._saying:  # the notifier and the survival threads both say things
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
