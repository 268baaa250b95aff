"""Signalling a process of credsync's own PID namespace (CREDSYNC_NOTIFY_TARGET=pid:N) with no
Docker Engine and no socket: the sidecar joins the webhook's namespace (compose
`pid: "service:webhook"`), so the webhook's PID 1 is in its /proc. The process is pinned by a
pidfd, judged (it is signalled only if it catches the signal), signalled with CAP_KILL, and
watched through a second pidfd for the grace period: its exit wakes the check at once, and a
changed start time says PID N is another process now."""

from __future__ import annotations

import os
import select
from dataclasses import dataclass

from credsync.check import Check
from credsync.notify.delivery import DeliveryFailed
from credsync.notify.direct_signal import DirectUnavailable, signal_directly
from credsync.notify.proc_readers import HostProc
from credsync.notify.procstatus import NO_HANDLER_FIX, ProcReadError, Verdict, receiver_verdict


@dataclass(frozen=True)
class ProcessSnapshot:
    pid: int
    name: str
    start_ticks: int  # since boot, in clock ticks: a process that replaced it has another


def snapshot(pid: int) -> ProcessSnapshot:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as file:
            text = file.read(4096)
    except OSError as error:
        raise ProcReadError(f"no process {pid} in credsync's PID namespace ({error.strerror})") from None
    return parse_stat(pid, text)


def parse_stat(pid: int, text: str) -> ProcessSnapshot:
    """`pid (comm) state ppid …`: comm may hold spaces and parentheses, so it ends at the last ')'.
    Field 22 is the start time."""
    opened, closed = text.find("("), text.rfind(")")
    fields = text[closed + 2 :].split()
    if opened < 0 or closed < opened or len(fields) < 20 or not fields[19].isdigit():
        raise ProcReadError(f"/proc/{pid}/stat makes no sense")
    return ProcessSnapshot(pid, text[opened + 1 : closed][:16], int(fields[19]))


@dataclass(frozen=True)
class Signalled:
    """A process that was sent the signal; `survived` proves it is still the same and alive."""

    before: ProcessSnapshot
    watch_fd: int

    def survived(self, grace_s: float) -> None:
        """Raises DeliveryFailed if it exited within `grace_s` or PID N is another process now."""
        try:
            poller = select.poll()
            poller.register(self.watch_fd, select.POLLIN)
            if poller.poll(int(grace_s * 1000)):  # a pidfd is readable once its process has exited
                raise DeliveryFailed(f"{self.before.name} (pid {self.before.pid}) exited after the notification")
        finally:
            os.close(self.watch_fd)
        try:
            after = snapshot(self.before.pid)
        except ProcReadError:
            raise DeliveryFailed(f"{self.before.name} (pid {self.before.pid}) is gone after the notification") from None
        if after.start_ticks != self.before.start_ticks:
            raise DeliveryFailed(f"{self.before.name} (pid {self.before.pid}) was replaced after the notification")


def signal_in_own_namespace(pid: int, signal_name: str) -> tuple[Verdict, Signalled | None]:
    """The verdict, and what was signalled (None when it does not catch the signal). Raises
    ProcReadError when the process is gone (retried) and DirectUnavailable when the kernel,
    a seccomp filter or a missing CAP_KILL forbids it."""
    before = snapshot(pid)
    try:
        watch_fd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise ProcReadError(f"no process {pid} in credsync's PID namespace") from None
    except OSError as error:  # ENOSYS (old kernel), EPERM (a seccomp filter)
        raise DirectUnavailable(f"pidfd_open: {error.strerror}") from None
    try:
        verdict = signal_directly(
            HostProc(pid), signal_name, receiver_verdict, lambda: snapshot(pid).start_ticks == before.start_ticks
        )
    except BaseException:
        os.close(watch_fd)
        raise
    if not verdict.catches:
        os.close(watch_fd)
        return verdict, None
    return verdict, Signalled(before, watch_fd)


def own_namespace_check(pid: int, signal_name: str, *, auto: bool) -> Check:
    """The doctor's look at a pid:N target: there, and does it catch the signal? Read-only."""
    what = f"notify target pid:{pid} (no Docker socket): "
    try:
        verdict = receiver_verdict(HostProc(pid), signal_name)
    except ProcReadError as error:
        fix = 'share the webhook\'s PID namespace (compose: pid: "service:webhook")'
        return Check(False, what + "signal preflight", f"{error}; {fix}")
    if verdict.catches:
        return Check(True, what + verdict.explanation)
    if auto:
        return Check(True, what + verdict.explanation + "; auto mode publishes without signalling")
    return Check(False, what + verdict.explanation, NO_HANDLER_FIX)
