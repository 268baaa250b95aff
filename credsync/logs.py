"""Logging with loguru: one line per decision, as `key=value` text or one JSON object per line.
Every value passes through `printable`, so hostile file names cannot forge or colour lines."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from loguru import logger

from credsync.errors import printable
from credsync.settings import LogFormat, LogLevel

if TYPE_CHECKING:
    from loguru import Message, Record


# sd-daemon(3) priority prefixes: journald strips them and files the line at that priority.
JOURNAL_PRIORITY = {"TRACE": 7, "DEBUG": 7, "INFO": 6, "SUCCESS": 5, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


def configure_logging(log_format: LogFormat, level: LogLevel, *, journal: bool = False) -> None:
    """`journal`: stderr is systemd's journal, which stamps each line itself and reads a `<N>`
    prefix as its priority (so `journalctl -p warning` finds rejections)."""
    logger.remove()
    render = render_json if log_format == "json" else render_journal if journal else render_text

    def write(message: Message) -> None:
        line = render(message.record)
        if journal:
            line = f"<{JOURNAL_PRIORITY.get(message.record['level'].name, 6)}>{line}"
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    logger.add(write, level=level, format="{message}", backtrace=False, diagnose=False)
    # Libraries' own logging (urllib3's retries while the Engine is down, say) would reach stderr
    # through logging's last-resort handler: plain text between the JSON lines, written from
    # another thread, even cut into one of them. credsync reports those conditions itself.
    root = logging.getLogger()
    if not any(isinstance(handler, logging.NullHandler) for handler in root.handlers):
        root.addHandler(logging.NullHandler())


def stderr_is_journal(journal_stream: str | None) -> bool:
    """systemd sets JOURNAL_STREAM to the device:inode of the journal's stream; it counts only
    while stderr is still that stream (not redirected since)."""
    if not journal_stream:
        return False
    try:
        info = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return journal_stream == f"{info.st_dev}:{info.st_ino}"


def render_text(record: Record) -> str:
    stamp = record["time"].strftime("%Y-%m-%dT%H:%M:%S.%f%z")
    return f"{stamp[:23]}{stamp[26:]} {render_journal(record)}"


def render_journal(record: Record) -> str:
    """The text line without its time (journald has its own)."""
    fields = " ".join(f"{key}={quote(value)}" for key, value in record["extra"].items())
    line = f"{record['level'].name:<7} {printable(record['message'])}"
    return f"{line} {fields}" if fields else line


def render_json(record: Record) -> str:
    document: dict[str, Any] = {
        "time": record["time"].isoformat(timespec="milliseconds"),
        "level": record["level"].name,
        "message": record["message"],
        **record["extra"],
    }
    return json.dumps(document, default=str, ensure_ascii=True)


def quote(value: object) -> str:
    text = printable(str(value))
    return json.dumps(text) if (" " in text or '"' in text or not text) else text
