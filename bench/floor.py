"""The floor, `python -m bench.floor SOURCE DEST CONTAINER [--owner UID:GID]`: the least any
publisher of uploads can do. Blocks on inotify (close-after-write, moved-to) on SOURCE; for every
name one read returns: read it, write a temp file in DEST, fchown, fsync, rename over DEST/NAME;
then one `kill` (SIGHUP) call for the batch to the Docker Engine API, on a client made at start.
No settle time, validation, ledger, previous generation, folder fsync or check that the container
survived. Says `ready` on stderr once watching and connected, `sent N` after each signal. Its
inotify calls (ctypes, parsed like credsync/watcher.py's `parse_events`) serve the bench too."""

from __future__ import annotations

import argparse
import ctypes
import os
import struct
import sys
from collections.abc import Sequence
from pathlib import Path

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE, IN_Q_OVERFLOW = 0x2, 0x4, 0x8, 0x80, 0x100, 0x4000
EVENT_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, length of the name
READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
_libc = ctypes.CDLL(None, use_errno=True)


def checked(result: int, call: str) -> int:
    if result < 0:
        raise OSError(ctypes.get_errno(), f"{call}: {os.strerror(ctypes.get_errno())}")
    return result


def inotify_init() -> int:
    return checked(_libc.inotify_init1(os.O_CLOEXEC), "inotify_init1")


def add_watch(fd: int, folder: Path, mask: int) -> int:
    return checked(_libc.inotify_add_watch(fd, os.fsencode(folder), mask), f"inotify_add_watch {folder}")


def read_events(fd: int) -> list[tuple[int, int, str]]:
    """(watch descriptor, mask, name) of each event one read returns (blocks until there is one)."""
    data, events, offset = os.read(fd, 1 << 16), [], 0
    while offset + EVENT_HEADER.size <= len(data):
        wd, mask, _cookie, length = EVENT_HEADER.unpack_from(data, offset)
        offset += EVENT_HEADER.size + length
        events.append((wd, mask, os.fsdecode(data[offset - length : offset].rstrip(b"\0"))))
    return events


def publish(source_fd: int, dest_fd: int, name: str, uid: int, gid: int) -> None:
    try:
        fd = os.open(name, READ, dir_fd=source_fd)
    except FileNotFoundError:
        return
    data = b""
    while chunk := os.read(fd, 1 << 16):
        data += chunk
    os.close(fd)
    temp = f".floor.{name}.tmp"
    fd = os.open(temp, CREATE, 0o600, dir_fd=dest_fd)
    try:
        os.write(fd, data)  # a regular file: all of it
        os.fchown(fd, uid, gid)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, name, src_dir_fd=dest_fd, dst_dir_fd=dest_fd)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor")
    parser.add_argument("source", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("container")
    parser.add_argument("--owner", default="1001:1001", help="UID:GID of published files (default 1001:1001)")
    args = parser.parse_args(argv)
    uid, _, gid = args.owner.partition(":")

    import docker

    client = docker.DockerClient(base_url="unix:///var/run/docker.sock", version="auto")
    container_id = client.api.inspect_container(args.container)["Id"]
    inotify = inotify_init()
    add_watch(inotify, args.source, IN_CLOSE_WRITE | IN_MOVED_TO)
    source_fd = os.open(args.source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    dest_fd = os.open(args.dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    print("ready", file=sys.stderr, flush=True)
    sent = 0
    while True:
        names = dict.fromkeys(name for _wd, _mask, name in read_events(inotify) if name)
        for name in names:
            publish(source_fd, dest_fd, name, int(uid), int(gid or uid))
        if names:
            client.api.kill(container_id, signal="SIGHUP")
            sent += 1
            print(f"sent {sent}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
