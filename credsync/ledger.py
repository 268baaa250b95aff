"""The ledger: what was published from which upload. Hashes, sizes and times only, never a
secret. Kept in the state folder so a restart neither re-publishes nor reverts a consumer's
change."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from loguru import logger
from pydantic import BaseModel, ValidationError

from credsync.errors import PublishError
from credsync.publisher import keep_private_copy

LEDGER_NAME = "ledger.json"


@dataclass(frozen=True)
class Entry:
    sha256: str
    size: int
    destination: str
    published_at_ms: int
    # The consumer's own rewrite of the destination since (Claude refreshing its tokens).
    consumer_sha256: str | None = None
    consumer_seen_at_ms: int | None = None
    # A setup-token's upload hash and when credsync first saw it: its expiry counts from there.
    first_seen: tuple[str, int] | None = None


class LedgerFile(BaseModel):
    """The file as written; read back through the same model, so another version is refused."""

    version: Literal[1] = 1
    routes: dict[str, Entry] = {}


class Ledger:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LEDGER_NAME
        self._routes = self._load()
        self._dirty = False

    def _load(self) -> dict[str, Entry]:
        try:
            return LedgerFile.model_validate_json(self.path.read_bytes()).routes
        except FileNotFoundError:
            return {}
        except (ValidationError, ValueError):
            # Losing the ledger only costs the consumer-change protection until the next publish.
            logger.warning(f"ledger {self.path} is unreadable; starting a new one")
            return {}

    def last(self, upload: str) -> Entry | None:
        return self._routes.get(upload)

    def record(self, upload: str, entry: Entry) -> None:
        """In memory; `flush` writes it (once per batch: a burst of uploads costs one write)."""
        self._routes[upload] = entry
        self._dirty = True

    def record_consumer_change(self, upload: str, sha256: str, at_ms: int) -> None:
        entry = self._routes.get(upload)
        if entry is not None:
            self.record(upload, replace(entry, consumer_sha256=sha256, consumer_seen_at_ms=at_ms))

    def flush(self) -> None:
        """Write the ledger if it changed. Losing an unflushed entry in a crash is harmless: the
        next pass compares upload and destination bytes, and nothing is published twice."""
        if not self._dirty:
            return
        document = LedgerFile(routes=dict(sorted(self._routes.items())))
        try:
            keep_private_copy(self.path, document.model_dump_json(indent=1).encode() + b"\n")
        except PublishError as error:
            logger.bind(path=str(self.path)).warning(f"cannot write the ledger: {error.reason}; retrying later")
            return
        self._dirty = False
