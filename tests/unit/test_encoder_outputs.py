"""nommerd.outputs and nommerd.hls with real ffmpeg: several outputs from
one process, a ladder's master playlist completed, files in the order a
reader can rely on, the failing output named, and the size cap over all."""
from __future__ import annotations

import dataclasses
import subprocess

import pytest

from core.errors import MediaError
from core.media import ffmpeg_path, make_sample_clip
from core.outputs import options_for_submit
from core.settings import Settings
from nommerd import outputs
from nommerd.ffmpeg import EncodeLimits, FFmpegRunner, check_source
from tests.fixtures.hls_checks import (REQUIRED, check_dash, dash_timelines, decoded_seconds,
                                      variants)

pytestmark = pytest.mark.timeout(120)
CLIP_S = 3.0


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    return make_sample_clip(ffmpeg_path(Settings()), str(path), duration_s=CLIP_S,
                            size="640x360")


@pytest.fixture
def media(tmp_path):
    (tmp_path / "media").mkdir()
    return tmp_path / "media"


def planned(media, tmp_path, outputs_sent):
    settings = Settings(file_roots=(str(media),))
    _destination, options = options_for_submit({"outputs": outputs_sent}, settings)
    work = tmp_path / "work"
    work.mkdir()
    return settings, work, outputs.plan(options, str(work))


def run(settings, work, planned_outputs, clip, runner=None):
    ffmpeg = ffmpeg_path(settings)
    info = check_source(ffmpeg, clip)
    runner = runner or FFmpegRunner()
    seen = []
    outputs.encode(ffmpeg, runner, planned_outputs, clip, info, str(work), settings,
                   seen.append)
    return info, seen


def test_a_file_and_a_ladder_come_from_one_ffmpeg_and_the_master_is_complete(
        media, tmp_path, clip):
    settings, work, planned_outputs = planned(media, tmp_path, [
        {"destination": (media / "a.mp4").as_uri(),
         "job_options": {"preset": "mp4-360p", "encoder_preset": "ultrafast"}},
        {"destination": (media / "hls").as_uri() + "/",
         "job_options": {"preset": "hls", "ladder": [180, 360, 720], "segment_s": 1}}])
    info = check_source(ffmpeg_path(settings), clip)
    argv = outputs.shared_argv("ffmpeg", planned_outputs, clip, info, settings)
    assert argv.count("-i") == 1 and argv.count("-filter_complex") == 1

    info, progress = run(settings, work, planned_outputs, clip)
    assert progress == sorted(progress) and progress[-1] == 100
    ladder = planned_outputs[1]
    found = variants(work / "out" / "1" / "master.m3u8")
    # 720 is above the source's 360 lines; the audio rendition is in its group only.
    assert [int(attrs["RESOLUTION"].split("x")[1]) for attrs, _ in found] == [180, 360]
    assert all(all(name in attrs for name in REQUIRED) for attrs, _ in found)
    files = outputs.upload_files(ladder)
    keys = [one.key for one in files]
    assert keys[-1] == "master.m3u8" and files[-1].last
    playlists = [one for one in files if one.key.endswith(".m3u8")]
    assert all(one.last for one in playlists)
    assert files[:len(files) - len(playlists)] == [one for one in files if not one.last]
    assert {one.content_type for one in files if one.key.endswith(".m4s")} == \
        {"video/iso.segment"}
    described = outputs.describe(ffmpeg_path(settings), ladder, info)
    assert described["renditions"] == 2 and described["segments"] == sum(
        key.endswith(".m4s") for key in keys)
    assert described["size_bytes"] == sum((work / "out" / "1" / key).stat().st_size
                                          for key in keys)


def test_the_failing_output_of_a_shared_run_is_named(media, tmp_path, clip):
    settings, work, planned_outputs = planned(media, tmp_path, [
        {"destination": (media / "a.mp4").as_uri(),
         "job_options": {"preset": "mp4-360p", "encoder_preset": "ultrafast"}},
        {"destination": (media / "b.mp4").as_uri(), "job_options": {
            "nommer": "ffmpeg", "options": [{"outfile_options": [["c:v", "no_such_codec"]]}]}},
        {"destination": (media / "c.mp4").as_uri(),
         "job_options": {"preset": "mp4-360p", "encoder_preset": "ultrafast"}}])
    with pytest.raises(MediaError) as failed:
        run(settings, work, planned_outputs, clip)
    assert str(failed.value).startswith("outputs[1]: ffmpeg failed")


def test_a_two_pass_output_runs_after_the_shared_one_and_its_failure_is_named(
        media, tmp_path, clip):
    x264 = [["c:v", "libx264"], ["preset", "ultrafast"], ["b:v", "200k"], ["f", "matroska"]]
    settings, work, planned_outputs = planned(media, tmp_path, [
        {"destination": (media / "a.mp4").as_uri(),
         "job_options": {"preset": "mp4-360p", "encoder_preset": "ultrafast"}},
        {"destination": (media / "b.mkv").as_uri(), "job_options": {
            "nommer": "ffmpeg", "options": [{"outfile_options": x264},
                                            {"outfile_options": x264}]}}])
    run(settings, work, planned_outputs, clip)
    assert (work / "out" / "1" / "output.mkv").stat().st_size > 0
    broken = dataclasses.replace(planned_outputs[1], passes=[
        {"outfile_options": x264}, {"outfile_options": [["c:v", "no_such_codec"]]}])
    with pytest.raises(MediaError) as failed:
        run(settings, work, [planned_outputs[0], broken], clip)
    assert str(failed.value).startswith("outputs[1]: ")


def test_the_size_cap_counts_every_output_together(media, tmp_path, clip):
    settings, work, planned_outputs = planned(media, tmp_path, [
        {"destination": (media / f"{name}.mp4").as_uri(),
         "job_options": {"preset": "mp4-360p", "encoder_preset": "ultrafast",
                         "video_bitrate": "2M"}} for name in "abc"])
    cap = EncodeLimits(max_output_bytes=400_000)
    run(settings, work, planned_outputs[:1], clip, FFmpegRunner(limits=cap))  # one fits
    with pytest.raises(MediaError) as stopped:
        run(settings, work, planned_outputs, clip, FFmpegRunner(limits=cap))
    assert "max_output_bytes" in str(stopped.value)


def test_a_ladder_from_a_source_without_video_fails_naming_the_output(media, tmp_path):
    settings, work, planned_outputs = planned(media, tmp_path, [
        {"destination": (media / "a.m4a").as_uri(), "job_options": {"preset": "audio-aac"}},
        {"destination": (media / "hls").as_uri() + "/", "kind": "hls"}])
    audio = tmp_path / "tone.m4a"
    subprocess.run([ffmpeg_path(settings), "-v", "error", "-f", "lavfi", "-i", "sine=duration=1",
                    str(audio)], check=True, timeout=60)
    with pytest.raises(MediaError) as failed:
        run(settings, work, planned_outputs, str(audio))
    assert str(failed.value) == "outputs[1]: an hls output needs a source with video"


def test_a_phone_video_stored_turned_makes_a_portrait_ladder_and_portrait_tiles(
        media, tmp_path, clip):
    # A phone stores portrait video landscape (640x360) with a display matrix;
    # players show it 360x640, and so must every rendition and tile.
    phone = str(tmp_path / "phone.mp4")
    subprocess.run([ffmpeg_path(Settings()), "-v", "error", "-y", "-display_rotation:v:0", "90",
                    "-i", clip, "-c", "copy", phone], check=True, timeout=30)
    settings, work, planned_outputs = planned(media, tmp_path, [
        {"destination": (media / "hls").as_uri() + "/",
         "job_options": {"preset": "hls", "ladder": [180, 360, 640], "segment_s": 1}},
        {"destination": (media / "scrub").as_uri() + "/",
         "job_options": {"preset": "sprite", "interval_s": 1}}])
    info, _progress = run(settings, work, planned_outputs, phone)
    found = variants(work / "out" / "0" / "master.m3u8")
    sizes = [tuple(map(int, attrs["RESOLUTION"].split("x"))) for attrs, _ in found]
    # 640 lines is above the stored height but not the shown one: it stays.
    assert [height for _width, height in sizes] == [180, 360, 640]
    assert all(width < height for width, height in sizes), sizes
    geometry = planned_outputs[1].geometry
    assert geometry.tile_height > geometry.tile_width
    described = outputs.describe(ffmpeg_path(settings), planned_outputs[0], info)
    assert (described["width"], described["height"]) == (360, 640)


def test_a_ladder_with_dash_packages_the_same_renditions_and_writes_manifests_last(
        media, tmp_path):
    # 853x481: each rung's width is rounded to even, so the rungs' shapes
    # differ a little; they must still form one DASH adaptation set.
    odd = str(tmp_path / "odd.mp4")
    subprocess.run([ffmpeg_path(Settings()), "-v", "error", "-y",
                    "-f", "lavfi", "-i", "testsrc=size=853x481:rate=30000/1001:duration=3",
                    "-f", "lavfi", "-i", "sine=duration=3", "-c:v", "libx264",
                    "-preset", "ultrafast", "-pix_fmt", "yuv444p", "-c:a", "aac", "-shortest",
                    odd], check=True, timeout=60)
    settings, work, planned_outputs = planned(media, tmp_path, [
        {"destination": (media / "show" / "main.m3u8").as_uri(), "preset": "hls",
         "job_options": {"ladder": [180, 360], "segment_s": 1, "dash": True}}])
    info, _progress = run(settings, work, planned_outputs, odd)
    folder = work / "out" / "0"
    check_dash(ffmpeg_path(settings), folder / "main.mpd", info.duration_s, 2)
    ladder = planned_outputs[0]
    files = outputs.upload_files(ladder)
    assert [one.key for one in files if one.last][-2:] == ["main.m3u8", "main.mpd"]
    assert files[-1].content_type == "application/dash+xml"
    dash_files = [one for one in files if one.key.startswith("dash/")]
    assert dash_files and not any(one.last for one in dash_files)
    assert {one.content_type for one in dash_files} == {"video/mp4", "video/iso.segment"}
    described = outputs.describe(ffmpeg_path(settings), ladder, info)
    assert described["dash_manifest"] == (media / "show" / "main.mpd").as_uri()
    assert described["size_bytes"] == sum((folder / one.key).stat().st_size for one in files)


def test_a_ladder_of_a_source_without_sound_has_no_audio_group_and_still_plays(
        media, tmp_path):
    silent = str(tmp_path / "silent.mp4")
    subprocess.run([ffmpeg_path(Settings()), "-v", "error", "-y",
                    "-f", "lavfi", "-i", "testsrc=size=640x360:rate=25:duration=3",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", silent],
                   check=True, timeout=60)
    settings, work, planned_outputs = planned(media, tmp_path, [
        {"destination": (media / "show").as_uri() + "/", "preset": "hls",
         "job_options": {"ladder": [180, 360], "segment_s": 1, "dash": True}}])
    info, _progress = run(settings, work, planned_outputs, silent)
    folder = work / "out" / "0"
    master = (folder / "master.m3u8").read_text()
    assert "#EXT-X-MEDIA" not in master and "AUDIO=" not in master
    found = variants(folder / "master.m3u8")
    assert [int(attrs["RESOLUTION"].split("x")[1]) for attrs, _ in found] == [180, 360]
    for program in range(2):
        assert abs(decoded_seconds(ffmpeg_path(settings), folder / "master.m3u8", program, "v")
                   - 3.0) <= 0.1
    timelines = dash_timelines(folder / "manifest.mpd")
    assert sorted(key.split("/")[0] for key in timelines) == ["video", "video"]
    described = outputs.describe(ffmpeg_path(settings), planned_outputs[0], info)
    assert described["audio_codec"] is None and described["renditions"] == 2
