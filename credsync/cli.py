"""Command line: `watch`, `sync`, `validate`. The only place that turns errors into exit
codes; settings are built here once and passed down."""

from __future__ import annotations

import argparse
import errno
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from credsync import __version__
from credsync.bootstrap import open_pipeline
from credsync.errors import (
    ConfigError,
    CredsyncError,
    Rejection,
    SourceUnavailable,
    UploadMissing,
    UploadUnsettled,
    printable,
)
from credsync.health_probe import Unhealthy, check_health
from credsync.intake import read_upload
from credsync.liveness import Liveness, SystemdEnvironment
from credsync.logs import configure_logging, stderr_is_journal
from credsync.pipeline import Outcome, Pipeline
from credsync.routes import KINDS, Kind, kind_for_filename, load_routes
from credsync.settings import Settings, load_settings
from credsync.slim_process import let_tls_in, needs_tls
from credsync.state_lock import hold_state_lock
from credsync.sync import sync_once
from credsync.tally import Tally
from credsync.timefmt import now_ms
from credsync.validators import kind_from_content, validate

if TYPE_CHECKING:
    from http.server import ThreadingHTTPServer

    from credsync.notify import Notifier
    from credsync.notify.notifier import OutcomeListener
    from credsync.swarm import SwarmRoller

EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_USAGE = 2
EXIT_PUBLISH_FAILED = 3
EXIT_NOTIFY_FAILED = 4


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as error:
        print(f"credsync: {error.reason}", file=sys.stderr)
        return EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="credsync",
        description="Publish credentials uploaded by scp into a container volume, atomically.",
    )
    parser.add_argument("--version", action="version", version=f"credsync {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    watch = commands.add_parser("watch", help="run the daemon: watch the source and publish uploads")
    add_setting_flags(watch)
    watch.set_defaults(handler=run_watch)

    sync = commands.add_parser(
        "sync",
        help="one pass over all routes, then exit (0 ok, 1 rejected, 2 bad usage, 3 not published, 4 not notified)",
    )
    add_setting_flags(sync)
    sync.add_argument("--dry-run", action="store_true", help="decide and log, but write nothing")
    sync.set_defaults(handler=run_sync)

    status = commands.add_parser("status", help="per route: upload, publication, what the consumer holds, expiry")
    add_setting_flags(status)
    status.add_argument("--json", action="store_true", help="one JSON document")
    status.set_defaults(handler=run_status)

    doctor = commands.add_parser("doctor", help="check everything credsync needs; 0 only when all pass")
    add_setting_flags(doctor)
    doctor.add_argument("--json", action="store_true", help="one JSON document")
    doctor.set_defaults(handler=run_doctor)

    health = commands.add_parser("health", help="is the daemon ready and watching? (0 healthy, 1 not)")
    add_setting_flags(health)
    health.set_defaults(handler=run_health)

    push = commands.add_parser(
        "push",
        help="upload a Claude credential to servers over ssh and wait for their receipts"
        " (0 done, 1 rejected, 2 bad usage, 3 failed, 5 timed out)",
    )
    source = push.add_mutually_exclusive_group()
    source.add_argument("--keychain", action="store_true", help="from the macOS login Keychain (default on macOS)")
    source.add_argument("--file", type=Path, help="a .credentials.json, or a file holding a setup-token")
    source.add_argument(
        "--setup-token", action="store_true", help="a token from `claude setup-token`, read from standard input"
    )
    push.add_argument("servers", nargs="+", metavar="SERVER", help="[user@]host[:UPLOAD_DIR] (default claude-uploads)")
    push.add_argument("--ssh", default="ssh", help="the ssh command, e.g. 'ssh -p 2222' (default: ssh)")
    push.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each receipt (default 60)")
    push.set_defaults(handler=run_push)

    init = commands.add_parser(
        "init",
        help="as the SSH user: create and check the upload and receipts folders, ask a running credsync to answer,"
        " print the settings to paste (0 ok, 2 bad usage, 3 failed)",
    )
    init.add_argument("server", nargs="?", metavar="SERVER", help="[user@]host[:UPLOAD_DIR] over ssh (default: here)")
    init.add_argument("--ssh", default="ssh", help="the ssh command, e.g. 'ssh -p 2222' (default: ssh)")
    init.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for credsync's answer (default 10; 0: do not ask)"
    )
    init.set_defaults(handler=run_init)

    check = commands.add_parser("validate", help="check files as credsync would (0 valid, 1 invalid)")
    check.add_argument("files", nargs="+", type=Path, metavar="FILE")
    check.add_argument("--kind", choices=KINDS, help="kind of every FILE (default: from its name)")
    check.add_argument("--max-bytes", dest="max_bytes", default=argparse.SUPPRESS, help="largest file accepted")
    check.add_argument(
        "--trust-uploader",
        dest="trust_uploader",
        default=argparse.SUPPRESS,
        help="judge by syntax only, without the allow-lists (true/false)",
    )
    check.set_defaults(handler=run_validate)
    return parser


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One `--flag` per setting; flags win over CREDSYNC_* variables."""
    group = parser.add_argument_group("settings (each also CREDSYNC_<NAME> in the environment)")
    defaults = Settings.model_construct().model_dump(mode="json")
    for name, field in Settings.model_fields.items():
        default = "unset" if defaults[name] is None else defaults[name]
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=argparse.SUPPRESS,
            metavar=name.upper(),
            help=f"{field.description} (default: {default})",
        )


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = {name: getattr(args, name) for name in Settings.model_fields if hasattr(args, name)}
    settings = load_settings(overrides)
    notify_url = None if settings.notify_url is None else str(settings.notify_url)
    if needs_tls(docker_host=settings.docker_host, notify_url=notify_url, serves_http=settings.http is not None):
        let_tls_in()  # before the notifier's and the metrics' imports, which come after settings
    journal = stderr_is_journal(SystemdEnvironment().journal_stream)
    configure_logging(settings.log_format, settings.log_level, journal=journal)
    return settings


def run_watch(args: argparse.Namespace) -> int:
    from credsync.daemon import Daemon

    settings = settings_from(args)
    try:
        hold_state_lock(settings.state_dir)  # before anything touches the state or the destinations
    except CredsyncError as error:
        logger.error(error.reason)
        return EXIT_USAGE
    tally, server = start_metrics(settings)
    try:
        pipeline = open_pipeline(settings, dry_run=False, tally=tally)
        announcer = build_roller(settings, pipeline) or build_notifier(settings, tally, pipeline.notification_outcome)
        return Daemon(pipeline, announcer, Liveness(settings.state_dir, SystemdEnvironment(), tally)).run()
    except CredsyncError as error:
        logger.error(error.reason)
        return EXIT_USAGE
    finally:
        if server is not None:
            server.shutdown()


def start_metrics(settings: Settings) -> tuple[Tally, ThreadingHTTPServer | None]:
    """Counting and serving only when CREDSYNC_HTTP asks for it (prometheus-client costs start-up time)."""
    if settings.http is None:
        return Tally(), None
    from credsync.metrics import PrometheusTally, serve

    tally = PrometheusTally(route.upload for route in load_routes(settings))
    host, port = settings.http
    try:
        server = serve(tally, host, port)
    except OSError as error:
        raise ConfigError(f"CREDSYNC_HTTP {host}:{port}: {error.strerror}") from None
    logger.bind(http=f"{host}:{port}").info("serving /healthz and /metrics")
    return tally, server


def run_status(args: argparse.Namespace) -> int:
    from credsync import status

    settings = settings_from(args)
    report = status.gather(settings, load_routes(settings))
    print(status.render_json(report) if args.json else status.render_text(report))
    return EXIT_OK


def run_doctor(args: argparse.Namespace) -> int:
    from credsync import doctor

    settings = settings_from(args)
    checks = doctor.run_checks(settings, load_routes(settings))
    print(json.dumps(doctor.as_json(checks), indent=2) if args.json else doctor.render_text(checks))
    return EXIT_OK if all(check.ok for check in checks) else EXIT_REJECTED


def run_health(args: argparse.Namespace) -> int:
    """0 only after the first reconcile, while the watcher lives and no upload waits on a failed
    publish. Docker's HEALTHCHECK runs health_probe.py itself, which answers the same at a
    fraction of the CPU."""
    settings = settings_from(args)
    try:
        print(check_health(str(settings.state_dir)))
    except Unhealthy as reason:
        print(f"unhealthy: {reason}")
        return EXIT_REJECTED
    return EXIT_OK


def run_sync(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    try:
        pipeline = open_pipeline(settings, dry_run=args.dry_run)
    except CredsyncError as error:
        logger.error(error.reason)
        return EXIT_USAGE
    try:
        os.close(pipeline.source.open())
    except SourceUnavailable as error:
        logger.bind(source=str(settings.source)).error(f"nothing published: {error.reason}")
        return EXIT_PUBLISH_FAILED
    results = sync_once(pipeline)
    pipeline.look_for_near_misses()
    pipeline.ledger.flush()
    changed = {result.name: result.sha256 for result in results if result.changed_destination}
    notified = not changed or notify_now(pipeline, changed, dry_run=args.dry_run)
    outcomes = {result.outcome for result in results}
    if outcomes & {Outcome.FAILED, Outcome.UNSETTLED}:
        return EXIT_PUBLISH_FAILED
    if Outcome.REJECTED in outcomes:
        return EXIT_REJECTED
    return EXIT_OK if notified else EXIT_NOTIFY_FAILED


def build_notifier(
    settings: Settings, tally: Tally | None = None, listener: OutcomeListener | None = None
) -> Notifier | None:
    """None when there is no one to tell: then the Docker SDK is never imported (time, memory)."""
    if not settings.notifies:
        return None
    from credsync.notify import Notifier

    return Notifier(settings, tally, listener)


def build_roller(settings: Settings, pipeline: Pipeline) -> SwarmRoller | None:
    """On a Swarm manager (CREDSYNC_SWARM_SERVICE), publications roll the delivery service."""
    if settings.swarm_service is None:
        return None
    from credsync.swarm import SwarmRoller

    return SwarmRoller(settings, pipeline.routes)


def notify_now(pipeline: Pipeline, changed: dict[str, str], *, dry_run: bool) -> bool:
    """`sync` tells the consumer once, synchronously: no debounce, no retry."""
    notifier = None if dry_run else build_notifier(pipeline.settings, listener=pipeline.notification_outcome)
    if notifier is None:
        return True
    from credsync.notify import Delivery

    return notifier.deliver(changed) in (Delivery.DELIVERED, Delivery.SKIPPED)


def run_push(args: argparse.Namespace) -> int:
    from credsync import push

    configure_logging("text", "WARNING")
    try:
        if args.setup_token:
            credential = push.from_stdin()
        elif args.keychain or (args.file is None and sys.platform == "darwin"):
            credential = push.from_keychain()
        else:
            credential = push.from_file(args.file or Path.home() / ".claude" / ".credentials.json")
        servers = [push.parse_server(text) for text in args.servers]
        reports = push.push(credential, servers, shlex.split(args.ssh), args.timeout)
    except push.PushError as error:
        print(f"credsync push: {error.reason}", file=sys.stderr)
        return EXIT_REJECTED
    for report in reports:
        print(f"{report.server}: {report.line}")
    return max(int(report.verdict) for report in reports)


def run_init(args: argparse.Namespace) -> int:
    from credsync import init

    verdict, lines = init.run(args.server, shlex.split(args.ssh), max(0.0, args.timeout))
    print("\n".join(lines))
    return int(verdict)


def run_validate(args: argparse.Namespace) -> int:
    overrides = {name: getattr(args, name) for name in ("max_bytes", "trust_uploader") if hasattr(args, name)}
    settings = load_settings(overrides)
    worst = EXIT_OK
    for path in args.files:
        label = printable(str(path))
        try:
            data = read_file(path, settings.max_bytes)
        except (Rejection, UploadMissing) as error:
            print(f"{label}: invalid: {error.reason}")
            worst = max(worst, EXIT_REJECTED)
            continue
        kind: Kind | None = args.kind or kind_for_filename(path.name)
        assumed = ""
        if kind is None:
            kind = kind_from_content(data)
            assumed = f" (kind assumed from the content; pass --kind to choose: {', '.join(KINDS)})"
        if kind is None:
            print(f"{label}: cannot tell the kind from the name or the content; pass --kind ({', '.join(KINDS)})")
            worst = EXIT_USAGE
            continue
        try:
            summary = validate(
                kind, data, max_bytes=settings.max_bytes, now_ms=now_ms(), trust_uploader=settings.trust_uploader
            )
        except Rejection as error:
            print(f"{label}: invalid {kind}: {error.reason}{assumed}")
            worst = max(worst, EXIT_REJECTED)
            continue
        notes = "".join(f"; warning: {warning}" for warning in summary.warnings)
        print(f"{label}: valid {kind}{summary.described(now_ms())}{notes}{assumed}")
    return worst


def read_file(path: Path, max_bytes: int) -> bytes:
    """The same safe intake the daemon uses, so `validate` says what `watch` would. The folder is
    the caller's own choice and may be reached through links; the file itself may not."""
    try:
        folder_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        if error.errno == errno.ENOTDIR:
            reason = f"folder {path.parent.name!r} is a symlink; credsync follows no links"
            raise Rejection(reason, code="symlink") from None
        raise UploadMissing(f"cannot open folder {path.parent}: {error.strerror}") from None
    try:
        return read_upload(folder_fd, path.name, max_bytes=max_bytes, settle_ns=0).data
    except UploadUnsettled:
        raise Rejection("file changed while being read", code="changed") from None
    finally:
        os.close(folder_fd)
