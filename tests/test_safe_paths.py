"""Folders are reached from / without following a symlink anywhere on the path (no root
needed: links and files made on tmp_path are enough)."""

from __future__ import annotations

import errno
import os
from pathlib import Path, PurePosixPath

import pytest

from credsync import safe_paths
from credsync.safe_paths import describe_folder_error, open_folder, open_subfolders

pytestmark = pytest.mark.system  # root, a real Docker Engine or sshd: see conftest.py


@pytest.fixture(params=["one call", "walk"])
def kernel_walk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test that uses it once with openat2 and once as on a kernel without it (the walk alone)."""
    if request.param == "walk":
        monkeypatch.setattr(safe_paths.KERNEL_WALK, "usable", False)


@pytest.mark.usefixtures("kernel_walk")
def test_a_real_folder_is_opened(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    folder_fd = open_folder(tmp_path / "a" / "b")
    try:
        assert os.fstat(folder_fd).st_ino == os.stat(tmp_path / "a" / "b").st_ino
    finally:
        os.close(folder_fd)


@pytest.mark.usefixtures("kernel_walk")
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


@pytest.mark.usefixtures("kernel_walk")
def test_a_file_or_a_missing_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError) as caught:
        open_folder(tmp_path / "file" / "below")
    assert caught.value.filename == str(tmp_path / "file")
    with pytest.raises(FileNotFoundError) as missing:
        open_folder(tmp_path / "gone" / "below")
    assert describe_folder_error(missing.value) == f"{tmp_path / 'gone'} does not exist"


@pytest.mark.usefixtures("kernel_walk")
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


def test_this_kernel_opens_folders_in_one_call(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    folder_fd = safe_paths.KERNEL_WALK.open(os.fsencode(tmp_path / "a"))
    assert folder_fd is not None and safe_paths.KERNEL_WALK.usable, "openat2 refused on this kernel"
    try:
        assert os.fstat(folder_fd).st_ino == (tmp_path / "a").stat().st_ino
    finally:
        os.close(folder_fd)


def test_a_kernel_without_the_call_falls_back_to_the_walk_for_good(tmp_path: Path) -> None:
    missing = safe_paths.KernelWalk(number=99_999)  # no such system call: ENOSYS
    assert missing.open(os.fsencode(tmp_path)) is None
    assert not missing.usable


def test_the_one_call_refuses_a_link_anywhere_on_the_path(tmp_path: Path) -> None:
    (tmp_path / "real" / "inner").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    for path in (tmp_path / "link", tmp_path / "link" / "inner", Path("/proc/self/cwd")):
        assert safe_paths.KERNEL_WALK.open(os.fsencode(path)) is None, f"followed a link at {path}"
    assert safe_paths.KERNEL_WALK.usable  # a refused link is not a kernel without the call
