"""Open folders without following a symlink anywhere on the path.

The upload folder and the destinations are writable by people credsync does not fully trust
(the uploader owns its home, the consumer owns its volume): either can swap a folder on the way
for a symlink to somewhere only root may read or write. So every folder credsync opens is
reached from `/` without following a link: in one call where the kernel has `openat2(2)` with
`RESOLVE_NO_SYMLINKS` (Linux 5.6 and later, unless a seccomp profile refuses it), else one
component at a time, each opened `O_NOFOLLOW | O_DIRECTORY` relative to the last. That walk also
runs whenever the one call fails, to name the component: a symlink or a file where a folder
should be fails with ENOTDIR naming it."""

from __future__ import annotations

import ctypes
import errno
import functools
import os
from pathlib import Path, PurePosixPath

FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
SYS_OPENAT2 = 437  # the asm-generic number, which x86 (32 and 64 bit) and arm64 share
AT_FDCWD = -100
RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS = 0x02, 0x04


class OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


class KernelWalk:
    """`openat2(AT_FDCWD, path, FOLDER_FLAGS, RESOLVE_NO_SYMLINKS)`: the walk in one system call,
    a third of its cost per upload (ctypes is loaded already, for watchdog's inotify)."""

    def __init__(self, number: int = SYS_OPENAT2) -> None:
        """`number`: the system call's (tests give one that does not exist)."""
        self.usable = True  # until the kernel or a seccomp profile says otherwise
        self._how = OpenHow(FOLDER_FLAGS, 0, RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
        syscall = ctypes.CDLL(None, use_errno=True).syscall
        syscall.restype = ctypes.c_long
        # Every argument but the path made once: this runs twice per upload.
        self._head = (syscall, ctypes.c_long(number), ctypes.c_long(AT_FDCWD))
        self._tail = (ctypes.byref(self._how), ctypes.c_size_t(ctypes.sizeof(self._how)))

    def open(self, path: bytes) -> int | None:
        """A descriptor, or None when the caller must walk (to open it, or to say why not)."""
        syscall, number, at_fdcwd = self._head
        result = int(syscall(number, at_fdcwd, path, *self._tail))
        if result >= 0:
            return result
        if ctypes.get_errno() in (errno.ENOSYS, errno.EPERM):  # an old kernel, or seccomp's refusal
            self.usable = False
        return None


KERNEL_WALK = KernelWalk()


def open_folder(path: Path | str) -> int:
    """A descriptor of the folder at absolute `path`, reached without following any symlink.
    Raises OSError whose `filename` is the component that failed (ENOTDIR: a symlink or not a
    folder; ENOENT, EACCES: as usual)."""
    encoded, parts = checked_path(os.fspath(path))
    if KERNEL_WALK.usable and (folder_fd := KERNEL_WALK.open(encoded)) is not None:
        return folder_fd
    return walk_folder(parts)


@functools.lru_cache(maxsize=64)
def checked_path(text: str) -> tuple[bytes, tuple[str, ...]]:
    """The path for the kernel and its components, once per path (credsync opens a few folders
    over and over: each upload's source and destination)."""
    parts = tuple(part for part in text.split("/") if part not in ("", "."))
    if not text.startswith("/") or ".." in parts or "\0" in text:  # ctypes would cut at a NUL
        raise OSError(errno.EINVAL, "not an absolute path without '..'", text)
    return os.fsencode(text), parts


def walk_folder(parts: tuple[str, ...]) -> int:
    """From `/` through each of `parts`, one component at a time."""
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
