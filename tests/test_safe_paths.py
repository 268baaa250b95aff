"""Folders are reached from / without following a symlink anywhere on the path (no root
needed: links and files made on tmp_path are enough)."""

from __future__ import annotations

import errno
import os
from pathlib import Path, PurePosixPath

import pytest

from credsync.safe_paths import describe_folder_error, open_folder, open_subfolders

pytestmark = pytest.mark.system  # root, a real Docker Engine or sshd: see conftest.py


def test_a_real_folder_is_opened(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    folder_fd = open_folder(tmp_path / "a" / "b")
    try:
        assert os.fstat(folder_fd).st_ino == os.stat(tmp_path / "a" / "b").st_ino
    finally:
        os.close(folder_fd)


@pytest.mark.parametrize("where", ["last", "middle"])
def test_a_symlink_anywhere_on_the_path_is_refused_and_named(tmp_path: Path, where: str) -> None:
    (tmp_path / "real" / "inner").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    path = tmp_path / "link" if where == "last" else tmp_path / "link" / "inner"
    with pytest.raises(OSError) as caught:
        open_folder(path)
    assert caught.value.errno == errno.ENOTDIR and caught.value.filename == str(tmp_path / "link")
    assert (
        describe_folder_error(caught.value)
        == f"{tmp_path / 'link'} is a symlink or not a folder; credsync follows no links"
    )


def test_a_file_or_a_missing_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError) as caught:
        open_folder(tmp_path / "file" / "below")
    assert caught.value.filename == str(tmp_path / "file")
    with pytest.raises(FileNotFoundError) as missing:
        open_folder(tmp_path / "gone" / "below")
    assert describe_folder_error(missing.value) == f"{tmp_path / 'gone'} does not exist"


def test_relative_paths_and_dot_dot_are_refused(tmp_path: Path) -> None:
    for path in (Path("relative"), Path(f"{tmp_path}/../x")):
        with pytest.raises(OSError) as caught:
            open_folder(path)
        assert caught.value.errno == errno.EINVAL


def test_subfolders_below_an_open_folder_refuse_links_and_keep_the_parent_open(tmp_path: Path) -> None:
    (tmp_path / "aws").mkdir()
    (tmp_path / "linked").symlink_to(tmp_path / "aws")
    parent = open_folder(tmp_path)
    try:
        child = open_subfolders(parent, PurePosixPath("aws"))
        os.close(child)
        with pytest.raises(NotADirectoryError):
            open_subfolders(parent, PurePosixPath("linked"))
        os.fstat(parent)  # still open
    finally:
        os.close(parent)
