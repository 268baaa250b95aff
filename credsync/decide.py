"""What to do with a valid upload, given the ledger and the destination. Pure logic."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum


class Action(Enum):
    PUBLISH = "published"  # a new upload
    REPAIR = "repaired"  # the last published upload again: the destination is gone or broken
    UNCHANGED = "unchanged"  # the destination already holds these bytes
    KEEP_CONSUMER = "kept-consumer-change"  # the consumer rewrote it since; an old upload must not revert it


def decide(
    upload_sha: str,
    last_published_sha: str | None,
    destination_sha: str | None,
    destination_sound: Callable[[], bool],
) -> Action:
    """`destination_sha` is None when the destination is missing; `destination_sound()` says
    whether it still parses, asked only when it decides (it validates the whole file)."""
    if destination_sha == upload_sha:
        return Action.UNCHANGED
    if upload_sha != last_published_sha:
        return Action.PUBLISH
    if destination_sha is None or not destination_sound():
        return Action.REPAIR
    return Action.KEEP_CONSUMER
