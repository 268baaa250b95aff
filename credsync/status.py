"""`credsync status`: per route, what was uploaded, what was published, what the consumer holds
now (owner, mode, expiry) and how the last notification went. Hashes and times, never a secret."""

from __future__ import annotations

import hashlib
import json
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, Required, TypedDict, TypeVar

from credsync.credential_health import claude_health
from credsync.errors import CredsyncError, PublishError, Rejection, SourceUnavailable, UploadMissing
from credsync.exposure import exposure_notes
from credsync.hashes import short_hash
from credsync.health_probe import Unhealthy, check_health
from credsync.intake import SourceFolder
from credsync.ledger import Ledger
from credsync.notify_record import read_notification
from credsync.publisher import read_current, stat_destination
from credsync.routes import Route, RouteTable
from credsync.settings import Settings
from credsync.timefmt import expiry, now_ms, relative
from credsync.validators import validate

if TYPE_CHECKING:
    from credsync.swarm import FleetNode  # the Swarm API (and the Docker SDK) only where asked

Record = TypeVar("Record")


class UploadState(TypedDict, total=False):
    present: Required[bool]
    problem: str  # why it is absent, unreadable or refused: the fix
    sha256_prefix: str
    bytes: int


class PublishedState(TypedDict):
    at_ms: int
    sha256_prefix: str
    bytes: int


class ConsumerChange(TypedDict):
    at_ms: int
    sha256_prefix: str


class HeldState(TypedDict, total=False):
    present: Required[bool]
    problem: str
    owner: str
    mode: str
    owner_and_mode_ok: bool
    sha256_prefix: str
    access_expires_ms: int | None  # these five for a Claude login only
    refresh_expires_ms: int | None
    has_refresh_token: bool
    credential: str
    problems: list[str]


class RouteState(TypedDict):
    route: str
    kind: str
    destination: str
    upload: UploadState
    published: PublishedState | None
    consumer_change: ConsumerChange | None
    held: HeldState


class NotificationState(TypedDict):
    at_ms: int
    result: str
    routes: str


class FleetState(TypedDict, total=False):
    service: Required[str]
    nodes: list[FleetNode]
    problem: str  # the Swarm API could not be read


class StatusReport(TypedDict, total=False):
    """What `status --json` prints: hashes, sizes, owners and times, never a secret."""

    routes: Required[list[RouteState]]
    exposure: Required[list[str]]  # what widens what an upload can do (credsync.exposure)
    daemon: Required[str]  # `credsync health`'s line: healthy (and whether it came back) or why not
    notification: Required[NotificationState | None]
    fleet: FleetState  # on a Swarm manager (CREDSYNC_SWARM_SERVICE): each node's delivery task


def gather(settings: Settings, routes: RouteTable) -> StatusReport:
    ledger = Ledger(settings.state_dir)
    now = now_ms()
    source = SourceFolder(settings.source, settings.source_owner)
    notification = read_notification(settings.state_dir)
    report: StatusReport = {
        "routes": [route_status(settings, source, route, ledger, now) for route in routes],
        "exposure": exposure_notes(settings, routes),
        "daemon": daemon_health(settings),
        "notification": None
        if notification is None
        else {"at_ms": notification.at_ms, "result": notification.result, "routes": notification.routes},
    }
    if settings.swarm_service is not None:
        report["fleet"] = fleet_status(settings, settings.swarm_service)
    return report


def daemon_health(settings: Settings) -> str:
    try:
        return check_health(str(settings.state_dir))
    except Unhealthy as reason:
        return f"unhealthy: {reason}"


def fleet_status(settings: Settings, service: str) -> FleetState:
    """Imported here: only a manager's status reads the Swarm (and loads the Docker SDK)."""
    from credsync.notify.notifier import describe
    from credsync.swarm import ENGINE_ERRORS, connect, fleet, resolve_service

    try:
        with connect(settings.docker_host) as client:
            name = resolve_service(client, service)
            nodes = fleet(client.api, name)
    except ENGINE_ERRORS as error:
        return {"service": service, "problem": describe(error)}
    return {"service": name, "nodes": nodes}


def route_status(settings: Settings, source: SourceFolder, route: Route, ledger: Ledger, now: int) -> RouteState:
    entry = ledger.last(route.upload)
    return {
        "route": route.upload,
        "kind": route.kind,
        "destination": str(route.destination),
        "upload": upload_status(settings, source, route),
        "published": None
        if entry is None
        else {"at_ms": entry.published_at_ms, "sha256_prefix": short_hash(entry.sha256), "bytes": entry.size},
        "consumer_change": None
        if entry is None or entry.consumer_seen_at_ms is None
        else {"at_ms": entry.consumer_seen_at_ms, "sha256_prefix": short_hash(entry.consumer_sha256 or "")},
        "held": destination_status(settings, route, now),
    }


def upload_status(settings: Settings, source: SourceFolder, route: Route) -> UploadState:
    try:
        upload = source.read(route.upload, max_bytes=settings.max_bytes, settle_ns=0)
    except UploadMissing:
        return {"present": False}
    except SourceUnavailable as error:
        return {"present": False, "problem": error.reason}
    except CredsyncError as error:
        return {"present": True, "problem": error.reason}
    found: UploadState = {"present": True, "sha256_prefix": short_hash(upload.sha256), "bytes": len(upload.data)}
    try:
        validate(
            route.kind,
            upload.data,
            max_bytes=settings.max_bytes,
            now_ms=now_ms(),
            trust_uploader=settings.trust_uploader,
        )
    except Rejection as rejection:
        found["problem"] = rejection.reason
    return found


def destination_status(settings: Settings, route: Route, now: int) -> HeldState:
    try:
        info = stat_destination(route.destination)
        data = read_current(route.destination, settings.max_bytes) if info and stat.S_ISREG(info.st_mode) else None
    except PublishError as error:
        return {"present": False, "problem": error.reason}
    if info is None:
        return {"present": False}
    owner_ok = (info.st_uid, info.st_gid) == (route.uid, route.gid)
    mode_ok = stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == route.mode
    held: HeldState = {
        "present": True,
        "owner": f"{info.st_uid}:{info.st_gid}",
        "mode": f"{stat.S_IMODE(info.st_mode):04o}",
        "owner_and_mode_ok": owner_ok and mode_ok,
    }
    if data is None:
        return held
    held["sha256_prefix"] = short_hash(hashlib.sha256(data).hexdigest())
    health = claude_health(data) if route.kind == "claude-oauth" else None
    if health is not None:
        held["access_expires_ms"] = health.access_expires_ms
        held["refresh_expires_ms"] = health.refresh_expires_ms
        held["has_refresh_token"] = health.has_refresh_token
        held["credential"] = health.kind
        window = settings.expiry_warn_hours * 3_600_000
        held["problems"] = [problem.advice for problem in health.problems(now, window, settings.consumer_refreshes)]
    return held


def render_json(report: StatusReport) -> str:
    return json.dumps(report, indent=2, sort_keys=True)


def render_text(report: StatusReport) -> str:
    now = now_ms()
    lines = [f"! {note}" for note in report["exposure"]]
    lines.append(f"daemon         {report['daemon']}")
    for item in report["routes"]:
        lines.append(f"{item['route']} → {item['destination']} ({item['kind']})")
        lines.append(f"  upload       {describe_upload(item['upload'])}")
        lines.append(
            labelled(
                "  published",
                item["published"],
                "never",
                lambda at: f"{relative(at['at_ms'], now)}, sha {at['sha256_prefix']}, {at['bytes']} bytes",
            )
        )
        lines.extend(describe_held(item["held"], now))
        change = item["consumer_change"]
        if change is not None:
            lines.append(f"  consumer     rewrote it {relative(change['at_ms'], now)} (sha {change['sha256_prefix']})")
    lines.append(
        labelled(
            "notification",
            report["notification"],
            "none yet",
            lambda note: f"{note['result']} {relative(note['at_ms'], now)} ({note['routes']})",
        )
    )
    if "fleet" in report:
        lines.extend(describe_fleet(report["fleet"]))
    return "\n".join(lines)


def describe_fleet(fleet: FleetState) -> list[str]:
    if "problem" in fleet:
        return [f"fleet          {fleet['service']}: cannot read the Swarm: {fleet['problem']}"]
    nodes = fleet.get("nodes", [])
    in_step = sum(node["in_step"] for node in nodes)
    lines = [f"fleet          {fleet['service']}: {in_step} of {len(nodes)} nodes in step"]
    for node in nodes:
        held = ", ".join(f"{target} {sha}" for target, sha in sorted(node["sha12_by_target"].items())) or "nothing"
        mark = "✓" if node["in_step"] else "✗"
        lines.append(f"  {mark} {node['node']:<14}{node['availability']:<16}{node['task_state']:<10}{held}")
    return lines


def labelled(label: str, record: Record | None, missing: str, describe: Callable[[Record], str]) -> str:
    """One aligned line: `label`, then what `record` says, or `missing` when there is none."""
    return f"{label:<15}{missing if record is None else describe(record)}"


def describe_upload(upload: UploadState) -> str:
    if not upload["present"]:
        return f"absent: {upload['problem']}" if upload.get("problem") else "absent"
    if upload.get("problem"):
        return f"present, refused: {upload['problem']}"  # not published; the reason is the fix
    return f"present, sha {upload['sha256_prefix']}, {upload['bytes']} bytes"


def describe_held(held: HeldState, now: int) -> list[str]:
    if not held["present"]:
        return [f"  destination  absent{': ' + held['problem'] if held.get('problem') else ''}"]
    mark = "✓" if held["owner_and_mode_ok"] else "✗ expected other owner or mode"
    lines = [f"  destination  {held['owner']} {held['mode']} {mark}, sha {held.get('sha256_prefix', '?')}"]
    if "access_expires_ms" in held:
        access, refresh = held["access_expires_ms"], held["refresh_expires_ms"]
        parts = [f"access token {expiry(access, now)}"]
        if refresh is not None:
            parts.append(f"refresh token {expiry(refresh, now)}")
        lines.append(f"  credential   {held['credential']}")
        lines.append(f"  expiry       {', '.join(parts)}")
        lines.extend(f"  ✗ {problem}" for problem in held["problems"])
    return lines
