"""Presets over the real API: the catalogue listed, a preset named at
submit, and 2011-era options refused or translated where they arrive."""
from __future__ import annotations

import json

import pytest

from core.presets import catalogue
from tests.fixtures import original_client
from tests.process.test_api import Api, settings_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def api(tmp_path):
    running = Api(settings_for(tmp_path))
    yield running
    running.stop()


def submit(api: Api, job_options, path="/job/submit/"):
    body = {"source_path": api.uri("in/clip.mp4"), "dest_path": api.uri("out/clip.mp4"),
            "notify_url": None, "job_options": job_options}
    return api.request("POST", path, body)


def test_presets_lists_every_catalogue_preset_with_what_it_produces(api):
    answer = api.request("GET", "/presets")
    assert answer.status == 200 and answer.json["success"] is True
    listed = {preset["name"]: preset for preset in answer.json["presets"]}
    assert set(listed) == set(catalogue()["presets"]) | {"hls", "sprite"}
    assert set(listed) >= {"hls",
        "mp4-360p", "mp4-480p", "mp4-720p", "mp4-1080p", "webm-vp9", "mp4-av1",
        "audio-aac", "audio-mp3", "audio-opus", "poster-jpeg"}
    assert listed["mp4-720p"]["video"] == "h264" and listed["mp4-720p"]["audio"] == "aac"
    assert listed["audio-mp3"]["video"] is None
    assert listed["mp4-720p"]["overrides"]["video_bitrate"]["default"] == "2500k"
    assert "meaning" in listed["poster-jpeg"]["overrides"]["time"]
    assert listed["poster-jpeg"]["overrides"]["time"]["default"] == "10%"


def test_a_named_preset_is_expanded_and_the_job_shows_both(api):
    answer = submit(api, {"preset": "mp4-480p", "video_bitrate": "900k", "width": 640})
    assert answer.status == 200, answer.json
    job = api.request("GET", f"/jobs/{answer.json['job_id']}").json["job"]
    assert job["sent_options"] == {"preset": "mp4-480p", "video_bitrate": "900k", "width": 640}
    [encoding_pass] = job["options"]["options"]
    pairs = encoding_pass["outfile_options"]
    assert ["b:v", "900k"] in pairs and ["c:v", "libx264"] in pairs
    assert "min(640,iw)" in dict(pairs)["vf"]
    assert encoding_pass["move_atom_to_front"] is True


def test_the_original_client_request_is_accepted_and_shows_the_translation(api):
    sent, _ = original_client.PRESETS["cb_low"]
    answer = original_client.job_submit(api.base_url, api.uri("in/clip.mp4"),
                                        api.uri("out/clip.mp4"), sent)
    assert answer["success"] is True
    job = api.request("GET", f"/jobs/{answer['job_id']}").json["job"]
    assert job["sent_options"] == sent
    second = job["options"]["options"][1]["outfile_options"]
    assert ["c:a", "aac"] in second and ["af", "aresample=async=480"] in second
    assert ["vf", "yadif,scale=400:trunc(ow/a/2)*2"] in second


@pytest.mark.parametrize("job_options, words", [
    ({"nommer": "ffmpeg", "options": [{"outfile_options": [["vpre", "libx264-hq"]]}]},
     "option 'vpre' has no equivalent in today's ffmpeg; ffmpeg no longer reads preset files"),
    ({"nommer": "ffmpeg", "options": [{"outfile_options": [["sameq", None]]}]},
     "use crf"),
    ({"preset": "mp4-4k"}, "preset 'mp4-4k' is not known; known presets: audio-aac"),
    ({"preset": "audio-mp3", "width": 640}, "takes no override 'width'"),
    ({"preset": "mp4-720p", "video_bitrate": "1M -i /etc/passwd"}, "video_bitrate must be"),
    ({"preset": "mp4-720p", "width": 100000}, "width must be"),
    ({"preset": "poster-jpeg", "time": "150%"}, "time must be"),
    ({"preset": ["mp4-720p"]}, "is not known"),
    ({"preset": "mp4-720p", "nommer": "x264"}, "nommer is not known"),
])
def test_what_cannot_run_is_refused_at_submit_naming_it(api, job_options, words):
    answer = submit(api, job_options)
    assert answer.status == 400, answer.json
    assert answer.json["error_code"] == "BADINPUT"
    assert words in answer.json["message"]
    assert api.backends.new_jobs.counts() == (0, 0)


def test_presets_needs_the_token_when_one_is_set(tmp_path):
    running = Api(settings_for(tmp_path, api_token="t0ken"))
    try:
        assert running.request("GET", "/presets").status == 401
        answer = running.request("GET", "/presets", token="t0ken")
        assert answer.status == 200 and json.loads(answer.raw)["presets"]
    finally:
        running.stop()
