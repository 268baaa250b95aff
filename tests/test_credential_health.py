"""Pure: what the consumer's credential says about its future."""

from __future__ import annotations

import json

from credsync.credential_health import claude_health

NOW = 1_800_000_000_000
HOUR = 3_600_000
WINDOW = 72 * HOUR


def credential(**oauth: object) -> bytes:
    return json.dumps({"claudeAiOauth": {"accessToken": "a", "refreshToken": "r", **oauth}}).encode()


def codes(data: bytes, *, consumer_refreshes: bool = True) -> list[str]:
    """By default for a consumer that writes refreshed tokens back (claude-hub's does not:
    tests/test_lifecycle_logic.py covers that one)."""
    health = claude_health(data)
    assert health is not None
    return [problem.code for problem in health.problems(NOW, WINDOW, consumer_refreshes)]


def test_a_working_credential_has_no_problem() -> None:
    assert codes(credential(expiresAt=NOW - HOUR, refreshTokenExpiresAt=NOW + 30 * 24 * HOUR)) == []


def test_a_blank_refresh_token_needs_a_fresh_login() -> None:
    assert codes(credential(refreshToken="", expiresAt=NOW + HOUR)) == ["refresh-blank", "access-expiring"]
    assert codes(credential(refreshToken=" ", expiresAt=NOW - HOUR)) == ["refresh-blank", "access-expired"]


def test_refresh_token_expiry_is_warned_within_the_window() -> None:
    assert codes(credential(expiresAt=NOW, refreshTokenExpiresAt=NOW + 71 * HOUR)) == ["refresh-expiring"]
    assert codes(credential(expiresAt=NOW, refreshTokenExpiresAt=NOW + 73 * HOUR)) == []
    assert codes(credential(expiresAt=NOW, refreshTokenExpiresAt=NOW - 1)) == ["refresh-expired"]


def test_advice_names_the_fix_and_no_secret() -> None:
    health = claude_health(credential(refreshToken="", expiresAt=NOW))
    assert health is not None
    advice = health.problems(NOW, WINDOW)[0].advice
    assert "claude setup-token" in advice and "credsync push --setup-token" in advice


def test_other_shapes_are_not_assessed() -> None:
    assert claude_health(b"[]") is None
    assert claude_health(b'{"claudeAiOauth": []}') is None
    assert claude_health(b"not json") is None
    health = claude_health(b'{"claudeAiOauth": {"expiresAt": true}}')
    assert health is not None and health.access_expires_ms is None and not health.has_refresh_token
