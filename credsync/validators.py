"""Validators: pure functions of an upload's bytes. They return a summary that holds no
secret, or raise Rejection with a one-line reason that quotes no value from the file."""

from __future__ import annotations

import configparser
import gc
import json
import re
from collections import Counter
from typing import Any, NamedTuple

from pydantic import BaseModel, ValidationError

from credsync.allow_lists import (
    AWS_CONFIG_KEYS,
    AWS_CREDENTIAL_KEYS,
    AWS_CREDENTIAL_SOURCES,
    ClaudeCredentials,
    ClaudeGlobalConfig,
    ClaudeOauth,
    ClaudeSettings,
    TrustedClaudeCredentials,
)
from credsync.errors import Rejection
from credsync.routes import Kind
from credsync.setup_token import parse_setup_token
from credsync.timefmt import expiry, relative

MAX_NESTING = 32
# A string, closed or running to the end: possessive, so a failed match never backtracks (the
# old `"(?:[^"\\]|\\.)*"` rescanned from every quote inside an unterminated string: quadratic).
# Runs of plain characters in one step, not an alternation per character: 3x faster.
JSON_STRING = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\\?\Z)', re.DOTALL)
NOT_BRACKETS = re.compile(r"[^\[\]{}]++")
SQUARE = str.maketrans("{}", "[]")  # in valid JSON only the depth matters, not the kind of bracket
MAX_INI_LINE = 16_384  # AWS session tokens run to a few KB; nothing sound is longer
MAX_INI_LINES = 10_000  # configparser spends ~15 µs a section: this bounds a crafted file to ~0.2 s
# Names always quoted in a reason: fields credsync knows. Anything else in key position may be a
# secret pasted in the wrong place (an AWS secret key is 40 letters and digits): see NAME_LIKE.
KNOWN_NAMES = frozenset(
    {
        "claudeAiOauth",
        "accessToken",
        "refreshToken",
        "expiresAt",
        "scopes",
        "subscriptionType",
        "rateLimitTier",
        "refreshTokenExpiresAt",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "region",
        "output",
        "role_arn",
        "source_profile",
        "credential_process",
    }
)
# Section names are quoted when short: a profile name is what the operator needs to find the
# problem, and no secret (40 characters and more) fits.
QUOTABLE_SECTION = re.compile(r"^(?:(?:profile|sso-session|services) )?[A-Za-z0-9_.-]{1,24}$")
# Scopes are shown when they look like scopes (user:inference), never a token-like string.
QUOTABLE_SCOPE = re.compile(r"^[a-z]{1,16}(?::[a-z_]{1,32}){0,2}$")
TRUST_HINT = (
    "remove it; CREDSYNC_TRUST_UPLOADER=true lifts the allow-lists, and lets whoever uploads run code and redirect"
    " requests as the consumer"
)
AWS_ACCESS_KEY_ID = re.compile(r"^[A-Z0-9]{16,128}$")  # AWS's documented shape; a cut-off one is short
# A key name is quoted when it reads like a name: letters, `_`, `.` and `$`, up to three final
# digits, few changes of case. A token or a secret key pasted in key position has digits
# throughout or changes case at every other letter, and is never shown.
NAME_LIKE = re.compile(r"^[A-Za-z_$][A-Za-z_.]{0,36}[0-9]{0,3}$")
CASE_CHANGE = re.compile(r"[a-z][A-Z]")
MAX_CASE_CHANGES = 5
JSON_ALLOW_LISTS: dict[Kind, type[BaseModel]] = {
    "claude-settings": ClaudeSettings,
    "claude-global-config": ClaudeGlobalConfig,
}


class CredentialSummary(NamedTuple):
    """What may be logged about a valid upload: never a secret. (A tuple: made on every
    upload, and cheaper than a frozen dataclass.)"""

    kind: Kind
    expires_at_ms: int | None = None
    refresh_expires_at_ms: int | None = None
    scopes: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def described(self, now_ms: int) -> str:
        """What `credsync validate` adds after "valid KIND": expiry, scopes, sections (each
        section quoted only when short, as in reasons); empty when there is nothing to say."""
        facts = []
        if self.expires_at_ms is not None:
            facts.append(f"access token {expiry(self.expires_at_ms, now_ms)}")
        if self.refresh_expires_at_ms is not None:
            facts.append(f"refresh token {expiry(self.refresh_expires_at_ms, now_ms)}")
        if self.scopes:
            facts.append("scopes " + " ".join(quote_scope(scope) for scope in self.scopes))
        if self.sections:
            facts.append("sections " + ", ".join(quote_section(section) for section in self.sections))
        return f" ({'; '.join(facts)})" if facts else ""


def validate(
    kind: Kind, data: bytes, *, max_bytes: int, now_ms: int, trust_uploader: bool = False
) -> CredentialSummary:
    text = decode_text(data, max_bytes)
    if kind == "claude-oauth":
        return validate_claude_oauth(parse_json_object(text), now_ms, trust_uploader=trust_uploader)
    if kind == "claude-setup-token":
        parse_setup_token(text)
        return CredentialSummary(kind)
    if kind in JSON_ALLOW_LISTS:
        document = parse_json_object(text)
        if not trust_uploader:
            check_allow_list(JSON_ALLOW_LISTS[kind], document)
        return CredentialSummary(kind)
    parser = parse_ini(text)
    if not trust_uploader:
        check_aws_keys(parser, AWS_CREDENTIAL_KEYS if kind == "aws-credentials" else AWS_CONFIG_KEYS)
    if kind == "aws-credentials":
        return validate_aws_credentials(parser)
    return CredentialSummary(kind, sections=tuple(parser.sections()))


def kind_from_content(data: bytes) -> Kind | None:
    """For `credsync validate` on a file whose name says nothing: what it looks like."""
    text = data.decode("utf-8", errors="replace").lstrip()
    if text.startswith("sk-ant-"):
        return "claude-setup-token"
    if text.startswith("{"):
        if '"claudeAiOauth"' in text:
            return "claude-oauth"
        return "claude-global-config" if '"hasCompletedOnboarding"' in text else "claude-settings"
    if text.startswith(("[", "#", ";")):
        return "aws-credentials" if "aws_access_key_id" in text else "aws-config"
    return None


def is_sound(kind: Kind, data: bytes, *, max_bytes: int) -> bool:
    """Does a destination still parse? A consumer may rewrite it (Claude refreshes tokens),
    so this checks syntax only; a rewritten but well-formed file is the consumer's to keep."""
    try:
        text = decode_text(data, max_bytes)
        if kind in ("claude-oauth", "claude-setup-token", *JSON_ALLOW_LISTS):  # a setup-token is published as JSON
            parse_json_object(text)
        else:
            parse_ini(text)
    except Rejection:
        return False
    return True


def decode_text(data: bytes, max_bytes: int) -> str:
    if not data or data.isspace():  # no stripped copy just to test it
        raise Rejection("file is empty", code="empty")
    if len(data) > max_bytes:
        raise Rejection(
            f"file is {len(data)} bytes, over the limit of {max_bytes} (CREDSYNC_MAX_BYTES)", code="too-large"
        )
    if b"\x00" in data:
        raise Rejection("file contains NUL bytes", code="nul-bytes")
    if data.startswith(b"\xef\xbb\xbf"):
        raise Rejection("file starts with a UTF-8 byte order mark; save it without BOM", code="bom")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Rejection(f"file is not valid UTF-8 (byte {error.start})", code="not-utf8") from None


def parse_json_object(text: str) -> dict[str, Any]:
    """CPython's C decoder is linear in the input and stops at its recursion limit; the nesting
    cap is checked after it, on text known to be valid JSON."""
    try:
        document = decode_without_collector(text)
    except json.JSONDecodeError as error:
        message = error.msg.removesuffix(" at")  # "Unterminated string starting at" names no place
        raise Rejection(
            f"not valid JSON: {message} at line {error.lineno} column {error.colno}; the file may be cut short",
            code="not-json",
        ) from None
    except RecursionError:
        raise Rejection(f"JSON nests deeper than {MAX_NESTING} levels", code="nesting") from None
    except ValueError:  # int() refuses numbers of more than 4300 digits
        raise Rejection("JSON holds a number too large to read", code="huge-number") from None
    if not isinstance(document, dict):
        raise Rejection(f"JSON top level is {json_type(document)}, expected an object", code="not-object")
    # Fewer brackets than the cap (counted in strings too) cannot nest past it: most uploads.
    if text.count("[") + text.count("{") > MAX_NESTING and nesting_depth(text) > MAX_NESTING:
        raise Rejection(f"JSON nests deeper than {MAX_NESTING} levels", code="nesting")
    return document


def decode_without_collector(text: str) -> Any:
    """The cyclic collector walks every container alive at each of its runs, so building a 1 MiB
    document of nested arrays under it is superlinear (0.44 s at 1 MiB, 0.20 s without). Parsed
    JSON holds no cycles: nothing is left for it meanwhile. (A plain try, not a context manager,
    and a decoder made once: on the path of every upload, each costs more than the parse.)"""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return JSON_DECODER.decode(text)
    finally:
        if was_enabled:
            gc.enable()


def nesting_depth(text: str) -> int:
    """Bracket depth of valid JSON, up to MAX_NESTING + 1, in at most that many linear passes in C:
    strings removed, everything but brackets dropped, then the innermost pairs peeled per pass."""
    brackets = NOT_BRACKETS.sub("", JSON_STRING.sub("", text)).translate(SQUARE)
    depth = 0
    while brackets and depth <= MAX_NESTING:
        brackets = brackets.replace("[]", "")  # one pass peels one level: pairs it makes wait for the next
        depth += 1
    return depth


def check_allow_list(model: type[BaseModel], document: dict[str, Any]) -> None:
    """Every key of the document on the model's allow-list, with a value of the listed type."""
    try:
        model.__pydantic_validator__.validate_python(document)
    except ValidationError as error:
        raise allow_list_rejection(error) from None


def allow_list_rejection(error: ValidationError) -> Rejection:
    """A key off the list is named (when it reads like a name), never its value."""
    for item in error.errors(include_input=False, include_url=False, include_context=False):
        if item["type"] == "extra_forbidden":
            where = ".".join(quote_location(part) for part in item["loc"])
            return Rejection(f"key {where} is not on the allow-list; {TRUST_HINT}", code="not-allowed")
    return Rejection(describe_model_error(error), code="schema")


def check_aws_keys(parser: configparser.ConfigParser, allowed: frozenset[str]) -> None:
    for section in parser.sections():
        if section.startswith(("services ", "sso-session ")):
            raise Rejection(
                f"section {quote_section(section)} is not on the allow-list (it sets endpoints or a sign-in URL);"
                f" {TRUST_HINT}",
                code="not-allowed",
            )
        for key, value in parser.items(section):
            if key not in allowed:
                raise Rejection(
                    f"profile {quote_section(section)}: key {quote_name(key)} is not on the allow-list; {TRUST_HINT}",
                    code="not-allowed",
                )
            if key == "credential_source" and value.strip() not in AWS_CREDENTIAL_SOURCES:
                raise Rejection(
                    f"profile {quote_section(section)}: credential_source must be one of"
                    f" {', '.join(sorted(AWS_CREDENTIAL_SOURCES))}",
                    code="schema",
                )


def reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)  # built in C; only a shorter one has a key twice
    if len(document) != len(pairs):
        counts = Counter(key for key, _ in pairs)
        repeated = next(key for key, _ in pairs if counts[key] > 1)
        raise Rejection(f"JSON object has the key {quote_name(repeated)} twice", code="duplicate-key")
    return document


def reject_constant(name: str) -> None:
    raise Rejection(f"JSON holds {name}, which is not valid JSON", code="not-json")


JSON_DECODER = json.JSONDecoder(object_pairs_hook=reject_duplicate_keys, parse_constant=reject_constant)


def json_type(value: object) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), "null")


def quote_name(name: str) -> str:
    return repr(name) if name in KNOWN_NAMES or reads_like_a_name(name) else "(a key not shown)"


def reads_like_a_name(name: str) -> bool:
    return NAME_LIKE.match(name) is not None and len(CASE_CHANGE.findall(name)) <= MAX_CASE_CHANGES


def quote_scope(scope: str) -> str:
    return scope if QUOTABLE_SCOPE.match(scope) else "(a scope not shown)"


def quote_section(section: str) -> str:
    return repr(section) if QUOTABLE_SECTION.match(section) else "(a section not shown)"


def validate_claude_oauth(document: dict[str, Any], now_ms: int, *, trust_uploader: bool) -> CredentialSummary:
    model = TrustedClaudeCredentials if trust_uploader else ClaudeCredentials
    try:
        # The model's own validator: model_validate is a wrapper that costs a cold call per upload.
        oauth: ClaudeOauth = model.__pydantic_validator__.validate_python(document).claudeAiOauth
    except ValidationError as error:
        raise allow_list_rejection(error) from None
    warnings = []
    access_expired = oauth.expiresAt <= now_ms
    if access_expired and oauth.refreshToken is None:
        raise Rejection(
            f"the access token expired {relative(oauth.expiresAt, now_ms)} and there is no refresh token;"
            " create a new one with `claude setup-token` and upload that",
            code="expired",
        )
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
    return str(part) if isinstance(part, int) else quote_name(part).strip("'")


class LinearConfigParser(configparser.ConfigParser):
    """configparser's option pattern (`.*?\\s*[=:]`) backtracks quadratically on a long line with
    no delimiter; this one cannot (possessive), and splits at the same first `=` or `:`. The
    option name keeps trailing blanks, which configparser strips itself."""

    OPTCRE = re.compile(r"(?P<option>[^=:]*+)(?P<vi>[=:])\s*+(?P<value>.*)$")


def parse_ini(text: str) -> configparser.ConfigParser:
    if not text.endswith("\n"):
        # Tools write INI files line by line; a last line without its newline was cut short.
        raise Rejection(
            "INI file does not end with a newline: it looks cut short; if it is whole, add a final newline",
            code="truncated",
        )
    text_lines = text.split("\n")
    if len(text_lines) > MAX_INI_LINES:
        raise Rejection(f"INI file has more than {MAX_INI_LINES} lines; AWS files are far smaller", code="long-file")
    for lineno, line in enumerate(text_lines, 1):
        if len(line) > MAX_INI_LINE:
            raise Rejection(f"INI line {lineno} is longer than {MAX_INI_LINE} characters", code="long-line")
    # No interpolation (AWS tools do none) and no DEFAULT magic: every section is ordinary.
    parser = LinearConfigParser(interpolation=None, strict=True, default_section="\x00")
    try:
        parser.read_string(text)
    except configparser.MissingSectionHeaderError as error:
        raise Rejection(f"INI line {error.lineno} comes before any [section]", code="not-ini") from None
    except configparser.DuplicateSectionError as error:
        raise Rejection(
            f"INI section {quote_section(error.section)} appears twice (line {error.lineno})", code="duplicate-section"
        ) from None
    except configparser.DuplicateOptionError as error:
        raise Rejection(
            f"INI key {quote_name(error.option)} appears twice in section {quote_section(error.section)}"
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
                    f"INI key {quote_name(key)} in section {quote_section(section)} uses %(...) interpolation,"
                    " which AWS tools do not expand",
                    code="interpolation",
                )
    return parser


def validate_aws_credentials(parser: configparser.ConfigParser) -> CredentialSummary:
    for section in parser.sections():
        for key in ("aws_access_key_id", "aws_secret_access_key"):
            if not parser.get(section, key, fallback="").strip():
                raise Rejection(f"profile {quote_section(section)} has no {key}", code="missing-key")
        if not AWS_ACCESS_KEY_ID.match(parser.get(section, "aws_access_key_id").strip()):
            raise Rejection(
                f"profile {quote_section(section)}: aws_access_key_id is not 16-128 capital letters and digits",
                code="schema",
            )
    return CredentialSummary("aws-credentials", sections=tuple(parser.sections()))
