"""Receipts: for each route, what became of the last upload, in a folder of the uploader's
(CREDSYNC_RECEIPTS_DIR), so that whoever uploaded can tell published from rejected or waiting
without privileges on the server. Hash prefixes, times, outcome and a one-line reason, never a
secret. Written atomically, owned by the source folder's owner, by the pipeline's thread and by
the notifier's (hence the lock).

Also, for names no route takes: a misnamed upload (`credentials.json`) gets a receipt saying
what it was probably meant to be, and `credsync init`'s probe gets an answer, which proves that
credsync watches this upload folder and can write this receipts folder."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from loguru import logger

from credsync import __version__
from credsync.errors import PublishError, printable
from credsync.hashes import short_hash
from credsync.publisher import open_destination_folder, write_atomically_in
from credsync.schedule import LineBudget
from credsync.timefmt import now_ms

# `receipt-` and the upload's name: visible to `ls` whatever the upload is called (a
# `.credentials.json.receipt.json` was not), and one file per name: the misnamed
# `credentials.json` gets `receipt-credentials.json`, never the route's `receipt-.credentials.json`.
RECEIPT_PREFIX = "receipt-"
# The name receipts had at first (hidden for a dotted upload), still written beside the new one
# for each route, so that an older `credsync push`, which waits for that name, still gets its answer.
LEGACY_SUFFIX = ".receipt.json"
# `credsync init` drops `credsync-probe-<nonce>` into the upload folder and waits for its answer
# here: always this one file, so probes never pile up in the operator's folder.
PROBE_PREFIX = "credsync-probe-"
PROBE_RECEIPT = RECEIPT_PREFIX + "credsync-probe"
# Distinct misnamed uploads given a receipt in one run, each once: a flood of names (a script
# writing `credentials.json.1`, `.2`, …) makes at most this many files.
IGNORED_RECEIPTS_MAX = 32
# Probe answers: a burst, then one a second (each rewrites the one file).
PROBE_BURST, PROBE_PER_S = 20, 1.0
NAME_MAX = 255  # bytes of a file name (Linux)


@dataclass(frozen=True)
class Receipt:
    route: str  # the upload's name (a route's, or an ignored name)
    outcome: str  # published, repaired, unchanged, kept-consumer-change, superseded, rejected, failed, ignored
    upload_sha256_prefix: str  # of the bytes uploaded: what `credsync push` sent
    published_sha256_prefix: str  # of what the destination holds now (differs for a setup-token)
    reason_code: str
    reason: str
    at_ms: int
    at_utc: str  # the same moment for people: ISO 8601, UTC
    notification: str  # pending, delivered, skipped, failed, none (nothing to tell or nothing changed)


def receipt_name(upload: str) -> str:
    """The receipt's file name for an upload (`aws/credentials` → `receipt-aws__credentials`)."""
    return RECEIPT_PREFIX + upload.replace("/", "__")


def legacy_receipt_name(upload: str) -> str:
    return upload.replace("/", "__") + LEGACY_SUFFIX


def is_probe(name: str) -> bool:
    """`credsync init`'s probe: in the upload folder itself, never in a subfolder."""
    return name.startswith(PROBE_PREFIX) and "/" not in name


def utc_iso(at_ms: int) -> str:
    """`2025-06-01T12:00:00.123Z`: whole milliseconds, no float rounding."""
    seconds, millis = divmod(at_ms, 1000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{millis:03d}Z"


def stamped(
    route: str,
    outcome: str,
    *,
    upload_sha256: str = "",
    published_sha256: str = "",
    reason_code: str = "",
    reason: str = "",
    notification: str = "none",
) -> Receipt:
    """A receipt made now (hashes in full hex; the receipt keeps their prefixes)."""
    at = now_ms()
    upload, published = short_hash(upload_sha256), short_hash(published_sha256)
    return Receipt(route, outcome, upload, published, reason_code, reason, at, utc_iso(at), notification)


class Receipts:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._last: dict[str, Receipt] = {}
        # The notifier is told when the destination is in place, before the receipt is written:
        # its outcome may come first, and waits here for that receipt (route, published hash).
        self._early: dict[tuple[str, str], str] = {}
        self._ignored_receipted: set[str] = set()
        self._probes = LineBudget(PROBE_BURST, PROBE_PER_S)
        self._lock = threading.Lock()

    def decided(
        self,
        route: str,
        outcome: str,
        *,
        upload_sha256: str,
        published_sha256: str = "",
        reason_code: str = "",
        reason: str = "",
        notifies: bool,
        owner: tuple[int, int],
    ) -> None:
        changed = outcome in ("published", "repaired")
        with self._lock:
            early = self._early.pop((route, short_hash(published_sha256)), "pending")
            self._early = {key: value for key, value in self._early.items() if key[0] != route}
            receipt = stamped(
                route,
                outcome,
                upload_sha256=upload_sha256,
                published_sha256=published_sha256,
                reason_code=reason_code,
                reason=reason,
                notification=early if changed and notifies else "none",
            )
            self._last[route] = receipt
            self._write(receipt, owner, receipt_name(route), legacy_receipt_name(route))

    def notified(self, batch: Mapping[str, str], outcome: str, owner: tuple[int, int]) -> None:
        """The notifier's final outcome (delivered, skipped or failed) for these routes, each
        with the hash it published."""
        with self._lock:
            for route, sha256 in batch.items():
                receipt = self._last.get(route)
                if receipt is not None and receipt.published_sha256_prefix == short_hash(sha256):
                    if receipt.notification == "pending":
                        self._last[route] = replace(receipt, notification=outcome)
                        self._write(self._last[route], owner, receipt_name(route), legacy_receipt_name(route))
                else:
                    self._early[(route, short_hash(sha256))] = outcome

    def ignored(self, name: str, hint: str | None, owner: tuple[int, int]) -> None:
        """A name no route takes, said once by the pipeline: a probe is answered; a misnamed
        upload (one with a hint) gets its own receipt, once per name and for at most
        IGNORED_RECEIPTS_MAX names; anything else gets none."""
        with self._lock:
            if is_probe(name):
                if self._probes.admit():
                    said = f"credsync {__version__} watches this upload folder and writes receipts here"
                    self._write(stamped(name, "ignored", reason_code="probe", reason=said), owner, PROBE_RECEIPT)
                return
            file_name = receipt_name(name)
            if (
                hint is None
                or name in self._ignored_receipted
                or len(self._ignored_receipted) >= IGNORED_RECEIPTS_MAX
                or not name.isprintable()  # a file name with escapes would garble `ls`
                or len(os.fsencode(file_name)) > NAME_MAX
            ):
                return
            self._ignored_receipted.add(name)
            said = f"no route takes this name: {hint}"
            self._write(stamped(name, "ignored", reason_code="no-route", reason=said), owner, file_name)

    def _write(self, receipt: Receipt, owner: tuple[int, int], *names: str) -> None:
        data = json.dumps(asdict(receipt), indent=1).encode() + b"\n"
        try:
            folder_fd = open_destination_folder(self.folder)
            try:
                for name in names:
                    write_atomically_in(folder_fd, self.folder / name, data, uid=owner[0], gid=owner[1], mode=0o644)
            finally:
                os.close(folder_fd)
        except PublishError as error:  # the receipt is a courtesy: publishing goes on without it
            said = f"cannot write the receipt: {error.reason}{self._hint()}"
            logger.bind(route=printable(receipt.route)).warning(said)

    def _hint(self) -> str:
        """Under systemd, the unit sees /home read-only unless told otherwise (host mode)."""
        try:
            read_only = bool(os.statvfs(self.folder).f_flag & os.ST_RDONLY)
        except OSError:
            return ""
        if not read_only:
            return ""
        return (
            "; under systemd (host mode), set CREDSYNC_RECEIPTS_DIR in /etc/credsync/<appName>.env and run"
            " `sudo bash scripts/install-host` again: it lets the unit write this folder, then restart it"
        )
