"""core.media: what ffmpeg says about a file, and the generated sample clips."""
from __future__ import annotations

import random

import pytest

from core.errors import MediaError
from core.media import ffmpeg_path, make_sample_clip, parse_probe, probe
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


def test_parse_probe_reads_unknown_duration_as_none():
    stderr = ("Input #0, matroska,webm, from 'file:x':\n"
              "  Duration: N/A, start: 0.000000, bitrate: N/A\n"
              "  Stream #0:0(eng): Video: vp9 (Profile 0), yuv420p, 320x240\n"
              "  Stream #0:1(eng): Audio: opus, 48000 Hz, stereo, fltp\n")
    info = parse_probe(stderr)
    assert info is not None
    assert info.format_name == "matroska,webm" and info.demuxer == "matroska"
    assert info.duration_s is None
    assert info.streams == (("video", "vp9"), ("audio", "opus"))


def test_parse_probe_ignores_output_streams():
    stderr = ("Input #0, wav, from 'file:x':\n"
              "  Duration: 00:01:02.50, bitrate: 1411 kb/s\n"
              "  Stream #0:0: Audio: pcm_s16le ([1][0][0][0] / 0x0001), 44100 Hz\n"
              "Output #0, mp4, to 'out.mp4':\n"
              "  Stream #0:0: Audio: aac (LC), 44100 Hz\n")
    info = parse_probe(stderr)
    assert info.duration_s == pytest.approx(62.5)
    assert info.streams == (("audio", "pcm_s16le"),)


def test_ffmpeg_path_prefers_the_setting():
    assert ffmpeg_path(Settings(ffmpeg_path="/opt/ffmpeg/bin/ffmpeg")) == "/opt/ffmpeg/bin/ffmpeg"
