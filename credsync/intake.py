"""Intake: read an upload once, safely. The upload folder is written by a remote user, so
nothing here follows a symlink, blocks on a FIFO, opens a device or reads past the size cap."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from credsync.errors import Rejection, UploadMissing, UploadUnsettled

READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_TYPES = {
    stat.S_IFDIR: "a directory",
    stat.S_IFLNK: "a symlink (credsync follows no links)",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes
    sha256: str
    changed_ns: int  # ctime: the last write, rename or chmod, as the kernel saw it


def read_upload(source: Path, name: str, *, max_bytes: int, settle_ns: int) -> Upload:
    """Read `name` (relative to `source`) if it is a settled, single-link regular file."""
    folder_fd = open_parent(source, name)
    try:
        return read_settled_file(folder_fd, name, max_bytes, settle_ns)
    finally:
        os.close(folder_fd)


def open_parent(source: Path, name: str) -> int:
    """Open the folder holding the upload, refusing symlinked folders below the source."""
    try:
        folder_fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UploadMissing(f"source folder {source} does not exist") from None
    for part in PurePosixPath(name).parts[:-1]:
        try:
            child_fd = os.open(part, DIR_FLAGS, dir_fd=folder_fd)
        except FileNotFoundError:
            os.close(folder_fd)
            raise UploadMissing("upload folder does not exist") from None
        except OSError as error:
            os.close(folder_fd)
            if error.errno in (errno.ELOOP, errno.ENOTDIR):
                raise Rejection(
                    f"folder {part!r} is a symlink or not a folder; credsync follows no links", code="symlink"
                ) from None
            raise Rejection(f"cannot open folder {part!r}: {error.strerror}", code="unreadable") from None
        os.close(folder_fd)
        folder_fd = child_fd
    return folder_fd


def read_settled_file(folder_fd: int, name: str, max_bytes: int, settle_ns: int) -> Upload:
    basename = PurePosixPath(name).name
    try:
        before = os.stat(basename, dir_fd=folder_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise UploadMissing("upload does not exist") from None
    check_shape(before, max_bytes)
    # ctime, not mtime: `scp -p` and `rsync -t` copy the sender's mtime, which may lie in the future;
    # the kernel sets ctime on every write, rename or utimes, and nobody can set it by hand.
    if time.time_ns() - before.st_ctime_ns < settle_ns:
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
        check_shape(opened, max_bytes)
        data = read_at_most(file_fd, max_bytes + 1)
        after = os.fstat(file_fd)
    finally:
        os.close(file_fd)
    if len(data) > max_bytes:
        raise Rejection(f"upload grew past the limit of {max_bytes} bytes while being read", code="too-large")
    if (after.st_size, after.st_mtime_ns) != (opened.st_size, opened.st_mtime_ns) or len(data) != after.st_size:
        raise UploadUnsettled("upload changed while being read")
    return Upload(name, data, hashlib.sha256(data).hexdigest(), after.st_ctime_ns)


def check_shape(info: os.stat_result, max_bytes: int) -> None:
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
        raise Rejection(f"upload is {info.st_size} bytes, over the limit of {max_bytes}", code="too-large")


def read_at_most(fd: int, limit: int) -> bytes:
    chunks = []
    remaining = limit
    while remaining > 0:
        chunk = os.read(fd, min(remaining, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
