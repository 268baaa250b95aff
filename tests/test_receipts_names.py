"""Receipts a person finds: names `ls` shows, one per upload name and never two uploads' in one
file, the time in ISO 8601 beside the milliseconds, a receipt for a misnamed upload (bounded
however many names come), `credsync init`'s probe answered in one file, and `credsync push`
still reading the hidden name an older credsync writes. No root."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

from credsync.ledger import Ledger
from credsync.pipeline import Pipeline
from credsync.push import Credential, Server, remote_script
from credsync.receipts import (
    IGNORED_RECEIPTS_MAX,
    PROBE_BURST,
    PROBE_PER_S,
    PROBE_RECEIPT,
    Receipts,
    legacy_receipt_name,
    receipt_name,
    utc_iso,
)
from credsync.routes import CONFIG_ROUTES, DEFAULT_ROUTES, load_routes
from credsync.settings import Settings, load_settings
from tests.helpers import claude_credentials, own_settings, sha12, wait_until

ROUTES = [upload for upload, *_ in DEFAULT_ROUTES + CONFIG_ROUTES]
MISNAMED = ["credentials.json", "CREDENTIALS.JSON", "claude.json", "aws/CREDENTIALS", "credsync-probe"]


def owner() -> tuple[int, int]:
    return os.getuid(), os.getgid()


def opened(settings: Settings) -> Pipeline:
    """A pipeline whose source was opened, as `watch` and `sync` do first: receipts belong to
    its owner."""
    pipeline = Pipeline(settings, load_routes(settings), Ledger(settings.state_dir))
    os.close(pipeline.source.open())
    return pipeline


def with_receipts(root: Path) -> Settings:
    """own_settings' folders, and a receipts folder."""
    own_settings(root)
    (root / "receipts").mkdir(mode=0o700)
    return load_settings(
        {
            "source": root / "uploads",
            "claude_dir": root / "claude",
            "state_dir": root / "state",
            "receipts_dir": root / "receipts",
            "owner": f"{os.getuid()}:{os.getgid()}",
            "settle_ms": 0,
        }
    )


def test_every_route_has_a_receipt_name_ls_shows_and_none_is_a_misnamed_uploads() -> None:
    names = [receipt_name(upload) for upload in ROUTES]
    assert all(not name.startswith(".") and "/" not in name for name in names), names
    assert receipt_name(".credentials.json") == "receipt-.credentials.json"
    assert receipt_name("aws/credentials") == "receipt-aws__credentials"
    assert len(set(names)) == len(names)
    assert not set(names) & {receipt_name(name) for name in MISNAMED}, "a misnamed upload would overwrite a route's"
    assert legacy_receipt_name(".credentials.json") == ".credentials.json.receipt.json"  # what older push reads


def test_the_time_is_given_in_iso_8601_utc_to_the_millisecond() -> None:
    assert utc_iso(0) == "1970-01-01T00:00:00.000Z"
    assert utc_iso(1_800_000_000_007) == "2027-01-15T08:00:00.007Z"
    assert utc_iso(1_799_999_999_999) == "2027-01-15T07:59:59.999Z"  # no rounding up into the next second


def test_a_routes_receipt_is_written_under_the_visible_name_and_the_old_hidden_one(tmp_path: Path) -> None:
    receipts = Receipts(tmp_path)
    sha = "ab" * 32
    receipts.decided(".credentials.json", "published", upload_sha256=sha, notifies=False, owner=owner())
    visible = tmp_path / "receipt-.credentials.json"
    said = json.loads(visible.read_text())
    assert (said["outcome"], said["upload_sha256_prefix"]) == ("published", sha[:12])
    at = datetime.fromisoformat(said["at_utc"].replace("Z", "+00:00"))
    assert round(at.timestamp() * 1000) == said["at_ms"] and at.utcoffset() is not None and not at.utcoffset()
    assert (tmp_path / ".credentials.json.receipt.json").read_bytes() == visible.read_bytes()
    assert sorted(os.listdir(tmp_path)) == [".credentials.json.receipt.json", "receipt-.credentials.json"]


def test_a_misnamed_upload_gets_a_receipt_named_for_it_with_the_name_it_meant(tmp_path: Path) -> None:
    settings = with_receipts(tmp_path)
    pipeline = opened(settings)
    for name in ("credentials.json", "notes.txt"):
        (settings.source / name).write_bytes(b"{}")
        pipeline.process(name)
    assert settings.receipts_dir is not None
    assert os.listdir(settings.receipts_dir) == ["receipt-credentials.json"], "one for the near miss, none else"
    said = json.loads((settings.receipts_dir / "receipt-credentials.json").read_text())
    assert (said["route"], said["outcome"], said["reason_code"]) == ("credentials.json", "ignored", "no-route")
    assert said["reason"] == "no route takes this name: did you mean .credentials.json?"
    assert said["notification"] == "none" and said["upload_sha256_prefix"] == ""


def test_a_flood_of_misnamed_uploads_makes_a_bounded_number_of_receipts_each_written_once(tmp_path: Path) -> None:
    """More names than the pipeline remembers, again and again: each said anew once forgotten,
    yet no more than IGNORED_RECEIPTS_MAX files, and none rewritten (same inode)."""
    settings = with_receipts(tmp_path)
    assert settings.receipts_dir is not None
    pipeline = opened(settings)
    # Each a near miss: `credentials.json` in another case (`.credentials.json` without its dot).
    names = [
        "".join(c.upper() if (n >> i) & 1 else c for i, c in enumerate("credentials")) + ".json"
        for n in range(1, 1_101)
    ]
    inodes: dict[str, int] = {}
    for round_ in range(3):
        for name in names:
            pipeline.process(name)
        seen = {entry.name: entry.inode() for entry in os.scandir(settings.receipts_dir)}
        if round_ == 0:
            inodes = seen
    assert len(inodes) == IGNORED_RECEIPTS_MAX
    assert seen == inodes, "a receipt was written again, or another one added"


def test_a_name_with_control_characters_gets_no_receipt(tmp_path: Path) -> None:
    receipts = Receipts(tmp_path)
    receipts.ignored("credentials.json\x1b[2J", "did you mean .credentials.json?", owner())
    receipts.ignored("x" * 250 + "credentials.json", "did you mean .credentials.json?", owner())  # too long a name
    receipts.ignored("credentials.json", None, owner())  # no hint: not a near miss
    assert os.listdir(tmp_path) == []


def test_credsync_inits_probe_is_answered_in_one_file_naming_it_and_a_flood_of_probes_is_bounded(
    tmp_path: Path,
) -> None:
    receipts = Receipts(tmp_path)
    receipts.ignored("credsync-probe-first", None, owner())
    said = json.loads((tmp_path / PROBE_RECEIPT).read_text())
    assert (said["route"], said["outcome"], said["reason_code"]) == ("credsync-probe-first", "ignored", "probe")
    assert "watches this upload folder" in said["reason"]
    receipts.ignored("aws/credsync-probe-sub", None, owner())  # only in the upload folder itself
    assert json.loads((tmp_path / PROBE_RECEIPT).read_text())["route"] == "credsync-probe-first"
    started = time.monotonic()
    probes = [f"credsync-probe-{serial}" for serial in range(3 * PROBE_BURST)]
    for probe in probes:
        receipts.ignored(probe, None, owner())
    elapsed = time.monotonic() - started
    last = json.loads((tmp_path / PROBE_RECEIPT).read_text())["route"]
    answered = probes.index(last) + 1  # the first one was answered before the burst
    assert PROBE_BURST - 1 <= answered <= PROBE_BURST + PROBE_PER_S * elapsed, (answered, elapsed)
    assert os.listdir(tmp_path) == [PROBE_RECEIPT]


def run_push_script(folder: Path, data: bytes, write_receipt_as: str) -> subprocess.CompletedProcess[bytes]:
    """push's own remote script, run by sh in `folder` (the SSH user's home), while a server
    writes the receipt under `write_receipt_as` once the upload is in place."""
    credential = Credential(".credentials.json", "claude-oauth", data)
    script = remote_script(Server("server", "claude-uploads"), credential, timeout_s=5)
    (folder / "claude-receipts").mkdir()
    receipt = {"outcome": "published", "upload_sha256_prefix": sha12(data), "notification": "none"}

    def server() -> None:
        wait_until((folder / "claude-uploads" / ".credentials.json").exists, timeout=5)
        (folder / "claude-receipts" / write_receipt_as).write_text(json.dumps(receipt, indent=1))

    writer = threading.Thread(target=server)
    writer.start()
    try:
        return subprocess.run(["sh", "-c", script], cwd=folder, input=data, capture_output=True, timeout=30)
    finally:
        writer.join()


def test_push_reads_the_new_receipt_name_and_an_older_servers_hidden_one(tmp_path: Path) -> None:
    data = claude_credentials(serial=1)
    for name in (receipt_name(".credentials.json"), legacy_receipt_name(".credentials.json")):
        folder = tmp_path / name
        folder.mkdir()
        done = run_push_script(folder, data, name)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["upload_sha256_prefix"] == sha12(data)
