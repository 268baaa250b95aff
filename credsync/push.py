"""`credsync push`: the operator's side, on macOS or Linux. It takes the credential from the
macOS Keychain, a file, or a setup-token on standard input (never from the command line);
validates it here with the validators the server uses, so nothing invalid leaves the machine;
uploads it over ssh so that credsync never sees a partial file (a temporary name in the upload
folder, then a rename, in one session); and waits for the server's receipt."""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from credsync.errors import ConfigError, CredsyncError, Rejection, printable
from credsync.hashes import short_hash
from credsync.receipts import legacy_receipt_name, receipt_name
from credsync.routes import Kind
from credsync.setup_token import parse_setup_token
from credsync.timefmt import now_ms
from credsync.validators import validate

KEYCHAIN_SERVICE = "Claude Code-credentials"
KEYCHAIN_NOT_FOUND = 44  # `security find-generic-password`: no such item
CREDENTIALS_ROUTE = ".credentials.json"
SETUP_TOKEN_ROUTE = "claude-setup-token"  # noqa: S105 - a file name
DEFAULT_UPLOAD_DIR = "claude-uploads"
RECEIPTS_DIR_NAME = "claude-receipts"
MAX_BYTES = 1 << 20
POLL_S = 0.05  # the server-side wait for the receipt: a test and a grep a round, cheap
MAX_CONNECT_TIMEOUT_S = 30
MAX_SHOWN = 200  # characters of one receipt field: a server's answer cannot flood the terminal
JSON_NAMES: dict[type, str] = {list: "an array", str: "a string", int: "a number", float: "a number"}
JSON_NAMES |= {bool: "true or false", type(None): "null"}  # what json.loads makes of what is not an object
TOKEN_IN_TEXT = re.compile(r"sk-ant-oat01-[A-Za-z0-9_-]+")


class PushError(CredsyncError):
    """The credential could not be read here; nothing was uploaded."""


class Verdict(IntEnum):
    """Per server, in rising severity; the exit code is the worst."""

    DONE = 0  # published, repaired or unchanged
    REJECTED = 1
    FAILED = 3  # the transfer, or the publication on the server
    TIMED_OUT = 5


@dataclass(frozen=True)
class Credential:
    route: str
    kind: Kind | None  # None: a setup-token (its own check)
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class Server:
    destination: str  # what ssh connects to: [user@]host, or an alias from ssh_config
    upload_dir: str  # relative to the remote home unless absolute

    @property
    def receipts_dir(self) -> str:
        """Beside the upload folder: ~/claude-uploads → ~/claude-receipts."""
        return posixpath.join(posixpath.dirname(self.upload_dir), RECEIPTS_DIR_NAME)

    @property
    def shown_receipts_dir(self) -> str:
        """As the operator would type it: `~/claude-receipts`, or an absolute path as it is."""
        return self.receipts_dir if posixpath.isabs(self.receipts_dir) else "~/" + self.receipts_dir


def parse_server(text: str) -> Server:
    """`[user@]host[:UPLOAD_DIR]`, as scp writes a remote folder. A destination starting with
    `-` would reach ssh as an option (`-oProxyCommand=…` runs a command here): refused."""
    destination, _, folder = text.partition(":")
    if destination.startswith("-"):
        raise ConfigError(f"server {printable(text)} refused: it starts with '-', which ssh would take as an option")
    if not destination:
        raise ConfigError(f"server {printable(text)} refused: no host (expected [user@]host[:UPLOAD_DIR])")
    folder = folder.removeprefix("~/") or DEFAULT_UPLOAD_DIR
    return Server(destination, folder.rstrip("/") or "/")


def from_keychain() -> Credential:
    """macOS keeps Claude Code's credentials in the login Keychain (the same JSON as the file)."""
    try:
        found = subprocess.run(
            ["security", "find-generic-password", "-s", KEYCHAIN_SERVICE, "-w"], capture_output=True, timeout=60
        )
    except FileNotFoundError:
        raise PushError("no `security` program: the Keychain is macOS only; use --file instead") from None
    if found.returncode == KEYCHAIN_NOT_FOUND:
        raise PushError(f"no {KEYCHAIN_SERVICE!r} item in the login Keychain: log in with `claude` first")
    if found.returncode != 0:
        raise PushError(f"`security find-generic-password` exited {found.returncode}")
    return Credential(CREDENTIALS_ROUTE, "claude-oauth", found.stdout.rstrip(b"\n"))


def from_file(path: Path) -> Credential:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise PushError(f"cannot read {printable(str(path))}: {error.strerror}") from None
    if data.lstrip().startswith(b"sk-ant-"):
        return setup_token_credential(data)
    return Credential(CREDENTIALS_ROUTE, "claude-oauth", data)


def from_stdin() -> Credential:
    """A setup-token pasted or piped in (it is never an argument): the one token in the text,
    so the output of `claude setup-token` can be piped as it is."""
    text = sys.stdin.buffer.read(MAX_BYTES + 1).decode("utf-8", errors="replace")
    found = set(TOKEN_IN_TEXT.findall(text))
    if len(found) != 1:
        count = "no" if not found else "more than one"
        raise PushError(f"not sent: {count} sk-ant-oat01- token on standard input")
    return setup_token_credential(found.pop().encode())


def setup_token_credential(data: bytes) -> Credential:
    try:
        token = parse_setup_token(data.decode("utf-8", errors="replace"))
    except Rejection as rejection:
        raise PushError(f"not sent: {rejection.reason}") from None
    return Credential(SETUP_TOKEN_ROUTE, None, token.encode() + b"\n")


def check_locally(credential: Credential) -> None:
    """The server's own validation, here: a credential it would refuse is never uploaded."""
    if credential.kind is None:
        return  # a setup-token was checked when it was read
    try:
        validate(credential.kind, credential.data, max_bytes=MAX_BYTES, now_ms=now_ms())
    except Rejection as rejection:
        raise PushError(f"not sent: {rejection.reason}") from None


def remote_script(server: Server, credential: Credential, timeout_s: float) -> str:
    """Runs on the server as the SSH user, the credential on its standard input. The answer is
    the receipt under its name, or under the name a credsync from before it writes."""
    target = posixpath.join(server.upload_dir, credential.route)
    receipt = posixpath.join(server.receipts_dir, receipt_name(credential.route))
    legacy = posixpath.join(server.receipts_dir, legacy_receipt_name(credential.route))
    # Its own hash, or none: an upload refused by its shape (size, kind of file) is never read.
    prefix = f'"upload_sha256_prefix": "{short_hash(credential.sha256)}"'
    unread = '"upload_sha256_prefix": ""'
    rounds = max(1, int(timeout_s / POLL_S))
    return f"""set -eu
umask 077
target={shlex.quote(target)}; receipt={shlex.quote(receipt)}; legacy={shlex.quote(legacy)}
tmp="$(dirname "$target")/.credsync-push.$$.tmp"
mkdir -p "$(dirname "$target")"
rm -f "$receipt" "$legacy" 2>/dev/null || true
cat > "$tmp"
mv -f "$tmp" "$target"
ours() {{  # the receipt of these bytes, by either name
  for r in "$receipt" "$legacy"; do
    if [ -f "$r" ] && grep -qF -e {shlex.quote(prefix)} -e {shlex.quote(unread)} "$r"; then
      found=$r; return 0
    fi
  done
  return 1
}}
n=0
while [ "$n" -lt {rounds} ]; do
  if ours; then
    grep -q '"notification": "pending"' "$found" || {{ cat "$found"; exit 0; }}
  fi
  sleep {POLL_S}
  n=$((n + 1))
done
if ours; then
  cat "$found"; exit 0
fi
exit 124
"""


@dataclass(frozen=True)
class Report:
    server: str
    verdict: Verdict
    line: str


def connect_timeout_s(timeout_s: float) -> int:
    """For ssh's ConnectTimeout (the TCP connection and the SSH handshake): a host that drops
    packets fails within the receipt timeout, capped, instead of TCP's minutes, and well before
    the whole session's limit (timeout_s + 60) kills ssh."""
    return max(1, min(math.ceil(timeout_s), MAX_CONNECT_TIMEOUT_S))


def ssh_argv(ssh: Sequence[str], destination: str, script: str, connect_s: float) -> list[str]:
    """`script` run by the server's shell: no terminal, never a password prompt, and a bounded
    time to connect. `destination` came through parse_server, so it is no ssh option."""
    options = ["-T", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout_s(connect_s)}"]
    return [*ssh, *options, destination, script]


def last_line(stderr: bytes) -> str:
    """What ssh (or the server) said last, printable: why a session failed."""
    lines = stderr.decode(errors="replace").strip().splitlines()
    return printable(lines[-1]) if lines else ""


def push_to(server: Server, credential: Credential, ssh: Sequence[str], timeout_s: float) -> Report:
    command = ssh_argv(ssh, server.destination, remote_script(server, credential, timeout_s), timeout_s)
    name = printable(server.destination)
    try:
        done = subprocess.run(command, input=credential.data, capture_output=True, timeout=timeout_s + 60)
    except subprocess.TimeoutExpired:
        return Report(name, Verdict.TIMED_OUT, f"timed out after {timeout_s:g}s: the server did not answer")
    if done.returncode == 124:
        return Report(
            name,
            Verdict.TIMED_OUT,
            f"uploaded, but no receipt within {timeout_s:g}s: is credsync running there with CREDSYNC_RECEIPTS_DIR"
            f" set to {printable(server.shown_receipts_dir)}? (`credsync init` checks)",
        )
    if done.returncode != 0:
        return Report(name, Verdict.FAILED, f"upload failed: ssh exited {done.returncode}: {last_line(done.stderr)}")
    return judge_receipt(name, done.stdout)


def shown(value: object) -> str:
    """A receipt's field as printed: the server wrote it, so it may hold terminal escapes or
    newlines that would repaint the terminal or forge another server's line."""
    text = printable(str(value))
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "…"


def judge_receipt(name: str, answer: bytes) -> Report:
    """What the server answered, which it controls entirely: anything but a JSON object is a
    failure with a one-line reason, and every field printed is made printable."""
    try:
        receipt: object = json.loads(answer)
    except (ValueError, RecursionError):  # RecursionError: nested arrays deeper than the parser goes
        return Report(name, Verdict.FAILED, "the receipt is not valid JSON")
    if not isinstance(receipt, dict):
        what = JSON_NAMES.get(type(receipt), "something else")
        return Report(name, Verdict.FAILED, f"the receipt is not a JSON object but {what}")
    outcome = shown(receipt.get("outcome"))
    notification = shown(receipt.get("notification"))
    sha = shown(receipt.get("published_sha256_prefix") or receipt.get("upload_sha256_prefix"))
    if outcome in ("published", "repaired", "unchanged"):
        told = "" if notification == "none" else f", notification {notification}"
        return Report(name, Verdict.DONE, f"{outcome}, sha {sha}{told}")
    reason = shown(receipt.get("reason") or "")
    if outcome == "rejected":
        return Report(name, Verdict.REJECTED, f"rejected: {reason}")
    return Report(name, Verdict.FAILED, f"{outcome}: {reason}" if reason else outcome)


def push(credential: Credential, servers: Sequence[Server], ssh: Sequence[str], timeout_s: float) -> list[Report]:
    check_locally(credential)
    with ThreadPoolExecutor(max_workers=min(8, len(servers))) as pool:
        return list(pool.map(lambda server: push_to(server, credential, ssh, timeout_s), servers))
