"""A long-lived token from `claude setup-token`, uploaded as a one-line file and published as the
`.credentials.json` Claude Code accepts. Pure logic.

`claude setup-token` prints a token (it saves nothing) that lasts a year and never rotates: the
right credential for a server whose jobs refresh nothing back. Claude Code takes it from
`claudeAiOauth` with `accessToken`, `expiresAt` and `scopes`, and without a refresh token there
is nothing for a job to spend. The token does not say when it was made, so its expiry is a year
after credsync first saw it (or after the file's time, when that is earlier): an upper bound the
uploader cannot push out by sending the same token again or by dating the file ahead."""

from __future__ import annotations

import json
import re

from credsync.errors import Rejection

SETUP_TOKEN = re.compile(r"^sk-ant-oat01-[A-Za-z0-9_-]{16,1024}$")
TOKEN_LIFETIME_MS = 365 * 24 * 3600 * 1000
SCOPES = ["user:inference"]


def parse_setup_token(text: str) -> str:
    """The token, from a file holding it on one line (a final newline allowed)."""
    lines = text.splitlines()
    token = lines[0].strip() if lines else ""
    if len(lines) != 1:
        raise Rejection("a setup-token file holds the token on one line and nothing else", code="not-setup-token")
    if token.startswith("sk-ant-ort"):
        raise Rejection(
            "this is a refresh token, not what `claude setup-token` prints (sk-ant-oat01-…)", code="not-setup-token"
        )
    if token.startswith("sk-ant-api"):
        raise Rejection(
            "this is an API key: give it to claude-hub as ANTHROPIC_API_KEY, not to credsync", code="not-setup-token"
        )
    if not SETUP_TOKEN.match(token):
        raise Rejection(
            "not a token from `claude setup-token`: expected sk-ant-oat01- and letters, digits, - or _",
            code="not-setup-token",
        )
    return token


def render_credentials(token: str, written_ms: int) -> bytes:
    """Deterministic in its inputs, so an unchanged upload renders unchanged bytes."""
    oauth = {"accessToken": token, "expiresAt": written_ms + TOKEN_LIFETIME_MS, "scopes": SCOPES}
    return json.dumps({"claudeAiOauth": oauth}, indent=2).encode() + b"\n"
