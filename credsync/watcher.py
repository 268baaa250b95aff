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
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

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

from credsync.errors import SourceUnavailable
from credsync.intake import SourceFolder
from credsync.safe_paths import describe_folder_error, open_folder, open_subfolders

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
    """On the source and each upload folder a route names (`aws`), each watched on its own."""

    def __init__(self, source: Path, upload_folders: set[str], callbacks: Callbacks) -> None:
        self.source = os.fsdecode(source)
        self.upload_folders = upload_folders
        self.callbacks = callbacks

    def on_any_event(self, event: FileSystemEvent) -> None:
        path = os.fsdecode(event.dest_path or event.src_path)
        if isinstance(event, DirDeletedEvent | DirMovedEvent) and os.fsdecode(event.src_path) == self.source:
            self.callbacks.lost("the source folder was replaced")
            return
        if (
            event.is_directory
            and {
                relative_name(self.source, os.fsdecode(event.src_path)),
                relative_name(self.source, os.fsdecode(event.dest_path)),
            }
            & self.upload_folders
        ):
            self.callbacks.lost("an upload folder was created, moved or deleted")
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
        # credsync's own renames come here too (the consumer can use the same temp names, so they
        # are not skipped by name): reading them back finds the ledger's hash and stops there.
        upload = self.uploads_by_destination.get(os.fsdecode(event.dest_path or event.src_path))
        if upload is not None:
            self.rewritten(upload)


def relative_name(source: str, path: str) -> str | None:
    """The upload name (POSIX, relative to the source), or None for the source itself or outside."""
    if not path:
        return None
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
    """Watches only the folders routes name, each on its own (never recursively: an uploader's
    3,000 folders or a 300-deep chain cost nothing). Each is opened without following links
    first, and `healthy` turns false when any of them is no longer the folder being watched."""

    def __init__(
        self, source: SourceFolder, upload_folders: set[str], destinations: dict[Path, str], callbacks: Callbacks
    ) -> None:
        """`destinations`: published file path → its upload name."""
        self.source = source
        self.upload_folders = upload_folders
        self.destinations = {os.fspath(path): upload for path, upload in destinations.items()}
        self.callbacks = callbacks
        self._observer: BaseObserver | None = None
        self._watched: dict[str, FolderIdentity] | None = None
        self._trouble = WatchdogTrouble(callbacks.lost)

    def start(self) -> None:
        """Raises SourceUnavailable when the source cannot be watched (missing, a link, unreadable)."""
        identities = self._identities()
        observer = Observer(timeout=0.2)
        handler = UploadEventHandler(self.source.path, self.upload_folders, self.callbacks)
        for folder, identity in sorted(identities.items()):
            if identity is not None:
                observer.schedule(
                    handler, os.fspath(self.source.path / folder), recursive=False, event_filter=WATCHED_EVENTS
                )
        with contextlib.suppress(OSError):  # no parent to watch (/): mount changes and rescans cover it
            observer.schedule(
                SourceReplacedHandler(os.fspath(self.source.path), self.callbacks.lost),
                os.path.dirname(os.fspath(self.source.path)),
                recursive=False,
                event_filter=[DirCreatedEvent, DirDeletedEvent, DirMovedEvent],
            )
        self._watch_destinations(observer)
        logging.getLogger("watchdog").addHandler(self._trouble)
        # watchdog warns through `warnings` with every watched path in the text: never let that
        # bypass the log formatter (the watches are few and flat now, so there is nothing to say).
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="watchdog")
        observer.start()
        self._observer = observer
        self._watched = identities

    def _identities(self) -> dict[str, FolderIdentity]:
        """The source ('.') and each upload folder: (device, inode), or None where a folder is
        missing, a symlink or unreadable (it is then not watched; intake says why at a rescan)."""
        source_fd = self.source.open()
        try:
            identities: dict[str, FolderIdentity] = {".": identity_of(source_fd)}
            for folder in self.upload_folders:
                try:
                    folder_fd = open_subfolders(source_fd, PurePosixPath(folder))
                except OSError:
                    identities[folder] = None
                    continue
                identities[folder] = identity_of(folder_fd)
                os.close(folder_fd)
            return identities
        finally:
            os.close(source_fd)

    def _watch_destinations(self, observer: BaseObserver) -> None:
        handler = DestinationEventHandler(self.destinations, self.callbacks.rewritten)
        for folder in sorted({os.path.dirname(path) for path in self.destinations}):
            try:
                os.close(open_folder(Path(folder)))  # inotify would follow a symlinked folder
                observer.schedule(handler, folder, recursive=False, event_filter=[FileClosedEvent, FileMovedEvent])
            except OSError as error:
                # Consumer-side changes then show at the next rescan instead; publishing is unaffected.
                logger.bind(folder=folder).warning(f"cannot watch a destination folder: {describe_folder_error(error)}")

    def healthy(self) -> bool:
        """Still watching the folders that are at those paths now (not deleted or swapped ones).
        watchdog ends a watch's emitter when its folder goes, while the observer itself lives on."""
        if self._observer is None or not self._observer.is_alive():
            return False
        if not all(emitter.is_alive() for emitter in self._observer.emitters):
            return False
        try:
            return self._identities() == self._watched
        except SourceUnavailable:
            return False

    def stop(self) -> None:
        logging.getLogger("watchdog").removeHandler(self._trouble)
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=1.0)
            self._observer = None


FolderIdentity = tuple[int, int] | None


def identity_of(folder_fd: int) -> tuple[int, int]:
    info = os.fstat(folder_fd)
    return info.st_dev, info.st_ino
