"""Host mode under a real systemd: systemd as PID 1 in a container (a debootstrap bookworm with
systemd), credsync installed by scripts/install-host from a clean clone and offline wheels,
two instances of the template unit for two Dokploy-style app names. Each reaches ready through
Type=notify, publishes what the SSH user uploaded, files a rejection at warning priority, and
rescans on `systemctl reload` without a restart. A third is set up as an operator would: its
folders and env lines from `credsync init`, and `credsync push` gets its receipt once
install-host's drop-in lets the unit write the receipts folder (and nothing else of /home)."""

from __future__ import annotations

import io
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from docker.models.containers import Container

from tests.docker_env import REPO
from tests.helpers import CANARY, assert_no_canary, claude_credentials, credsync_command, sha12
from tests.image_build import OfflineBuild, clean_clone

pytestmark = pytest.mark.system  # root, a real Docker Engine or sshd: see conftest.py

SYSTEMD_IMAGE = "credsync-systemd:bookworm"
APPS = ("claude-hub-x7k2qa", "claude-hub-m3p9zt")
RECEIPTS_APP = "claude-hub-r4c3pt"  # set up by `credsync init`, with receipts
INSTALL_HOST = "PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels bash /src/scripts/install-host"
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
                _, journal = self.container.exec_run(["journalctl", "-o", "cat", "-n", "25", "-u", "credsync@*"])
                said = journal.decode(errors="replace") if isinstance(journal, bytes) else ""
                assert CANARY not in said
                raise AssertionError(f"{command!r} did not succeed within {timeout}s: {text[-800:]}; journal: {said}")
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
        host.run(INSTALL_HOST)
        host.run(f"useradd --uid {UPLOADER} --create-home deploy && groupadd --gid {CONSUMER} claude")
        for app in APPS:
            host.run(f"mkdir -m 700 /home/deploy/uploads-{app}", user=UPLOADER)
            volume = f"/var/lib/docker/volumes/{app}_claude-config/_data"
            host.run(f"mkdir -p {volume} && chown {CONSUMER}:{CONSUMER} {volume}")
            host.run(f"echo CREDSYNC_SOURCE=/home/deploy/uploads-{app} > /etc/credsync/{app}.env")
        host.run(f"echo CREDSYNC_LOG_LEVEL=DEBUG >> /etc/credsync/{APPS[0]}.env")  # its rescans show
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
    # Said at once; or, when a rescan was already due (a mount of another unit's sandbox changes
    # the mount table credsync watches), repaired by it first.
    repaired = f"repaired route=.credentials.json sha={sha12(good)}"
    host.wait_for(f"journalctl -o cat -u credsync@{app} | grep -qE 'the published file is gone|{repaired}'")
    host.run(f"systemctl reload credsync@{app}")
    host.wait_for(f"journalctl -o cat -u credsync@{app} | grep -q 'reconcile reason=SIGHUP'")  # at debug level
    host.wait_for(f"journalctl -o cat -u credsync@{app} | grep -q '{repaired}'")
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


# `ssh [-T] [-o KEY=VALUE]... USER@CONTAINER SCRIPT`, as `credsync push` calls ssh, carried by
# `docker exec` into the systemd host, which has no network: the user's own shell, in their home.
SSH_BY_DOCKER_EXEC = f"""#!{sys.executable}
import os, sys
args = sys.argv[1:]
while args[0].startswith("-"):
    args = args[2:] if args[0] == "-o" else args[1:]
user, _, container = args[0].partition("@")
home = "/home/" + user
where = ["-u", user, "-e", "HOME=" + home, "-w", home, container]
os.execvp("docker", ["docker", "exec", "-i", *where, "sh", "-c", args[1]])
"""


def as_deploy(host: SystemdHost, command: str) -> str:
    return host.run(f"HOME=/home/deploy {command}", user=UPLOADER)


def push_to_host(host: SystemdHost, tmp_path: Path, data: bytes, timeout_s: int) -> subprocess.CompletedProcess[str]:
    """The operator's `credsync push`, here, to the SSH user of the systemd host."""
    ssh = tmp_path / "ssh"
    ssh.write_text(SSH_BY_DOCKER_EXEC)
    ssh.chmod(0o755)
    local = tmp_path / f"credentials-{sha12(data)}.json"
    local.write_bytes(data)
    destination = f"deploy@{host.container.id}"
    pushed = subprocess.run(
        credsync_command("push", f"--ssh={ssh}", f"--file={local}", f"--timeout={timeout_s}", destination),
        capture_output=True,
        text=True,
        timeout=timeout_s + 90,
        check=False,
    )
    assert_no_canary(pushed.stdout + pushed.stderr, "push's output")
    return pushed


def writable_to(host: SystemdHost, pid: str, path: str) -> bool:
    """Whether the mount holding `path`, as the process sees its file system, is read-write:
    the deepest mount point above it, the last one mounted there (/proc/PID/mountinfo)."""
    mounts = [line.split() for line in host.run(f"cat /proc/{pid}/mountinfo").splitlines()]
    above = [fields for fields in mounts if path == fields[4] or path.startswith(fields[4].rstrip("/") + "/")]
    holding = max(enumerate(above), key=lambda item: (len(item[1][4]), item[0]))[1]
    return holding[5].split(",")[0] == "rw"


def test_init_push_and_a_receipt_under_the_host_unit(systemd_host: SystemdHost, tmp_path: Path) -> None:
    host, app = systemd_host, RECEIPTS_APP
    volume = f"/var/lib/docker/volumes/{app}_claude-config/_data"
    host.run(f"mkdir -p {volume} && chown {CONSUMER}:{CONSUMER} {volume}")
    said = as_deploy(host, "/opt/credsync/bin/credsync init --timeout=0")
    assert "  created /home/deploy/claude-receipts (0700)" in said
    settings = [line for line in said.splitlines() if line.startswith("CREDSYNC_")]
    assert settings == [
        "CREDSYNC_SOURCE=/home/deploy/claude-uploads",
        "CREDSYNC_RECEIPTS_DIR=/home/deploy/claude-receipts",
    ]
    host.run(f"printf '%s\\n' {shlex.join(settings)} > /etc/credsync/{app}.env")

    # As shipped, before install-host has seen the setting: /home is read-only to the unit.
    host.run(f"systemctl start credsync@{app}")
    refused = push_to_host(host, tmp_path, claude_credentials(serial=7), timeout_s=3)
    assert refused.returncode == 5, refused.stdout + refused.stderr
    host.wait_for(f"journalctl -o cat -u credsync@{app} | grep -q 'cannot write the receipt'")
    assert "scripts/install-host" in journal(host, app, "-p", "warning")

    installed = host.run(INSTALL_HOST)
    assert f"credsync@{app} may write /home/deploy/claude-receipts (its receipts)" in installed
    dropin = host.run(f"cat /etc/systemd/system/credsync@{app}.service.d/credsync-receipts.conf")
    assert "ReadWritePaths=-/home/deploy/claude-receipts" in dropin.splitlines()
    host.run(f"systemctl restart credsync@{app}")

    data = claude_credentials(serial=8)
    pushed = push_to_host(host, tmp_path, data, timeout_s=20)
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert f"published, sha {sha12(data)}" in pushed.stdout
    assert as_deploy(host, "ls /home/deploy/claude-receipts").split() == ["receipt-.credentials.json"]
    answered = as_deploy(host, "/opt/credsync/bin/credsync init")
    assert "nothing changed" in answered and "credsync answered within" in answered, answered
    # Writable: that one folder; /home around it still read-only.
    pid = main_pid(host, app)
    assert writable_to(host, pid, "/home/deploy/claude-receipts")
    for elsewhere in ("/home/deploy", "/home/deploy/claude-uploads", "/home/deploy/.ssh", "/etc/credsync"):
        assert not writable_to(host, pid, elsewhere), elsewhere
    assert CANARY not in journal(host, app), "a secret reached the journal"

    # install-host again: nothing to change. A typo (/etc) is refused; the setting gone, so is the drop-in.
    assert "may write" not in host.run(INSTALL_HOST)
    host.run(f"echo CREDSYNC_RECEIPTS_DIR=/etc > /etc/credsync/{APPS[1]}.env.typo")
    host.run(f"cat /etc/credsync/{APPS[1]}.env >> /etc/credsync/{APPS[1]}.env.typo")
    host.run(f"mv /etc/credsync/{APPS[1]}.env.typo /etc/credsync/{APPS[1]}.env")
    code, output = host.container.exec_run(["sh", "-c", INSTALL_HOST])
    said = output.decode() if isinstance(output, bytes) else ""
    assert code == 1 and "CREDSYNC_RECEIPTS_DIR=/etc not made writable: owned by root" in said, said[-500:]
    host.run(f"test ! -e /etc/systemd/system/credsync@{APPS[1]}.service.d")
    host.run(f"sed -i '/^CREDSYNC_RECEIPTS_DIR=/d' /etc/credsync/{app}.env /etc/credsync/{APPS[1]}.env")
    assert f"credsync@{app}: no receipts folder writable any more" in host.run(INSTALL_HOST)
    host.run(f"test ! -e /etc/systemd/system/credsync@{app}.service.d")
