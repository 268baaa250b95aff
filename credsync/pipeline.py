"""One upload through intake → route → validate → decide → publish → ledger, logged as one
line per decision."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from functools import partial

from loguru import logger

from credsync.consumer_view import ConsumerView
from credsync.decide import Action, decide
from credsync.errors import PublishError, Rejection, SourceUnavailable, UploadMissing, UploadUnsettled, printable
from credsync.events import Events
from credsync.intake import SourceFolder, Upload
from credsync.ledger import Entry, Ledger
from credsync.publisher import keep_private_copy, read_current, write_atomically
from credsync.routes import Route, RouteTable, is_rsync_temp
from credsync.settings import Settings
from credsync.timefmt import now_ms
from credsync.validators import CredentialSummary, is_sound, validate

HASH_PREFIX = 12
IGNORED_MEMORY = 1024


class Outcome(Enum):
    PUBLISHED = "published"
    REPAIRED = "repaired"
    UNCHANGED = "unchanged"
    KEPT_CONSUMER = "kept-consumer-change"
    REJECTED = "rejected"
    FAILED = "failed"
    MISSING = "missing"
    UNSETTLED = "unsettled"
    INCOMPLETE = "incomplete"  # read before its writer closed it, and not valid (yet): wait for the close
    IGNORED = "ignored"


OUTCOME_OF_ACTION = {
    Action.PUBLISH: Outcome.PUBLISHED,
    Action.REPAIR: Outcome.REPAIRED,
    Action.UNCHANGED: Outcome.UNCHANGED,
    Action.KEEP_CONSUMER: Outcome.KEPT_CONSUMER,
}


@dataclass(frozen=True)
class Result:
    name: str
    outcome: Outcome
    sha256: str = ""
    reason: str = ""

    @property
    def changed_destination(self) -> bool:
        return self.outcome in (Outcome.PUBLISHED, Outcome.REPAIRED)


def short_hash(sha256_hex: str) -> str:
    return sha256_hex[:HASH_PREFIX]


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        routes: RouteTable,
        ledger: Ledger,
        *,
        dry_run: bool = False,
        events: Events | None = None,
    ) -> None:
        self.settings = settings
        self.routes = routes
        self.ledger = ledger
        self.dry_run = dry_run
        self.events = events or Events()
        self.source = SourceFolder(settings.source, settings.source_owner)
        self.consumer = ConsumerView(settings, ledger, self.events)
        self._last_logged: dict[str, tuple[Outcome, str]] = {}
        self._ignored: set[str] = set(routes.upload_folders())  # folders are not uploads: never logged

    def process(self, name: str, *, complete: bool = True) -> Result:
        """`complete=False`: read before the writer closed it; an invalid file then is most likely
        still arriving, so it is not reported as rejected (its close brings it back)."""
        route = self.routes.match(name)
        if route is None:
            self._note_ignored(name)
            return Result(name, Outcome.IGNORED)
        try:
            upload = self.source.read(
                name, max_bytes=self.settings.max_bytes, settle_ns=self.settings.settle_ms * 1_000_000
            )
        except SourceUnavailable as unavailable:  # said once by whoever runs the pipeline (watch, sync)
            return self._report(route, Outcome.MISSING, "", unavailable.reason, level="DEBUG")
        except UploadMissing as missing:
            return self._report(route, Outcome.MISSING, "", missing.reason, level="DEBUG")
        except UploadUnsettled as unsettled:
            return self._report(route, Outcome.UNSETTLED, "", unsettled.reason, level="DEBUG")
        except Rejection as rejection:
            if not complete and rejection.code == "too-large":  # still growing: judged at its close
                return self._report(route, Outcome.INCOMPLETE, "", rejection.reason, level="DEBUG")
            return self._reject(route, "", rejection)
        return self._process_upload(route, upload, complete)

    def _process_upload(self, route: Route, upload: Upload, complete: bool) -> Result:
        try:
            summary = validate(
                route.kind,
                upload.data,
                max_bytes=self.settings.max_bytes,
                now_ms=now_ms(),
                allow_commands=self.settings.allow_commands,
            )
        except Rejection as rejection:
            if not complete:
                return self._report(route, Outcome.INCOMPLETE, upload.sha256, rejection.reason, level="DEBUG")
            return self._reject(route, upload.sha256, rejection)
        try:
            current = read_current(route.destination, self.settings.max_bytes)
            action = self._decide(route, upload, current)
            if action in (Action.PUBLISH, Action.REPAIR) and not self.dry_run:
                self._publish(route, upload, current)
            elif action is Action.UNCHANGED and not self.dry_run:
                self._remember(route, upload)
        except PublishError as error:
            failed = partial(self.events.publish_failed, route.upload)
            return self._report(route, Outcome.FAILED, upload.sha256, error.reason, level="ERROR", count=failed)
        outcome = OUTCOME_OF_ACTION[action]
        if outcome is Outcome.KEPT_CONSUMER:
            reason = "the consumer rewrote the destination since this upload was published; upload anew to replace it"
            result = self._report(route, outcome, upload.sha256, reason, level="WARNING")
        else:
            if outcome in (Outcome.PUBLISHED, Outcome.REPAIRED) and not self.dry_run:
                self.events.published(route.upload, outcome.value, (time.time_ns() - upload.changed_ns) / 1e9)
            self._log_warnings(route, upload, summary)
            result = self._report(route, outcome, upload.sha256, "", level="INFO", size=len(upload.data))
        if not self.dry_run:
            held = current if outcome is Outcome.KEPT_CONSUMER else upload.data
            self.consumer.assess(route, held or b"")
        return result

    def _reject(self, route: Route, sha256: str, rejection: Rejection) -> Result:
        counted = partial(self.events.rejected, route.upload, rejection.code)
        return self._report(route, Outcome.REJECTED, sha256, rejection.reason, level="WARNING", count=counted)

    def _decide(self, route: Route, upload: Upload, current: bytes | None) -> Action:
        last = self.ledger.last(route.upload)
        return decide(
            upload.sha256,
            None if last is None else last.sha256,
            None if current is None else hashlib.sha256(current).hexdigest(),
            current is not None and is_sound(route.kind, current, max_bytes=self.settings.max_bytes),
        )

    def _remember(self, route: Route, upload: Upload) -> None:
        """The destination holds this upload but the ledger does not say so (a crash came
        between publishing and writing the ledger): record it, or a later consumer refresh
        would look like something an old upload must repair."""
        last = self.ledger.last(route.upload)
        if last is None or last.sha256 != upload.sha256:
            self.ledger.record(route.upload, Entry(upload.sha256, len(upload.data), str(route.destination), now_ms()))

    def _publish(self, route: Route, upload: Upload, current: bytes | None) -> None:
        write_atomically(route.destination, upload.data, uid=route.uid, gid=route.gid, mode=route.mode)
        self.ledger.record(route.upload, Entry(upload.sha256, len(upload.data), str(route.destination), now_ms()))
        if current is not None:
            # After the destination, so publishing is not slowed by it; a crash in between costs
            # only this copy of the replaced version, never the published one.
            try:
                keep_private_copy(self.settings.state_dir / "previous" / route.slug, current)
            except PublishError as error:
                logger.bind(route=route.upload).warning(
                    f"published, but cannot keep the replaced version: {error.reason}"
                )

    def _log_warnings(self, route: Route, upload: Upload, summary: CredentialSummary) -> None:
        if self._last_logged.get(route.upload, (None, ""))[1] == upload.sha256:
            return
        for warning in summary.warnings:
            logger.bind(route=route.upload, sha=short_hash(upload.sha256)).warning(warning)

    def _report(
        self,
        route: Route,
        outcome: Outcome,
        sha256: str,
        reason: str,
        *,
        level: str,
        size: int | None = None,
        count: Callable[[], None] | None = None,
    ) -> Result:
        """One line per decision; a decision repeated for the same bytes drops to DEBUG. `count`
        runs for a new decision, before its line: whoever reads the line finds it counted."""
        key = (outcome, sha256 + reason)
        repeated = self._last_logged.get(route.upload) == key
        self._last_logged[route.upload] = key
        if count is not None and not repeated:
            count()
        fields: dict[str, object] = {"route": route.upload}
        if sha256:
            fields["sha"] = short_hash(sha256)
        if size is not None:
            fields["bytes"] = size
        if outcome in (Outcome.PUBLISHED, Outcome.REPAIRED):
            fields["dest"] = str(route.destination)
        if reason:
            fields["reason"] = reason
        if self.dry_run:
            fields["dry_run"] = True
        logger.bind(**fields).log("DEBUG" if repeated else level, outcome.value)
        return Result(route.upload, outcome, sha256, reason)

    def _note_ignored(self, name: str) -> None:
        if is_rsync_temp(name) or name in self._ignored:
            return
        if len(self._ignored) >= IGNORED_MEMORY:
            self._ignored.clear()
        self._ignored.add(name)
        logger.bind(upload=printable(name)).debug("ignored: no route for this name")
