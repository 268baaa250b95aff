"""Validators: pure functions of an upload's bytes. They return a summary that holds no
secret, or raise Rejection with a one-line reason that quotes no value from the file."""

from __future__ import annotations

import configparser
import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from credsync.errors import Rejection
from credsync.routes import Kind
from credsync.timefmt import relative

MAX_NESTING = 32
# Names that are safe to quote in a reason: short identifiers, never token-shaped text.
QUOTABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_ .]{0,40}$")
JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
BRACKET = re.compile(r"[\[\]{}]")
AWS_ACCESS_KEY_ID = re.compile(r"^[A-Z0-9]{16,128}$")  # AWS's documented shape; a cut-off one is short
TOKEN_TEXT = r"^[\x21-\x7e]+$"  # noqa: S105 - a pattern, not a password  # printable ASCII, no whitespace: it becomes an HTTP header


@dataclass(frozen=True)
class CredentialSummary:
    """What may be logged about a valid upload: never a secret."""

    kind: Kind
    expires_at_ms: int | None = None
    refresh_expires_at_ms: int | None = None
    scopes: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


class ClaudeOauth(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    accessToken: str = Field(min_length=1, pattern=TOKEN_TEXT)
    refreshToken: str = Field(min_length=1, pattern=TOKEN_TEXT)
    expiresAt: int = Field(gt=0, lt=10**14)
    scopes: list[str] = Field(min_length=1)
    refreshTokenExpiresAt: int | None = Field(None, gt=0, lt=10**14)


class ClaudeCredentialsFile(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    claudeAiOauth: ClaudeOauth


def validate(kind: Kind, data: bytes, *, max_bytes: int, now_ms: int) -> CredentialSummary:
    text = decode_text(data, max_bytes)
    if kind == "claude-oauth":
        return validate_claude_oauth(parse_json_object(text), now_ms)
    if kind == "json":
        parse_json_object(text)
        return CredentialSummary(kind)
    parser = parse_ini(text)
    if kind == "aws-credentials":
        return validate_aws_credentials(parser)
    return CredentialSummary(kind, sections=tuple(parser.sections()))


def is_sound(kind: Kind, data: bytes, *, max_bytes: int) -> bool:
    """Does a destination still parse? A consumer may rewrite it (Claude refreshes tokens),
    so this checks syntax only; a rewritten but well-formed file is the consumer's to keep."""
    try:
        text = decode_text(data, max_bytes)
        if kind in ("claude-oauth", "json"):
            parse_json_object(text)
        else:
            parse_ini(text)
    except Rejection:
        return False
    return True


def decode_text(data: bytes, max_bytes: int) -> str:
    if not data.strip():
        raise Rejection("file is empty", code="empty")
    if len(data) > max_bytes:
        raise Rejection(f"file is {len(data)} bytes, over the limit of {max_bytes}", code="too-large")
    if b"\x00" in data:
        raise Rejection("file contains NUL bytes", code="nul-bytes")
    if data.startswith(b"\xef\xbb\xbf"):
        raise Rejection("file starts with a UTF-8 byte order mark; save it without BOM", code="bom")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Rejection(f"file is not valid UTF-8 (byte {error.start})", code="not-utf8") from None


def parse_json_object(text: str) -> dict[str, Any]:
    if nesting_depth(text) > MAX_NESTING:
        raise Rejection(f"JSON nests deeper than {MAX_NESTING} levels", code="nesting")
    try:
        document = json.loads(text, object_pairs_hook=reject_duplicate_keys, parse_constant=reject_constant)
    except json.JSONDecodeError as error:
        raise Rejection(
            f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}", code="not-json"
        ) from None
    except RecursionError:
        raise Rejection("JSON nests too deeply", code="nesting") from None
    except ValueError:  # int() refuses numbers of more than 4300 digits
        raise Rejection("JSON holds a number too large to read", code="huge-number") from None
    if not isinstance(document, dict):
        raise Rejection(f"JSON top level is {json_type(document)}, expected an object", code="not-object")
    return document


def nesting_depth(text: str) -> int:
    """Bracket depth outside strings, found without recursion (the parser would recurse)."""
    depth = deepest = 0
    for bracket in BRACKET.findall(JSON_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise Rejection(f"JSON object has the key {quote_name(key)} twice", code="duplicate-key")
        document[key] = value
    return document


def reject_constant(name: str) -> None:
    raise Rejection(f"JSON holds {name}, which is not valid JSON", code="not-json")


def json_type(value: object) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), "null")


def quote_name(name: str) -> str:
    return repr(name) if QUOTABLE_NAME.match(name) else "(a key not shown)"


def validate_claude_oauth(document: dict[str, Any], now_ms: int) -> CredentialSummary:
    try:
        oauth = ClaudeCredentialsFile.model_validate(document).claudeAiOauth
    except ValidationError as error:
        raise Rejection(describe_model_error(error), code="schema") from None
    warnings = []
    access_expired = oauth.expiresAt <= now_ms
    if access_expired:
        warnings.append(f"access token expired {relative(oauth.expiresAt, now_ms)}; Claude will use the refresh token")
    refresh_expiry = oauth.refreshTokenExpiresAt
    if refresh_expiry is not None and refresh_expiry <= now_ms:
        if access_expired:
            raise Rejection(
                f"access and refresh tokens have both expired (refresh token {relative(refresh_expiry, now_ms)});"
                " log in again and upload the new file",
                code="expired",
            )
        warnings.append(f"refresh token expired {relative(refresh_expiry, now_ms)}; log in again soon")
    return CredentialSummary(
        "claude-oauth",
        expires_at_ms=oauth.expiresAt,
        refresh_expires_at_ms=refresh_expiry,
        scopes=tuple(oauth.scopes),
        warnings=tuple(warnings),
    )


def describe_model_error(error: ValidationError) -> str:
    """Field paths and pydantic's messages, never the input values."""
    problems = []
    for item in error.errors(include_input=False, include_url=False, include_context=False)[:3]:
        field = ".".join(quote_location(part) for part in item["loc"])
        problems.append(f"{field}: {item['msg']}" if field else item["msg"])
    return "; ".join(problems)


def quote_location(part: str | int) -> str:
    return str(part) if isinstance(part, int) or QUOTABLE_NAME.match(part) else "?"


def parse_ini(text: str) -> configparser.ConfigParser:
    if not text.endswith("\n"):
        # Tools write INI files line by line; a last line without its newline was cut short.
        raise Rejection("INI file does not end with a newline: it looks cut short; upload it again", code="truncated")
    # No interpolation (AWS tools do none) and no DEFAULT magic: every section is ordinary.
    parser = configparser.ConfigParser(interpolation=None, strict=True, default_section="\x00")
    try:
        parser.read_string(text)
    except configparser.MissingSectionHeaderError as error:
        raise Rejection(f"INI line {error.lineno} comes before any [section]", code="not-ini") from None
    except configparser.DuplicateSectionError as error:
        raise Rejection(
            f"INI section {quote_name(error.section)} appears twice (line {error.lineno})", code="duplicate-section"
        ) from None
    except configparser.DuplicateOptionError as error:
        raise Rejection(
            f"INI key {quote_name(error.option)} appears twice in section {quote_name(error.section)}"
            f" (line {error.lineno})",
            code="duplicate-key",
        ) from None
    except configparser.ParsingError as error:
        lines = ", ".join(str(lineno) for lineno, _ in error.errors[:5])
        raise Rejection(
            f"INI has lines that are neither [section] nor key = value (line {lines})", code="not-ini"
        ) from None
    except configparser.Error:
        raise Rejection("not a valid INI file", code="not-ini") from None
    if not parser.sections():
        raise Rejection("INI file has no [section]", code="no-section")
    for section in parser.sections():
        for key, value in parser.items(section):
            if "%(" in value:
                raise Rejection(
                    f"INI key {quote_name(key)} in section {quote_name(section)} uses %(...) interpolation,"
                    " which AWS tools do not expand",
                    code="interpolation",
                )
    return parser


def validate_aws_credentials(parser: configparser.ConfigParser) -> CredentialSummary:
    for section in parser.sections():
        for key in ("aws_access_key_id", "aws_secret_access_key"):
            if not parser.get(section, key, fallback="").strip():
                raise Rejection(f"profile {quote_name(section)} has no {key}", code="missing-key")
        if not AWS_ACCESS_KEY_ID.match(parser.get(section, "aws_access_key_id").strip()):
            raise Rejection(
                f"profile {quote_name(section)}: aws_access_key_id is not 16-128 capital letters and digits",
                code="schema",
            )
    return CredentialSummary("aws-credentials", sections=tuple(parser.sections()))
