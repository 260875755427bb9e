"""Checks on the URIs an API client sends, and their redaction for display.

A job's source, destination and notify_url come from untrusted clients.
They are checked here, before a job is stored, for form only (no I/O):
the scheme is one this build serves, no credentials ride in the URI, and a
file:// path resolves inside `settings.file_root_paths`. The storage layer
checks again when it transfers, because the file system may change between.

Every refusal is a ValidationError (code "BADINPUT") whose message starts
with the field name (source_path, dest_path, notify_url). Messages never
repeat the URI: it may hold a secret the client should not have sent.

A new scheme (s3://) is one checker function and one entry in
SOURCE_CHECKS and/or DESTINATION_CHECKS.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import unicodedata
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path

from core.errors import ValidationError
from core.reach import REFUSED_MESSAGE, Reach, is_metadata_address
from core.settings import Settings

MAX_URI_CHARS = 2048
# Extensions whose ffmpeg muxer (hls, dash, smoothstreaming, f4m) writes a
# playlist or manifest plus segment files.
MULTI_FILE_SUFFIXES = frozenset({".m3u8", ".m3u", ".mpd", ".ism", ".ismv", ".f4m"})

REDACTED = "REDACTED"

CREDENTIALS_HINT = (
    "credentials must not be put in URIs; use the machine's own credentials "
    "(an instance role or the AWS credential chain) for s3://, or a pre-signed "
    "https:// URL")

# Query-string keys whose values are hidden by `redact`: a key is secret when
# it contains one of these words, or starts with one of the prefixes.
_SECRET_WORDS = ("signature", "token", "key", "secret", "password", "passwd",
                 "credential", "auth", "session")
_SECRET_EXACT = frozenset({"sig", "pwd", "pass"})
_SECRET_PREFIXES = ("x-amz-", "x-goog-")

# Cloud metadata services answer on link-local addresses; a source URL there
# would hand the encoder's own credentials to whoever submitted the job.
_METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata"})

Checker = Callable[[urllib.parse.SplitResult, str, Settings], None]


def _has_control_chars(text: str) -> bool:
    return any(unicodedata.category(char) == "Cc" for char in text)


def _userinfo_span(uri: str) -> tuple[int, int] | None:
    """Where the userinfo ("user:secret") of `uri` starts and ends, or None.

    urlsplit alone misses a secret containing '/', as AWS secret keys often
    do: in "s3://KEY:abc/def@bucket/key" its netloc is "KEY:abc". So a netloc
    with a non-numeric "port" followed by an '@' later on counts as userinfo.
    """
    marker = uri.find("://")
    if marker < 0:
        return None
    start = marker + 3
    end = len(uri)
    for stop in "/?#":
        found = uri.find(stop, start)
        if found >= 0:
            end = min(end, found)
    netloc = uri[start:end]
    if "@" in netloc:
        return start, start + netloc.rindex("@")
    if ":" in netloc and not netloc.startswith("["):
        port = netloc.rsplit(":", 1)[1]
        at = uri.find("@", end)
        if not port.isdigit() and at >= 0:
            return start, at
    return None


def _split(uri: object, field: str) -> urllib.parse.SplitResult:
    """The parts of `uri` after the checks every URI field shares."""
    if uri is None:
        raise ValidationError(f"{field} is required")
    if not isinstance(uri, str):
        raise ValidationError(f"{field} must be a string")
    if not uri.strip():
        raise ValidationError(f"{field} is required and must not be empty")
    if len(uri) > MAX_URI_CHARS:
        raise ValidationError(f"{field} is longer than {MAX_URI_CHARS} characters")
    if _has_control_chars(uri):
        raise ValidationError(f"{field} contains control characters")
    if _userinfo_span(uri) is not None:
        raise ValidationError(f"{field}: {CREDENTIALS_HINT}")
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        raise ValidationError(f"{field} is not a valid URI") from None
    if not parts.scheme:
        raise ValidationError(f"{field} must be a URI with a scheme, like file:///path/in.mp4")
    return parts


def _check_file(parts: urllib.parse.SplitResult, field: str, settings: Settings) -> None:
    _file_path(parts, settings.file_root_paths, field)


def _literal_address(host: str):
    """The address `host` spells, in any form a resolver reads, or None for a name."""
    host = host.rstrip(".").strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        try:
            # inet_aton also reads the forms a resolver accepts for IPv4
            # ("2852039166", "0xa9.0xfe.0xa9.0xfe", "169.254.43518").
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except (OSError, UnicodeError, ValueError):
            return None


def _is_metadata_address(host: str) -> bool:
    address = _literal_address(host)
    if address is None:
        return host.rstrip(".").lower() in _METADATA_HOSTS
    return is_metadata_address(address)


def _check_http(parts: urllib.parse.SplitResult, field: str, settings: Settings) -> None:
    # Parsed by the code that will send to it, so what is accepted can be opened.
    from core.outbound import OutboundError, parse_target

    if not parts.hostname:
        raise ValidationError(f"{field}: an http(s) URL needs a host")
    try:
        parts.port
    except ValueError:
        raise ValidationError(f"{field}: the URL's port is not valid") from None
    try:
        target = parse_target(parts.geturl())
    except OutboundError as exc:
        raise ValidationError(f"{field}: {exc}") from None
    if _is_metadata_address(parts.hostname):
        raise ValidationError(f"{field}: link-local and cloud metadata addresses are refused")
    address = _literal_address(target.host)
    # A name is checked when it is resolved, just before each connection.
    if address is not None and not Reach(settings).allows(address, target.port):
        raise ValidationError(f"{field}: {REFUSED_MESSAGE}")


def _check_s3(parts: urllib.parse.SplitResult, field: str, settings: Settings) -> None:
    from core.storage.s3 import parse_s3_uri

    parse_s3_uri(parts.geturl(), field)
    # On AWS the machines have their instance roles; on one machine a job
    # without credentials would only fail later, delivery after delivery.
    if settings.backend == "local" and not _has_aws_credentials():
        raise ValidationError(f"{field}: no AWS credentials on this machine for s3:// URIs "
                              "(set them up as for the AWS CLI, or use file:// or https://)")


def _has_aws_credentials() -> bool:
    import boto3

    try:
        return boto3.session.Session().get_credentials() is not None
    except Exception:  # noqa: BLE001 - a broken credential setup counts as none
        return False


SOURCE_CHECKS: dict[str, Checker] = {
    "file": _check_file,
    "http": _check_http,
    "https": _check_http,
    "s3": _check_s3,
}
DESTINATION_CHECKS: dict[str, Checker] = {
    "file": _check_file,
    "s3": _check_s3,
}
NOTIFY_CHECKS: dict[str, Checker] = {
    "http": _check_http,
    "https": _check_http,
}


def _check(uri: object, field: str, settings: Settings, checks: dict[str, Checker]) -> str:
    parts = _split(uri, field)
    scheme = parts.scheme.lower()
    checker = checks.get(scheme)
    if checker is None:
        raise ValidationError(f"{field}: URI scheme {scheme!r} is not supported; "
                              f"use one of {', '.join(s + '://' for s in sorted(checks))}")
    checker(parts, field, settings)
    return uri  # type: ignore[return-value]  # _split proved it is a str


def check_source(uri: object, settings: Settings, field: str = "source_path") -> str:
    """Return `uri` if it may be a job's source; else raise ValidationError naming `field`."""
    return _check(uri, field, settings, SOURCE_CHECKS)


def check_destination(uri: object, settings: Settings, field: str = "dest_path") -> str:
    """Return `uri` if it may be a job's destination; else raise ValidationError naming `field`.

    Destinations whose muxer (picked by the extension) writes several files,
    a playlist or manifest and its segments, are refused: only one output
    file is uploaded, so the segments would be lost.
    """
    checked = _check(uri, field, settings, DESTINATION_CHECKS)
    if checked.endswith("/"):
        raise ValidationError(f"{field}: names a folder or prefix (ending in '/'); only an "
                              "hls or sprite output is written to one")
    suffix = os.path.splitext(urllib.parse.urlsplit(checked).path)[1].lower()
    if suffix in MULTI_FILE_SUFFIXES:
        raise ValidationError(f"{field}: a {suffix} destination is written as several files "
                              "(a playlist and its segments); for HLS give this destination the "
                              "hls preset, or the preset a prefix ending in '/' "
                              "(file:///.../dir/ or s3://bucket/prefix/); DASH is that "
                              "preset with \"dash\": true; other playlists and manifests "
                              "are not supported")
    return checked


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiouh" else "a"


def check_destination_prefix(uri: object, settings: Settings, field: str = "dest_path",
                             kind: str = "hls") -> str:
    """Return `uri` if an output of several files (of `kind`) may be written
    under it: a file:// folder inside the roots or an s3:// prefix, ending in
    '/'. Else raise ValidationError naming `field`."""
    if not isinstance(uri, str) or not uri.endswith("/"):
        raise ValidationError(f"{field}: {_article(kind)} {kind} output is written to a folder or prefix "
                              "ending in '/' (file:///.../dir/ or s3://bucket/prefix/)")
    stem = uri.rstrip("/")
    if "?" in uri or "#" in uri or not stem or stem.endswith((":", ":/")):
        raise ValidationError(f"{field}: names no folder or prefix "
                              "(file:///.../dir/ or s3://bucket/prefix/)")
    # The folder itself is checked as a file would be: inside the roots (not
    # a root itself), or a bucket with a non-empty key.
    _check(stem, field, settings, DESTINATION_CHECKS)
    return uri


def check_notify_url(uri: object, settings: Settings, field: str = "notify_url") -> str:
    """Return `uri` if notifications may be POSTed to it (http or https, no
    credentials); else raise ValidationError naming `field`."""
    return _check(uri, field, settings, NOTIFY_CHECKS)


def file_path_in_roots(uri: str, roots: Iterable[Path], field: str) -> Path:
    """The resolved local path a file:// `uri` names, which lies inside one of `roots`.

    The URI must be absolute (file:///path or file://localhost/path) with no
    query or fragment. The path is resolved with os.path.realpath, so ".."
    and symbolic links cannot lead outside the roots; a root itself is not a
    file and is refused. `roots` must already be resolved. Raises
    ValidationError naming `field`.
    """
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        raise ValidationError(f"{field} is not a valid URI") from None
    return _file_path(parts, roots, field)


def file_folder_in_roots(uri: str, roots: Iterable[Path], field: str) -> Path:
    """The resolved local folder a file:// prefix `uri` ("file:///out/hls/",
    ending with "/") names: a root or a folder inside one. The same form
    rules as file_path_in_roots. Raises ValidationError naming `field`."""
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        raise ValidationError(f"{field} is not a valid URI") from None
    if not parts.path.endswith("/"):
        raise ValidationError(f"{field}: a destination folder ends with '/' (file:///path/dir/)")
    resolved = Path(os.path.realpath(_raw_file_path(parts, field)))
    if not any(resolved.is_relative_to(root) for root in roots):
        raise ValidationError(f"{field}: the folder is outside the folders this system "
                              "may use (setting 'file_roots')")
    return resolved


def _raw_file_path(parts: urllib.parse.SplitResult, field: str) -> str:
    """The decoded absolute path of a file:// URI, after its form checks."""
    if parts.scheme.lower() != "file":
        raise ValidationError(f"{field} is not a file:// URI")
    if parts.netloc.lower() not in ("", "localhost"):
        raise ValidationError(f"{field}: a file:// URI names a local path and takes no host "
                              "(file:///path/name.mp4)")
    if parts.query or parts.fragment:
        raise ValidationError(f"{field}: a file:// URI takes no query or fragment")
    try:
        raw = urllib.parse.unquote(parts.path, errors="strict")
    except UnicodeDecodeError:
        raise ValidationError(f"{field}: the file path is not valid UTF-8") from None
    if not raw.strip("/"):
        raise ValidationError(f"{field}: the file path is empty")
    if not raw.startswith("/"):
        raise ValidationError(f"{field}: the file path must be absolute (file:///path/name.mp4)")
    if _has_control_chars(raw):
        raise ValidationError(f"{field}: the file path contains control characters")
    return raw


def _file_path(parts: urllib.parse.SplitResult, roots: Iterable[Path], field: str) -> Path:
    raw = _raw_file_path(parts, field)
    if raw.endswith("/"):
        raise ValidationError(f"{field}: the file path names a folder, not a file")
    resolved = Path(os.path.realpath(raw))
    roots = tuple(roots)
    if not any(resolved != root and resolved.is_relative_to(root) for root in roots):
        raise ValidationError(f"{field}: the file path is outside the folders this system "
                              "may use (setting 'file_roots')")
    return resolved


def _is_secret_key(raw_key: str) -> bool:
    key = urllib.parse.unquote_plus(raw_key).strip().lower()
    return (key in _SECRET_EXACT or key.startswith(_SECRET_PREFIXES)
            or any(word in key for word in _SECRET_WORDS))


def _redact_query(query: str) -> str:
    pairs = []
    for pair in query.split("&"):
        key, sep, value = pair.partition("=")
        if sep and value and _is_secret_key(key):
            value = REDACTED
        pairs.append(key + sep + value)
    return "&".join(pairs)


def redact(uri: str | None) -> str | None:
    """`uri` fit for display: userinfo and the values of secret-looking query
    keys (signature, token, key, secret, password, X-Amz-*, ...) become
    "REDACTED". Anything else is returned unchanged. Never raises; None stays None."""
    if uri is None:
        return None
    text = str(uri)
    if "@" not in text and "?" not in text:
        return text  # neither userinfo nor a query: nothing to hide
    span = _userinfo_span(text)
    if span is not None:
        text = text[:span[0]] + REDACTED + text[span[1]:]
    query_at = text.find("?")
    if query_at < 0:
        return text
    fragment_at = text.find("#", query_at)
    end = len(text) if fragment_at < 0 else fragment_at
    return text[:query_at + 1] + _redact_query(text[query_at + 1:end]) + text[end:]
