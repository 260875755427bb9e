"""The preset catalogue: every preset expands into options the allowlist
accepts, and the overrides are checked before they reach a command line."""
from __future__ import annotations

import pytest

from core.errors import ValidationError
from core.presets import OVERRIDE_CHECKS, catalogue, expand_preset, listing, options_to_run

PRESETS = sorted(catalogue()["presets"])


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_passes_the_allowlist_and_leaves_no_placeholder(name):
    ran = options_to_run({"preset": name})
    values = [value for encoding_pass in ran["options"]
              for pairs in (encoding_pass["infile_options"], encoding_pass["outfile_options"])
              for _key, value in pairs]
    assert not [value for value in values if value and "{" in value]


@pytest.mark.parametrize("name", PRESETS)
def test_every_override_a_preset_takes_is_documented_and_checked(name):
    preset = catalogue()["presets"][name]
    takes = [key for key in preset["defaults"] if key in catalogue()["overrides"]]
    assert takes, name
    assert set(takes) <= set(OVERRIDE_CHECKS)
    for key in takes:
        # The default passes its own check.
        OVERRIDE_CHECKS[key](preset["defaults"][key])


def test_overrides_land_where_the_preset_puts_them():
    ran = expand_preset({"preset": "mp4-720p", "video_bitrate": "1M", "audio_bitrate": "64k",
                         "width": "960", "encoder_preset": "veryfast"})
    pairs = dict(ran["options"][0]["outfile_options"])
    assert pairs["b:v"] == "1M" and pairs["b:a"] == "64k" and pairs["preset"] == "veryfast"
    assert pairs["vf"].startswith("scale='min(960,iw)':'min(720,ih)'")


def test_the_poster_seeks_to_ten_percent_unless_told_otherwise():
    default = expand_preset({"preset": "poster-jpeg"})
    assert default["options"][0]["infile_options"] == [["ss", "10%"]]
    at = expand_preset({"preset": "poster-jpeg", "time": "12.5"})
    assert at["options"][0]["infile_options"] == [["ss", "12.5"]]


@pytest.mark.parametrize("sent, seconds", [
    (12.5, "12.5"), (7, "7"), (0, "0"), ("1:05", "65"), ("01:00:02.5", "3602.5"),
    ("00:00:05", "5"),
])
def test_the_poster_time_may_be_a_number_or_a_clock_time(sent, seconds):
    at = expand_preset({"preset": "poster-jpeg", "time": sent})
    assert at["options"][0]["infile_options"] == [["ss", seconds]]


@pytest.mark.parametrize("key, value", [
    ("width", "640x"), ("width", 8), ("width", True), ("width", "９６０"),
    ("video_bitrate", "1M:x"), ("video_bitrate", 1000), ("audio_bitrate", "-1k"),
    ("encoder_preset", "../../x"), ("time", "-5"), ("time", "101%"), ("time", "100%"),
    ("time", "1:60"), ("time", "1:2:3:4"), ("time", -1), ("time", True), ("time", "5s"),
])
def test_a_bad_override_value_is_refused(key, value):
    with pytest.raises(ValidationError, match=f"job_options.{key} must be"):
        expand_preset({"preset": "poster-jpeg" if key == "time" else "mp4-720p", key: value})


def test_listing_shows_each_preset_once_with_its_overrides():
    names = [preset["name"] for preset in listing()]
    assert names == sorted(PRESETS + ["hls", "sprite"])
    for preset in listing():
        assert preset["description"] and preset["extension"]
        for override in preset["overrides"].values():
            assert set(override) == {"default", "meaning"}
