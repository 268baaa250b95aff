"""What every command that publishes does first: load the routes, make the private state
folder, and remove the temp files a crash left in the destination and state folders."""

from __future__ import annotations

from loguru import logger

from credsync.exposure import exposure_notes
from credsync.ledger import Ledger
from credsync.pipeline import Pipeline
from credsync.publisher import ensure_private_folder, remove_stale_temps
from credsync.routes import load_routes
from credsync.settings import Settings
from credsync.tally import Tally


def open_pipeline(settings: Settings, *, dry_run: bool, tally: Tally | None = None) -> Pipeline:
    """Routes, state folder, ledger; and temp files a crash left in destination folders."""
    routes = load_routes(settings)
    for note in exposure_notes(settings, routes):
        logger.warning(note)
    if not dry_run:
        ensure_private_folder(settings.state_dir)
        state_folders = {settings.state_dir, settings.state_dir / "previous"}
        for path in remove_stale_temps(routes.destination_dirs() | state_folders):
            logger.bind(path=str(path)).info("removed a temp file left by an interrupted publish")
    return Pipeline(settings, routes, Ledger(settings.state_dir), dry_run=dry_run, tally=tally)
