"""Host mode under a real systemd: systemd as PID 1 in a container (a debootstrap bookworm with
systemd), credsync installed by scripts/install-host from a clean clone and offline wheels,
two instances of the template unit for two Dokploy-style app names. Each reaches ready through
Type=notify, publishes what the SSH user uploaded, files a rejection at warning priority, and
rescans on `systemctl reload` without a restart."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from docker.models.containers import Container

from tests.docker_env import REPO
from tests.helpers import CANARY, claude_credentials, sha12
from tests.image_build import OfflineBuild, clean_clone

pytestmark = pytest.mark.system  # root, a real Docker Engine or sshd: see conftest.py

SYSTEMD_IMAGE = "credsync-systemd:bookworm"
APPS = ("claude-hub-x7k2qa", "claude-hub-m3p9zt")
UPLOADER = 1000
CONSUMER = 1001
TEMPLATE = REPO / "systemd" / "credsync@.service"
CAP_CHOWN, CAP_DAC_OVERRIDE = 0, 1


def test_the_template_unit_verifies_for_a_dokploy_app_name(tmp_path: Path) -> None:
    instance = tmp_path / f"credsync@{APPS[0]}.service"
    shutil.copy(TEMPLATE, instance)
    verified = subprocess.run(["systemd-analyze", "verify", str(instance)], capture_output=True, text=True, check=False)
    # The only complaint allowed: the binary is not installed on this machine.
    complaints = [
        line for line in (verified.stdout + verified.stderr).splitlines() if "/opt/credsync/bin/credsync" not in line
    ]
    assert complaints == [], complaints


@dataclass
class SystemdHost:
    container: Container

    def run(self, command: str, *, user: int | None = None) -> str:
        argv = (
            ["sh", "-c", command]
            if user is None
            else ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "sh", "-c", command]
        )
        exit_code, output = self.container.exec_run(argv)
        text = output.decode() if isinstance(output, bytes) else ""
        assert exit_code == 0, f"{command!r} exited {exit_code}: {text[-1500:]}"
        return text

    def wait_for(self, command: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            exit_code, output = self.container.exec_run(["sh", "-c", command])
            text = output.decode() if isinstance(output, bytes) else ""
            if exit_code == 0:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{command!r} did not succeed within {timeout}s: {text[-800:]}")
            time.sleep(0.2)  # a bounded poll: the state lives in another machine's journal

    def upload(self, app: str, data: bytes) -> None:
        """The SSH user writes the file in place, as scp does (staged in /tmp by root first)."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(f"staged-{app}")
            info.size, info.mode, info.uid, info.gid = len(data), 0o644, UPLOADER, UPLOADER
            tar.addfile(info, io.BytesIO(data))
        assert self.container.put_archive("/tmp", buffer.getvalue())
        self.run(f"cat /tmp/staged-{app} > /home/deploy/uploads-{app}/.credentials.json", user=UPLOADER)
        self.run(f"rm /tmp/staged-{app}")


@pytest.fixture(scope="module")
def systemd_host(
    docker_client: docker.DockerClient, offline_build: OfflineBuild, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SystemdHost]:
    subprocess.run(
        ["bash", str(REPO / "scripts" / "build-base-image"), SYSTEMD_IMAGE, "systemd,systemd-sysv,dbus"],
        check=True,
        timeout=900,
    )
    clone = clean_clone(tmp_path_factory.mktemp("systemd") / "clone")
    container = docker_client.containers.run(
        SYSTEMD_IMAGE,
        ["/lib/systemd/systemd"],
        detach=True,
        network_mode="none",
        cap_add=["SYS_ADMIN"],
        security_opt=["seccomp=unconfined"],
        tmpfs={"/run": "", "/run/lock": ""},
        volumes={
            "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
            str(clone): {"bind": "/src", "mode": "rw"},
            str(offline_build.wheels_dir): {"bind": "/wheels", "mode": "ro"},
        },
    )
    host = SystemdHost(container)
    try:
        host.wait_for("systemctl is-system-running | grep -qE 'running|degraded'", timeout=60)
        host.run("PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels bash /src/scripts/install-host")
        host.run(f"useradd --uid {UPLOADER} --create-home deploy && groupadd --gid {CONSUMER} claude")
        for app in APPS:
            host.run(f"mkdir -m 700 /home/deploy/uploads-{app}", user=UPLOADER)
            volume = f"/var/lib/docker/volumes/{app}_claude-config/_data"
            host.run(f"mkdir -p {volume} && chown {CONSUMER}:{CONSUMER} {volume}")
            host.run(f"echo CREDSYNC_SOURCE=/home/deploy/uploads-{app} > /etc/credsync/{app}.env")
        yield host
    finally:
        container.remove(force=True)


def journal(host: SystemdHost, app: str, *options: str) -> str:
    return host.run(f"journalctl --no-pager -o cat -u credsync@{app} {' '.join(options)}")


def main_pid(host: SystemdHost, app: str) -> str:
    return host.run(f"systemctl show -p MainPID --value credsync@{app}").strip()


def test_two_instances_publish_reject_and_rescan_under_systemd(systemd_host: SystemdHost) -> None:
    host = systemd_host
    for app in APPS:
        # Type=notify: `start` returns once credsync said READY=1.
        host.run(f"systemctl start credsync@{app}")
        assert host.run(f"systemctl is-active credsync@{app}").strip() == "active"
    for serial, app in enumerate(APPS, 1):
        data = claude_credentials(serial=serial)
        host.upload(app, data)
        published = f"/var/lib/docker/volumes/{app}_claude-config/_data/.credentials.json"
        host.wait_for(f"test -f {published}", timeout=15)
        assert host.run(f"stat -c '%u:%g %a' {published}").strip() == f"{CONSUMER}:{CONSUMER} 600"
        assert f"published route=.credentials.json sha={sha12(data)}" in journal(host, app)

    app = APPS[0]
    host.upload(app, b'{"claudeAiOauth": {"accessToken": "cut')
    host.wait_for(
        f"journalctl -o cat -u credsync@{app} -p warning | grep -q 'rejected route=.credentials.json'", timeout=15
    )
    warnings = journal(host, app, "-p", "warning")
    assert "rejected route=.credentials.json" in warnings and "published" not in warnings

    # Reload rescans without a restart: the consumer's file is gone, the rescan repairs it. The
    # host is a minimal Debian (no procps): the unit's ExecReload must not need /bin/kill.
    host.run("test ! -e /bin/kill && test ! -e /usr/bin/kill")
    pid = main_pid(host, app)
    published = f"/var/lib/docker/volumes/{app}_claude-config/_data/.credentials.json"
    good = claude_credentials(serial=3)
    host.upload(app, good)
    host.wait_for(
        f"journalctl -o cat -u credsync@{app} | grep -q 'published route=.credentials.json sha={sha12(good)}'"
    )
    host.run(f"rm {published}", user=CONSUMER)
    host.wait_for(f"journalctl -o cat -u credsync@{app} | grep -q 'the published file is gone'")
    host.run(f"systemctl reload credsync@{app}")
    host.wait_for(f"journalctl -o cat -u credsync@{app} | grep -q 'repaired route=.credentials.json sha={sha12(good)}'")
    assert host.run(f"stat -c '%u:%g %a' {published}").strip() == f"{CONSUMER}:{CONSUMER} 600"
    assert main_pid(host, app) == pid, "reload restarted the daemon"
    # The sandbox as systemd applied it to the running daemon.
    status = host.run(f"cat /proc/{pid}/status")
    effective = int(next(line for line in status.splitlines() if line.startswith("CapEff:")).split()[1], 16)
    assert effective == (1 << CAP_CHOWN) | (1 << CAP_DAC_OVERRIDE)
    shown = host.run(
        f"systemctl show -p NoNewPrivileges,ProtectSystem,ProtectHome,RestartPreventExitStatus credsync@{app}"
    )
    assert set(shown.split()) == {
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        "RestartPreventExitStatus=2",
    }
    for name in APPS:
        assert CANARY not in journal(host, name), "a secret reached the journal"
