"""The last notification's outcome, kept in the state folder for `credsync status`."""

from __future__ import annotations

import contextlib
from pathlib import Path

from pydantic import BaseModel, ValidationError

from credsync.errors import PublishError
from credsync.publisher import keep_private_copy
from credsync.timefmt import now_ms

NOTIFICATION_FILE = "notification.json"


class NotificationRecord(BaseModel):
    at_ms: int
    result: str
    routes: str


def write_notification(state_dir: Path, result: str, routes: str) -> None:
    record = NotificationRecord(at_ms=now_ms(), result=result, routes=routes)
    with contextlib.suppress(PublishError):  # status then shows an older result; publishing goes on
        keep_private_copy(state_dir / NOTIFICATION_FILE, record.model_dump_json().encode())


def read_notification(state_dir: Path) -> NotificationRecord | None:
    """None when there is none yet, or it cannot be read as one (status then says "none yet")."""
    try:
        return NotificationRecord.model_validate_json((state_dir / NOTIFICATION_FILE).read_bytes())
    except (OSError, ValidationError):
        return None
