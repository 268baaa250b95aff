"""The last notification's outcome, kept in the state folder for `credsync status`."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from credsync.errors import PublishError
from credsync.publisher import keep_private_copy
from credsync.timefmt import now_ms

NOTIFICATION_FILE = "notification.json"


def write_notification(state_dir: Path, result: str, routes: str) -> None:
    record = {"at_ms": now_ms(), "result": result, "routes": routes}
    with contextlib.suppress(PublishError):  # status then shows an older result; publishing goes on
        keep_private_copy(state_dir / NOTIFICATION_FILE, json.dumps(record).encode())


def read_notification(state_dir: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((state_dir / NOTIFICATION_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
