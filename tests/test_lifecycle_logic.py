"""The credential's life, as pure logic: setup-tokens read and rendered, what each kind of
credential will do on a server whose jobs refresh in throwaway copies, and how `push` reads a
server's answer. No root, no Docker."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from credsync.credential_health import claude_health
from credsync.errors import Rejection
from credsync.push import Server, Verdict, judge_receipt, parse_server
from credsync.receipts import Receipts, receipt_name
from credsync.setup_token import TOKEN_LIFETIME_MS, parse_setup_token, render_credentials
from credsync.validators import validate
from tests.helpers import CANARY, HOUR_MS, REFRESH_TOKEN, claude_credentials, now_ms

NOW = 1_800_000_000_000
TOKEN = "sk-ant-oat01-" + "x" * 20 + CANARY


def test_a_setup_token_is_read_from_one_line_and_rendered_as_a_credential_claude_accepts() -> None:
    assert parse_setup_token(TOKEN + "\n") == TOKEN
    rendered = render_credentials(TOKEN, NOW)
    oauth = json.loads(rendered)["claudeAiOauth"]
    assert oauth == {"accessToken": TOKEN, "expiresAt": NOW + TOKEN_LIFETIME_MS, "scopes": ["user:inference"]}
    assert render_credentials(TOKEN, NOW) == rendered, "the same upload renders the same bytes"
    summary = validate("claude-oauth", rendered, max_bytes=1 << 20, now_ms=NOW)
    assert summary.expires_at_ms == NOW + TOKEN_LIFETIME_MS and summary.warnings == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (REFRESH_TOKEN, "refresh token"),
        ("sk-ant-api03-" + "y" * 40, "API key"),
        (TOKEN + "\n" + TOKEN, "one line"),
        ("", "one line"),
        ("sk-ant-oat01-short", "expected sk-ant-oat01-"),
        ("sk-ant-oat01-" + "z" * 30 + " trailing", "expected sk-ant-oat01-"),
    ],
)
def test_what_is_not_a_setup_token_is_refused_without_quoting_it(text: str, expected: str) -> None:
    with pytest.raises(Rejection) as caught:
        parse_setup_token(text)
    assert expected in caught.value.reason and CANARY not in caught.value.reason
    assert caught.value.code == "not-setup-token"


def problems(data: bytes, *, now: int, consumer_refreshes: bool = False) -> dict[str, str]:
    health = claude_health(data)
    assert health is not None
    return {problem.code: problem.advice for problem in health.problems(now, 72 * HOUR_MS, consumer_refreshes)}


def test_a_rotating_refresh_token_is_said_to_be_shared_with_its_machine() -> None:
    now = now_ms()  # claude_credentials() expires 8 hours from the real now
    found = problems(claude_credentials(expires_in_ms=8 * HOUR_MS), now=now)
    assert "shared-refresh-token" in found and "claude setup-token" in found["shared-refresh-token"]
    assert "access-expiring" in found  # nothing writes a refreshed token back: the access token is the deadline
    assert not any(CANARY in advice for advice in found.values())
    refreshed_back = problems(claude_credentials(expires_in_ms=8 * HOUR_MS), now=now, consumer_refreshes=True)
    assert refreshed_back == {}


def test_a_long_lived_token_warns_only_near_its_expiry() -> None:
    rendered = render_credentials(TOKEN, NOW)
    assert problems(rendered, now=NOW) == {}
    late = NOW + TOKEN_LIFETIME_MS - 24 * HOUR_MS
    assert set(problems(rendered, now=late)) == {"access-expiring"}
    assert "claude setup-token" in problems(rendered, now=NOW + TOKEN_LIFETIME_MS + 1)["access-expired"]


def test_a_blanked_refresh_token_is_told_apart_from_none_at_all() -> None:
    blank = claude_credentials(refreshToken="")
    assert "refresh-blank" in problems(blank, now=NOW)
    long_lived = claude_health(render_credentials(TOKEN, NOW))
    assert long_lived is not None and long_lived.kind == "long-lived token"


@pytest.mark.parametrize(
    ("text", "server"),
    [
        ("deploy@host", Server("deploy@host", "claude-uploads")),
        ("host:~/a/claude-uploads", Server("host", "a/claude-uploads")),
        ("alias:/srv/uploads/", Server("alias", "/srv/uploads")),
    ],
)
def test_a_server_is_an_ssh_destination_with_an_upload_folder(text: str, server: Server) -> None:
    assert parse_server(text) == server


def test_receipts_beside_the_upload_folder() -> None:
    assert Server("h", "claude-uploads").receipts_dir == "claude-receipts"
    assert Server("h", "/srv/x/uploads").receipts_dir == "/srv/x/claude-receipts"


@pytest.mark.parametrize(
    ("receipt", "verdict", "said"),
    [
        (
            {"outcome": "published", "published_sha256_prefix": "abc", "notification": "delivered"},
            Verdict.DONE,
            "published, sha abc, notification delivered",
        ),
        (
            {"outcome": "unchanged", "upload_sha256_prefix": "def", "notification": "none"},
            Verdict.DONE,
            "unchanged, sha def",
        ),
        (
            {"outcome": "rejected", "reason": "not valid JSON", "notification": "none"},
            Verdict.REJECTED,
            "rejected: not valid JSON",
        ),
        (
            {"outcome": "failed", "reason": "no space left", "notification": "none"},
            Verdict.FAILED,
            "failed: no space left",
        ),
    ],
)
def test_a_receipt_becomes_one_line_and_a_verdict(receipt: dict[str, str], verdict: Verdict, said: str) -> None:
    report = judge_receipt("server", json.dumps(receipt).encode())
    assert (report.verdict, report.line) == (verdict, said)
    assert judge_receipt("server", b"garbage").verdict is Verdict.FAILED


def test_a_notification_outcome_that_comes_before_its_receipt_is_not_lost(tmp_path: Path) -> None:
    """The notifier is told when the destination is in place, before the pipeline writes the
    receipt: a quick outcome (a refusal, a pidfd signal with no grace) may arrive first."""
    receipts, owner = Receipts(tmp_path), (os.getuid(), os.getgid())
    new, old = "a" * 64, "b" * 64
    receipts.notified({".credentials.json": old}, "failed", owner)  # another upload's: not this one's
    receipts.notified({".credentials.json": new}, "delivered", owner)
    receipts.decided(
        ".credentials.json", "published", upload_sha256=new, published_sha256=new, notifies=True, owner=owner
    )
    said = json.loads((tmp_path / receipt_name(".credentials.json")).read_text())
    assert said["notification"] == "delivered"
    receipts.decided(
        ".credentials.json", "published", upload_sha256=old, published_sha256=old, notifies=True, owner=owner
    )
    said = json.loads((tmp_path / receipt_name(".credentials.json")).read_text())
    assert said["notification"] == "pending"  # the early word for it was dropped with the first receipt
