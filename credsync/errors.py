"""Typed errors. They carry one-line reasons that never contain secret values;
the CLI and the daemon turn them into log lines and exit codes at the edge."""

from __future__ import annotations


class CredsyncError(Exception):
    """Base of every error credsync raises on purpose."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = one_line(reason)

    def __str__(self) -> str:
        return self.reason


class ConfigError(CredsyncError):
    """A setting or the routes file is wrong; the fix is in the configuration."""


# Every `Rejection.code`: a metrics label each, counted from zero (tests/test_metrics_logic.py
# checks this list against the code that raises them).
REJECTION_CODES = (
    "bom",
    "changed",
    "duplicate-key",
    "duplicate-section",
    "empty",
    "expired",
    "hard-link",
    "huge-number",
    "interpolation",
    "invalid",
    "long-file",
    "long-line",
    "missing-key",
    "nesting",
    "no-section",
    "not-ini",
    "not-json",
    "not-object",
    "not-regular-file",
    "not-allowed",
    "not-setup-token",
    "not-utf8",
    "nul-bytes",
    "schema",
    "symlink",
    "too-large",
    "truncated",
    "unreadable",
)


class Rejection(CredsyncError):
    """An upload is not acceptable and will not be published. `code` is a short, fixed name
    for the kind of problem (a metrics label); `reason` is the one-line explanation."""

    def __init__(self, reason: str, code: str = "invalid") -> None:
        super().__init__(reason)
        self.code = code


class UploadMissing(CredsyncError):
    """The upload is not there (deleted, or not yet created)."""


class SourceUnavailable(CredsyncError):
    """The upload folder cannot be used (missing, a symlink, unreadable, another owner)."""


class UploadUnsettled(CredsyncError):
    """The upload is still being written; try again after it settles."""


class PublishError(CredsyncError):
    """Writing the destination failed; the previous destination is untouched."""


def one_line(text: str) -> str:
    """Collapse a message to one printable line, so a reason can never forge log lines."""
    return printable(" ".join(text.split()))


def printable(text: str) -> str:
    """Escape control characters and terminal escapes (from e.g. hostile file names)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
