"""Signalling the receiver straight, not through the Engine (about 12 ms saved per notification):
where credsync sees the target's process, in the host's /proc or in the target's PID namespace
shared with the sidecar. A pidfd pins the process before its /proc is read, so the signal goes
to the process that was judged, or to none. The kernel adds its own guard: a namespace's PID 1
receives only the signals it has a handler for, whoever sends them."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from credsync.notify.procstatus import ProcReader, ProcReadError, Verdict


class DirectUnavailable(Exception):
    """This kernel, seccomp filter or capability set does not allow it: go through the Engine."""


def signal_directly(
    reader: ProcReader, signal_name: str, judge: Callable[[ProcReader, str], Verdict], belongs: Callable[[], bool]
) -> Verdict:
    """Pin `reader.root_pid`, check it still `belongs` to the target, judge it, and signal it
    only if it catches the signal. Returns the verdict; ProcReadError when the process is gone
    (retried), DirectUnavailable when a pidfd or the signal is not allowed here."""
    try:
        pidfd = os.pidfd_open(reader.root_pid)
    except ProcessLookupError:
        raise ProcReadError("the target's process is gone") from None
    except OSError as error:  # ENOSYS (old kernel), EPERM (a seccomp filter)
        raise DirectUnavailable(f"pidfd_open: {error.strerror}") from None
    try:
        if not belongs():
            raise ProcReadError("the process is no longer the target's")
        verdict = judge(reader, signal_name)
        if verdict.catches:
            try:
                signal.pidfd_send_signal(pidfd, signal.Signals[signal_name])
            except ProcessLookupError:
                raise ProcReadError("the target's process ended before the signal") from None
            except OSError as error:  # EPERM: another UID and no CAP_KILL
                raise DirectUnavailable(f"pidfd_send_signal: {error.strerror}") from None
        return verdict
    finally:
        os.close(pidfd)
