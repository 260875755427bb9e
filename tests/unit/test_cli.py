"""The CLI's own parsing: local paths as file:// URIs, preset overrides."""
from __future__ import annotations

import pytest

from core.app.cli import as_uri, preset_request
from core.errors import NommerError


def test_a_local_path_is_sent_as_an_absolute_file_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert as_uri("in/clip one.mov") == (tmp_path / "in" / "clip one.mov").as_uri()
    assert as_uri("in/clip one.mov").startswith("file:///") and "%20" in as_uri("in/clip one.mov")


@pytest.mark.parametrize("uri", ["s3://bucket/in.mov", "https://media.example/in.mov",
                                 "file:///srv/media/in.mov"])
def test_a_uri_is_sent_as_it_is(uri):
    assert as_uri(uri) == uri


def test_overrides_become_fields_beside_the_preset_name():
    assert preset_request("mp4-720p", ["video_bitrate=1500k", " width = 960 "]) == {
        "preset": "mp4-720p", "video_bitrate": "1500k", "width": "960"}


@pytest.mark.parametrize("item", ["video_bitrate", "=1500k"])
def test_an_override_without_key_and_value_is_refused(item):
    with pytest.raises(NommerError, match="KEY=VALUE"):
        preset_request("mp4-720p", [item])
