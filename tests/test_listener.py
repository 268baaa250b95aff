"""The /healthz and /metrics listener (CREDSYNC_HTTP) against clients that misbehave, on real
sockets: a request has one deadline however its bytes are paced; clients trickling their headers
(slowloris) cannot lock out a client that sends its request at once; a reset connection is one
log line, not a traceback; and an IPv6 address such as [::1]:9817 works, from the flag and from
the environment. No root needed, except for the end-to-end `credsync watch` test."""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from loguru import logger
from prometheus_client.registry import Collector

from credsync.cli import build_parser
from credsync.listener import MAX_CONNECTIONS, REQUEST_TIMEOUT_S, BoundedHTTPServer
from credsync.metrics import PrometheusTally, serve
from credsync.settings import load_settings
from tests.helpers import Folders, WatchProcess, wait_until

TRICKLED_HEAD = b"GET /metrics HTTP/1.1\r\nHost: credsync\r\nX-Slow: "  # then "a" forever: never complete


def healthy_tally() -> PrometheusTally:
    tally = PrometheusTally()
    tally.health(ready=True, watching=True)
    return tally


@contextmanager
def listening(host: str = "127.0.0.1", tally: PrometheusTally | None = None) -> Iterator[BoundedHTTPServer]:
    server = serve(tally or healthy_tally(), host, 0)  # port 0: the kernel picks a free one
    assert isinstance(server, BoundedHTTPServer)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def address_of(server: BoundedHTTPServer) -> tuple[str, int]:
    host, port = server.server_address[:2]
    assert isinstance(host, str) and isinstance(port, int)
    return host, port


def url(server: BoundedHTTPServer, path: str) -> str:
    host, port = address_of(server)
    return f"http://[{host}]:{port}{path}" if ":" in host else f"http://{host}:{port}{path}"


def get(address: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(address, timeout=timeout) as reply:  # noqa: S310 - our listener, loopback
            return int(reply.status), bytes(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@contextmanager
def log_records(level: str = "DEBUG") -> Iterator[list[dict[str, Any]]]:
    """Every loguru record the code under test writes, as the daemon's sink would receive it."""
    records: list[dict[str, Any]] = []
    handler = logger.add(
        lambda message: records.append(
            {"message": message.record["message"], "level": message.record["level"].name, **message.record["extra"]}
        ),
        level=level,
        format="{message}",
    )
    try:
        yield records
    finally:
        logger.remove(handler)


def closed_by_server(connection: socket.socket) -> bool:
    """The server never writes to a client that has not finished its request: readable means closed."""
    readable, _, _ = select.select([connection], [], [], 0)
    if not readable:
        return False
    try:
        return connection.recv(1) == b""
    except OSError:
        return True


class Tricklers:
    """`count` connections, each sending its request head one byte every `interval` seconds and
    never finishing it; one the server drops is replaced, as a slowloris tool does."""

    def __init__(self, address: tuple[str, int], count: int, interval: float) -> None:
        self.address = address
        self.interval = interval
        self.replaced = 0
        self._sent: dict[socket.socket, int] = {}
        for _ in range(count):
            self._connect()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)

    def _connect(self) -> None:
        connection = socket.create_connection(self.address, timeout=2)
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each byte its own segment
        self._sent[connection] = 0

    def __enter__(self) -> Tricklers:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for connection in self._sent:
            connection.close()

    def _trickle(self) -> None:
        while not self._stop.wait(self.interval):  # the attack's pace, not a synchronisation
            for connection in list(self._sent):
                if closed_by_server(connection):
                    connection.close()
                    del self._sent[connection]
                    self._connect()
                    self.replaced += 1
                    continue
                sent = self._sent[connection]
                byte = TRICKLED_HEAD[sent : sent + 1] or b"a"
                try:
                    connection.sendall(byte)
                except OSError:
                    continue  # dropped meanwhile: replaced at the next round
                self._sent[connection] = sent + 1


def test_a_trickling_client_is_dropped_at_the_request_deadline_not_at_each_read() -> None:
    """One byte every 0.2s never lets a read time out; the deadline is for the whole request."""
    with listening() as server, socket.create_connection(address_of(server), timeout=2) as connection:
        started = time.monotonic()
        held = None
        sent = 0
        while time.monotonic() - started < REQUEST_TIMEOUT_S + 5:
            readable, _, _ = select.select([connection], [], [], 0.2)  # the pace, or the server's close
            if readable:
                try:
                    closed = connection.recv(1) == b""
                except ConnectionResetError:
                    closed = True
                assert closed, "the server answered a request that never ended"
                held = time.monotonic() - started
                break
            try:
                connection.sendall(TRICKLED_HEAD[sent : sent + 1] or b"a")
            except OSError:
                held = time.monotonic() - started
                break
            sent += 1
        assert held is not None, f"a trickling client was still connected after {REQUEST_TIMEOUT_S + 5:g}s"
        assert REQUEST_TIMEOUT_S - 0.5 <= held <= REQUEST_TIMEOUT_S + 1.0, f"held {held:.2f}s"
        assert sent >= REQUEST_TIMEOUT_S / 0.2 - 3, f"only {sent} bytes were trickled"
        assert get(url(server, "/healthz")) == (200, b"ok\n")


def test_tricklers_holding_every_slot_cannot_lock_out_a_client_that_sends_its_request() -> None:
    with listening() as server:
        with Tricklers(address_of(server), count=2 * MAX_CONNECTIONS, interval=0.1) as tricklers:
            slowest = 0.0
            for _ in range(20):
                # Each time, every slot is taken by a connection still sending its head.
                wait_until(lambda: server.heads_arriving == MAX_CONNECTIONS, timeout=5)
                started = time.monotonic()
                status, body = get(url(server, "/healthz"))
                slowest = max(slowest, time.monotonic() - started)
                assert (status, body) == (200, b"ok\n")
            assert get(url(server, "/metrics"))[0] == 200
            assert tricklers.replaced > 0, "no trickler was ever dropped: the attack was not under way"
        assert slowest < 1.0, f"an answer took {slowest:.2f}s under the attack"


def test_a_request_head_sent_byte_by_byte_is_answered() -> None:
    with listening() as server, socket.create_connection(address_of(server), timeout=5) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in b"GET /healthz?x=1 HTTP/1.1\r\nHost: credsync\r\n\r\n":
            connection.sendall(bytes([byte]))
        answer = b""
        while chunk := connection.recv(4096):
            answer += chunk
        assert answer.startswith(b"HTTP/1.0 200 ") and answer.endswith(b"\r\n\r\nok\n"), answer


def test_a_reset_connection_is_one_log_line_not_a_traceback(capfd: pytest.CaptureFixture[str]) -> None:
    with log_records() as records, listening() as server:
        connection = socket.create_connection(address_of(server), timeout=2)
        connection.sendall(b"GET /metrics HTTP/1.1\r\nHost: cred")
        port = connection.getsockname()[1]
        wait_until(lambda: server.heads_arriving == 1, timeout=5)
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()  # linger 0: a reset, not a FIN

        def about_it() -> list[dict[str, Any]]:
            return [record for record in records if record.get("client") == f"127.0.0.1:{port}"]

        wait_until(lambda: len(about_it()) > 0, timeout=5)
        assert get(url(server, "/healthz")) == (200, b"ok\n")
    [record] = about_it()
    assert record["message"] == "http connection dropped" and record["level"] == "DEBUG"
    assert "ConnectionResetError" in record["reason"] and "\n" not in record["reason"]
    assert "Traceback" not in capfd.readouterr().err


class Broken(Collector):
    def collect(self) -> Iterator[Any]:
        raise RuntimeError("a collector failed\nTraceback (forged)")


def test_a_fault_while_answering_is_one_error_line_and_the_listener_goes_on(capfd: pytest.CaptureFixture[str]) -> None:
    tally = healthy_tally()
    tally.registry.register(Broken())
    with log_records() as records, listening(tally=tally) as server:
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            get(url(server, "/metrics"))
        wait_until(lambda: any(record["message"] == "http request failed" for record in records), timeout=5)
        assert get(url(server, "/healthz")) == (200, b"ok\n")
    [failed] = [record for record in records if record["message"] == "http request failed"]
    assert failed["level"] == "ERROR"
    assert failed["error"] == "RuntimeError: a collector failed Traceback (forged)"
    assert "Traceback" not in capfd.readouterr().err


def ipv6_loopback_port() -> int:
    """A free port on ::1. This machine must have IPv6 loopback: without it the test fails, it is not skipped."""
    assert socket.has_ipv6, "Python was built without IPv6"
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
        probe.bind(("::1", 0))  # OSError here: no ::1 on this machine
        return int(probe.getsockname()[1])


def test_the_listener_serves_on_the_ipv6_loopback() -> None:
    ipv6_loopback_port()
    with listening("::1") as server:
        assert server.address_family == socket.AF_INET6
        assert url(server, "/healthz").startswith("http://[::1]:")
        assert get(url(server, "/healthz")) == (200, b"ok\n")


def test_a_name_with_an_ipv4_address_still_listens_on_ipv4() -> None:
    with listening("localhost") as server:
        assert server.address_family == socket.AF_INET and server.server_address[0] == "127.0.0.1"


def test_a_bracketed_ipv6_address_reaches_serve_as_a_bare_host(monkeypatch: pytest.MonkeyPatch) -> None:
    flag = build_parser().parse_args(["watch", "--http", "[::1]:9817"])
    assert load_settings({"http": flag.http}).http == ("::1", 9817)
    monkeypatch.setenv("CREDSYNC_HTTP", "[::1]:9817")
    assert load_settings({}).http == ("::1", 9817)


@pytest.mark.system  # the folders are chowned to the consumer's UID
@pytest.mark.parametrize("given_by", ["flag", "environment"])
def test_credsync_watch_serves_healthz_on_ipv6(folders: Folders, given_by: str) -> None:
    port = ipv6_loopback_port()
    address = f"[::1]:{port}"
    if given_by == "flag":
        process = WatchProcess(folders, ["--settle-ms=50", f"--http={address}"])
    else:
        process = WatchProcess(folders, ["--settle-ms=50"], env={"CREDSYNC_HTTP": address})
    try:
        process.ready()
        wait_until(lambda: get(f"http://{address}/healthz") == (200, b"ok\n"), timeout=15)
        assert b"credsync_ready 1.0" in get(f"http://{address}/metrics")[1]
    finally:
        assert process.stop() == 0
