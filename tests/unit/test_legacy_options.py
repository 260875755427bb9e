"""The translation of 2011-era options: each row of the table, and the
original client's presets coming out as options the allowlist accepts."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from core.errors import ValidationError
from core.legacy_options import TRANSLATIONS, translate_job_options, unquote_filter_args
from core.options import validate_job_options
from tests.fixtures import original_client


def run(*pairs) -> list:
    """The outfile options one pass of `pairs` becomes."""
    options = {"nommer": "ffmpeg", "options": [{"outfile_options": [list(p) for p in pairs]}]}
    return translate_job_options(options)["options"][0]["outfile_options"]


@pytest.mark.parametrize("old, new", [
    (("vcodec", "libx264"), ["c:v", "libx264"]),
    (("acodec", "libmp3lame"), ["c:a", "libmp3lame"]),
    (("b", "400k"), ["b:v", "400k"]),
    (("vb", "400k"), ["b:v", "400k"]),
    (("ab", "128k"), ["b:a", "128k"]),
    (("qscale", "3"), ["q:v", "3"]),
    (("vframes", "1"), ["frames:v", "1"]),
    (("acodec", "libfaac"), ["c:a", "aac"]),
    (("acodec", "libvo_aacenc"), ["c:a", "aac"]),
    (("c:a", "libfdk_aac"), ["c:a", "aac"]),
    (("vcodec", "libxvid"), ["c:v", "mpeg4"]),
    (("threads", 0), ["threads", "0"]),
    (("-ab", "96k"), ["b:a", "96k"]),
])
def test_an_old_option_becomes_its_modern_spelling(old, new):
    assert run(old) == [new]


@pytest.mark.parametrize("profile", ["baseline", "main", "high"])
def test_an_8_bit_h264_profile_brings_a_pixel_format_it_allows(profile):
    assert run(("vprofile", profile)) == [["profile:v", profile], ["pix_fmt", "yuv420p"]]
    assert run(("profile", profile), ("pix_fmt", "yuvj420p")) == [
        ["profile:v", profile], ["pix_fmt", "yuvj420p"]]


def test_async_becomes_an_aresample_filter_joined_to_the_audio_chain():
    assert run(("async", "480")) == [["af", "aresample=async=480"]]
    assert run(("af", "volume=2"), ("async", 480)) == [["af", "volume=2,aresample=async=480"]]


def test_deinterlace_joins_the_video_chain():
    assert run(("deinterlace", None), ("vf", "scale=640:-2")) == [["vf", "yadif,scale=640:-2"]]


@pytest.mark.parametrize("graph, expected", [
    ("yadif,scale='640:trunc(ow/a/2)*2'", "yadif,scale=640:trunc(ow/a/2)*2"),
    ("scale='640':'360'", "scale=640:360"),
    ("scale='min(640,iw)':-2", "scale='min(640,iw)':-2"),  # the quotes protect the comma
    ("yadif,scale=640:trunc(ow/a/2)*2", "yadif,scale=640:trunc(ow/a/2)*2"),
    ("scale='640:360", "scale='640:360"),  # unbalanced: left for the allowlist to refuse
])
def test_quotes_around_filter_arguments_go_where_they_protect_nothing(graph, expected):
    assert unquote_filter_args(graph) == expected


@pytest.mark.parametrize("option, instead", [
    ("vpre", "preset and tune"), ("sameq", "crf"), ("croptop", "crop"),
    ("padleft", "pad"), ("vhook", "vf"), ("newaudio", "map"), ("fpre", "spell"),
    ("flags2", "preset and tune"), ("me_method", "preset and tune"),
])
def test_an_option_gone_from_ffmpeg_is_refused_naming_it_and_what_to_use(option, instead):
    with pytest.raises(ValidationError) as refused:
        run((option, "x"))
    message = str(refused.value)
    assert f"option {option!r}" in message and instead in message
    assert "outfile_options" in message


def test_async_with_a_value_that_is_no_number_is_refused():
    with pytest.raises(ValidationError, match="'async' needs a whole number"):
        run(("async", "fast;x"))


@pytest.mark.parametrize("job_options", [
    None, [], {"options": "x"}, {"options": [["not", "a pass"]]},
    {"options": [{"outfile_options": [["b"]]}]}, {"options": [{"outfile_options": "b 4k"}]},
])
def test_what_is_not_the_wire_form_is_left_for_the_allowlist(job_options):
    assert translate_job_options(copy.deepcopy(job_options)) == job_options


def test_translation_leaves_what_the_client_sent_untouched():
    sent, _ = original_client.PRESETS["cb_low"]
    before = copy.deepcopy(sent)
    translate_job_options(sent)
    assert sent == before


def test_every_row_says_what_it_was_and_what_it_becomes():
    for row in TRANSLATIONS:
        assert row.old and row.becomes
        assert (row.apply is None) == bool(row.instead)


@pytest.mark.parametrize("name", sorted(original_client.PRESETS))
def test_each_original_preset_translates_into_options_the_allowlist_accepts(name):
    job_options, _ = original_client.PRESETS[name]
    ran = validate_job_options(translate_job_options(job_options))
    second = dict(ran["options"][1]["outfile_options"])
    assert second["c:v"] == "libx264" and second["profile:v"] == "baseline"
    assert second["pix_fmt"] == "yuv420p" and second["c:a"] == "aac"
    assert "'" not in second["vf"]
    keys = {key for encoding_pass in ran["options"] for key, _ in encoding_pass["outfile_options"]}
    assert not keys & {"vcodec", "acodec", "vprofile", "profile", "b", "ab", "async"}


def test_the_migration_guide_names_every_option_the_table_renames_or_refuses():
    guide = (Path(__file__).resolve().parents[2] / "docs" / "migrating.md").read_text()
    for row in TRANSLATIONS:
        if " " not in row.old:  # a single option name: renamed or refused
            assert f"`{row.old}`" in guide, row.old
