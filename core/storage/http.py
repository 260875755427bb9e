"""http(s):// sources: streamed reads inside the reach policy, with limits.

Each hop (the URL and every redirect) goes through core.outbound: resolved
once, checked against the reach policy (core.reach), connected to the
checked address. A download is cut off at its deadline, when it moves fewer
than the minimum bytes in a window (a source that drips), or when its stop
event is set (the job was cancelled or lost); a body shorter than its
Content-Length is an error, never a truncated source.

Failures leave as StorageError ("source returned HTTP 404"); urllib3 and
socket errors never escape, and no message tells what listens where.
"""
from __future__ import annotations

import dataclasses
import threading
import time

from core.errors import StorageError, ValidationError
from core.interfaces import Storage
from core.outbound import OutboundError, open_hop, parse_target, redirect_target
from core.reach import Reach
from core.settings import Settings
from core.storage.transfer import copy_limited, display

HTTP_TIMEOUT_S = 30.0
_MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclasses.dataclass(frozen=True)
class DownloadLimits:
    """How long a download may take, and how slowly it may move."""

    deadline_s: float = 3600.0
    min_bytes_per_s: int = 1024
    rate_window_s: float = 30.0
    connect_timeout_s: float = 3.0

    @classmethod
    def from_settings(cls, settings: Settings) -> "DownloadLimits":
        return cls(settings.download_deadline_s, settings.download_min_bytes_per_s,
                   settings.download_rate_window_s, settings.outbound_connect_timeout_s)


class HttpStorage(Storage):
    """http:// and https:// sources, streamed within `limits` and `reach`.

    Destinations over HTTP are not supported: `upload` raises StorageError.
    """

    schemes = ("http", "https")

    def __init__(self, timeout_s: float = HTTP_TIMEOUT_S, user_agent: str = "media-nommer nommerd",
                 reach: Reach | None = None, limits: DownloadLimits | None = None):
        self.timeout_s = timeout_s
        self.user_agent = user_agent
        self.reach = reach or Reach(Settings())
        self.limits = limits or DownloadLimits()

    @classmethod
    def from_settings(cls, settings: Settings) -> "HttpStorage":
        return cls(reach=Reach(settings), limits=DownloadLimits.from_settings(settings))

    def check_source(self, uri: str) -> None:
        try:
            parse_target(uri)
        except OutboundError as exc:
            raise ValidationError(f"source URL: {exc}") from None

    def check_destination(self, uri: str) -> None:
        raise ValidationError(f"destination {display(uri)}: http(s) destinations are not supported")

    def download(self, uri: str, local_path: str, max_bytes: int,
                 stop: threading.Event | None = None) -> int:
        """GET `uri` into `local_path`. Raises StorageError on HTTP errors
        ("source returned HTTP 404"), refused addresses or redirects, a body
        shorter than its Content-Length or over `max_bytes`, a source too slow
        or past the deadline, or when `stop` is set."""
        shown = display(uri)
        limits = self.limits
        deadline = time.monotonic() + limits.deadline_s
        try:
            target = parse_target(uri)
            for _ in range(_MAX_REDIRECTS + 1):
                exchange = open_hop(
                    target, self.reach, headers={"User-Agent": self.user_agent},
                    connect_timeout_s=limits.connect_timeout_s,
                    read_timeout_s=min(self.timeout_s, limits.rate_window_s),
                    deadline=deadline, stop=stop, min_bytes_per_s=limits.min_bytes_per_s,
                    rate_window_s=limits.rate_window_s)
                with exchange:
                    if exchange.status in _REDIRECTS:
                        target = redirect_target(target, exchange.header("Location"))
                        continue
                    if exchange.status != 200:
                        raise StorageError(f"source returned HTTP {exchange.status}")
                    return _save(exchange, local_path, max_bytes, uri)
            raise StorageError(f"source {shown}: more than {_MAX_REDIRECTS} redirects")
        except OutboundError as exc:
            raise StorageError(f"source {shown} {exc}") from None

    def upload(self, local_path: str, uri: str) -> None:
        raise StorageError(f"destination {display(uri)}: http(s) destinations are not supported")


def _save(exchange, local_path: str, max_bytes: int, uri: str) -> int:
    declared = exchange.header("Content-Length") or ""
    if declared.isdigit() and int(declared) > max_bytes:
        raise StorageError(f"source {display(uri)} is larger than the limit of {max_bytes} bytes")
    try:
        with open(local_path, "wb") as writer:
            total = copy_limited(exchange, writer, max_bytes, uri)
    except OSError as exc:
        raise StorageError(f"writing the download of {display(uri)} failed: "
                           f"{exc.strerror or exc}") from None
    if declared.isdigit() and total != int(declared):
        raise StorageError(f"source {display(uri)} ended after {total} of {declared} bytes")
    return total
