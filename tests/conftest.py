from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.helpers import CLAUDE_CLI, Folders, WatchProcess, job_workspace, make_folders

# Property tests explore 100 examples each in the fast tier, 300 in the whole suite
# (scripts/test sets HYPOTHESIS_PROFILE=thorough).
for profile, examples in (("fast", 100), ("thorough", 300)):
    settings.register_profile(
        profile, max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))

# Fixture modules: a real Docker Engine, a real sshd, what an offline image build needs.
pytest_plugins = ["tests.docker_env", "tests.sshd", "tests.image_build"]


@pytest.fixture(autouse=True)
def running_as_root(request: pytest.FixtureRequest) -> None:
    """System tests (marked `system`) need root: real chown to 1001, a Docker Engine, sshd. The
    rest (pure logic, and the daemon in-process on tmp_path) run as anyone: `pytest -m "not system"`."""
    if request.node.get_closest_marker("system") is not None:
        assert os.geteuid() == 0, "system tests run as root (real chown to UID 1001): use the README's test command"


@pytest.fixture(scope="session")
def claude() -> Path:
    """The real consumer, Claude Code's CLI from npm (scripts/test-deps installs it)."""
    if not CLAUDE_CLI.exists():  # never skipped: without the real consumer this proves nothing
        pytest.fail(f"{CLAUDE_CLI} is missing: run 'bash scripts/test-deps'")
    return CLAUDE_CLI


@pytest.fixture
def workspace() -> Iterator[Path]:
    """A job's private /workspace, removed after."""
    with job_workspace() as folder:
        yield folder


@pytest.fixture
def folders(tmp_path: Path) -> Folders:
    return make_folders(tmp_path)


@pytest.fixture
def watch(folders: Folders) -> Iterator[WatchProcess]:
    """A running `credsync watch` on the test's folders, ready (first reconcile done)."""
    process = WatchProcess(folders, ["--settle-ms=50"])
    try:
        yield process.ready()
    finally:
        process.stop()
