"""The shipped deployment as Dokploy runs it: the image built from a clean clone with only the
offline build arguments; `docker-compose.dokploy.yml` brought up under a Dokploy-style app name
from a code folder with Dokploy's `.env`, as shipped and after the transformations Dokploy
applies (Isolated Deployments, a domain); a real scp by an unprivileged user; a job container
started the way claude-hub starts one."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import string
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import docker
import pytest
import yaml
from docker.models.containers import Container

from credsync import __version__
from credsync.receipts import receipt_name
from tests.helpers import as_a_job_reads_it, assert_no_canary, claude_credentials, sha12, wait_until
from tests.image_build import OfflineBuild, clean_clone
from tests.sshd import SshServer

pytestmark = pytest.mark.system  # root, a real Docker Engine or sshd: see conftest.py

SIDECAR_IMAGE = "credsync:dokploy-test"
CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_KILL = 0, 1, 5
COMPOSE_FILE = "docker-compose.dokploy.yml"
NOTIFY_LAYER = "docker-compose.notify.yml"
DOCKER_SOCKET = "/var/run/docker.sock"
CREDENTIALS = "/home/node/.claude/.credentials.json"


def test_the_image_builds_from_a_clean_clone_with_only_the_offline_build_arguments(
    offline_build: OfflineBuild, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    clone = clean_clone(tmp_path / "clone")
    tag = "credsync:clean-clone"
    subprocess.run(
        ["docker", "build", "--quiet", *offline_build.build_args(), "--tag", tag, str(clone)], check=True, timeout=600
    )
    config = docker_client.images.get(tag).attrs["Config"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.licenses"] == "MIT" and "org.opencontainers.image.source" in labels
    assert config["User"] == "0:0"
    assert config["Healthcheck"]["Test"] == [
        "CMD",
        "/opt/credsync/bin/python",
        "-I",
        "-S",
        "/opt/credsync/health_probe.py",
    ]
    said = docker_client.containers.run(tag, ["--version"], remove=True, network_mode="none")
    assert said.decode().strip() == f"credsync {__version__}"


# --------------------------------------------------------------------------- what Dokploy does


def app_name() -> str:
    """Dokploy's app names: `<name>-<6 random characters>`."""
    return "claude-hub-" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(6))


def add_network(service: dict[str, Any], network: str) -> None:
    """As Dokploy adds a network to a service: to a list, to a mapping, or as a new list."""
    networks = service.get("networks")
    if networks is None:
        service["networks"] = [network]
    elif isinstance(networks, list):
        if network not in networks:
            networks.append(network)
    else:
        networks.setdefault(network, {})


def isolated_deployment(compose: dict[str, Any], app: str) -> None:
    """Dokploy's Isolated Deployments: a network named after the app, on every service."""
    compose.setdefault("networks", {})[app] = {"name": app, "external": True}
    for service in compose["services"].values():
        add_network(service, app)


def domain(compose: dict[str, Any], app: str, service_name: str, port: int) -> None:
    """Dokploy's Domains tab: Traefik labels, `dokploy-network` (and `default`) on the service,
    and `dokploy-network: {external: true}` at the root, replacing what stood under that key."""
    service = compose["services"][service_name]
    router = f"{app}-1-websecure"
    labels = service.setdefault("labels", [])
    labels += [
        f"traefik.http.routers.{router}.rule=Host(`claude.example.test`)",
        f"traefik.http.routers.{router}.entrypoints=websecure",
        f"traefik.http.services.{router}.loadbalancer.server.port={port}",
        f"traefik.http.routers.{router}.service={router}",
        "traefik.enable=true",
    ]
    add_network(service, "dokploy-network")
    add_network(service, "default")
    compose.setdefault("networks", {})["dokploy-network"] = {"external": True}


Transformation = Callable[[dict[str, Any], str], None]


def as_shipped(_compose: dict[str, Any], _app: str) -> None:
    pass


def isolated_with_a_domain(compose: dict[str, Any], app: str) -> None:
    isolated_deployment(compose, app)
    domain(compose, app, "webhook", 3002)


def dokploy_compose(code: Path, app: str, files: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    """Docker Compose v2 (the CLI plugin), run as Dokploy runs it: with only PATH and NODE_ENV in
    its environment, everything else from the app's `.env` in `code`."""
    return subprocess.run(
        ["docker", "compose", "-p", app, *(part for name in files for part in ("-f", name)), *args],
        cwd=code,
        env={"PATH": os.environ["PATH"], "NODE_ENV": "production"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@dataclass
class DokployApp:
    """An app as Dokploy lays it out: the repository cloned into `code/`, the Environment tab
    written to `code/.env` with COMPOSE_PROJECT_NAME, the compose file rewritten in place."""

    name: str
    code: Path
    uploads: Path
    client: docker.DockerClient
    files: list[str]

    def compose(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = dokploy_compose(self.code, self.name, self.files, *args)
        assert result.returncode == 0, f"docker compose {args[0]} failed: {result.stderr[-2000:]}"
        return result

    def container(self, service: str) -> Container:
        labels = [f"com.docker.compose.project={self.name}", f"com.docker.compose.service={service}"]
        (found,) = self.client.containers.list(filters={"label": labels})
        return found

    def exec(self, service: str, *argv: str) -> str:
        exit_code, output = self.container(service).exec_run(list(argv))
        assert isinstance(output, bytes)
        assert exit_code == 0, f"{argv[0]} in {service} exited {exit_code}: {output.decode()[-600:]}"
        return output.decode()

    def sidecar_log(self) -> str:
        log = bytes(self.container("credsync").logs()).decode()
        assert_no_canary(log, "the sidecar's log")
        return log

    def volume_path(self, volume: str) -> Path:
        return Path(str(self.client.volumes.get(f"{self.name}_{volume}").attrs["Mountpoint"]))

    def webhook_env(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.container("webhook").attrs["Config"]["Env"])


@pytest.fixture
def internal_networks(docker_client: docker.DockerClient) -> Iterator[Callable[[str], None]]:
    """Networks Dokploy would have made (`dokploy-network`, the app's own), internal here: no
    traffic leaves this machine. Removed afterwards if this test made them."""
    made: list[str] = []

    def ensure(name: str) -> None:
        if not docker_client.networks.list(names=[name]):
            docker_client.networks.create(name, internal=True, attachable=True)
            made.append(name)

    yield ensure
    for name in made:
        for network in docker_client.networks.list(names=[name]):
            network.remove()


class DeployFactory(Protocol):
    def __call__(self, transform: Transformation, layers: list[str], **tab: str) -> DokployApp: ...


@pytest.fixture
def deploy(
    offline_build: OfflineBuild,
    webhook_image: str,
    docker_client: docker.DockerClient,
    sshd: SshServer,
    internal_networks: Callable[[str], None],
    tmp_path: Path,
) -> Iterator[DeployFactory]:
    apps: list[DokployApp] = []

    def up(transform: Transformation, layers: list[str], **tab: str) -> DokployApp:
        """`tab`: lines of Dokploy's Environment tab over the defaults below."""
        name = app_name()
        code = clean_clone(tmp_path / name / "code")
        uploads = Path(sshd.user.home) / name / "claude-uploads"
        for folder in (uploads.parent, uploads, uploads.parent / "claude-receipts"):
            folder.mkdir(mode=0o700)
            os.chown(folder, sshd.user.uid, sshd.user.gid)
        compose = yaml.safe_load((code / COMPOSE_FILE).read_text())
        transform(compose, name)
        (code / COMPOSE_FILE).write_text(yaml.safe_dump(compose, sort_keys=False))
        for network, settings in compose["networks"].items():
            if settings.get("external"):
                internal_networks(settings.get("name", network))
        environment = {  # as current Dokploy writes the app's .env
            "APP_NAME": name,
            "COMPOSE_PROJECT_NAME": name,
            "UPLOADS_DIR": str(uploads),
            "RECEIPTS_DIR": str(uploads.parent / "claude-receipts"),
            "WEBHOOK_IMAGE": webhook_image,
            "BOT_USERNAME": "@credsync-test",
            "GITHUB_TOKEN": "not-a-token",
            "CREDSYNC_IMAGE": SIDECAR_IMAGE,
            "CREDSYNC_BASE_IMAGE": offline_build.base_image,
            "CREDSYNC_WHEELS_URL": offline_build.wheels_url,
            "CREDSYNC_BUILD_NETWORK": "host",
            "WEBHOOK_PULL_POLICY": "never",  # no registry here: the stand-in image is local
            **tab,
            "DOCKER_CONFIG": "/root/.docker",
        }
        (code / ".env").write_text("".join(f"{key}={value}\n" for key, value in environment.items()))
        app = DokployApp(name, code, uploads, docker_client, [COMPOSE_FILE, *layers])
        apps.append(app)
        app.compose("up", "-d", "--build", "--remove-orphans")
        return app

    yield up
    for app in apps:
        app.compose("down", "-v", "--timeout", "5")
        shutil.rmtree(app.uploads.parent)


def upload(app: DokployApp, sshd: SshServer, local: Path, data: bytes, *, legacy: bool = False) -> None:
    local.write_bytes(data)
    sshd.scp(local, app.uploads / ".credentials.json", legacy=legacy)
    assert (app.uploads / ".credentials.json").stat().st_uid == sshd.user.uid


def sidecar_ready(app: DokployApp) -> None:
    try:
        wait_until(lambda: " ready " in app.sidecar_log(), timeout=60)
    except AssertionError:
        raise AssertionError(
            f"the sidecar is not ready within 60 s; its log ends: {app.sidecar_log()[-1500:]}"
        ) from None
    healthcheck = app.container("credsync").attrs["Config"]["Healthcheck"]["Test"]
    assert healthcheck[0] == "CMD" and app.exec("credsync", *healthcheck[1:]).startswith("healthy")
    assert app.exec("credsync", "credsync", "health").startswith("healthy")


def run_job(app: DokployApp, busybox_image: str, script: str) -> None:
    """A job container as claude-hub starts one: the credentials and sessions bind-mounted from
    the host paths the running webhook was given."""
    told = app.webhook_env()
    app.client.containers.run(
        busybox_image,
        ["sh", "-c", script],
        remove=True,
        network_mode="none",
        volumes={
            told["CLAUDE_AUTH_HOST_DIR"]: {"bind": "/home/node/.claude", "mode": "rw"},
            told["HOST_SESSIONS_DIR"]: {"bind": "/sessions", "mode": "rw"},
        },
    )


@pytest.mark.parametrize(
    "transform", [as_shipped, isolated_with_a_domain], ids=["as-shipped", "isolated-with-a-domain"]
)
def test_the_dokploy_compose_publishes_an_scp_upload_that_a_claude_hub_job_reads(
    deploy: DeployFactory,
    sshd: SshServer,
    busybox_image: str,
    claude: Path,
    workspace: Path,
    tmp_path: Path,
    transform: Transformation,
) -> None:
    app = deploy(transform, [])
    sidecar_ready(app)
    sidecar, webhook = app.container("credsync"), app.container("webhook")

    # Least privilege, as the file promises: no Docker socket, three capabilities, no way out but
    # the networks Dokploy adds; the webhook's PID namespace, where its PID 1 is credsync's pid:1.
    host_config = sidecar.attrs["HostConfig"]
    assert not [mount for mount in sidecar.attrs["Mounts"] if mount["Source"] == DOCKER_SOCKET]
    added = sorted(name.removeprefix("CAP_") for name in host_config["CapAdd"])
    assert host_config["CapDrop"] == ["ALL"] and added == ["CHOWN", "DAC_OVERRIDE", "KILL"]
    assert host_config["ReadonlyRootfs"] is True and "no-new-privileges:true" in host_config["SecurityOpt"]
    assert host_config["PidMode"] == f"container:{webhook.id}"
    assert effective_capabilities(app) == (1 << CAP_CHOWN) | (1 << CAP_DAC_OVERRIDE) | (1 << CAP_KILL)
    for network in sidecar.attrs["NetworkSettings"]["Networks"]:
        assert app.client.networks.get(network).attrs["Internal"], f"the sidecar is on {network}, which leads out"
    mounts = {mount["Destination"]: mount for mount in sidecar.attrs["Mounts"]}
    assert mounts["/uploads"]["RW"] is False
    doctor = app.exec("credsync", "credsync", "doctor")
    assert "✓ notify target pid:1 (no Docker socket): start-webhook (PID 1) handles SIGHUP" in doctor

    # The webhook runs as claude-hub needs (it exits without BOT_USERNAME) and is told host paths.
    assert webhook.attrs["RestartCount"] == 0 and webhook.status == "running"
    told = app.webhook_env()
    assert told["CLAUDE_AUTH_HOST_DIR"] == str(app.volume_path("claude-config"))
    assert told["HOST_SESSIONS_DIR"] == str(app.volume_path("claude-sessions"))
    assert told["BOT_USERNAME"] == "@credsync-test" and told["PORT"] == "3002"

    data = claude_credentials(serial=1)
    upload(app, sshd, tmp_path / ".credentials.json", data)
    wait_until(lambda: "published" in app.sidecar_log(), timeout=20)
    published = app.volume_path("claude-config") / ".credentials.json"
    assert published.read_bytes() == data, "the volume does not hold the uploaded bytes"
    info = published.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (1001, 2000, 0o600)  # as claude-hub's start-up
    # The real consumer: Claude Code's CLI, reading the volume's folder the way a job copies it.
    assert as_a_job_reads_it(claude, app.volume_path("claude-config"), workspace)["loggedIn"] is True

    # The uploader can read what became of it, without privileges on the server.
    receipt_path = app.uploads.parent / "claude-receipts" / receipt_name(".credentials.json")
    wait_until(receipt_path.exists, timeout=10)
    assert receipt_path.name in subprocess.run(["ls", str(receipt_path.parent)], capture_output=True, text=True).stdout
    receipt = json.loads(receipt_path.read_text())
    assert (receipt["outcome"], receipt["upload_sha256_prefix"]) == ("published", sha12(data))
    assert receipt_path.stat().st_uid == sshd.user.uid

    # A job sees the credential; what it writes to /sessions the webhook sees at /app/sessions.
    job = f"job-{secrets.token_hex(4)}"
    run_job(app, busybox_image, f"sha256sum < /home/node/.claude/.credentials.json > /sessions/{job}")
    assert app.exec("webhook", "cat", f"/app/sessions/{job}").split()[0] == hashlib.sha256(data).hexdigest()

    # Told with no socket: one HUP to the webhook's PID 1, which survives it.
    wait_until(lambda: "notified" in app.sidecar_log(), timeout=30)
    assert app.exec("webhook", "cat", "/tmp/signals").split() == ["HUP"]
    webhook.reload()
    assert webhook.attrs["RestartCount"] == 0 and webhook.status == "running"

    # An invalid upload changes nothing, and tells no one.
    upload(app, sshd, tmp_path / ".credentials.json", data[: len(data) // 2], legacy=True)
    wait_until(lambda: "rejected" in app.sidecar_log(), timeout=20)
    assert published.read_bytes() == data
    assert app.exec("webhook", "cat", "/tmp/signals").split() == ["HUP"]


def logged(app: DokployApp, text: str) -> Callable[[], bool]:
    return lambda: text in app.sidecar_log()


def effective_capabilities(app: DokployApp) -> int:
    """Of credsync's own process, read from the host's /proc (in the sidecar, PID 1 is the webhook's)."""
    status = Path(f"/proc/{app.container('credsync').attrs['State']['Pid']}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("CapEff:")).split()[1], 16)


def test_a_webhook_whose_pid_1_has_no_handler_is_never_signalled_and_keeps_running(
    deploy: DeployFactory, sshd: SshServer, webhook_without_handler_image: str, tmp_path: Path
) -> None:
    app = deploy(isolated_with_a_domain, [], WEBHOOK_IMAGE=webhook_without_handler_image)
    sidecar_ready(app)
    webhook = app.container("webhook")
    before = (webhook.attrs["State"]["StartedAt"], webhook.attrs["RestartCount"])
    for serial in (1, 2):
        data = claude_credentials(serial=serial)
        upload(app, sshd, tmp_path / ".credentials.json", data)
        wait_until(logged(app, f"published route=.credentials.json sha={sha12(data)}"))
    wait_until(lambda: "published without notifying" in app.sidecar_log(), timeout=20)
    log = app.sidecar_log()
    assert log.count("published without notifying") == 1, "said once, not at every upload"
    assert "start-webhook (PID 1) has no SIGHUP handler" in log and "notified" not in log
    webhook.reload()
    assert (
        webhook.status == "running" and (webhook.attrs["State"]["StartedAt"], webhook.attrs["RestartCount"]) == before
    )


def test_a_webhook_restart_brings_the_sidecar_back_with_nothing_published_again(
    deploy: DeployFactory, sshd: SshServer, tmp_path: Path
) -> None:
    app = deploy(as_shipped, [])
    sidecar_ready(app)
    data = claude_credentials(serial=1)
    upload(app, sshd, tmp_path / ".credentials.json", data)
    wait_until(lambda: "notified" in app.sidecar_log(), timeout=30)
    published = app.volume_path("claude-config") / ".credentials.json"
    inode_mtime = (published.stat().st_ino, published.stat().st_mtime_ns)

    # The webhook's PID namespace ends with it; Docker restarts credsync into the new one.
    app.container("webhook").restart(timeout=5)
    wait_until(lambda: app.sidecar_log().count(" ready ") == 2, timeout=90)
    assert "came back after an unclean stop" in app.sidecar_log()
    health = app.exec("credsync", "credsync", "health")
    assert health.startswith("healthy") and "came back" in health
    second_run = app.sidecar_log().rsplit("watching source=", 1)[-1]
    assert "unchanged route=.credentials.json" in second_run and "published" not in second_run
    # The webhook's start-up chowned the folder to 1001:2000, the owner credsync gives it too.
    assert "repaired owner and mode" not in app.sidecar_log()
    assert (published.stat().st_ino, published.stat().st_mtime_ns) == inode_mtime
    assert "came back" in app.exec("credsync", "credsync", "status")

    # Nothing lost: the next upload is published and the new webhook process is told.
    newer = claude_credentials(serial=2)
    upload(app, sshd, tmp_path / ".credentials.json", newer)
    wait_until(lambda: app.sidecar_log().rsplit("watching source=", 1)[-1].count("notified") == 1, timeout=30)
    assert published.read_bytes() == newer
    assert app.exec("webhook", "cat", "/tmp/signals").split() == ["HUP", "HUP"]


def test_the_opt_in_notify_layer_signals_a_consumer_that_reloads_and_never_restarts_it(
    deploy: DeployFactory, sshd: SshServer, tmp_path: Path
) -> None:
    app = deploy(isolated_with_a_domain, [NOTIFY_LAYER])
    sidecar_ready(app)
    sidecar, webhook = app.container("credsync"), app.container("webhook")
    before = (webhook.attrs["State"]["StartedAt"], webhook.attrs["RestartCount"])
    assert [mount for mount in sidecar.attrs["Mounts"] if mount["Source"] == DOCKER_SOCKET]

    doctor = app.exec("credsync", "credsync", "doctor").splitlines()  # exit 0: every check passes
    for variable, volume in (("CLAUDE_AUTH_HOST_DIR", "claude-config"), ("HOST_SESSIONS_DIR", "claude-sessions")):
        assert f"✓ {webhook.name}: {variable} is the host path of volume {app.name}_{volume}" in doctor
    assert f"✓ notify target {webhook.name}: start-webhook (PID 1) handles SIGHUP" in doctor

    assert sidecar.attrs["HostConfig"]["PidMode"] == f"container:{webhook.id}"  # the base file's `pid: service:`

    since = time.time()
    data = claude_credentials(serial=1)
    upload(app, sshd, tmp_path / ".credentials.json", data)
    wait_until(lambda: "notified" in app.sidecar_log(), timeout=30)
    # Through a pidfd in the shared namespace: no `docker kill`, and no `docker exec` to read /proc
    # (these events are read before this test's own `cat` inside the webhook below).
    engine_events = app.client.events(  # type: ignore[call-overload]  # fractional seconds, as text
        since=f"{since:.9f}", until=f"{time.time():.9f}", filters={"container": webhook.id}, decode=True
    )
    actions = {str(event.get("Action", "")).split(":")[0] for event in engine_events}
    assert not actions & {"kill", "exec_create"}, actions
    assert "signalling through the Docker Engine" not in app.sidecar_log()
    assert app.exec("webhook", "cat", "/tmp/signals").split() == ["HUP"]
    webhook.reload()
    assert (webhook.attrs["State"]["StartedAt"], webhook.attrs["RestartCount"]) == before

    # A restarted sidecar re-publishes nothing and sends no notification.
    published = app.volume_path("claude-config") / ".credentials.json"
    inode_mtime = (published.stat().st_ino, published.stat().st_mtime_ns)
    sidecar.restart(timeout=5)
    wait_until(lambda: app.sidecar_log().count(" ready ") == 2, timeout=60)
    second_run = app.sidecar_log().rsplit("watching source=", 1)[-1]
    assert "unchanged route=.credentials.json" in second_run
    assert "published" not in second_run and "notified" not in second_run
    assert (published.stat().st_ino, published.stat().st_mtime_ns) == inode_mtime
    assert app.exec("webhook", "cat", "/tmp/signals").split() == ["HUP"]


@pytest.mark.parametrize("unset", ["UPLOADS_DIR", "RECEIPTS_DIR"])
def test_an_unset_folder_stops_the_deployment_before_docker_creates_it_as_root(
    docker_client: docker.DockerClient, webhook_image: str, tmp_path: Path, unset: str
) -> None:
    name = app_name()
    code = clean_clone(tmp_path / "code")
    home = tmp_path / "home"
    tab = {"UPLOADS_DIR": str(home / "claude-uploads"), "RECEIPTS_DIR": str(home / "claude-receipts")}
    del tab[unset]
    environment = {"APP_NAME": name, "COMPOSE_PROJECT_NAME": name, "WEBHOOK_IMAGE": webhook_image, **tab}
    (code / ".env").write_text("".join(f"{key}={value}\n" for key, value in environment.items()))
    refused = dokploy_compose(code, name, [COMPOSE_FILE], "up", "-d", "--build", "--remove-orphans")
    assert refused.returncode != 0
    assert unset in refused.stderr and "credsync init" in refused.stderr, refused.stderr[-600:]
    assert not home.exists(), "a folder was created"
    assert docker_client.containers.list(all=True, filters={"label": f"com.docker.compose.project={name}"}) == []


def test_the_dokploy_template_loads_in_compose_v2_with_the_released_image(tmp_path: Path) -> None:
    code = clean_clone(tmp_path / "code") / "dokploy" / "claude-hub-credsync"
    name = app_name()
    tab = {"COMPOSE_PROJECT_NAME": name, "UPLOADS_DIR": "/home/deploy/claude-uploads", "RECEIPTS_DIR": "/r"}

    def config(**extra: str) -> subprocess.CompletedProcess[str]:
        (code / ".env").write_text("".join(f"{key}={value}\n" for key, value in {**tab, **extra}.items()))
        return dokploy_compose(code, name, ["docker-compose.yml"], "config", "--format", "json")

    unset = config()
    assert unset.returncode != 0 and "CREDSYNC_IMAGE" in unset.stderr
    loaded = config(CREDSYNC_IMAGE=f"ghcr.io/owner/credsync:{__version__}")
    assert loaded.returncode == 0, loaded.stderr[-600:]
    services = json.loads(loaded.stdout)["services"]
    assert services["credsync"]["image"] == f"ghcr.io/owner/credsync:{__version__}"
    assert "build" not in services["credsync"]
    assert services["webhook"]["expose"] == ["3002"] and not services["webhook"].get("ports")
