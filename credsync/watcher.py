"""The watcher: inotify watches on the source folder, made with watchdog's inotify binding,
turned into two calls — `ready(name)` when an upload may be complete and `writing(name)` while
it is still being written — plus `lost(reason)` when events may have been missed and a rescan is
due. It also watches the destination folders, calling `rewritten(name)` when a published file
changes there (the consumer refreshing its credentials, or credsync's own publication).

The daemon's loop waits on the watcher's descriptor beside its own and calls `dispatch` when it
is readable: no thread, observer or queue between the kernel and the loop. (watchdog's observer
hands each event through three threads, its own inotify thread through one: 0.3 to 0.6 ms of
a 2 ms publish.)"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from loguru import logger
from watchdog.observers.inotify_c import InotifyConstants, Mask, inotify_add_watch, inotify_init

from credsync.errors import SourceUnavailable
from credsync.intake import SourceFolder
from credsync.safe_paths import describe_folder_error, open_folder, open_subfolders

EVENT_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, length of the name
READ_SIZE = 64 * 1024

# IN_MASK_ADD: two roles on one folder (a destination that is also the source's parent) share
# its watch, each adding what it needs. IN_ONLYDIR | IN_DONT_FOLLOW: a link put in a folder's
# place is refused, not followed.
OWN_FOLDER = InotifyConstants.IN_ONLYDIR | InotifyConstants.IN_DONT_FOLLOW | InotifyConstants.IN_MASK_ADD
UPLOAD_MASK = Mask(
    OWN_FOLDER
    | InotifyConstants.IN_CLOSE_WRITE
    | InotifyConstants.IN_MOVED_TO
    | InotifyConstants.IN_MOVED_FROM
    | InotifyConstants.IN_CREATE
    | InotifyConstants.IN_MODIFY
    | InotifyConstants.IN_DELETE
    | InotifyConstants.IN_DELETE_SELF
    | InotifyConstants.IN_MOVE_SELF
)
# The source's parent may be reached through a link (/home -> /data/home), so it is followed.
PARENT_MASK = Mask(
    InotifyConstants.IN_ONLYDIR
    | InotifyConstants.IN_MASK_ADD
    | InotifyConstants.IN_CREATE
    | InotifyConstants.IN_DELETE
    | InotifyConstants.IN_MOVE
)
# A published file rewritten, renamed over, deleted or moved away by anyone (credsync's own temp
# files come and go under other names, which no route has).
DESTINATION_MASK = Mask(
    OWN_FOLDER
    | InotifyConstants.IN_CLOSE_WRITE
    | InotifyConstants.IN_MOVED_TO
    | InotifyConstants.IN_DELETE
    | InotifyConstants.IN_MOVED_FROM
)

# Plain ints, tested on the raw mask: watchdog's event objects (a frozen dataclass, a property
# per bit) cost more than the rest of an event's handling.
IN_MODIFY, IN_CLOSE_WRITE = int(InotifyConstants.IN_MODIFY), int(InotifyConstants.IN_CLOSE_WRITE)
IN_MOVED_TO, IN_CREATE = int(InotifyConstants.IN_MOVED_TO), int(InotifyConstants.IN_CREATE)
FOLDER_GONE = int(InotifyConstants.IN_DELETE_SELF | InotifyConstants.IN_MOVE_SELF)
IN_ISDIR, IN_IGNORED = int(InotifyConstants.IN_ISDIR), int(InotifyConstants.IN_IGNORED)
IN_Q_OVERFLOW = int(InotifyConstants.IN_Q_OVERFLOW)
MAX_EVENT_SIZE = EVENT_HEADER.size + 256  # NAME_MAX and its NUL, padded
MAX_READS_PER_DISPATCH = 16  # 1 MiB: the kernel's default queue (16,384 events) of short names

SOURCE_REPLACED = "the source folder was replaced"
UPLOAD_FOLDER_CHANGED = "an upload folder was created, moved or deleted"


@dataclass(frozen=True)
class Callbacks:
    ready: Callable[[str], None]
    writing: Callable[[str], None]
    lost: Callable[[str], None]
    rewritten: Callable[[str], None]


class UploadFolderWatch:
    """The source ('.') or one upload folder a route names (`aws`), each watched on its own."""

    def __init__(self, source: Path, folder: str, upload_folders: set[str], callbacks: Callbacks) -> None:
        self.source = source
        self.prefix = "" if folder == "." else folder + "/"
        self.gone_reason = SOURCE_REPLACED if folder == "." else UPLOAD_FOLDER_CHANGED
        self.upload_folders = upload_folders
        self.callbacks = callbacks
        self.ended = False

    def on_event(self, mask: int, raw_name: bytes) -> None:
        if mask & FOLDER_GONE:
            self.callbacks.lost(self.gone_reason)
            return
        if not raw_name:
            return
        name = self.prefix + os.fsdecode(raw_name)
        if mask & IN_ISDIR:
            if name in self.upload_folders:
                self.callbacks.lost(UPLOAD_FOLDER_CHANGED)
            elif mask & (IN_CREATE | IN_MOVED_TO):
                self.callbacks.ready(name)  # not an upload: the pipeline says so once
            return
        if mask & IN_MODIFY or (mask & IN_CREATE and is_regular_file(self.source / name)):
            # Being written: the close-after-write that follows says when it is complete.
            self.callbacks.writing(name)
        elif mask & (IN_CREATE | IN_CLOSE_WRITE | IN_MOVED_TO):
            self.callbacks.ready(name)


class SourceParentWatch:
    """The source's parent folder: the source itself created, deleted or moved (a watch on a
    folder cannot see it being replaced)."""

    def __init__(self, source: Path, lost: Callable[[str], None]) -> None:
        self.name = os.fsencode(source.name)
        self.lost = lost
        self.ended = False  # mount changes and the periodic rescan cover a parent that goes

    def on_event(self, _mask: int, raw_name: bytes) -> None:
        if raw_name == self.name:
            self.lost(SOURCE_REPLACED)


class DestinationWatch:
    """Close-after-write, rename onto, deletion or rename away of a published file's path, by anyone."""

    def __init__(self, uploads_by_name: dict[bytes, str], rewritten: Callable[[str], None]) -> None:
        self.uploads_by_name = uploads_by_name
        self.rewritten = rewritten
        self.ended = False  # consumer-side changes then show at the next rescan

    def on_event(self, _mask: int, raw_name: bytes) -> None:
        # credsync's own renames come here too (the consumer can use the same temp names, so they
        # are not skipped by name): reading them back finds the ledger's hash and stops there.
        upload = self.uploads_by_name.get(raw_name)
        if upload is not None:
            self.rewritten(upload)


FolderRole = UploadFolderWatch | SourceParentWatch | DestinationWatch


def is_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


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
        self.destinations = destinations
        self.callbacks = callbacks
        self._fd: int | None = None
        self._roles: dict[int, list[FolderRole]] = {}
        self._upload_watches: list[UploadFolderWatch] = []
        self._watched: dict[str, FolderIdentity] | None = None

    def start(self) -> None:
        """Raises SourceUnavailable when the source cannot be watched (missing, a link, unreadable),
        OSError when inotify refuses (its instance or watch limit)."""
        identities = self._identities()
        fd = inotify_init()
        if fd < 0:
            raise inotify_error("inotify_init", b"")
        os.set_inheritable(fd, False)
        os.set_blocking(fd, False)  # `dispatch` reads what is there and returns
        self._fd = fd
        self._roles = {}
        self._upload_watches = []
        for folder, identity in sorted(identities.items()):
            if identity is None:
                continue
            watch = UploadFolderWatch(self.source.path, folder, self.upload_folders, self.callbacks)
            try:
                self._add(self.source.path / folder, UPLOAD_MASK, watch)
            except OSError as error:
                # An upload folder moved away since it was looked at (renamed in a loop, say) is
                # not watched, like a missing one: `healthy` sees it come back. Only the source
                # itself failing means the source cannot be watched.
                if folder == "." or error.errno not in (errno.ENOENT, errno.ENOTDIR):
                    raise
                identities[folder] = None
                continue
            self._upload_watches.append(watch)
        with contextlib.suppress(OSError):  # no parent to watch (/): mount changes and rescans cover it
            self._add(self.source.path.parent, PARENT_MASK, SourceParentWatch(self.source.path, self.callbacks.lost))
        self._watch_destinations()
        self._watched = identities

    def _add(self, folder: Path, mask: Mask, role: FolderRole) -> None:
        assert self._fd is not None
        path = os.fsencode(folder)
        wd = inotify_add_watch(self._fd, path, mask)
        if wd < 0:
            raise inotify_error("inotify_add_watch", path)
        self._roles.setdefault(wd, []).append(role)

    def fileno(self) -> int | None:
        """The descriptor to wait on (readable when events are queued); None when not watching."""
        return self._fd

    def dispatch(self) -> None:
        """Hand queued events to their folders' roles; returns once a read has taken all that was
        queued when it ran, or after MAX_READS_PER_DISPATCH reads (events made as fast as they are
        read must not keep the loop from its uploads: it calls again while any are queued)."""
        for _ in range(MAX_READS_PER_DISPATCH):
            if self._fd is None:
                return
            try:
                buffer = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                return
            for wd, mask, name in parse_events(buffer):
                self._deliver(wd, mask, name)
            if len(buffer) <= READ_SIZE - MAX_EVENT_SIZE:  # the read took all there was: no second one
                return

    def _deliver(self, wd: int, mask: int, name: bytes) -> None:
        if mask & IN_Q_OVERFLOW:
            self.callbacks.lost("the kernel's inotify queue overflowed: events were lost")
            return
        ignored = mask & IN_IGNORED
        for role in self._roles.pop(wd, []) if ignored else self._roles.get(wd, []):
            if ignored:
                role.ended = True  # the folder went, or its file system was unmounted
            else:
                role.on_event(mask, name)

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

    def _watch_destinations(self) -> None:
        by_folder: dict[Path, dict[bytes, str]] = {}
        for path, upload in self.destinations.items():
            by_folder.setdefault(path.parent, {})[os.fsencode(path.name)] = upload
        for folder, uploads_by_name in sorted(by_folder.items()):
            try:
                os.close(open_folder(folder))  # no link anywhere on the way, not only at the end
                self._add(folder, DESTINATION_MASK, DestinationWatch(uploads_by_name, self.callbacks.rewritten))
            except OSError as error:
                # Consumer-side changes then show at the next rescan instead; publishing is unaffected.
                logger.bind(folder=str(folder)).warning(
                    f"cannot watch a destination folder: {describe_folder_error(error)}"
                )

    def healthy(self) -> bool:
        """Still watching the folders that are at those paths now (not deleted or swapped ones).
        The kernel ends a watch when its folder goes."""
        if self._fd is None or any(watch.ended for watch in self._upload_watches):
            return False
        try:
            return self._identities() == self._watched
        except SourceUnavailable:
            return False

    def stop(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # ends every watch with it
            self._fd = None


def parse_events(buffer: bytes) -> list[tuple[int, int, bytes]]:
    """(watch descriptor, mask, name) of each event in what one read returned."""
    events = []
    offset = 0
    while offset + EVENT_HEADER.size <= len(buffer):
        wd, mask, _cookie, length = EVENT_HEADER.unpack_from(buffer, offset)
        offset += EVENT_HEADER.size
        events.append((wd, mask, buffer[offset : offset + length].rstrip(b"\0")))
        offset += length
    return events


def inotify_error(call: str, path: bytes) -> OSError:
    number = ctypes.get_errno()
    return OSError(number, f"{call}: {os.strerror(number)}", os.fsdecode(path) or None)


FolderIdentity = tuple[int, int] | None


def identity_of(folder_fd: int) -> tuple[int, int]:
    info = os.fstat(folder_fd)
    return info.st_dev, info.st_ino
