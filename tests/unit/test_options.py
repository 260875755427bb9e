"""Which encoding options a client may send (core.options): what an encoding
needs is accepted in the original's wire form; anything that could make
ffmpeg read or write other files, or reach the network, is refused."""
from __future__ import annotations

import copy
import subprocess

import imageio_ffmpeg
import pytest

from core.errors import ValidationError
from core.options import check_output_caps, FFMPEG_NOMMER, KNOWN_NOMMERS, validate_job_options

# The job_options of the original's documented /job/submit/ example, as JSON
# (its Python tuples become lists on the wire).
ORIGINAL_EXAMPLE = {
    "nommer": "media_nommer.ec2nommerd.nommers.ffmpeg.FFmpegNommer",
    "options": [
        {
            "outfile_options": [
                ["vcodec", "libx264"],
                ["preset", "medium"],
                ["vprofile", "baseline"],
                ["b", "400k"],
                ["vf", "yadif,scale='640:trunc(ow/a/2)*2'"],
                ["pass", "1"],
                ["f", "mp4"],
                ["an", None],
            ],
        },
        {
            "outfile_options": [
                ["vcodec", "libx264"],
                ["preset", "medium"],
                ["vprofile", "baseline"],
                ["b", "400k"],
                ["vf", "yadif,scale='640:trunc(ow/a/2)*2'"],
                ["pass", "2"],
                ["acodec", "libfaac"],
                ["ab", "128k"],
                ["ar", "48000"],
                ["async", "480"],
                ["ac", "2"],
                ["f", "mp4"],
            ],
            "move_atom_to_front": True,
        },
    ],
}


def one_pass(outfile=(), infile=(), **extra) -> dict:
    encoding_pass = {"infile_options": [list(p) for p in infile],
                     "outfile_options": [list(p) for p in outfile], **extra}
    return {"nommer": "ffmpeg", "options": [encoding_pass]}


def refused(job_options) -> str:
    with pytest.raises(ValidationError) as caught:
        validate_job_options(job_options)
    assert caught.value.code == "BADINPUT"
    return str(caught.value)


def test_the_original_documented_example_is_accepted_as_sent():
    normalized = validate_job_options(copy.deepcopy(ORIGINAL_EXAMPLE))
    assert normalized["nommer"] == FFMPEG_NOMMER
    first, second = normalized["options"]
    assert first["outfile_options"] == ORIGINAL_EXAMPLE["options"][0]["outfile_options"]
    assert first["infile_options"] == [] and first["move_atom_to_front"] is False
    assert second["move_atom_to_front"] is True
    assert ["async", "480"] in second["outfile_options"]


def test_the_short_nommer_name_is_accepted_and_kept_as_sent():
    assert validate_job_options(one_pass([["c:v", "libx264"]]))["nommer"] == "ffmpeg"
    assert set(KNOWN_NOMMERS) == {FFMPEG_NOMMER, "ffmpeg"}


def test_normalized_form_has_dashless_names_string_values_and_every_pass_key():
    normalized = validate_job_options(one_pass(
        outfile=[["-c:v", "libx264"], ["crf", 23], ["r", 29.97], ["-an", None],
                 ["threads", 0], ["qscale", 2.0]],
        infile=[["-ss", 1.5], ["t", 10]]))
    assert normalized == {"nommer": "ffmpeg", "options": [{
        "infile_options": [["ss", "1.5"], ["t", "10"]],
        "outfile_options": [["c:v", "libx264"], ["crf", "23"], ["r", "29.97"], ["an", None],
                            ["threads", "0"], ["qscale", "2"]],
        "move_atom_to_front": False}]}


def test_missing_option_lists_mean_no_options():
    normalized = validate_job_options({"nommer": "ffmpeg", "options": [{}]})
    assert normalized["options"] == [
        {"infile_options": [], "outfile_options": [], "move_atom_to_front": False}]


@pytest.mark.parametrize("outfile", [
    [["c:v", "libx264"], ["preset", "veryfast"], ["b:v", "800k"], ["pix_fmt", "yuv420p"],
     ["c:a", "aac"], ["b:a", "128k"]],
    [["codec:v", "libvpx-vp9"], ["crf", "31"], ["b:v", "0"], ["f", "webm"]],
    [["vf", "scale=1280:-2,fps=30000/1001,format=yuv420p,setsar=1/1"]],
    [["vf", "scale='min(1280,iw)':-2"], ["filter:v", "crop=w=640:h=360:x=0:y=0,hflip"]],
    [["af", "aresample=48000,volume=0.5,highpass=f=200"], ["filter:a", "pan=stereo|FL=c0|FR=c1"]],
    [["map", "0:v?"], ["map", "0:a:0"], ["map", "0"], ["movflags", "+faststart"]],
    [["movflags", "+frag_keyframe+empty_moov"], ["f", "mp4"], ["g", "120"], ["keyint_min", 60]],
    [["s", "1280x720"], ["aspect", "16:9"], ["ar", 44100], ["ac", 2], ["bf", -1]],
    [["t", "00:01:30.5"], ["ss", "12.5"], ["to", "90"], ["maxrate", "2M"], ["bufsize", "4M"]],
    [["vn", None], ["sn", None], ["dn", None], ["c:a", "libopus"], ["f", "ogg"]],
    [["profile:v", "high"], ["level", "4.1"], ["tune", "film"], ["sc_threshold", 0]],
])
def test_options_an_encoding_needs_are_accepted(outfile):
    validate_job_options(one_pass(outfile))


@pytest.mark.parametrize("infile", [
    [["ss", "00:00:05"], ["t", "30"], ["itsoffset", "-0.5"], ["r", "25"], ["f", "mov"]],
    [["f", "matroska"], ["to", "12ms"]],
])
def test_input_options_that_only_pick_time_rate_and_container_are_accepted(infile):
    validate_job_options(one_pass(infile=infile))


def test_two_pass_jobs_may_name_their_own_pass_number_only():
    job = copy.deepcopy(ORIGINAL_EXAMPLE)
    job["options"][0]["outfile_options"][5] = ["pass", "2"]
    message = refused(job)
    assert "job_options.options[0].outfile_options: option 'pass' must be '1'" in message


@pytest.mark.parametrize("job_options, words", [
    (None, "job_options is required"),
    ({}, "job_options is required"),
    ("{\"nommer\": \"ffmpeg\"}", "job_options is required"),
    ({"options": [{}]}, "job_options.nommer is required"),
    ({"nommer": "", "options": [{}]}, "job_options.nommer is required"),
    ({"nommer": 5, "options": [{}]}, "job_options.nommer is required"),
    ({"nommer": "media_nommer.nommers.x264.Evil", "options": [{}]},
     "is not known; known nommers: " + FFMPEG_NOMMER),
    ({"nommer": "ffmpeg"}, "job_options.options is required"),
    ({"nommer": "ffmpeg", "options": []}, "job_options.options is required"),
    ({"nommer": "ffmpeg", "options": {}}, "job_options.options is required"),
    ({"nommer": "ffmpeg", "options": [{}, {}, {}]}, "has 3 passes; at most 2"),
    ({"nommer": "ffmpeg", "options": [{}], "preset": "x"}, "unknown key 'preset'"),
    ({"nommer": "ffmpeg", "options": ["-i x"]}, "job_options.options[0] must be an object"),
    ({"nommer": "ffmpeg", "options": [{"outfile": []}]}, "unknown key 'outfile'"),
    ({"nommer": "ffmpeg", "options": [{"move_atom_to_front": "yes"}]},
     "move_atom_to_front must be true or false"),
    ({"nommer": "ffmpeg", "options": [{"outfile_options": {"an": None}}]},
     "outfile_options must be a list of [option, value] pairs"),
    ({"nommer": "ffmpeg", "options": [{"outfile_options": [["an"]]}]},
     "must be a list of [option, value] pairs"),
    ({"nommer": "ffmpeg", "options": [{"outfile_options": [["an", None, 1]]}]},
     "must be a list of [option, value] pairs"),
    ({"nommer": "ffmpeg", "options": [{"outfile_options": [[None, "x"]]}]},
     "option name must be a non-empty string"),
    ({"nommer": "ffmpeg", "options": [{"outfile_options": [["ab", "1k"]] * 65}]},
     "more than 64 options"),
])
def test_malformed_job_options_are_refused_naming_the_place(job_options, words):
    assert words in refused(job_options)


@pytest.mark.parametrize("key", [
    "i", "-i", "filter_complex", "lavfi", "filter_script", "filter_complex_script",
    "passlogfile", "y", "n", "report", "attach", "dump_attachment", "protocol_whitelist",
    "protocols", "metadata", "vpre", "fpre", "x264-params", "x264opts", "progress",
    "stats_file", "hls_segment_filename", "headers", "--c:v", "map_metadata",
    # ffmpeg reads the value of "-/name" from a file.
    "/vf", "-/filter:v", "/c:v",
])
def test_options_outside_the_allowlist_are_refused(key):
    message = refused({"nommer": "ffmpeg", "options": [{}, {"outfile_options": [[key, "x"]]}]})
    assert f"job_options.options[1].outfile_options: option '{key.removeprefix('-')}' is not " \
           "allowed" in message


@pytest.mark.parametrize("key", ["i", "f_concat", "safe", "protocol_whitelist", "vf",
                                 "filter_complex", "headers", "c:v"])
def test_input_options_outside_their_allowlist_are_refused(key):
    message = refused(one_pass(infile=[[key, "x"]]))
    assert f"job_options.options[0].infile_options: option '{key}' is not allowed" in message


@pytest.mark.parametrize("infile, words", [
    ([["f", "hls"]], "option 'f' needs an input container format"),
    ([["f", "concat"]], "needs an input container format"),
    ([["f", "image2"]], "needs an input container format"),
    ([["f", "lavfi"]], "needs an input container format"),
    ([["f", "tee"]], "needs an input container format"),
    ([["ss", "-5"]], "option 'ss' needs a time"),
    ([["r", "25; rm"]], "option 'r' needs a frame rate"),
])
def test_input_values_are_checked(infile, words):
    assert words in refused(one_pass(infile=infile))


@pytest.mark.parametrize("outfile, words", [
    ([["vf", "movie=/etc/passwd[m];[in][m]overlay"]], "single chain"),
    ([["vf", "movie=/etc/passwd"]], "filter 'movie' is not allowed"),
    ([["af", "amovie=/etc/passwd"]], "filter 'amovie' is not allowed"),
    ([["vf", "scale=640:-2;movie=x"]], "single chain"),
    ([["vf", "[in]scale=640:-2[out]"]], "single chain"),
    ([["vf", "drawtext=textfile=/etc/passwd"]], "filter 'drawtext' is not allowed"),
    ([["vf", "scale=640:-2,subtitles=/etc/passwd"]], "filter 'subtitles' is not allowed"),
    ([["vf", "rotate=PI/6"]], "filter 'rotate' is not allowed"),
    ([["vf", "testsrc"]], "filter 'testsrc' is not allowed"),
    ([["vf", "volume=2"]], "video filters allowed"),
    ([["af", "scale=640:-2"]], "audio filters allowed"),
    ([["vf", "scale=/w=/etc/passwd"]], "may not start with '/'"),
    ([["vf", "scale=640:/h=/tmp/h"]], "may not start with '/'"),
    ([["vf", "scale=w\\=1"]], "backslash"),
    ([["vf", "scale='640:-2"]], "unbalanced quote"),
    ([["vf", "scale='1;2'"]], "characters that are not allowed"),
    ([["vf", "sca''le=1:2"]], "is not a filter"),
    ([["vf", "scale=1:2,,hflip"]], "is not a filter"),
    ([["vf", "scale@x=1:2"]], "is not a filter"),
    ([["vf", "scale=a.b=1"]], "option name 'a.b' is not allowed"),
    ([["vf", "fps=%{n}"]], "characters that are not allowed"),
    ([["map", "1:v"]], "option 'map' needs a stream of input 0"),
    ([["map", "[out]"]], "option 'map' needs a stream of input 0"),
    ([["map", "-0:s"]], "option 'map' needs a stream of input 0"),
    ([["f", "hls"]], "option 'f' needs an output container format"),
    ([["f", "tee"]], "option 'f' needs an output container format"),
    ([["f", "image2"]], "option 'f' needs an output container format"),
    ([["movflags", "+faststart+use_metadata_tags"]], "flag 'use_metadata_tags' is not allowed"),
    ([["movflags", "faststart -y"]], "needs flags like +faststart"),
    ([["c:v", None]], "option 'c:v' needs a name"),
    ([["c:v", "-i"]], "option 'c:v' needs a name"),
    ([["c:v", "libx264 /tmp/out.mp4"]], "option 'c:v' needs a name"),
    ([["b:v", "lots"]], "option 'b:v' needs a bitrate"),
    ([["b:v", "\u0663\u0660\u0660k"]], "option 'b:v' needs a bitrate"),
    ([["an", "1"]], "option 'an' is a flag and takes no value"),
    ([["an", ""]], "value is empty"),
    ([["pass", "1"]], "option 'pass' is only for the passes of a two-pass job"),
    ([["threads", "-1"]], "option 'threads' needs a thread count"),
    ([["s", "640x480,concat"]], "option 's' needs a frame size"),
    ([["preset", "x" * 300]], "longer than 256 characters"),
    ([["preset", "fast\nslow"]], "control characters"),
    ([["preset", True]], "must be a string, a number or null"),
    ([["preset", ["fast"]]], "must be a string, a number or null"),
    ([["crf", float("nan")]], "finite number"),
    ([["crf", float("inf")]], "finite number"),
])
def test_output_values_are_checked(outfile, words):
    message = refused(one_pass(outfile))
    assert message.startswith("job_options.options[0].outfile_options: ")
    assert words in message


@pytest.mark.timeout(60)
@pytest.mark.parametrize("key, graph", [
    ("vf", "yadif,scale='640:trunc(ow/a/2)*2'"),
    ("vf", "scale=1280:-2,fps=30000/1001,format=yuv420p,setsar=1/1"),
    ("filter:v", "scale='min(160,iw)':-2,crop=w=100:h=80:x=0:y=0,hflip,transpose=1"),
    ("af", "aresample=48000,volume=0.5,highpass=f=200,lowpass=f=8000"),
    ("filter:a", "pan=stereo|FL=c0|FR=c0,atempo=1.5,aformat=sample_fmts=s16"),
])
def test_accepted_filter_chains_are_understood_by_real_ffmpeg(key, graph):
    validate_job_options(one_pass([[key, graph]]))
    source = "testsrc=d=0.2:s=320x240" if "v" in key else "sine=d=0.2"
    # lavfi is used here only to make a test input; clients can never ask for it.
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", source,
               f"-{key}", graph, "-f", "null", "-"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=50)
    assert finished.returncode == 0, finished.stderr


def test_null_muxer_only_in_the_first_of_two_passes():
    assert "'null' writes no output" in refused(one_pass([["f", "null"]]))
    job = {"nommer": "ffmpeg", "options": [{"outfile_options": [["f", "null"]]},
                                           {"outfile_options": [["f", "mp4"]]}]}
    validate_job_options(job)


@pytest.mark.parametrize("graph", ["crop=w='while(1,1)':h=10", "scale=w=WHILE (lt(0,1),1):h=-2",
                                   "crop=w=root(1,1):h=10", "pad=w=taylor(1,1):h=10"])
def test_looping_expression_functions_are_refused(graph):
    assert "looping expression function" in refused(one_pass([["vf", graph]]))


@pytest.mark.parametrize("outfile, words", [
    ([["s", "16000x16000"]], "max_frame_pixels"),
    ([["vf", "scale=16000:16000"]], "max_frame_pixels"),
    ([["vf", "scale=w=9000:h=9000"]], "max_frame_pixels"),
    ([["r", "100000"]], "max_frame_rate"),
    ([["vf", "fps=1000"]], "max_frame_rate"),
])
def test_output_frames_beyond_the_caps_are_refused(outfile, words):
    options = validate_job_options(one_pass(outfile))
    with pytest.raises(ValidationError, match=words):
        check_output_caps(options, 8192 * 4320, 240)


def test_usual_frames_are_within_the_caps():
    options = validate_job_options(one_pass([["s", "3840x2160"], ["r", "60000/1001"],
                                             ["vf", "scale=1920:-2,fps=ntsc"]]))
    check_output_caps(options, 8192 * 4320, 240)
