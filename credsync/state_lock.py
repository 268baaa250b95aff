"""One `credsync watch` per state folder: two would clean up each other's temp files, fight
over the ledger and overwrite each other's health record. An advisory lock held for the
process's life (the kernel drops it when the process ends, however it ends), naming its PID."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from credsync.errors import ConfigError
from credsync.publisher import ensure_private_folder

LOCK_NAME = "watch.lock"


def hold_state_lock(state_dir: Path) -> int:
    """The locked descriptor; keep it open. Raises ConfigError naming the other daemon."""
    ensure_private_folder(state_dir)
    lock_fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = ""
        with contextlib.suppress(OSError):
            holder = os.read(lock_fd, 32).decode(errors="replace").strip()
        os.close(lock_fd)
        raise ConfigError(
            f"another credsync watch (PID {holder or '?'}) uses the state folder {state_dir};"
            " stop it, or give this one its own CREDSYNC_STATE_DIR (--state-dir)"
        ) from None
    os.ftruncate(lock_fd, 0)
    os.write(lock_fd, f"{os.getpid()}\n".encode())
    return lock_fd
