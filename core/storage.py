"""Storage by URI scheme: file:// (inside the configured roots) and http(s):// (read only).

Every failure leaves this module as StorageError with a reason a user can
act on ("source file:///in/a.mp4 does not exist"); form errors found before
any I/O (`check_source`, `check_destination`) are ValidationError. OSError
and urllib errors never escape.

A `StorageRouter` picks the Storage for a URI's scheme, so another backend
(s3://) is added by registering one more Storage.
"""
from __future__ import annotations

import contextlib
import http.client
import ipaddress
import os
import shutil
import socket
import stat
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from core.errors import StorageError, ValidationError
from core.interfaces import Storage
from core.settings import Settings
from core.uris import file_path_in_roots, redact

_CHUNK_BYTES = 1024 * 1024
HTTP_TIMEOUT_S = 30.0
_MAX_REDIRECTS = 5


def _display(uri: str) -> str:
    """`uri` fit for a job's details and logs: credentials and signed tokens hidden."""
    return redact(uri) or ""


def _copy_limited(reader, writer, max_bytes: int, uri: str) -> int:
    """Copy until EOF; raise StorageError as soon as more than `max_bytes` came."""
    total = 0
    while True:
        chunk = reader.read(_CHUNK_BYTES)
        if not chunk:
            return total
        total += len(chunk)
        if total > max_bytes:
            raise StorageError(f"source {_display(uri)} is larger than the limit of {max_bytes} bytes")
        writer.write(chunk)


class FileStorage(Storage):
    """file:// URIs whose resolved path lies inside one of `roots`.

    Symbolic links are resolved before the check, so a link inside a root
    cannot lead outside it. Writes are atomic: a temporary file in the
    destination folder, then os.replace, so a reader never sees half a file.
    """

    schemes = ("file",)

    def __init__(self, roots: tuple[Path, ...] | list[Path]):
        self.roots = tuple(Path(root).resolve() for root in roots)

    def path_of(self, uri: str, role: str = "source") -> Path:
        """The resolved local path of `uri`. Raises ValidationError if the URI
        is malformed or names a place outside the roots (the same rule the
        API applies; checked again here because the file system may change)."""
        return file_path_in_roots(uri, self.roots, role)

    def check_source(self, uri: str) -> None:
        self.path_of(uri, "source")

    def check_destination(self, uri: str) -> None:
        self.path_of(uri, "destination")

    def download(self, uri: str, local_path: str, max_bytes: int) -> int:
        """Copy the file to `local_path`. Raises StorageError if it is missing,
        outside the roots, not a regular file, or larger than `max_bytes`."""
        path = self._checked(uri, "source")
        try:
            # O_NONBLOCK: a FIFO planted in a root must not hang the encoder on open.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            raise StorageError(f"source {uri} does not exist") from None
        except PermissionError:
            raise StorageError(f"source {uri} is not readable") from None
        except OSError as exc:
            raise StorageError(f"source {uri} could not be opened: {exc.strerror}") from None
        try:
            with open(fd, "rb", closefd=True) as reader:
                if not stat.S_ISREG(os.fstat(reader.fileno()).st_mode):
                    raise StorageError(f"source {uri} is not a regular file")
                with open(local_path, "wb") as writer:
                    return _copy_limited(reader, writer, max_bytes, uri)
        except OSError as exc:
            raise StorageError(f"reading source {uri} failed: {exc.strerror or exc}") from None

    def upload(self, local_path: str, uri: str) -> None:
        """Write `local_path` to the destination atomically, creating missing
        folders inside the root. Raises StorageError when not writable."""
        path = self._checked(uri, "destination")
        if path.is_dir():
            raise StorageError(f"destination {uri} is a folder")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except PermissionError:
            raise StorageError(f"destination folder is not writable ({uri})") from None
        except OSError as exc:
            raise StorageError(f"destination folder of {uri} could not be made: {exc.strerror}") from None
        # The dot prefix keeps a half-written file out of "name*" globs.
        try:
            fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        except PermissionError:
            raise StorageError(f"destination folder is not writable ({uri})") from None
        except OSError as exc:
            raise StorageError(f"destination {uri} could not be written: {exc.strerror}") from None
        try:
            with open(fd, "wb") as writer, open(local_path, "rb") as reader:
                shutil.copyfileobj(reader, writer, _CHUNK_BYTES)
                writer.flush()
                os.fsync(writer.fileno())
            os.chmod(temp, 0o644)  # mkstemp's 0600 would hide the result from other users
            os.replace(temp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise StorageError(f"destination {uri} could not be written: {exc.strerror or exc}") from None

    def _checked(self, uri: str, role: str) -> Path:
        try:
            return self.path_of(uri, role)
        except ValidationError as exc:
            raise StorageError(str(exc)) from None


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
            raise ValidationError(f"source {_display(uri)!r} is not an http(s) URL with a host")
        if parts.username or parts.password:
            raise ValidationError("source URLs must not carry credentials")
        try:
            parts.port
        except ValueError:
            raise ValidationError("source URL has a bad port") from None

    def check_destination(self, uri: str) -> None:
        raise ValidationError(f"destination {_display(uri)}: http(s) destinations are not supported")

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
        shown = _display(uri)
        try:
            with opener.open(request, timeout=self.timeout_s) as response:
                declared = response.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise StorageError(f"source {shown} is larger than the limit of {max_bytes} bytes")
                with open(local_path, "wb") as writer:
                    return _copy_limited(response, writer, max_bytes, uri)
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
        raise StorageError(f"destination {_display(uri)}: http(s) destinations are not supported")


class StorageRouter(Storage):
    """Dispatches each call to the Storage registered for the URI's scheme."""

    def __init__(self, storages: list[Storage] | tuple[Storage, ...] = ()):
        self._by_scheme: dict[str, Storage] = {}
        for storage in storages:
            self.register(storage)

    @property
    def schemes(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(sorted(self._by_scheme))

    def register(self, storage: Storage) -> None:
        """Serve `storage.schemes` with `storage` (replacing any earlier one)."""
        for scheme in storage.schemes:
            self._by_scheme[scheme] = storage

    def storage_of(self, uri: str) -> Storage | None:
        return self._by_scheme.get(urllib.parse.urlsplit(uri).scheme.lower())

    def _for_transfer(self, uri: str) -> Storage:
        storage = self.storage_of(uri)
        if storage is None:
            raise StorageError(f"no storage for {_display(uri)!r}; supported: {', '.join(self.schemes)}")
        return storage

    def _for_check(self, uri: str, role: str) -> Storage:
        storage = self.storage_of(uri)
        if storage is None:
            scheme = urllib.parse.urlsplit(uri).scheme or "(none)"
            raise ValidationError(f"{role}: URI scheme {scheme!r} is not supported; "
                                  f"use one of {', '.join(self.schemes)}")
        return storage

    def download(self, uri: str, local_path: str, max_bytes: int) -> int:
        return self._for_transfer(uri).download(uri, local_path, max_bytes)

    def upload(self, local_path: str, uri: str) -> None:
        self._for_transfer(uri).upload(local_path, uri)

    def check_source(self, uri: str) -> None:
        self._for_check(uri, "source").check_source(uri)

    def check_destination(self, uri: str) -> None:
        self._for_check(uri, "destination").check_destination(uri)


def storage_for(settings: Settings) -> StorageRouter:
    """The storages this build serves: file:// inside settings.file_root_paths,
    http(s):// reads, and s3:// with credentials from boto3's standard chain."""
    from core.s3_storage import S3Storage

    return StorageRouter([FileStorage(settings.file_root_paths), HttpStorage(),
                          S3Storage.from_settings(settings)])
