"""core.storage.content_types: the type each output file is served with."""
from __future__ import annotations

import pytest

from core.errors import ConfigError
from core.settings import load
from core.storage.content_types import content_type_for


@pytest.mark.parametrize("name, expected", [
    ("master.m3u8", "application/vnd.apple.mpegurl"),
    ("720p/INDEX.M3U8", "application/vnd.apple.mpegurl"),
    ("manifest.mpd", "application/dash+xml"),
    ("720p/init.mp4", "video/mp4"),
    ("720p/seg_00001.m4s", "video/iso.segment"),
    ("720p/seg_00001.ts", "video/mp2t"),
    ("poster.jpg", "image/jpeg"), ("poster.jpeg", "image/jpeg"), ("sheet.png", "image/png"),
    ("sprite.vtt", "text/vtt"), ("out.webm", "video/webm"), ("audio.m4a", "audio/mp4"),
    ("audio.aac", "audio/aac"), ("audio.mp3", "audio/mpeg"), ("a.ogg", "audio/ogg"),
    ("a.opus", "audio/ogg"),
    ("notes.txt", "application/octet-stream"), ("m3u8", "application/octet-stream"),
    ("dir.mp4/file", "application/octet-stream"),
])
def test_content_type_follows_the_extension(name, expected):
    assert content_type_for(name) == expected


@pytest.mark.parametrize("value", ["0", "11"])
def test_s3_upload_parallel_requests_must_fit_the_client_pool(value):
    with pytest.raises(ConfigError, match="s3_upload_parallel_requests"):
        load(environ={"NOMMER_S3_UPLOAD_PARALLEL_REQUESTS": value})
    assert load(environ={"NOMMER_S3_UPLOAD_PARALLEL_REQUESTS": "3"}).s3_upload_parallel_requests == 3
