"""A real OpenSSH server on 127.0.0.1 for upload tests: a throwaway unprivileged user, key
authentication only, and the real `scp` (SFTP and legacy `-O` modes) and `rsync` clients.

Registered for every test module by `pytest_plugins` in conftest.py.
Missing binaries fail the run with the Debian package to install: these tests are never
skipped, since a skipped transfer test proves nothing."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

USER_NAME = "csupload"
FIRST_UID = 2000  # above the UIDs useradd would pick here, so never 1001 (the consumer's UID)
FORBIDDEN_UIDS = {0, 1001}
START_TIMEOUT_S = 15.0
CLIENT_TIMEOUT_S = 60.0
START_ATTEMPTS = 3  # the port picked by binding port 0 can be taken before sshd binds it
BINARIES = {
    "/usr/sbin/sshd": "openssh-server",
    "ssh": "openssh-client",
    "scp": "openssh-client",
    "ssh-keygen": "openssh-client",
    "rsync": "rsync",
    "useradd": "passwd",
    "usermod": "passwd",
}


@dataclass(frozen=True)
class SshUser:
    name: str
    uid: int
    gid: int
    home: Path


@dataclass(frozen=True)
class SshServer:
    """A running sshd; the client methods run as root with the throwaway user's key."""

    port: int
    client_key: Path
    user: SshUser
    log_path: Path

    def ssh_options(self) -> list[str]:
        return [
            "-i",
            str(self.client_key),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
        ]

    def remote(self, remote_path: str | os.PathLike[str]) -> str:
        return f"{self.user.name}@127.0.0.1:{os.fspath(remote_path)}"

    def ssh(self, command: str) -> subprocess.CompletedProcess[str]:
        """Run a shell command on the server as the throwaway user."""
        return self._run(
            ["ssh", *self.ssh_options(), "-p", str(self.port), f"{self.user.name}@127.0.0.1", command], "ssh"
        )

    def scp(
        self,
        local_path: str | os.PathLike[str],
        remote_path: str | os.PathLike[str],
        legacy: bool,
        *,
        limit_kbit: int | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Upload with the real scp: SFTP mode (OpenSSH's default), or the legacy protocol with
        `-O`; `limit_kbit` throttles it (`-l`) so the upload stays open for a while."""
        options = ["-O"] if legacy else []
        if limit_kbit is not None:
            options += ["-l", str(limit_kbit)]
        command = ["scp", *options, *self.ssh_options(), "-P", str(self.port), os.fspath(local_path)]
        return self._run([*command, self.remote(remote_path)], "scp -O" if legacy else "scp")

    def rsync(
        self,
        local_path: str | os.PathLike[str],
        remote_path: str | os.PathLike[str],
        *,
        limit_kbyte: int | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Upload with the real rsync over ssh (temp file `.<name>.XXXXXX`, then a rename);
        `limit_kbyte` throttles it (`--bwlimit`, KiB/s).

        `--checksum`: rsync's default quick check compares size and whole-second mtime, so a
        same-size file uploaded again within a second would be skipped without a transfer."""
        shell = shlex.join(["ssh", *self.ssh_options(), "-p", str(self.port)])
        options = ["--checksum", "-e", shell]
        if limit_kbyte is not None:
            options.append(f"--bwlimit={limit_kbyte}")
        return self._run(["rsync", *options, os.fspath(local_path), self.remote(remote_path)], "rsync")

    def _run(self, command: list[str], what: str) -> subprocess.CompletedProcess[str]:
        try:
            result = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=CLIENT_TIMEOUT_S,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"{what} did not finish within {CLIENT_TIMEOUT_S:g}s; sshd log:\n{self.log_tail()}")
        if result.returncode != 0:
            # The clients' stderr names paths and errors, never the contents of the file sent.
            pytest.fail(f"{what} exited {result.returncode}: {result.stderr.strip()}\nsshd log:\n{self.log_tail()}")
        return result

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as error:
            return f"<cannot read {self.log_path}: {error.strerror}>"
        return "\n".join(text.splitlines()[-lines:])


def require_binaries() -> None:
    missing = sorted(
        {f"{name} (apt-get install -y {package})" for name, package in BINARIES.items() if shutil.which(name) is None}
    )
    if missing:
        pytest.fail("transfer tests need real OpenSSH and rsync; missing: " + ", ".join(missing))


def run_checked(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        pytest.fail(f"{what} failed ({result.returncode}): {result.stderr.strip()}")


def free_id(first: int) -> int:
    """The first UID from `first` up that is neither a user's UID nor a group's GID."""
    candidate = first
    while True:
        taken = False
        with contextlib.suppress(KeyError):
            pwd.getpwuid(candidate)
            taken = True
        with contextlib.suppress(KeyError):
            grp.getgrgid(candidate)
            taken = True
        if not taken:
            return candidate
        candidate += 1


def ensure_user(name: str = USER_NAME) -> SshUser:
    """The throwaway upload user, created if missing, with a shell (scp -O and rsync run a
    remote command) and an unlocked account (sshd refuses locked ones even for keys)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        uid = free_id(FIRST_UID)
        result = subprocess.run(
            ["useradd", "--create-home", "--shell", "/bin/sh", "--uid", str(uid), "--user-group", name],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        try:
            entry = pwd.getpwnam(name)  # another session may have created it at the same time
        except KeyError:
            pytest.fail(f"useradd {name} failed ({result.returncode}): {result.stderr.strip()}")
    if entry.pw_uid in FORBIDDEN_UIDS or entry.pw_gid in FORBIDDEN_UIDS:
        pytest.fail(f"user {name} exists with UID:GID {entry.pw_uid}:{entry.pw_gid}; it must be neither 0 nor 1001")
    if Path(entry.pw_shell).name in {"nologin", "false"} or not Path(entry.pw_shell).exists():
        run_checked(["usermod", "--shell", "/bin/sh", name], f"usermod --shell for {name}")
    if account_locked(name):
        # '*': no password can match, but the account is not locked, so keys work with UsePAM no.
        run_checked(["usermod", "--password", "*", name], f"unlocking {name}")
    home = Path(entry.pw_dir)
    if not home.is_dir():
        home.mkdir(mode=0o755, parents=True)
        os.chown(home, entry.pw_uid, entry.pw_gid)
    return SshUser(name, entry.pw_uid, entry.pw_gid, home)


def account_locked(name: str) -> bool:
    for line in Path("/etc/shadow").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name and len(fields) > 1:
            return fields[1].startswith("!")
    return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_config(folder: Path, port: int, user: SshUser) -> Path:
    config = folder / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {folder / 'host_ed25519'}",
                f"PidFile {folder / 'sshd.pid'}",
                f"AuthorizedKeysFile {folder / 'authorized_keys'}",
                "AuthenticationMethods publickey",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin no",
                f"AllowUsers {user.name}",
                "StrictModes no",
                "UsePAM no",
                "UseDNS no",
                "PrintMotd no",
                "X11Forwarding no",
                "AllowTcpForwarding no",
                "AllowAgentForwarding no",
                "PermitTTY no",
                "MaxStartups 50",
                "LogLevel VERBOSE",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )
    )
    return config


def make_keys(folder: Path) -> Path:
    """A host key, and a client key whose public half is the only authorized key."""
    run_checked(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / "host_ed25519")], "ssh-keygen")
    client_key = folder / "client_ed25519"
    run_checked(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(client_key)], "ssh-keygen")
    authorized = folder / "authorized_keys"
    # Read by sshd as the user: world-readable, in a traversable folder. A public key is no secret.
    shutil.copyfile(client_key.with_suffix(".pub"), authorized)
    authorized.chmod(0o644)
    folder.chmod(0o755)
    return client_key


def wait_for_port(process: subprocess.Popen[bytes], port: int, deadline: float) -> bool:
    """True once the port accepts connections; False if sshd exited first."""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.5)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def start_sshd(folder: Path, user: SshUser, client_key: Path) -> tuple[subprocess.Popen[bytes], SshServer]:
    log_path = folder / "sshd.log"
    server: SshServer | None = None
    for _attempt in range(START_ATTEMPTS):
        port = free_port()
        config = write_config(folder, port, user)
        run_checked(["/usr/sbin/sshd", "-t", "-f", str(config)], "sshd -t (configuration check)")
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        server = SshServer(port, client_key, user, log_path)
        if wait_for_port(process, port, time.monotonic() + START_TIMEOUT_S):
            return process, server
        exited = process.poll() is not None
        stop(process)
        if not exited:
            pytest.fail(f"sshd did not listen on port {port} within {START_TIMEOUT_S:g}s:\n{server.log_tail()}")
    tail = server.log_tail() if server is not None else ""
    pytest.fail(f"sshd exited at start-up {START_ATTEMPTS} times:\n{tail}")


@pytest.fixture(scope="session")
def sshd() -> Iterator[SshServer]:
    """A real sshd on 127.0.0.1 for the whole session; stopped at its end."""
    require_binaries()
    user = ensure_user()
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation folder
    folder = Path(tempfile.mkdtemp(prefix="credsync-sshd-"))
    process: subprocess.Popen[bytes] | None = None
    try:
        client_key = make_keys(folder)
        process, server = start_sshd(folder, user, client_key)
        # Prove key login and the user's shell work now, so a setup problem fails here, plainly.
        who = server.ssh("id -u").stdout.strip()
        if who != str(user.uid):
            pytest.fail(f"ssh logged in as UID {who!r}, expected {user.uid}")
        yield server
    finally:
        if process is not None:
            stop(process)
        shutil.rmtree(folder, ignore_errors=True)
