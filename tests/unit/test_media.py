"""core.media: what ffmpeg says about a file, and the generated sample clips."""
from __future__ import annotations

import random
import subprocess

import pytest

from core.errors import MediaError
from core.media import ffmpeg_path, make_sample_clip, probe, read_probe
from core.settings import Settings

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def ffmpeg() -> str:
    return ffmpeg_path(Settings())


@pytest.fixture(scope="module")
def clip(ffmpeg, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("media") / "clip.mp4"
    return make_sample_clip(ffmpeg, str(path), duration_s=2, size="160x120")


def test_sample_clip_is_an_h264_aac_mp4_of_the_asked_length(ffmpeg, clip):
    info = probe(ffmpeg, clip)
    assert info.format_name.startswith("mov,mp4")
    assert info.demuxer == "mov"
    assert info.streams == (("video", "h264"), ("audio", "aac"))
    assert info.duration_s == pytest.approx(2.0, abs=0.1)


def test_probe_of_random_bytes_says_ffmpeg_cannot_read_it(ffmpeg, tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(random.Random(7).randbytes(50_000))
    with pytest.raises(MediaError) as caught:
        probe(ffmpeg, str(junk))
    assert "not media that ffmpeg can read: Invalid data" in str(caught.value)
    assert str(tmp_path) not in str(caught.value), "local paths must not leak into reasons"


def test_probe_with_allowed_formats_refuses_a_playlist_before_opening_it(ffmpeg, clip, tmp_path):
    playlist = tmp_path / "list.m3u8"
    playlist.write_text("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\n"
                        f"{clip}\n#EXT-X-ENDLIST\n")
    with pytest.raises(MediaError, match="not an allowed media container"):
        probe(ffmpeg, str(playlist), allowed_formats=("mov", "matroska"))


def test_probe_of_a_missing_file_is_a_media_error(ffmpeg, tmp_path):
    with pytest.raises(MediaError):
        probe(ffmpeg, str(tmp_path / "nope.mp4"))


def test_read_probe_takes_unknown_duration_as_none():
    info = read_probe('{"format_name": "matroska,webm", "duration_s": null, '
                      '"streams": [["video", "vp9"], ["audio", "opus"]]}')
    assert info.format_name == "matroska,webm" and info.demuxer == "matroska"
    assert info.duration_s is None
    assert info.streams == (("video", "vp9"), ("audio", "opus"))


@pytest.mark.parametrize("suffix", [".mp3", ".flac"])
def test_metadata_text_cannot_spoof_the_probe(ffmpeg, clip, tmp_path, suffix):
    # ffmpeg -i prints tag names as they are: this one reads as a duration
    # and a video stream to a parser of that text.
    spoof = "X\n  Duration: 99:00:00.00, start: 0.000000, bitrate: 1 kb/s\n" \
            "  Stream #0:5: Video: evil\nZ"
    tagged = tmp_path / f"tagged{suffix}"
    subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-i", clip, "-vn",
                    "-metadata", f"{spoof}=v", str(tagged)], check=True)
    info = probe(ffmpeg, str(tagged))
    assert info.duration_s == pytest.approx(2.0, abs=0.2)
    assert [kind for kind, _ in info.streams] == ["audio"]


def test_ffmpeg_path_prefers_the_setting():
    assert ffmpeg_path(Settings(ffmpeg_path="/opt/ffmpeg/bin/ffmpeg")) == "/opt/ffmpeg/bin/ffmpeg"


def turned(ffmpeg: str, clip: str, out: str, extra: list[str]) -> str:
    """`clip` stored as it is, marked to be shown turned or stretched (as
    phones and DV cameras store video)."""
    subprocess.run([ffmpeg, "-v", "error", "-y", *extra, "-i", clip, "-c", "copy", out],
                   check=True, timeout=30)
    return out


@pytest.mark.parametrize("degrees, shown", [(90, (120, 160)), (-90, (120, 160)),
                                            (180, (160, 120))])
def test_the_probe_gives_the_size_a_player_shows_a_turned_video_at(ffmpeg, clip, tmp_path,
                                                                   degrees, shown):
    info = probe(ffmpeg, turned(ffmpeg, clip, str(tmp_path / "phone.mp4"),
                                ["-display_rotation:v:0", str(degrees)]))
    assert (info.width, info.height) == (160, 120)
    assert info.rotation == degrees % 360
    assert (info.display_width, info.display_height) == shown


def test_the_probe_gives_the_size_a_player_shows_non_square_pixels_at(ffmpeg, clip, tmp_path):
    stretched = str(tmp_path / "anamorphic.mkv")
    subprocess.run([ffmpeg, "-v", "error", "-y", "-i", clip, "-vf", "setsar=4/3",
                    "-c:v", "libx264", "-preset", "ultrafast", stretched], check=True, timeout=30)
    info = probe(ffmpeg, stretched)
    assert info.sample_aspect_ratio == (4, 3) and info.rotation == 0
    assert (info.display_width, info.display_height) == (213, 120)


def test_read_probe_ignores_a_rotation_or_ratio_out_of_shape():
    text = ('{"format_name": "mov", "duration_s": 1.0, "streams": [["video", "h264"]], '
            '"video": {"width": 10, "height": 20, "rotation": 45, '
            '"sample_aspect_ratio": [1, 0]}}')
    info = read_probe(text)
    assert info.rotation == 0 and info.sample_aspect_ratio is None
    assert (info.display_width, info.display_height) == (10, 20)
