"""Metrics as a scraper meets them: every counter there from the start, the standard process
and Python collectors, the build, and an HTTP listener that answers HEAD and ignores query
strings. No root, no Docker: a listener on 127.0.0.1."""

from __future__ import annotations

import re
import socket
import urllib.request
from pathlib import Path

from prometheus_client import generate_latest

from credsync import __version__
from credsync.errors import REJECTION_CODES
from credsync.metrics import PrometheusTally, serve

PACKAGE = Path(__file__).resolve().parent.parent / "credsync"


def test_every_rejection_code_the_code_raises_is_listed() -> None:
    # `code=` as Rejection takes it; a receipt's `reason_code=` for an ignored name is not a rejection.
    keyword = re.compile(r'(?<!\w)code="([a-z0-9-]+)"')
    raised = {match for path in PACKAGE.rglob("*.py") for match in keyword.findall(path.read_text())}
    assert raised and raised <= set(REJECTION_CODES), sorted(raised - set(REJECTION_CODES))


def test_counters_start_at_zero_for_every_route_and_code() -> None:
    text = generate_latest(PrometheusTally([".credentials.json", "aws/config"]).registry).decode()
    for code in REJECTION_CODES:
        assert f'credsync_rejections_total{{reason="{code}",route="aws/config"}} 0.0' in text
    assert 'credsync_publications_total{outcome="published",route=".credentials.json"} 0.0' in text
    assert 'credsync_notifications_total{result="delivered"} 0.0' in text
    assert f'credsync_build_info{{version="{__version__}"}} 1.0' in text
    assert (
        "process_resident_memory_bytes" in text
        and "python_info" in text
        and "python_gc_objects_collected_total" in text
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_listener_answers_head_and_ignores_query_strings() -> None:
    port = free_port()
    server = serve(PrometheusTally(), "127.0.0.1", port)
    try:
        head = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", method="HEAD")
        with urllib.request.urlopen(head, timeout=5) as reply:  # noqa: S310 - http to 127.0.0.1
            assert reply.status == 200 and reply.read() == b"" and int(reply.headers["Content-Length"]) > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics?name[]=x", timeout=5) as reply:
            assert b"credsync_build_info" in reply.read()
    finally:
        server.shutdown()
