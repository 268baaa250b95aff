"""The consumer's side of a published credential: what it holds now, whether that will keep
working, and whether the consumer rewrote it. Reports to the log (each problem once) and to
the event counters; never writes a destination."""

from __future__ import annotations

import hashlib

from loguru import logger

from credsync.credential_health import claude_health
from credsync.hashes import short_hash
from credsync.ledger import Ledger
from credsync.publisher import read_current
from credsync.routes import Route
from credsync.settings import Settings
from credsync.tally import Tally
from credsync.timefmt import now_ms


class ConsumerView:
    def __init__(self, settings: Settings, ledger: Ledger, tally: Tally) -> None:
        self.settings = settings
        self.ledger = ledger
        self.tally = tally
        self._said: set[tuple[str, str, str]] = set()

    def assess(self, route: Route, data: bytes) -> None:
        """Expiry and refresh problems of what the consumer holds (`data`), each warned once."""
        if route.kind not in ("claude-oauth", "claude-setup-token"):
            return
        health = claude_health(data)
        if health is None:
            return
        self.tally.credential(route.upload, health.access_expires_ms, health.refresh_expires_ms)
        problems = health.problems(
            now_ms(), self.settings.expiry_warn_hours * 3_600_000, self.settings.consumer_refreshes
        )
        self.tally.needs_login(route.upload, bool(problems))
        sha = short_hash(hashlib.sha256(data).hexdigest())
        for problem in problems:
            key = (route.upload, sha, problem.code)
            if key not in self._said:
                self._said.add(key)
                logger.bind(route=route.upload, sha=sha, problem=problem.code).warning(problem.advice)

    def rewritten(self, routes: list[Route]) -> None:
        """A destination changed on disk: if not by credsync, record and assess the consumer's
        version. `routes`: every route that publishes to it; the one that did so last owns it."""
        published = [(entry, route) for route in routes if (entry := self.ledger.last(route.upload)) is not None]
        if not published:
            return
        entry, route = max(published, key=lambda pair: pair[0].published_at_ms)
        data = read_current(route.destination, self.settings.max_bytes)
        if data is None:
            # Gone, or replaced by a link, socket or folder: the next rescan repairs it from the upload.
            logger.bind(route=route.upload).warning("the published file is gone or no longer a regular file")
            return
        sha = hashlib.sha256(data).hexdigest()
        if sha in (entry.sha256, entry.consumer_sha256):
            return  # credsync's own publication, or a change already recorded
        self.ledger.record_consumer_change(route.upload, sha, now_ms())
        self.tally.consumer_rewrite(route.upload)
        logger.bind(route=route.upload, sha=short_hash(sha)).info(
            "consumer rewrote the published file; credsync keeps its version until the next upload"
        )
        self.assess(route, data)
