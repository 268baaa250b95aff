"""A setup-token's expiry is not the uploader's to choose: it counts from when credsync first saw
the token, never from a file time in the future, and the same token again renders the same file.
Pure logic: no I/O."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from credsync.intake import Upload
from credsync.ledger import Entry
from credsync.pipeline import content_of, first_sight
from credsync.routes import Route
from credsync.setup_token import TOKEN_LIFETIME_MS
from credsync.timefmt import now_ms
from credsync.validators import validate
from tests.helpers import CANARY

TOKEN = b"sk-ant-oat01-" + b"a" * 40 + CANARY.encode() + b"\n"
ROUTE = Route("claude-setup-token", Path("/c/.credentials.json"), "claude-setup-token", 1, 1, 0o600)
DAY_MS = 24 * 3600 * 1000


def upload(written_ms: int, data: bytes = TOKEN) -> Upload:
    return Upload("claude-setup-token", data, hashlib.sha256(data).hexdigest(), written_ms * 10**6, written_ms * 10**6)


def expires_at(data: bytes) -> int:
    return int(json.loads(data)["claudeAiOauth"]["expiresAt"])


def test_a_file_dated_in_the_future_or_before_1970_counts_from_now() -> None:
    now = now_ms()
    assert first_sight(now + 300 * DAY_MS, now) == now
    assert first_sight(-5, now) == now and first_sight(0, now) == now
    assert first_sight(now - DAY_MS, now) == now - DAY_MS  # earlier: a nearer expiry, never a later one
    before = now_ms()
    future = content_of(ROUTE, upload(now + 300 * DAY_MS), None)
    assert before + TOKEN_LIFETIME_MS <= expires_at(future.data) <= now_ms() + TOKEN_LIFETIME_MS


def test_the_same_token_again_renders_the_same_file_from_its_first_sighting() -> None:
    now = now_ms()
    first = content_of(ROUTE, upload(now - DAY_MS), None)
    assert first.first_seen is not None and first.first_seen[1] == now - DAY_MS
    ledger_entry = Entry(first.sha256, len(first.data), "/c/.credentials.json", now, first_seen=first.first_seen)
    again = content_of(ROUTE, upload(now), ledger_entry)  # re-pushed a day later, a later mtime
    assert again.data == first.data and again.sha256 == first.sha256
    other = content_of(ROUTE, upload(now, b"sk-ant-oat01-" + b"b" * 40 + b"\n"), ledger_entry)
    assert expires_at(other.data) == now + TOKEN_LIFETIME_MS  # another token: its own first sighting


def test_the_rendered_credential_passes_the_login_allow_list() -> None:
    rendered = content_of(ROUTE, upload(now_ms()), None).data
    summary = validate("claude-oauth", rendered, max_bytes=len(rendered), now_ms=now_ms())
    assert summary.scopes == ("user:inference",) and CANARY not in repr(summary)
