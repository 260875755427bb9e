"""Outbound HTTP to untrusted URLs (sources, notifications), over urllib3.

`parse_target` is the one parser of such URLs: the API validates a
notify_url with it, and the sender opens what it returns, so what is
accepted can be sent. `open_hop` makes one request: the host is resolved
once and checked by the reach policy (core.reach), and urllib3's connection
goes to that address while sending the URL's Host header and, over TLS, its
server name (SNI and certificate check). Redirects are the caller's to
follow, each hop through `open_hop` again, so each is checked.

An `Exchange` is cut off at its deadline, when its stop event is set, or
when its body moves fewer than `min_bytes_per_s` over a window (the socket
is shut down from a watcher thread), so a receiver or source that trickles
bytes, or hangs, holds nothing past that.

Every failure is OutboundError. Its message never tells a refused
connection from a timeout or a reset: a client must not learn from it
what listens where.
"""
from __future__ import annotations

import dataclasses
import http.client
import socket
import ssl
import threading
import time
import urllib.parse

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from core.errors import NommerError
from core.reach import Reach, ReachRefused

SCHEMES = ("http", "https")
UNREACHABLE = "could not be reached or did not answer"
_WATCH_TICK_S = 0.1


class OutboundError(NommerError):
    """A request could not be made or completed.

    `retryable` is False when sending again cannot help (a URL that cannot
    be parsed, or an address refused by policy). `status` is the answer's
    HTTP status when there was one.
    """

    def __init__(self, message: str, retryable: bool = True, status: int | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.status = status


@dataclasses.dataclass(frozen=True)
class Target:
    """An http(s) URL taken apart for sending."""

    scheme: str
    host: str  # a name, or an address without brackets
    port: int
    request_uri: str  # path and query

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host_header}{self.request_uri}"


def parse_target(url: object) -> Target:
    """`url` as a Target. Raises OutboundError (not retryable) naming what is wrong."""
    if not isinstance(url, str):
        raise OutboundError("the URL must be a string", retryable=False)
    if any(ch <= " " or ch == "\x7f" for ch in url):
        raise OutboundError("the URL contains spaces or control characters", retryable=False)
    try:
        url.encode("utf-8")
        parts = parse_url(url)
    except (UnicodeError, LocationParseError, ValueError):
        raise OutboundError("the URL cannot be parsed", retryable=False) from None
    scheme = (parts.scheme or "").lower()
    if scheme not in SCHEMES:
        raise OutboundError("the URL's scheme is not http or https", retryable=False)
    if not parts.host:
        raise OutboundError("the URL has no host", retryable=False)
    if parts.auth is not None:
        # Credentials would end up in logs and job records.
        raise OutboundError("the URL carries credentials; refused", retryable=False)
    port = parts.port or (443 if scheme == "https" else 80)
    return Target(scheme, parts.host.strip("[]"), port, parts.request_uri or "/")


def redirect_target(current: Target, location: str | None) -> Target:
    """Where a redirect's Location leads from `current`. Raises OutboundError
    (not retryable) for a missing, malformed or non-http(s) location."""
    if not location:
        raise OutboundError("redirect without a location", retryable=False)
    try:
        joined = urllib.parse.urljoin(current.url, location)
    except ValueError:
        raise OutboundError("redirect to a malformed URL", retryable=False) from None
    try:
        return parse_target(joined)
    except OutboundError as exc:
        raise OutboundError(f"redirect refused: {exc}", retryable=False) from None


class Exchange:
    """One request and its answer. Use as a context manager; `read` is
    bounded by the deadline and the stop event."""

    def __init__(self, conn: urllib3.connection.HTTPConnection, deadline: float,
                 stop: threading.Event | None, min_bytes_per_s: int = 0,
                 rate_window_s: float = 30.0):
        self._conn = conn
        self._deadline = deadline
        self._stop = stop
        self._min_bytes_per_s = min_bytes_per_s
        self._rate_window_s = rate_window_s
        self._closed = threading.Event()
        self.bytes_read = 0
        self.expired = False
        self.stopped = False
        self.too_slow = False
        self.response = None
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="outbound-watch")
        self._watcher.start()

    def _watch(self) -> None:
        window_start, window_bytes = time.monotonic(), 0
        while not self._closed.wait(_WATCH_TICK_S):
            now = time.monotonic()
            if self._stop is not None and self._stop.is_set():
                self.stopped = True
            elif now >= self._deadline:
                self.expired = True
            elif self._min_bytes_per_s and now - window_start >= self._rate_window_s:
                moved = self.bytes_read - window_bytes
                if moved >= self._min_bytes_per_s * (now - window_start):
                    window_start, window_bytes = now, self.bytes_read
                    continue
                self.too_slow = True
            else:
                continue
            sock = self._conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed
            return

    @property
    def status(self) -> int:
        return self.response.status

    def header(self, name: str) -> str | None:
        return self.response.headers.get(name)

    def read(self, amount: int) -> bytes:
        """Up to `amount` bytes of the body (b"" at its end). Raises
        OutboundError when cut off, or when the body ends before its
        Content-Length."""
        try:
            # read1: what has arrived, so the count the watcher sees moves with the bytes.
            data = self.response.read1(amount)
        except (Urllib3Error, OSError, http.client.HTTPException) as exc:
            raise self._failure(exc) from None
        if self.expired or self.stopped or self.too_slow:
            raise self._failure(None)
        self.bytes_read += len(data)
        return data

    def _failure(self, exc: BaseException | None) -> OutboundError:
        if self.stopped:
            return OutboundError("stopped")
        if self.expired:
            return OutboundError("did not complete in time")
        if self.too_slow:
            return OutboundError(f"sent less than {self._min_bytes_per_s} bytes/s "
                                 f"over {self._rate_window_s:g} s; too slow")
        if isinstance(exc, urllib3.exceptions.ProtocolError) and "IncompleteRead" in repr(exc):
            return OutboundError("the connection closed before all the bytes announced "
                                 "(Content-Length) arrived")
        if isinstance(exc, (TimeoutError, urllib3.exceptions.ReadTimeoutError, socket.timeout)):
            return OutboundError("stopped sending data")
        return OutboundError("the connection failed while reading the answer")

    def close(self) -> None:
        self._closed.set()
        try:
            if self.response is not None:
                self.response.release_conn()
        finally:
            self._conn.close()

    def __enter__(self) -> "Exchange":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_hop(target: Target, reach: Reach, *, method: str = "GET", body: bytes | None = None,
             headers: dict[str, str] | None = None, connect_timeout_s: float = 3.0,
             read_timeout_s: float = 10.0, deadline: float | None = None,
             stop: threading.Event | None = None, min_bytes_per_s: int = 0,
             rate_window_s: float = 30.0) -> Exchange:
    """Send one request to `target` (no redirects followed) and return the
    Exchange with its answer's status and headers read. Raises OutboundError:
    not retryable when the address is refused by policy."""
    try:
        address = reach.resolve(target.host, target.port)
    except ReachRefused as exc:
        raise OutboundError(f"refused: {exc}", retryable=False) from None
    if deadline is None:
        deadline = time.monotonic() + connect_timeout_s + read_timeout_s
    connect_s = max(0.01, min(connect_timeout_s, deadline - time.monotonic()))
    if target.scheme == "https":
        conn = urllib3.connection.HTTPSConnection(
            address, target.port, timeout=connect_s, server_hostname=target.host,
            assert_hostname=target.host, ssl_context=ssl.create_default_context())
    else:
        conn = urllib3.connection.HTTPConnection(address, target.port, timeout=connect_s)
    exchange = Exchange(conn, deadline, stop, min_bytes_per_s, rate_window_s)
    try:
        conn.connect()
        conn.sock.settimeout(read_timeout_s)
        conn.request(method, target.request_uri, body=body,
                     headers={"Host": target.host_header, "Connection": "close",
                              **(headers or {})},
                     preload_content=False, decode_content=False)
        exchange.response = conn.getresponse()
    except (Urllib3Error, OSError, ValueError, http.client.HTTPException):
        exchange.close()
        if exchange.stopped:
            raise OutboundError("stopped") from None
        # One message for refused, reset, silent and non-HTTP peers alike.
        raise OutboundError(UNREACHABLE) from None
    return exchange
