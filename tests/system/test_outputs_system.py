"""Several outputs in one job, and HLS ladders, on the whole running system
(supervisord, the API, an encoder, real ffmpeg): what each output holds,
what the job record says of it, and a failure of one output failing the job."""
from __future__ import annotations

import pytest

from core.app.cli import ApiRefused
from core.app.local_system import LocalSystem, wait_for
from core.media import ffmpeg_path, make_sample_clip
from tests.fixtures.hls_checks import check_dash, check_ladder
from tests.fixtures.media_checks import describe

pytestmark = pytest.mark.timeout(300)

FAST = {
    "NOMMER_FEEDERD_AUTO_SCALE_INTERVAL": "0.5",
    "NOMMER_MAX_NUM_EC2_INSTANCES": "1",
    "NOMMER_NOMMERD_HEARTBEAT_INTERVAL_S": "1",
    "NOMMER_NOMMERD_MAX_INACTIVITY": "120",
    "NOMMER_PROGRESS_INTERVAL_MS": "500",
}
CLIP_S = 8.0
ENDED = {"FINISHED", "ERROR", "ABANDONED", "CANCELLED"}


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    with LocalSystem(tmp_path_factory.mktemp("outputs"), FAST) as running:
        yield running


@pytest.fixture(scope="module")
def clip(system):
    path = system.media_dir / "in" / "clip-720p.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    return make_sample_clip(ffmpeg_path(system.settings), str(path), duration_s=CLIP_S,
                            size="1280x720", rate=25)


def submit(system, body: dict) -> str:
    return system.client.call("POST", "/job/submit/", body)["job_id"]


def ended(system, job_id: str) -> dict:
    def done():
        job = system.client.job(job_id)
        return job if job["state"] in ENDED else None
    try:
        return wait_for(done, 240, interval_s=0.25, what=f"job {job_id} to end")
    except TimeoutError:
        print(system.log_tail("nommerd_00"))
        raise


def test_one_job_writes_files_and_an_hls_ladder_and_describes_each(system, clip):
    out = system.media_dir / "out-many"
    x264 = [["c:v", "libx264"], ["preset", "ultrafast"], ["b:v", "300k"], ["an", None],
            ["f", "matroska"]]
    job_id = submit(system, {"source_path": f"file://{clip}", "outputs": [
        {"destination": (out / "small.mp4").as_uri(),
         "job_options": {"preset": "mp4-360p", "encoder_preset": "ultrafast"}},
        {"destination": (out / "hls").as_uri() + "/", "job_options": {"preset": "hls"}},
        {"destination": (out / "poster.jpg").as_uri(),
         "job_options": {"preset": "poster-jpeg", "time": "25%"}},
        {"destination": (out / "two-pass.mkv").as_uri(),
         "job_options": {"nommer": "ffmpeg", "options": [{"outfile_options": x264},
                                                         {"outfile_options": x264}]}},
        {"destination": (out / "scrub").as_uri() + "/", "kind": "sprite",
         "job_options": {"preset": "sprite", "interval_s": 2}},
    ]})
    job = ended(system, job_id)
    assert job["state"] == "FINISHED", job["state_details"]

    small = describe(ffmpeg_path(system.settings), str(out / "small.mp4"))
    assert (small.width, small.height, small.audio_codec) == (640, 360, "aac")
    assert abs(small.duration_s - CLIP_S) < 0.1
    assert describe(ffmpeg_path(system.settings), str(out / "two-pass.mkv")).height == 720
    # The source is 720 lines: the default ladder's 1080p rung is left out.
    check_ladder(ffmpeg_path(system.settings), out / "hls", CLIP_S, [360, 720])

    described = job["outputs"]
    assert [one["kind"] for one in described] == ["file", "hls", "file", "file", "sprite"]
    first = described[0]
    assert first["uri"] == (out / "small.mp4").as_uri()
    assert first["size_bytes"] == (out / "small.mp4").stat().st_size
    assert (first["container"], first["video_codec"], first["audio_codec"]) == \
        ("mp4", "h264", "aac")
    assert first["codecs"] == ["h264", "aac"]
    assert (first["width"], first["height"]) == (640, 360) and first["bitrate"] > 0
    assert abs(first["duration_s"] - CLIP_S) < 0.1
    ladder = described[1]
    assert ladder["master_playlist"] == (out / "hls" / "master.m3u8").as_uri()
    assert ladder["renditions"] == 2 and ladder["segments"] >= 6
    assert ladder["codecs"] == ["h264", "aac"] and described[4]["codecs"] == ["mjpeg"]
    assert (ladder["width"], ladder["height"]) == (1280, 720)
    assert described[2]["video_codec"] == "mjpeg"
    sprite = described[4]
    assert sprite["tiles"] == 4 and sprite["vtt"] == (out / "scrub" / "sprite.vtt").as_uri()
    track = (out / "scrub" / "sprite.vtt").read_text()
    assert track.startswith("WEBVTT") and track.count("sprite.jpg#xywh=") == 4
    sheet = describe(ffmpeg_path(system.settings), str(out / "scrub" / "sprite.jpg"))
    assert (sheet.width, sheet.height) == (4 * sprite["tile_width"], sprite["tile_height"])


def test_a_single_output_job_is_described_too(system, clip):
    dest = system.media_dir / "out-one" / "one.mp4"
    job_id = system.client.submit_options(f"file://{clip}", dest.as_uri(),
                                          {"preset": "mp4-360p", "encoder_preset": "ultrafast"})
    job = ended(system, job_id)
    assert job["state"] == "FINISHED", job["state_details"]
    [one] = job["outputs"]
    assert one["uri"] == dest.as_uri() and one["size_bytes"] == dest.stat().st_size
    assert (one["width"], one["height"]) == (640, 360)


def test_an_hls_ladder_in_ts_segments_from_the_single_output_form(system, clip):
    dest = system.media_dir / "out-ts"
    job_id = system.client.submit_options(
        f"file://{clip}", dest.as_uri() + "/",
        {"preset": "hls", "segment_type": "ts", "segment_s": 2, "ladder": [180, 360]})
    job = ended(system, job_id)
    assert job["state"] == "FINISHED", job["state_details"]
    assert {path.suffix for path in (dest / "360p").iterdir()} == {".ts", ".m3u8"}
    check_ladder(ffmpeg_path(system.settings), dest, CLIP_S, [180, 360])


def test_a_failing_output_fails_the_job_naming_it(system, clip):
    out = system.media_dir / "out-fail"
    job_id = submit(system, {"source_path": f"file://{clip}", "outputs": [
        {"destination": (out / "good.mp4").as_uri(),
         "job_options": {"preset": "mp4-360p", "encoder_preset": "ultrafast"}},
        {"destination": (out / "bad.mp4").as_uri(),
         "job_options": {"nommer": "ffmpeg", "options": [
             {"outfile_options": [["c:v", "no_such_encoder"]]}]}},
    ]})
    job = ended(system, job_id)
    assert job["state"] == "ERROR"
    assert job["state_details"].startswith("outputs[1]")
    assert job["outputs"] is None


def test_an_output_refused_at_submit_is_named(system, clip):
    with pytest.raises(ApiRefused) as refused:
        submit(system, {"source_path": f"file://{clip}", "outputs": [
            {"destination": (system.media_dir / "a.mp4").as_uri(),
             "job_options": {"preset": "mp4-360p"}},
            {"destination": (system.media_dir / "list.m3u8").as_uri(),
             "job_options": {"preset": "mp4-360p"}}]})
    assert "outputs[1].destination" in str(refused.value)
    assert "hls preset" in str(refused.value)


def test_a_show_folder_holds_a_named_ladder_beside_its_poster_and_thumbnails(system, clip):
    show = system.media_dir / "out-show"
    job_id = submit(system, {"source_path": f"file://{clip}", "outputs": [
        {"destination": (show / "main.m3u8").as_uri(), "preset": "hls",
         "job_options": {"ladder": [360], "segment_s": 2, "dash": True}},
        {"destination": (show / "poster.jpg").as_uri(), "preset": "poster-jpeg"},
        {"destination": (show / "thumbs.vtt").as_uri(), "preset": "sprite",
         "job_options": {"interval_s": 4}},
    ]})
    job = ended(system, job_id)
    assert job["state"] == "FINISHED", job["state_details"]
    check_ladder(ffmpeg_path(system.settings), show, CLIP_S, [360], master_name="main.m3u8")
    check_dash(ffmpeg_path(system.settings), show / "main.mpd", CLIP_S, 1)
    assert sorted(path.name for path in show.iterdir()) == \
        ["360p", "audio", "dash", "main.m3u8", "main.mpd", "poster.jpg", "thumbs.jpg",
         "thumbs.vtt"]
    assert job["destination"] == (show / "main.m3u8").as_uri()
    ladder, poster, sprite = job["outputs"]
    assert ladder["uri"] == ladder["master_playlist"] == (show / "main.m3u8").as_uri()
    assert poster["uri"] == (show / "poster.jpg").as_uri() and poster["video_codec"] == "mjpeg"
    assert sprite["vtt"] == (show / "thumbs.vtt").as_uri() and sprite["tiles"] == 2
    assert (show / "thumbs.vtt").read_text().count("thumbs.jpg#xywh=") == 2
