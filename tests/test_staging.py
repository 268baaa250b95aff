"""New bytes are staged beside the destination before the last checks (so their writeback
overlaps them): what those checks decide against leaves the destination folder as it was, and
a rescan of what is already published stages nothing. Unprivileged: the real pipeline on
tmp_path, owned by whoever runs the tests."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from watchdog.observers.inotify_c import InotifyConstants, inotify_add_watch, inotify_init

from credsync.ledger import Ledger
from credsync.pipeline import Outcome, Pipeline
from credsync.routes import load_routes
from credsync.watcher import parse_events
from tests.helpers import claude_credentials, own_settings, wait_until

CREDENTIALS, SETUP_TOKEN_UPLOAD = ".credentials.json", "claude-setup-token"
SETUP_TOKEN = "sk-ant-oat01-" + "s" * 95 + "AA"


@pytest.fixture
def pipeline(tmp_path: Path) -> Pipeline:
    settings = own_settings(tmp_path)
    return Pipeline(settings, load_routes(settings), Ledger(settings.state_dir))


def destination_folder_state(pipeline: Pipeline) -> tuple[list[str], int]:
    folder = pipeline.settings.claude_dir
    return sorted(os.listdir(folder)), (folder / CREDENTIALS).stat().st_ino


@contextlib.contextmanager
def names_created_in(folder: Path) -> Iterator[list[str]]:
    """The names the kernel reports created in `folder` meanwhile (inotify, read at the end)."""
    created: list[str] = []
    fd = inotify_init()
    os.set_blocking(fd, False)
    try:
        assert inotify_add_watch(fd, os.fsencode(folder), InotifyConstants.IN_CREATE) >= 0
        yield created
        with contextlib.suppress(BlockingIOError):
            created += [os.fsdecode(name) for _wd, _mask, name in parse_events(os.read(fd, 1 << 16))]
    finally:
        os.close(fd)


def write_newer(path: Path, text: str, than: Path) -> None:
    """`path` written, its ctime then moved past `than`'s: the kernel stamps files at a
    clock tick, so two written back to back often share one."""
    path.write_text(text)
    wait_until(lambda: touched(path) > than.stat().st_ctime_ns, timeout=5.0, interval=0.001)


def touched(path: Path) -> int:
    os.utime(path)
    return path.stat().st_ctime_ns


def test_an_upload_a_newer_one_supersedes_leaves_the_destination_and_no_temp_file(pipeline: Pipeline) -> None:
    source, destination = pipeline.settings.source, pipeline.settings.claude_dir / CREDENTIALS
    destination.write_bytes(held := claude_credentials(serial=1))
    (source / CREDENTIALS).write_bytes(claude_credentials(serial=2))
    write_newer(source / SETUP_TOKEN_UPLOAD, SETUP_TOKEN + "\n", than=source / CREDENTIALS)
    inode = destination.stat().st_ino
    with names_created_in(destination.parent) as created:
        assert pipeline.process(CREDENTIALS).outcome is Outcome.SUPERSEDED
    assert len(created) == 1, "the valid upload was not staged before the check that superseded it"
    assert os.listdir(destination.parent) == [CREDENTIALS], "a staged temp file was left behind"
    assert destination.read_bytes() == held and destination.stat().st_ino == inode
    with names_created_in(destination.parent) as created:  # a rescan: the same bytes, decided already
        assert pipeline.process(CREDENTIALS).outcome is Outcome.SUPERSEDED
    assert created == [], "a superseded upload was staged again at a rescan"


def test_a_superseded_upload_is_said_superseded_though_its_destination_folder_is_gone(pipeline: Pipeline) -> None:
    source = pipeline.settings.source
    (source / CREDENTIALS).write_bytes(claude_credentials(serial=5))
    write_newer(source / SETUP_TOKEN_UPLOAD, SETUP_TOKEN + "\n", than=source / CREDENTIALS)
    pipeline.settings.claude_dir.rmdir()
    assert pipeline.process(CREDENTIALS).outcome is Outcome.SUPERSEDED
    assert pipeline.process(SETUP_TOKEN_UPLOAD).outcome is Outcome.FAILED  # the one that would publish


def test_new_bytes_the_destination_already_holds_leave_it_as_it_is(pipeline: Pipeline) -> None:
    # No ledger (a lost state folder): the bytes are new to it, so they are staged, and dropped
    # once the destination is found to hold them already.
    data = claude_credentials(serial=3)
    (pipeline.settings.claude_dir / CREDENTIALS).write_bytes(data)
    (pipeline.settings.claude_dir / CREDENTIALS).chmod(0o600)  # or its mode is repaired: a rewrite
    (pipeline.settings.source / CREDENTIALS).write_bytes(data)
    before = destination_folder_state(pipeline)
    assert pipeline.process(CREDENTIALS).outcome is Outcome.UNCHANGED
    assert destination_folder_state(pipeline) == before


def test_a_rescan_of_what_is_published_stages_nothing(pipeline: Pipeline) -> None:
    (pipeline.settings.source / CREDENTIALS).write_bytes(claude_credentials(serial=4))
    assert pipeline.process(CREDENTIALS).outcome is Outcome.PUBLISHED
    before = destination_folder_state(pipeline)
    with names_created_in(pipeline.settings.claude_dir) as created:
        assert pipeline.process(CREDENTIALS).outcome is Outcome.UNCHANGED
    assert created == [], "a rescan wrote into the destination folder"
    assert destination_folder_state(pipeline) == before
