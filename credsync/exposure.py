"""What an operator turned on that widens what an upload can do to the consumer: configuration
routes (allow-listed, but more than a credential) and CREDSYNC_TRUST_UPLOADER (no allow-lists).
Said at every start, in `status` and in `doctor`. Pure logic."""

from __future__ import annotations

from credsync.routes import CONFIG_ROUTES, Kind, RouteTable
from credsync.settings import Settings

CONFIG_KINDS: frozenset[Kind] = frozenset(kind for _, _, kind, _ in CONFIG_ROUTES)
TRUSTED = (
    "CREDSYNC_TRUST_UPLOADER is on: no allow-list applies, and whoever can upload may run code and redirect"
    " requests (with the consumer's token) as the consumer"
)


def exposure_notes(settings: Settings, routes: RouteTable) -> list[str]:
    notes = [TRUSTED] if settings.trust_uploader else []
    notes.extend(
        f"configuration route {route.upload} is on ({route.kind}"
        + (", allow-listed)" if not settings.trust_uploader else ", not allow-listed)")
        for route in routes
        if route.kind in CONFIG_KINDS
    )
    return notes
