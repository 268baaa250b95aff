"""Host mode: the unit installs for real and `systemd-analyze verify` accepts it; its sandbox
keeps only the capabilities credsync needs. (Running it needs systemd as PID 1, which this
machine does not have; the sd_notify protocol itself is tested in test_health.py.)"""

from __future__ import annotations

import configparser
import subprocess
from pathlib import Path

from tests.docker_env import REPO

UNIT = Path("/etc/systemd/system/credsync.service")


def installed_unit() -> configparser.ConfigParser:
    subprocess.run(["bash", str(REPO / "scripts" / "install-host")], check=True, timeout=600, capture_output=True)
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_the_installed_unit_verifies_cleanly() -> None:
    unit = installed_unit()
    verified = subprocess.run(["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True, check=False)
    assert verified.returncode == 0 and verified.stdout + verified.stderr == "", verified.stderr
    version = subprocess.run(["/opt/credsync/bin/credsync", "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("credsync ")
    service = unit["Service"]
    assert service["Type"] == "notify" and service["WatchdogSec"] == "60s"
    assert service["ExecStart"] == "/opt/credsync/bin/credsync watch"


def test_the_sandbox_keeps_only_what_credsync_needs() -> None:
    service = installed_unit()["Service"]
    assert service["CapabilityBoundingSet"].split() == ["CAP_CHOWN", "CAP_DAC_OVERRIDE"]
    assert service["AmbientCapabilities"] == ""
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert service["ProtectHome"] == "read-only" and service["StateDirectory"] == "credsync"
    assert service["IPAddressDeny"] == "any" and service["IPAddressAllow"] == "localhost"
    env = Path("/etc/credsync/credsync.env")
    assert env.stat().st_mode & 0o777 == 0o600
