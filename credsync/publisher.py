"""The publisher: the only code that creates, chowns or renames files.

Every write is a temp file in the destination's own folder (so the rename is atomic),
fsynced, owned and moded before it is renamed over the destination; the folder is fsynced
after. Readers see the old file or the new one, never a mix."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from loguru import logger

from credsync.errors import PublishError
from credsync.intake import read_at_most
from credsync.safe_paths import describe_folder_error, open_folder

TEMP_PREFIX = ".credsync."
TEMP_SUFFIX = ".tmp"
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def write_atomically(path: Path, data: bytes, *, uid: int, gid: int, mode: int) -> None:
    """Replace `path` with `data`, owned uid:gid with `mode`, or raise PublishError and leave
    `path` as it was."""
    with destination_folder(path) as folder_fd:
        write_atomically_in(folder_fd, path, data, uid=uid, gid=gid, mode=mode)


def write_atomically_in(folder_fd: int, path: Path, data: bytes, *, uid: int, gid: int, mode: int) -> None:
    """The same, in the folder already open as `folder_fd` (`path` names the file in it)."""
    StagedFile(folder_fd, path, data, uid=uid, gid=gid, mode=mode).commit()


class StagedFile:
    """New bytes in a temp file beside the destination, moded and owned, their writeback
    already started: `commit` makes the destination that file (fsync, rename, folder fsync),
    `discard` removes it. Until one of them, the destination is as it was. A caller that stages
    before its last checks overlaps the disk's work with them; the fsync then waits for less."""

    def __init__(self, folder_fd: int, path: Path, data: bytes, *, uid: int, gid: int, mode: int) -> None:
        """Raises PublishError (nothing is left behind)."""
        self.folder_fd, self.path, self.filename = folder_fd, path, path.name
        self.name = f"{TEMP_PREFIX}{self.filename}.{os.urandom(4).hex()}{TEMP_SUFFIX}"
        self._fd: int | None = None
        try:
            self._fd = os.open(self.name, CREATE_FLAGS, 0o600, dir_fd=folder_fd)
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            # Linux starts writing dirty pages back on this advice (it drops only clean ones).
            # Advice only: where it fails, the fsync does all the work.
            with contextlib.suppress(OSError):
                os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)
            # Mode first: once the file belongs to someone else, fchmod would need CAP_FOWNER too.
            # (chown only clears setuid/setgid bits, which a mode here never has.) Both before the
            # fsync, which then makes them durable with the bytes, before the rename; always set,
            # as neither the umask nor a default ACL the consumer put on its folder decides them.
            os.fchmod(self._fd, mode)
            os.fchown(self._fd, uid, gid)
        except OSError as error:
            self.discard()
            raise PublishError(f"cannot write {path}: {describe_os_error(error)}") from None
        except BaseException:  # interrupted: leave no descriptor and no temp file behind
            self.discard()
            raise

    def commit(self) -> None:
        """Raises PublishError; the destination is then as it was, unless only the folder's
        fsync failed (it is then in place, perhaps not yet durable)."""
        try:
            self._close(sync=True)
            os.rename(self.name, self.filename, src_dir_fd=self.folder_fd, dst_dir_fd=self.folder_fd)
        except OSError as error:
            self.discard()
            raise PublishError(f"cannot write {self.path}: {describe_os_error(error)}") from None
        self.name = ""  # renamed: nothing of this file is left to discard
        try:
            os.fsync(self.folder_fd)
        except OSError as error:
            raise PublishError(f"wrote {self.path} but could not fsync its folder: {error.strerror}") from None

    def discard(self) -> None:
        self._close(sync=False)
        if self.name:
            with contextlib.suppress(OSError):  # absent when even its creation failed
                os.unlink(self.name, dir_fd=self.folder_fd)
            self.name = ""

    def _close(self, *, sync: bool) -> None:
        file_fd, self._fd = self._fd, None
        if file_fd is not None:
            try:
                if sync:
                    os.fsync(file_fd)
            finally:
                os.close(file_fd)


def probe_ownership(folder: Path, owners: Iterable[tuple[int, int]]) -> None:
    """What publishing into `folder` needs, tried with nothing published: create a temp file,
    give it each owner in turn, remove it. Raises PublishError with the reason and its fix."""
    probe = f"{TEMP_PREFIX}probe.{os.urandom(4).hex()}{TEMP_SUFFIX}"
    folder_fd = open_destination_folder(folder)
    try:
        file_fd = os.open(probe, CREATE_FLAGS, 0o600, dir_fd=folder_fd)
        try:
            for uid, gid in sorted(owners):
                os.fchown(file_fd, uid, gid)
        finally:
            os.close(file_fd)
            with contextlib.suppress(OSError):
                os.unlink(probe, dir_fd=folder_fd)
    except OSError as error:
        raise PublishError(describe_os_error(error)) from None
    finally:
        os.close(folder_fd)


def open_destination_folder(folder: Path | str) -> int:
    """The folder a destination lives in, reached without following a symlink (the consumer
    owns it and could swap a folder on the way for a link to somewhere only root may write)."""
    try:
        return open_folder(folder)
    except OSError as error:
        raise PublishError(f"cannot open the destination folder: {describe_folder_error(error)}") from None


@contextlib.contextmanager
def destination_folder(path: Path) -> Iterator[int]:
    """The folder `path` lives in (`open_destination_folder`), closed after."""
    folder_fd = open_destination_folder(path.parent)
    try:
        yield folder_fd
    finally:
        os.close(folder_fd)


def describe_os_error(error: OSError) -> str:
    hints = {
        errno.ENOSPC: "no space left on the device; free some and credsync retries",
        errno.EDQUOT: "disk quota exceeded; free some and credsync retries",
        errno.EROFS: "the file system is read-only; mount the destination read-write",
        errno.EPERM: "not permitted to set the owner: run credsync as root (it needs CAP_CHOWN), or set the"
        " route's owner (CREDSYNC_OWNER, CREDSYNC_AWS_OWNER) to your own UID:GID",
        errno.EACCES: "permission denied; the destination folder must be writable by credsync",
        errno.EISDIR: "a folder stands where the file should be; remove it",
        errno.ENOENT: "the folder does not exist; create it or mount the volume there",
    }
    return hints.get(error.errno or 0, error.strerror or str(error))


def read_current(path: Path, max_bytes: int) -> bytes | None:
    """The destination's bytes, or None when it is missing, a symlink or not a regular file
    (each of which a publish replaces). Reads at most max_bytes + 1."""
    with destination_folder(path) as folder_fd:
        return read_current_in(folder_fd, path, max_bytes)


def read_current_in(folder_fd: int, path: Path, max_bytes: int) -> bytes | None:
    """The same, in the folder already open as `folder_fd`."""
    name = path.name
    try:
        if not stat.S_ISREG(os.stat(name, dir_fd=folder_fd, follow_symlinks=False).st_mode):
            return None  # a socket, FIFO or device must not even be opened
        file_fd = os.open(name, READ_FLAGS, dir_fd=folder_fd)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENXIO):  # replaced by a link or socket since the stat
            return None
        raise PublishError(f"cannot read {path}: {describe_os_error(error)}") from None
    try:
        if not stat.S_ISREG(os.fstat(file_fd).st_mode):
            return None
        # The consumer may be writing it: read what is there now, not what the fstat saw.
        return read_at_most(file_fd, max_bytes + 1)
    finally:
        os.close(file_fd)


def stat_destination(path: Path) -> os.stat_result | None:
    """The destination's own metadata (never a link's target), or None when it is missing."""
    with destination_folder(path) as folder_fd:
        return stat_destination_in(folder_fd, path)


def stat_destination_in(folder_fd: int, path: Path) -> os.stat_result | None:
    try:
        return os.stat(path.name, dir_fd=folder_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise PublishError(f"cannot inspect {path}: {describe_os_error(error)}") from None


def ensure_private_folder(path: Path) -> None:
    """State folders: created 0700, owned by credsync; they may hold a previous generation."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder_fd = open_folder(path)
    except OSError as error:
        problem = describe_folder_error(error) if error.errno == errno.ENOTDIR else describe_os_error(error)
        raise PublishError(f"cannot create state folder {path}: {problem}") from None
    try:
        os.fchmod(folder_fd, 0o700)
    finally:
        os.close(folder_fd)


def keep_private_copy(path: Path, data: bytes) -> None:
    """A copy only credsync can read (the previous generation, the ledger)."""
    ensure_private_folder(path.parent)
    write_atomically(path, data, uid=os.geteuid(), gid=os.getegid(), mode=0o600)


def remove_stale_temps(folders: Iterable[Path]) -> list[Path]:
    """Temp files left by a crash mid-publish: regular files with names only credsync makes.
    Anything else under such a name (a folder the consumer made, say) is left alone and said."""
    removed = []
    for folder in folders:
        try:
            folder_fd = open_folder(folder)
        except FileNotFoundError:
            continue
        except OSError as error:
            logger.bind(folder=str(folder)).warning(f"cannot clean up temp files: {describe_folder_error(error)}")
            continue
        try:
            removed += [folder / name for name in remove_temps_in(folder_fd, folder)]
        finally:
            os.close(folder_fd)
    return removed


def remove_temps_in(folder_fd: int, folder: Path) -> list[str]:
    removed = []
    try:
        entries = [entry.name for entry in os.scandir(folder_fd)]
    except OSError as error:
        logger.bind(folder=str(folder)).warning(f"cannot list the folder to clean up temp files: {error.strerror}")
        return []
    for name in entries:
        if not (name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)):
            continue
        try:
            if not stat.S_ISREG(os.stat(name, dir_fd=folder_fd, follow_symlinks=False).st_mode):
                logger.bind(folder=str(folder)).warning("left alone: something not a file has a temp file's name")
                continue
            os.unlink(name, dir_fd=folder_fd)
        except FileNotFoundError:
            continue
        except OSError as error:
            logger.bind(folder=str(folder)).warning(f"cannot remove a stale temp file: {error.strerror}")
            continue
        removed.append(name)
    return removed
