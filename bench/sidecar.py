"""The sidecar as the default compose file runs it: its image built from this tree, and the
`docker run` options of the credsync service read from docker-compose.dokploy.yml
(capabilities, the webhook's PID namespace, read-only root, tmpfs, environment, mounts; no
Docker socket), each mount pointed at a lane's folder. A compose key this does not translate
fails the run: the lane must not drift from it."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from bench import BenchError
from tests.docker_env import REPO
from tests.image_build import BASE_IMAGE

IMAGE = "credsync:bench"
COMPOSE_FILES = ("docker-compose.dokploy.yml",)  # the default deployment: signals with no socket
# Keys that shape how compose builds, starts or connects it, not how it runs: the lane runs with
# network none (the socket is a file) and is started by the bench.
NOT_TRANSLATED = frozenset({"build", "image", "restart", "depends_on", "networks"})
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")
LISTS = {"cap_drop": "--cap-drop", "cap_add": "--cap-add", "security_opt": "--security-opt", "tmpfs": "--tmpfs"}


def run(command: list[str], what: str, timeout: float = 120) -> str:
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise BenchError(f"{what} failed: {done.stdout.strip()[-300:]} {done.stderr.strip()[-600:]}")
    return done.stdout


def build_image() -> str:
    """The image from this tree, offline: the base from debootstrap (kept once built), the
    wheels served from the host (scripts/build-image)."""
    run(["bash", "scripts/build-base-image", BASE_IMAGE], "scripts/build-base-image", 900)
    run(["bash", "scripts/build-image", IMAGE, BASE_IMAGE], "scripts/build-image", 900)
    return IMAGE


def compose_service() -> dict[str, Any]:
    """The credsync service, with any later file merged over it as compose merges them."""
    merged: dict[str, Any] = {}
    for name in COMPOSE_FILES:
        for key, value in yaml.safe_load((REPO / name).read_text())["services"]["credsync"].items():
            if isinstance(value, dict):  # environment: the later file's values win
                merged[key] = {**merged.get(key, {}), **value}
            elif isinstance(value, list):  # volumes, cap_add, security_opt...: compose adds them up
                merged[key] = list(dict.fromkeys([*merged.get(key, []), *value]))
            else:
                merged[key] = value
    return merged


def defaulted(text: str) -> str:
    """`${VAR:-default}` as compose reads it with VAR unset; a required `${VAR:?message}` as
    empty (the lane gives such a mount its own folder)."""
    return INTERPOLATION.sub(lambda match: match.group(3) if match.group(2) == "-" else "", text)


def run_options(mounts: Mapping[str, Path], webhook: str) -> list[str]:
    """`docker run` options for the service; `mounts` maps each container path to a host folder,
    and the container `webhook` stands for that service."""
    options: list[str] = []
    for key, value in compose_service().items():
        if key in LISTS:
            options += [f"{LISTS[key]}={entry}" for entry in value]
        elif key == "pid" and value == "service:webhook":
            options.append(f"--pid=container:{webhook}")
        elif key == "read_only":
            options += ["--read-only"] if value else []
        elif key == "environment":
            options += [f"--env={name}={defaulted(str(text))}" for name, text in value.items()]
        elif key == "volumes":
            options += [volume_option(entry, mounts) for entry in value]
        elif key not in NOT_TRANSLATED:
            raise BenchError(f"the compose file's credsync service has `{key}: {value}`, which the lane cannot run")
    return options


def volume_option(entry: str, mounts: Mapping[str, Path]) -> str:
    _, target, *mode = defaulted(entry).split(":")
    if target not in mounts:
        raise BenchError(f"the compose file mounts {target} in the sidecar; the sidecar lane has no folder for it")
    return f"--volume={mounts[target]}:{target}" + (f":{mode[0]}" if mode else "")


PROBE_CPU = """
import resource, subprocess, sys
runs, command = int(sys.argv[1]), sys.argv[2:]
before = resource.getrusage(resource.RUSAGE_CHILDREN)
for _ in range(runs):
    subprocess.run(command, stdout=subprocess.DEVNULL, check=True)
after = resource.getrusage(resource.RUSAGE_CHILDREN)
print((after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / runs)
"""


def cpu_per_run(python: list[str], runs: int, command: list[str]) -> float:
    """CPU seconds per run of `command`, user + system, counted by a parent started with `python`
    (a list: on the host the interpreter, in the sidecar `docker exec NAME` and its interpreter)."""
    return float(run([*python, "-I", "-S", "-c", PROBE_CPU, str(runs), *command], "the health check"))


def image_healthcheck(image: str) -> list[str]:
    inspect = ["docker", "image", "inspect", "--format", "{{json .Config.Healthcheck.Test}}", image]
    test = json.loads(run(inspect, "docker image inspect"))
    if not test or test[0] != "CMD":
        raise BenchError(f"{image} has no exec-form HEALTHCHECK: {test}")
    return [str(part) for part in test[1:]]
