"""file:// storage, confined to the configured roots.

Failures leave as StorageError with a reason a user can act on ("source
file:///in/a.mp4 does not exist"); OSError never escapes.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import urllib.parse
from pathlib import Path

from core.errors import StorageError, ValidationError
from core.interfaces import Storage
from core.storage.output_files import stopped, upload_order
from core.storage.transfer import CHUNK_BYTES, copy_limited
from core.uris import file_folder_in_roots, file_path_in_roots


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

    def download(self, uri: str, local_path: str, max_bytes: int, stop=None) -> int:
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
                    return copy_limited(reader, writer, max_bytes, uri, stop)
        except OSError as exc:
            raise StorageError(f"reading source {uri} failed: {exc.strerror or exc}") from None

    def upload(self, local_path: str, uri: str) -> None:
        """Write `local_path` to the destination atomically, creating missing
        folders inside the root. Raises StorageError when not writable."""
        self._write(local_path, self._checked(uri, "destination"), uri)

    def upload_files(self, files, prefix_uri: str, stop=None) -> None:
        """Write every file below the folder `prefix_uri` names, one at a
        time, each atomically, the `last` ones after all others in the order
        given (see Storage.upload_files). The folder may be a root; a key
        whose resolved path (symbolic links followed) leaves the folder is
        refused. Raises StorageError naming the file."""
        first, last = upload_order(files, prefix_uri)
        try:
            folder = file_folder_in_roots(prefix_uri, self.roots, "destination")
        except ValidationError as exc:
            raise StorageError(str(exc)) from None
        for file in first + last:
            if stop is not None and stop.is_set():
                raise stopped(prefix_uri)
            uri = prefix_uri + urllib.parse.quote(file.key)
            path = self._checked(uri, "destination")
            if not path.is_relative_to(folder):
                raise StorageError(f"destination {uri} leads outside {prefix_uri}")
            self._write(file.local_path, path, uri)

    def _write(self, local_path: str, path: Path, uri: str) -> None:
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
                shutil.copyfileobj(reader, writer, CHUNK_BYTES)
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
