"""Receipts: for each route, what became of the last upload, in a folder of the uploader's
(CREDSYNC_RECEIPTS_DIR), so that whoever uploaded can tell published from rejected or waiting
without privileges on the server. Hash prefixes, times, outcome and a one-line reason, never a
secret. Written atomically, owned by the source folder's owner, by the pipeline's thread and by
the notifier's (hence the lock)."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from loguru import logger

from credsync.errors import PublishError
from credsync.hashes import short_hash
from credsync.publisher import write_atomically
from credsync.timefmt import now_ms

RECEIPT_SUFFIX = ".receipt.json"


@dataclass(frozen=True)
class Receipt:
    route: str
    outcome: str  # published, repaired, unchanged, kept-consumer-change, superseded, rejected, failed
    upload_sha256_prefix: str  # of the bytes uploaded: what `credsync push` sent
    published_sha256_prefix: str  # of what the destination holds now (differs for a setup-token)
    reason_code: str
    reason: str
    at_ms: int
    notification: str  # pending, delivered, skipped, failed, none (nothing to tell or nothing changed)


def receipt_name(route: str) -> str:
    return route.replace("/", "__") + RECEIPT_SUFFIX


class Receipts:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._last: dict[str, Receipt] = {}
        # The notifier is told when the destination is in place, before the receipt is written:
        # its outcome may come first, and waits here for that receipt (route, published hash).
        self._early: dict[tuple[str, str], str] = {}
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
            receipt = Receipt(
                route,
                outcome,
                short_hash(upload_sha256),
                short_hash(published_sha256),
                reason_code,
                reason,
                now_ms(),
                early if changed and notifies else "none",
            )
            self._last[route] = receipt
            self._write(receipt, owner)

    def notified(self, batch: Mapping[str, str], outcome: str, owner: tuple[int, int]) -> None:
        """The notifier's final outcome (delivered, skipped or failed) for these routes, each
        with the hash it published."""
        with self._lock:
            for route, sha256 in batch.items():
                receipt = self._last.get(route)
                if receipt is not None and receipt.published_sha256_prefix == short_hash(sha256):
                    if receipt.notification == "pending":
                        self._last[route] = replace(receipt, notification=outcome)
                        self._write(self._last[route], owner)
                else:
                    self._early[(route, short_hash(sha256))] = outcome

    def _write(self, receipt: Receipt, owner: tuple[int, int]) -> None:
        data = json.dumps(asdict(receipt), indent=1).encode() + b"\n"
        try:
            write_atomically(self.folder / receipt_name(receipt.route), data, uid=owner[0], gid=owner[1], mode=0o644)
        except PublishError as error:  # the receipt is a courtesy: publishing goes on without it
            logger.bind(route=receipt.route).warning(f"cannot write the receipt: {error.reason}")
