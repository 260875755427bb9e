"""Rules every Storage.upload_files shares: which keys are allowed, and the order.

A key comes from the encoder (ffmpeg's segment and playlist names under the
job's destination prefix); it is still checked, so that no name can place
a file outside the prefix the user gave.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from core.errors import StorageError

if TYPE_CHECKING:
    from core.interfaces import OutputFile


def check_key(key: str) -> None:
    """Raise StorageError unless `key` is a relative "/"-separated path that
    stays below the prefix: not empty, no leading "/", no "..", no empty or
    "." segment, no backslash or control character."""
    if not isinstance(key, str) or not key:
        raise StorageError("an output file needs a non-empty key")
    if key.startswith("/") or "\\" in key:
        raise StorageError(f"output key {key!r} must be a relative path with '/' separators")
    if ".." in key:
        raise StorageError(f"output key {key!r} must not contain '..'")
    if any(segment in ("", ".") for segment in key.split("/")):
        raise StorageError(f"output key {key!r} has an empty or '.' path segment")
    if any(ord(char) < 32 or ord(char) == 127 for char in key):
        raise StorageError(f"output key {key!r} contains control characters")


def check_prefix(prefix_uri: str) -> None:
    """Raise StorageError unless `prefix_uri` names a folder (ends with "/")."""
    if not isinstance(prefix_uri, str) or not prefix_uri.endswith("/"):
        raise StorageError(f"destination prefix {prefix_uri!r} must end with '/'")


def upload_order(files: Sequence["OutputFile"], prefix_uri: str
                 ) -> tuple[list["OutputFile"], list["OutputFile"]]:
    """(files that may go in any order, the `last` files in the order given),
    after checking the prefix and every key, so that a bad name refuses the
    whole set before anything is written. Raises StorageError, also for two
    files with the same key."""
    check_prefix(prefix_uri)
    seen: set[str] = set()
    for file in files:
        check_key(file.key)
        if file.key in seen:
            raise StorageError(f"output key {file.key!r} is given twice")
        seen.add(file.key)
    return [f for f in files if not f.last], [f for f in files if f.last]


def stopped(prefix_uri: str) -> StorageError:
    return StorageError(f"uploading to {prefix_uri} was stopped")
