"""How healthy is a published Claude credential, as the consumer holds it now? Pure logic on
the destination's bytes: expiry times and whether it can still refresh. Never a secret."""

from __future__ import annotations

from dataclasses import dataclass

from credsync.errors import Rejection
from credsync.timefmt import relative
from credsync.validators import decode_text, parse_json_object

FRESH_LOGIN = (
    "log in again (or create a long-lived token with `claude setup-token`) and upload the new .credentials.json"
)


@dataclass(frozen=True)
class Problem:
    code: str  # fixed: what is wrong
    advice: str  # one line: what it means and what to do


@dataclass(frozen=True)
class CredentialHealth:
    access_expires_ms: int | None
    refresh_expires_ms: int | None
    has_refresh_token: bool

    def problems(self, now_ms: int, warn_window_ms: int) -> list[Problem]:
        """Empty when the credential will keep working."""
        found = []
        if not self.has_refresh_token:
            found.append(
                Problem(
                    "refresh-blank",
                    "the refresh token is blank: the server rejected a refresh because the token family was "
                    f"rotated elsewhere (another machine refreshed first); {FRESH_LOGIN}",
                )
            )
            if self.access_expires_ms is not None and self.access_expires_ms <= now_ms:
                expired = relative(self.access_expires_ms, now_ms)
                found.append(Problem("cannot-refresh", f"the access token expired {expired} and cannot refresh"))
        if self.refresh_expires_ms is not None:
            when = relative(self.refresh_expires_ms, now_ms)
            if self.refresh_expires_ms <= now_ms:
                found.append(Problem("refresh-expired", f"the refresh token expired {when}; {FRESH_LOGIN}"))
            elif self.refresh_expires_ms - now_ms <= warn_window_ms:
                found.append(Problem("refresh-expiring", f"the refresh token expires {when}; {FRESH_LOGIN}"))
        return found


def claude_health(data: bytes) -> CredentialHealth | None:
    """None when the bytes are not a Claude credentials file (any shape problem)."""
    try:  # the consumer wrote it: the same guards as an upload (nesting, numbers, encoding)
        document = parse_json_object(decode_text(data, max_bytes=len(data) or 1))
    except Rejection:
        return None
    oauth = document.get("claudeAiOauth")
    if not isinstance(oauth, dict):
        return None
    refresh = oauth.get("refreshToken")
    return CredentialHealth(
        integer_or_none(oauth.get("expiresAt")),
        integer_or_none(oauth.get("refreshTokenExpiresAt")),
        isinstance(refresh, str) and bool(refresh.strip()),
    )


def integer_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
