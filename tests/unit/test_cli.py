"""The CLI's own parsing: local paths as file:// URIs, preset overrides."""
from __future__ import annotations

import pytest

from core.app.cli import as_uri, output_request, preset_request
from core.errors import NommerError
from core.outputs import hls_spec, sprite_spec
from core.presets import expand_preset
from core.settings import Settings


def test_a_local_path_is_sent_as_an_absolute_file_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert as_uri("in/clip one.mov") == (tmp_path / "in" / "clip one.mov").as_uri()
    assert as_uri("in/clip one.mov").startswith("file:///") and "%20" in as_uri("in/clip one.mov")


@pytest.mark.parametrize("uri", ["s3://bucket/in.mov", "https://media.example/in.mov",
                                 "file:///srv/media/in.mov"])
def test_a_uri_is_sent_as_it_is(uri):
    assert as_uri(uri) == uri


def test_a_folder_keeps_its_trailing_slash(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert as_uri("out/show/") == (tmp_path / "out" / "show").as_uri() + "/"
    assert as_uri("out/show") == (tmp_path / "out" / "show").as_uri()


def test_overrides_become_fields_beside_the_preset_name():
    assert preset_request("mp4-720p", ["video_bitrate=1500k", " width = 960 "]) == {
        "preset": "mp4-720p", "video_bitrate": "1500k", "width": 960}


def test_overrides_that_read_as_json_are_sent_as_json():
    assert preset_request("hls", ["dash=true", "ladder=[360, 720]", "segment_s=4",
                                  "audio_bitrate=96k", "encoder_preset=NaN"]) == {
        "preset": "hls", "dash": True, "ladder": [360, 720], "segment_s": 4,
        "audio_bitrate": "96k", "encoder_preset": "NaN"}


def test_the_cli_overrides_of_each_kind_pass_the_checks_they_meet():
    # What a user types; each must reach the preset's own check as a value it takes.
    expand_preset(preset_request("mp4-av1", ["encoder_preset=8", "width=960",
                                             "video_bitrate=1M"]))
    expand_preset(preset_request("poster-jpeg", ["time=12.5"]))
    hls_spec(preset_request("hls", ["dash=true", "ladder=[360,720]", "segment_s=2"]),
             Settings(), "job_options")
    sprite_spec(preset_request("sprite", ["interval_s=5"]), Settings(), "job_options")


def test_more_outputs_are_a_destination_and_a_preset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert output_request("show/poster.jpg=poster-jpeg") == {
        "destination": (tmp_path / "show" / "poster.jpg").as_uri(), "preset": "poster-jpeg"}
    assert output_request("s3://b/x=y.jpg=poster-jpeg")["destination"] == "s3://b/x=y.jpg"
    with pytest.raises(NommerError, match="DEST=PRESET"):
        output_request("show/poster.jpg")


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
                "size_bytes": 5000, "dash_manifest": "file:///m/show/manifest.mpd"}]}
    lines = job_text(job).splitlines()
    assert "output   file, mp4, 640x360, 1000 bytes  file:///m/a.mp4" in lines
    assert ("output   hls, hls, 1280x720, 2 renditions, 9 segments, 5000 bytes  "
            "file:///m/show/master.m3u8") in lines
    assert "         dash, the same renditions  file:///m/show/manifest.mpd" in lines


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
