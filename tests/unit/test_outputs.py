"""A submit's outputs: each checked exactly as a single output is, refusals
naming the output, HLS ladders checked and stored in one form, and the
original single-output form stored as it always was."""
from __future__ import annotations

import pytest

from core.errors import ValidationError
from core.outputs import default_video_bitrate, options_for_submit
from core.settings import Settings


@pytest.fixture
def root(tmp_path):
    (tmp_path / "media").mkdir()
    return tmp_path / "media"


@pytest.fixture
def settings(root):
    return Settings(file_roots=(str(root),))


def refusal(body: dict, settings: Settings) -> str:
    with pytest.raises(ValidationError) as refused:
        options_for_submit(body, settings)
    return str(refused.value)


def test_the_original_single_output_form_is_stored_as_before(root, settings):
    dest = (root / "a.mp4").as_uri()
    destination, options = options_for_submit(
        {"dest_path": dest, "job_options": {"preset": "mp4-360p"}}, settings)
    assert destination == dest and set(options) == {"nommer", "options"}


def test_several_outputs_are_stored_each_with_its_destination_and_passes(root, settings):
    first, ladder = (root / "a.mp4").as_uri(), (root / "hls").as_uri() + "/"
    destination, options = options_for_submit({"outputs": [
        {"destination": first, "job_options": {"preset": "mp4-720p", "width": 960}},
        {"destination": ladder, "job_options": {"preset": "hls", "ladder": [
            720, {"height": 360, "video_bitrate": "700k"}], "segment_type": "ts"}},
    ]}, settings)
    assert destination == first
    one, two = options["outputs"]
    assert one["kind"] == "file" and one["destination"] == first
    assert dict(one["options"][0]["outfile_options"])["vf"].startswith("scale='min(960,iw)'")
    assert two == {"destination": ladder, "kind": "hls", "hls": {
        "ladder": [{"height": 360, "video_bitrate": "700k"},
                   {"height": 720, "video_bitrate": default_video_bitrate(720)}],
        "segment_s": 6, "segment_type": "ts", "audio_bitrate": "128k",
        "encoder_preset": "veryfast", "dash": False}}


@pytest.mark.parametrize("output, words", [
    ({"destination": "file:///etc/x.mp4", "job_options": {"preset": "mp4-360p"}},
     "outputs[1].destination: the file path is outside"),
    ({"destination": "MEDIA/list.m3u8", "job_options": {"preset": "mp4-360p"}},
     "outputs[1].destination: a .m3u8 destination is written as several files"),
    ({"destination": "MEDIA/dash.mpd", "job_options": {"preset": "mp4-360p"}},
     "DASH is that preset with \"dash\": true"),
    ({"destination": "MEDIA/dir/", "job_options": {"preset": "mp4-360p"}},
     "outputs[1].destination: the file path names a folder"),
    ({"destination": "MEDIA/hls", "job_options": {"preset": "hls"}},
     "outputs[1].destination: an hls output is written to a folder or prefix ending in '/'"),
    ({"destination": "MEDIA/b.mp4", "job_options": {"preset": "mp4-360p", "speed": 1}},
     "outputs[1].job_options: preset 'mp4-360p' takes no override 'speed'"),
    ({"destination": "MEDIA/b.mp4", "job_options": {"nommer": "ffmpeg", "options": [
        {"outfile_options": [["filter_complex", "x"]]}]}},
     "outputs[1].job_options.options[0].outfile_options: option 'filter_complex' is not allowed"),
    ({"destination": "MEDIA/b.mp4", "job_options": {"nommer": "ffmpeg", "options": [
        {"outfile_options": [["s", "99999x99999"]]}]}},
     "outputs[1].job_options.options[0].outfile_options: the output frame is larger"),
    ({"destination": "MEDIA/b.mp4", "job_options": {"nommer": "ffmpeg", "options": [
        {"infile_options": [["r", "25"]], "outfile_options": []}]}},
     "outputs[1].job_options.options[0].infile_options: option 'r' cannot be given to one "
     "output of several"),
    ({"destination": "MEDIA/a.mp4", "job_options": {"preset": "mp4-360p"}},
     "outputs[1].destination: overlaps outputs[0].destination"),
    ({"destination": "MEDIA/h/", "job_options": {"preset": "hls", "ladder": [361]}},
     "outputs[1].job_options.ladder[0]: the height must be an even whole number"),
    ({"destination": "MEDIA/h/", "job_options": {"preset": "hls", "ladder": [360, 360]}},
     "outputs[1].job_options.ladder: each height may appear once"),
    ({"destination": "MEDIA/h/", "job_options": {"preset": "hls", "segment_type": "cmaf"}},
     "outputs[1].job_options.segment_type must be one of fmp4, ts"),
    ({"destination": "MEDIA/h/", "job_options": {"preset": "hls", "segment_s": 0}},
     "outputs[1].job_options.segment_s must be a whole number"),
    ({"destination": "MEDIA/h/", "kind": "dash"}, "outputs[1].kind 'dash' is not known"),
    ({"destination": "MEDIA/h/", "kind": "hls", "job_options": {"preset": "mp4-360p"}},
     "outputs[1].job_options: this hls output takes the preset 'hls'"),
    ({"destination": "MEDIA/b.mp4", "job_options": {"preset": "mp4-360p"}, "x": 1},
     "outputs[1]: unknown key 'x'"),
    ({"destination": "MEDIA/../../", "kind": "hls"},
     "outputs[1].destination: the file path is outside the folders"),
    ({"destination": "MEDIA/", "kind": "hls"}, "outputs[1].destination: the file path is outside"),
    ({"destination": "s3://KEY:SECRET@bucket/show/", "kind": "hls"},
     "outputs[1].destination: credentials must not be put in URIs"),
    ({"destination": "s3://bucket/", "kind": "hls"},
     "outputs[1].destination: an s3:// URI needs an object key"),
    ({"destination": "MEDIA/show/?x=1/", "kind": "hls"}, "outputs[1].destination: names no"),
    ({"destination": "MEDIA/s.jpg", "kind": "sprite"},
     "outputs[1].destination: a sprite output is written to a folder or prefix"),
    ({"destination": "MEDIA/s/", "job_options": {"preset": "sprite", "interval_s": 0}},
     "outputs[1].job_options.interval_s must be a number of seconds from 0.5 to 3600"),
    ({"destination": "MEDIA/s/", "job_options": {"preset": "sprite", "columns": 3}},
     "outputs[1].job_options: preset 'sprite' takes no override 'columns'"),
])
def test_each_output_is_checked_and_a_refusal_names_it(root, settings, output, words):
    output = {key: value.replace("MEDIA/", root.as_uri() + "/") if isinstance(value, str)
              else value for key, value in output.items()}
    body = {"outputs": [{"destination": (root / "a.mp4").as_uri(),
                         "job_options": {"preset": "mp4-360p"}}, output]}
    assert words in refusal(body, settings)


def test_outputs_and_the_single_output_fields_do_not_mix(root, settings):
    body = {"dest_path": (root / "a.mp4").as_uri(), "outputs": [
        {"destination": (root / "b.mp4").as_uri(), "job_options": {"preset": "mp4-360p"}}]}
    assert "give either dest_path and job_options (or preset), or outputs" in refusal(body, settings)


def test_more_outputs_than_the_setting_allows_are_refused(root, settings):
    body = {"outputs": [{"destination": (root / f"{index}.mp4").as_uri(),
                         "job_options": {"preset": "mp4-360p"}} for index in range(9)]}
    assert "setting max_outputs_per_job" in refusal(body, settings)


def test_an_hls_prefix_inside_another_outputs_prefix_is_refused(root, settings):
    body = {"outputs": [{"destination": (root / "h").as_uri() + "/", "kind": "hls"},
                        {"destination": (root / "h" / "a.mp4").as_uri(),
                         "job_options": {"preset": "mp4-360p"}}]}
    assert "outputs[1].destination: overlaps outputs[0]" in refusal(body, settings)


def test_the_single_output_form_takes_the_hls_preset_with_a_prefix(root, settings):
    prefix = (root / "show").as_uri() + "/"
    destination, options = options_for_submit(
        {"dest_path": prefix, "job_options": {"preset": "hls"}}, settings)
    assert destination == prefix
    [only] = options["outputs"]
    assert [rung["height"] for rung in only["hls"]["ladder"]] == [360, 720, 1080]
    assert "dest_path: an hls output is written" in refusal(
        {"dest_path": (root / "show").as_uri(), "job_options": {"preset": "hls"}}, settings)


def test_an_hls_destination_may_name_its_master_playlist(root, settings):
    master = (root / "show" / "main.m3u8").as_uri()
    destination, options = options_for_submit(
        {"dest_path": master, "job_options": {"preset": "hls", "segment_s": 4}}, settings)
    assert destination == master
    [only] = options["outputs"]
    assert only["destination"] == (root / "show").as_uri() + "/"
    assert only["hls"]["master"] == "main.m3u8" and only["hls"]["segment_s"] == 4
    # Without the hls preset a playlist is still refused: its segments would be lost.
    assert "give this destination the hls preset" in refusal(
        {"dest_path": master, "job_options": {"preset": "mp4-360p"}}, settings)


def test_a_sprite_destination_may_name_its_track(root, settings):
    track = (root / "show" / "thumbs.vtt").as_uri()
    destination, options = options_for_submit(
        {"dest_path": track, "job_options": {"preset": "sprite"}}, settings)
    assert destination == track
    assert options["outputs"][0]["sprite"] == {"interval_s": None, "name": "thumbs"}


@pytest.mark.parametrize("name", ["%2e%2e.m3u8", ".hidden.m3u8", "a b.m3u8", ".m3u8"])
def test_a_named_master_playlist_is_a_plain_file_name(root, settings, name):
    assert "file name may hold only" in refusal(
        {"dest_path": (root / "show").as_uri() + "/" + name, "job_options": {"preset": "hls"}},
        settings)


def test_named_outputs_share_a_folder_with_files_they_do_not_write(root, settings):
    show = (root / "show").as_uri() + "/"
    _destination, options = options_for_submit({"outputs": [
        {"destination": show + "main.m3u8", "preset": "hls"},
        {"destination": show + "poster.jpg", "preset": "poster-jpeg"},
        {"destination": show + "thumbs.vtt", "preset": "sprite"},
        {"destination": show + "download.mp4", "preset": "mp4-360p"},
    ]}, settings)
    assert [one["kind"] for one in options["outputs"]] == ["hls", "file", "sprite", "file"]


@pytest.mark.parametrize("second", [
    "main.m3u8",            # the same master playlist
    "other.m3u8",           # another ladder: both would write 360p/, audio/
    "360p/index.m3u8",      # inside the ladder's rendition folders
    "thumbs_000.jpg",       # one of the sprite's sheets
    "thumbs.jpg",           # the sprite's only sheet
])
def test_named_outputs_still_refuse_what_they_write(root, settings, second):
    show = (root / "show").as_uri() + "/"
    kind = {"m3u8": "hls", "jpg": "poster-jpeg"}[second.rsplit(".", 1)[1]]
    body = {"outputs": [{"destination": show + "main.m3u8", "preset": "hls"},
                        {"destination": show + "thumbs.vtt", "preset": "sprite"},
                        {"destination": show + second, "preset": kind}]}
    assert "outputs[2].destination: overlaps outputs[" in refusal(body, settings)


def test_a_whole_folder_output_overlaps_a_named_one_inside_it(root, settings):
    body = {"outputs": [{"destination": (root / "a" / "show" / "main.m3u8").as_uri(),
                         "preset": "hls"},
                        {"destination": (root / "a").as_uri() + "/", "preset": "sprite"}]}
    assert "outputs[1].destination: overlaps outputs[0]" in refusal(body, settings)


def test_a_preset_may_be_named_beside_its_overrides(root, settings):
    dest = (root / "a.mp4").as_uri()
    beside = options_for_submit({"dest_path": dest, "preset": "mp4-360p",
                                 "job_options": {"width": 320}}, settings)
    inside = options_for_submit({"dest_path": dest,
                                 "job_options": {"preset": "mp4-360p", "width": 320}}, settings)
    assert beside == inside
    _destination, several = options_for_submit(
        {"outputs": [{"destination": dest, "preset": "mp4-360p",
                      "job_options": {"width": 320}}]}, settings)
    assert several["outputs"][0]["options"] == inside[1]["options"]


@pytest.mark.parametrize("body, words", [
    ({"preset": "mp4-360p", "job_options": {"preset": "mp4-720p"}},
     "beside preset, job_options holds only that preset's overrides"),
    ({"preset": "mp4-360p", "job_options": [{"outfile_options": []}]},
     "beside preset, job_options holds only"),
    ({"preset": 7}, "preset must be the name of a preset"),
    ({"preset": "no-such"}, "preset 'no-such' is not known; known presets: audio-aac"),
])
def test_a_preset_named_beside_is_checked(root, settings, body, words):
    assert words in refusal({"dest_path": (root / "a.mp4").as_uri(), **body}, settings)


def test_a_sprite_output_is_stored_with_its_interval(root, settings):
    prefix = (root / "scrub").as_uri() + "/"
    _destination, options = options_for_submit({"outputs": [
        {"destination": prefix, "job_options": {"preset": "sprite", "interval_s": 5}},
        {"destination": (root / "scrub.mp4").as_uri(), "job_options": {"preset": "mp4-360p"}},
    ]}, settings)
    assert options["outputs"][0] == {"destination": prefix, "kind": "sprite",
                                     "sprite": {"interval_s": 5.0}}


@pytest.mark.parametrize("overrides, words", [
    ({"dash": True, "segment_type": "ts"}, "dash needs segment_type fmp4"),
    ({"dash": "yes"}, "dash must be true or false"),
])
def test_dash_is_asked_for_plainly_and_only_of_fmp4_ladders(root, settings, overrides, words):
    assert words in refusal({"dest_path": (root / "show").as_uri() + "/",
                             "job_options": {"preset": "hls", **overrides}}, settings)
