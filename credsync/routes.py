"""Routes: which upload goes where, as what kind, with which owner and mode. Pure logic plus
the TOML loader."""

from __future__ import annotations

import functools
import os
import re
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from credsync.errors import ConfigError
from credsync.settings import Mode, Owner, Settings, absolute_path

Kind = Literal[
    "claude-oauth", "claude-setup-token", "claude-settings", "claude-global-config", "aws-credentials", "aws-config"
]
KINDS: tuple[Kind, ...] = (
    "claude-oauth",
    "claude-setup-token",
    "claude-settings",
    "claude-global-config",
    "aws-credentials",
    "aws-config",
)

# rsync writes `.<name>.XXXXXX` next to the target, then renames it into place.
RSYNC_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9]{6}$")


@dataclass(frozen=True)
class Route:
    upload: str  # path relative to the source folder, POSIX separators
    destination: Path
    kind: Kind
    uid: int
    gid: int
    mode: int

    @functools.cached_property
    def folder(self) -> str:
        """The destination's folder as text, made once: pathlib's `parent` costs more on each
        upload than the walk to it."""
        return os.fspath(self.destination.parent)

    @property
    def slug(self) -> str:
        """A flat file name for this route, for state kept per route."""
        return self.upload.replace("/", "__")


class RouteTable:
    def __init__(self, routes: list[Route]) -> None:
        self._by_upload = {route.upload: route for route in routes}
        # Looked up for every upload: a scan of all routes made a burst to 1,000 routes quadratic.
        self._by_destination: dict[Path, list[Route]] = {}
        for route in self._by_upload.values():
            self._by_destination.setdefault(route.destination, []).append(route)

    def __iter__(self) -> Iterator[Route]:
        return iter(self._by_upload.values())

    def __len__(self) -> int:
        return len(self._by_upload)

    def match(self, upload: str) -> Route | None:
        return self._by_upload.get(upload)

    def upload_folders(self) -> set[str]:
        """Folders inside the source that routes live in (`aws`), and their parents."""
        return {str(parent) for route in self for parent in PurePosixPath(route.upload).parents if str(parent) != "."}

    def destination_dirs(self) -> set[Path]:
        return {route.destination.parent for route in self}

    def sharing_destination(self, route: Route) -> list[Route]:
        """The other routes that publish to the same file (a login or a setup-token, say)."""
        return [other for other in self._by_destination.get(route.destination, []) if other is not route]


def near_miss(name: str, uploads: Iterable[str]) -> str | None:
    """What an ignored name was probably meant to be: the same file name without its dot or in
    another case or folder (`credentials.json`, `sub/.credentials.json`), or Claude's own
    folder uploaded whole."""
    base = PurePosixPath(name).name
    if base.lstrip(".").lower() == "claude":
        return f"upload the files inside {base}/ into the upload folder itself"
    folded = base.lstrip(".").lower()
    for upload in uploads:
        if upload != name and PurePosixPath(upload).name.lstrip(".").lower() == folded:
            return f"did you mean {upload}?"
    return None


def is_rsync_temp(upload: str) -> bool:
    return RSYNC_TEMP_NAME.match(PurePosixPath(upload).name) is not None


def normalise_upload_path(text: str) -> str:
    """A route's upload path must stay inside the source: relative, no `..`, no empty parts."""
    path = PurePosixPath(text)
    if path.is_absolute() or not path.parts or any(part in {"..", "."} for part in path.parts):
        raise ConfigError(f"route upload path {text!r} must be relative to the source and stay inside it")
    return str(path)


# Upload path, destination family ("claude" or "aws"), kind, destination file name. A login's
# `.credentials.json` and a `claude setup-token` token both become the Claude credential: the
# newer upload of the two wins.
DEFAULT_ROUTES: tuple[tuple[str, str, Kind, str], ...] = (
    (".credentials.json", "claude", "claude-oauth", ".credentials.json"),
    ("claude-setup-token", "claude", "claude-setup-token", ".credentials.json"),
    ("aws/credentials", "aws", "aws-credentials", "credentials"),
)
# Configuration, not credentials: published only when the operator turns the route on
# (CREDSYNC_CONFIG_ROUTES or the routes file), and then judged by its allow-list.
CONFIG_ROUTES: tuple[tuple[str, str, Kind, str], ...] = (
    ("settings.json", "claude", "claude-settings", "settings.json"),
    (".claude.json", "claude", "claude-global-config", ".claude.json"),
    ("aws/config", "aws", "aws-config", "config"),
)


def default_routes(settings: Settings) -> list[Route]:
    """Credential routes always, and the configuration routes turned on; AWS routes only when
    CREDSYNC_AWS_DIR is set."""
    chosen = DEFAULT_ROUTES + tuple(route for route in CONFIG_ROUTES if route[0] in settings.config_routes)
    routes = []
    for upload, family, kind, filename in chosen:
        folder = settings.claude_dir if family == "claude" else settings.aws_dir
        if folder is None:
            continue
        uid, gid = settings.owner if family == "claude" else settings.aws_owner
        routes.append(Route(upload, folder / filename, kind, uid, gid, settings.mode))
    return routes


class RouteSpec(BaseModel):
    """One `[[route]]` of the routes file. `destination` may use {claude_dir} and {aws_dir}."""

    model_config = ConfigDict(extra="forbid")

    upload: str
    destination: str
    kind: Kind
    owner: Owner | None = Field(None, description="UID:GID; unset: CREDSYNC_OWNER")
    mode: Mode | None = Field(None, description="octal, e.g. 0600; unset: CREDSYNC_MODE")


class RoutesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    route: list[RouteSpec] = []


def load_routes(settings: Settings) -> RouteTable:
    """Default routes, with those of the routes file added or replacing by upload path."""
    routes = {route.upload: route for route in default_routes(settings)}
    if settings.routes is not None:
        for route in parse_routes_file(settings.routes, settings):
            routes[route.upload] = route
    check_shared_destinations(list(routes.values()))
    return RouteTable(list(routes.values()))


# Two uploads may become one file only as a login and a setup-token: the newer one wins.
SHAREABLE = {"claude-oauth", "claude-setup-token"}


def check_shared_destinations(routes: list[Route]) -> None:
    by_destination: dict[Path, list[Route]] = {}
    for route in routes:
        by_destination.setdefault(route.destination, []).append(route)
    for destination, sharing in by_destination.items():
        kinds = [route.kind for route in sharing]
        if len(sharing) > 1 and not (len(sharing) == 2 and set(kinds) == SHAREABLE):
            uploads = ", ".join(route.upload for route in sharing)
            raise ConfigError(f"routes {uploads} all publish to {destination}; give each its own destination")


def parse_routes_file(path: Path, settings: Settings) -> list[Route]:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
        specs = RoutesFile.model_validate(document).route
    except OSError as error:
        raise ConfigError(f"routes file {path}: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"routes file {path} is not valid TOML: {error}") from None
    except ValidationError as error:
        raise ConfigError(f"routes file {path}: {describe_routes_error(error)}") from None
    return [route_from_spec(spec, settings) for spec in specs]


def describe_routes_error(error: ValidationError) -> str:
    """In the file's own terms: `route 2: kind: …`, never the settings' variable names."""
    problems = []
    for item in error.errors(include_input=False, include_url=False):
        location = [str(part) for part in item["loc"]]
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden" and len(location) == 1:
            hint = " (routes are [[route]] tables)" if location[0] in ("routes", "Route") else ""
            problems.append(f"unknown key {location[0]!r}{hint}")
        elif location[:1] == ["route"] and len(location) >= 3 and location[1].isdigit():
            if location[2:] == ["kind"]:  # the kind every routes file used before the allow-lists
                message += " ('json' is now claude-settings or claude-global-config, each allow-listed)"
            problems.append(f"route {int(location[1]) + 1}: {'.'.join(location[2:])}: {message}")
        else:
            problems.append(f"{'.'.join(location)}: {message}" if location else message)
    return "; ".join(problems)


def route_from_spec(spec: RouteSpec, settings: Settings) -> Route:
    if not spec.destination.startswith(("/", "{claude_dir}", "{aws_dir}")):
        raise ConfigError(
            f"route {spec.upload!r}: destination must be absolute or start with {{claude_dir}} or {{aws_dir}}"
        )
    if "{aws_dir}" in spec.destination and settings.aws_dir is None:
        raise ConfigError(f"route {spec.upload!r} uses {{aws_dir}} but CREDSYNC_AWS_DIR is not set")
    try:
        destination = absolute_path(spec.destination.format(claude_dir=settings.claude_dir, aws_dir=settings.aws_dir))
    except (KeyError, IndexError, ValueError):
        raise ConfigError(f"route {spec.upload!r}: destination may only use {{claude_dir}} and {{aws_dir}}") from None
    check_destination(spec, destination, settings)
    uid, gid = spec.owner or settings.owner
    return Route(
        normalise_upload_path(spec.upload),
        destination,
        spec.kind,
        uid,
        gid,
        settings.mode if spec.mode is None else spec.mode,
    )


def check_destination(spec: RouteSpec, destination: Path, settings: Settings) -> None:
    """A destination stays where its template says: no `..`, inside the folder it names (never the
    folder itself), and never in the source or the state folder."""
    if ".." in PurePosixPath(spec.destination).parts:
        raise ConfigError(f"route {spec.upload!r}: destination must not contain '..'")
    for placeholder, base in (("{claude_dir}", settings.claude_dir), ("{aws_dir}", settings.aws_dir)):
        if (
            base is not None
            and placeholder in spec.destination
            and not (destination != base and destination.is_relative_to(base))
        ):
            raise ConfigError(f"route {spec.upload!r}: destination {destination} must lie inside {placeholder}")
    for folder in (settings.source, settings.state_dir):
        if destination.is_relative_to(folder):
            raise ConfigError(f"route {spec.upload!r}: destination {destination} is inside {folder}")


def kind_for_filename(filename: str) -> Kind | None:
    """The kind a default route gives a file of this name (for `credsync validate`)."""
    return next(
        (kind for upload, _, kind, _ in DEFAULT_ROUTES + CONFIG_ROUTES if PurePosixPath(upload).name == filename), None
    )
