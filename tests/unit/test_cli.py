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


def test_status_text_shows_what_each_finished_output_is():
    from core.app.jobs_cli import job_text

    job = {"id": "j1", "state": "FINISHED", "progress": 100, "node": None, "attempts": 1,
           "source": "file:///m/in.mov", "destination": "file:///m/a.mp4",
           "created_at": "2026-01-01T00:00:00+00:00", "updated_at": "2026-01-01T00:01:00+00:00",
           "outputs": [
               {"kind": "file", "uri": "file:///m/a.mp4", "container": "mp4", "width": 640,
                "height": 360, "size_bytes": 1000},
               {"kind": "hls", "uri": "file:///m/show/master.m3u8", "container": "hls",
                "width": 1280, "height": 720, "renditions": 2, "segments": 9,
                "size_bytes": 5000}]}
    lines = job_text(job).splitlines()
    assert "output   file, mp4, 640x360, 1000 bytes  file:///m/a.mp4" in lines
    assert ("output   hls, hls, 1280x720, 2 renditions, 9 segments, 5000 bytes  "
            "file:///m/show/master.m3u8") in lines


def test_status_text_shows_the_notification_format_and_each_give_up():
    from core.app.jobs_cli import job_text

    job = {"id": "job-1", "state": "FINISHED", "progress": 100, "node": None, "attempts": 1,
           "source": "file:///m/in.mp4", "destination": "file:///m/out.mp4",
           "notify_url": "http://app.example/done", "notify_format": "json",
           "created_at": "2026-01-01T00:00:00+00:00", "updated_at": "2026-01-01T00:01:00+00:00",
           "state_details": "", "notifications_given_up": [
               {"state": "FINISHED", "changed_at": "2026-01-01T00:01:00+00:00",
                "given_up_at": "2026-01-01T00:06:00+00:00", "attempts": 9,
                "reason": "receiver answered HTTP 503"}]}
    text = job_text(job)
    assert "notify   http://app.example/done (json)" in text
    assert ("given up notification of FINISHED at 2026-01-01T00:06:00+00:00 after 9 "
            "attempts: receiver answered HTTP 503") in text
