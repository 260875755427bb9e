"""Presets on the whole running system (supervisord, the API, encoders,
real ffmpeg): the original client's five presets sent exactly as it sends
them, and every catalogue preset, each checked in the file it produced.

Every job is submitted once, up front, so the encoders work through them
together; each test then waits for its own job and checks its output."""
from __future__ import annotations

import subprocess
import sys

import pytest

from core.app.launcher import PROJECT_ROOT
from core.app.local_system import LocalSystem, wait_for
from core.media import ffmpeg_path, make_sample_clip
from core.presets import catalogue
from tests.fixtures import original_client
from tests.fixtures.media_checks import describe

pytestmark = pytest.mark.timeout(300)

FAST = {
    "NOMMER_FEEDERD_AUTO_SCALE_INTERVAL": "0.5",
    "NOMMER_MAX_NUM_EC2_INSTANCES": "2",
    "NOMMER_NOMMERD_HEARTBEAT_INTERVAL_S": "1",
    "NOMMER_NOMMERD_MAX_INACTIVITY": "120",
    "NOMMER_PROGRESS_INTERVAL_MS": "500",
}
# The encoders' fastest settings where a preset takes them: the checks are
# about what the output is, not how good it looks.
FASTEST = {"mp4-av1": "12", "webm-vp9": "8"}
CLIP_S = 1.0
# Sources: a wide one the presets scale down; a small one they must not scale up.
LARGE, SMALL = (1280, 720), (320, 180)
# catalogue preset -> (source, the size it must come out at)
EXPECTED_SIZE = {
    "mp4-360p": (LARGE, (640, 360)), "mp4-480p": (SMALL, SMALL),
    "mp4-720p": (LARGE, (1280, 720)), "mp4-1080p": (SMALL, SMALL),
    "webm-vp9": (SMALL, SMALL), "mp4-av1": (SMALL, SMALL),
    "poster-jpeg": ("flash", (1280, 720)),
    "audio-aac": (SMALL, None), "audio-mp3": (SMALL, None), "audio-opus": (SMALL, None),
}


def _flash_clip(ffmpeg: str, path) -> object:
    """1 s of black at 25 fps, white only from 0.06 to 0.2 s: a poster taken
    10 % in (0.1 s) is white, one taken anywhere else black."""
    subprocess.run([ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
                    "-f", "lavfi", "-i", f"color=c=black:s={LARGE[0]}x{LARGE[1]}:r=25:d={CLIP_S}",
                    "-vf", "drawbox=c=white:t=fill:enable='between(t,0.06,0.2)'",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                    str(path)], check=True, timeout=60)
    return path


def _brightness(ffmpeg: str, path) -> int:
    """The average grey level (0-255) of an image."""
    done = subprocess.run([ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-i",
                           str(path), "-vf", "scale=1:1", "-f", "rawvideo", "-pix_fmt", "gray",
                           "-"], capture_output=True, check=True, timeout=60)
    return done.stdout[0]


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    with LocalSystem(tmp_path_factory.mktemp("presets"), FAST) as running:
        yield running


@pytest.fixture(scope="module")
def jobs(system):
    """Every preset's job submitted: name -> (job id, output path)."""
    ffmpeg = ffmpeg_path(system.settings)
    sources = {}
    for width, height in (LARGE, SMALL):
        path = system.media_dir / "in" / f"clip-{width}x{height}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        make_sample_clip(ffmpeg, str(path), duration_s=CLIP_S, size=f"{width}x{height}",
                         rate=10)
        sources[(width, height)] = path
    sources["flash"] = _flash_clip(ffmpeg, system.media_dir / "in" / "flash.mp4")
    out = system.media_dir / "out"
    submitted = {}
    host = system.client.base_url
    for name, (job_options, _) in original_client.PRESETS.items():
        dest = out / f"{name}.mp4"
        answer = original_client.job_submit(host, sources[SMALL].as_uri(), dest.as_uri(),
                                            job_options)
        assert answer["success"] is True, answer
        submitted[name] = (answer["job_id"], dest)
    for name, preset in catalogue()["presets"].items():
        source = sources[EXPECTED_SIZE[name][0]]
        options = {"preset": name}
        if "encoder_preset" in preset["defaults"]:
            options["encoder_preset"] = FASTEST.get(name, "ultrafast")
        dest = out / f"{name}.{preset['extension']}"
        answer = original_client.job_submit(host, source.as_uri(), dest.as_uri(), options)
        assert answer["success"] is True, answer
        submitted[name] = (answer["job_id"], dest)
    return submitted


def finished(system, job_id: str) -> dict:
    def ended():
        job = system.client.job(job_id)
        return job if job["state"] in {"FINISHED", "ERROR", "ABANDONED", "CANCELLED"} else None

    try:
        job = wait_for(ended, 240, interval_s=0.25, what=f"job {job_id} to end")
    except TimeoutError:
        print(system.log_tail("nommerd_00"), system.log_tail("nommerd_01"), sep="\n")
        raise
    assert job["state"] == "FINISHED", job["state_details"]
    return job


@pytest.mark.parametrize("name", sorted(original_client.PRESETS))
def test_original_client_preset_runs_unmodified(system, jobs, name):
    job_options, wanted = original_client.PRESETS[name]
    job_id, dest = jobs[name]
    job = finished(system, job_id)
    # The record shows what was sent and what ran.
    assert job["sent_options"] == job_options
    ran = job["options"]["options"]
    assert len(ran) == 2
    assert ["c:a", "aac"] in ran[1]["outfile_options"]

    got = describe(ffmpeg_path(system.settings), str(dest))
    assert (got.video_codec, got.video_profile) == ("h264", "Constrained Baseline")
    assert got.width == wanted["width"]
    assert got.height % 2 == 0
    assert got.height == pytest.approx(got.width * SMALL[1] / SMALL[0], abs=2)
    assert got.audio_codec == "aac"
    assert got.audio_kbps == pytest.approx(wanted["audio_kbps"], rel=0.2)
    if wanted["sample_rate"]:
        assert got.sample_rate == wanted["sample_rate"]
    if wanted["channels"]:
        assert got.channels == wanted["channels"]
    assert got.moov_first is wanted["moov_first"]
    assert got.duration_s == pytest.approx(CLIP_S, abs=0.1)


WANTED_CODECS = {name: (preset["video"], preset["audio"])
                 for name, preset in catalogue()["presets"].items()}


@pytest.mark.parametrize("name", sorted(EXPECTED_SIZE))
def test_catalogue_preset_produces_what_it_promises(system, jobs, name):
    job_id, dest = jobs[name]
    job = finished(system, job_id)
    assert job["sent_options"]["preset"] == name

    got = describe(ffmpeg_path(system.settings), str(dest))
    video, audio = WANTED_CODECS[name]
    assert (got.video_codec, got.audio_codec) == (video, audio)
    size = EXPECTED_SIZE[name][1]
    assert (got.width, got.height) == (size if size else (None, None))
    if name == "poster-jpeg":
        assert got.duration_s == pytest.approx(0.04, abs=0.01)  # one frame
        assert _brightness(ffmpeg_path(system.settings), dest) > 200  # taken 10 % in
    else:
        assert got.duration_s == pytest.approx(CLIP_S, abs=0.1)
    if catalogue()["presets"][name]["container"] == "mp4":
        assert got.moov_first is True


def _nommer(system, *args, cwd) -> subprocess.CompletedProcess:
    env = dict(system.env, PYTHONPATH=str(PROJECT_ROOT))
    return subprocess.run([sys.executable, "-m", "core.app.cli", *args], cwd=str(cwd), env=env,
                          capture_output=True, text=True, timeout=120)


def test_nommer_presets_lists_the_catalogue(system):
    done = _nommer(system, "presets", cwd=system.media_dir)
    assert done.returncode == 0, done.stderr
    for name in catalogue()["presets"]:
        assert name in done.stdout
    assert "video_bitrate=" in done.stdout


def test_nommer_submit_with_a_preset_takes_local_paths(system, jobs):
    # Relative local paths, as a user types them, become file:// URIs.
    done = _nommer(system, "submit", "in/clip-320x180.mp4", "out/cli.mp3",
                   "--preset", "audio-mp3", "--set", "audio_bitrate=96k", "--follow",
                   "--timeout", "200", cwd=system.media_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    got = describe(ffmpeg_path(system.settings), str(system.media_dir / "out" / "cli.mp3"))
    assert got.audio_codec == "mp3" and got.audio_kbps == 96 and got.video_codec is None


def test_nommer_submit_writes_a_ladder_and_a_poster_in_one_job(system, jobs):
    done = _nommer(system, "submit", "in/clip-320x180.mp4", "out/cli-show/main.m3u8",
                   "--preset", "hls", "--set", "ladder=[180]", "--set", "segment_s=1",
                   "--set", "dash=true", "--output", "out/cli-show/poster.jpg=poster-jpeg",
                   "--follow", "--timeout", "200", cwd=system.media_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    show = system.media_dir / "out" / "cli-show"
    assert {"main.m3u8", "main.mpd", "poster.jpg", "180p"} <= \
        {path.name for path in show.iterdir()}
    poster = describe(ffmpeg_path(system.settings), str(show / "poster.jpg"))
    assert poster.video_codec == "mjpeg"
