"""Beyond one host, `python -m bench.swarm`: one upload to the manager of a real three-engine Swarm
on this machine (tests/swarm_lab.py) until every node's volume holds it, and what the roll costs;
against the same roll started by hand in the same run (`docker secret create` + `docker service
update`, the intake scaled to 0), which is Swarm's own share. Prints a table; writes
docs/benchmarks-swarm.md unless --no-docs. Exits 0 after the table, 1 when a step fails."""

from __future__ import annotations

import argparse
import json
import math
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import BenchError, sidecar
from bench.extras import proc_status
from bench.run import cpu_and_switches, descendants, say
from tests.docker_env import BUSYBOX_IMAGE, REPO, busybox_rootfs, engine_client
from tests.helpers import claude_credentials, sha12
from tests.swarm_lab import (
    CONSUMER_SERVICE,
    DELIVER_SERVICE,
    INTAKE_SERVICE,
    MANAGER,
    NODES,
    container_log,
    containers_of,
    deployed,
    docker,
    hups,
    intake_log,
    json_lines,
    socket_of,
)

ROUND_TIMEOUT_S = 240.0
DOCS = REPO / "docs" / "benchmarks-swarm.md"
TARGET = ".credentials.json"  # the upload, its secret's file in a delivery task, the file on every node


@dataclass
class Roll:
    """One new credential's way to every node, in seconds from the upload's close (or from the
    hand roll's first command), per node in the order they got it."""

    lane: str
    in_place_s: list[float]
    intake_stored_s: float | None  # the Swarm secret made (credsync's lane)
    delivery_cpu_s: list[float]  # each node's new delivery task, start to published
    delivery_hwm_mib: list[float]
    intake_cpu_s: float
    hups: list[int]  # per node, during this roll
    consumers_restarted: int

    @property
    def last_s(self) -> float:
        return self.in_place_s[-1]

    @property
    def spread_s(self) -> float:
        """First node in place to last: every node rolls at once (the stack file's parallelism 0)."""
        return self.in_place_s[-1] - self.in_place_s[0]


def log_lines(node: str, container: str) -> list[dict[str, Any]]:
    return json_lines(container_log(node, container))


def said_at(lines: list[dict[str, Any]], message: str, sha: str) -> float | None:
    """Epoch seconds of the first line saying `message` about the content `sha` (12 hex)."""
    for line in lines:
        if line.get("message") == message and line.get("sha") == sha:
            return datetime.fromisoformat(line["time"]).timestamp()
    return None


def published_at(node: str, sha: str) -> tuple[float, str] | None:
    """When the node's delivery task published `sha`, and that task's container."""
    for container in containers_of(node, DELIVER_SERVICE, every=True):
        at = said_at(log_lines(node, container), "published", sha)
        if at is not None:
            return at, container
    return None


def container_pids(node: str, container: str) -> list[int]:
    pid = int(docker(node, "inspect", "--format", "{{.State.Pid}}", container).strip() or 0)
    return [pid, *descendants(pid)] if pid else []


def cpu_s(pids: list[int]) -> float:
    """CPU seconds of these processes so far; NaN when there are none or one has ended."""
    try:
        return cpu_and_switches(pids)[0] / 1e9 if pids else math.nan
    except FileNotFoundError:
        return math.nan


def hup_counts() -> list[int]:
    return [hups(node) for node in NODES]


def hups_since(before: list[int]) -> list[int]:
    return [now - then for now, then in zip(hup_counts(), before, strict=True)]


def consumers() -> list[set[str]]:
    return [set(containers_of(node, CONSUMER_SERVICE)) for node in NODES]


def intake_pids() -> list[int]:
    running = containers_of(MANAGER, INTAKE_SERVICE)
    return container_pids(MANAGER, running[0]) if running else []


def until(condition: Callable[[], bool], what: str, deadline: float) -> None:
    while not condition():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(0.25)


def roll(lane: str, start: Callable[[bytes], float], serial: int) -> Roll:
    """Start a roll of new bytes with `start` (returns its epoch start) and wait for every node."""
    data = claude_credentials(serial=serial)
    sha, hups_before, running = sha12(data), hup_counts(), consumers()
    intake = intake_pids() if lane == "credsync" else []  # scaled to 0 for the hand rolls
    intake_before = cpu_s(intake)
    started, deadline = start(data), time.monotonic() + ROUND_TIMEOUT_S
    found: dict[str, tuple[float, str]] = {}

    def every_node() -> bool:
        for node in NODES:
            if node not in found and (got := published_at(node, sha)) is not None:
                found[node] = got
        return len(found) == len(NODES)

    until(every_node, f"{lane}: every node to publish {sha}", deadline)
    cpu, hwm = [], []
    for node, (_, container) in found.items():
        pids = container_pids(node, container)
        cpu.append(cpu_s(pids))
        hwm.append(sum(proc_status(pid, "VmHWM") for pid in pids) / 1024 if pids else math.nan)
    until(lambda: min(hups_since(hups_before)) >= 1, "a HUP on every node", deadline)
    stored = said_at(json_lines(intake_log()), "stored as a Swarm secret", sha) if lane == "credsync" else None
    return Roll(
        lane=lane,
        in_place_s=sorted(at - started for at, _ in found.values()),
        intake_stored_s=None if stored is None else stored - started,
        delivery_cpu_s=cpu,
        delivery_hwm_mib=hwm,
        intake_cpu_s=cpu_s(intake) - intake_before,
        hups=hups_since(hups_before),
        consumers_restarted=sum(len(before - now) for before, now in zip(running, consumers(), strict=True)),
    )


def by_upload(uploads: Path) -> Callable[[bytes], float]:
    def start(data: bytes) -> float:
        temp = uploads / f".bench.{secrets.token_hex(4)}"
        temp.write_bytes(data)
        started = time.time()
        temp.rename(uploads / TARGET)  # complete at once, as rsync or scp to a temp name then mv
        return started

    return start


def by_hand(data: bytes) -> float:
    """What an operator types for a new secret: create it, swap it into the service."""
    started = time.time()
    name = f"bench-hand-{sha12(data)}"
    subprocess.run(
        ["docker", "-H", socket_of(MANAGER), "secret", "create", name, "-"],
        input=data,
        check=True,
        capture_output=True,
        timeout=60,
    )
    spec = json.loads(docker(MANAGER, "service", "inspect", DELIVER_SERVICE))[0]["Spec"]
    held = [ref["SecretName"] for ref in spec["TaskTemplate"]["ContainerSpec"].get("Secrets") or []]
    removals = [arg for secret in held for arg in ("--secret-rm", secret)]
    addition = f"source={name},target={TARGET},uid=0,gid=0,mode=0400"
    docker(MANAGER, "service", "update", "--detach", *removals, "--secret-add", addition, DELIVER_SERVICE)
    return started


def table(rolls: Sequence[Roll]) -> list[str]:
    def median(values: Sequence[float]) -> str:
        measured = [value for value in values if not math.isnan(value)]
        return f"{statistics.median(measured):.2f}" if measured else "n/a"

    lanes = sorted({r.lane for r in rolls}, key=["credsync", "by hand"].index)
    rows: list[tuple[str, Callable[[list[Roll]], str]]] = [
        ("upload → last node in place, s", lambda rs: median([r.last_s for r in rs])),
        ("upload → first node in place, s", lambda rs: median([r.in_place_s[0] for r in rs])),
        ("first node → last node in place, s", lambda rs: median([r.spread_s for r in rs])),
        (
            "upload → Swarm secret stored, s",
            lambda rs: median([math.nan if r.intake_stored_s is None else r.intake_stored_s for r in rs]),
        ),
        ("intake CPU per roll, s", lambda rs: median([r.intake_cpu_s for r in rs])),
        ("delivery task CPU, start → published, s", lambda rs: median([c for r in rs for c in r.delivery_cpu_s])),
        ("delivery task peak RSS, MiB", lambda rs: median([m for r in rs for m in r.delivery_hwm_mib])),
        ("HUPs per node per roll", lambda rs: " ".join(sorted({str(h) for r in rs for h in r.hups}))),
        ("consumers restarted", lambda rs: str(sum(r.consumers_restarted for r in rs))),
    ]
    head = f"| figure | {' | '.join(lanes)} |"
    lines = [head, "|---" * (len(lanes) + 1) + "|"]
    for label, compute in rows:
        cells = [compute([r for r in rolls if r.lane == lane]) for lane in lanes]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return lines


def write_docs(lines: list[str], rounds: int, elapsed_s: float) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    DOCS.write_text(
        "\n".join(
            [
                "# Benchmarks: one upload to every node of a Swarm",
                "",
                f"`python -m bench.swarm` (bench/README.md) on {when}, commit {commit.strip()}, {platform.node()}:"
                f" {rounds} rolls per lane, run took {elapsed_s:.0f} s. Three Docker Engines on this machine"
                " (scripts/swarm-lab), credsync's stack file as shipped (every node at once, stop-first,"
                " health check every 10 s), a consumer task on every node.",
                "",
                "- **credsync**: the upload renamed into the manager's upload folder; the intake validates it,"
                " stores the Swarm secret and updates the delivery service.",
                "- **by hand**: the same roll started by `docker secret create` and `docker service update"
                " --secret-rm --secret-add` (the intake scaled to 0): Swarm's own share.",
                "- In place = the node's delivery task logged `published` for those bytes (the nodes share"
                " this machine's clock). CPU and peak RSS of a delivery task: its processes, read once it"
                " published.",
                "",
                *lines,
                "",
            ]
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.swarm", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="rolls per lane (default 3)")
    parser.add_argument("--no-docs", action="store_true", help=f"print only; do not write {DOCS.name}")
    args = parser.parse_args(argv)
    began = time.monotonic()
    try:
        say("building the image from this tree")
        image = sidecar.build_image()
        repository, tag = BUSYBOX_IMAGE.split(":")
        engine_client().api.import_image_from_data(busybox_rootfs(), repository=repository, tag=tag)
        with tempfile.TemporaryDirectory(prefix="credsync-bench-swarm-") as work:
            uploads = Path(work) / "uploads"
            uploads.mkdir(mode=0o700)
            say("bringing up three engines and deploying the stacks")
            with deployed(image, uploads, REPO, Path(work)):
                rolls = []
                for serial in range(args.rounds):
                    say(f"credsync roll {serial + 1}/{args.rounds}")
                    rolls.append(roll("credsync", by_upload(uploads), 7000 + serial))
                docker(MANAGER, "service", "scale", "--detach", f"{INTAKE_SERVICE}=0")
                for serial in range(args.rounds):
                    say(f"hand roll {serial + 1}/{args.rounds}")
                    rolls.append(roll("by hand", by_hand, 8000 + serial))
    except (BenchError, subprocess.SubprocessError, AssertionError, OSError) as error:
        print(f"bench.swarm: {error}", file=sys.stderr)
        return 1
    lines = table(rolls)
    print("\n".join(lines))
    if not args.no_docs:
        write_docs(lines, args.rounds, time.monotonic() - began)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
