"""`credsync doctor`: every check on one line, ✓ or ✗, and for each ✗ the fix. Read-only
apart from the state folder (created as `watch` would) and a probe file it creates and removes
in each folder credsync writes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from credsync.check import Check
from credsync.container_env import current_container_id
from credsync.errors import CredsyncError, PublishError, SourceUnavailable
from credsync.exposure import exposure_notes
from credsync.intake import SourceFolder
from credsync.publisher import ensure_private_folder, probe_ownership
from credsync.routes import RouteTable
from credsync.settings import Settings


def run_checks(settings: Settings, routes: RouteTable) -> list[Check]:
    checks = [check_source(settings), *check_destinations(routes), check_state(settings), check_inotify()]
    checks.extend(check_exposure(settings, routes))
    checks.extend(check_docker(settings))
    return checks


def check_exposure(settings: Settings, routes: RouteTable) -> Iterator[Check]:
    """Each is the operator's choice, so it passes; doctor says it every time it runs."""
    notes = exposure_notes(settings, routes)
    if not notes:
        yield Check(True, "only credentials are published, each judged by its allow-list")
    for note in notes:
        yield Check(True, note)


def check_source(settings: Settings) -> Check:
    source = settings.source
    try:
        folder_fd = SourceFolder(source, settings.source_owner).open()
    except SourceUnavailable as error:
        return Check(False, f"source {source} is readable", f"{error.reason}: create it or mount the uploads folder")
    try:
        os.listdir(folder_fd)
    except OSError as error:
        return Check(False, f"source {source} is readable", f"{error.strerror}: credsync must be able to list it")
    finally:
        os.close(folder_fd)
    mount = mount_options(source)
    if current_container_id() is not None and mount is not None and "ro" not in mount:
        return Check(False, f"source {source} is mounted read-only", "mount the uploads folder with :ro")
    return Check(True, f"source {source} is readable" + (" and mounted read-only" if mount and "ro" in mount else ""))


def check_destinations(routes: RouteTable) -> Iterator[Check]:
    owners: dict[Path, set[tuple[int, int]]] = {}
    for route in routes:
        owners.setdefault(route.destination.parent, set()).add((route.uid, route.gid))
    for folder, folder_owners in sorted(owners.items()):
        yield probe_folder(folder, folder_owners)


def check_state(settings: Settings) -> Check:
    try:
        ensure_private_folder(settings.state_dir)  # what `watch` does first
    except PublishError as error:
        return Check(False, f"state folder {settings.state_dir} can be created", error.reason)
    return probe_folder(settings.state_dir, {(os.geteuid(), os.getegid())}, label="state folder")


def probe_folder(folder: Path, owners: set[tuple[int, int]], label: str = "destination") -> Check:
    what = f"{label} {folder} is writable and ownership can be set ({', '.join(f'{u}:{g}' for u, g in sorted(owners))})"
    try:
        probe_ownership(folder, owners)
    except PublishError as error:
        return Check(False, what, error.reason)
    return Check(True, what)


def check_inotify() -> Check:
    limits = {name: read_int(f"/proc/sys/fs/inotify/{name}") for name in ("max_user_instances", "max_user_watches")}
    instances, watches = inotify_use(os.geteuid())
    what = (
        f"inotify: {instances} of {limits['max_user_instances']} instances and "
        f"{watches} of {limits['max_user_watches']} watches in use by this user"
    )
    if instances >= limits["max_user_instances"] or watches >= limits["max_user_watches"]:
        return Check(
            False, what, "raise them: sysctl fs.inotify.max_user_instances=512 fs.inotify.max_user_watches=65536"
        )
    return Check(True, what)


def inotify_use(uid: int) -> tuple[int, int]:
    """Instances and watches held by processes of `uid` (what the per-user limits count)."""
    instances = watches = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                    instances += 1
                    watches += Path(f"/proc/{pid}/fdinfo/{fd}").read_text().count("inotify wd:")
        except OSError:
            continue  # the process went away, or is not ours to look at
    return instances, watches


def read_int(path: str) -> int:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return 0


def check_docker(settings: Settings) -> list[Check]:
    socket = settings.docker_host.removeprefix("unix://")
    usable = os.access(socket, os.R_OK | os.W_OK)
    if not settings.notifies and settings.docker_host.startswith("unix://") and not usable:
        # Publishing only, and rightly without the socket (claude-hub needs no reload).
        return [Check(True, "publishing only: no notify target and no usable Docker socket, so no consumer checks")]
    from credsync.notify.doctor_checks import docker_checks  # the Docker SDK only when needed
    from credsync.notify.own_namespace import own_namespace_check
    from credsync.notify.targets import parse_target

    try:
        target = parse_target(settings.notify_target) if settings.notify_target and settings.notifies else None
        if target is not None and target.pid is not None:  # a process of our own PID namespace: no Engine
            return [own_namespace_check(target.pid, settings.notify_signal, auto=settings.notify == "auto")]
        return docker_checks(settings)
    except CredsyncError as error:
        return [Check(False, "notification settings are usable", error.reason)]


def mount_options(path: Path) -> set[str] | None:
    """Options of the mount whose mount point is exactly `path`, from /proc/self/mountinfo."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 5 and unescape_mount_path(fields[4]) == os.fspath(path):
            return set(fields[5].split(","))
    return None


def unescape_mount_path(text: str) -> str:
    return text.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def render_text(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        lines.append(f"{'✓' if check.ok else '✗'} {check.check}")
        if not check.ok:
            lines.append(f"    fix: {check.fix}")
    return "\n".join(lines)


def as_json(checks: list[Check]) -> list[dict[str, Any]]:
    return [asdict(check) for check in checks]
