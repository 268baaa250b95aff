"""How healthy is a published Claude credential, as the consumer holds it now? Pure logic on
the destination's bytes: what kind of credential it is, when it expires, and whether anything
can keep it alive. Never a secret."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from credsync.errors import Rejection
from credsync.timefmt import relative
from credsync.validators import decode_text, parse_json_object

# The fix for every dead or dying credential on a server: a token that neither rotates nor
# needs a machine to refresh it. `claude setup-token` prints it (it saves nothing).
LONG_LIVED = "for a server, run `claude setup-token` and upload the token it prints (`credsync push --setup-token`)"

Refresh = Literal["rotating", "blank", "none"]
KIND_OF = {
    "rotating": "login with a rotating refresh token",
    "blank": "login with a blanked refresh token",
    "none": "long-lived token",
}


@dataclass(frozen=True)
class Problem:
    code: str  # fixed: what is wrong
    advice: str  # one line: what it means and what to do


@dataclass(frozen=True)
class CredentialHealth:
    access_expires_ms: int | None
    refresh_expires_ms: int | None
    refresh: Refresh

    @property
    def has_refresh_token(self) -> bool:
        return self.refresh == "rotating"

    @property
    def kind(self) -> str:
        return KIND_OF[self.refresh]

    def problems(self, now_ms: int, warn_window_ms: int, consumer_refreshes: bool = False) -> list[Problem]:
        """Empty when the credential will keep working. `consumer_refreshes`: the consumer
        writes refreshed tokens back to the published file (claude-hub's jobs do not: they
        refresh in throwaway copies)."""
        found = []
        if self.refresh == "blank":
            found.append(
                Problem(
                    "refresh-blank",
                    "the refresh token is blank: a refresh failed because the login was rotated elsewhere"
                    f" (another machine refreshed first); {LONG_LIVED}",
                )
            )
        if self.refresh == "rotating" and not consumer_refreshes:
            found.append(
                Problem(
                    "shared-refresh-token",
                    "this login's refresh token is shared with the machine it came from: whichever refreshes first"
                    " logs the other out, and jobs that refresh in throwaway copies never write the new one back, so"
                    f" it stops working when its access token expires; {LONG_LIVED}",
                )
            )
        if self.access_expires_ms is not None and (self.refresh != "rotating" or not consumer_refreshes):
            when = relative(self.access_expires_ms, now_ms)
            if self.access_expires_ms <= now_ms:
                found.append(Problem("access-expired", f"the access token expired {when}; {LONG_LIVED}"))
            elif self.access_expires_ms - now_ms <= warn_window_ms:
                found.append(Problem("access-expiring", f"the access token expires {when}; {LONG_LIVED}"))
        if self.refresh_expires_ms is not None and self.refresh == "rotating":
            when = relative(self.refresh_expires_ms, now_ms)
            if self.refresh_expires_ms <= now_ms:
                found.append(Problem("refresh-expired", f"the refresh token expired {when}; {LONG_LIVED}"))
            elif self.refresh_expires_ms - now_ms <= warn_window_ms:
                found.append(Problem("refresh-expiring", f"the refresh token expires {when}; {LONG_LIVED}"))
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
    token = oauth.get("refreshToken")
    refresh: Refresh = "none" if token is None else "rotating" if isinstance(token, str) and token.strip() else "blank"
    return CredentialHealth(
        integer_or_none(oauth.get("expiresAt")), integer_or_none(oauth.get("refreshTokenExpiresAt")), refresh
    )


def integer_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
