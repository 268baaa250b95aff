"""What the shipped compose and stack files grant, read as YAML: the Docker socket only where it
is the only way (Swarm's intake, and the opt-in notify layers), never in the default sidecar or
on a delivery task. Pure logic: the system tests deploy the same files for real."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from typing import Any

import yaml

from credsync import __version__
from tests.docker_env import REPO

SOCKET = "/var/run/docker.sock"


def service(file: str, name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((REPO / file).read_text())
    return dict(document["services"][name])


def mounts_socket(definition: dict[str, Any]) -> bool:
    for volume in definition.get("volumes", []):
        target = volume.get("target") if isinstance(volume, dict) else str(volume).split(":")[1]
        if target == SOCKET:
            return True
    return False


def test_the_default_sidecar_signals_through_the_webhooks_pid_namespace_with_no_socket() -> None:
    credsync = service("docker-compose.dokploy.yml", "credsync")
    assert not mounts_socket(credsync)
    assert credsync["pid"] == "service:webhook"
    assert credsync["cap_drop"] == ["ALL"] and sorted(credsync["cap_add"]) == ["CHOWN", "DAC_OVERRIDE", "KILL"]
    environment = credsync["environment"]
    assert environment["CREDSYNC_NOTIFY"] == "${CREDSYNC_NOTIFY:-auto}"
    assert environment["CREDSYNC_NOTIFY_TARGET"] == "${CREDSYNC_NOTIFY_TARGET:-pid:1}"


def test_only_the_opt_in_layers_and_swarms_intake_hold_a_socket() -> None:
    assert mounts_socket(service("docker-compose.notify.yml", "credsync"))
    assert mounts_socket(service("docker-stack.credsync.yml", "intake"))  # it creates secrets
    deliver = service("docker-stack.credsync.yml", "deliver")
    assert not mounts_socket(deliver) and deliver["environment"]["CREDSYNC_NOTIFY"].startswith("none")
    layer = service("docker-stack.notify.yml", "deliver")
    assert mounts_socket(layer) and layer["environment"]["CREDSYNC_NOTIFY"] == "signal"


def test_the_dokploy_template_is_made_from_the_compose_file_and_pins_this_release() -> None:
    made = subprocess.run([sys.executable, str(REPO / "scripts" / "dokploy_template.py"), "--check"], check=False)
    assert made.returncode == 0, "dokploy/claude-hub-credsync/docker-compose.yml is stale"
    blueprint = REPO / "dokploy" / "claude-hub-credsync"
    compose = yaml.safe_load((blueprint / "docker-compose.yml").read_text())
    assert "build" not in compose["services"]["credsync"] and "ports" not in compose["services"]["webhook"]
    assert compose["services"]["webhook"]["expose"] == ["3002"]
    template = tomllib.loads((blueprint / "template.toml").read_text())
    (domain,) = template["config"]["domains"]
    assert (domain["serviceName"], domain["port"]) == ("webhook", 3002)
    assert template["variables"]["credsync_image"].endswith(f"/credsync:{__version__}")
    assert template["config"]["env"]["UPLOADS_DIR"] == template["config"]["env"]["RECEIPTS_DIR"] == ""
    assert json.loads((blueprint / "meta.json").read_text())["version"] == __version__
