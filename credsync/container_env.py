"""Is credsync running in a container, and which one? From /proc/self/mountinfo: Docker
bind-mounts /etc/hostname from /var/lib/docker/containers/<id>/."""

from __future__ import annotations

import re
from pathlib import Path

CONTAINER_ID_IN_MOUNTS = re.compile(r"/containers/([0-9a-f]{64})/")


def own_container_id(mountinfo: str) -> str | None:
    match = CONTAINER_ID_IN_MOUNTS.search(mountinfo)
    return match.group(1) if match else None


def current_container_id() -> str | None:
    try:
        return own_container_id(Path("/proc/self/mountinfo").read_text())
    except OSError:
        return None
