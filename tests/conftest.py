from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from credsync.logs import configure_logging
from tests.helpers import Folders, WatchProcess, assert_no_canary, make_folders


@pytest.fixture(scope="session", autouse=True)
def running_as_root() -> None:
    # Real chown to 1001 needs root; the README's test command runs the suite as root.
    assert os.geteuid() == 0, "the test suite runs as root (real chown to UID 1001): use the README's test command"


@pytest.fixture
def folders(tmp_path: Path) -> Folders:
    return make_folders(tmp_path)


@pytest.fixture
def captured_log() -> Iterator[list[str]]:
    """In-process credsync log lines (JSON), checked for the canary afterwards."""
    lines: list[str] = []
    configure_logging("json", "DEBUG")
    handler = logger.add(lines.append, format="{message}", level="DEBUG", serialize=True)
    yield lines
    logger.remove(handler)
    assert_no_canary("".join(lines), "the in-process log")


@pytest.fixture
def watch(folders: Folders) -> Iterator[WatchProcess]:
    """A running `credsync watch` on the test's folders, ready (first reconcile done)."""
    process = WatchProcess(folders, ["--settle-ms=50"])
    try:
        yield process.ready()
    finally:
        process.stop()
