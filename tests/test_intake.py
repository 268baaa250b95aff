"""Intake on the real file system: hostile uploads are refused from their metadata, before
any read, and nothing blocks."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from credsync.errors import Rejection, SourceUnavailable, UploadMissing, UploadUnsettled
from credsync.intake import SourceFolder
from tests.helpers import wait_until

MAX = 1 << 20


def read(source: Path, name: str, settle_ns: int = 0) -> bytes:
    return SourceFolder(source).read(name, max_bytes=MAX, settle_ns=settle_ns).data


def rejection(source: Path, name: str) -> str:
    with pytest.raises(Rejection) as caught:
        read(source, name)
    return caught.value.reason


def test_a_regular_file_is_read_whole(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 200_000)
    upload = SourceFolder(tmp_path).read("f", max_bytes=MAX, settle_ns=0)
    assert upload.data == b"x" * 200_000 and len(upload.sha256) == 64


def test_symlink_to_a_root_only_file_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "root-only"
    secret.write_text("root secret")
    secret.chmod(0o600)
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "f").symlink_to(secret)
    assert "symlink" in rejection(tmp_path / "up", "f")


def test_dangling_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").symlink_to(tmp_path / "nowhere")
    assert "symlink" in rejection(tmp_path, "f")


def test_symlinked_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "credentials").write_text("[a]\n")
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "aws").symlink_to(tmp_path / "real")
    assert "symlink" in rejection(tmp_path / "up", "aws/credentials")


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "f")
    outcome: list[str] = []
    reader = threading.Thread(target=lambda: outcome.append(rejection(tmp_path, "f")), daemon=True)
    reader.start()
    reader.join(5)
    assert outcome and "FIFO" in outcome[0]


def test_socket_is_refused(tmp_path: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "f"))
    try:
        assert "socket" in rejection(tmp_path, "f")
    finally:
        server.close()


@pytest.mark.system  # mknod needs root
def test_device_node_is_refused(tmp_path: Path) -> None:
    os.mknod(tmp_path / "f", 0o600 | 0o020000, os.makedev(1, 3))  # a character device: /dev/null
    assert "character device" in rejection(tmp_path, "f")


def test_hardlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("{}")
    os.link(tmp_path / "f", tmp_path / "g")
    assert "2 hard links" in rejection(tmp_path, "f")


def test_directory_in_place_of_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").mkdir()
    assert "directory" in rejection(tmp_path, "f")


def test_huge_sparse_file_is_refused_without_reading(tmp_path: Path) -> None:
    with (tmp_path / "f").open("wb") as handle:
        handle.truncate(10 << 30)
    assert f"10737418240 bytes, over the limit of {MAX}" in rejection(tmp_path, "f")


def test_missing_upload_and_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(UploadMissing):
        read(tmp_path, "f")
    with pytest.raises(UploadMissing):
        read(tmp_path, "aws/credentials")
    with pytest.raises(SourceUnavailable, match="does not exist"):
        read(tmp_path / "gone", "f")


def test_a_fresh_write_is_unsettled(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("{}")
    with pytest.raises(UploadUnsettled):
        read(tmp_path, "f", settle_ns=60 * 10**9)
    assert read(tmp_path, "f", settle_ns=0) == b"{}"


def test_a_future_mtime_does_not_hold_an_upload_back(tmp_path: Path) -> None:
    """`scp -p` keeps the sender's mtime, which may be ahead: settling goes by ctime."""
    upload = tmp_path / "f"
    upload.write_text("{}")
    in_an_hour = time.time() + 3600
    os.utime(upload, (in_an_hour, in_an_hour))
    wait_until(lambda: settled(tmp_path, "f", settle_ns=50_000_000), timeout=2)


def settled(source: Path, name: str, settle_ns: int) -> bool:
    try:
        read(source, name, settle_ns)
    except UploadUnsettled:
        return False
    return True
