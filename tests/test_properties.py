"""Property tests for every validator and parser that sees outside input: uploads of every kind,
settings, route paths, notify targets, what a container reports about its process, what a
consumer leaves in its credential file, and the log renderers that print all of it.

Each validator either returns its result or raises the project's own error (Rejection,
ConfigError, ProcReadError); a reason is one printable line, short, with a fixed metrics code,
and never holds a piece of a secret. tests/test_validators.py has the examples and the first
properties (random bytes, random JSON documents); these go further: valid files damaged the
way a cut-off transfer or a bad paste damages them, generated valid files, and the non-upload
parsers."""

from __future__ import annotations

import base64
import contextlib
import json
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loguru import logger

from credsync.credential_health import CredentialHealth, claude_health
from credsync.errors import ConfigError, CredsyncError, Rejection, one_line, printable
from credsync.logs import render_json, render_text
from credsync.notify.procstatus import ProcReadError, Verdict, receiver_verdict
from credsync.notify.targets import TargetSpec, parse_target
from credsync.routes import KINDS, Kind, is_rsync_temp, normalise_upload_path
from credsync.settings import ALLOWED_SIGNALS, load_settings, parse_mode, parse_owner, parse_signal
from credsync.validators import MAX_NESTING, CredentialSummary, is_sound, nesting_depth, validate

MAX = 1 << 20
NOW = 1_800_000_000_000
HOUR_MS = 3_600_000
REASON_LIMIT = 300  # a reason is a log field: one short line
CODE = re.compile(r"^[a-z][a-z0-9-]{0,23}$")  # a metrics label: a fixed name, never input
PIECE = 8

EXAMPLES = settings()  # the profile's count (conftest.py): 100 in the fast tier, 300 in the whole suite
FEW_EXAMPLES = settings(max_examples=max(1, settings().max_examples // 3))


# --------------------------------------------------------------------------- judging


def pieces(secret: str) -> set[str]:
    return {secret[i : i + PIECE] for i in range(len(secret) - PIECE + 1)}


def assert_clean_reason(error: CredsyncError, secrets: Sequence[str]) -> None:
    reason = error.reason
    assert reason.strip(), "an empty reason"
    assert "\n" not in reason and reason.isprintable(), "a reason must be one printable line"
    assert len(reason) <= REASON_LIMIT, f"a reason of {len(reason)} characters"
    for secret in secrets:
        leaked = [piece for piece in pieces(secret) if piece in reason]
        assert not leaked, "a reason quotes a piece of a secret"


# Trusted (no allow-list), validating them is parsing them.
SYNTAX_ONLY: tuple[Kind, ...] = ("claude-settings", "claude-global-config", "aws-config")


def judge(kind: Kind, data: bytes, secrets: Sequence[str] = ()) -> CredentialSummary | None:
    """Validate as the daemon does: a summary, or None for a clean rejection; anything else fails."""
    try:
        summary = validate(kind, data, max_bytes=MAX, now_ms=NOW, trust_uploader=True)
    except Rejection as rejection:
        assert_clean_reason(rejection, secrets)
        assert CODE.match(rejection.code), f"metrics code {rejection.code!r}"
        if kind in SYNTAX_ONLY:
            assert not is_sound(kind, data, max_bytes=MAX), "refused, yet sound as a destination"
        return None
    try:  # the allow-list on top refuses only by key (or a listed key's type), and quotes no secret either
        validate(kind, data, max_bytes=MAX, now_ms=NOW)
    except Rejection as rejection:
        assert rejection.code in ("not-allowed", "schema"), f"refused only by the allow-list: {rejection.code}"
        assert_clean_reason(rejection, secrets)
    shown = repr(summary)
    for secret in secrets:
        assert not any(piece in shown for piece in pieces(secret)), "a summary holds a piece of a secret"
    if kind != "claude-setup-token":  # its destination is the credential rendered from it, not the upload
        assert is_sound(kind, data, max_bytes=MAX), "accepted, yet not sound as a destination"
    return summary


# --------------------------------------------------------------------------- generated valid files


def marked(text: str) -> str:
    """A secret with a `~` after every character: any 8 characters of it hold a `~`, which no
    reason or summary text has, so finding a piece of it there is a leak, not a coincidence
    with a number or a word."""
    return "".join(f"{char}~" for char in text)


TOKEN_ALPHABET = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
tokens = st.text(TOKEN_ALPHABET, min_size=8, max_size=32).map(marked)
b64_secrets = st.binary(min_size=12, max_size=30).map(lambda raw: marked(base64.b64encode(raw).decode().rstrip("=")))
key_ids = st.from_regex(r"AKIA[A-Z0-9]{16}", fullmatch=True)
profile_names = st.from_regex(r"[a-z][a-z0-9_-]{0,11}", fullmatch=True)
plain_values = st.from_regex(r"[A-Za-z0-9./_-]{1,20}", fullmatch=True)
json_leaves = st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.text(max_size=12)
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12,
)
RESERVED = {"accessToken", "refreshToken", "expiresAt", "scopes", "refreshTokenExpiresAt", "claudeAiOauth"}
extras = st.dictionaries(
    st.text(min_size=1, max_size=12).filter(lambda key: key not in RESERVED), json_values, max_size=4
)


@st.composite
def claude_files(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    access, refresh = draw(tokens), draw(tokens)
    oauth: dict[str, Any] = {
        **draw(extras),
        "accessToken": access,
        "refreshToken": refresh,
        "expiresAt": draw(st.integers(NOW + 1, NOW + 30 * 24 * HOUR_MS)),
        "scopes": draw(st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=4)),
    }
    document = {**draw(extras), "claudeAiOauth": oauth}
    indent = draw(st.sampled_from([None, 2, 4]))
    return json.dumps(document, indent=indent, ensure_ascii=draw(st.booleans())).encode(), [access, refresh]


@st.composite
def settings_files(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    """`.claude.json` / `settings.json`: MCP servers and environment with API keys in them."""
    key = draw(tokens)
    document = {
        **draw(extras),
        "env": {"ANTHROPIC_API_KEY": key},
        "mcpServers": {"srv": {"command": "npx", "args": ["-y", "server"], "env": {"TOKEN": key}}},
    }
    return json.dumps(document, indent=draw(st.sampled_from([None, 2]))).encode(), [key]


@st.composite
def aws_credential_files(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    names = draw(st.lists(profile_names, min_size=1, max_size=4, unique=True))
    secrets, lines = [], []
    for name in names:
        secret = draw(b64_secrets)
        secrets.append(secret)
        lines += [f"[{name}]", f"aws_access_key_id = {draw(key_ids)}", f"aws_secret_access_key = {secret}"]
        if draw(st.booleans()):
            token = draw(b64_secrets) + draw(b64_secrets)
            secrets.append(token)
            lines.append(f"aws_session_token = {token}")
        if draw(st.booleans()):
            lines.append(f"region = {draw(plain_values)}")
        if draw(st.booleans()):
            lines.append("")
    return ("\n".join(lines) + "\n").encode(), secrets


@st.composite
def aws_config_files(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    names = draw(st.lists(profile_names, min_size=1, max_size=4, unique=True))
    secrets, lines = [], []
    for index, name in enumerate(names):
        lines.append("[default]" if index == 0 and draw(st.booleans()) else f"[profile {name}]")
        lines.append(f"region = {draw(plain_values)}")
        if draw(st.booleans()):
            secret = draw(b64_secrets)
            secrets.append(secret)
            lines.append(f"credential_process = /usr/local/bin/fetch --token {secret}")
        if draw(st.booleans()):
            lines.append(f"# {draw(plain_values)}")
    return ("\n".join(lines) + "\n").encode(), secrets


@st.composite
def setup_token_files(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    secret = draw(st.from_regex(r"[A-Za-z0-9_-]{16,40}", fullmatch=True))
    # The prefix is public (reasons name it); the rest is the secret.
    return ("sk-ant-oat01-" + secret + draw(st.sampled_from(["", "\n", "\r\n"]))).encode(), [secret]


VALID_FILES: dict[Kind, Callable[[], st.SearchStrategy[tuple[bytes, list[str]]]]] = {
    "claude-oauth": claude_files,
    "claude-setup-token": setup_token_files,
    "claude-settings": settings_files,
    "claude-global-config": settings_files,
    "aws-credentials": aws_credential_files,
    "aws-config": aws_config_files,
}


@st.composite
def kind_and_valid_file(draw: st.DrawFn) -> tuple[Kind, bytes, list[str]]:
    kind = draw(st.sampled_from(KINDS))
    data, secrets = draw(VALID_FILES[kind]())
    return kind, data, secrets


DAMAGE = st.sampled_from(["truncate", "delete", "insert", "duplicate-line", "drop-line", "swap-lines", "flip-byte"])
SPLICES = st.sampled_from([b'"', b"{", b"}", b"[", b"]", b",", b":", b"=", b"\n", b"%(", b"\\", b"\x00", b"\xff", b"["])


@st.composite
def damaged(draw: st.DrawFn, data: bytes) -> bytes:
    """What a cut-off transfer, a bad paste or an editor accident does to a file."""
    buffer = bytearray(data)
    for operation in draw(st.lists(DAMAGE, min_size=1, max_size=3)):
        size = len(buffer)
        lines = bytes(buffer).split(b"\n")
        if operation == "truncate":
            del buffer[draw(st.integers(0, size)) :]
        elif operation == "delete":
            start = draw(st.integers(0, size))
            del buffer[start : draw(st.integers(start, min(size, start + 40)))]
        elif operation == "insert":
            at = draw(st.integers(0, size))
            buffer[at:at] = draw(SPLICES | st.binary(min_size=1, max_size=6))
        elif operation == "flip-byte" and size:
            at = draw(st.integers(0, size - 1))
            buffer[at] ^= draw(st.integers(1, 255))
        elif operation in ("duplicate-line", "drop-line", "swap-lines"):
            first, second = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            if operation == "duplicate-line":
                lines.insert(second, lines[first])
            elif operation == "drop-line":
                del lines[first]
            else:
                lines[first], lines[second] = lines[second], lines[first]
            buffer = bytearray(b"\n".join(lines))
    return bytes(buffer)


# --------------------------------------------------------------------------- uploads: every kind


@EXAMPLES
@given(kind_and_valid_file())
def test_generated_valid_files_of_every_kind_are_accepted_and_summarised_without_secrets(
    case: tuple[Kind, bytes, list[str]],
) -> None:
    kind, data, secrets = case
    summary = judge(kind, data, secrets)
    assert summary is not None and summary.kind == kind
    assert summary.warnings == ()


@EXAMPLES
@given(st.data(), kind_and_valid_file())
def test_damaged_files_of_every_kind_are_judged_without_quoting_a_secret(
    data: st.DataObject, case: tuple[Kind, bytes, list[str]]
) -> None:
    kind, original, secrets = case
    judge(kind, data.draw(damaged(original)), secrets)


@EXAMPLES
@given(st.data(), kind_and_valid_file())
def test_a_damaged_file_is_judged_the_same_under_every_kind(
    data: st.DataObject, case: tuple[Kind, bytes, list[str]]
) -> None:
    """A file uploaded under the wrong name: every validator copes with every other's input."""
    _, original, secrets = case
    broken = data.draw(damaged(original))
    for kind in KINDS:
        judge(kind, broken, secrets)


@EXAMPLES
@given(kind=st.sampled_from(KINDS), text=st.text(max_size=300))
def test_any_unicode_text_gives_a_summary_or_a_clean_rejection(kind: Kind, text: str) -> None:
    judge(kind, text.encode("utf-8", "surrogatepass"))


ini_lines = st.one_of(
    profile_names.map(lambda name: f"[{name}]"),
    st.tuples(profile_names, st.text(max_size=20)).map(lambda pair: f"{pair[0]} = {pair[1]}"),
    st.text(max_size=20).map(lambda text: f"# {text}"),
    st.text(max_size=20).map(lambda text: f"  {text}"),
    st.text(max_size=20),
    st.just(""),
)


@EXAMPLES
@given(kind=st.sampled_from(KINDS), lines=st.lists(ini_lines, max_size=12), newline=st.booleans())
def test_any_ini_like_text_gives_a_summary_or_a_clean_rejection(kind: Kind, lines: list[str], newline: bool) -> None:
    text = "\n".join(lines) + ("\n" if newline else "")
    judge(kind, text.encode("utf-8", "surrogatepass"))


@EXAMPLES
@given(kind=st.sampled_from(KINDS), case=kind_and_valid_file(), at=st.integers(0, 10_000), what=st.sampled_from("NBU"))
def test_nul_bom_and_invalid_utf8_are_refused_by_every_kind_with_a_fixed_code(
    kind: Kind, case: tuple[Kind, bytes, list[str]], at: int, what: str
) -> None:
    _, data, secrets = case
    at = min(at, len(data))
    bad, code = {
        "N": (data[:at] + b"\x00" + data[at:], "nul-bytes"),
        "B": (b"\xef\xbb\xbf" + data, "bom"),
        "U": (data[:at] + b"\xc3\x28" + data[at:], "not-utf8"),
    }[what]
    with pytest.raises(Rejection) as caught:
        validate(kind, bad, max_bytes=MAX, now_ms=NOW)
    assert caught.value.code == code
    assert_clean_reason(caught.value, secrets)


@EXAMPLES
@given(kind=st.sampled_from(KINDS), case=kind_and_valid_file())
def test_anything_over_the_size_cap_is_refused_before_it_is_parsed(
    kind: Kind, case: tuple[Kind, bytes, list[str]]
) -> None:
    _, data, _ = case
    with pytest.raises(Rejection) as caught:
        validate(kind, data, max_bytes=len(data) - 1, now_ms=NOW)
    assert caught.value.code == "too-large"


# --------------------------------------------------------------------------- uploads: per kind


@EXAMPLES
@given(
    access=tokens,
    refresh=tokens,
    expires=st.integers(1, 10**14 - 1),
    refresh_expires=st.none() | st.integers(1, 10**14 - 1),
    now=st.integers(1, 10**14 - 1),
)
def test_claude_expiry_rules_hold_for_every_pair_of_times(
    access: str, refresh: str, expires: int, refresh_expires: int | None, now: int
) -> None:
    """Accepted unless both tokens expired; a warning for each expired token otherwise."""
    oauth: dict[str, Any] = {"accessToken": access, "refreshToken": refresh, "expiresAt": expires, "scopes": ["s"]}
    if refresh_expires is not None:
        oauth["refreshTokenExpiresAt"] = refresh_expires
    data = json.dumps({"claudeAiOauth": oauth}).encode()
    access_expired = expires <= now
    refresh_expired = refresh_expires is not None and refresh_expires <= now
    try:
        summary = validate("claude-oauth", data, max_bytes=MAX, now_ms=now)
    except Rejection as rejection:
        assert access_expired and refresh_expired and rejection.code == "expired"
        assert_clean_reason(rejection, [access, refresh])
        return
    assert not (access_expired and refresh_expired)
    assert len(summary.warnings) == access_expired + refresh_expired
    assert (summary.expires_at_ms, summary.refresh_expires_at_ms, summary.scopes) == (expires, refresh_expires, ("s",))


@EXAMPLES
@given(
    field=st.sampled_from(["accessToken", "refreshToken", "expiresAt", "scopes", "refreshTokenExpiresAt"]),
    value=json_values,
    case=claude_files(),
)
def test_a_claude_field_of_any_other_value_is_accepted_or_named_in_the_reason(
    field: str, value: object, case: tuple[bytes, list[str]]
) -> None:
    data, secrets = case
    document = json.loads(data)
    document["claudeAiOauth"][field] = value
    try:  # trusted: the generated extras are off the allow-list, and this is about the login's own fields
        validate("claude-oauth", json.dumps(document).encode(), max_bytes=MAX, now_ms=NOW, trust_uploader=True)
    except Rejection as rejection:
        assert_clean_reason(rejection, secrets)
        assert field in rejection.reason or rejection.code == "expired", rejection.reason


def depth_of(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((depth_of(item) for item in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(item) for item in value), default=0)
    return 0


deep_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, min_size=1, max_size=2)
        | st.dictionaries(st.text(max_size=6), children, min_size=1, max_size=2)
    ),
    max_leaves=60,
)


@EXAMPLES
@given(value=deep_values, wrap=st.integers(0, 40), strings=st.lists(st.text(alphabet='[]{}"\\', max_size=8)))
def test_nesting_depth_is_the_structural_depth_and_the_limit_is_exact(
    value: object, wrap: int, strings: list[str]
) -> None:
    document: object = {"strings": strings, "value": value}  # brackets and quotes inside strings do not count
    for _ in range(wrap):
        document = [document]
    text = json.dumps({"top": document})
    # Counted exactly up to one past the limit, which is all the check needs.
    assert nesting_depth(text) == min(depth_of({"top": document}), MAX_NESTING + 1)
    try:
        validate("claude-settings", text.encode(), max_bytes=MAX, now_ms=NOW, trust_uploader=True)
    except Rejection as rejection:
        assert depth_of({"top": document}) > MAX_NESTING and rejection.code == "nesting"
    else:
        assert depth_of({"top": document}) <= MAX_NESTING


@EXAMPLES
@given(case=settings_files(), key=st.text(min_size=1, max_size=12), first=json_values, second=json_values)
def test_a_duplicate_key_at_any_depth_is_refused(
    case: tuple[bytes, list[str]], key: str, first: object, second: object
) -> None:
    data, secrets = case
    inner = json.dumps({key: first})[:-1] + ", " + json.dumps(key) + ": " + json.dumps(second) + "}"
    text = data.decode()[:-1] + ', "nested": {"deeper": ' + inner + "}}"
    with pytest.raises(Rejection) as caught:
        validate("claude-settings", text.encode(), max_bytes=MAX, now_ms=NOW, trust_uploader=True)
    assert caught.value.code == "duplicate-key"
    assert_clean_reason(caught.value, secrets)


@EXAMPLES
@given(
    case=aws_credential_files(),
    drop=st.sampled_from(["aws_access_key_id", "aws_secret_access_key"]),
    which=st.integers(0, 3),
)
def test_every_aws_profile_needs_both_keys(case: tuple[bytes, list[str]], drop: str, which: int) -> None:
    data, secrets = case
    lines = data.decode().split("\n")
    positions = [index for index, line in enumerate(lines) if line.startswith(drop)]
    del lines[positions[which % len(positions)]]
    with pytest.raises(Rejection) as caught:
        validate("aws-credentials", "\n".join(lines).encode(), max_bytes=MAX, now_ms=NOW)
    assert drop in caught.value.reason and caught.value.code == "missing-key"
    assert_clean_reason(caught.value, secrets)


@EXAMPLES
@given(case=aws_config_files(), at=st.integers(0, 10_000))
def test_interpolation_anywhere_in_an_aws_value_is_refused(case: tuple[bytes, list[str]], at: int) -> None:
    data, secrets = case
    lines = data.decode().split("\n")
    values = [index for index, line in enumerate(lines) if " = " in line]
    index = values[at % len(values)]
    lines[index] += " %(HOME)s"
    with pytest.raises(Rejection) as caught:
        validate("aws-config", "\n".join(lines).encode(), max_bytes=MAX, now_ms=NOW)
    assert caught.value.code == "interpolation"
    assert_clean_reason(caught.value, secrets)


@EXAMPLES
@given(case=aws_credential_files(), which=st.integers(0, 3))
def test_a_repeated_aws_profile_is_refused(case: tuple[bytes, list[str]], which: int) -> None:
    data, secrets = case
    headers = [line for line in data.decode().split("\n") if line.startswith("[")]
    repeated = data + f"{headers[which % len(headers)]}\nregion = x\n".encode()
    with pytest.raises(Rejection) as caught:
        validate("aws-credentials", repeated, max_bytes=MAX, now_ms=NOW)
    assert caught.value.code == "duplicate-section"
    assert_clean_reason(caught.value, secrets)


# --------------------------------------------------------------------------- what the consumer leaves behind


@EXAMPLES
@given(case=kind_and_valid_file(), extra=st.data())
def test_the_consumer_credential_check_takes_any_bytes(
    case: tuple[Kind, bytes, list[str]], extra: st.DataObject
) -> None:
    """The consumer may write anything into its own file; credsync only reads it."""
    _, data, _ = case
    health = claude_health(extra.draw(damaged(data)))
    assert health is None or isinstance(health, CredentialHealth)


@FEW_EXAMPLES
@given(case=claude_files(), now=st.integers(0, 10**14), window=st.integers(0, 10**10))
def test_the_consumer_credential_advice_never_holds_a_secret(
    case: tuple[bytes, list[str]], now: int, window: int
) -> None:
    data, secrets = case
    health = claude_health(data)
    assert health is not None
    for problem in health.problems(now, window):
        assert CODE.match(problem.code) and "\n" not in problem.advice
        assert not any(piece in problem.advice for secret in secrets for piece in pieces(secret))


@FEW_EXAMPLES
@given(depth=st.integers(2_000, 200_000), opener=st.sampled_from(["[", '{"a":']))
def test_the_consumer_credential_check_takes_any_nesting(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    health = claude_health((opener * depth + "1" + closer * depth).encode())
    assert health is None


# --------------------------------------------------------------------------- what a container reports


class FakeProc:
    """A container's /proc as `docker exec cat` would return it: whatever the container prints."""

    root_pid = 1

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files

    def read(self, pid: int, name: str) -> str:
        try:
            return self.files[f"{pid}/{name}"]
        except KeyError:
            raise ProcReadError(f"cat /proc/{pid}/{name} inside the container exited 1") from None


status_lines = st.one_of(
    st.sampled_from(["Name:\tnode", "Name:\ttini", "Name:\tdocker-init", "SigCgt:\t0000000000000001"]),
    st.tuples(st.sampled_from(["Name", "SigCgt", "SigIgn", "Pid"]), st.text(max_size=20)).map(": ".join),
    st.text(max_size=30),
)


@EXAMPLES
@given(
    init=st.lists(status_lines, max_size=6),
    children=st.text(max_size=12),
    child=st.lists(status_lines, max_size=6),
    signal_name=st.sampled_from(ALLOWED_SIGNALS),
)
def test_a_container_reporting_anything_about_its_process_gets_a_verdict_or_a_read_error(
    init: list[str], children: str, child: list[str], signal_name: str
) -> None:
    proc = FakeProc({"1/status": "\n".join(init), "1/task/1/children": children, "7/status": "\n".join(child)})
    try:
        verdict = receiver_verdict(proc, signal_name)
    except ProcReadError:
        return
    assert isinstance(verdict, Verdict) and "\n" not in verdict.explanation


@EXAMPLES
@given(text=st.text(max_size=80))
def test_any_notify_target_text_is_a_target_or_a_config_error(text: str) -> None:
    try:
        spec = parse_target(text)
    except ConfigError as error:
        assert_clean_reason(error, [])
        return
    assert isinstance(spec, TargetSpec) and spec.describe()


# --------------------------------------------------------------------------- settings and routes


@EXAMPLES
@given(mode=st.integers(0, 0o777), uid=st.integers(0, 2**32 - 1), gid=st.integers(0, 2**32 - 1))
def test_modes_and_owners_round_trip(mode: int, uid: int, gid: int) -> None:
    if mode & 0o117:  # a bit for others or an execute bit: refused
        with pytest.raises(ValueError, match="lets others read or anyone execute"):
            parse_mode(f"{mode:04o}")
    else:
        assert parse_mode(f"{mode:04o}") == parse_mode(f"{mode:o}") == mode
    assert parse_owner(f"{uid}:{gid}") == (uid, gid)
    with pytest.raises(ValueError, match="UID:GID"):
        parse_owner(str(uid))


@EXAMPLES
@given(text=st.text(max_size=20))
def test_mode_owner_and_signal_parsers_accept_or_raise_value_error(text: str) -> None:
    for parse in (parse_mode, parse_owner, parse_signal):
        try:
            parse(text)
        except ValueError as error:
            assert "\n" not in str(error).replace(repr(text), "")
    with contextlib.suppress(ValueError):
        assert parse_signal(text) in ALLOWED_SIGNALS  # never KILL or STOP, whatever the spelling


SETTING_NAMES = [
    "owner",
    "aws_owner",
    "mode",
    "settle_ms",
    "max_bytes",
    "notify",
    "notify_signal",
    "http",
    "log_format",
]


@EXAMPLES
@given(name=st.sampled_from(SETTING_NAMES), value=st.text(max_size=30))
def test_any_setting_value_gives_settings_or_one_config_error(name: str, value: str) -> None:
    base: dict[str, object] = {"source": "/srv/up", "claude_dir": "/srv/claude", "state_dir": "/srv/state"}
    try:
        load_settings({**base, name: value})
    except ConfigError as error:
        assert "\n" not in error.reason and error.reason.isprintable()
        assert f"CREDSYNC_{name.upper()}" in error.reason


@EXAMPLES
@given(
    secret=tokens.filter(lambda text: "/" not in text and "#" not in text and "?" not in text),
    junk=st.text(max_size=10),
)
def test_a_bad_notify_url_is_refused_without_echoing_its_secret(secret: str, junk: str) -> None:
    url = f"ftp://user:{secret}@example.invalid/hook?token={secret}{junk}"
    with pytest.raises(ConfigError) as caught:
        load_settings(
            {
                "source": "/srv/up",
                "claude_dir": "/srv/claude",
                "state_dir": "/srv/state",
                "notify": "http",
                "notify_url": url,
            }
        )
    assert_clean_reason(caught.value, [secret])


@EXAMPLES
@given(text=st.text(max_size=40))
def test_a_route_upload_path_never_leaves_the_source(text: str) -> None:
    try:
        path = normalise_upload_path(text)
    except ConfigError as error:
        assert "\n" not in error.reason
        return
    assert not path.startswith("/") and ".." not in path.split("/") and path not in ("", ".")
    is_rsync_temp(path)


# --------------------------------------------------------------------------- what gets logged


@EXAMPLES
@given(text=st.text())
def test_printable_and_one_line_leave_no_control_character(text: str) -> None:
    assert printable(text).isprintable()
    line = one_line(text)
    assert line.isprintable() and "\n" not in line and "\r" not in line
    if text.isprintable():
        assert printable(text) == text


def captured_record() -> dict[str, Any]:
    """A real loguru record, captured once, to vary."""
    records: list[dict[str, Any]] = []
    handler = logger.add(lambda message: records.append(dict(message.record)), format="{message}")
    try:
        logger.info("template")
    finally:
        logger.remove(handler)
    return records[0]


TEMPLATE = captured_record()


@EXAMPLES
@given(
    message=st.text(max_size=60),
    extra=st.dictionaries(st.sampled_from(["route", "upload", "reason", "path"]), st.text(max_size=60)),
)
def test_a_log_record_of_any_text_is_one_line_in_both_formats(message: str, extra: dict[str, str]) -> None:
    record = {**TEMPLATE, "message": message, "extra": extra, "time": datetime(2030, 1, 1, tzinfo=UTC)}
    text = render_text(cast(Any, record))
    assert "\n" not in text and "\r" not in text and text.isprintable()
    as_json = render_json(cast(Any, record))
    assert "\n" not in as_json and as_json.isascii() and not any(ord(char) < 0x20 for char in as_json)
    assert json.loads(as_json)["message"] == message and {k: json.loads(as_json)[k] for k in extra} == extra
