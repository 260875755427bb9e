"""The Content-Type each output file is served with, by its name's extension.

Players and CDNs go by the stored type, not the name: an HLS playlist served
as text/plain or a segment as application/octet-stream fails in some players.
"""
from __future__ import annotations

import posixpath

DEFAULT = "application/octet-stream"

_BY_EXTENSION = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".mpd": "application/dash+xml",
    ".mp4": "video/mp4",
    ".m4s": "video/iso.segment",
    ".ts": "video/mp2t",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".vtt": "text/vtt",
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
    ".mov": "video/quicktime",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".m4a": "audio/mp4",
    ".aac": "audio/aac",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".opus": "audio/ogg",
}


def content_type_for(name: str) -> str:
    """The Content-Type for a file or key `name` (case-insensitive extension);
    application/octet-stream for anything not listed."""
    return _BY_EXTENSION.get(posixpath.splitext(name)[1].lower(), DEFAULT)
