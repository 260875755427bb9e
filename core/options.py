"""Validation of a job's encoding options (the original's `job_options`).

Wire form, as the original media-nommer documented it:

    {"nommer": "media_nommer.ec2nommerd.nommers.ffmpeg.FFmpegNommer",
     "options": [{"infile_options": [[k, v], ...],
                  "outfile_options": [[k, v], ...],
                  "move_atom_to_front": true},      # one pass, or two
                 ...]}

Each pair becomes `-k v` on ffmpeg's command line (`v` null: a bare `-k`).

Options come from untrusted clients, and ffmpeg can be steered into
reading local files, opening network connections or writing extra outputs
(`-i`, `-filter_complex`, `movie=`, HLS or concat inputs, `-passlogfile`,
preset files...). So nothing is passed on that is not on an allowlist: each
option name maps to a check of its value, filter graphs may only chain
pure per-frame filters, and values are short, plain and cannot be mistaken
for another option or an output file.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable

from core.errors import ValidationError

FFMPEG_NOMMER = "media_nommer.ec2nommerd.nommers.ffmpeg.FFmpegNommer"
# The original's class path is what its clients send; "ffmpeg" is the short name.
KNOWN_NOMMERS = (FFMPEG_NOMMER, "ffmpeg")

MAX_PASSES = 2
MAX_OPTIONS_PER_LIST = 64
MAX_VALUE_CHARS = 256

_PASS_KEYS = ("infile_options", "outfile_options", "move_atom_to_front")
_JOB_OPTION_KEYS = ("nommer", "options")

# Container demuxers that read only the one input they are given. Formats
# that open other files or URLs (hls, dash, concat, image2, lavfi, tee,
# playlists, sdp/rtp, subtitles with includes) are left out on purpose.
INPUT_FORMATS = frozenset({
    "mov", "mp4", "m4a", "3gp", "matroska", "webm", "avi", "flv", "mpegts", "mpeg",
    "mp3", "aac", "flac", "wav", "ogg", "asf", "mxf", "h264", "hevc", "m4v", "dv",
})
OUTPUT_FORMATS = frozenset({
    "mp4", "mov", "webm", "matroska", "mkv", "ogg", "mp3", "adts", "flac", "wav",
    "flv", "mpegts", "avi", "null", "mjpeg",
})
MOVFLAGS = frozenset({
    "faststart", "frag_keyframe", "empty_moov", "default_base_moof",
    "separate_moof", "omit_tfhd_offset", "negative_cts_offsets",
})
# Filters that transform each frame or sample and take only numbers,
# expressions and names as arguments: none opens a file or a URL.
VIDEO_FILTERS = frozenset({
    "scale", "crop", "pad", "format", "setsar", "setdar", "transpose", "hflip",
    "vflip", "yadif", "bwdif", "fps",
})
AUDIO_FILTERS = frozenset({
    "aresample", "volume", "aformat", "atempo", "loudnorm", "pan", "highpass",
    "lowpass",
})

# ASCII: \d must not match other scripts' digits, which ffmpeg would not read.
_TIME = re.compile(r"\d{1,9}(\.\d{1,9})?(s|ms|us)?|(\d{1,9}:)?\d{1,2}:\d{1,2}(\.\d{1,9})?",
                   re.ASCII)
# A percentage of the source's duration: the encoder turns it into seconds.
_TIME_OR_PERCENT = re.compile(_TIME.pattern + r"|\d{1,2}(\.\d{1,3})?%", re.ASCII)
_SIGNED_TIME = re.compile(r"-?(" + _TIME.pattern + ")", re.ASCII)
_RATE = re.compile(r"\d{1,6}(\.\d{1,6})?|\d{1,6}/\d{1,6}|ntsc|pal|qntsc|qpal|sntsc|spal|film"
                   r"|ntsc-film", re.ASCII)
_BITRATE = re.compile(r"\d{1,9}(\.\d{1,6})?[kKmMgG]?", re.ASCII)
_INT = re.compile(r"\d{1,9}", re.ASCII)
_SIGNED_INT = re.compile(r"-?\d{1,10}", re.ASCII)
_NUMBER = re.compile(r"\d{1,9}(\.\d{1,6})?", re.ASCII)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)
_SIZE = re.compile(r"\d{1,5}x\d{1,5}|[a-z][a-z0-9]{1,15}", re.ASCII)
_ASPECT = re.compile(r"\d{1,5}(\.\d{1,6})?|\d{1,5}[:/]\d{1,5}", re.ASCII)
_THREADS = re.compile(r"\d{1,3}|auto", re.ASCII)
# Stream specifiers of the one input: "0", "0:1", "0:v", "0:a:0", "0:v?".
_MAP = re.compile(r"0(:[vVasdt](:\d{1,3})?|:\d{1,3})?\??", re.ASCII)
_MOVFLAG = re.compile(r"([+-]?)([a-z_]+)", re.ASCII)
_FILTER = re.compile(r"\s*([a-z0-9_]+)\s*(?:=(.*))?", re.DOTALL | re.ASCII)
# After quote removal: letters, digits and the operators of ffmpeg's
# expressions. No backslash (no escapes), no '[' ']' ';' (no labels, no
# second chain), no '%' or '{' (no text expansion).
_FILTER_ARGS = re.compile(r"[A-Za-z0-9_=:,.+\-*/()<>|^! ]*", re.ASCII)
_FILTER_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
# Expression functions that loop: while() spins as long as its condition
# holds (heartbeats would keep such a job alive for ever); root() and
# taylor() iterate too.
_LOOPING_FUNCTION = re.compile(r"\b(while|root|taylor)\s*\(", re.ASCII | re.IGNORECASE)

# A value check: (value or None for a bare flag, the pass's position) ->
# the value to store. Raises _Refused saying what was expected.
Check = Callable[[str | None, str], str | None]


class _Refused(Exception):
    """A value failed its check; the message says what was expected."""


def _pattern(regex: re.Pattern, what: str) -> Check:
    def check(value: str | None, position: str) -> str:
        if value is None or not regex.fullmatch(value):
            raise _Refused(f"needs {what}")
        return value
    return check


def _choice(names: frozenset[str], what: str) -> Check:
    def check(value: str | None, position: str) -> str:
        if value not in names:
            raise _Refused(f"needs {what}: one of {', '.join(sorted(names))}")
        return value
    return check


def _flag(value: str | None, position: str) -> None:
    # A value after a bare flag would become an extra output file.
    if value is not None:
        raise _Refused("is a flag and takes no value (use null)")
    return None


def _movflags(value: str | None, position: str) -> str:
    if value is None or not re.fullmatch(r"([+-]?[a-z_]+)+", value, re.ASCII):
        raise _Refused("needs flags like +faststart")
    for _sign, name in _MOVFLAG.findall(value):
        if name not in MOVFLAGS:
            raise _Refused(f"flag {name!r} is not allowed; allowed: {', '.join(sorted(MOVFLAGS))}")
    return value


def _output_format(value: str | None, position: str) -> str:
    value = _choice(OUTPUT_FORMATS, "an output container format")(value, position)
    # The null muxer writes nothing: only the first pass of two may use it.
    if value == "null" and position != "1":
        raise _Refused("'null' writes no output; it is only for the first pass of a "
                       "two-pass job")
    return value


def _pass_number(value: str | None, position: str) -> str:
    # The original's two-pass presets say which pass they are. The encoder
    # numbers the passes itself (with its own pass log), so only a value that
    # agrees is let through; in a one-pass job "-pass" would only spoil it.
    if not position:
        raise _Refused("is only for the passes of a two-pass job")
    if value != position:
        raise _Refused(f"must be {position!r}, the number of this pass")
    return value


def _split_filter_chain(graph: str) -> list[str]:
    """The filters of a single chain "a=x,b='y:z'", quotes kept. Raises _Refused."""
    if "\\" in graph:
        raise _Refused("filter graphs may not use backslash escapes")
    filters, current, quoted = [], [], False
    for char in graph:
        if char == "'":
            quoted = not quoted
        elif not quoted and char in ";[]":
            raise _Refused("only a single chain of filters is allowed (no ';' or [labels])")
        elif not quoted and char == ",":
            filters.append("".join(current))
            current = []
            continue
        current.append(char)
    if quoted:
        raise _Refused("has an unbalanced quote")
    filters.append("".join(current))
    return filters


def _check_filter_args(name: str, args: str) -> None:
    if not _FILTER_ARGS.fullmatch(args):
        raise _Refused(f"filter {name!r} has characters that are not allowed in its arguments")
    looping = _LOOPING_FUNCTION.search(args)
    if looping:
        raise _Refused(f"filter {name!r}: the looping expression function "
                       f"{looping.group(1).lower()}() is not allowed")
    for item in args.split(":"):
        key, sep, _value = item.partition("=")
        # ffmpeg reads an option's value from a file when its name starts
        # with '/' ("/text=path"); names are plain words here.
        if item.lstrip().startswith("/"):
            raise _Refused(f"filter {name!r}: an argument may not start with '/'")
        if sep and not _FILTER_KEY.fullmatch(key.strip()) and _looks_like_key(key):
            raise _Refused(f"filter {name!r}: option name {key.strip()!r} is not allowed")


def _looks_like_key(text: str) -> bool:
    # ffmpeg takes "text=..." as a named option only when "text" is made of
    # key characters; otherwise the whole item is a positional value (pan's
    # "stereo|FL=c0" stays a value).
    return bool(re.fullmatch(r"[A-Za-z0-9_./-]+", text.strip(), re.ASCII))


def _filters(allowed: frozenset[str], kind: str) -> Check:
    def check(value: str | None, position: str) -> str:
        if not value:
            raise _Refused(f"needs a chain of {kind} filters")
        for text in _split_filter_chain(value):
            match = _FILTER.fullmatch(text)
            if not match:
                raise _Refused(f"{text.strip()[:40]!r} is not a filter like name=arguments")
            name, args = match.group(1), match.group(2)
            if name not in allowed:
                raise _Refused(f"filter {name!r} is not allowed; {kind} filters allowed: "
                               f"{', '.join(sorted(allowed))}")
            if args is not None:
                _check_filter_args(name, args.replace("'", ""))
        return value
    return check


_time = _pattern(_TIME, "a time like 12.5 or 00:01:02.5")
_rate = _pattern(_RATE, "a frame rate like 25 or 30000/1001")
_bitrate = _pattern(_BITRATE, "a bitrate like 800k or 2M")
_int = _pattern(_INT, "a whole number")
_signed_int = _pattern(_SIGNED_INT, "a whole number")
_number = _pattern(_NUMBER, "a number")
_name = _pattern(_NAME, "a name like libx264")
_video_filters = _filters(VIDEO_FILTERS, "video")
_audio_filters = _filters(AUDIO_FILTERS, "audio")

INPUT_OPTIONS: dict[str, Check] = {
    "ss": _pattern(_TIME_OR_PERCENT, "a time like 12.5 or 00:01:02.5, or a percentage "
                                     "of the source's duration like 10%"),
    "t": _time, "to": _time,
    "itsoffset": _pattern(_SIGNED_TIME, "a time like -0.5 or 2"),
    "r": _rate,
    "f": _choice(INPUT_FORMATS, "an input container format"),
}

OUTPUT_OPTIONS: dict[str, Check] = {
    **{key: _name for key in ("c", "codec", "c:v", "c:a", "codec:v", "codec:a",
                              "vcodec", "acodec")},
    **{key: _bitrate for key in ("b", "b:v", "b:a", "ab", "vb", "maxrate", "minrate",
                                 "bufsize")},
    "crf": _number, "qp": _int,
    **{key: _number for key in ("q", "q:v", "q:a", "qscale", "qscale:v", "qscale:a")},
    **{key: _name for key in ("preset", "tune", "profile:v", "profile:a", "vprofile",
                              "level", "pix_fmt")},
    "r": _rate,
    "s": _pattern(_SIZE, "a frame size like 1280x720"),
    "aspect": _pattern(_ASPECT, "an aspect ratio like 16:9"),
    "ar": _int, "ac": _int, "g": _int, "keyint_min": _int, "bf": _signed_int,
    "sc_threshold": _signed_int, "async": _int,
    "threads": _pattern(_THREADS, "a thread count or auto"),
    "an": _flag, "vn": _flag, "sn": _flag, "dn": _flag,
    "t": _time, "ss": _time, "to": _time,
    "movflags": _movflags,
    "f": _output_format,
    "map": _pattern(_MAP, "a stream of input 0 like 0:v or 0:a:0"),
    "vf": _video_filters, "filter:v": _video_filters,
    "af": _audio_filters, "filter:a": _audio_filters,
    "pass": _pass_number,
    "frames:v": _int,
    # libvpx (VP8/VP9) speed settings.
    "deadline": _choice(frozenset({"good", "best", "realtime"}), "a libvpx deadline"),
    "cpu-used": _signed_int, "row-mt": _int,
}


def _plain_value(value: object, where: str, key: str) -> str | None:
    """`value` as the string ffmpeg will get (None for a bare flag)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValidationError(f"{where}: option {key!r} value must be a string, a number or null")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(f"{where}: option {key!r} value must be a finite number")
        return repr(value) if value != int(value) else str(int(value))
    if not isinstance(value, str):
        raise ValidationError(f"{where}: option {key!r} value must be a string, a number or null")
    if not value:
        raise ValidationError(f"{where}: option {key!r} value is empty (use null for a flag)")
    if len(value) > MAX_VALUE_CHARS:
        raise ValidationError(f"{where}: option {key!r} value is longer than "
                              f"{MAX_VALUE_CHARS} characters")
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise ValidationError(f"{where}: option {key!r} value contains control characters")
    return value


def _option_key(raw: object, where: str) -> str:
    if not isinstance(raw, str) or not raw.strip("-"):
        raise ValidationError(f"{where}: an option name must be a non-empty string")
    # One leading dash is optional, as ffmpeg users write either form.
    return raw[1:] if raw.startswith("-") else raw


def _validate_pairs(pairs: object, where: str, allowed: dict[str, Check],
                    position: str) -> list[list]:
    if pairs is None:
        return []
    if not isinstance(pairs, list):
        raise ValidationError(f"{where} must be a list of [option, value] pairs")
    if len(pairs) > MAX_OPTIONS_PER_LIST:
        raise ValidationError(f"{where} has more than {MAX_OPTIONS_PER_LIST} options")
    normalized = []
    for pair in pairs:
        if not isinstance(pair, list) or len(pair) != 2:
            raise ValidationError(f"{where} must be a list of [option, value] pairs")
        key = _option_key(pair[0], where)
        check = allowed.get(key)
        if check is None:
            raise ValidationError(f"{where}: option {key[:40]!r} is not allowed")
        value = _plain_value(pair[1], where, key)
        try:
            value = check(value, position)
        except _Refused as refusal:
            raise ValidationError(f"{where}: option {key!r} {refusal}") from None
        normalized.append([key, value])
    return normalized


def _validate_pass(encoding_pass: object, where: str, position: str) -> dict:
    """One pass, normalized. `position` is "1" or "2" in a two-pass job, else ""."""
    if not isinstance(encoding_pass, dict):
        raise ValidationError(f"{where} must be an object with infile_options, "
                              "outfile_options and move_atom_to_front")
    unknown = sorted(set(encoding_pass) - set(_PASS_KEYS))
    if unknown:
        raise ValidationError(f"{where}: unknown key {unknown[0][:40]!r}; "
                              f"known: {', '.join(_PASS_KEYS)}")
    move = encoding_pass.get("move_atom_to_front", False)
    if move is None:
        move = False
    if not isinstance(move, bool):
        raise ValidationError(f"{where}.move_atom_to_front must be true or false")
    return {
        "infile_options": _validate_pairs(encoding_pass.get("infile_options"),
                                          f"{where}.infile_options", INPUT_OPTIONS, position),
        "outfile_options": _validate_pairs(encoding_pass.get("outfile_options"),
                                           f"{where}.outfile_options", OUTPUT_OPTIONS, position),
        "move_atom_to_front": move,
    }


def validate_job_options(job_options: object, field: str = "job_options") -> dict:
    """The normalized job options, as stored on the job.

    Normalized means the original's wire form with option names without
    their leading dash, values as strings (numbers converted) or None for a
    flag, every pass with all three keys, and `nommer` kept as sent.
    Raises ValidationError (code BADINPUT) whose message names the place,
    e.g. "job_options.options[1].outfile_options: option 'filter_complex'
    is not allowed". Pass indexes count from 0.
    """
    if not isinstance(job_options, dict) or not job_options:
        raise ValidationError(f"{field} is required and must be an object with "
                              "'nommer' and 'options'")
    unknown = sorted(set(job_options) - set(_JOB_OPTION_KEYS))
    if unknown:
        raise ValidationError(f"{field}: unknown key {unknown[0][:40]!r}; "
                              f"known: {', '.join(_JOB_OPTION_KEYS)}")
    nommer = job_options.get("nommer")
    if not isinstance(nommer, str) or not nommer:
        raise ValidationError(f"{field}.nommer is required; known nommers: "
                              f"{', '.join(KNOWN_NOMMERS)}")
    if nommer not in KNOWN_NOMMERS:
        raise ValidationError(f"{field}.nommer {nommer[:80]!r} is not known; known nommers: "
                              f"{', '.join(KNOWN_NOMMERS)}")
    passes = job_options.get("options")
    if not isinstance(passes, list) or not passes:
        raise ValidationError(f"{field}.options is required: a list of 1 or "
                              f"{MAX_PASSES} encoding passes")
    if len(passes) > MAX_PASSES:
        raise ValidationError(f"{field}.options has {len(passes)} passes; at most "
                              f"{MAX_PASSES} are allowed")
    return {
        "nommer": nommer,
        "options": [_validate_pass(encoding_pass, f"{field}.options[{index}]",
                                   str(index + 1) if len(passes) == MAX_PASSES else "")
                    for index, encoding_pass in enumerate(passes)],
    }


def _frame_pixels(size: str) -> int | None:
    width, sep, height = size.partition("x")
    return int(width) * int(height) if sep and width.isdigit() and height.isdigit() else None


def _frame_rate(rate: str) -> float | None:
    number, sep, per = rate.partition("/")
    try:
        return float(number) / float(per) if sep else float(number)
    except (ValueError, ZeroDivisionError):
        return None  # a name (ntsc, pal, film ...): a broadcast rate


_SCALE_SIZE = re.compile(r"(?:^|[=:])(?:w=|width=)?(\d{1,9})[:x](?:h=|height=)?(\d{1,9})(?::|$)",
                         re.ASCII)
_FPS = re.compile(r"(?:^|:)(?:fps=)?(\d{1,9}(?:\.\d+)?(?:/\d{1,9})?)(?::|$)", re.ASCII)


def check_output_caps(job_options: dict, max_frame_pixels: int, max_frame_rate: float,
                      field: str = "job_options") -> None:
    """Refuse output frames larger than `max_frame_pixels` (width x height) or
    faster than `max_frame_rate`, from -s, -r, and scale/fps filters with
    literal numbers. `job_options` is validated already. Raises ValidationError."""
    for index, encoding_pass in enumerate(job_options["options"]):
        where = f"{field}.options[{index}].outfile_options"
        sizes = []
        rates = [_frame_rate(value) for key, value in encoding_pass["infile_options"]
                 if key == "r"]
        for key, value in encoding_pass["outfile_options"]:
            if key == "s":
                sizes.append(_frame_pixels(value))
            elif key == "r":
                rates.append(_frame_rate(value))
            elif key in ("vf", "filter:v"):
                for text in _split_filter_chain(value.replace("'", "")):
                    name, _, args = text.strip().partition("=")
                    if name == "scale" and (found := _SCALE_SIZE.search(args)):
                        sizes.append(int(found[1]) * int(found[2]))
                    elif name == "fps" and (found := _FPS.search(args)):
                        rates.append(_frame_rate(found[1]))
        if any(pixels and pixels > max_frame_pixels for pixels in sizes):
            raise ValidationError(f"{where}: the output frame is larger than "
                                  f"{max_frame_pixels} pixels (setting max_frame_pixels)")
        if any(rate and rate > max_frame_rate for rate in rates):
            raise ValidationError(f"{where}: the output frame rate is above "
                                  f"{max_frame_rate:g} per second (setting max_frame_rate)")
