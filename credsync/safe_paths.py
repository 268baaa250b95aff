"""Open folders without following a symlink anywhere on the path.

The upload folder and the destinations are writable by people credsync does not fully trust
(the uploader owns its home, the consumer owns its volume): either can swap a folder on the way
for a symlink to somewhere only root may read or write. So every folder credsync opens is
reached from `/`, one component at a time, each opened `O_NOFOLLOW | O_DIRECTORY` relative to
the last. For the absolute, `..`-free paths credsync uses this is what `openat2(2)` with
`RESOLVE_NO_SYMLINKS` does, without ctypes (memory) and on every kernel. A symlink or a file
where a folder should be fails with ENOTDIR naming the component."""

from __future__ import annotations

import errno
import os
from pathlib import Path, PurePosixPath

FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_folder(path: Path) -> int:
    """A descriptor of the folder at absolute `path`, reached without following any symlink.
    Raises OSError whose `filename` is the component that failed (ENOTDIR: a symlink or not a
    folder; ENOENT, EACCES: as usual)."""
    text = os.fspath(path)
    # Plain string splitting: this runs several times per upload, and pathlib's parsing cost
    # more than the system calls.
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if not text.startswith("/") or ".." in parts:
        raise OSError(errno.EINVAL, "not an absolute path without '..'", text)
    folder_fd = os.open("/", FOLDER_FLAGS)
    for depth, part in enumerate(parts):
        try:
            child_fd = os.open(part, FOLDER_FLAGS, dir_fd=folder_fd)
        except OSError as error:
            raise OSError(error.errno, error.strerror, "/" + "/".join(parts[: depth + 1])) from None
        finally:
            os.close(folder_fd)
        folder_fd = child_fd
    return folder_fd


def open_subfolders(folder_fd: int, relative: PurePosixPath) -> int:
    """Below an open folder, the same walk; `folder_fd` stays open, the result is a new fd."""
    current = os.dup(folder_fd)
    for part in relative.parts:
        try:
            child = os.open(part, FOLDER_FLAGS, dir_fd=current)
        finally:
            os.close(current)
        current = child
    return current


def describe_folder_error(error: OSError) -> str:
    """One line naming the component and what is wrong with it."""
    where = error.filename or "a folder on the path"
    if error.errno == errno.ENOTDIR:
        return f"{where} is a symlink or not a folder; credsync follows no links"
    if error.errno == errno.ENOENT:
        return f"{where} does not exist"
    if error.errno == errno.EACCES:
        return f"{where} is not readable by credsync (permission denied)"
    return f"cannot open {where}: {error.strerror}"
