"""Logging with loguru: one line per decision, as `key=value` text or one JSON object per line.
Every value passes through `printable`, so hostile file names cannot forge or colour lines."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from loguru import logger

from credsync.errors import printable
from credsync.settings import LogFormat, LogLevel

if TYPE_CHECKING:
    from loguru import Message, Record


def configure_logging(log_format: LogFormat, level: LogLevel) -> None:
    logger.remove()
    sink = write_json if log_format == "json" else write_text
    logger.add(sink, level=level, format="{message}", backtrace=False, diagnose=False)


def write_text(message: Message) -> None:
    sys.stderr.write(render_text(message.record) + "\n")
    sys.stderr.flush()


def write_json(message: Message) -> None:
    sys.stderr.write(render_json(message.record) + "\n")
    sys.stderr.flush()


def render_text(record: Record) -> str:
    stamp = record["time"].strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
    fields = " ".join(f"{key}={quote(value)}" for key, value in record["extra"].items())
    line = f"{stamp} {record['level'].name:<7} {printable(record['message'])}"
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
