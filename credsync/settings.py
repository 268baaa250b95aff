"""All configuration: one pydantic-settings model, built once by the CLI and passed down."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AnyHttpUrl, BeforeValidator, Field, PlainSerializer, ValidationError, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from credsync.errors import ConfigError


def parse_owner(value: object) -> tuple[int, int]:
    """`UID:GID`, both numeric: names mean nothing inside a container, and a group left out is
    a guess (the consumer's group is not always its UID)."""
    if isinstance(value, tuple):
        return value
    text = str(value).strip()
    uid_text, colon, gid_text = text.partition(":")
    if not (colon and uid_text.isdigit() and gid_text.isdigit()):
        raise ValueError(f"must be numeric UID:GID such as 1001:1001, got {text!r}")
    return int(uid_text), int(gid_text)


def parse_mode(value: object) -> int:
    """An octal permission string such as `0600` or `0640`: credentials are read by their owner
    (and perhaps its group), never by others and never executed."""
    if isinstance(value, int):
        mode = value
    else:
        text = str(value).strip()
        try:
            mode = int(text, 8)
        except ValueError:
            raise ValueError(f"must be an octal mode such as 0600, got {text!r}") from None
    if not 0 <= mode <= 0o777:
        raise ValueError(f"must be a permission mode between 0000 and 0777, got {mode:o}")
    if mode & 0o007 or mode & 0o111:
        raise ValueError(f"{mode:04o} lets others read or anyone execute a credential; use 0600 (or 0640)")
    return mode


def absolute_path(value: object) -> Path:
    """Relative paths are taken from the working directory; `..` is resolved lexically."""
    if not isinstance(value, str | os.PathLike):
        raise ValueError(f"must be a path, got {value!r}")
    return Path(os.path.abspath(value))


Owner = Annotated[
    tuple[int, int],
    NoDecode,  # `1001:1001` in the environment is text, not JSON
    BeforeValidator(parse_owner),
    PlainSerializer(lambda owner: f"{owner[0]}:{owner[1]}", return_type=str),
]
Mode = Annotated[int, BeforeValidator(parse_mode), PlainSerializer(lambda mode: f"{mode:04o}", return_type=str)]
AbsolutePath = Annotated[Path, BeforeValidator(absolute_path)]

# Signals a consumer may be told with. Never KILL or STOP (nothing can catch them), never a
# default: the Docker SDK turns a missing signal into SIGKILL.
ALLOWED_SIGNALS = ("SIGHUP", "SIGUSR1", "SIGUSR2", "SIGWINCH")


def parse_signal(value: object) -> str:
    name = str(value).strip().upper()
    name = name if name.startswith("SIG") else "SIG" + name
    if name not in ALLOWED_SIGNALS:
        raise ValueError(f"must be one of {', '.join(ALLOWED_SIGNALS)}, got {value!r}")
    return name


SignalName = Annotated[str, BeforeValidator(parse_signal)]


def parse_listen_address(value: object) -> tuple[str, int]:
    if isinstance(value, tuple):
        return value
    host, colon, port = str(value).strip().rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must be HOST:PORT such as 127.0.0.1:9817, got {value!r}")
    return host.strip("[]"), int(port)


ListenAddress = Annotated[
    tuple[str, int],
    NoDecode,
    BeforeValidator(parse_listen_address),
    PlainSerializer(lambda address: f"{address[0]}:{address[1]}", return_type=str),
]


def parse_host_path_variables(value: object) -> tuple[tuple[str, str | None], ...]:
    if isinstance(value, tuple):
        return value
    pairs: list[tuple[str, str | None]] = []
    for item in filter(None, (part.strip() for part in str(value).split(","))):
        name, equals, path = item.partition("=")
        if not name.isidentifier() or (equals and not path.startswith("/")):
            raise ValueError(f"must be NAME or NAME=/container/path, comma-separated, got {item!r}")
        pairs.append((name, path if equals else None))
    return tuple(pairs)


HostPathVariables = Annotated[
    tuple[tuple[str, str | None], ...],
    NoDecode,
    BeforeValidator(parse_host_path_variables),
    PlainSerializer(
        lambda pairs: ",".join(name if path is None else f"{name}={path}" for name, path in pairs), return_type=str
    ),
]
CONFIG_ROUTE_NAMES = ("settings.json", ".claude.json", "aws/config")


def parse_config_routes(value: object) -> tuple[str, ...]:
    if isinstance(value, tuple):
        return value
    names = tuple(filter(None, (part.strip() for part in str(value).split(","))))
    for name in names:
        if name not in CONFIG_ROUTE_NAMES:
            raise ValueError(f"must name only {', '.join(CONFIG_ROUTE_NAMES)}, got {name!r}")
    return names


ConfigRouteNames = Annotated[
    tuple[str, ...],
    NoDecode,
    BeforeValidator(parse_config_routes),
    PlainSerializer(",".join, return_type=str),
]
NotifyMode = Literal["auto", "signal", "exec", "http", "none"]
LogFormat = Literal["text", "json"]
LogLevel = Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"]


class Settings(BaseSettings):
    """Every field is `CREDSYNC_<NAME>` in the environment and `--<name>` on `watch` and `sync`."""

    model_config = SettingsConfigDict(env_prefix="CREDSYNC_", extra="forbid", frozen=True)

    source: AbsolutePath = Field(Path("/uploads"), description="upload folder (read-only to credsync)")
    claude_dir: AbsolutePath = Field(Path("/claude-config"), description="destination of the Claude files")
    owner: Owner = Field((1001, 1001), description="UID:GID of the Claude files")
    mode: Mode = Field(0o600, description="permission mode of published files")
    aws_dir: AbsolutePath | None = Field(None, description="destination of AWS files; unset disables AWS routes")
    aws_owner: Owner = Field((0, 0), description="UID:GID of the AWS files")
    source_owner: int | None = Field(
        None, ge=0, description="UID that must own the source folder (default: its owner when credsync starts)"
    )
    trust_uploader: bool = Field(
        False,
        description="lift the allow-lists: whoever can upload may then run code and redirect requests (with the"
        " consumer's token) as the consumer; said at start and in status and doctor while on",
    )
    config_routes: ConfigRouteNames = Field(
        (),
        description="configuration files to publish besides credentials, each judged by its allow-list:"
        f" {', '.join(CONFIG_ROUTE_NAMES)}; comma-separated",
    )
    state_dir: AbsolutePath = Field(Path("/var/lib/credsync"), description="ledger and previous generations")
    settle_ms: int = Field(250, ge=0, le=60_000, description="quiet time before an upload is read")
    max_bytes: int = Field(1 << 20, ge=1, le=64 << 20, description="largest upload accepted")
    reconcile_s: int = Field(300, ge=1, le=86_400, description="interval of the safety-net rescan")
    log_format: LogFormat = Field("text", description="text or json (one object per line)")
    log_level: LogLevel = Field("INFO", description="minimum level logged")
    routes: AbsolutePath | None = Field(None, description="TOML file that adds or replaces routes")
    notify: NotifyMode = Field("auto", description="how to tell the consumer: auto, signal, exec, http or none")
    notify_target: str | None = Field(
        None,
        description="consumer: pid:N (a process of credsync's own PID namespace, no Docker socket), a container"
        " name or ID, service:NAME (own compose project) or PROJECT/SERVICE",
    )
    notify_signal: SignalName = Field("SIGHUP", description=f"signal to send ({', '.join(ALLOWED_SIGNALS)})")
    notify_exec: str | None = Field(None, description="command run inside the target (exec mode)")
    notify_url: AnyHttpUrl | None = Field(None, description="URL to POST the changed routes to (http mode)")
    notify_timeout_s: float = Field(10.0, gt=0, le=300, description="time an exec or HTTP notification may take")
    notify_grace_ms: int = Field(1000, ge=0, le=60_000, description="how long the target must survive a notification")
    debounce_ms: int = Field(500, ge=0, le=60_000, description="quiet time after a publication before notifying")
    debounce_max_ms: int = Field(5000, ge=0, le=600_000, description="longest a notification waits in a burst")
    docker_host: str = Field("unix:///var/run/docker.sock", description="Docker Engine API address")
    swarm_service: str | None = Field(
        None,
        description="on a Swarm manager: store each published file as a Swarm secret and roll this global"
        " delivery service (a name, or a service of credsync's own stack) to it, instead of notifying",
    )
    http: ListenAddress | None = Field(None, description="HOST:PORT for /healthz and /metrics (off when unset)")
    expiry_warn_hours: int = Field(72, ge=0, le=24 * 365, description="warn this long before a token expires")
    consumer_refreshes: bool = Field(
        False,
        description="the consumer writes refreshed tokens back to the published file (claude-hub's jobs do not:"
        " they refresh in throwaway copies)",
    )
    receipts_dir: AbsolutePath | None = Field(
        None, description="folder of the uploader's for one receipt per route (read by `credsync push`; off when unset)"
    )
    host_path_variables: HostPathVariables = Field(
        (("CLAUDE_AUTH_HOST_DIR", None), ("HOST_SESSIONS_DIR", "/app/sessions")),
        description="consumer variables that must hold a volume's host path (doctor): NAME for the Claude"
        " volume, NAME=/path for the volume the consumer mounts at /path; comma-separated",
    )

    @property
    def notifies(self) -> bool:
        """Is there anyone to tell? (auto without a target publishes only.)"""
        return self.notify != "none" and (self.notify_target is not None or self.notify == "http")

    @model_validator(mode="after")
    def _swarm_intake_does_not_notify(self) -> Settings:
        if self.swarm_service is not None and self.notifies:
            raise ValueError(
                "CREDSYNC_SWARM_SERVICE replaces notification: the delivery tasks notify; unset CREDSYNC_NOTIFY*"
            )
        return self

    @model_validator(mode="after")
    def _notification_is_complete(self) -> Settings:
        needs = {"signal": ["notify_target"], "exec": ["notify_target", "notify_exec"], "http": ["notify_url"]}
        for name in needs.get(self.notify, []):
            if getattr(self, name) is None:
                raise ValueError(f"CREDSYNC_NOTIFY={self.notify} needs CREDSYNC_{name.upper()}")
        return self

    @model_validator(mode="after")
    def _own_namespace_targets_take_signals(self) -> Settings:
        if self.notify in ("exec", "http") and (self.notify_target or "").strip().startswith("pid:"):
            raise ValueError(
                f"CREDSYNC_NOTIFY={self.notify} needs a container target (the Engine runs it); pid:N takes signals"
            )
        return self

    @model_validator(mode="after")
    def _folders_do_not_overlap(self) -> Settings:
        targets = {"claude_dir": self.claude_dir, "state_dir": self.state_dir}
        if self.receipts_dir is not None:
            targets["receipts_dir"] = self.receipts_dir
        if self.aws_dir is not None:
            targets["aws_dir"] = self.aws_dir
        for name, path in targets.items():
            if path.is_relative_to(self.source) or self.source.is_relative_to(path):
                raise ValueError(f"{name} ({path}) and source ({self.source}) must not contain each other")
        for name in ("claude_dir", "aws_dir"):
            target = targets.get(name)
            if target is not None and (self.state_dir.is_relative_to(target) or target.is_relative_to(self.state_dir)):
                raise ValueError(f"state_dir ({self.state_dir}) must not be inside or contain {name} ({target})")
        return self


# Settings that were renamed for what they mean: set, they fail the start instead of being ignored.
RENAMED = {
    "CREDSYNC_ALLOW_COMMANDS": "CREDSYNC_TRUST_UPLOADER (it now lifts every allow-list; see the README's"
    " migration note) or remove it",
}


def load_settings(overrides: dict[str, object]) -> Settings:
    """Environment plus CLI overrides; a bad value becomes one ConfigError naming the setting."""
    for old, new in RENAMED.items():
        if old in os.environ:
            raise ConfigError(f"{old} is gone: use {new}")
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error)) from None
    except SettingsError as error:
        raise ConfigError(f"invalid setting: {error}") from None


def describe_validation_error(error: ValidationError) -> str:
    problems = []
    for item in error.errors(include_input=False, include_url=False):
        field = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if field:
            flag = "--" + field.replace("_", "-")
            problems.append(f"CREDSYNC_{field.upper()} ({flag}): {message}")
        else:
            problems.append(message)
    return "invalid setting: " + "; ".join(problems)
