"""Liveness for supervisors: a health file for Docker's HEALTHCHECK (read by health_probe.py) and
sd_notify messages for systemd (READY=1, WATCHDOG=1, STATUS=, STOPPING=1)."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

from loguru import logger
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from credsync.errors import PublishError, one_line
from credsync.health_probe import HEALTH_FILE, format_record
from credsync.publisher import keep_private_copy
from credsync.tally import Tally

HEARTBEAT_S = 30.0


class SystemdEnvironment(BaseSettings):
    """What systemd hands a Type=notify service; not credsync settings, so no prefix."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    notify_socket: str | None = None
    watchdog_usec: int | None = Field(default=None, gt=0)
    watchdog_pid: int | None = None
    journal_stream: str | None = None


class SystemdNotify:
    def __init__(self, socket_path: str) -> None:
        # A leading "@" names a socket in the abstract namespace.
        self.address = "\0" + socket_path[1:] if socket_path.startswith("@") else socket_path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def send(self, *assignments: str) -> None:
        with contextlib.suppress(OSError):  # systemd gone or socket full: never break the daemon for it
            self._socket.sendto("\n".join(assignments).encode(), self.address)

    def close(self) -> None:
        self._socket.close()


class Liveness:
    """The daemon reports here; this writes the health file and talks to systemd."""

    def __init__(self, state_dir: Path, systemd: SystemdEnvironment, tally: Tally) -> None:
        self.health_path = state_dir / HEALTH_FILE
        self.tally = tally
        watchdog_applies = systemd.watchdog_usec is not None and systemd.watchdog_pid in (None, os.getpid())
        self.systemd = SystemdNotify(systemd.notify_socket) if systemd.notify_socket else None
        self.interval_s = HEARTBEAT_S
        if watchdog_applies and systemd.watchdog_usec is not None:
            self.interval_s = min(HEARTBEAT_S, systemd.watchdog_usec / 2_000_000)
        self.uses_watchdog = watchdog_applies and self.systemd is not None
        self._ready = False
        # A predecessor killed outright (a power loss) left its record, and in a container its
        # pid (1) is alive again: it would read as healthy before this daemon's first reconcile.
        # Called only while holding the state lock, so never another daemon's record.
        self.came_back_ms: int | None = None
        with contextlib.suppress(FileNotFoundError):
            self.health_path.unlink()
            # A record left behind means the predecessor never stopped cleanly: killed, or (a
            # sidecar in the webhook's PID namespace) ended with it when the webhook restarted.
            self.came_back_ms = time.time_ns() // 1_000_000
            logger.info("came back after an unclean stop; what was published stays, and is not published again")

    def ready(self, *, watching: bool, failing: int) -> None:
        """`failing`: uploads whose publish failed and waits for its retry."""
        self._ready = True
        self._write_health(watching, failing)
        if self.systemd is not None:
            self.systemd.send("READY=1", f"STATUS=watching, first reconcile done (pid {os.getpid()})")

    def beat(self, *, watching: bool, failing: int) -> None:
        """Called every `interval_s` and whenever the watcher's state or `failing` changes."""
        self._write_health(watching, failing)
        if self.uses_watchdog and self.systemd is not None:
            self.systemd.send("WATCHDOG=1")  # the loop is alive; a lost watcher shows in STATUS and health

    def _write_health(self, watching: bool, failing: int) -> None:
        self.tally.health(ready=self._ready, watching=watching)
        record = format_record(
            os.getpid(),
            ready=self._ready,
            watching=watching,
            failing=failing,
            heartbeat_ms=time.time_ns() // 1_000_000,
            interval_s=self.interval_s,
            came_back_ms=self.came_back_ms,
        )
        with contextlib.suppress(PublishError):  # a full state disk is reported by publishing; health goes stale
            keep_private_copy(self.health_path, record.encode())

    def status(self, text: str) -> None:
        if self.systemd is not None:
            self.systemd.send(f"STATUS={one_line(text)}")

    def stopping(self) -> None:
        self.tally.health(ready=False, watching=False)
        if self.systemd is not None:
            self.systemd.send("STOPPING=1")
            self.systemd.close()
        with contextlib.suppress(OSError):
            self.health_path.unlink()
