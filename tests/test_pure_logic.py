"""Pure logic, no I/O beyond a routes file: settings parsing, routes, decisions, scheduling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from credsync.backoff import CAP_S, JITTER, retry_delay_s
from credsync.decide import Action, decide
from credsync.errors import ConfigError
from credsync.exposure import exposure_notes
from credsync.ledger import LEDGER_NAME, Entry, Ledger
from credsync.routes import is_rsync_temp, kind_for_filename, load_routes
from credsync.schedule import Schedule
from credsync.settings import Settings, load_settings
from tests.helpers import FakeClock


def settings(**overrides: object) -> Settings:
    base: dict[str, object] = {"source": "/srv/up", "claude_dir": "/srv/claude", "state_dir": "/srv/state"}
    return load_settings({**base, **overrides})


def test_owner_and_mode_strings_are_parsed() -> None:
    parsed = settings(owner="1000:1000", mode="0640", aws_owner="0:5")
    assert parsed.owner == (1000, 1000) and parsed.aws_owner == (0, 5) and parsed.mode == 0o640


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"owner": "claudeuser"}, "CREDSYNC_OWNER (--owner): must be numeric UID:GID"),
        ({"mode": "0999"}, "CREDSYNC_MODE (--mode): must be an octal mode"),
        ({"mode": "4755"}, "between 0000 and 0777"),
        ({"mode": "0777"}, "CREDSYNC_MODE (--mode): 0777 lets others read or anyone execute a credential; use 0600"),
        ({"mode": "0604"}, "lets others read"),
        ({"mode": "0700"}, "anyone execute"),
        ({"owner": "1001"}, "CREDSYNC_OWNER (--owner): must be numeric UID:GID such as 1001:1001, got '1001'"),
        ({"settle_ms": "-1"}, "CREDSYNC_SETTLE_MS"),
        ({"log_format": "xml"}, "CREDSYNC_LOG_FORMAT"),
        ({"state_dir": "/srv/claude/state"}, "state_dir"),
        ({"claude_dir": "/srv/up/claude"}, "must not contain each other"),
    ],
)
def test_bad_settings_name_the_variable_and_the_flag(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(**overrides)
    assert message in caught.value.reason and "\n" not in caught.value.reason


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDSYNC_SETTLE_MS", "0")
    monkeypatch.setenv("CREDSYNC_AWS_DIR", "/srv/aws")
    monkeypatch.setenv("CREDSYNC_OWNER", "1000:1000")
    monkeypatch.setenv("CREDSYNC_AWS_OWNER", "0:0")
    monkeypatch.setenv("CREDSYNC_MODE", "0640")
    monkeypatch.setenv("CREDSYNC_NOTIFY_SIGNAL", "USR1")
    parsed = settings()
    assert parsed.settle_ms == 0 and parsed.aws_dir == Path("/srv/aws")
    assert (parsed.owner, parsed.aws_owner, parsed.mode, parsed.notify_signal) == (
        (1000, 1000),
        (0, 0),
        0o640,
        "SIGUSR1",
    )
    assert settings(settle_ms="7").settle_ms == 7  # a flag wins over the environment


def test_default_routes_are_credentials_and_aws_only_when_configured() -> None:
    assert [route.upload for route in load_routes(settings())] == [".credentials.json", "claude-setup-token"]
    turned_on = load_routes(settings(config_routes="settings.json, .claude.json,aws/config"))
    assert [(route.upload, route.kind) for route in turned_on] == [
        (".credentials.json", "claude-oauth"),
        ("claude-setup-token", "claude-setup-token"),
        ("settings.json", "claude-settings"),
        (".claude.json", "claude-global-config"),
    ]  # aws/config is on, but there is no CREDSYNC_AWS_DIR
    table = load_routes(settings(aws_dir="/srv/aws", aws_owner="0:0"))
    aws = table.match("aws/credentials")
    assert (
        aws is not None
        and aws.destination == Path("/srv/aws/credentials")
        and (aws.uid, aws.kind)
        == (
            0,
            "aws-credentials",
        )
    )
    oauth = table.match(".credentials.json")
    assert oauth is not None and (oauth.uid, oauth.gid, oauth.mode) == (1001, 1001, 0o600)
    assert table.match("junk.json") is None
    assert table.match("aws/config") is None and table.match("settings.json") is None


def test_configuration_routes_are_named_from_a_fixed_list_and_allow_commands_is_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigError) as unknown:
        settings(config_routes="settings.json,hooks.json")
    assert "CREDSYNC_CONFIG_ROUTES" in unknown.value.reason and "'hooks.json'" in unknown.value.reason
    monkeypatch.setenv("CREDSYNC_ALLOW_COMMANDS", "true")
    with pytest.raises(ConfigError) as renamed:
        settings()
    assert renamed.value.reason.startswith("CREDSYNC_ALLOW_COMMANDS is gone: use CREDSYNC_TRUST_UPLOADER")


def test_what_widens_an_upload_is_said(tmp_path: Path) -> None:
    assert exposure_notes(settings(), load_routes(settings())) == []
    trusting = settings(trust_uploader="true", config_routes="settings.json")
    notes = exposure_notes(trusting, load_routes(trusting))
    assert notes[0].startswith("CREDSYNC_TRUST_UPLOADER is on") and len(notes) == 2
    assert notes[1] == "configuration route settings.json is on (claude-settings, not allow-listed)"
    routes_file = tmp_path / "routes.toml"
    routes_file.write_text('[[route]]\nupload = "c"\ndestination = "/srv/c"\nkind = "aws-config"\n')
    by_file = settings(routes=routes_file)
    assert exposure_notes(by_file, load_routes(by_file)) == ["configuration route c is on (aws-config, allow-listed)"]


def test_routes_file_adds_and_replaces(tmp_path: Path) -> None:
    routes_file = tmp_path / "routes.toml"
    routes_file.write_text(
        '[[route]]\nupload = "settings.json"\ndestination = "{claude_dir}/settings.local.json"\n'
        'kind = "claude-settings"\nmode = "0640"\n\n[[route]]\nupload = "gemini/creds.json"\n'
        'destination = "/srv/gemini/creds.json"\n'
        'kind = "claude-global-config"\nowner = "2000:2000"\n'
    )
    table = load_routes(settings(routes=routes_file, config_routes="settings.json"))
    replaced = table.match("settings.json")
    added = table.match("gemini/creds.json")
    assert replaced is not None and replaced.destination == Path("/srv/claude/settings.local.json")
    assert replaced.mode == 0o640
    assert added is not None and (added.uid, added.gid) == (2000, 2000) and len(table) == 4


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ('upload = "../x"\ndestination = "/srv/x"\nkind = "claude-settings"', "stay inside"),
        ('upload = "x"\ndestination = "/srv/up/x"\nkind = "claude-settings"', "inside /srv/up"),
        ('upload = "x"\ndestination = "{aws_dir}/x"\nkind = "claude-settings"', "CREDSYNC_AWS_DIR is not set"),
        ('upload = "x"\ndestination = "/srv/x"\nkind = "yaml"', "route 1: kind: Input should be 'claude-oauth'"),
        (
            'upload = "x"\ndestination = "/srv/x"\nkind = "json"',
            "'json' is now claude-settings or claude-global-config",
        ),
        ('upload = "x"\ndestination = "{claude_dir}/{home}/x"\nkind = "claude-settings"', "may only use"),
        (
            'upload = "x"\ndestination = "x/y.json"\nkind = "claude-settings"',
            "must be absolute or start with {claude_dir}",
        ),
    ],
)
def test_bad_routes_files_are_config_errors(tmp_path: Path, route: str, message: str) -> None:
    routes_file = tmp_path / "routes.toml"
    routes_file.write_text(f"[[route]]\n{route}\n")
    with pytest.raises(ConfigError, match=r"routes?") as caught:
        load_routes(settings(routes=routes_file))
    assert message in caught.value.reason


def test_two_routes_may_share_a_destination_only_as_a_login_and_a_setup_token(tmp_path: Path) -> None:
    routes_file = tmp_path / "routes.toml"
    routes_file.write_text(
        '[[route]]\nupload = "other.json"\ndestination = "{claude_dir}/settings.json"\nkind = "claude-settings"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_routes(settings(routes=routes_file, config_routes="settings.json"))
    assert caught.value.reason == (
        "routes settings.json, other.json all publish to /srv/claude/settings.json; give each its own destination"
    )
    table = load_routes(settings())
    login = table.match(".credentials.json")
    assert login is not None and [route.upload for route in table.sharing_destination(login)] == ["claude-setup-token"]


def test_a_routes_file_with_routes_instead_of_route_says_so(tmp_path: Path) -> None:
    routes_file = tmp_path / "routes.toml"
    routes_file.write_text('[[routes]]\nupload = "x"\ndestination = "/srv/x"\nkind = "json"\n')
    with pytest.raises(ConfigError) as caught:
        load_routes(settings(routes=routes_file))
    assert caught.value.reason.endswith("unknown key 'routes' (routes are [[route]] tables)")
    assert "CREDSYNC_" not in caught.value.reason


def test_rsync_temp_names_are_recognised() -> None:
    assert is_rsync_temp("..credentials.json.AbC123")
    assert is_rsync_temp("aws/.credentials.x8Yz0Q")
    assert not is_rsync_temp(".credentials.json")
    assert not is_rsync_temp("settings.json")


def test_kind_for_filename() -> None:
    assert kind_for_filename(".credentials.json") == "claude-oauth"
    assert kind_for_filename("credentials") == "aws-credentials"
    assert kind_for_filename("notes.txt") is None


@pytest.mark.parametrize(
    ("upload", "last", "destination", "sound", "expected"),
    [
        ("new", None, None, False, Action.PUBLISH),
        ("new", "old", "old", True, Action.PUBLISH),
        ("new", "old", "consumer", True, Action.PUBLISH),  # a newer upload is the operator's intent
        ("same", "same", "same", True, Action.UNCHANGED),
        ("same", None, "same", True, Action.UNCHANGED),
        ("same", "same", None, False, Action.REPAIR),
        ("same", "same", "broken", False, Action.REPAIR),
        ("same", "same", "consumer", True, Action.KEEP_CONSUMER),
    ],
)
def test_decisions(upload: str, last: str | None, destination: str | None, sound: bool, expected: Action) -> None:
    assert decide(upload, last, destination, lambda: sound) is expected


def test_schedule_reads_an_upload_once_it_is_closed_and_quiet() -> None:
    clock = FakeClock()
    schedule = Schedule(0.25, clock)
    schedule.expect("a", backstop_s=1.0)  # being written
    clock.now += 0.5
    schedule.expect("a", backstop_s=1.0)  # still being written: the backstop moves on
    clock.now += 0.9
    assert schedule.take_due() == []
    schedule.arm("a")  # closed: read once quiet for the settle time
    clock.now += 0.2
    assert schedule.take_due() == []
    clock.now += 0.06
    assert schedule.take_due() == ["a"] and schedule.take_due() == []


def test_schedule_backstop_reads_an_upload_that_is_never_closed() -> None:
    clock = FakeClock()
    schedule = Schedule(0.0, clock)
    schedule.expect("a", backstop_s=1.0)
    clock.now += 0.99
    assert schedule.take_due() == []
    clock.now += 0.02
    assert schedule.take_due() == ["a"]


def test_schedule_activity_never_brings_a_read_forward() -> None:
    clock = FakeClock()
    schedule = Schedule(5.0, clock)
    schedule.arm("a")
    schedule.expect("a", backstop_s=1.0)
    assert schedule.seconds_until_next() == 5.0


def test_schedule_retries_with_capped_backoff() -> None:
    clock = FakeClock()
    schedule = Schedule(0.0, clock, rng=lambda: 0.5)  # the middle of the jitter: the plain delays
    delays = [schedule.retry("a") for _ in range(10)]
    assert delays[:3] == [1.0, 2.0, 4.0] and delays[-1] == CAP_S
    schedule.succeeded("a")
    assert schedule.retry("a") == 1.0


def test_a_decision_asks_whether_the_destination_parses_only_when_that_decides() -> None:
    def never() -> bool:
        raise AssertionError("validated the destination for nothing")

    assert decide("new", "old", "consumer", never) is Action.PUBLISH
    assert decide("same", "same", "same", never) is Action.UNCHANGED
    assert decide("same", "same", None, never) is Action.REPAIR


def test_retries_are_spread_by_the_jitter_and_stay_under_the_cap() -> None:
    assert retry_delay_s(1, lambda: 0.0) == pytest.approx(1.0 - JITTER)
    assert retry_delay_s(1, lambda: 0.999999) == pytest.approx(1.0 + JITTER, rel=1e-5)
    assert retry_delay_s(40, lambda: 0.5) == CAP_S  # no overflow, however long it keeps failing
    spread = {round(retry_delay_s(3), 6) for _ in range(50)}
    assert len(spread) > 1 and all(4 * (1 - JITTER) <= delay <= 4 * (1 + JITTER) for delay in spread)


LIBRARY_WARNS = """
import logging
from loguru import logger
from credsync.logs import configure_logging
configure_logging("json", "INFO")
logging.getLogger("urllib3.connectionpool").warning("Retrying (Retry(total=2)) after connection broken")
logger.info("published")
"""


def test_a_librarys_own_logging_never_cuts_into_the_json_log() -> None:
    """urllib3 warns of retries while the Engine is down; without a handler, logging's last
    resort would print that as plain text between credsync's JSON lines. (A process of its own:
    pytest puts handlers of its own on the root logger.)"""
    said = subprocess.run([sys.executable, "-c", LIBRARY_WARNS], capture_output=True, text=True, check=True)
    assert [json.loads(line)["message"] for line in said.stderr.splitlines()] == ["published"]


def test_the_ledger_reads_back_what_it_wrote_and_refuses_another_version(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    entry = Entry("a" * 64, 120, "/claude/.credentials.json", 1_800_000_000_000, "b" * 64, 1_800_000_001_000)
    ledger.record(".credentials.json", entry)
    ledger.flush()
    assert Ledger(tmp_path).last(".credentials.json") == entry
    written = json.loads((tmp_path / LEDGER_NAME).read_text())
    assert written["version"] == 1
    (tmp_path / LEDGER_NAME).write_text(json.dumps({**written, "version": 2}))
    assert Ledger(tmp_path).last(".credentials.json") is None  # a format it does not know: not guessed at
