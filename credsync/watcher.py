"""The watcher: watchdog's inotify observer on the source folder, turned into two calls —
`ready(name)` when an upload may be complete and `writing(name)` while it is still being
written — plus `lost(reason)` when events may have been missed and a rescan is due. It also
watches the destination folders, calling `rewritten(name)` when a published file changes
there (the consumer refreshing its credentials, or credsync's own publication)."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loguru import logger
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from credsync.publisher import TEMP_PREFIX

WATCHED_EVENTS: list[type[FileSystemEvent]] = [
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileModifiedEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
]


@dataclass(frozen=True)
class Callbacks:
    ready: Callable[[str], None]
    writing: Callable[[str], None]
    lost: Callable[[str], None]
    rewritten: Callable[[str], None]


class UploadEventHandler(FileSystemEventHandler):
    def __init__(self, source: Path, callbacks: Callbacks) -> None:
        self.source = os.fsdecode(source)
        self.callbacks = callbacks

    def on_any_event(self, event: FileSystemEvent) -> None:
        path = os.fsdecode(event.dest_path or event.src_path)
        if isinstance(event, DirDeletedEvent | DirMovedEvent) and os.fsdecode(event.src_path) == self.source:
            self.callbacks.lost("the source folder was replaced")
            return
        if isinstance(event, DirDeletedEvent):
            return
        name = relative_name(self.source, path)
        if name is None:
            return
        if isinstance(event, FileModifiedEvent) or (isinstance(event, FileCreatedEvent) and is_regular_file(path)):
            # Being written: the close-after-write that follows says when it is complete.
            self.callbacks.writing(name)
        else:
            self.callbacks.ready(name)


class SourceReplacedHandler(FileSystemEventHandler):
    """On the source's parent folder: the source itself created, deleted or moved (a watch on a
    folder cannot see it being replaced)."""

    def __init__(self, source: str, lost: Callable[[str], None]) -> None:
        self.source = source
        self.lost = lost

    def on_any_event(self, event: FileSystemEvent) -> None:
        if self.source in (os.fsdecode(event.src_path), os.fsdecode(event.dest_path)):
            self.lost("the source folder was replaced")


class DestinationEventHandler(FileSystemEventHandler):
    """Close-after-write or rename onto a published file's path, by anyone."""

    def __init__(self, uploads_by_destination: dict[str, str], rewritten: Callable[[str], None]) -> None:
        self.uploads_by_destination = uploads_by_destination
        self.rewritten = rewritten

    def on_any_event(self, event: FileSystemEvent) -> None:
        if os.path.basename(os.fsdecode(event.src_path)).startswith(TEMP_PREFIX):
            return  # credsync's own publication renamed into place: nothing to read back
        upload = self.uploads_by_destination.get(os.fsdecode(event.dest_path or event.src_path))
        if upload is not None:
            self.rewritten(upload)


def relative_name(source: str, path: str) -> str | None:
    """The upload name (POSIX, relative to the source), or None for the source itself or outside."""
    relative = os.path.relpath(path, source)
    if relative == "." or relative.startswith(".." + os.sep) or relative == "..":
        return None
    return relative.replace(os.sep, "/")


def is_regular_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


class WatchdogTrouble(logging.Handler):
    """watchdog reports a queue overflow or a broken watch only through `logging`: any warning
    from it means events may be lost, so rescan."""

    def __init__(self, lost: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self.lost = lost

    def emit(self, record: logging.LogRecord) -> None:
        self.lost(f"watchdog: {record.getMessage()}")


class Watcher:
    def __init__(self, source: Path, destinations: dict[Path, str], callbacks: Callbacks) -> None:
        """`destinations`: published file path → its upload name."""
        self.source = source
        self.destinations = {os.fspath(path): upload for path, upload in destinations.items()}
        self.callbacks = callbacks
        self._observer: BaseObserver | None = None
        self._watched_inode: tuple[int, int] | None = None
        self._trouble = WatchdogTrouble(callbacks.lost)

    def start(self) -> None:
        """Raises OSError when the source cannot be watched (missing, unreadable)."""
        info = os.stat(self.source)
        observer = Observer(timeout=0.2)
        observer.schedule(
            UploadEventHandler(self.source, self.callbacks),
            os.fspath(self.source),
            recursive=True,
            event_filter=WATCHED_EVENTS,
        )
        with contextlib.suppress(OSError):  # no parent to watch (/): mount changes and rescans cover it
            observer.schedule(
                SourceReplacedHandler(os.fspath(self.source), self.callbacks.lost),
                os.path.dirname(os.fspath(self.source)),
                recursive=False,
                event_filter=[DirCreatedEvent, DirDeletedEvent, DirMovedEvent],
            )
        self._watch_destinations(observer)
        logging.getLogger("watchdog").addHandler(self._trouble)
        observer.start()
        self._observer = observer
        self._watched_inode = (info.st_dev, info.st_ino)

    def _watch_destinations(self, observer: BaseObserver) -> None:
        handler = DestinationEventHandler(self.destinations, self.callbacks.rewritten)
        for folder in sorted({os.path.dirname(path) for path in self.destinations}):
            try:
                observer.schedule(handler, folder, recursive=False, event_filter=[FileClosedEvent, FileMovedEvent])
            except OSError as error:
                # Consumer-side changes then show at the next rescan instead; publishing is unaffected.
                logger.bind(folder=folder).warning(f"cannot watch a destination folder: {error.strerror}")

    def healthy(self) -> bool:
        """Still watching the folder that is at the source path now (not a deleted one). watchdog
        ends a watch's emitter when its folder goes, while the observer itself lives on."""
        if self._observer is None or not self._observer.is_alive():
            return False
        if not all(emitter.is_alive() for emitter in self._observer.emitters):
            return False
        try:
            info = os.stat(self.source)
        except OSError:
            return False
        return (info.st_dev, info.st_ino) == self._watched_inode

    def stop(self) -> None:
        logging.getLogger("watchdog").removeHandler(self._trouble)
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=1.0)
            self._observer = None
