"""The command's process keeps OpenSSL and the charset guesser out unless its settings may need
TLS, and still does its work without them. Unprivileged: subprocesses of this interpreter."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from credsync.slim_process import CHARSET_GUESSERS, TLS_MODULES, needs_tls

# The command's own order: keep out, import the CLI, settings from flags, then what `watch`
# imports for a notify target; prints which kept-out modules got loaded after all.
PROBE = """
import json, sys, warnings
warnings.simplefilter("error")
from credsync.slim_process import keep_out_unused_libraries
keep_out_unused_libraries()
from credsync import cli
cli.settings_from(cli.build_parser().parse_args(["status", *sys.argv[2:]]))
import credsync.notify.notifier, docker, hashlib, http.client, urllib.request
docker.DockerClient(base_url="unix:///nonexistent.sock", version="1.41")
watched = sys.argv[1].split(",")
print(json.dumps({"loaded": [m for m in watched if sys.modules.get(m) is not None],
                  "https": hasattr(http.client, "HTTPSConnection"),
                  "sha": hashlib.sha256(b"credsync").hexdigest()}))
"""


def run_probe(*flags: str) -> dict[str, object]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CREDSYNC_")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(TLS_MODULES + CHARSET_GUESSERS), *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize(
    ("docker_host", "notify_url"),
    [
        ("unix:///var/run/docker.sock", None),
        ("tcp://127.0.0.1:2375", "http://webhook:3002/reload"),
        ("http+unix://%2Fvar%2Frun%2Fdocker.sock", "HTTP://webhook/reload"),
    ],
)
def test_plain_addresses_need_no_tls(docker_host: str, notify_url: str | None) -> None:
    assert not needs_tls(docker_host=docker_host, notify_url=notify_url, serves_http=False)


@pytest.mark.parametrize(
    ("docker_host", "notify_url"),
    [
        ("unix:///var/run/docker.sock", "https://webhook/reload"),
        ("unix:///var/run/docker.sock", " HTTPS://webhook/reload"),
        ("https://engine:2376", None),
        ("ssh://operator@engine", None),
        ("engine:2375", None),
    ],
)
def test_an_address_that_may_use_tls_needs_it(docker_host: str, notify_url: str | None) -> None:
    assert needs_tls(docker_host=docker_host, notify_url=notify_url, serves_http=False)


def test_serving_metrics_needs_the_ssl_module() -> None:
    # prometheus_client imports ssl at its own import, for an HTTPS option credsync does not use.
    assert needs_tls(docker_host="unix:///var/run/docker.sock", notify_url=None, serves_http=True)


def test_the_daemon_loads_neither_openssl_nor_a_charset_guesser_and_still_hashes() -> None:
    result = run_probe("--notify-target", "webhook")
    assert result["loaded"] == []
    assert result["https"] is False  # what the next test's True is measured against
    assert result["sha"] == hashlib.sha256(b"credsync").hexdigest()


@pytest.mark.parametrize(
    "flags",
    [("--notify", "http", "--notify-url", "https://webhook:3002/reload"), ("--http", "127.0.0.1:9464")],
    ids=["https-notify-url", "metrics"],
)
def test_settings_that_need_tls_let_it_back_in_before_it_is_used(flags: tuple[str, ...]) -> None:
    result = run_probe(*flags)
    loaded = result["loaded"]
    assert isinstance(loaded, list)
    assert "ssl" in loaded and result["https"] is True
    assert not set(loaded) & set(CHARSET_GUESSERS)
