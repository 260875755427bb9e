"""What the storages share: how a URI is shown to users, and a copy with a size limit."""
from __future__ import annotations

from core.errors import StorageError
from core.uris import redact

CHUNK_BYTES = 1024 * 1024


def display(uri: str) -> str:
    """`uri` fit for a job's details and logs: credentials and signed tokens hidden."""
    return redact(uri) or ""


def copy_limited(reader, writer, max_bytes: int, uri: str, stop=None) -> int:
    """Copy until EOF; raise StorageError as soon as more than `max_bytes`
    came, or when the threading.Event `stop` is set."""
    total = 0
    while True:
        if stop is not None and stop.is_set():
            raise StorageError(f"reading source {display(uri)} was stopped")
        chunk = reader.read(CHUNK_BYTES)
        if not chunk:
            return total
        total += len(chunk)
        if total > max_bytes:
            raise StorageError(f"source {display(uri)} is larger than the limit of {max_bytes} bytes")
        writer.write(chunk)
