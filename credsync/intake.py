"""Intake: read an upload once, safely. The upload folder is written by a remote user, so
nothing here follows a symlink, blocks on a FIFO, opens a device or reads past the size cap."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path, PurePosixPath
from typing import NamedTuple, TypeVar

from credsync.errors import Rejection, SourceUnavailable, UploadMissing, UploadUnsettled
from credsync.safe_paths import describe_folder_error, open_folder, open_subfolders

READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
T = TypeVar("T")
FILE_TYPES = {
    stat.S_IFDIR: "a directory",
    stat.S_IFLNK: "a symlink (credsync follows no links)",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}
MAX_BYTES_SETTING = "CREDSYNC_MAX_BYTES"


class SizeCap(NamedTuple):
    """The largest upload accepted, and what sets it (named in a rejection's reason)."""

    max_bytes: int
    set_by: str


# On a Swarm manager every upload is stored as a Swarm secret, which SwarmKit refuses from
# 500 KiB (its MaxSecretSize): such a file is refused at the intake, like any file too large.
SWARM_SECRET_CAP = SizeCap(500 * 1024 - 1, "SwarmKit refuses a Swarm secret of 500 KiB or more")


class Upload(NamedTuple):  # a tuple, not a frozen dataclass: made on every upload, and cheaper
    name: str
    data: bytes
    sha256: str
    changed_ns: int  # ctime: the last write, rename or chmod, as the kernel saw it
    written_ns: int  # mtime: when it was written, or (scp -p, rsync -t) when its original was


class SourceFolder:
    """The upload folder: reached without following any symlink, and owned by the UID it had
    when credsync first opened it (or CREDSYNC_SOURCE_OWNER), so a folder swapped in by someone
    else is refused rather than read."""

    def __init__(self, path: Path, owner: int | None = None) -> None:
        self.path = path
        self._path_text = os.fspath(path)  # made once: pathlib's conversion runs Python on every upload
        self.owner = owner
        self.group: int | None = None  # the folder's group, for files credsync gives the uploader
        self.cap: SizeCap | None = None  # stricter than the max_bytes each read is given, if set
        self._held: int | None = None

    def hold(self) -> None:
        """Until `release`, the folder is walked to once: one upload's read and its siblings'
        looks share that descriptor. If the folder cannot be opened, each `open` says why.
        (A pair of calls, not a context manager: a generator's cost shows on every upload.)"""
        try:
            self._held = self.open()
        except SourceUnavailable:
            self._held = None

    def release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            os.close(held)

    def open(self) -> int:
        """A descriptor of the folder (the caller closes it); raises SourceUnavailable with a
        one-line reason."""
        if self._held is not None:
            return os.dup(self._held)
        try:
            folder_fd = open_folder(self._path_text)
        except OSError as error:
            raise SourceUnavailable(f"upload folder: {describe_folder_error(error)}") from None
        info = os.fstat(folder_fd)
        owner = info.st_uid
        self.group = info.st_gid
        if self.owner is None:
            self.owner = owner
        elif owner != self.owner:
            os.close(folder_fd)
            raise SourceUnavailable(
                f"upload folder {self.path} is owned by UID {owner}, not {self.owner}; refusing it"
                " (set CREDSYNC_SOURCE_OWNER if the new owner is right)"
            )
        return folder_fd

    def read(self, name: str, *, max_bytes: int, settle_ns: int) -> Upload:
        cap = self.cap
        if cap is not None and cap.max_bytes < max_bytes:
            read = partial(read_upload, name=name, max_bytes=cap.max_bytes, settle_ns=settle_ns, set_by=cap.set_by)
            return self._in_folder(read)
        return self._in_folder(partial(read_upload, name=name, max_bytes=max_bytes, settle_ns=settle_ns))

    def changed_ns(self, name: str) -> int | None:
        """When `name` last changed (ctime), or None when it is not there; nothing is read."""
        try:
            return self._in_folder(lambda folder_fd: in_parent(folder_fd, name, changed_ns_of))
        except (SourceUnavailable, UploadMissing, Rejection, OSError):
            return None

    def _in_folder(self, use: Callable[[int], T]) -> T:
        """`use(the folder's descriptor)`: the one held, else one opened for this call."""
        if self._held is not None:
            return use(self._held)
        folder_fd = self.open()
        try:
            return use(folder_fd)
        finally:
            os.close(folder_fd)


def changed_ns_of(parent_fd: int, name: str) -> int:
    return os.stat(basename_of(name), dir_fd=parent_fd, follow_symlinks=False).st_ctime_ns


def read_upload(
    folder_fd: int, name: str, *, max_bytes: int, settle_ns: int, set_by: str = MAX_BYTES_SETTING
) -> Upload:
    """Read `name` (relative to the open folder) if it is a settled, single-link regular file;
    `set_by` is what sets `max_bytes`, for the reason a larger file is rejected with."""
    read = partial(read_settled_file, max_bytes=max_bytes, settle_ns=settle_ns, set_by=set_by)
    return in_parent(folder_fd, name, read)


def in_parent(folder_fd: int, name: str, use: Callable[[int, str], T]) -> T:
    """`use(descriptor of the folder holding name, name)`. An upload in the source itself (most)
    needs no further walk; one in an upload folder refuses a symlinked folder on the way."""
    parent = name.rpartition("/")[0]  # plain strings: pathlib cost more than the system calls
    if not parent:
        return use(folder_fd, name)
    parent_fd = open_parent(folder_fd, parent)
    try:
        return use(parent_fd, name)
    finally:
        os.close(parent_fd)


def basename_of(name: str) -> str:
    return name.rpartition("/")[2]


def open_parent(folder_fd: int, parent: str) -> int:
    """Open the folder holding the upload, refusing symlinked folders below the source."""
    try:
        return open_subfolders(folder_fd, PurePosixPath(parent))
    except FileNotFoundError:
        raise UploadMissing("upload folder does not exist") from None
    except OSError as error:
        if error.errno == errno.ENOTDIR:
            raise Rejection(
                f"folder {parent!r} is a symlink or not a folder; credsync follows no links", code="symlink"
            ) from None
        raise Rejection(f"cannot open folder {parent!r}: {error.strerror}", code="unreadable") from None


def read_settled_file(
    folder_fd: int, name: str, max_bytes: int, settle_ns: int, set_by: str = MAX_BYTES_SETTING
) -> Upload:
    basename = basename_of(name)
    try:
        before = os.stat(basename, dir_fd=folder_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise UploadMissing("upload does not exist") from None
    check_shape(before, max_bytes, set_by)
    # ctime, not mtime: `scp -p` and `rsync -t` copy the sender's mtime, which may lie in the future;
    # the kernel sets ctime on every write, rename or utimes, and nobody can set it by hand.
    if settle_ns and time.time_ns() - before.st_ctime_ns < settle_ns:
        raise UploadUnsettled("upload was written less than the settle time ago")
    try:
        file_fd = os.open(basename, READ_FLAGS, dir_fd=folder_fd)
    except FileNotFoundError:
        raise UploadMissing("upload vanished before it could be opened") from None
    except OSError as error:
        raise Rejection(f"cannot open upload: {error.strerror}", code="unreadable") from None
    try:
        opened = os.fstat(file_fd)
        if (opened.st_dev, opened.st_ino) != (before.st_dev, before.st_ino):
            raise UploadUnsettled("upload was replaced while being opened")
        check_shape(opened, max_bytes, set_by)
        # One byte past what it holds shows growth; no buffer of the cap's size for a small file.
        data = read_at_most(file_fd, min(opened.st_size, max_bytes) + 1)
        after = os.fstat(file_fd)
    finally:
        os.close(file_fd)
    if len(data) > max_bytes:
        raise Rejection(
            f"upload grew past the limit of {max_bytes} bytes ({set_by}) while being read", code="too-large"
        )
    if (after.st_size, after.st_mtime_ns) != (opened.st_size, opened.st_mtime_ns) or len(data) != after.st_size:
        raise UploadUnsettled("upload changed while being read")
    return Upload(name, data, hashlib.sha256(data).hexdigest(), after.st_ctime_ns, after.st_mtime_ns)


def check_shape(info: os.stat_result, max_bytes: int, set_by: str = MAX_BYTES_SETTING) -> None:
    """Regular file, one link, within the size cap: judged from metadata, before any read."""
    kind = FILE_TYPES.get(stat.S_IFMT(info.st_mode))
    if kind is not None:
        code = "symlink" if stat.S_ISLNK(info.st_mode) else "not-regular-file"
        raise Rejection(f"upload is {kind}, not a regular file", code=code)
    if not stat.S_ISREG(info.st_mode):
        raise Rejection("upload is not a regular file", code="not-regular-file")
    if info.st_nlink != 1:
        raise Rejection(f"upload has {info.st_nlink} hard links; copy it instead of linking", code="hard-link")
    if info.st_size > max_bytes:
        raise Rejection(f"upload is {info.st_size} bytes, over the limit of {max_bytes} ({set_by})", code="too-large")


def read_at_most(fd: int, limit: int) -> bytes:
    chunks = []
    remaining = limit
    while remaining > 0:
        wanted = min(remaining, 1 << 16)
        chunk = os.read(fd, wanted)
        chunks.append(chunk)
        remaining -= len(chunk)
        if len(chunk) < wanted:  # a regular file reads short only at its end: no read to learn that
            break
    return b"".join(chunks)
