"""A real Docker Engine for the tests: a client, a busybox image made locally (no registry
here), and consumer containers that record every signal they catch in a bind-mounted file."""

from __future__ import annotations

import contextlib
import io
import json
import secrets
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from docker.models.containers import Container

BUSYBOX_IMAGE = "credsync-test/busybox:latest"
BUSYBOX_APPLETS = (
    *("sh", "sleep", "cat", "echo", "timeout", "true", "false", "ls", "date", "touch", "wc", "stat"),
    *("httpd", "wget", "mkdir", "sha256sum", "env", "chown", "chmod"),
)
WEBHOOK_IMAGE = "credsync-test/webhook:latest"
NO_HANDLER_WEBHOOK_IMAGE = "credsync-test/webhook-no-handler:latest"
TRAP_HUP = 'trap "echo HUP >> /sig/signals" HUP; while :; do sleep 1 & wait $!; done'
REPO = Path(__file__).resolve().parent.parent


def engine_client() -> docker.DockerClient:
    return docker.DockerClient(base_url="unix:///var/run/docker.sock", version="auto", timeout=30)


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    """Never skipped: without an engine the run fails (scripts/test starts one)."""
    try:
        client = engine_client()
        client.ping()
    except docker.errors.DockerException as error:
        pytest.fail(f"no Docker Engine: {error}; start one with 'bash scripts/dockerd-start'")
    return client


def busybox_rootfs(scripts: dict[str, str] | None = None) -> bytes:
    """A tar of an image root: a static busybox, its applets as links, /tmp and /sig, and
    `scripts` (path → shell text) as executables."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for folder, mode in (("bin", 0o755), ("tmp", 0o1777), ("sig", 0o777), ("proc", 0o555)):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        tar.add("/bin/busybox", "bin/busybox")
        for applet in BUSYBOX_APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        for path, text in (scripts or {}).items():
            script = tarfile.TarInfo(path)
            script.mode, script.size = 0o755, len(text.encode())
            tar.addfile(script, io.BytesIO(text.encode()))
    return buffer.getvalue()


@pytest.fixture(scope="session")
def busybox_image(docker_client: docker.DockerClient) -> str:
    repository, tag = BUSYBOX_IMAGE.split(":")
    docker_client.api.import_image_from_data(busybox_rootfs(), repository=repository, tag=tag)
    return BUSYBOX_IMAGE


def import_webhook(docker_client: docker.DockerClient, image: str, main_loop: str) -> str:
    """A stand-in for claude-hub's webhook: like the real one it refuses to start without
    BOT_USERNAME, gives its credentials folder to claudeuser:claudeshared (1001:2000) at every
    start, and answers /health on $PORT (its healthcheck runs `curl -f`); then PID 1 runs
    `main_loop`. (The real one's PID 1 is `runuser` with node below it; busybox has no runuser,
    and what credsync judges is the same: a PID 1 that handles HUP, or one that does not.)"""
    repository, tag = image.split(":")
    start = (
        '[ -n "$BOT_USERNAME" ] || { echo "BOT_USERNAME is required" >&2; exit 1; }\n'
        # As claude-hub's scripts/runtime/startup.sh does as root at every start.
        "[ -d /home/node/.claude ] && chown -R 1001:2000 /home/node/.claude /app/sessions\n"
        "[ -d /app/sessions ] && chmod -R 2775 /app/sessions\n"
        "mkdir -p /tmp/www && echo ok > /tmp/www/health && httpd -p ${PORT:-3002} -h /tmp/www\n" + main_loop + "\n"
    )
    curl = '#!/bin/sh\n# curl -f URL, as the healthcheck calls it\nexec wget -q -O /dev/null "$2"\n'
    rootfs = busybox_rootfs({"bin/curl": curl, "bin/start-webhook": "#!/bin/sh\n" + start})
    command = json.dumps(["/bin/start-webhook"])
    docker_client.api.import_image_from_data(rootfs, repository=repository, tag=tag, changes=[f"CMD {command}"])
    return image


@pytest.fixture(scope="session")
def webhook_image(docker_client: docker.DockerClient) -> str:
    """The stand-in whose PID 1 traps HUP and records it in /tmp/signals."""
    return import_webhook(docker_client, WEBHOOK_IMAGE, TRAP_HUP.replace("/sig/signals", "/tmp/signals"))


@pytest.fixture(scope="session")
def webhook_without_handler_image(docker_client: docker.DockerClient) -> str:
    """The stand-in whose PID 1 has no HUP handler, as claude-hub's (`runuser`) has none."""
    return import_webhook(docker_client, NO_HANDLER_WEBHOOK_IMAGE, "while :; do sleep 1 & wait $!; done")


@dataclass
class Consumer:
    container: Container
    signal_file: Path

    @property
    def name(self) -> str:
        return str(self.container.name)

    def signals(self) -> list[str]:
        try:
            return self.signal_file.read_text().split()
        except FileNotFoundError:
            return []

    def state(self) -> tuple[str, str, int]:
        self.container.reload()
        return (
            str(self.container.status),
            str(self.container.attrs["State"]["StartedAt"]),
            int(self.container.attrs["RestartCount"]),
        )


ConsumerFactory = Callable[..., Consumer]


@pytest.fixture
def consumers(docker_client: docker.DockerClient, busybox_image: str, tmp_path: Path) -> Iterator[ConsumerFactory]:
    """Start consumer containers (network none); all are removed afterwards."""
    started: list[Container] = []

    def start(
        command: str = TRAP_HUP, *, name: str | None = None, init: bool = False, labels: dict[str, str] | None = None
    ) -> Consumer:
        name = name or f"credsync-test-{secrets.token_hex(4)}"
        signal_dir = tmp_path / f"signals-{name}-{secrets.token_hex(2)}"
        signal_dir.mkdir()
        container = docker_client.containers.run(
            busybox_image,
            ["sh", "-c", command],
            name=name,
            detach=True,
            init=init,
            network_mode="none",
            labels=labels or {},
            volumes={str(signal_dir): {"bind": "/sig", "mode": "rw"}},
        )
        started.append(container)
        wait_for_process(container, catching_hup=command == TRAP_HUP and not init)
        return Consumer(container, signal_dir / "signals")

    yield start
    for container in started:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


def wait_for_process(container: Container, *, catching_hup: bool, timeout: float = 10.0) -> None:
    """Running, with PID 1 readable, and (for a trap) its HUP handler installed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        container.reload()
        if container.status == "running":
            exit_code, output = container.exec_run(["cat", "/proc/1/status"])
            if exit_code == 0 and isinstance(output, bytes) and (not catching_hup or hup_caught(output.decode())):
                return
        time.sleep(0.05)
    raise AssertionError(f"container {container.name} did not start")


def hup_caught(status: str) -> bool:
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & 1)  # SIGHUP is signal 1: bit 0


class Engine:
    """Stop and start the shared engine (it runs with --live-restore: containers keep running)."""

    def stop(self) -> None:
        subprocess.run(["pkill", "-TERM", "-x", "dockerd"], check=False)
        deadline = time.monotonic() + 30
        while subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, check=False).returncode == 0:
            if time.monotonic() > deadline:
                raise AssertionError("dockerd did not stop")
            time.sleep(0.1)

    def start(self) -> None:
        subprocess.run(["bash", str(REPO / "scripts" / "dockerd-start")], check=True, timeout=90)


@pytest.fixture
def engine() -> Iterator[Engine]:
    control = Engine()
    try:
        yield control
    finally:
        control.start()  # whatever the test did, later tests need the engine
