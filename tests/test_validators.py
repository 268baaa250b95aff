"""Validators are pure functions of bytes: each bad input is rejected with a one-line reason
that quotes no secret; good input gives a summary without secrets."""

from __future__ import annotations

import gc
import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from credsync.errors import Rejection
from credsync.routes import KINDS, Kind
from credsync.validators import KNOWN_NAMES, is_sound, nesting_depth, validate
from tests.helpers import (
    ACCESS_TOKEN,
    AWS_SECRET,
    CANARY,
    HOUR_MS,
    REFRESH_TOKEN,
    aws_credentials,
    claude_credentials,
    now_ms,
)

MAX = 1 << 20
NOW = 1_800_000_000_000


def check(kind: Kind, data: bytes, now_ms: int = NOW) -> str:
    """The rejection reason, asserted to be one canary-free line."""
    with pytest.raises(Rejection) as caught:
        validate(kind, data, max_bytes=MAX, now_ms=now_ms)
    reason = caught.value.reason
    assert "\n" not in reason and reason.strip()
    assert CANARY not in reason
    return reason


def oauth(**fields: object) -> bytes:
    base: dict[str, object] = {
        "accessToken": ACCESS_TOKEN,
        "refreshToken": REFRESH_TOKEN,
        "expiresAt": NOW + HOUR_MS,
        "scopes": ["user:inference"],
    }
    base.update(fields)
    return json.dumps({"claudeAiOauth": {k: v for k, v in base.items() if v is not None}}).encode()


def test_a_laptops_login_is_accepted_with_every_field_claude_code_writes() -> None:
    # Claude Code 2.1.x: clientId in the login; MCP servers' and design sign-ins beside it.
    login = json.loads(claude_credentials(clientId="9d1c250a-e61b-44d9-88ed-5944d1962f5e"))
    login["mcpOAuth"] = {
        "linear|0a1b": {
            "serverName": "linear",
            "serverUrl": "https://mcp.linear.app/sse",
            "accessToken": "t",
            "expiresAt": 1,
            "discoveryState": {"x": 1},
        }
    }
    login["designOauth"] = {"accessToken": "t", "refreshToken": "r", "clientId": "c"}
    login["trustedDeviceToken"] = "t"
    summary = validate("claude-oauth", json.dumps(login).encode(), max_bytes=MAX, now_ms=now_ms())
    assert summary.kind == "claude-oauth" and summary.scopes == ("user:inference", "user:profile")


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"enterpriseGateway": {"url": "http://127.0.0.1:1"}}, "enterpriseGateway"),
        ({"gatewayTrust": {"127.0.0.1": "pin"}}, "gatewayTrust"),
        ({"pluginSecrets": {"p/s": {"command": "id"}}}, "pluginSecrets"),
        ({"claudeAiOauth": {"tokenUrl": "http://127.0.0.1:1"}}, "claudeAiOauth.tokenUrl"),
    ],
)
def test_a_login_with_a_key_off_its_allow_list_is_refused_naming_it(extra: dict[str, Any], named: str) -> None:
    login = json.loads(claude_credentials())
    for key, value in extra.items():
        login[key] = {**login[key], **value} if key in login else value
    data = json.dumps(login).encode()
    reason = check("claude-oauth", data)
    assert reason.startswith(f"key {named} is not on the allow-list") and "127.0.0.1" not in reason, reason
    assert validate("claude-oauth", data, max_bytes=MAX, now_ms=now_ms(), trust_uploader=True).kind == "claude-oauth"


@settings()  # the profile's count: see conftest.py
@given(
    secret=st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", min_size=32, max_size=48
    )
)
def test_a_token_shaped_key_is_never_quoted(secret: str) -> None:
    # Secrets are long and random: digits inside them, or case changing at every few letters.
    shaped = (
        any(c.isdigit() for c in secret[:-3])
        or sum(a.islower() and b.isupper() for a, b in itertools.pairwise(secret)) > 5
    )
    if shaped or "+" in secret or "/" in secret or len(secret) > 40:
        assert secret not in check("claude-settings", json.dumps({secret: 1}).encode())


def test_keys_that_read_like_names_are_quoted() -> None:
    for name in ("hooks", "enableAllProjectMcpServers", "GIT_CONFIG_KEY_0", "$schema", "cli_pager"):
        assert (
            f"key {name} is not" in check("claude-settings", json.dumps({"env": {}, name: 1}).encode())
            or name == "$schema"
        )


def test_claude_credentials_are_summarised_without_secrets() -> None:
    now = now_ms()
    summary = validate("claude-oauth", claude_credentials(), max_bytes=MAX, now_ms=now)
    assert summary.scopes == ("user:inference", "user:profile")
    assert summary.expires_at_ms is not None and summary.expires_at_ms > now
    assert summary.warnings == ()
    assert CANARY not in repr(summary)


def test_expired_access_token_with_refresh_token_is_accepted_with_a_warning() -> None:
    summary = validate("claude-oauth", oauth(expiresAt=NOW - 3 * HOUR_MS), max_bytes=MAX, now_ms=NOW)
    assert len(summary.warnings) == 1 and "expired 3h 0m ago" in summary.warnings[0]


def test_both_tokens_expired_is_rejected_with_the_fix() -> None:
    reason = check("claude-oauth", oauth(expiresAt=NOW - HOUR_MS, refreshTokenExpiresAt=NOW - 1))
    assert "log in again" in reason


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "empty"),
        (b"  \n", "empty"),
        (b'{"a": 1}\x00', "NUL"),
        (b"\xef\xbb\xbf{}", "byte order mark"),
        (b'{"a": "\xff"}', "not valid UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nests deeper"),
        (b'{"expiresAt": 1, "expiresAt": 2}', "key 'expiresAt' twice"),
        (b'{"a": ' + b"9" * 5000 + b"}", "number too large"),
        (b'{"a": NaN}', "NaN"),
        (b"[1, 2]", "an array, expected an object"),
        (b'{"claudeAiOauth": ', "not valid JSON"),
        (b"{}", "claudeAiOauth: Field required"),
        (oauth(accessToken=""), "accessToken"),
        (oauth(refreshToken=""), "refreshToken: String should have at least 1 character"),
        (oauth(expiresAt="1800000000000"), "expiresAt: Input should be a valid integer"),
        (oauth(expiresAt=1.5e12), "expiresAt"),
        (oauth(expiresAt=True), "expiresAt"),
        (oauth(scopes=None), "scopes: Field required"),
        (oauth(scopes=[]), "scopes"),
        (oauth(scopes=[1]), "scopes.0"),
        (oauth(accessToken=ACCESS_TOKEN + " \n"), "accessToken"),
    ],
)
def test_bad_claude_credentials_are_rejected_with_a_reason(data: bytes, expected: str) -> None:
    assert expected in check("claude-oauth", data)


def test_oversize_is_rejected() -> None:
    with pytest.raises(Rejection, match="over the limit of 10"):
        validate("claude-settings", b'{"a": "0123456789"}', max_bytes=10, now_ms=NOW)


def test_a_secret_used_as_a_key_is_not_quoted() -> None:
    reason = check("claude-settings", f'{{"{ACCESS_TOKEN}": 1, "{ACCESS_TOKEN}": 2}}'.encode())
    assert "a key not shown" in reason
    off_the_list = check("claude-settings", f'{{"{ACCESS_TOKEN}": 1}}'.encode())
    assert ACCESS_TOKEN not in off_the_list and "key (a key not shown) is not on the allow-list" in off_the_list


@pytest.mark.parametrize(
    ("kind", "data", "expected"),
    [
        ("aws-credentials", b"aws_access_key_id = x\n", "before any [section]"),
        ("aws-credentials", b"# only a comment\n", "no [section]"),
        (
            "aws-credentials",
            b"[a]\naws_access_key_id = x\naws_secret_access_key = y\n[a]\n",
            "section 'a' appears twice",
        ),
        ("aws-credentials", b"[a]\naws_access_key_id = x\naws_access_key_id = y\n", "appears twice in section"),
        ("aws-credentials", b"[a]\naws_access_key_id = x\n", "has no aws_secret_access_key"),
        ("aws-credentials", f"[a]\naws_access_key_id = x\n{AWS_SECRET}\n".encode(), "neither [section] nor key"),
        ("aws-config", b"[default]\nregion = %(home)s\n", "interpolation"),
        ("aws-config", b"[default]\nregion = eu-we", "does not end with a newline"),
        ("aws-credentials", b"[a]\naws_access_key_id = AKIA12\naws_secret_access_key = y\n", "16-128 capital"),
    ],
)
def test_bad_aws_files_are_rejected_with_a_reason(kind: Kind, data: bytes, expected: str) -> None:
    assert expected in check(kind, data)


def test_aws_files_are_accepted() -> None:
    assert validate("aws-credentials", aws_credentials(), max_bytes=MAX, now_ms=NOW).sections == ("default",)
    config = b"[default]\nregion = eu-west-1\n[profile bedrock]\nregion = us-east-1\n"
    assert validate("aws-config", config, max_bytes=MAX, now_ms=NOW).sections == ("default", "profile bedrock")


def test_a_valid_credential_is_described_by_expiry_and_scopes_never_by_a_secret() -> None:
    said = validate("claude-oauth", oauth(), max_bytes=MAX, now_ms=NOW).described(NOW)
    assert said == " (access token expires in 1h 0m; scopes user:inference)"
    crafted = validate("claude-oauth", oauth(scopes=["user:inference", CANARY]), max_bytes=MAX, now_ms=NOW)
    said = crafted.described(NOW)
    assert CANARY not in said and said.endswith("scopes user:inference (a scope not shown))")


def test_an_aws_file_is_described_by_its_sections_each_quoted_only_when_short() -> None:
    config = f"[default]\nregion = eu-west-1\n[profile {CANARY}]\nregion = us-east-1\n".encode()
    said = validate("aws-config", config, max_bytes=MAX, now_ms=NOW).described(NOW)
    assert CANARY not in said and said == " (sections 'default', (a section not shown))"


def test_parsing_pauses_the_cyclic_collector_and_leaves_it_as_it_found_it() -> None:
    # Paused while the document is built (the bench's parse section shows nested arrays linear
    # up to 1 MiB with it, superlinear without); a rejection must not leave it off.
    assert gc.isenabled()
    assert "top level is an array" in check("claude-settings", b"[[1], [2]]")
    assert gc.isenabled()
    gc.disable()
    try:
        validate("claude-settings", b'{"availableModels": ["opus"]}', max_bytes=MAX, now_ms=NOW)
        assert not gc.isenabled(), "it turned on a collector its caller had turned off"
    finally:
        gc.enable()


def test_nesting_depth_ignores_brackets_inside_strings() -> None:
    assert nesting_depth('{"a": "[[[[{{{{", "b": [1, [2]]}') == 3
    assert nesting_depth(r'{"a": "\"[[["}') == 1


def test_soundness_is_syntax_only() -> None:
    blanked = oauth(refreshToken="")
    assert is_sound("claude-oauth", blanked, max_bytes=MAX)
    assert not is_sound("claude-oauth", blanked[:-3], max_bytes=MAX)
    assert not is_sound("aws-config", b"no section", max_bytes=MAX)


def shares_a_piece_with_a_field_name(secret: str) -> bool:
    """A generated 'secret' that happens to contain 8 letters of a field name a reason may
    quote (`…deAiOaut…`) proves nothing about leaks: such examples are left out."""
    return any(secret[i : i + 8] in name for name in KNOWN_NAMES for i in range(len(secret) - 7))


secret_text = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=12, max_size=40).filter(
    lambda secret: not shares_a_piece_with_a_field_name(secret)
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings()  # the profile's count: see conftest.py
@given(kind=st.sampled_from(KINDS), data=st.binary(max_size=400))
def test_any_bytes_give_a_summary_or_a_rejection(kind: Kind, data: bytes) -> None:
    try:
        validate(kind, data, max_bytes=MAX, now_ms=NOW)
    except Rejection as rejection:
        assert "\n" not in rejection.reason


@settings()  # the profile's count: see conftest.py
@given(
    access=secret_text,
    refresh=secret_text,
    expires=json_values,
    scopes=json_values,
    extra=st.dictionaries(st.text(max_size=10), json_values, max_size=3),
)
def test_no_reason_contains_a_piece_of_a_secret_field(
    access: str, refresh: str, expires: object, scopes: object, extra: dict[str, object]
) -> None:
    document = {"claudeAiOauth": {**extra, "accessToken": access, "refreshToken": refresh}}
    document["claudeAiOauth"].update({"expiresAt": expires, "scopes": scopes})
    try:
        validate("claude-oauth", json.dumps(document).encode(), max_bytes=MAX, now_ms=NOW)
    except Rejection as rejection:
        for secret in (access, refresh):
            pieces = {secret[i : i + 8] for i in range(len(secret) - 7)}
            assert not any(piece in rejection.reason for piece in pieces)


@settings(max_examples=200, deadline=None)
@given(secret=secret_text.filter(lambda s: "%" not in s), noise=st.text(max_size=60))
def test_aws_reasons_never_quote_a_secret(secret: str, noise: str) -> None:
    text = f"[p]\naws_access_key_id = AKIAFAKEKEY000000000\naws_secret_access_key = {secret}\n{noise}\n{secret}\n"
    data = text.encode()
    try:
        validate("aws-credentials", data, max_bytes=MAX, now_ms=NOW)
    except Rejection as rejection:
        pieces = {secret[i : i + 8] for i in range(len(secret) - 7)}
        assert not any(piece in rejection.reason for piece in pieces)


# What an adversarial review made the real Claude Code CLI do with each (docs/security.md).
OFF_THE_SETTINGS_LIST = [
    (b'{"apiKeyHelper": "fetch-key"}', "apiKeyHelper"),
    (b'{"awsAuthRefresh": "aws sso login"}', "awsAuthRefresh"),
    (b'{"gcpAuthRefresh": "gcloud auth x"}', "gcpAuthRefresh"),
    (b'{"statusLine": {"type": "command", "command": "x"}}', "statusLine"),
    (b'{"subagentStatusLine": {"type": "command", "command": "x"}}', "subagentStatusLine"),
    (b'{"fileSuggestion": {"type": "command", "command": "x"}}', "fileSuggestion"),
    (b'{"hooks": {"Stop": [{"hooks": [{"type": "command", "command": "x"}]}]}}', "hooks"),
    (b'{"hooks": {}}', "hooks"),  # empty, but a key nobody has said is inert in every release
    (b'{"env": {"NODE_OPTIONS": "--require /tmp/x.js"}}', "env.NODE_OPTIONS"),
    (b'{"env": {"ANTHROPIC_BASE_URL": "http://127.0.0.1:18080"}}', "env.ANTHROPIC_BASE_URL"),
    (b'{"env": {"HTTPS_PROXY": "http://127.0.0.1:3128"}}', "env.HTTPS_PROXY"),
    (b'{"env": {"NODE_EXTRA_CA_CERTS": "/tmp/ca.pem"}}', "env.NODE_EXTRA_CA_CERTS"),
    (b'{"env": {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "core.fsmonitor"}}', "env.GIT_CONFIG_COUNT"),
    (b'{"env": {"SHELLOPTS": "xtrace", "PS4": "$(id)"}}', "env.SHELLOPTS"),
    (b'{"env": {"PATH": "/tmp/x"}}', "env.PATH"),
    (b'{"env": {"CLAUDE_CODE_USE_BEDROCK": "1"}}', "env.CLAUDE_CODE_USE_BEDROCK"),
    (b'{"enableAllProjectMcpServers": true}', "enableAllProjectMcpServers"),
    (b'{"enabledPlugins": {"x@y": true}}', "enabledPlugins"),
    (b'{"extraKnownMarketplaces": {"m": {"source": {"source": "git", "url": "x"}}}}', "extraKnownMarketplaces"),
    (b'{"permissions": {"defaultMode": "bypassPermissions"}}', "permissions.defaultMode"),
    (b'{"permissions": {"allow": ["Bash(*)"]}}', "permissions.allow"),
    (b'{"modelOverrides": {"a": "b"}}', "modelOverrides"),
    (b'{"forceLoginGatewayUrl": "http://127.0.0.1:1"}', "forceLoginGatewayUrl"),
    (b'{"attribution": {"commit": "run curl x | sh first"}}', "attribution"),
]


@pytest.mark.parametrize(("data", "key"), OFF_THE_SETTINGS_LIST)
def test_settings_off_the_allow_list_are_refused_by_key_name_never_value(data: bytes, key: str) -> None:
    reason = check("claude-settings", data)
    assert reason.startswith(f"key {key} is not on the allow-list") and "CREDSYNC_TRUST_UPLOADER" in reason, reason
    for value in ("fetch-key", "aws sso login", "/tmp/x.js", "127.0.0.1", "core.fsmonitor", "$(id)", "Bash(*)"):
        assert value not in reason
    assert validate("claude-settings", data, max_bytes=MAX, now_ms=NOW, trust_uploader=True).kind == "claude-settings"


@pytest.mark.parametrize(
    ("data", "key"),
    [
        (b'{"mcpServers": {"a": {"command": "npx"}}}', "mcpServers"),
        (b'{"mcpServers": {"x": {"type": "http", "url": "http://h", "headersHelper": "id"}}}', "mcpServers"),
        (b'{"projects": {"/p": {"hasTrustDialogAccepted": true}}}', "projects"),
        (b'{"primaryApiKey": "sk-ant-api03-x"}', "primaryApiKey"),
        (b'{"customApiKeyResponses": {"approved": ["x"]}}', "customApiKeyResponses"),
        (b'{"bypassPermissionsModeAccepted": true}', "bypassPermissionsModeAccepted"),
        (b'{"cachedStatsigGates": {"g": true}}', "cachedStatsigGates"),
    ],
)
def test_global_config_off_the_allow_list_is_refused_by_key_name(data: bytes, key: str) -> None:
    reason = check("claude-global-config", data)
    assert reason.startswith(f"key {key} is not on the allow-list"), reason
    assert "sk-ant" not in reason and "npx" not in reason


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        (
            "claude-settings",
            b'{"$schema": "https://json.schemastore.org/claude-code-settings.json", "model": "claude-sonnet-4-5",'
            b' "availableModels": ["opus", "us.anthropic.claude-opus-4-1-20250805-v1:0"], "cleanupPeriodDays": 30,'
            b' "includeCoAuthoredBy": false, "permissions": {"deny": ["WebFetch"], "ask": ["Bash(git push:*)"]},'
            b' "env": {"ANTHROPIC_MODEL": "opus", "DISABLE_TELEMETRY": "1", "BASH_DEFAULT_TIMEOUT_MS": "60000"},'
            b' "disableAllHooks": true, "deniedMcpServers": [{"serverName": "x"}]}',
        ),
        (
            "claude-global-config",
            b'{"numStartups": 3, "theme": "dark", "hasCompletedOnboarding": true, "lastOnboardingVersion": "2.1.197",'
            b' "userID": "5f2c0a", "tipsHistory": {"new-user-warmup": 1}, "autoUpdates": false,'
            b' "oauthAccount": {"accountUuid": "a-b", "emailAddress": "o@example.org", "organizationRole": "admin"}}',
        ),
    ],
)
def test_inert_claude_configuration_is_accepted(kind: Kind, data: bytes) -> None:
    assert validate(kind, data, max_bytes=MAX, now_ms=NOW).kind == kind


def test_an_allow_listed_key_of_the_wrong_type_is_refused_as_schema() -> None:
    with pytest.raises(Rejection) as refused:
        validate("claude-settings", b'{"model": 5}', max_bytes=MAX, now_ms=NOW)
    assert refused.value.code == "schema" and refused.value.reason.startswith("model:")
    with pytest.raises(Rejection) as redirect:
        validate("claude-settings", b'{"$schema": "http://127.0.0.1:1/x.json"}', max_bytes=MAX, now_ms=NOW)
    assert redirect.value.code == "schema"


@pytest.mark.parametrize(
    ("data", "key"),
    [
        (b"[profile dev]\nregion = eu-west-1\ncredential_process = /opt/secret-fetcher --x\n", "credential_process"),
        (b'[default]\ncli_pager = sh -c "id"\n', "cli_pager"),
        (b"[default]\nendpoint_url = http://127.0.0.1:1\n", "endpoint_url"),
        (b"[default]\nca_bundle = /tmp/ca.pem\n", "ca_bundle"),
        (b"[default]\nsso_start_url = https://x.awsapps.com/start\n", "sso_start_url"),
        (b"[default]\nweb_identity_token_file = /tmp/t\n", "web_identity_token_file"),
    ],
)
def test_aws_config_off_the_allow_list_is_refused_naming_the_key_not_the_value(data: bytes, key: str) -> None:
    reason = check("aws-config", data)
    assert f"key '{key}' is not on the allow-list" in reason, reason
    for value in ("secret-fetcher", "127.0.0.1", "/tmp/", "awsapps", "sh -c"):
        assert value not in reason
    assert validate("aws-config", data, max_bytes=MAX, now_ms=NOW, trust_uploader=True).kind == "aws-config"


def test_aws_sections_that_set_endpoints_and_unknown_credential_sources_are_refused() -> None:
    services = check("aws-config", b"[services local]\ns3 =\n  endpoint_url = http://127.0.0.1:1\n")
    assert services.startswith("section 'services local' is not on the allow-list")
    assert "credential_source must be one of" in check("aws-config", b"[default]\ncredential_source = /bin/sh\n")
    role = b"[profile ci]\nrole_arn = arn:aws:iam::1:role/x\ncredential_source = Environment\nregion = eu-west-1\n"
    assert validate("aws-config", role, max_bytes=MAX, now_ms=NOW).sections == ("profile ci",)


def test_aws_credentials_accept_only_credential_keys() -> None:
    pasted = b"[default]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\naws_secret_access_key = x\nrole_arn = y\n"
    assert "key 'role_arn' is not on the allow-list" in check("aws-credentials", pasted)


def test_only_known_names_are_quoted_in_ini_reasons() -> None:
    secret = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY00"  # 40 letters and digits, as an AWS secret key
    duplicated_key = f"[default]\n{secret} = 1\n{secret} = 2\n".encode()
    assert secret not in check("aws-config", duplicated_key)
    duplicated_section = f"[{secret}]\nregion = x\n[{secret}]\nregion = y\n".encode()
    reason = check("aws-config", duplicated_section)
    assert secret not in reason and "(a section not shown)" in reason
    known = check("aws-config", b"[default]\nregion = a\nregion = b\n")
    assert "'region' appears twice in section 'default'" in known


def test_ini_files_are_capped_in_line_length_and_line_count() -> None:
    long_line = b"[default]\nregion = " + b"x" * 20_000 + b"\n"
    assert "INI line 2 is longer than" in check("aws-config", long_line)
    many_lines = b"[default]\n" + b"# note\n" * 10_001
    assert "more than 10000 lines" in check("aws-config", many_lines)


def test_configparsers_quadratic_line_is_parsed_in_linear_time_and_split_the_same() -> None:
    # One 16 KB line without a delimiter took configparser's own pattern about 2 s; ours, a pass.
    assert "neither [section] nor key = value" in check("aws-config", b"[default]\na" + b" " * 16_000 + b"b\n")
    parsed = validate(
        "aws-config", b"[default]\nregion : eu = x\nkey\t=  v=1 \n", max_bytes=MAX, now_ms=NOW, trust_uploader=True
    )
    assert parsed.sections == ("default",)


def test_an_unterminated_json_string_names_no_empty_place() -> None:
    reason = check("claude-settings", b'{"a": "open')
    assert "starting at at" not in reason and reason.startswith(
        "not valid JSON: Unterminated string starting at line 1"
    )
