"""A job's outputs as a submit asks for them: checked and stored in one form.

A submit names one output as the original did (`dest_path` and
`job_options`), or several:

    "outputs": [{"destination": "file:///.../a-720p.mp4", "job_options": {"preset": "mp4-720p"}},
                {"destination": "s3://bucket/show/", "job_options": {"preset": "hls"}}]

A preset may also be named beside the destination ("preset": "mp4-720p",
in an output or beside dest_path), with job_options then holding only its
overrides.

Each output is checked exactly as a single one is (the allowlist, the frame
caps, the destination), and a refusal names it ("outputs[1].destination:
..."). The original single-output form of a plain file is stored as it
always was; everything else is stored as

    {"nommer": FFMPEG_NOMMER,
     "outputs": [{"destination": uri, "kind": "file", "options": [pass, ...]},
                 {"destination": prefix, "kind": "hls", "hls": {...}}]}

so that the encoder runs the one-pass file outputs and the HLS ladders from
one decode of the source (nommerd.outputs).

An `hls` output (the preset `hls`, or "kind": "hls") writes an adaptive
ladder under a destination prefix ending in '/': one H.264 rendition per
rung (never above the source's height), one shared AAC audio rendition,
segments of `segment_s` seconds (fMP4 by default, TS with
"segment_type": "ts") and a master playlist; with "dash": true also a DASH
manifest of the same renditions. A destination may name the
master playlist instead (".../show/main.m3u8"): the ladder goes under its
folder, the master playlist by that name. A sprite's destination may name
its track (".../thumbs.vtt": sheets thumbs_000.jpg, ... beside it).
"""
from __future__ import annotations

import re

from core import uris
from core.errors import ValidationError
from core.options import FFMPEG_NOMMER, KNOWN_NOMMERS, check_output_caps
from core.presets import catalogue, options_to_run
from core.settings import Settings

KINDS = ("file", "hls", "sprite")
_OUTPUT_KEYS = ("destination", "job_options", "kind", "preset")

HLS_PRESET = "hls"
SPRITE_PRESET = "sprite"
HLS_MASTER = "master.m3u8"
DASH_MANIFEST = "manifest.mpd"
SPRITE_BASE = "sprite"
MIN_SPRITE_INTERVAL_S, MAX_SPRITE_INTERVAL_S = 0.5, 3600
DEFAULT_LADDER = (360, 720, 1080)
MAX_RUNGS = 6
MIN_HEIGHT, MAX_HEIGHT = 144, 4320
DEFAULT_SEGMENT_S = 6
MIN_SEGMENT_S, MAX_SEGMENT_S = 1, 30
SEGMENT_TYPES = ("fmp4", "ts")
HLS_DEFAULTS = {"segment_s": DEFAULT_SEGMENT_S, "segment_type": "fmp4",
                "audio_bitrate": "128k", "encoder_preset": "veryfast", "dash": False}
_HLS_KEYS = ("preset", "nommer", "ladder", *HLS_DEFAULTS)
_BITRATE = re.compile(r"\d{1,6}[kKmM]?", re.ASCII)
# What a destination may name inside its folder: the master playlist of an
# hls output, the track of a sprite (its sheets are named after it).
_NAMED_SUFFIX = {HLS_PRESET: ".m3u8", SPRITE_PRESET: ".vtt"}
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", re.ASCII)
_ENCODER_PRESET = frozenset({"ultrafast", "superfast", "veryfast", "faster", "fast",
                             "medium", "slow", "slower", "veryslow"})
# One-pass outputs share the source's input: of its input options only these
# can be given to one output alone (as output options, frame-accurate).
PER_OUTPUT_INPUT_OPTIONS = ("ss", "t", "to")


def hls_listing() -> dict:
    """The hls preset as GET /presets shows it."""
    meanings = {
        "ladder": "rendition heights (even, 144-4320, at most 6), or {height, video_bitrate}; "
                  "rungs taller than the source are left out",
        "segment_s": "segment target in seconds (1-30); keyframes aligned across renditions",
        "segment_type": "fmp4 (CMAF init.mp4 + .m4s segments) or ts",
        "audio_bitrate": "the one AAC rendition all video renditions share",
        "encoder_preset": "the x264 speed of every rendition",
        "dash": "also a DASH manifest (manifest.mpd) of the same renditions, copied into "
                "segments of its own under dash/ (fmp4 only)",
    }
    defaults = {"ladder": list(DEFAULT_LADDER), **HLS_DEFAULTS}
    return {"name": HLS_PRESET,
            "description": "HLS ladder under a destination prefix ending in '/': H.264 "
                           "renditions never above the source's height, one shared AAC "
                           "rendition, aligned segments, a master playlist",
            "extension": "m3u8", "container": "hls", "video": "h264", "audio": "aac",
            "overrides": {key: {"default": defaults[key], "meaning": meaning}
                          for key, meaning in meanings.items()}}


def sprite_listing() -> dict:
    """The sprite preset as GET /presets shows it."""
    return {"name": SPRITE_PRESET,
            "description": "Sprite sheets (JPEG, one tile every interval_s) with a WebVTT "
                           "thumbnail track for player scrubbing, under a destination prefix "
                           "ending in '/'",
            "extension": "vtt", "container": "image2", "video": "mjpeg", "audio": None,
            "overrides": {"interval_s": {
                "default": None, "meaning": "seconds between tiles (0.5-3600); default: the "
                                            "setting sprite_interval_s"}}}


def default_video_bitrate(height: int) -> str:
    """A rung's default H.264 bitrate: 5000k at 1080 lines, following
    height^1.5 (2700k at 720, 950k at 360), in steps of 50k."""
    return f"{max(100, round(5000 * (height / 1080) ** 1.5 / 50) * 50)}k"


def master_name(spec: dict) -> str:
    """An hls output's master playlist file name: the one its destination
    named, else HLS_MASTER."""
    return spec.get("master") or HLS_MASTER


def dash_manifest_name(spec: dict) -> str:
    """An hls output's DASH manifest file name: beside a named master
    playlist, its name with .mpd; else DASH_MANIFEST."""
    master = spec.get("master")
    return master[:-len(".m3u8")] + ".mpd" if master else DASH_MANIFEST


def sprite_track_name(spec: dict) -> str:
    """A sprite output's base name (its track is <base>.vtt, its sheets
    <base>.jpg or <base>_000.jpg, ...): the one its destination named, else
    SPRITE_BASE."""
    return spec.get("name") or SPRITE_BASE


def is_hls_request(job_options: object) -> bool:
    return _prefix_kind(job_options) == HLS_PRESET


def _prefix_kind(job_options: object) -> str | None:
    """"hls" or "sprite" when `job_options` names that preset (an output of
    several files under a prefix), else None."""
    if isinstance(job_options, dict) and job_options.get("preset") in (HLS_PRESET,
                                                                       SPRITE_PRESET):
        return job_options["preset"]
    return None


def is_several(options: dict) -> bool:
    """True for options stored in the outputs form (above)."""
    return isinstance(options, dict) and "outputs" in options


def options_for_submit(body: dict, settings: Settings) -> tuple[str, dict]:
    """(destination, options to store) for a submit body; `destination` is the
    job's own (the first output's when there are several).

    Raises ValidationError naming the field.
    """
    if body.get("outputs") is not None:
        for key in ("dest_path", "job_options", "preset"):
            if body.get(key) is not None:
                raise ValidationError(f"{key}: give either dest_path and job_options "
                                      "(or preset), or outputs, not both")
        outputs = _checked_outputs(body["outputs"], settings)
        return requested_uri(outputs[0]), {"nommer": FFMPEG_NOMMER, "outputs": outputs}
    sent = sent_options(body)
    if _prefix_kind(sent):
        output = _checked_output({"destination": body.get("dest_path"), "job_options": sent},
                                 settings, "dest_path", "job_options")
        return requested_uri(output), {"nommer": FFMPEG_NOMMER, "outputs": [output]}
    destination = uris.check_destination(body.get("dest_path"), settings)
    options = options_to_run(sent)
    check_output_caps(options, settings.max_frame_pixels, settings.max_frame_rate)
    return destination, options


def sent_options(body: dict) -> object:
    """What a submit body asks of its outputs, as the job keeps it
    (sent_options): its outputs, or its job_options with a preset named
    beside them joined in."""
    if body.get("outputs") is not None:
        return {"outputs": body["outputs"]}
    return _joined_preset(body, "preset", "job_options")


def _joined_preset(output: dict, preset_field: str, options_field: str) -> object:
    """The job_options of an output (or submit body) that may name its preset
    beside them: {"preset": "mp4-720p", "job_options": {"video_bitrate": ...}}
    reads as job_options {"preset": "mp4-720p", "video_bitrate": ...}."""
    preset, job_options = output.get("preset"), output.get("job_options")
    if preset is None:
        return job_options
    if not isinstance(preset, str) or not preset:
        raise ValidationError(f"{preset_field} must be the name of a preset (GET /presets)")
    known = sorted([*catalogue()["presets"], HLS_PRESET, SPRITE_PRESET])
    if preset not in known:
        raise ValidationError(f"{preset_field} {preset[:40]!r} is not known; known presets: "
                              f"{', '.join(known)} (GET /presets lists them)")
    if job_options is None:
        return {"preset": preset}
    if not isinstance(job_options, dict) or job_options.get("preset", preset) != preset:
        raise ValidationError(f"{options_field}: beside {preset_field}, job_options holds "
                              "only that preset's overrides, as an object")
    return {**job_options, "preset": preset}


def requested_uri(output: dict) -> str:
    """The URI a checked output was asked for: its destination, or for an
    output that names its master playlist or track, that file."""
    spec = output.get(output["kind"]) or {}
    if output["kind"] == HLS_PRESET and spec.get("master"):
        return output["destination"] + master_name(spec)
    if output["kind"] == SPRITE_PRESET and spec.get("name"):
        return output["destination"] + sprite_track_name(spec) + _NAMED_SUFFIX[SPRITE_PRESET]
    return output["destination"]


def _checked_outputs(outputs: object, settings: Settings) -> list[dict]:
    limit = settings.max_outputs_per_job
    if not isinstance(outputs, list) or not outputs:
        raise ValidationError(f"outputs must be a list of 1 to {limit} objects with "
                              "destination and job_options")
    if len(outputs) > limit:
        raise ValidationError(f"outputs has {len(outputs)} entries; at most {limit} are allowed "
                              "(setting max_outputs_per_job)")
    checked = []
    for index, output in enumerate(outputs):
        where = f"outputs[{index}]"
        if not isinstance(output, dict):
            raise ValidationError(f"{where} must be an object with destination and job_options")
        unknown = sorted(set(output) - set(_OUTPUT_KEYS))
        if unknown:
            raise ValidationError(f"{where}: unknown key {str(unknown[0])[:40]!r}; known: "
                                  f"{', '.join(_OUTPUT_KEYS)}")
        one = _checked_output({**output, "job_options": _joined_preset(
                                   output, f"{where}.preset", f"{where}.job_options")},
                              settings, f"{where}.destination", f"{where}.job_options")
        if one["kind"] == "file" and len(one["options"]) == 1:
            _check_shared_input(one["options"][0], f"{where}.job_options.options[0]")
        checked.append(one)
    _check_apart(checked)
    return checked


def _checked_output(output: dict, settings: Settings, dest_field: str,
                    options_field: str) -> dict:
    kind = output.get("kind")
    sent = output.get("job_options")
    if kind is None:
        kind = _prefix_kind(sent) or "file"
    if kind not in KINDS:
        raise ValidationError(f"{dest_field.rsplit('.', 1)[0]}.kind {str(kind)[:40]!r} is not "
                              f"known; known kinds: {', '.join(KINDS)}")
    if kind in (HLS_PRESET, SPRITE_PRESET):
        if sent is not None and _prefix_kind(sent) != kind:
            raise ValidationError(f"{options_field}: this {kind} output takes the preset "
                                  f"{kind!r} and its overrides")
        prefix, name = _prefix_and_name(output.get("destination"), kind, dest_field)
        destination = uris.check_destination_prefix(prefix, settings, dest_field, kind)
        spec = (hls_spec if kind == HLS_PRESET else sprite_spec)(sent or {}, settings,
                                                                options_field)
        if name is not None:
            suffix = _NAMED_SUFFIX[kind]
            spec.update({"master": name} if kind == HLS_PRESET
                        else {"name": name[:-len(suffix)]})
        return {"destination": destination, "kind": kind, kind: spec}
    destination = uris.check_destination(output.get("destination"), settings, dest_field)
    options = options_to_run(sent, options_field)
    check_output_caps(options, settings.max_frame_pixels, settings.max_frame_rate,
                      options_field)
    return {"destination": destination, "kind": kind, "options": options["options"]}


def _prefix_and_name(destination: object, kind: str, field: str) -> tuple[object, str | None]:
    """(folder or prefix, file name) of a destination naming the master
    playlist or track of a `kind` output (".../show/main.m3u8"); the
    destination itself and None when it names a folder or prefix."""
    if not isinstance(destination, str) or destination.endswith("/") \
            or "?" in destination or "#" in destination:
        return destination, None
    head, slash, name = destination.rpartition("/")
    suffix = _NAMED_SUFFIX[kind]
    if not slash or not name.lower().endswith(suffix) or head.endswith("/"):
        return destination, None
    if not _FILE_NAME.fullmatch(name) or len(name) == len(suffix):
        raise ValidationError(f"{field}: the {kind} output's {suffix} file name may hold only "
                              "letters, digits, '.', '_' and '-', starting with a letter or "
                              "digit")
    return head + "/", name


def _check_shared_input(encoding_pass: dict, where: str) -> None:
    for key, _value in encoding_pass["infile_options"]:
        if key not in PER_OUTPUT_INPUT_OPTIONS:
            raise ValidationError(
                f"{where}.infile_options: option {key!r} cannot be given to one output of "
                f"several (they share one input); only {', '.join(PER_OUTPUT_INPUT_OPTIONS)} can")


def _check_apart(outputs: list[dict]) -> None:
    claims = [_claims(output) for output in outputs]
    for index, mine in enumerate(claims):
        for other, theirs in enumerate(claims[:index]):
            if any(_overlap(a, b) for a in mine for b in theirs):
                raise ValidationError(f"outputs[{index}].destination: overlaps "
                                      f"outputs[{other}].destination")


def _claims(output: dict) -> list[tuple[str, str]]:
    """The URIs an output writes, as (uri, how): "file" the URI itself,
    "prefix" every URI starting with it, "folders" every URI in a folder
    under it. An output that names its master playlist or track leaves the
    rest of its folder's files to others: a poster beside a ladder is fine."""
    destination, kind = output["destination"], output["kind"]
    spec = output.get(kind) or {}
    if kind == HLS_PRESET and spec.get("master"):
        # The renditions' folders are named by their heights, which the
        # source decides; so the ladder claims every folder under its own.
        claims = [(destination + master_name(spec), "file"), (destination, "folders")]
        if spec.get("dash"):
            claims.append((destination + dash_manifest_name(spec), "file"))
        return claims
    if kind == SPRITE_PRESET and spec.get("name"):
        base = destination + sprite_track_name(spec)
        return [(base + ".vtt", "file"), (base + ".jpg", "file"), (base + "_", "prefix")]
    return [(destination, "prefix" if destination.endswith("/") else "file")]


def _overlap(a: tuple[str, str], b: tuple[str, str]) -> bool:
    (a_uri, a_how), (b_uri, b_how) = sorted([a, b], key=lambda claim: claim[1])
    # After sorting, a_how <= b_how in "file" < "folders" < "prefix".
    if a_how == "file":
        if b_how == "file":
            return a_uri == b_uri
        if b_how == "prefix":
            return a_uri.startswith(b_uri)
        return a_uri.startswith(b_uri) and "/" in a_uri[len(b_uri):]
    if a_how == "folders" and b_how == "prefix":
        return a_uri.startswith(b_uri) or (b_uri.startswith(a_uri)
                                           and "/" in b_uri[len(a_uri):])
    return a_uri.startswith(b_uri) or b_uri.startswith(a_uri)


def sprite_spec(request: dict, settings: Settings, field: str) -> dict:
    """The stored form of a sprite output's request: {"interval_s": seconds
    between tiles, or None for the setting sprite_interval_s}."""
    unknown = sorted(set(request) - {"preset", "nommer", "interval_s"})
    if unknown:
        raise ValidationError(f"{field}: preset 'sprite' takes no override "
                              f"{str(unknown[0])[:40]!r}; it takes: interval_s")
    interval_s = request.get("interval_s")
    if interval_s is not None and (
            isinstance(interval_s, bool) or not isinstance(interval_s, (int, float))
            or not MIN_SPRITE_INTERVAL_S <= interval_s <= MAX_SPRITE_INTERVAL_S):
        raise ValidationError(f"{field}.interval_s must be a number of seconds from "
                              f"{MIN_SPRITE_INTERVAL_S:g} to {MAX_SPRITE_INTERVAL_S}")
    return {"interval_s": None if interval_s is None else float(interval_s)}


def hls_spec(request: dict, settings: Settings, field: str) -> dict:
    """The stored form of an hls output's request: {"ladder": [{"height",
    "video_bitrate"}, ...], "segment_s", "segment_type", "audio_bitrate",
    "encoder_preset"}. Raises ValidationError naming the field."""
    unknown = sorted(set(request) - set(_HLS_KEYS))
    if unknown:
        raise ValidationError(f"{field}: preset 'hls' takes no override {str(unknown[0])[:40]!r}; "
                              f"it takes: ladder, {', '.join(HLS_DEFAULTS)}")
    if request.get("nommer", FFMPEG_NOMMER) not in KNOWN_NOMMERS:
        raise ValidationError(f"{field}.nommer is not known; known nommers: "
                              f"{', '.join(KNOWN_NOMMERS)}")
    spec = dict(HLS_DEFAULTS)
    segment_s = request.get("segment_s", DEFAULT_SEGMENT_S)
    if isinstance(segment_s, bool) or not isinstance(segment_s, int) \
            or not MIN_SEGMENT_S <= segment_s <= MAX_SEGMENT_S:
        raise ValidationError(f"{field}.segment_s must be a whole number of seconds from "
                              f"{MIN_SEGMENT_S} to {MAX_SEGMENT_S}")
    spec["segment_s"] = segment_s
    segment_type = request.get("segment_type", "fmp4")
    if segment_type not in SEGMENT_TYPES:
        raise ValidationError(f"{field}.segment_type must be one of {', '.join(SEGMENT_TYPES)}")
    spec["segment_type"] = segment_type
    spec["audio_bitrate"] = _bitrate(request.get("audio_bitrate", "128k"),
                                     f"{field}.audio_bitrate")
    encoder_preset = request.get("encoder_preset", "veryfast")
    if encoder_preset not in _ENCODER_PRESET:
        raise ValidationError(f"{field}.encoder_preset must be an x264 preset: "
                              f"{', '.join(sorted(_ENCODER_PRESET))}")
    spec["encoder_preset"] = encoder_preset
    dash = request.get("dash", False)
    if not isinstance(dash, bool):
        raise ValidationError(f"{field}.dash must be true or false")
    if dash and segment_type != "fmp4":
        raise ValidationError(f"{field}.dash needs segment_type fmp4: DASH is packaged from "
                              "the fMP4 renditions")
    spec["dash"] = dash
    spec["ladder"] = _ladder(request.get("ladder", list(DEFAULT_LADDER)), settings,
                             f"{field}.ladder")
    return spec


def _bitrate(value: object, field: str) -> str:
    if not isinstance(value, str) or not _BITRATE.fullmatch(value):
        raise ValidationError(f"{field} must be a bitrate like 1500k or 2M")
    return value


def _ladder(ladder: object, settings: Settings, field: str) -> list[dict]:
    if not isinstance(ladder, list) or not 1 <= len(ladder) <= MAX_RUNGS:
        raise ValidationError(f"{field} must be a list of 1 to {MAX_RUNGS} heights like "
                              "[360, 720, 1080] or objects {\"height\": 720, "
                              "\"video_bitrate\": \"2500k\"}")
    rungs = []
    for index, rung in enumerate(ladder):
        where = f"{field}[{index}]"
        if isinstance(rung, dict):
            unknown = sorted(set(rung) - {"height", "video_bitrate"})
            if unknown:
                raise ValidationError(f"{where}: unknown key {str(unknown[0])[:40]!r}; "
                                      "known: height, video_bitrate")
            height = rung.get("height")
        else:
            height, rung = rung, {}
        if isinstance(height, bool) or not isinstance(height, int) \
                or not MIN_HEIGHT <= height <= MAX_HEIGHT or height % 2:
            raise ValidationError(f"{where}: the height must be an even whole number of pixels "
                                  f"from {MIN_HEIGHT} to {MAX_HEIGHT}")
        # The width follows the source's shape; 16:9 is what caps are judged on.
        if height * height * 16 // 9 > settings.max_frame_pixels:
            raise ValidationError(f"{where}: the output frame is larger than "
                                  f"{settings.max_frame_pixels} pixels (setting max_frame_pixels)")
        bitrate = rung.get("video_bitrate", default_video_bitrate(height))
        rungs.append({"height": height,
                      "video_bitrate": _bitrate(bitrate, f"{where}.video_bitrate")})
    heights = [rung["height"] for rung in rungs]
    if len(set(heights)) != len(heights):
        raise ValidationError(f"{field}: each height may appear once")
    return sorted(rungs, key=lambda rung: rung["height"])
