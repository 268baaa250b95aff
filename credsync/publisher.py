"""The publisher: the only code that creates, chowns or renames files.

Every write is a temp file in the destination's own folder (so the rename is atomic),
fsynced, owned and moded before it is renamed over the destination; the folder is fsynced
after. Readers see the old file or the new one, never a mix."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

from credsync.errors import PublishError
from credsync.intake import read_at_most

TEMP_PREFIX = ".credsync."
TEMP_SUFFIX = ".tmp"
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def write_atomically(path: Path, data: bytes, *, uid: int, gid: int, mode: int) -> None:
    """Replace `path` with `data`, owned uid:gid with `mode`, or raise PublishError and leave
    `path` as it was."""
    try:
        folder_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        raise PublishError(f"cannot open folder {path.parent}: {error.strerror}") from None
    try:
        temp_name = f"{TEMP_PREFIX}{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            write_temp(folder_fd, temp_name, data, uid, gid, mode)
            os.rename(temp_name, path.name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
        except OSError as error:
            with contextlib.suppress(OSError):  # absent when even its creation failed
                os.unlink(temp_name, dir_fd=folder_fd)
            raise PublishError(f"cannot write {path}: {describe_os_error(error)}") from None
        try:
            os.fsync(folder_fd)
        except OSError as error:
            raise PublishError(f"wrote {path} but could not fsync its folder: {error.strerror}") from None
    finally:
        os.close(folder_fd)


def write_temp(folder_fd: int, name: str, data: bytes, uid: int, gid: int, mode: int) -> None:
    file_fd = os.open(name, CREATE_FLAGS, 0o600, dir_fd=folder_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(file_fd, view) :]
        os.fsync(file_fd)
        # Mode first: once the file belongs to someone else, fchmod would need CAP_FOWNER too.
        # (chown only clears setuid/setgid bits, which a mode here never has.)
        os.fchmod(file_fd, mode)
        os.fchown(file_fd, uid, gid)
    finally:
        os.close(file_fd)


def describe_os_error(error: OSError) -> str:
    hints = {
        errno.ENOSPC: "no space left on the device; free some and credsync retries",
        errno.EDQUOT: "disk quota exceeded; free some and credsync retries",
        errno.EROFS: "the file system is read-only; mount the destination read-write",
        errno.EPERM: "not permitted; credsync needs CAP_CHOWN to set the owner",
        errno.EACCES: "permission denied; the destination folder must be writable by credsync",
        errno.EISDIR: "a folder stands where the file should be; remove it",
        errno.ENOENT: "the folder does not exist; create it or mount the volume there",
    }
    return hints.get(error.errno or 0, error.strerror or str(error))


def read_current(path: Path, max_bytes: int) -> bytes | None:
    """The destination's bytes, or None when it is missing, a symlink or not a regular file
    (each of which a publish replaces). Reads at most max_bytes + 1."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None  # a socket, FIFO or device must not even be opened
        file_fd = os.open(path, READ_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENXIO):  # replaced by a link or socket since the lstat
            return None
        raise PublishError(f"cannot read {path}: {describe_os_error(error)}") from None
    try:
        if not stat.S_ISREG(os.fstat(file_fd).st_mode):
            return None
        return read_at_most(file_fd, max_bytes + 1)
    finally:
        os.close(file_fd)


def ensure_private_folder(path: Path) -> None:
    """State folders: created 0700, owned by credsync; they may hold a previous generation."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700, follow_symlinks=False)
    except OSError as error:
        raise PublishError(f"cannot create state folder {path}: {describe_os_error(error)}") from None


def keep_private_copy(path: Path, data: bytes) -> None:
    """A copy only credsync can read (the previous generation, the ledger)."""
    ensure_private_folder(path.parent)
    write_atomically(path, data, uid=os.geteuid(), gid=os.getegid(), mode=0o600)


def remove_stale_temps(folders: Iterable[Path]) -> list[Path]:
    """Temp files left by a crash mid-publish; only names credsync itself makes."""
    removed = []
    for folder in folders:
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            continue
        for name in names:
            if name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    (folder / name).unlink()
                    removed.append(folder / name)
    return removed
