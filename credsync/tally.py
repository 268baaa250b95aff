"""What happened, for whoever counts it. The base class ignores everything; with
CREDSYNC_HTTP set, credsync.metrics counts it for Prometheus. Keeping the default a no-op
means the daemon never imports prometheus-client unless it serves metrics."""

from __future__ import annotations


class Tally:
    def published(self, route: str, outcome: str, latency_s: float) -> None:
        """A destination changed (`published` or `repaired`); latency from the upload's last write."""

    def rejected(self, route: str, code: str) -> None:
        """An upload was refused; `code` is a short fixed name of the reason."""

    def publish_failed(self, route: str) -> None:
        """Writing a destination failed (disk full, read-only, permissions)."""

    def notification(self, result: str) -> None:
        """`delivered`, `skipped`, `failed` or `pending`."""

    def pending_notifications(self, routes: int) -> None:
        """How many changed routes wait for a notification."""

    def credential(self, route: str, access_expires_ms: int | None, refresh_expires_ms: int | None) -> None:
        """Expiry times of the credential the consumer holds now."""

    def needs_login(self, route: str, needed: bool) -> None:
        """The consumer's credential cannot keep working without a fresh upload."""

    def consumer_rewrite(self, route: str) -> None:
        """The consumer changed a published file (a refresh, or a blanked refresh token)."""

    def health(self, *, ready: bool, watching: bool) -> None:
        """The daemon's readiness, for /healthz."""
