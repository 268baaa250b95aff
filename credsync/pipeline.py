"""One upload through intake → route → validate → render → decide → publish → ledger, logged
as one line per decision (and, where CREDSYNC_RECEIPTS_DIR is set, one receipt per route)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from functools import cached_property, partial
from pathlib import PurePosixPath
from typing import NamedTuple

from loguru import logger

from credsync.consumer_view import ConsumerView
from credsync.decide import Action, decide
from credsync.errors import PublishError, Rejection, SourceUnavailable, UploadMissing, UploadUnsettled, printable
from credsync.hashes import short_hash
from credsync.intake import SWARM_SECRET_CAP, SourceFolder, Upload
from credsync.ledger import Entry, Ledger
from credsync.publisher import (
    StagedFile,
    keep_private_copy,
    open_destination_folder,
    read_current_in,
    stat_destination_in,
    write_atomically_in,
)
from credsync.receipts import Receipts
from credsync.routes import Route, RouteTable, is_rsync_temp, near_miss
from credsync.safe_paths import open_subfolders
from credsync.schedule import LineBudget, RecentNames
from credsync.settings import Settings
from credsync.setup_token import parse_setup_token, render_credentials
from credsync.tally import Tally
from credsync.timefmt import now_ms
from credsync.validators import CredentialSummary, is_sound, validate

IGNORED_MEMORY = 1024  # ignored names remembered as said, the oldest forgotten first
# Lines about ignored names, per level: a burst at once, then a few a second; past that, one line
# counts those not shown (a flood of names rewritten in a loop must not flood the log).
IGNORED_BURST = 20
IGNORED_LINES_PER_S = 1.0


class Outcome(Enum):
    PUBLISHED = "published"
    REPAIRED = "repaired"
    UNCHANGED = "unchanged"
    KEPT_CONSUMER = "kept-consumer-change"
    SUPERSEDED = "superseded"  # another route's newer upload publishes to the same file
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
CHANGES = frozenset({Outcome.PUBLISHED, Outcome.REPAIRED})
# Final decisions about an upload: what its uploader is told in a receipt.
RECEIPTED = frozenset(
    {
        Outcome.PUBLISHED,
        Outcome.REPAIRED,
        Outcome.UNCHANGED,
        Outcome.KEPT_CONSUMER,
        Outcome.SUPERSEDED,
        Outcome.REJECTED,
        Outcome.FAILED,
    }
)


@dataclass(frozen=True)
class Result:
    name: str
    outcome: Outcome
    sha256: str = ""  # of what the destination holds (for most kinds, the upload's bytes)
    reason: str = ""

    @property
    def changed_destination(self) -> bool:
        return self.outcome in CHANGES


class Content(NamedTuple):
    """What a valid upload publishes: its own bytes, or for a setup-token the credential file.
    (A tuple: made on every upload, and cheaper than a frozen dataclass.)"""

    data: bytes
    sha256: str
    first_seen: tuple[str, int] | None = None  # a setup-token's (upload hash, ms): its expiry's start


def content_of(route: Route, upload: Upload, last: Entry | None) -> Content:
    if route.kind != "claude-setup-token":
        return Content(upload.data, upload.sha256)
    token = parse_setup_token(upload.data.decode())
    if last is not None and last.first_seen is not None and last.first_seen[0] == upload.sha256:
        first_seen_ms = last.first_seen[1]  # the same token again: the same file, "unchanged"
    else:
        first_seen_ms = first_sight(upload.written_ns // 1_000_000, now_ms())
    data = render_credentials(token, first_seen_ms)
    validate("claude-oauth", data, max_bytes=len(data), now_ms=now_ms())  # what is written is what Claude takes
    return Content(data, hashlib.sha256(data).hexdigest(), (upload.sha256, first_seen_ms))


def entry_for(route: Route, content: Content) -> Entry:
    return Entry(content.sha256, len(content.data), str(route.destination), now_ms(), first_seen=content.first_seen)


def first_sight(written_ms: int, now: int) -> int:
    """The uploader chooses the file's time: a time in the future (or before 1970) would push
    the token's expiry out, so it counts only when it lies in the past."""
    return written_ms if 0 < written_ms <= now else now


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        routes: RouteTable,
        ledger: Ledger,
        *,
        dry_run: bool = False,
        tally: Tally | None = None,
    ) -> None:
        self.settings = settings
        self.routes = routes
        self.ledger = ledger
        self.dry_run = dry_run
        self.tally = tally or Tally()
        self.source = SourceFolder(settings.source, settings.source_owner)
        # Each upload becomes a Swarm secret on a manager: one SwarmKit would refuse is rejected at
        # the intake, with that reason, so no receipt says published for what cannot be rolled out.
        self.source.cap = SWARM_SECRET_CAP if settings.swarm_service is not None else None
        self.consumer = ConsumerView(settings, ledger, self.tally)
        self.receipts = Receipts(settings.receipts_dir) if settings.receipts_dir and not dry_run else None
        self._last_logged: dict[str, tuple[Outcome, str]] = {}
        self._decided: dict[str, str] = {}  # route → the content hash last decided on (see _stage)
        self._ignored: set[str] = set(routes.upload_folders())  # folders are not uploads: never logged
        # Told (route, content hash) the moment a destination is in place, before the ledger,
        # the previous-generation copy and the log line: the notifier's clock starts there.
        self.on_published: Callable[[str, str], None] | None = None

    def process(self, name: str, *, complete: bool = True) -> Result:
        """`complete=False`: read before the writer closed it; an invalid file then is most likely
        still arriving, so it is not reported as rejected (its close brings it back)."""
        route = self.routes.match(name)
        if route is None:
            self._note_ignored(name)
            return Result(name, Outcome.IGNORED)
        self.source.hold()  # the source path is walked once for the upload and its siblings
        try:
            return self._process_route(route, name, complete)
        finally:
            self.source.release()

    def _process_route(self, route: Route, name: str, complete: bool) -> Result:
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
                trust_uploader=self.settings.trust_uploader,
            )
        except Rejection as rejection:
            if not complete:
                return self._report(route, Outcome.INCOMPLETE, upload.sha256, rejection.reason, level="DEBUG")
            return self._reject(route, upload.sha256, rejection)
        content = content_of(route, upload, self.ledger.last(route.upload))
        try:
            # One walk to the destination's folder for the checks, the decision and the write
            # (opened and closed here, not through `destination_folder`: a generator costs on
            # every upload).
            try:
                folder_fd = open_destination_folder(route.folder)
            except PublishError:
                # A superseded upload needs no destination: that is what its uploader is told.
                if (superseded := self._superseded_by_newer(route, upload)) is not None:
                    return superseded
                raise
            try:
                decided = self._decide_in(folder_fd, route, upload, content)
            finally:
                os.close(folder_fd)
        except PublishError as error:
            failed = partial(self.tally.publish_failed, route.upload)
            return self._report(
                route, Outcome.FAILED, upload.sha256, error.reason, level="ERROR", count=failed, content=content
            )
        if isinstance(decided, Result):
            return decided
        action, current = decided
        outcome = OUTCOME_OF_ACTION[action]
        if outcome is Outcome.KEPT_CONSUMER:
            reason = "the consumer rewrote the destination since this upload was published; upload anew to replace it"
            result = self._report(route, outcome, upload.sha256, reason, level="WARNING", content=content)
        else:
            if outcome in (Outcome.PUBLISHED, Outcome.REPAIRED) and not self.dry_run:
                self.tally.published(route.upload, outcome.value, (time.time_ns() - upload.changed_ns) / 1e9)
            self._log_warnings(route, upload, summary)
            result = self._report(
                route, outcome, upload.sha256, "", level="INFO", size=len(upload.data), content=content
            )
        if not self.dry_run:
            held = current if outcome is Outcome.KEPT_CONSUMER else content.data
            self.consumer.assess(route, held or b"")
        return result

    def _decide_in(
        self, folder_fd: int, route: Route, upload: Upload, content: Content
    ) -> Result | tuple[Action, bytes | None]:
        staged = self._stage(folder_fd, route, content)
        try:
            decided = self._decide_and_write(folder_fd, route, upload, content, staged)
        finally:
            if staged is not None:
                staged.discard()  # nothing left to do once committed
        self._decided[route.upload] = content.sha256
        return decided

    def _stage(self, folder_fd: int, route: Route, content: Content) -> StagedFile | None:
        """Bytes seen for the first time are nearly always published: written (and their
        writeback started) before the checks that decide it, the disk works meanwhile. Bytes
        already decided on here, or that the ledger says were published, are not: a rescan
        writes nothing. A failure here is said by the write the decision asks for, if any."""
        last = self.ledger.last(route.upload)
        if (
            self.dry_run
            or self._decided.get(route.upload) == content.sha256
            or (last is not None and last.sha256 == content.sha256)
        ):
            return None
        try:
            return StagedFile(folder_fd, route.destination, content.data, uid=route.uid, gid=route.gid, mode=route.mode)
        except PublishError:
            return None

    def _decide_and_write(
        self, folder_fd: int, route: Route, upload: Upload, content: Content, staged: StagedFile | None
    ) -> Result | tuple[Action, bytes | None]:
        """A superseded upload's Result, or the action taken and what the destination held."""
        if (superseded := self._superseded_by_newer(route, upload)) is not None:
            return superseded
        current = read_current_in(folder_fd, route.destination, self.settings.max_bytes)
        action = self._decide(route, content, current)
        later = self._published_later_by(route, current) if action is Action.KEEP_CONSUMER else None
        if later is not None:
            reason = f"the file holds what {later.upload} published since; upload anew to replace it"
            return self._report(route, Outcome.SUPERSEDED, upload.sha256, reason, level="INFO", content=content)
        if action in (Action.PUBLISH, Action.REPAIR) and not self.dry_run:
            self._publish(folder_fd, route, content, current, staged)
        elif action is Action.UNCHANGED and not self.dry_run:
            self._remember(route, content)
            self._repair_owner_and_mode(folder_fd, route, content)
        return action, current

    def _superseded_by_newer(self, route: Route, upload: Upload) -> Result | None:
        newer = self._newer_upload_for_the_same_file(route, upload)
        if newer is None:
            return None
        reason = f"the newer upload {newer.upload} publishes to the same file; remove this one"
        return self._report(route, Outcome.SUPERSEDED, upload.sha256, reason, level="INFO")

    def _newer_upload_for_the_same_file(self, route: Route, upload: Upload) -> Route | None:
        """A login and a setup-token both become `.credentials.json`: the one written last wins,
        so a rescan never flips the file between them."""
        for other in self.routes.sharing_destination(route):
            changed = self.source.changed_ns(other.upload)
            if changed is not None and changed > upload.changed_ns:
                return other
        return None

    def _published_later_by(self, route: Route, current: bytes | None) -> Route | None:
        """The route sharing this destination whose publication it holds, if any: not the
        consumer's rewrite, but another upload's (a setup-token after a login, say)."""
        held = None if current is None else hashlib.sha256(current).hexdigest()
        for other in self.routes.sharing_destination(route):
            entry = self.ledger.last(other.upload)
            if entry is not None and entry.sha256 == held:
                return other
        return None

    def _reject(self, route: Route, sha256: str, rejection: Rejection) -> Result:
        counted = partial(self.tally.rejected, route.upload, rejection.code)
        return self._report(
            route, Outcome.REJECTED, sha256, rejection.reason, level="WARNING", count=counted, code=rejection.code
        )

    def _decide(self, route: Route, content: Content, current: bytes | None) -> Action:
        last = self.ledger.last(route.upload)
        return decide(
            content.sha256,
            None if last is None else last.sha256,
            None if current is None else hashlib.sha256(current).hexdigest(),
            lambda: current is not None and is_sound(route.kind, current, max_bytes=self.settings.max_bytes),
        )

    def _remember(self, route: Route, content: Content) -> None:
        """The destination holds this upload but the ledger does not say so (a crash came
        between publishing and writing the ledger): record it, or a later consumer refresh
        would look like something an old upload must repair."""
        last = self.ledger.last(route.upload)
        if last is None or last.sha256 != content.sha256:
            self.ledger.record(route.upload, entry_for(route, content))

    def _repair_owner_and_mode(self, folder_fd: int, route: Route, content: Content) -> None:
        """The bytes are right, but the consumer owns the file and may have chmod-ed it (or an
        operator changed CREDSYNC_MODE): publish the same bytes again with the right ones. A
        fresh copy, not fchmod, which on another owner's file would need CAP_FOWNER."""
        info = stat_destination_in(folder_fd, route.destination)
        if info is None or (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (route.uid, route.gid, route.mode):
            return
        write_atomically_in(folder_fd, route.destination, content.data, uid=route.uid, gid=route.gid, mode=route.mode)
        was = f"{info.st_uid}:{info.st_gid} {stat.S_IMODE(info.st_mode):04o}"
        now = f"{route.uid}:{route.gid} {route.mode:04o}"
        logger.bind(route=route.upload, was=was, now=now).info("repaired owner and mode")

    def _publish(
        self, folder_fd: int, route: Route, content: Content, current: bytes | None, staged: StagedFile | None
    ) -> None:
        if staged is None:
            staged = StagedFile(
                folder_fd, route.destination, content.data, uid=route.uid, gid=route.gid, mode=route.mode
            )
        staged.commit()
        if self.on_published is not None:
            self.on_published(route.upload, content.sha256)
        self.ledger.record(route.upload, entry_for(route, content))
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
        content: Content | None = None,
        code: str = "",
    ) -> Result:
        """One line per decision; a decision repeated for the same bytes drops to DEBUG. `count`
        runs for a new decision, before its line: whoever reads the line finds it counted.
        `sha256` is the upload's; `content` what it publishes, where that differs."""
        key = (outcome, sha256 + reason)
        repeated = self._last_logged.get(route.upload) == key
        self._last_logged[route.upload] = key
        if count is not None and not repeated:
            count()
        fields: dict[str, object] = {"route": route.upload}
        if sha256:
            fields["sha"] = short_hash(sha256)
        if content is not None and content.sha256 != sha256:
            fields["published_sha"] = short_hash(content.sha256)
        if size is not None:
            fields["bytes"] = size
        if outcome in CHANGES:
            fields["dest"] = str(route.destination)
        if reason:
            fields["reason"] = reason
        if self.dry_run:
            fields["dry_run"] = True
        said = f"would be {outcome.value}" if self.dry_run and outcome in CHANGES else outcome.value
        logger.bind(**fields).log("DEBUG" if repeated else level, said)
        if outcome in RECEIPTED:
            self._receipt(route, outcome, sha256, content, reason, code or ("publish-failed" if reason else ""))
        return Result(route.upload, outcome, sha256 if content is None else content.sha256, reason)

    def _receipt(
        self, route: Route, outcome: Outcome, sha256: str, content: Content | None, reason: str, code: str
    ) -> None:
        """Every final decision, repeated ones too: `credsync push` waits for the receipt of
        the bytes it sent, even when they change nothing."""
        owner = self.uploader()
        if self.receipts is None or owner is None:
            return
        self.receipts.decided(
            route.upload,
            outcome.value,
            upload_sha256=sha256,
            published_sha256="" if content is None else content.sha256,
            reason_code=code if outcome in (Outcome.REJECTED, Outcome.FAILED) else "",
            reason=reason,
            notifies=self.settings.notifies,
            owner=owner,
        )

    def notification_outcome(self, batch: Mapping[str, str], outcome: str) -> None:
        """The notifier's final word on these routes (route → published hash), for their
        receipts (its own thread)."""
        owner = self.uploader()
        if self.receipts is not None and owner is not None:
            self.receipts.notified(batch, outcome, owner)

    def uploader(self) -> tuple[int, int] | None:
        """The source folder's owner and group: who receipts belong to."""
        if self.source.owner is None or self.source.group is None:
            return None
        return self.source.owner, self.source.group

    def look_for_near_misses(self) -> None:
        """At a rescan: names in the source and its upload folders that no route takes but one
        probably should (said once each, with the name it probably meant)."""
        try:
            source_fd = self.source.open()
        except SourceUnavailable:
            return
        try:
            for folder in ("", *sorted(self.routes.upload_folders())):
                with contextlib.suppress(OSError):
                    folder_fd = open_subfolders(source_fd, PurePosixPath(folder))
                    try:
                        names = os.listdir(folder_fd)
                    finally:
                        os.close(folder_fd)
                    for name in names:
                        self._note_ignored(f"{folder}/{name}" if folder else name)
        finally:
            os.close(source_fd)

    def _note_ignored(self, name: str) -> None:
        """Said once per name while it is among the last IGNORED_MEMORY said, within its level's
        line budget. How many a budget held back is said once it allows: here, at the next name
        seen (the next rescan's look at the latest)."""
        for level, budget in self._ignored_budgets.items():
            if held := budget.held_back():
                logger.bind(count=held).log(level, "more ignored names not shown")
        if is_rsync_temp(name) or name in self._ignored or self.routes.match(name) is not None:
            return
        if not self._ignored_said.add(name):
            return
        hint = near_miss(name, (route.upload for route in self.routes))
        if self.receipts is not None and (owner := self.uploader()) is not None:
            # A misnamed upload's receipt (once per name, a bounded number), or `credsync init`'s probe answered.
            self.receipts.ignored(name, hint, owner)
        if hint is None:
            if self._ignored_budgets["DEBUG"].admit():
                logger.bind(upload=printable(name)).debug("ignored: no route for this name")
        elif self._ignored_budgets["INFO"].admit():  # someone meant this to be published: say so where they look
            logger.bind(upload=printable(name), hint=hint).info("ignored: no route for this name")

    @cached_property
    def _ignored_said(self) -> RecentNames:
        """The ignored names said lately (made at first use, like the budgets)."""
        return RecentNames(IGNORED_MEMORY)

    @cached_property
    def _ignored_budgets(self) -> dict[str, LineBudget]:
        return {level: LineBudget(IGNORED_BURST, IGNORED_LINES_PER_S) for level in ("DEBUG", "INFO")}
