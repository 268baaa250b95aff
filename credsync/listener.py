"""The HTTP listener's connection handling: any local user can connect, so an idle or slow
client must take neither the daemon's file descriptors nor the listener. Request heads are read
by one thread without blocking; a handler thread answers a complete head from memory."""

from __future__ import annotations

import io
import re
import selectors
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from loguru import logger

from credsync.errors import one_line, printable

MAX_CONNECTIONS = 8  # open at once, being read or answered: a bound on the daemon's descriptors
REQUEST_TIMEOUT_S = 5.0  # from accept to the answer's last byte, however the client paces its bytes
MAX_HEAD_BYTES = 16 * 1024  # a request line and headers; /metrics and /healthz need no body
HEAD_END = re.compile(rb"\n\r?\n")  # the blank line after the headers (http.server also takes a bare LF)


@dataclass(eq=False)
class Reading:
    """A connection whose request head is still arriving."""

    connection: socket.socket
    address: tuple[object, ...]  # the client's: (host, port), or four fields for IPv6
    deadline: float  # time.monotonic()
    head: bytearray = field(default_factory=bytearray)


def address_family(host: str, port: int) -> socket.AddressFamily:
    """IPv6 for an IPv6 address ('::1', '::') or a name with only IPv6 addresses; IPv4 otherwise,
    as before (a name with both, such as localhost, keeps listening on its IPv4 address)."""
    families = {info[0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    return socket.AF_INET if socket.AF_INET in families or not families else socket.AF_INET6


def peer(address: object) -> str:
    """A client's address as one would type it: 127.0.0.1:5000, [::1]:5000."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return printable(str(address))


class BoundedHTTPServer(ThreadingHTTPServer):
    """At most MAX_CONNECTIONS open at a time, each with REQUEST_TIMEOUT_S from accept to the
    end of its answer (any local user can connect, so an idle or slow client must not take the
    daemon's file descriptors, nor the listener).

    One thread (serve_forever's) reads every request head without blocking; a handler thread is
    started only for a complete head, which it answers from memory, so the only wait in a
    handler is sending the answer, bounded by what is left of the deadline. A client that
    trickles its headers (slowloris) holds no thread, and when every slot is taken a new
    connection evicts the oldest one still sending its head: tricklers cannot lock out a client
    that sends its request at once. A connection arriving while every slot is being answered is
    closed at once."""

    daemon_threads = True
    request_queue_size = 64  # socketserver's 5 drops a burst's SYNs, each then retried a second later

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self.address_family = address_family(*address)  # TCPServer's class attribute is IPv4
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._reading: dict[socket.socket, Reading] = {}  # in accept order: the oldest first
        self._heads: dict[socket.socket, tuple[bytes, float]] = {}  # read, for the handler threads
        self._stop = threading.Event()
        self._stopped = threading.Event()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """socketserver's loop hands every accepted connection to a thread that reads it; this
        one reads request heads itself (see the class) and honours shutdown() the same way."""
        self._stopped.clear()
        self.socket.setblocking(False)  # a client gone between select and accept must not block the loop
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            try:
                while not self._stop.is_set():
                    now = time.monotonic()
                    oldest = next(iter(self._reading.values()), None)
                    wait = poll_interval if oldest is None else min(poll_interval, oldest.deadline - now)
                    for key, _ in selector.select(max(wait, 0.0)):
                        if key.data is None:
                            self._accept(selector)
                        elif key.data.connection in self._reading:  # not evicted by an accept of this round
                            self._read(selector, key.data)
                    self._expire(selector)
            finally:
                for reading in list(self._reading.values()):
                    self._drop(selector, reading, "the listener stopped")
                self._stop.clear()
                self._stopped.set()

    @property
    def heads_arriving(self) -> int:
        """Connections still sending their request head (what a slowloris client holds)."""
        return len(self._reading)

    def shutdown(self) -> None:
        """Stop serve_forever and wait for it, as socketserver's does (at most poll_interval)."""
        self._stop.set()
        self._stopped.wait()

    def _accept(self, selector: selectors.BaseSelector) -> None:
        try:
            connection, address = self.socket.accept()
        except OSError:  # gone before accept, or no descriptor left: the next event retries
            return
        if not self._slots.acquire(blocking=False):
            if not self._reading:  # every slot is answering a complete request: over the cap
                connection.close()
                return
            self._drop(selector, next(iter(self._reading.values())), "evicted: still sending its request")
            self._slots.acquire(blocking=False)  # the slot just released; only this thread acquires
        connection.setblocking(False)
        reading = Reading(connection, address, time.monotonic() + REQUEST_TIMEOUT_S)
        self._reading[connection] = reading
        selector.register(connection, selectors.EVENT_READ, reading)

    def _read(self, selector: selectors.BaseSelector, reading: Reading) -> None:
        try:
            data = reading.connection.recv(MAX_HEAD_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:  # reset by the client, typically
            self._drop(selector, reading, describe(error))
            return
        if not data:  # the client closed its side: answer what came, if anything
            if reading.head:
                self._dispatch(selector, reading)
            else:
                self._drop(selector, reading, "closed by the client")
            return
        reading.head += data
        if HEAD_END.search(reading.head, max(0, len(reading.head) - len(data) - 2)):
            self._dispatch(selector, reading)
        elif len(reading.head) > MAX_HEAD_BYTES:
            self._drop(selector, reading, f"request head over {MAX_HEAD_BYTES} bytes")

    def _expire(self, selector: selectors.BaseSelector) -> None:
        now = time.monotonic()
        while self._reading:
            oldest = next(iter(self._reading.values()))
            if oldest.deadline > now:
                return
            self._drop(selector, oldest, f"no complete request within {REQUEST_TIMEOUT_S:g}s")

    def _drop(self, selector: selectors.BaseSelector, reading: Reading, why: str) -> None:
        selector.unregister(reading.connection)
        del self._reading[reading.connection]
        reading.connection.close()
        self._slots.release()
        log_dropped(reading.address, why)

    def _dispatch(self, selector: selectors.BaseSelector, reading: Reading) -> None:
        selector.unregister(reading.connection)
        del self._reading[reading.connection]
        self._heads[reading.connection] = (bytes(reading.head), reading.deadline)
        try:
            self.process_request(reading.connection, reading.address)  # ThreadingMixIn: its own thread
        except Exception as error:  # no thread (out of threads): this loop must go on
            self._heads.pop(reading.connection, None)
            self.shutdown_request(reading.connection)
            self._slots.release()
            logger.bind(client=peer(reading.address), error=describe(error)).error("http request failed")

    def request_head(self, connection: socket.socket) -> tuple[bytes, float]:
        """The head read for this connection, and its deadline (for its handler)."""
        return self._heads.pop(connection)

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._heads.pop(request, None)
            self._slots.release()

    def handle_error(self, request: object, client_address: object) -> None:  # noqa: ARG002 - socketserver's API
        """socketserver prints a traceback to stderr; this is one log line. A client that resets
        its connection, or reads its answer too slowly, is routine; anything else is a fault here."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            log_dropped(client_address, describe(error))
        else:
            logger.bind(client=peer(client_address), error=describe(error)).error("http request failed")


def describe(error: BaseException | None) -> str:
    """One line: the exception's type and text (never a traceback)."""
    return one_line(f"{type(error).__name__}: {error}")


def log_dropped(address: object, why: str) -> None:
    """Debug level: under a flood of slow clients, one line per connection would drown the log."""
    logger.bind(client=peer(address), reason=why).debug("http connection dropped")


class RequestHandler(BaseHTTPRequestHandler):
    """Answers the head BoundedHTTPServer has read, from memory, and sends the whole answer in
    one write bounded by what is left of the request's deadline."""

    def setup(self) -> None:  # instead of StreamRequestHandler's, which reads the socket
        self.connection = self.request
        server = self.server
        if not isinstance(server, BoundedHTTPServer):
            raise TypeError("RequestHandler serves BoundedHTTPServer's connections only")
        head, self._deadline = server.request_head(self.connection)
        self.rfile = io.BytesIO(head)
        self._outgoing = io.BytesIO()
        self.wfile = self._outgoing

    def finish(self) -> None:
        answer = self._outgoing.getvalue()
        if not answer:
            return
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no answer within {REQUEST_TIMEOUT_S:g}s")
        self.connection.settimeout(remaining)  # sendall's timeout covers the whole answer
        self.connection.sendall(answer)

    def log_message(self, format: str, *args: object) -> None:  # quiet: no access log
        pass
