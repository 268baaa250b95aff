"""What building the sidecar image needs where containers reach no package index (here): a
Debian base image made locally, and a wheelhouse for the image's own Python and platform served
on 127.0.0.1. These are the offline build arguments; the build itself is the tests' own
`docker build` (or the compose file's `build:`), never a script."""

from __future__ import annotations

import functools
import http.server
import os
import platform
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.docker_env import REPO

BASE_IMAGE = "credsync-base:bookworm"


@dataclass(frozen=True)
class OfflineBuild:
    base_image: str
    wheels_url: str
    wheels_dir: Path

    def build_args(self) -> list[str]:
        return [
            "--network",
            "host",
            "--build-arg",
            f"BASE_IMAGE={self.base_image}",
            "--build-arg",
            f"WHEELS_URL={self.wheels_url}",
        ]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # the http.server API
        pass


@pytest.fixture(scope="session")
def offline_build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OfflineBuild]:
    subprocess.run(["bash", str(REPO / "scripts" / "build-base-image"), BASE_IMAGE], check=True, timeout=600)
    wheels = tmp_path_factory.mktemp("wheels")
    requirements = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "requirements.py")], check=True, capture_output=True, text=True
    ).stdout.split()
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check"),
            *("--dest", str(wheels), "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp"),
            *("--platform", f"manylinux2014_{platform.machine()}", *requirements),
        ],
        check=True,
        timeout=600,
    )
    handler = functools.partial(QuietHandler, directory=str(wheels))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield OfflineBuild(BASE_IMAGE, f"http://127.0.0.1:{server.server_address[1]}/", wheels)
    finally:
        server.shutdown()


def clean_clone(destination: Path) -> Path:
    """The repository's tracked files as they are now, nothing prepared beside them (what a
    fresh `git clone` holds, including uncommitted edits of tracked files)."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], check=True, capture_output=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if not source.is_file():
            continue  # deleted in the working tree
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        os.chmod(target, source.stat().st_mode)
    return destination
