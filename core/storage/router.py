"""The router that picks a Storage by URI scheme, and the set of storages this build serves.

Form errors found before any I/O (`check_source`, `check_destination`) are
ValidationError; transfer failures are StorageError. Another backend is
added by registering one more Storage.
"""
from __future__ import annotations

import threading
import urllib.parse

from core.errors import StorageError, ValidationError
from core.interfaces import Storage
from core.settings import Settings
from core.storage.file import FileStorage
from core.storage.http import HttpStorage
from core.storage.transfer import display


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
            raise StorageError(f"no storage for {display(uri)!r}; supported: {', '.join(self.schemes)}")
        return storage

    def _for_check(self, uri: str, role: str) -> Storage:
        storage = self.storage_of(uri)
        if storage is None:
            scheme = urllib.parse.urlsplit(uri).scheme or "(none)"
            raise ValidationError(f"{role}: URI scheme {scheme!r} is not supported; "
                                  f"use one of {', '.join(self.schemes)}")
        return storage

    def download(self, uri: str, local_path: str, max_bytes: int,
                 stop: threading.Event | None = None) -> int:
        return self._for_transfer(uri).download(uri, local_path, max_bytes, stop=stop)

    def upload(self, local_path: str, uri: str) -> None:
        self._for_transfer(uri).upload(local_path, uri)

    def upload_files(self, files, prefix_uri: str, stop: threading.Event | None = None) -> None:
        self._for_transfer(prefix_uri).upload_files(files, prefix_uri, stop=stop)

    def check_source(self, uri: str) -> None:
        self._for_check(uri, "source").check_source(uri)

    def check_destination(self, uri: str) -> None:
        self._for_check(uri, "destination").check_destination(uri)


def storage_for(settings: Settings) -> StorageRouter:
    """The storages this build serves: file:// inside settings.file_root_paths,
    http(s):// reads, and s3:// with credentials from boto3's standard chain."""
    from core.storage.s3 import S3Storage

    return StorageRouter([FileStorage(settings.file_root_paths), HttpStorage.from_settings(settings),
                          S3Storage.from_settings(settings)])
