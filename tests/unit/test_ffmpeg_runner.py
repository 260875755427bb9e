"""nommerd.ffmpeg: the argv of each pass, the source check, a real ffmpeg run with progress."""
from __future__ import annotations

import os
import random
import shutil
import signal
import threading

import pytest

from core.jobs import MAX_DETAILS_CHARS
from core.app.local_system import wait_for
from core.errors import MediaError
from core.media import ffmpeg_path, make_sample_clip, probe
from core.settings import Settings
from nommerd.ffmpeg import (ALLOWED_DEMUXERS, EncodeCancelled, EncodeLimits, FFmpegRunner,
                            ProgressParser,
                            build_pass_argvs, check_source, failure_reason, output_name)
from tests.fixtures.processes import live_processes

pytestmark = pytest.mark.timeout(60)

FF = "ffmpeg"  # argv tests only compare strings
VIDEO = [["c:v", "libx264"], ["preset", "ultrafast"], ["b:v", "200k"]]


def one_pass(extra=()):
    return {"nommer": "ffmpeg", "options": [
        {"infile_options": [["ss", "0"]], "outfile_options": VIDEO + [["c:a", "aac"], *extra],
         "move_atom_to_front": True}]}


def two_pass():
    return {"nommer": "ffmpeg", "options": [
        {"infile_options": [], "outfile_options": VIDEO + [["an", None], ["f", "mp4"]]},
        {"infile_options": [], "outfile_options": VIDEO + [["c:a", "aac"]],
         "move_atom_to_front": True}]}


@pytest.fixture(scope="module")
def ffmpeg() -> str:
    return ffmpeg_path(Settings())


@pytest.fixture(scope="module")
def clip(ffmpeg, tmp_path_factory) -> str:
    return make_sample_clip(ffmpeg, str(tmp_path_factory.mktemp("clips") / "clip.mp4"),
                            duration_s=2, size="160x120")


@pytest.fixture
def source(clip, tmp_path) -> str:
    # As nommerd stores a download: no extension to guess from.
    path = tmp_path / "source"
    shutil.copy(clip, path)
    return str(path)


# --- argv ----------------------------------------------------------------

def test_one_pass_argv_names_the_demuxer_and_keeps_to_local_files():
    [argv] = build_pass_argvs(FF, one_pass(), "/w/source", "mov", "/w/output.mp4", "/w")
    assert argv == [FF, "-hide_banner", "-nostdin", "-y", "-nostats", "-progress", "pipe:1",
                    "-xerror", "-ss", "0",
                    "-protocol_whitelist", "file", "-f", "mov", "-i", "/w/source",
                    "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "200k", "-c:a", "aac",
                    "-movflags", "+faststart", "/w/output.mp4"]


def test_two_pass_argvs_share_a_pass_log_in_the_job_folder_and_pass_1_writes_nothing():
    first, second = build_pass_argvs(FF, two_pass(), "/w/source", "matroska", "/w/output.mp4", "/w")
    assert first[-7:] == ["-pass", "1", "-passlogfile", "/w/passlog", "-f", "null", "/dev/null"]
    assert "-an" in first and "-movflags" not in first
    assert second[-7:] == ["-pass", "2", "-passlogfile", "/w/passlog",
                           "-movflags", "+faststart", "/w/output.mp4"]
    for argv in (first, second):
        assert argv[argv.index("-i") - 2:argv.index("-i") + 2] == ["-f", "matroska", "-i", "/w/source"]


def test_bare_flags_and_values_are_separate_arguments_never_a_shell_line():
    options = one_pass(extra=[["metadata", "title=a b; rm -rf /"], ["sn", None]])
    [argv] = build_pass_argvs(FF, options, "/w/source", "mov", "/w/o.mp4", "/w")
    assert argv[argv.index("-metadata") + 1] == "title=a b; rm -rf /"
    assert argv[argv.index("-sn") + 1] == "-movflags"


def test_a_stray_option_name_or_pass_count_is_refused():
    with pytest.raises(MediaError):
        build_pass_argvs(FF, one_pass(extra=[["i /etc/passwd", None]]), "/w/s", "mov", "/w/o", "/w")
    three = {"options": two_pass()["options"] + one_pass()["options"]}
    with pytest.raises(MediaError, match="3 passes"):
        build_pass_argvs(FF, three, "/w/s", "mov", "/w/o", "/w")


@pytest.mark.parametrize("destination, name", [
    ("file:///media/out/clip.MP4", "output.mp4"),
    ("s3://bucket/a/b.webm?x=1", "output.webm"),
    ("file:///media/out/noext", "output"),
    ("file:///media/out/odd.ext;rm", "output"),
])
def test_local_output_takes_the_destination_extension(destination, name):
    assert output_name(destination) == name


# --- source check ----------------------------------------------------------

def test_a_plain_container_passes_the_check(ffmpeg, source):
    info = check_source(ffmpeg, source)
    assert info.demuxer == "mov" and info.demuxer in ALLOWED_DEMUXERS


def test_random_bytes_are_refused_with_a_reason(ffmpeg, tmp_path):
    path = tmp_path / "source"
    path.write_bytes(random.Random(3).randbytes(64 * 1024))
    with pytest.raises(MediaError, match="source is not media that ffmpeg can read"):
        check_source(ffmpeg, str(path))


def test_hls_playlist_naming_a_local_file_is_refused_before_encoding(ffmpeg, clip, tmp_path):
    path = tmp_path / "source"
    path.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nfile://{clip}\n#EXT-X-ENDLIST\n")
    with pytest.raises(MediaError, match="playlist"):
        check_source(ffmpeg, str(path))


def test_ffconcat_file_is_refused_before_encoding(ffmpeg, clip, tmp_path):
    path = tmp_path / "source"
    path.write_text(f"ffconcat version 1.0\nfile '{clip}'\n")
    with pytest.raises(MediaError, match="playlist"):
        check_source(ffmpeg, str(path))


def test_a_demuxer_outside_the_allowlist_is_refused(ffmpeg, tmp_path):
    # A PNG probes as the png_pipe image demuxer: not a container.
    path = tmp_path / "source"
    path.write_bytes(bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108020000"
                                   "00907753de0000000c4944415408d763f8cfc000000301010018dd8db0"
                                   "0000000049454e44ae426082"))
    with pytest.raises(MediaError, match="not an allowed media container"):
        check_source(ffmpeg, str(path))


# --- running --------------------------------------------------------------

def run_passes(ffmpeg, options, source, work_dir, runner):
    info = check_source(ffmpeg, source)
    output = str(work_dir / "output.mp4")
    argvs = build_pass_argvs(ffmpeg, options, source, info.demuxer, output, str(work_dir))
    seen = []
    for number, argv in enumerate(argvs):
        span = (100 * number // len(argvs), 100 * (number + 1) // len(argvs))
        runner.run(argv, info.duration_s, seen.append, span)
    return output, seen


def test_real_encode_reports_increasing_progress_up_to_100(ffmpeg, source, tmp_path):
    output, seen = run_passes(ffmpeg, one_pass(), source, tmp_path, FFmpegRunner(0))
    assert seen[-1] == 100
    assert seen == sorted(set(seen))
    info = probe(ffmpeg, output)
    assert ("video", "h264") in info.streams
    assert info.duration_s == pytest.approx(2.0, abs=0.2)


def test_two_pass_encode_spends_half_the_progress_on_each_pass(ffmpeg, source, tmp_path):
    output, seen = run_passes(ffmpeg, two_pass(), source, tmp_path, FFmpegRunner(0))
    assert 50 in seen and seen[-1] == 100
    assert seen == sorted(set(seen))
    assert any(name.startswith("passlog") for name in os.listdir(tmp_path))
    assert probe(ffmpeg, output).duration_s == pytest.approx(2.0, abs=0.2)


def test_progress_is_written_at_most_every_interval(ffmpeg, source, tmp_path):
    _, seen = run_passes(ffmpeg, one_pass(), source, tmp_path, FFmpegRunner(60_000))
    # A 2 s clip encodes in well under a minute: the first report and the end.
    assert len(seen) <= 2 and seen[-1] == 100


def test_ffmpeg_failure_is_a_media_error_with_the_tail_of_stderr(ffmpeg, source, tmp_path):
    runner = FFmpegRunner(0, {str(tmp_path) + os.sep: ""})
    options = one_pass(extra=[["c:v", "no_such_encoder"]])
    with pytest.raises(MediaError) as caught:
        run_passes(ffmpeg, options, source, tmp_path, runner)
    reason = str(caught.value)
    assert reason.startswith("ffmpeg failed with exit code")
    assert "no_such_encoder" in reason
    assert str(tmp_path) not in reason
    assert len(reason) <= MAX_DETAILS_CHARS


def test_failure_reason_keeps_the_end_and_fits_a_job_record():
    lines = [f"line {n} " + "x" * 100 for n in range(40)] + ["the actual error"]
    reason = failure_reason(1, lines)
    assert len(reason) <= MAX_DETAILS_CHARS
    assert reason.endswith("the actual error")
    assert failure_reason(-9, []).startswith("ffmpeg was killed by signal 9")


def test_progress_parser_reads_microseconds_and_the_end():
    parser = ProgressParser(duration_s=4.0)
    assert parser.feed("out_time_us=N/A") is None
    assert parser.feed("progress=continue") == 0.0
    parser.feed("out_time_us=1000000")
    assert parser.feed("progress=continue") == pytest.approx(0.25)
    parser.feed("out_time_ms=3000000")  # ffmpeg's misnamed microseconds
    assert parser.feed("progress=continue") == pytest.approx(0.75)
    assert parser.feed("progress=end") == 1.0


# --- cancel -----------------------------------------------------------------

def _group_members(pgid: int) -> list[int]:
    return [pid for pid, _, group in live_processes() if group == pgid]


def _run_in_thread(runner, argv, duration_s=None, on_progress=None):
    outcome = {}

    def target():
        try:
            runner.run(argv, duration_s, on_progress)
        except Exception as exc:  # the test inspects it
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def test_cancel_mid_encode_kills_ffmpeg_and_raises_cancelled(ffmpeg, tmp_path):
    long_clip = make_sample_clip(ffmpeg, str(tmp_path / "long"), duration_s=20, size="640x480")
    started = threading.Event()
    runner = FFmpegRunner(0)
    argv = build_pass_argvs(ffmpeg, one_pass(extra=[["preset", "veryslow"]]), long_clip, "mov",
                            str(tmp_path / "out.mp4"), str(tmp_path))[0]
    thread, outcome = _run_in_thread(runner, argv, 20.0, lambda pct: started.set())
    pid = None
    try:
        assert started.wait(30), "ffmpeg reported no progress"
        pid = runner.pid
        runner.cancel()
        thread.join(timeout=10)
        assert not thread.is_alive()
        assert isinstance(outcome.get("error"), EncodeCancelled)
        assert _group_members(pid) == []
        with pytest.raises(EncodeCancelled):
            runner.run(argv, 20.0)  # a cancelled runner starts nothing more
    finally:
        if pid and _group_members(pid):
            os.killpg(pid, signal.SIGKILL)


def test_cancel_kills_the_whole_process_group(tmp_path):
    # A stand-in with a child of its own: the child must die with it.
    runner = FFmpegRunner(0)
    thread, outcome = _run_in_thread(runner, ["/bin/sh", "-c", "sleep 60 & sleep 60; wait"])
    pid = None
    try:
        wait_for(lambda: runner.pid and len(_group_members(runner.pid)) == 3, 10, "sh and two sleeps")
        pid = runner.pid
        runner.cancel()
        thread.join(timeout=10)
        assert isinstance(outcome.get("error"), EncodeCancelled)
        wait_for(lambda: _group_members(pid) == [], 5, "the group to die")
    finally:
        if pid and _group_members(pid):
            os.killpg(pid, signal.SIGKILL)


# --- limits --------------------------------------------------------------

def limited_run(ffmpeg, source, tmp_path, limits, outfile, suffix=".mp4"):
    output = str(tmp_path / f"output{suffix}")
    argv = [ffmpeg, "-hide_banner", "-nostdin", "-y", "-f", "mov", "-i", source, *outfile,
            "-an", output]
    with pytest.raises(MediaError) as caught:
        FFmpegRunner(0, limits=limits).run(argv, 2.0, output_path=output)
    return str(caught.value)


def test_pass_past_its_wall_clock_limit_is_stopped_naming_the_limit(ffmpeg, source, tmp_path):
    reason = limited_run(ffmpeg, source, tmp_path, EncodeLimits(time_factor=0.0, time_base_s=0.5),
                         ["-vf", "scale=3840:2160", "-c:v", "libx264", "-preset", "placebo"])
    assert reason.startswith("stopped by a limit") and "encode_time_factor" in reason


def test_output_past_the_size_cap_is_stopped_naming_the_limit(ffmpeg, source, tmp_path):
    # 46 MB if written in full; stopped while writing, or failed when it ends.
    reason = limited_run(ffmpeg, source, tmp_path, EncodeLimits(max_output_bytes=2_000_000),
                         ["-c:v", "rawvideo", "-s", "640x480", "-r", "50"], ".mkv")
    assert "max_output_bytes" in reason


def test_ffmpeg_over_its_memory_cap_fails_naming_the_limit(ffmpeg, source, tmp_path):
    reason = limited_run(ffmpeg, source, tmp_path, EncodeLimits(max_memory_bytes=300 * 1024**2),
                         ["-s", "7680x4320", "-c:v", "libx264", "-preset", "ultrafast"])
    assert "ffmpeg_max_memory_bytes" in reason


def test_encode_that_would_fill_the_disk_is_stopped(ffmpeg, source, tmp_path):
    free = shutil.disk_usage(tmp_path).free
    # Asks for all but 5 MB of what is free now: the output crosses that at once.
    reason = limited_run(ffmpeg, source, tmp_path, EncodeLimits(min_free_bytes=free - 5_000_000),
                         ["-c:v", "rawvideo", "-s", "640x480", "-r", "50"], ".mkv")
    assert "min_free_bytes" in reason


def test_decode_errors_stop_ffmpeg_unless_tolerated():
    [strict] = build_pass_argvs(FF, one_pass(), "/w/source", "mov", "/w/output.mp4", "/w")
    [tolerant] = build_pass_argvs(FF, one_pass(), "/w/source", "mov", "/w/output.mp4", "/w",
                                  tolerate_decode_errors=True)
    assert "-xerror" in strict and "-xerror" not in tolerant


def test_a_seek_in_percent_becomes_seconds_of_the_source():
    options = {"options": [{"infile_options": [["ss", "10%"]],
                            "outfile_options": [["frames:v", "1"]]}]}
    [argv] = build_pass_argvs(FF, options, "/w/s", "mov", "/w/o.jpg", "/w", duration_s=42.0)
    assert argv[argv.index("-ss") + 1] == "4.200"
    with pytest.raises(MediaError, match="needs its duration"):
        build_pass_argvs(FF, options, "/w/s", "mov", "/w/o.jpg", "/w", duration_s=None)
