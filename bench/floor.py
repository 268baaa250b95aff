"""The floor: the least any publisher of uploads can do, as one small loop.

    python bench/floor.py SOURCE DEST CONTAINER [--owner UID:GID]

Blocks on inotify (close-after-write, moved-to) on SOURCE; for every name in what one read
returns: read the upload, write a temp file in DEST, fchown, fsync, rename over DEST/NAME; then
one `kill` (SIGHUP) call to the Docker Engine API on a client made once at start-up, for the
whole batch. No settle time, no validation, no ledger, no previous generation, no folder fsync,
no check that the container survived. Says `ready` on stderr once watching and connected, and
`sent N` after each signal (after the measured path). Ends on SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from common import DOCKER_SOCKET, IN_CLOSE_WRITE, IN_MOVED_TO, Inotify  # bench/ is sys.path[0] for a script

READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


def publish(source_fd: int, dest_fd: int, name: str, uid: int, gid: int) -> None:
    try:
        fd = os.open(name, READ, dir_fd=source_fd)
    except FileNotFoundError:
        return
    try:
        data = b""
        while chunk := os.read(fd, 1 << 16):
            data += chunk
    finally:
        os.close(fd)
    temp = f".floor.{name}.tmp"
    fd = os.open(temp, CREATE, 0o600, dir_fd=dest_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fchown(fd, uid, gid)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, name, src_dir_fd=dest_fd, dst_dir_fd=dest_fd)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("source", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("container")
    parser.add_argument("--owner", default="1001:1001", help="UID:GID of published files (default 1001:1001)")
    args = parser.parse_args(argv)
    uid, _, gid = args.owner.partition(":")

    import docker

    client = docker.DockerClient(base_url=DOCKER_SOCKET, version="auto")
    container_id = client.api.inspect_container(args.container)["Id"]
    inotify = Inotify(blocking=True)
    inotify.add_watch(args.source, IN_CLOSE_WRITE | IN_MOVED_TO)
    source_fd = os.open(args.source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    dest_fd = os.open(args.dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    print("ready", file=sys.stderr, flush=True)
    sent = 0
    while True:
        names = dict.fromkeys(event.name for event in inotify.read_events() if event.name)
        for name in names:
            publish(source_fd, dest_fd, name, int(uid), int(gid or uid))
        if names:
            client.api.kill(container_id, signal="SIGHUP")
            sent += 1
            print(f"sent {sent}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
