"""Keep native libraries credsync rarely needs out of its process, before anything imports them.

loguru imports asyncio, asyncio and urllib3 import ssl, hashlib prefers OpenSSL, and requests
loads a character-set guesser: 7 MiB resident together (OpenSSL's two libraries 4.6 MiB,
charset_normalizer 2.6 MiB) in a daemon whose whole budget is 45 MB. credsync speaks to the
Engine over a unix socket and reads JSON it declares as UTF-8, and SHA-256 of a few KB is as
fast from CPython's own implementation. Every one of these importers treats a missing module
as "not available" and goes on, so a `None` entry in `sys.modules` is all it takes.

The command keeps them out first thing, and lets TLS back in once its settings say an address
may need it (`needs_tls`) — before the modules that would use TLS (requests, urllib3,
http.client, prometheus_client) are first imported, which only happens after settings.
"""

from __future__ import annotations

import sys
import warnings

TLS_MODULES = ("ssl", "_ssl", "_hashlib")
CHARSET_GUESSERS = ("chardet", "charset_normalizer")
PLAIN_SCHEMES = ("unix", "http+unix", "tcp", "http")


def keep_out_unused_libraries() -> list[str]:
    """Mark the modules absent (those not imported yet); returns the names it marked."""
    marked = [name for name in TLS_MODULES + CHARSET_GUESSERS if name not in sys.modules]
    for name in marked:
        sys.modules[name] = None  # type: ignore[assignment]  # the import system's "absent"
    # requests says once, at import, that it found no guesser; it needs none for JSON.
    warnings.filterwarnings("ignore", message="Unable to find acceptable character detection", module="requests")
    return marked


def needs_tls(*, docker_host: str, notify_url: str | None, serves_http: bool) -> bool:
    """True when an address might be reached over TLS, or `/metrics` is served (prometheus_client
    imports ssl for its own HTTPS option). An address with a scheme this does not know counts
    as needing it: a wrong "no" costs a notification that cannot be sent, a wrong "yes" 5 MiB."""
    return serves_http or any(not is_plain(address) for address in (docker_host, notify_url) if address is not None)


def is_plain(address: str) -> bool:
    scheme, separator, _ = address.strip().partition("://")
    return bool(separator) and scheme.lower() in PLAIN_SCHEMES


def let_tls_in() -> None:
    """Undo the marks on the TLS modules: the next import loads them."""
    for name in TLS_MODULES:
        if name in sys.modules and sys.modules[name] is None:
            del sys.modules[name]
