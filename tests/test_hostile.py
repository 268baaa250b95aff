"""Hostile uploads, end to end: the remote uploader controls the upload folder, so every kind of
trap is dropped in front of a running `credsync watch`. Each is rejected with its reason and
published nowhere; the daemon reads no more than it must, stays alive, and publishes the next
good upload at once. The consumer's side is hostile too: it can write its own volume."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from credsync.errors import printable
from tests import helpers
from tests.docker_env import ConsumerFactory
from tests.helpers import (
    ACCESS_TOKEN,
    AWS_SECRET,
    CANARY,
    CONFIG_ROUTES,
    Folders,
    WatchProcess,
    assert_no_canary,
    assert_published,
    claude_credentials,
    mcp_sign_ins,
    run_cli,
    sha12,
    wait_until,
)

pytestmark = pytest.mark.system  # root, a real Docker Engine or sshd: see conftest.py

CREDENTIALS = ".credentials.json"
KIB = 1024
MAX_BYTES = 1 << 20
FAST_PUBLISH_S = 2.0  # settle 50 ms: a good upload after a hostile one is published well within this
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d{4} (TRACE|DEBUG|INFO|SUCCESS|WARNING|ERROR|CRITICAL) "
)


def good_upload(route: str, serial: int) -> bytes:
    """A valid upload for the route; `serial` makes distinct versions."""
    if route == CREDENTIALS:
        return claude_credentials(serial=serial)
    if route == "aws/credentials":
        return (
            f"[default]\naws_access_key_id = AKIAFAKEKEY{serial:09d}\naws_secret_access_key = {AWS_SECRET}{serial}\n"
        ).encode()
    if route == "aws/config":
        return f"[default]\nregion = eu-west-{serial}\n".encode()
    # settings.json, allow-listed; the canary stands for anything the uploader would not show.
    return json.dumps({"cleanupPeriodDays": serial, "env": {"ANTHROPIC_MODEL": f"claude-{CANARY}"}}).encode()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def destination_of(folders: Folders, route: str) -> Path:
    return (folders.aws_dir if route.startswith("aws/") else folders.claude_dir) / Path(route).name


def oauth_document(**oauth: object) -> dict[str, object]:
    document = json.loads(claude_credentials(serial=5))
    document["claudeAiOauth"].update(oauth)
    return dict(document)


def rchar(pid: int) -> int:
    """Bytes the process has read through read(2) and friends, from any file."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError(f"/proc/{pid}/io has no rchar")


# --------------------------------------------------------------------------- the traps


Maker = Callable[[Path, Path], None]  # (path of the upload, a scratch folder outside the source)


def symlink_to_root_only_file(path: Path, scratch: Path) -> None:
    secret = scratch / "root-only"
    secret.write_bytes(claude_credentials(serial=99))  # valid: following the link would publish it
    secret.chmod(0o600)
    path.symlink_to(secret)


def symlink_into_destination(path: Path, scratch: Path) -> None:
    path.symlink_to(scratch.parent / "claude-config" / CREDENTIALS)


def dangling_symlink(path: Path, scratch: Path) -> None:
    path.symlink_to(scratch / "nowhere")


def symlinked_aws_folder(target: str) -> Maker:
    def make(path: Path, scratch: Path) -> None:
        folder = scratch / "elsewhere" if target == "elsewhere" else scratch.parent / "aws"
        folder.mkdir(exist_ok=True)
        real = folder / "credentials"
        if not real.exists():
            real.write_bytes(good_upload("aws/credentials", 99))
        path.parent.symlink_to(folder)

    return make


def hard_link(path: Path, scratch: Path) -> None:
    original = scratch / "linked"
    original.write_bytes(claude_credentials(serial=98))
    os.link(original, path)


def fifo(path: Path, _scratch: Path) -> None:
    os.mkfifo(path)


SOCKETS: list[socket.socket] = []


def unix_socket(path: Path, _scratch: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    SOCKETS.append(server)


def device(kind: int, major: int, minor: int) -> Maker:
    def make(path: Path, _scratch: Path) -> None:
        os.mknod(path, 0o600 | kind, os.makedev(major, minor))

    return make


def directory(path: Path, _scratch: Path) -> None:
    path.mkdir()
    (path / "inside").write_bytes(claude_credentials(serial=97))


def sparse_10_gib(path: Path, _scratch: Path) -> None:
    with path.open("wb") as handle:
        handle.truncate(10 << 30)


def content(data: bytes) -> Maker:
    def make(path: Path, _scratch: Path) -> None:
        path.write_bytes(data)

    return make


@dataclass(frozen=True)
class Trap:
    route: str
    make: Maker
    reason: str  # in the log line's reason
    code: str  # the fixed name counted on /metrics
    max_read: int = 64 * KIB  # what the daemon may read (its own bookkeeping) while rejecting it
    rescan: bool = False  # no event names the route (a folder swapped for a link): found by a rescan


GOOD = claude_credentials(serial=5)
GOOD_TEXT = GOOD.decode()
NESTED = b"[" * 100_000 + b"]" * 100_000


def with_content(route: str, data: bytes, reason: str, code: str) -> Trap:
    # Read at most a few times: once closed, and maybe once by the write backstop.
    return Trap(route, content(data), reason, code, max_read=3 * len(data) + 64 * KIB)


def oauth_text(replace: str = "", **oauth: object) -> bytes:
    """A credentials file with fields changed; `replace` swaps in raw text for `"expiresAt": 0`."""
    text = json.dumps(oauth_document(**({"expiresAt": 0} if replace else {}), **oauth))
    return (text.replace('"expiresAt": 0', f'"expiresAt": {replace}') if replace else text).encode()


AWS_GOOD = good_upload("aws/credentials", 3)
TRAPS: dict[str, Trap] = {
    "symlink-to-root-only-file": Trap(CREDENTIALS, symlink_to_root_only_file, "symlink", "symlink"),
    "symlink-into-destination": Trap(CREDENTIALS, symlink_into_destination, "symlink", "symlink"),
    "dangling-symlink": Trap(CREDENTIALS, dangling_symlink, "symlink", "symlink"),
    "symlinked-aws-folder": Trap(
        "aws/credentials", symlinked_aws_folder("elsewhere"), "symlink", "symlink", rescan=True
    ),
    "aws-folder-linked-to-destination": Trap(
        "aws/credentials", symlinked_aws_folder("destination"), "symlink", "symlink", rescan=True
    ),
    "hard-link": Trap(CREDENTIALS, hard_link, "2 hard links", "hard-link"),
    "fifo": Trap(CREDENTIALS, fifo, "FIFO", "not-regular-file"),
    "unix-socket": Trap(CREDENTIALS, unix_socket, "socket", "not-regular-file"),
    "character-device": Trap(CREDENTIALS, device(stat.S_IFCHR, 1, 3), "character device", "not-regular-file"),
    "block-device": Trap(CREDENTIALS, device(stat.S_IFBLK, 7, 0), "block device", "not-regular-file"),
    "directory": Trap(CREDENTIALS, directory, "directory", "not-regular-file"),
    "sparse-10-gib": Trap(CREDENTIALS, sparse_10_gib, "10737418240 bytes, over the limit of 1048576", "too-large"),
    "nested-brackets": with_content(CREDENTIALS, NESTED, "nests deeper than 32", "nesting"),
    "nested-objects": with_content(
        "settings.json", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nests deeper", "nesting"
    ),
    "invalid-utf8": with_content(
        CREDENTIALS, GOOD[:40] + b"\xff\xfe" + GOOD[40:], "not valid UTF-8 (byte 40)", "not-utf8"
    ),
    "overlong-utf8": with_content(CREDENTIALS, GOOD[:40] + b"\xc0\xaf" + GOOD[40:], "not valid UTF-8", "not-utf8"),
    "nul-bytes": with_content(CREDENTIALS, GOOD[:40] + b"\x00" + GOOD[40:], "NUL bytes", "nul-bytes"),
    "bom": with_content(CREDENTIALS, b"\xef\xbb\xbf" + GOOD, "byte order mark", "bom"),
    "duplicate-keys": with_content(
        CREDENTIALS,
        GOOD_TEXT.replace('"scopes"', '"expiresAt": 1, "scopes"', 1).encode(),
        "'expiresAt' twice",
        "duplicate-key",
    ),
    "duplicate-top-level-key": with_content(
        CREDENTIALS, b'{"claudeAiOauth": {}, ' + GOOD[1:], "'claudeAiOauth' twice", "duplicate-key"
    ),
    "huge-integer": with_content(CREDENTIALS, oauth_text("9" * 5000), "number too large", "huge-number"),
    "huge-float": with_content(CREDENTIALS, oauth_text("1e400"), "expiresAt", "schema"),
    "nan": with_content(CREDENTIALS, oauth_text("NaN"), "NaN", "not-json"),
    "out-of-range-expiry": with_content(CREDENTIALS, oauth_text(expiresAt=10**20), "expiresAt", "schema"),
    "scopes-as-string": with_content(CREDENTIALS, oauth_text(scopes="user:inference"), "scopes", "schema"),
    "expiry-as-string": with_content(CREDENTIALS, oauth_text(expiresAt="1800000000000"), "expiresAt", "schema"),
    "token-as-number": with_content(CREDENTIALS, oauth_text(accessToken=12345), "accessToken", "schema"),
    "oauth-as-list": with_content(
        CREDENTIALS, json.dumps({"claudeAiOauth": [GOOD_TEXT]}).encode(), "claudeAiOauth", "schema"
    ),
    "top-level-array": with_content("settings.json", b'[{"a": 1}]', "an array, expected an object", "not-object"),
    "ini-interpolation": with_content(
        "aws/config", b"[default]\nregion = %(HOME)s\n", "interpolation", "interpolation"
    ),
    "ini-duplicate-section": with_content(
        "aws/credentials", AWS_GOOD + b"[default]\nregion = x\n", "'default' appears twice", "duplicate-section"
    ),
    "ini-duplicate-key": with_content(
        "aws/credentials", AWS_GOOD + b"aws_access_key_id = AKIAFAKEKEY000000001\n", "twice", "duplicate-key"
    ),
    "ini-no-section": with_content(
        "aws/credentials",
        f"aws_access_key_id = AKIAFAKEKEY000000000\naws_secret_access_key = {AWS_SECRET}\n".encode(),
        "before any [section]",
        "not-ini",
    ),
    "ini-only-comments": with_content("aws/config", b"# region = eu-west-1\n", "no [section]", "no-section"),
    "ini-secret-on-a-line-of-its-own": with_content(
        "aws/credentials", AWS_GOOD + f"{AWS_SECRET}\n".encode(), "neither [section] nor key", "not-ini"
    ),
}


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    folder = tmp_path / "scratch"
    folder.mkdir()
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our own listener on 127.0.0.1
        return str(response.read().decode())


class Daemon(WatchProcess):
    """`credsync watch` that also serves /metrics and /healthz."""

    base_url = ""

    def metrics(self) -> str:
        text = http_get(f"{self.base_url}/metrics")
        assert_no_canary(text, "the /metrics page")
        return text


@pytest.fixture
def daemon(folders: Folders) -> Iterator[Daemon]:
    port = free_port()
    process = Daemon(folders, ["--settle-ms=50", f"--http=127.0.0.1:{port}", CONFIG_ROUTES])
    process.base_url = f"http://127.0.0.1:{port}"
    process.ready()
    try:
        yield process
        assert_no_canary(http_get(f"{process.base_url}/healthz"), "the /healthz page")
        process.metrics()
    finally:
        assert process.stop() == 0
        for server in SOCKETS:
            server.close()
        SOCKETS.clear()


def rejections(metrics: str, route: str, code: str) -> float:
    name = f'credsync_rejections_total{{reason="{code}",route="{route}"}}'
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(name))


@pytest.mark.parametrize("trap", TRAPS.values(), ids=TRAPS.keys())
def test_a_hostile_upload_is_rejected_with_its_reason_and_publishes_nothing(
    folders: Folders, daemon: Daemon, scratch: Path, trap: Trap
) -> None:
    route, pid = trap.route, daemon.process.pid
    first = good_upload(route, 1)
    folders.upload(route, first)
    daemon.wait_for("published", route=route, sha=sha12(first))
    destination = destination_of(folders, route)
    before = destination.stat()
    ledger_path = folders.state_dir / "ledger.json"  # written at the end of the daemon's batch
    wait_until(lambda: ledger_path.exists() and sha(first) in ledger_path.read_text(), timeout=5)
    ledger = ledger_path.read_bytes()
    upload = folders.source / route
    upload.unlink()
    if trap.rescan:
        shutil.rmtree(upload.parent)  # the folder itself becomes the trap
    read_before = rchar(pid)

    trap.make(upload, scratch)
    if trap.rescan:
        daemon.process.send_signal(signal.SIGHUP)
    rejected = daemon.wait_for("rejected", route=route)

    read = rchar(pid) - read_before
    assert trap.reason in rejected["reason"], rejected["reason"]
    assert rejected["level"] == "WARNING"
    assert read <= trap.max_read, f"the daemon read {read} bytes to reject it"
    after = destination.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "the destination was touched"
    assert_published(destination, first, owner=(0, 0) if route.startswith("aws/") else (1001, 1001))
    assert (folders.state_dir / "ledger.json").read_bytes() == ledger
    assert len(daemon.matching("published", route=route)) == 1
    assert daemon.process.poll() is None
    assert rejections(daemon.metrics(), route, trap.code) == 1
    if not trap.rescan:  # `credsync validate` says what the daemon said (a symlinked folder: see below)
        kind = {"aws/credentials": "aws-credentials", "aws/config": "aws-config"}.get(route, "claude-settings")
        checked = run_cli("validate", f"--kind={'claude-oauth' if route == CREDENTIALS else kind}", str(upload))
        assert checked.returncode == 1 and trap.reason in checked.stdout, checked.stdout
    status = run_cli("status", *folders.args())  # and `status` copes with it (its output is canary-checked)
    assert status.returncode == 0

    remove(upload.parent if trap.rescan else upload)
    second = good_upload(route, 2)
    started = time.monotonic()
    folders.upload(route, second)
    daemon.wait_for("published", route=route, sha=sha12(second), timeout=10)
    assert time.monotonic() - started < FAST_PUBLISH_S
    assert destination.read_bytes() == second
    warned = [line for line in daemon.matching("rejected", route=route) if line["level"] == "WARNING"]
    assert len(warned) == 1, "one hostile upload, one warning"


def test_validate_refuses_an_upload_under_a_symlinked_folder_like_the_daemon(folders: Folders, scratch: Path) -> None:
    symlinked_aws_folder("elsewhere")(folders.source / "aws" / "credentials", scratch)
    checked = run_cli("validate", str(folders.source / "aws" / "credentials"))
    assert checked.returncode == 1 and "symlink" in checked.stdout


# --------------------------------------------------------------------------- uploads that move


def test_a_file_that_keeps_growing_is_never_read_while_growing_and_others_still_publish(
    folders: Folders, daemon: WatchProcess
) -> None:
    upload = folders.source / CREDENTIALS
    read_before = rchar(daemon.process.pid)
    stop = threading.Event()
    grown = [0]

    def grow() -> None:
        with upload.open("wb") as handle:
            handle.write(b'{"claudeAiOauth": {"pad": "')
            while not stop.is_set():
                grown[0] += handle.write(b"x" * 4096)
                handle.flush()
                time.sleep(0.005)

    writer = threading.Thread(target=grow, daemon=True)
    writer.start()
    try:
        wait_until(lambda: grown[0] > 2 * MAX_BYTES, timeout=30)
        other = good_upload("settings.json", 1)  # the daemon is not stuck on the growing file
        started = time.monotonic()
        folders.upload("settings.json", other)
        daemon.wait_for("published", route="settings.json", sha=sha12(other), timeout=10)
        assert time.monotonic() - started < FAST_PUBLISH_S
        assert not daemon.matching("rejected", route=CREDENTIALS)
    finally:
        stop.set()
        writer.join(10)
    rejected = daemon.wait_for("rejected", route=CREDENTIALS, timeout=10)
    assert "over the limit of 1048576" in rejected["reason"]
    read = rchar(daemon.process.pid) - read_before
    assert read < 256 * KIB, f"the daemon read {read} bytes of a file it never had to read"
    assert not (folders.claude_dir / CREDENTIALS).exists()
    assert daemon.process.poll() is None


def test_an_upload_replaced_while_being_read_publishes_only_whole_versions(folders: Folders) -> None:
    """For 3 s, big uploads (about 200 KB) are swapped by rename and rewritten in place in chunks,
    back to back, with no settle time: the daemon keeps reading a file that is being replaced
    or rewritten under it. A reader of the destination only ever sees whole versions, and once
    the writer stops the last version is published. Destination and state live on tmpfs, so
    publishing costs no disk flush and the daemon reads as often as it can."""
    with fast_disk(folders.claude_dir, "uid=1001,gid=1001,mode=0755"), fast_disk(folders.state_dir, "mode=0700"):
        replace_while_reading(folders)


@contextlib.contextmanager
def fast_disk(target: Path, options: str) -> Iterator[None]:
    target.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=64m,{options}", "credsync-test", str(target)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", str(target)], check=True)


def replace_while_reading(folders: Folders) -> None:
    process = WatchProcess(folders, ["--settle-ms=0"]).ready()
    destination = folders.claude_dir / CREDENTIALS
    pad = "p" * 200_000
    known: set[str] = set()
    seen: set[str] = set()
    stop = threading.Event()

    def watch_destination() -> None:
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                seen.add(sha12(destination.read_bytes()))
            time.sleep(0.001)

    reader = threading.Thread(target=watch_destination, daemon=True)
    reader.start()
    upload = folders.source / CREDENTIALS
    serial, last = 0, b""
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            serial += 1
            last = claude_credentials(serial=serial, top_level=mcp_sign_ins(padding=f"{serial}{pad}"))
            known.add(sha12(last))
            if serial % 2:
                temp = folders.source / f"..credentials.json.Tmp{serial % 1000:03d}"
                temp.write_bytes(last)
                temp.rename(upload)
            else:
                with upload.open("wb") as handle:  # in place, in chunks: readable half written
                    for start in range(0, len(last), 4 * KIB):
                        handle.write(last[start : start + 4 * KIB])
                        handle.flush()
        process.wait_for("published", route=CREDENTIALS, sha=sha12(last), timeout=20)
        wait_until(lambda: sha12(destination.read_bytes()) in seen)
    finally:
        stop.set()
        reader.join(5)
        assert process.stop() == 0
    assert seen <= known, "a reader saw a destination that was never uploaded whole"
    assert_published(destination, last)
    outcomes = [str(line["message"]) for line in process.lines if line["route"] == CREDENTIALS]
    moved = [line for line in process.matching("unsettled") if "while being" in str(line["reason"])]
    summary = {outcome: outcomes.count(outcome) for outcome in sorted(set(outcomes))}
    print(f"{serial} versions; outcomes {summary}; {len(moved)} reads saw the file replaced or changed mid-read")
    # How often a read overlapped a replacement depends on timing (it is printed above); the
    # assertions that matter are that only whole versions were ever seen and the last one won.


def test_a_rewrite_begun_right_after_an_upload_is_not_reported_rejected_while_still_open(folders: Folders) -> None:
    process = WatchProcess(folders, ["--settle-ms=300"]).ready()
    try:
        first, second = claude_credentials(serial=1), claude_credentials(serial=2)
        folders.upload(CREDENTIALS, first)
        with (folders.source / CREDENTIALS).open("wb") as handle:  # the next scp starts at once, then stalls
            handle.write(second[:100])
            handle.flush()
            time.sleep(2)  # past the 1 s write backstop
            handle.write(second[100:])
        process.wait_for("published", route=CREDENTIALS, sha=sha12(second))
    finally:
        process.stop()
    assert not process.matching("rejected"), "an upload still being written was reported as rejected"


# --------------------------------------------------------------------------- hostile names


HOSTILE_NAMES = [
    "new\nline",
    ".credentials.json\n",  # a route's name plus a newline: not that route
    "carriage\rreturn",
    "\x1b[2J\x1b[31mred\x1b[0m",
    "\x1b]0;title\x07bell",
    "tab\there",
    "\u202etxt.exe",  # right-to-left override
    "del\x7f",
    "aws/\x1b[1mbold",
    "dir\nwith\x1bescape/inside",
]


def logged_name(name: str) -> str:
    """What the daemon sees of a planted name: only the source and `aws/` are watched, so a file
    in any other folder shows as that folder appearing."""
    parent, _, _ = name.rpartition("/")
    return name if parent in ("", "aws") else name.split("/", 1)[0]


def plant_hostile_names(folders: Folders) -> None:
    for name in HOSTILE_NAMES:
        path = folders.source / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"{}")


@pytest.fixture
def aws_folder(folders: Folders) -> Path:
    """There before the daemon starts: names inside a folder are seen from when it is watched
    (only route names are looked for again when an upload folder appears)."""
    folder = folders.source / "aws"
    folder.mkdir()
    return folder


@pytest.mark.usefixtures("aws_folder")
def test_hostile_file_names_are_logged_escaped_as_json(folders: Folders, daemon: WatchProcess) -> None:
    plant_hostile_names(folders)
    good = claude_credentials(serial=1)
    folders.upload(CREDENTIALS, good)
    daemon.wait_for("published", route=CREDENTIALS, sha=sha12(good))
    for name in HOSTILE_NAMES:
        daemon.wait_for("ignored: no route for this name", upload=printable(logged_name(name)), timeout=5)
    assert not any(line["message"] == "<not json>" for line in daemon.lines)
    assert not any("\x1b" in line.raw for line in daemon.lines)
    assert not daemon.matching("published", route=".credentials.json\n")


@pytest.mark.usefixtures("aws_folder")
def test_hostile_file_names_keep_text_logs_one_line_per_record_without_escapes(folders: Folders) -> None:
    process = WatchProcess(folders, ["--settle-ms=50", "--log-format=text"])  # the last --log-format wins
    try:
        wait_until(lambda: any(" ready " in line.raw for line in process.lines), timeout=15)
        plant_hostile_names(folders)
        good = claude_credentials(serial=1)
        folders.upload(CREDENTIALS, good)
        wait_until(lambda: any(f"sha={sha12(good)}" in line.raw for line in process.lines), timeout=10)
        wait_until(lambda: sum("ignored: no route" in line.raw for line in process.lines) >= len(HOSTILE_NAMES))
    finally:
        assert process.stop() == 0
    raw = [line.raw for line in process.lines]
    assert all(TEXT_LINE.match(line) for line in raw), "a record spans lines or a line is not a record"
    assert not any(character in line for line in raw for character in "\x1b\x07\r\x7f\u202e")
    for name in HOSTILE_NAMES:
        assert any(printable(logged_name(name)) in line for line in raw), f"{name!r} is not logged escaped"
    assert "\x1b" not in printable("\x1b") and "\n" not in printable("\n")


# --------------------------------------------------------------------------- a hostile consumer


@contextlib.contextmanager
def watching(folders: Folders) -> Iterator[WatchProcess]:
    """A daemon whose exit code is the test's business (it may have died)."""
    process = WatchProcess(folders, ["--settle-ms=50"]).ready()
    try:
        yield process
    finally:
        process.stop()


def assert_survives_consumer_change(folders: Folders, change: Callable[[], object], sign: str) -> None:
    """Publish, let the consumer do `change` to its file, see the daemon notice (`sign`), and
    still publish the next upload."""
    with watching(folders) as daemon:
        first = claude_credentials(serial=1)
        folders.upload(CREDENTIALS, first)
        daemon.wait_for("published", route=CREDENTIALS, sha=sha12(first))
        change()
        daemon.wait_for(sign, route=CREDENTIALS)
        assert daemon.process.poll() is None, "credsync died of its consumer's file"
        second = claude_credentials(serial=2)
        folders.upload(CREDENTIALS, second)
        daemon.wait_for("published", route=CREDENTIALS, sha=sha12(second))
        assert_published(folders.claude_dir / CREDENTIALS, second)


def test_a_consumer_writing_deeply_nested_json_does_not_stop_the_daemon(folders: Folders) -> None:
    assert_survives_consumer_change(
        folders,
        lambda: (folders.claude_dir / CREDENTIALS).write_bytes(NESTED),  # the webhook can write its own volume
        "consumer rewrote the published file; credsync keeps its version until the next upload",
    )


def test_a_consumer_renaming_a_socket_over_its_credential_does_not_stop_the_daemon(folders: Folders) -> None:
    staged = folders.claude_dir / "staged.sock"

    def socket_over_the_credential() -> None:
        server.bind(str(staged))
        staged.rename(folders.claude_dir / CREDENTIALS)

    with contextlib.closing(socket.socket(socket.AF_UNIX)) as server:
        assert_survives_consumer_change(
            folders, socket_over_the_credential, "the published file is gone or no longer a regular file"
        )


# A consumer whose `cat` answers what it likes: credsync runs in its own PID namespace (as a
# sidecar without the host's PIDs does), so it reads the consumer's /proc/1/status by
# `docker exec cat`, and the consumer decides what that prints.
def lying_cat(sig_cgt: str) -> str:
    return (
        "/bin/busybox rm /bin/cat;"
        f' printf \'#!/bin/sh\\necho "Name: node"\\necho "SigCgt: {sig_cgt}"\\n\' > /bin/cat;'
        " /bin/busybox chmod 755 /bin/cat;"
        ' trap "echo HUP >> /sig/signals" HUP; while :; do sleep 1 & wait $!; done'
    )


OWN_PID_NAMESPACE = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGTERM", "--"]


def stop_in_namespace(process: WatchProcess) -> None:
    """unshare ignores SIGTERM while it waits: stop credsync itself (its only child), then unshare."""
    pid = process.process.pid
    with contextlib.suppress(FileNotFoundError, IndexError, ProcessLookupError):
        child = int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])
        os.kill(child, signal.SIGTERM)
    process.stop()


def watch_in_own_pid_namespace(folders: Folders, target: str, monkeypatch: pytest.MonkeyPatch) -> WatchProcess:
    original = helpers.credsync_command
    monkeypatch.setattr(helpers, "credsync_command", lambda *args: [*OWN_PID_NAMESPACE, *original(*args)])
    options = ["--settle-ms=50", "--debounce-ms=100", "--notify-grace-ms=300", f"--notify-target={target}"]
    return WatchProcess(folders, options).ready()


def test_a_consumer_answering_garbage_to_the_signal_check_does_not_silence_notifications(
    folders: Folders, consumers: ConsumerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    liar = consumers(lying_cat("not-hex"), name=f"credsync-test-liar-{secrets.token_hex(3)}")
    process = watch_in_own_pid_namespace(folders, liar.name, monkeypatch)
    try:
        first = claude_credentials(serial=1)
        folders.upload(CREDENTIALS, first)
        process.wait_for("published", route=CREDENTIALS, sha=sha12(first))
        process.wait_for("notification pending", timeout=10)  # the liar answered
        assert liar.signals() == []  # never signalled on a garbage answer
        liar.container.remove(force=True)
        honest = consumers(name=liar.name)
        second = claude_credentials(serial=2)
        folders.upload(CREDENTIALS, second)
        process.wait_for("published", route=CREDENTIALS, sha=sha12(second))
        notified = process.wait_for("notified", timeout=30)
    finally:
        stop_in_namespace(process)
    assert sha12(second) in notified["routes"]
    assert honest.signals() == ["HUP"]
    assert not any(line["message"] == "<not json>" for line in process.lines), "a traceback in the log"


def test_a_consumers_answer_to_the_signal_check_is_never_echoed_into_the_log(
    folders: Folders, consumers: ConsumerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compromised consumer holds the credential; credsync must not carry it into its log store."""
    liar = consumers(lying_cat(ACCESS_TOKEN), name=f"credsync-test-liar-{secrets.token_hex(3)}")
    process = watch_in_own_pid_namespace(folders, liar.name, monkeypatch)
    try:
        folders.upload(CREDENTIALS, claude_credentials(serial=1))
        process.wait_for("notification pending", timeout=10)
    finally:
        stop_in_namespace(process)  # asserts that no line holds the canary
