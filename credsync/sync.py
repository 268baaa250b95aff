"""`credsync sync`: every route once, waiting a bounded time for uploads still being written."""

from __future__ import annotations

import time

from loguru import logger

from credsync.pipeline import Outcome, Pipeline, Result

SYNC_SETTLE_LIMIT_S = 10.0


def sync_once(pipeline: Pipeline) -> list[Result]:
    """Every route once; an upload still being written is waited for, up to a bound."""
    results = [pipeline.process(route.upload) for route in pipeline.routes]
    deadline = time.monotonic() + SYNC_SETTLE_LIMIT_S
    while time.monotonic() < deadline:
        unsettled = [result.name for result in results if result.outcome is Outcome.UNSETTLED]
        if not unsettled:
            return results
        time.sleep(max(pipeline.settings.settle_ms / 1000, 0.05))  # the quiet time the upload needs
        results = [result for result in results if result.outcome is not Outcome.UNSETTLED]
        results += [pipeline.process(name) for name in unsettled]
    for result in results:
        if result.outcome is Outcome.UNSETTLED:
            logger.bind(route=result.name).warning(f"still being written after {SYNC_SETTLE_LIMIT_S:g}s; not published")
    return results
