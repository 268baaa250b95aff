"""Which process receives a signal sent to a container, and does it catch it? Read from
/proc of the process (PID 1, or its child when PID 1 is an init that forwards signals)."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Protocol

DEFAULT_IGNORED = frozenset({signal.SIGWINCH, signal.SIGCHLD, signal.SIGURG, signal.SIGCONT})
# Inits that forward signals to their child instead of handling them (tini is docker-init).
FORWARDING_INITS = frozenset({"docker-init", "tini", "dumb-init", "catatonit"})
# What to do when the receiver has no handler: said by the notifier and by the doctor.
NO_HANDLER_FIX = "set CREDSYNC_NOTIFY=exec or http, or give the consumer a handler"


@dataclass(frozen=True)
class ProcStatus:
    name: str
    caught: int  # SigCgt bit mask
    ignored: int  # SigIgn

    def catches(self, signum: int) -> bool:
        return bool(self.caught >> (signum - 1) & 1)


class ProcReadError(Exception):
    """A /proc file could not be read or made no sense. Fixed messages only: the text came from
    the consumer's container and may hold anything, its secrets included."""


def parse_status(text: str) -> ProcStatus:
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    try:
        return ProcStatus(
            fields.get("Name", "?").strip()[:16],
            int(fields.get("SigCgt", "0").strip(), 16),
            int(fields.get("SigIgn", "0").strip(), 16),
        )
    except ValueError:
        raise ProcReadError("the process status has no readable signal masks") from None


def parse_pid(text: str) -> int:
    if not (text.isascii() and text.isdigit()):  # str.isdigit also takes "²", which int() refuses
        raise ProcReadError("the init's child list is not a process id")
    return int(text)


class ProcReader(Protocol):
    root_pid: int

    def read(self, pid: int, name: str) -> str: ...


@dataclass(frozen=True)
class Verdict:
    catches: bool
    explanation: str  # names the process judged: "node (PID 1) …", "node (child of docker-init) …"


def receiver_verdict(reader: ProcReader, signal_name: str) -> Verdict:
    signum = signal.Signals[signal_name].value
    first = parse_status(reader.read(reader.root_pid, "status"))
    status, label = first, f"{first.name} (PID 1)"
    if first.name in FORWARDING_INITS:
        children = reader.read(reader.root_pid, f"task/{reader.root_pid}/children").split()
        if len(children) != 1:
            return Verdict(False, f"init {first.name} has {len(children)} children to forward {signal_name} to")
        status = parse_status(reader.read(parse_pid(children[0]), "status"))
        label = f"{status.name} (child of {first.name})"
    if status.catches(signum):
        return Verdict(True, f"{label} handles {signal_name}")
    # The kernel drops unhandled signals to a namespace's PID 1; any other process gets the default action.
    harmless = status is first or signum in DEFAULT_IGNORED or status.ignored >> (signum - 1) & 1
    fate = "so it would be ignored" if harmless else "so it would kill the process"
    return Verdict(False, f"{label} has no {signal_name} handler, {fate}")
