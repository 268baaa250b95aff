"""Prometheus metrics, served on the optional HTTP listener (CREDSYNC_HTTP, credsync.listener):
`/metrics` and `/healthz` (200 only after the first reconcile and while the watcher lives)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from http.server import ThreadingHTTPServer
from urllib.parse import urlsplit

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from credsync import __version__
from credsync.errors import REJECTION_CODES
from credsync.listener import BoundedHTTPServer, RequestHandler
from credsync.tally import Tally

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class PrometheusTally(Tally):
    def __init__(self, routes: Iterable[str] = ()) -> None:
        """`routes`: every route's counters start at zero, so a rate() has a first sample."""
        self.registry = CollectorRegistry()
        registry = self.registry
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        Info("credsync_build", "credsync's version", registry=registry).info({"version": __version__})
        self._publications = Counter(
            "credsync_publications", "Destinations written", ["route", "outcome"], registry=registry
        )
        self._rejections = Counter("credsync_rejections", "Uploads refused", ["route", "reason"], registry=registry)
        self._failures = Counter(
            "credsync_publish_failures", "Failed writes of a destination", ["route"], registry=registry
        )
        self._notifications = Counter("credsync_notifications", "Notification attempts", ["result"], registry=registry)
        self._pending = Gauge(
            "credsync_pending_notification_routes", "Changed routes not yet notified", registry=registry
        )
        self._latency = Histogram(
            "credsync_publish_latency_seconds",
            "Upload's last write to published",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._expiry = Gauge(
            "credsync_credential_expiry_timestamp_seconds",
            "When the consumer's token expires",
            ["route", "token"],
            registry=registry,
        )
        self._needs_login = Gauge(
            "credsync_credential_needs_login", "1 when a fresh upload is needed", ["route"], registry=registry
        )
        self._rewrites = Counter(
            "credsync_consumer_rewrites", "Published files changed by the consumer", ["route"], registry=registry
        )
        self._last_success = Gauge(
            "credsync_last_success_timestamp_seconds", "Last publication or unchanged check", registry=registry
        )
        self._ready = Gauge("credsync_ready", "1 after the first reconcile while the watcher lives", registry=registry)
        self.healthy = False
        for route in routes:
            for outcome in ("published", "repaired"):
                self._publications.labels(route, outcome)
            for code in REJECTION_CODES:
                self._rejections.labels(route, code)
            self._failures.labels(route)
            self._rewrites.labels(route)
        for result in ("delivered", "skipped", "failed", "pending"):
            self._notifications.labels(result)

    def published(self, route: str, outcome: str, latency_s: float) -> None:
        self._publications.labels(route, outcome).inc()
        self._latency.observe(max(latency_s, 0.0))
        self._last_success.set(time.time())

    def rejected(self, route: str, code: str) -> None:
        self._rejections.labels(route, code).inc()

    def publish_failed(self, route: str) -> None:
        self._failures.labels(route).inc()

    def notification(self, result: str) -> None:
        self._notifications.labels(result).inc()

    def pending_notifications(self, routes: int) -> None:
        self._pending.set(routes)

    def credential(self, route: str, access_expires_ms: int | None, refresh_expires_ms: int | None) -> None:
        for token, expires_ms in (("access", access_expires_ms), ("refresh", refresh_expires_ms)):
            if expires_ms is not None:
                self._expiry.labels(route, token).set(expires_ms / 1000)

    def needs_login(self, route: str, needed: bool) -> None:
        self._needs_login.labels(route).set(1 if needed else 0)

    def consumer_rewrite(self, route: str) -> None:
        self._rewrites.labels(route).inc()

    def health(self, *, ready: bool, watching: bool) -> None:
        self.healthy = ready and watching
        self._ready.set(1 if self.healthy else 0)


def serve(tally: PrometheusTally, host: str, port: int) -> ThreadingHTTPServer:
    """Start the listener in a daemon thread; the caller shuts it down."""

    class Handler(RequestHandler):
        def do_GET(self) -> None:  # the http.server API
            self._answer(send_body=True)

        def do_HEAD(self) -> None:  # the http.server API
            self._answer(send_body=False)

        def _answer(self, *, send_body: bool) -> None:
            path = urlsplit(self.path).path
            if path == "/metrics":
                self._reply(200, generate_latest(tally.registry), CONTENT_TYPE_LATEST, send_body)
            elif path == "/healthz":
                healthy = tally.healthy
                self._reply(200 if healthy else 503, b"ok\n" if healthy else b"not ready\n", "text/plain", send_body)
            else:
                self._reply(404, b"not found\n", "text/plain", send_body)

        def _reply(self, status: int, body: bytes, content_type: str, send_body: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

    server = BoundedHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="credsync-http", daemon=True).start()
    return server
