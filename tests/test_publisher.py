"""The publisher on the real file system, as root: exact bytes, real chown, atomic rename,
and a failed publish leaves the old destination and no temp file."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from credsync.errors import PublishError
from credsync.publisher import StagedFile, keep_private_copy, read_current, remove_stale_temps, write_atomically

pytestmark = pytest.mark.system  # root, a real Docker Engine or sshd: see conftest.py


def test_bytes_owner_and_mode(tmp_path: Path) -> None:
    target = tmp_path / ".credentials.json"
    write_atomically(target, b'{"a": 1}', uid=1001, gid=1001, mode=0o600)
    info = target.stat()
    assert target.read_bytes() == b'{"a": 1}'
    assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (1001, 1001, 0o600)
    assert os.listdir(tmp_path) == [".credentials.json"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o277])
def test_every_mode_is_exact_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    # Neither the umask nor a restrictive one (0o277 takes the owner's write) decides the
    # mode: each umask in a process of its own.
    publish = (
        "import sys; from pathlib import Path; from credsync.publisher import write_atomically\n"
        "for mode in (0o600, 0o644, 0o400):\n"
        "    write_atomically(Path(sys.argv[1]) / oct(mode), b'x', uid=0, gid=0, mode=mode)"
    )
    subprocess.run([sys.executable, "-c", publish, str(tmp_path)], check=True, preexec_fn=lambda: os.umask(umask))
    modes = {path.name: path.stat().st_mode & 0o7777 for path in tmp_path.iterdir()}
    assert modes == {"0o600": 0o600, "0o644": 0o644, "0o400": 0o400}


def test_staged_bytes_change_nothing_until_committed_and_leave_nothing_when_discarded(tmp_path: Path) -> None:
    target = tmp_path / ".credentials.json"
    write_atomically(target, b"old", uid=1001, gid=1001, mode=0o600)
    folder_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        discarded = StagedFile(folder_fd, target, b"new", uid=1001, gid=1001, mode=0o600)
        assert target.read_bytes() == b"old" and len(os.listdir(tmp_path)) == 2
        discarded.discard()
        assert os.listdir(tmp_path) == [".credentials.json"] and target.read_bytes() == b"old"
        committed = StagedFile(folder_fd, target, b"new", uid=1001, gid=1001, mode=0o600)
        committed.commit()
        committed.discard()  # after a commit: removes nothing (the name is the destination's now)
    finally:
        os.close(folder_fd)
    assert os.listdir(tmp_path) == [".credentials.json"] and target.read_bytes() == b"new"
    assert (target.stat().st_uid, target.stat().st_mode & 0o7777) == (1001, 0o600)


def test_replacing_is_a_rename_not_an_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "f"
    write_atomically(target, b"one", uid=0, gid=0, mode=0o600)
    with target.open("rb") as old_reader:
        write_atomically(target, b"two", uid=0, gid=0, mode=0o600)
        assert old_reader.read() == b"one"  # an open reader keeps the complete old version
    assert target.read_bytes() == b"two"


def test_a_symlink_at_the_destination_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (tmp_path / "dest").mkdir()
    target = tmp_path / "dest" / "f"
    target.symlink_to(victim)
    assert read_current(target, 100) is None
    write_atomically(target, b"new", uid=0, gid=0, mode=0o600)
    assert victim.read_bytes() == b"keep" and not target.is_symlink() and target.read_bytes() == b"new"


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_disk_full_leaves_the_old_file_and_no_temp(tiny_tmpfs: Path) -> None:
    target = tiny_tmpfs / "f"
    write_atomically(target, b"old", uid=1001, gid=1001, mode=0o600)
    (tiny_tmpfs / "filler").write_bytes(b"\0" * (60 << 10))
    with pytest.raises(PublishError, match="no space left"):
        write_atomically(target, b"n" * (32 << 10), uid=1001, gid=1001, mode=0o600)
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tiny_tmpfs)) == ["f", "filler"]


def test_read_only_destination_is_a_clear_error(tiny_tmpfs: Path) -> None:
    target = tiny_tmpfs / "f"
    write_atomically(target, b"old", uid=0, gid=0, mode=0o600)
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
    try:
        with pytest.raises(PublishError, match="read-only"):
            write_atomically(target, b"new", uid=0, gid=0, mode=0o600)
        assert target.read_bytes() == b"old"
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(tiny_tmpfs)], check=True)


def test_missing_destination_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PublishError, match="cannot open the destination folder"):
        write_atomically(tmp_path / "absent" / "f", b"x", uid=0, gid=0, mode=0o600)


def test_only_credsync_temp_files_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".credsync..credentials.json.0a1b2c3d.tmp").write_bytes(b"partial")
    (tmp_path / ".credentials.json").write_bytes(b"keep")
    (tmp_path / "other.tmp").write_bytes(b"keep")
    removed = remove_stale_temps([tmp_path, tmp_path / "absent"])
    assert [path.name for path in removed] == [".credsync..credentials.json.0a1b2c3d.tmp"]
    assert sorted(os.listdir(tmp_path)) == [".credentials.json", "other.tmp"]


def test_private_copies_are_0600_in_a_0700_folder(tmp_path: Path) -> None:
    keep_private_copy(tmp_path / "state" / "previous" / "x", b"secret")
    assert (tmp_path / "state" / "previous").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "state" / "previous" / "x").stat().st_mode & 0o777 == 0o600
