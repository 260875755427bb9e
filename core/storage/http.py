"""http(s):// sources: streamed reads with a timeout and a size limit.

Failures leave as StorageError ("source returned HTTP 404"); urllib and
http.client errors never escape.
"""
from __future__ import annotations

import http.client
import ipaddress
import socket
import urllib.error
import urllib.parse
import urllib.request

from core.errors import StorageError, ValidationError
from core.interfaces import Storage
from core.storage.transfer import copy_limited, display

HTTP_TIMEOUT_S = 30.0
_MAX_REDIRECTS = 5


def _refuse_link_local(url: str) -> None:
    """Raise StorageError if `url`'s host resolves to a link-local address.

    That is where cloud metadata services answer (169.254.169.254 and
    fd00:ec2::254 on EC2); a source URL must not fetch an encoder's credentials.
    """
    parts = urllib.parse.urlsplit(url)
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 80, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return  # unresolvable: urllib reports it as unreachable
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0].split("%")[0])
        if address.is_link_local or address == ipaddress.ip_address("fd00:ec2::254"):
            raise StorageError(f"source host {parts.hostname} is a link-local address, which is refused")


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http/https (urllib alone would also follow ftp)."""

    max_redirections = _MAX_REDIRECTS

    def http_error_302(self, req, fp, code, msg, headers):
        location = headers.get("Location") or headers.get("URI") or ""
        scheme = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, location)).scheme
        if scheme not in ("http", "https"):
            fp.close()
            raise StorageError(f"source redirected to a {scheme}: URI, which is refused")
        try:
            _refuse_link_local(urllib.parse.urljoin(req.full_url, location))
        except StorageError:
            fp.close()
            raise
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


class HttpStorage(Storage):
    """http:// and https:// sources, streamed with a timeout and a size limit.

    Destinations over HTTP are not supported: `upload` raises StorageError.
    """

    schemes = ("http", "https")

    def __init__(self, timeout_s: float = HTTP_TIMEOUT_S, user_agent: str = "media-nommer nommerd"):
        self.timeout_s = timeout_s
        self.user_agent = user_agent

    def check_source(self, uri: str) -> None:
        parts = urllib.parse.urlsplit(uri)
        if parts.scheme not in self.schemes or not parts.hostname:
            raise ValidationError(f"source {display(uri)!r} is not an http(s) URL with a host")
        if parts.username or parts.password:
            raise ValidationError("source URLs must not carry credentials")
        try:
            parts.port
        except ValueError:
            raise ValidationError("source URL has a bad port") from None

    def check_destination(self, uri: str) -> None:
        raise ValidationError(f"destination {display(uri)}: http(s) destinations are not supported")

    def download(self, uri: str, local_path: str, max_bytes: int) -> int:
        """GET `uri` into `local_path`. Raises StorageError on HTTP errors
        ("source returned HTTP 404"), timeouts, refused redirects and
        bodies over `max_bytes` (checked while streaming)."""
        try:
            self.check_source(uri)
        except ValidationError as exc:
            raise StorageError(str(exc)) from None
        _refuse_link_local(uri)
        opener = urllib.request.build_opener(_HttpOnlyRedirects)
        request = urllib.request.Request(uri, headers={"User-Agent": self.user_agent})
        shown = display(uri)
        try:
            with opener.open(request, timeout=self.timeout_s) as response:
                declared = response.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise StorageError(f"source {shown} is larger than the limit of {max_bytes} bytes")
                with open(local_path, "wb") as writer:
                    return copy_limited(response, writer, max_bytes, uri)
        except urllib.error.HTTPError as exc:
            raise StorageError(f"source returned HTTP {exc.code}") from None
        except urllib.error.URLError as exc:
            raise StorageError(f"source {shown} could not be reached: {exc.reason}") from None
        except TimeoutError:
            raise StorageError(f"source {shown} timed out after {self.timeout_s:g} s") from None
        except http.client.HTTPException as exc:
            raise StorageError(f"downloading source {shown} failed: {type(exc).__name__}") from None
        except OSError as exc:
            raise StorageError(f"downloading source {shown} failed: {exc.strerror or exc}") from None

    def upload(self, local_path: str, uri: str) -> None:
        raise StorageError(f"destination {display(uri)}: http(s) destinations are not supported")
