"""Shared test helpers: fake credentials carrying a canary, a credsync process with its log
read line by line, and bounded waits."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from credsync.receipts import receipt_name
from credsync.settings import Settings, load_settings

# Built at run time so no committed file holds a token-shaped string; obviously fake.
CANARY = "CANARY" + secrets.token_hex(12)
ACCESS_TOKEN = "sk-ant-oat01-fake-" + CANARY
REFRESH_TOKEN = "sk-ant-ort01-fake-" + CANARY
AWS_SECRET = "fakeSecret" + CANARY
HOUR_MS = 3_600_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def claude_credentials(
    *, expires_in_ms: int = 8 * HOUR_MS, serial: int = 0, top_level: dict[str, Any] | None = None, **extra_oauth: Any
) -> bytes:
    """A `.credentials.json` as Claude writes it; `serial` makes distinct versions. `top_level`
    adds keys beside `claudeAiOauth` (a laptop's `mcpOAuth`), `extra_oauth` inside it."""
    oauth: dict[str, Any] = {
        "accessToken": f"{ACCESS_TOKEN}-{serial}",
        "refreshToken": f"{REFRESH_TOKEN}-{serial}",
        "expiresAt": now_ms() + expires_in_ms,
        "scopes": ["user:inference", "user:profile"],
        "subscriptionType": "max",
        "rateLimitTier": "default_claude_max_20x",
    }
    oauth.update(extra_oauth)
    return json.dumps({"claudeAiOauth": oauth, **(top_level or {})}, indent=2).encode()


def mcp_sign_ins(count: int = 1, padding: str = "") -> dict[str, Any]:
    """`mcpOAuth` as Claude Code writes it after signing in to remote MCP servers: tokens of
    those servers, data the allow-list keeps. `padding` makes the file as large as wanted."""
    return {
        "mcpOAuth": {
            f"server{n}|{n:016x}": {
                "serverName": f"server{n}",
                "serverUrl": f"https://mcp{n}.example.com/mcp",
                "accessToken": f"mcp-token-{CANARY}-{n}{padding}",
                "expiresAt": now_ms() + HOUR_MS,
                "scope": "read",
            }
            for n in range(count)
        }
    }


def aws_credentials() -> bytes:
    return f"[default]\naws_access_key_id = AKIAFAKEKEY000000000\naws_secret_access_key = {AWS_SECRET}\n".encode()


# The real consumer (scripts/test-deps installs it) and the user claude-hub's job runs it as.
CLAUDE_CLI = Path("/opt/credsync-test/claude-code/node_modules/.bin/claude")
JOB_USER = 1000  # `node` in the job's container

# Configuration routes are off unless turned on; tests that upload them turn on all three.
CONFIG_ROUTES = "--config-routes=settings.json,.claude.json,aws/config"


def sha12(data: bytes) -> str:
    """The hash prefix credsync logs for these bytes."""
    return hashlib.sha256(data).hexdigest()[:12]


def assert_published(destination: Path, expected: bytes, owner: tuple[int, int] = (1001, 1001)) -> None:
    # Compare bytes without printing them: they hold the canary.
    assert destination.read_bytes() == expected, f"{destination} differs from the upload"
    info = os.lstat(destination)
    assert stat.S_ISREG(info.st_mode), f"{destination} is not a regular file"
    assert (info.st_uid, info.st_gid) == owner, f"{destination} is owned {info.st_uid}:{info.st_gid}, not {owner}"
    assert stat.S_IMODE(info.st_mode) == 0o600, f"{destination} has mode {stat.S_IMODE(info.st_mode):04o}"


def assert_no_canary(text: str, where: str) -> None:
    # The message names where, never the text: a failure must not print the secret either.
    assert CANARY not in text, f"a secret leaked into {where}"


@contextlib.contextmanager
def job_workspace() -> Iterator[Path]:
    """claude-hub's job's /workspace: not under pytest's tmp_path, root's 0700 folder, which
    `node` could not enter."""
    folder = Path(tempfile.mkdtemp(prefix="credsync-job-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def give_to_job_user(workspace: Path) -> None:
    """As the job's entrypoint does (as root) before it runs claude as `node`."""
    for path in [workspace, *workspace.rglob("*")]:
        os.chown(path, JOB_USER, JOB_USER, follow_symlinks=False)


def auth_status(claude: Path, home: Path) -> dict[str, Any]:
    """`claude auth status` as `node` with HOME there: needs no network."""
    result = subprocess.run(
        ["setpriv", f"--reuid={JOB_USER}", f"--regid={JOB_USER}", "--clear-groups", str(claude), "auth", "status"],
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert_no_canary(result.stdout + result.stderr, "claude auth status")
    status: dict[str, Any] = json.loads(result.stdout)
    return status


def as_a_job_reads_it(claude: Path, published: Path, workspace: Path) -> dict[str, Any]:
    """claude-hub's job entrypoint: copy /home/node/.claude/. to /workspace/.claude, chown it to
    node, run claude as node with HOME=/workspace."""
    shutil.copytree(published, workspace / ".claude")
    give_to_job_user(workspace)
    return auth_status(claude, workspace)


class FakeClock:
    """A monotonic clock the test moves by hand, for pure scheduling logic."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> None:
    """Poll a condition with a deadline (for file system state, which has no event to await)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@dataclass
class Folders:
    source: Path
    claude_dir: Path
    state_dir: Path
    aws_dir: Path

    def args(self) -> list[str]:
        return [
            f"--source={self.source}",
            f"--claude-dir={self.claude_dir}",
            f"--state-dir={self.state_dir}",
            f"--aws-dir={self.aws_dir}",
        ]

    def upload(self, name: str, data: bytes) -> Path:
        """Write an upload the way `cp` does: in place, then close."""
        path = self.source / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path


def make_folders(root: Path) -> Folders:
    folders = Folders(root / "uploads", root / "claude-config", root / "state", root / "aws")
    for path in (folders.source, folders.claude_dir, folders.aws_dir):
        path.mkdir()
    os.chown(folders.claude_dir, 1001, 1001)
    return folders


def credsync_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "credsync", *args]


def run_cli(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`credsync ARGS`; `env` adds variables (CREDSYNC_* settings) to this process's own."""
    result = subprocess.run(
        credsync_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )
    assert_no_canary(result.stdout + result.stderr, f"the output of credsync {args[0]}")
    return result


@dataclass
class LogLine:
    raw: str
    fields: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.fields.get(key)


class HasFolderFlags(Protocol):
    def args(self) -> list[str]: ...


@dataclass
class WatchProcess:
    """`credsync watch --log-format json` in a subprocess; every log line is parsed and kept.
    With `command`, that command instead, in a session of its own (the bench's other lanes)."""

    folders: HasFolderFlags | None
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    lines: list[LogLine] = field(default_factory=list)
    command: list[str] | None = None

    def __post_init__(self) -> None:
        self._changed = threading.Condition()
        if self.command is None:
            assert self.folders is not None, "credsync watch needs its folders"
            flags = [*self.folders.args(), "--log-format=json", "--log-level=DEBUG", *self.extra_args]
        self.process = subprocess.Popen(
            self.command or credsync_command("watch", *flags),
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **self.env},
            start_new_session=self.command is not None,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            try:
                fields = json.loads(raw)
            except ValueError:
                fields = {"message": "<not json>"}
            with self._changed:
                self.lines.append(LogLine(raw, fields))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def matching(self, message: str, **fields: Any) -> list[LogLine]:
        with self._changed:
            return [
                line
                for line in self.lines
                if line["message"] == message and all(line[key] == value for key, value in fields.items())
            ]

    def wait_for(self, message: str, count: int = 1, timeout: float = 15.0, **fields: Any) -> LogLine:
        """Block until the count-th matching log line arrives (an event, not a sleep)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = self.matching(message, **fields)
                if len(found) >= count:
                    return found[count - 1]
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.process.poll() is not None and not self._reader.is_alive()):
                    summary = [(line["message"], line["route"], line["reason"]) for line in self.lines[-15:]]
                    raise AssertionError(f"no {count}x {message!r} {fields} within {timeout}s; last lines: {summary}")
                self._changed.wait(remaining)

    def ready(self) -> WatchProcess:
        self.wait_for("ready")
        return self

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        assert_no_canary("".join(line.raw for line in self.lines), "the daemon's log")
        return code


def own_settings(root: Path) -> Settings:
    """Settings for the in-process pipeline without root: uploads/ and claude/ under `root`,
    published files owned by whoever runs the tests, no settle time."""
    for folder in ("uploads", "claude"):
        (root / folder).mkdir(mode=0o700)
    return load_settings(
        {
            "source": root / "uploads",
            "claude_dir": root / "claude",
            "state_dir": root / "state",
            "owner": f"{os.getuid()}:{os.getgid()}",
            "settle_ms": 0,
        }
    )


UPLOADER = 1000  # the operator's SSH user, owner of the upload folder
CONSUMER = 1001  # the webhook's user, owner of its volume


def as_user(uid: int, script: str) -> None:
    """Run a shell script as `uid` with no capabilities and no supplementary groups."""
    subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all", "sh", "-euc", script],
        check=True,
        timeout=120,
    )


@dataclass
class Site(Folders):
    """A host as deployed: the uploader's home with its upload and receipts folders, the
    consumer's volume, credsync's state, and a folder only root may read that holds a valid
    credential."""

    home: Path
    root_only: Path

    @property
    def receipts(self) -> Path:
        return self.home / "claude-receipts"

    def upload(self, name: str, data: bytes) -> Path:
        """Written by the uploader itself, in place, as scp does."""
        staged = self.home / ".staged"
        staged.write_bytes(data)
        os.chown(staged, UPLOADER, UPLOADER)
        as_user(UPLOADER, f'mkdir -p "$(dirname {self.source / name})"; cat {staged} > "{self.source / name}"')
        staged.unlink()
        return self.source / name

    def watch(self, *extra: str) -> WatchProcess:
        return WatchProcess(self, ["--settle-ms=50", *extra]).ready()

    def receipt(self, route: str) -> dict[str, Any]:
        """The receipt credsync wrote for the route (awaited: it follows the log line)."""
        path = self.receipts / receipt_name(route)
        wait_until(path.exists, timeout=5)
        receipt: dict[str, Any] = json.loads(path.read_text())
        return receipt


@contextlib.contextmanager
def deployed_site() -> Iterator[Site]:
    # Not under pytest's tmp_path: that is root's 0700 folder, which the users could not enter.
    root = Path(tempfile.mkdtemp(prefix="credsync-site-"))
    root.chmod(0o755)
    home = root / "home"
    claude_dir = root / "volumes" / "claude-config"
    aws_dir = root / "volumes" / "claude-aws"
    for folder in (home, home / "claude-uploads", home / "claude-receipts", claude_dir, aws_dir, root / "root-only"):
        folder.mkdir(parents=True)
    for folder in (home, home / "claude-uploads", home / "claude-receipts"):
        os.chown(folder, UPLOADER, UPLOADER)
    os.chown(claude_dir, CONSUMER, CONSUMER)
    secret_folder = root / "root-only"
    secret_folder.chmod(0o700)
    (secret_folder / ".credentials.json").write_bytes(claude_credentials(serial=666))
    (secret_folder / ".credentials.json").chmod(0o600)
    try:
        yield Site(home / "claude-uploads", claude_dir, root / "state", aws_dir, home, secret_folder)
    finally:
        shutil.rmtree(root, ignore_errors=True)
