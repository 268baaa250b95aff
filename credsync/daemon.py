"""`credsync watch`: the main loop. Signal handlers and the watcher thread only set flags and
wake the loop through a self-pipe; all publishing happens here, one upload at a time."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Protocol

from loguru import logger

from credsync.errors import SourceUnavailable, printable
from credsync.hashes import short_hash
from credsync.liveness import Liveness
from credsync.pipeline import Outcome, Pipeline
from credsync.schedule import Coalesced, Schedule
from credsync.watcher import Callbacks, Watcher


class Announcer(Protocol):
    """Who is told of each publication: the notifier, or on a Swarm manager the roller."""

    def changed(self, route: str, sha256: str) -> None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


WATCH_RETRY_S = 5.0
WRITE_BACKSTOP_S = 1.0  # read an upload that was written to but not closed (hard links, held-open files)
GIL_SWITCH_S = 0.0005  # the notifier thread waits at most this for the loop's Python work after a publish
UNSETTLED_RECHECK_S = 0.05  # with settle 0, an upload still being written is not re-read in a busy loop
# A folder renamed in a loop, or an inotify queue overflowing again and again, asks for a rescan
# at every event: at most one a second, however many are asked for.
RESCAN_MIN_INTERVAL_S = 1.0


class Wakeup:
    """A self-pipe: writing a byte wakes `wait`; signals write to it via set_wakeup_fd. It also
    wakes when the mount table changes (the kernel flags /proc/self/mountinfo), so a bind mount
    replaced over the source is noticed at once, without polling."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.mounts = open("/proc/self/mountinfo", "rb", buffering=0)  # noqa: SIM115 - kept open on purpose
        self.mounts.read()  # the kernel reports changes after the last read
        self.mounts_changed = False

    def poke(self) -> None:
        with contextlib.suppress(BlockingIOError):  # already full: the loop wakes anyway
            os.write(self.write_fd, b"\0")

    def wait(self, timeout: float, also: int | None = None) -> bool:
        """Until a poke, a signal, a mount change, `timeout` seconds, or `also` readable (the
        watcher's descriptor); returns whether `also` is readable."""
        watched = [self.read_fd] if also is None else [self.read_fd, also]
        readable, _, exceptional = select.select(watched, [], [self.mounts], max(0.0, timeout))
        if exceptional:  # re-read, or the change is reported again at once
            self.mounts.seek(0)
            self.mounts.read()
            self.mounts_changed = True
        if self.read_fd in readable:
            try:
                while os.read(self.read_fd, 4096):
                    pass
            except BlockingIOError:
                pass
        return also is not None and also in readable

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)
        self.mounts.close()


class FolderWatcher(Protocol):
    """What the loop needs of a watcher; it reports through the Callbacks it was made with,
    from `dispatch` (called by the loop when `fileno` is readable) or from any other thread."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def healthy(self) -> bool: ...

    def fileno(self) -> int | None: ...

    def dispatch(self) -> None: ...


def watchdog_watcher(pipeline: Pipeline) -> Callable[[Callbacks], FolderWatcher]:
    destinations = {route.destination: route.upload for route in pipeline.routes}
    return lambda callbacks: Watcher(pipeline.source, pipeline.routes.upload_folders(), destinations, callbacks)


class Daemon:
    def __init__(
        self,
        pipeline: Pipeline,
        notifier: Announcer | None,
        liveness: Liveness,
        *,
        watcher: Callable[[Callbacks], FolderWatcher] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`watcher` makes the folder watcher from the loop's callbacks (watchdog by default);
        `clock` is monotonic seconds. Both are swapped in tests of the loop in-process."""
        self.pipeline = pipeline
        self.notifier = notifier
        self.liveness = liveness
        if notifier is not None:
            pipeline.on_published = notifier.changed
        self.settings = pipeline.settings
        self.clock = clock
        self.schedule = Schedule(self.settings.settle_ms / 1000, clock)
        self.wakeup = Wakeup()
        callbacks = Callbacks(self._ready, self._writing, self._lost, self._rewritten)
        self.watcher = (watcher or watchdog_watcher(pipeline))(callbacks)
        self.consumer_checks = Schedule(self.settings.settle_ms / 1000, clock)
        self._stop_requested = False
        self._loop_thread: int | None = None  # the thread running `serve`
        self._rescan_reason: str | None = None  # asked for by events, signals or the look; taken by the loop
        self._rescans = Coalesced(RESCAN_MIN_INTERVAL_S, clock)
        self._watching = False
        self._failing: set[str] = set()  # uploads whose publish failed, until one succeeds
        self._failing_said = 0  # as the health file last said
        self._watch_problem: str | None = None
        # Uploads whose writer has closed them (or renamed them into place) since they were last
        # read. Anything else is read only by the backstop, and may still be half written.
        self._closed: set[str] = set()

    # Called from the watcher's dispatch on the loop's own thread, or from another thread (a
    # watcher of its own): set state, and wake the loop if it may be waiting.
    def _ready(self, name: str) -> None:
        self._closed.add(name)
        self.schedule.arm(name)
        self._wake()

    def _writing(self, name: str) -> None:
        self._closed.discard(name)  # written again since its close: not complete until the next one
        self.schedule.expect(name, WRITE_BACKSTOP_S)
        self._wake()

    def _rewritten(self, name: str) -> None:
        self.consumer_checks.arm(name)
        self._wake()

    def _lost(self, reason: str) -> None:
        self._rescan_reason = self._rescan_reason or reason
        self._wake()

    def _wake(self) -> None:
        if threading.get_ident() != self._loop_thread:  # the loop itself reads the state next
            self.wakeup.poke()

    def _on_stop_signal(self, _signum: int, _frame: FrameType | None) -> None:
        self._stop_requested = True

    def _on_hangup(self, signum: int, _frame: FrameType | None) -> None:
        self._rescan_reason = signal.Signals(signum).name

    def run(self) -> int:
        """The process's main loop: signals stop it (TERM, INT) or ask for a rescan (HUP)."""
        signal.set_wakeup_fd(self.wakeup.write_fd, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hangup)
        try:
            return self.serve()
        finally:
            signal.set_wakeup_fd(-1)

    def stop(self) -> None:
        """From another thread: end `serve` after the upload at hand."""
        self._stop_requested = True
        self.wakeup.poke()

    def serve(self) -> int:
        """The loop, until `stop` (or a signal, under `run`); any thread may run it."""
        self._loop_thread = threading.get_ident()
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(GIL_SWITCH_S)
        logger.bind(source=str(self.settings.source), routes=len(self.pipeline.routes)).info("watching")
        if self.notifier is None:
            logger.bind(notify=self.settings.notify).info("no notify target: publishing only")
        else:
            self.notifier.start()
        try:
            self._loop()
        finally:
            self.pipeline.ledger.flush()
            self.liveness.stopping()
            self.watcher.stop()
            if self.notifier is not None:
                self.notifier.stop()
            self.wakeup.close()
            sys.setswitchinterval(switch_interval)
        logger.info("stopped")
        return 0

    def _loop(self) -> None:
        self._ensure_watching()
        self.reconcile("start-up")
        self.pipeline.ledger.flush()
        self._watching = self.watcher.healthy()
        self._failing_said = len(self._failing)
        self.liveness.ready(watching=self._watching, failing=self._failing_said)
        logger.bind(watching=self._watching).info("ready")
        next_reconcile = self.clock() + self._rescan_interval(self._watching)
        next_beat = self.clock() + self.liveness.interval_s
        while not self._stop_requested:
            dues = [
                due
                for due in (self.schedule.seconds_until_next(), self.consumer_checks.seconds_until_next())
                if due is not None
            ]
            rescan_due = self._rescans.seconds_until_due()
            rescan_at = next_reconcile if rescan_due is None else self.clock() + rescan_due
            wake_at = min(rescan_at, next_beat, self.clock() + min(dues, default=3600.0))
            # While a rescan is due (held back in a storm), events are left queued: it reads every
            # route again, so they could add nothing, and a flood of them would cost the CPU the
            # uploads need. The kernel cuts one short with an overflow, which asks for that rescan.
            listening = not self._rescans.pending
            if self.wakeup.wait(wake_at - self.clock(), self.watcher.fileno() if listening else None):
                self.watcher.dispatch()  # on this thread: what it reports is taken below, no poke needed
            if self._stop_requested:
                break
            # Uploads first, the latency path: each is read through a fresh walk of the source
            # path, so a replaced folder is never read through a stale descriptor.
            for name in self.schedule.take_due():
                self.handle(name)
            for name in self.consumer_checks.take_due():
                self._check_consumer_side(name)
            if self.wakeup.mounts_changed:  # a bind mount may have replaced the source: look again
                self.wakeup.mounts_changed = False
                self._rescan_reason = self._rescan_reason or "the mount table changed"
            watching = self._watching
            if listening and self._rescan_reason is None:
                self._look(watching)
            if self.clock() >= next_reconcile:
                self._rescans.request("periodic")
            asked, self._rescan_reason = self._rescan_reason, None
            if asked is not None:
                self._rescans.request(asked)
            reason = self._rescans.take()
            if reason is not None:
                watching = self._ensure_watching()
                if watching:
                    self.reconcile(reason)
                next_reconcile = self.clock() + self._rescan_interval(watching)
            self.pipeline.ledger.flush()
            if self.clock() >= next_beat or watching != self._watching or len(self._failing) != self._failing_said:
                self._watching, self._failing_said = watching, len(self._failing)
                self.liveness.beat(watching=self._watching, failing=self._failing_said)
                next_beat = self.clock() + self.liveness.interval_s

    def _look(self, watching: bool) -> None:
        """Once per wake-up, unless a rescan is already asked for (it looks again itself): each look
        walks the source path from / and its route folders. Events first: they name what happened
        (the folder replaced), where the look can only tell that it is no longer the one watched.
        What the look saw change was queued as an event when it changed, so events read after a
        failed look name it too (the change may have come between the first read and the look)."""
        if self.watcher.fileno() is not None:
            self.watcher.dispatch()
        if self._rescan_reason is not None or self.watcher.healthy() or not watching:
            return
        if self.watcher.fileno() is not None:
            self.watcher.dispatch()
        self._rescan_reason = self._rescan_reason or "the source folder is no longer watched"

    def _check_consumer_side(self, name: str) -> None:
        route = self.pipeline.routes.match(name)
        if route is None:
            return
        try:
            self.pipeline.consumer.rewritten([route, *self.pipeline.routes.sharing_destination(route)])
        except Exception as error:  # the consumer wrote it: whatever it is, the daemon goes on
            logger.bind(route=name).error(f"cannot assess the consumer's version: {type(error).__name__}")

    def _rescan_interval(self, watching: bool) -> float:
        return self.settings.reconcile_s if watching else WATCH_RETRY_S

    def _ensure_watching(self) -> bool:
        """(Re)start the watcher when it died or the source folder was replaced."""
        if self.watcher.healthy():
            return True
        self.watcher.stop()
        try:
            self.watcher.start()
        except (SourceUnavailable, OSError) as error:
            self.watcher.stop()
            reason = error.reason if isinstance(error, SourceUnavailable) else error.strerror
            if reason != self._watch_problem:  # said once, not at every retry
                logger.bind(source=str(self.settings.source), reason=reason).error(
                    f"cannot watch the source folder; retrying every {WATCH_RETRY_S:g}s"
                )
            self._watch_problem = reason
            return False
        if self._watch_problem is not None:
            logger.bind(source=str(self.settings.source)).info("watching the source folder again")
            self._watch_problem = None
        return True

    def _take_closed_mark(self, name: str) -> bool:
        """One atomic step: a test then a discard would lose a close the watcher thread adds
        in between (the upload then waited for the periodic rescan to be called rejected)."""
        try:
            self._closed.remove(name)
        except KeyError:
            return False
        return True

    def reconcile(self, reason: str) -> None:
        logger.bind(reason=printable(reason)).debug("reconcile")
        for route in self.pipeline.routes:
            self.handle(route.upload, complete=True)
        self.pipeline.look_for_near_misses()

    def handle(self, name: str, *, complete: bool = False) -> None:
        if self._stop_requested:
            return
        complete = self._take_closed_mark(name) or complete
        try:
            result = self.pipeline.process(name, complete=complete)
        except Exception as error:  # one upload's surprise (EMFILE, a bug) must not end the daemon
            # The type and errno text only: an unexpected error's message may quote the upload.
            detail = f": {error.strerror}" if isinstance(error, OSError) and error.strerror else ""
            logger.bind(route=printable(name)).error(
                f"cannot process the upload: {type(error).__name__}{detail}; retrying"
            )
            self._failing.add(name)
            self.schedule.retry(name)
            return
        if result.outcome is Outcome.UNSETTLED:
            if complete:  # a rescan's view (a restarted watcher may have missed the close): keep it
                self._closed.add(name)
            self.schedule.arm(name, UNSETTLED_RECHECK_S)
        elif result.outcome is Outcome.FAILED:
            self._failing.add(name)
            self.schedule.retry(name)
        else:
            self._failing.discard(name)
            self.schedule.succeeded(name)
        if result.changed_destination:
            self.liveness.status(f"{result.outcome.value} {result.name} {short_hash(result.sha256)}")
