"""Tell an application that its job changed state: the original's form POST.

Wire format (kept from media-nommer's feederd, which applications rely on):

    POST <notify_url>
    User-Agent: media-nommer feederd
    Content-Type: application/x-www-form-urlencoded

    unique_id=<job id>&job_state=<STATE>&job_state_details=<text>

The receiver's answer is only logged. Failures become NotifyError, so the
caller decides whether to try again.
"""
from __future__ import annotations

import http.client
import logging
import socket
import ssl
import threading
import time
from urllib.parse import urlencode, urljoin, urlsplit

from core.errors import NommerError

log = logging.getLogger(__name__)

USER_AGENT = "media-nommer feederd"
CONTENT_TYPE = "application/x-www-form-urlencoded"
# The answer is only logged, so a receiver cannot make us read megabytes.
MAX_ANSWER_BYTES = 4096
MAX_REDIRECTS = 3
_SCHEMES = ("http", "https")
# Redirects after which the same POST is sent again to the new location:
# the notification only means something as this POST (a moved receiver, or
# http -> https). 303 is not among them: it is the receiver saying "handled,
# see elsewhere" (post/redirect/get), so it counts as delivered.
_RESEND_ON = frozenset({301, 302, 307, 308})
_DELIVERED_ON_SEE_OTHER = 303


class NotifyError(NommerError):
    """The receiver did not take the notification.

    `retryable` is False when sending again cannot help (a URL that is not
    http(s), carries credentials or cannot be parsed). `status` is the
    receiver's HTTP status when it answered, else None.
    """

    def __init__(self, message: str, retryable: bool = True, status: int | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.status = status


def form_body(job_id: str, state: str, details: str) -> bytes:
    """The form-encoded body, fields in the original's order."""
    return urlencode([("unique_id", job_id), ("job_state", state),
                      ("job_state_details", details or "")]).encode("ascii")


def describe_url(url: str) -> str:
    """`url` without credentials, query string or fragment, fit for a log line."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable url>"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def send_notification(url: str, job_id: str, state: str, details: str,
                      timeout_s: float) -> None:
    """POST the job's state to `url`; return once the receiver answered 2xx (or 303).

    `timeout_s` bounds the whole exchange, redirects included (a receiver
    that trickles bytes is cut off too). Redirects are followed only to
    http(s) URLs, at most MAX_REDIRECTS times. Raises NotifyError when the
    URL is refused, the connection fails, the time runs out or the answer
    is any other status.
    """
    body = form_body(job_id, state, details)
    deadline = time.monotonic() + timeout_s
    target = url
    for _ in range(MAX_REDIRECTS + 1):
        status, location, answer = _post_once(target, body, deadline, timeout_s)
        if 200 <= status < 300 or status == _DELIVERED_ON_SEE_OTHER:
            log.info("job %s %s: notified %s, HTTP %d", job_id, state, describe_url(url), status)
            log.debug("job %s %s: receiver answered %r", job_id, state, answer[:200])
            return
        if status not in _RESEND_ON or not location:
            raise NotifyError(f"receiver answered HTTP {status}", status=status)
        target = urljoin(target, location)
        if urlsplit(target).scheme not in _SCHEMES:
            raise NotifyError(f"receiver answered HTTP {status} with a redirect to a "
                              f"non-http(s) URL; not followed", status=status)
    raise NotifyError(f"more than {MAX_REDIRECTS} redirects", status=status)


class _Target:
    """The parts of an http(s) URL needed to send to it. Raises NotifyError (not retryable)."""

    def __init__(self, url: str):
        if any(ch <= " " or ch == "\x7f" for ch in url):
            raise NotifyError("notify URL contains spaces or control characters", retryable=False)
        try:
            parts = urlsplit(url)
            self.port = parts.port
        except ValueError:
            raise NotifyError("notify URL cannot be parsed", retryable=False) from None
        if parts.scheme not in _SCHEMES:
            raise NotifyError(f"notify URL scheme {parts.scheme!r} is not http or https",
                              retryable=False)
        if not parts.hostname:
            raise NotifyError("notify URL has no host", retryable=False)
        # URIs never carry credentials in this system: they would end up in logs.
        if parts.username is not None or parts.password is not None:
            raise NotifyError("notify URL carries credentials; refused", retryable=False)
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    def connection(self, timeout_s: float) -> http.client.HTTPConnection:
        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout_s,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout_s)


def _post_once(url: str, body: bytes, deadline: float,
               timeout_s: float) -> tuple[int, str | None, bytes]:
    """One POST: (status, Location header or None, first bytes of the answer)."""
    target = _Target(url)
    remaining_s = deadline - time.monotonic()
    if remaining_s <= 0:
        raise NotifyError(f"no answer within {timeout_s:g} s")
    conn = target.connection(remaining_s)
    # The socket timeout bounds each read, not the sum of them; the watchdog
    # shuts the socket at the deadline so a trickling receiver is cut off too.
    expired = threading.Event()
    watchdog = threading.Timer(remaining_s, _cut_off, args=(conn, expired))
    watchdog.daemon = True
    watchdog.start()
    try:
        conn.request("POST", target.path, body=body, headers={
            "User-Agent": USER_AGENT, "Content-Type": CONTENT_TYPE, "Connection": "close"})
        response = conn.getresponse()
        answer = response.read(MAX_ANSWER_BYTES)
        if expired.is_set():
            # The cut-off socket reads as a short, seemingly complete answer.
            raise NotifyError(f"no answer within {timeout_s:g} s")
        return response.status, response.getheader("Location"), answer
    except (OSError, http.client.HTTPException) as exc:
        if expired.is_set() or isinstance(exc, TimeoutError):
            raise NotifyError(f"no answer within {timeout_s:g} s") from None
        raise NotifyError(f"{type(exc).__name__}: {exc}") from None
    except ValueError as exc:  # a host name that cannot be encoded (IDNA)
        raise NotifyError(f"notify URL refused: {exc}", retryable=False) from None
    finally:
        watchdog.cancel()
        conn.close()


def _cut_off(conn: http.client.HTTPConnection, expired: threading.Event) -> None:
    expired.set()
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed: the exchange ended on its own
