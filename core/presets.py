"""What a submitted job runs: a catalogue preset, or the client's own options.

A client may name a preset instead of spelling ffmpeg options:

    "job_options": {"preset": "mp4-720p", "video_bitrate": "1500k"}

The catalogue is data (core/presets.json): each preset's passes in the
original's wire form, with `{name}` placeholders filled from the preset's
defaults and the few documented overrides the client gives. The expanded
options pass the same allowlist (core.options) as a client's own, so a
preset can do nothing a client could not.

Options spelled by the client go through the translation of 2011-era
options (core.legacy_options) first, then the allowlist.
"""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from core.errors import ValidationError
from core.legacy_options import translate_job_options
from core.options import FFMPEG_NOMMER, KNOWN_NOMMERS, validate_job_options

CATALOGUE_PATH = Path(__file__).with_name("presets.json")

_WIDTH = re.compile(r"\d{2,4}", re.ASCII)
MIN_WIDTH, MAX_WIDTH = 16, 7680
_BITRATE = re.compile(r"\d{1,6}[kKmM]?", re.ASCII)
_ENCODER_PRESET = re.compile(r"[a-z]{1,12}|\d{1,2}", re.ASCII)
_SEEK = re.compile(r"\d{1,6}(\.\d{1,3})?|\d{1,2}(\.\d{1,3})?%", re.ASCII)
_CLOCK = re.compile(r"(\d{1,2}:)?[0-5]?\d:[0-5]\d(\.\d{1,3})?", re.ASCII)
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def _width(value: object) -> str:
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not _WIDTH.fullmatch(text) \
            or not MIN_WIDTH <= int(text) <= MAX_WIDTH:
        raise ValueError(f"must be a whole number of pixels from {MIN_WIDTH} to {MAX_WIDTH}")
    return text


def seek_time(value: object) -> str:
    """Where to seek, as the presets take it: seconds ("12.5"), a percentage
    of the source ("10%"); a JSON number is seconds, and [HH:]MM:SS[.mmm]
    is turned into seconds. Raises ValueError."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 10 ** 6:
        return f"{value:.3f}".rstrip("0").rstrip(".")
    if isinstance(value, str) and _CLOCK.fullmatch(value):
        *hours, minutes, seconds = value.split(":")
        total = int(hours[0]) * 3600 if hours else 0
        return seek_time(total + int(minutes) * 60 + float(seconds))
    if not isinstance(value, str) or not _SEEK.fullmatch(value):
        raise ValueError("must be a time in seconds like 12.5, a clock time like 00:01:05, "
                         "or a percentage like 10%")
    return value


def _pattern(regex: re.Pattern, what: str, whole_numbers: bool = False):
    """A check that takes text matching `regex` (and with `whole_numbers`,
    a JSON whole number as its digits)."""
    def check(value: object) -> str:
        if whole_numbers and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not regex.fullmatch(value):
            raise ValueError(f"must be {what}")
        return value
    return check


# The overrides a client may give, each with its check (ValueError says
# what was expected). Which ones a preset takes: those in its defaults.
OVERRIDE_CHECKS = {
    "width": _width,
    "video_bitrate": _pattern(_BITRATE, "a bitrate like 1500k or 2M"),
    "audio_bitrate": _pattern(_BITRATE, "a bitrate like 96k"),
    "encoder_preset": _pattern(_ENCODER_PRESET, "an encoder speed like veryfast or 8",
                               whole_numbers=True),
    "time": seek_time,
}


@functools.cache
def catalogue() -> dict:
    """The catalogue file, parsed: {"overrides": {name: meaning}, "presets": {name: preset}}."""
    return json.loads(CATALOGUE_PATH.read_text(encoding="utf-8"))


def listing() -> list[dict]:
    """What GET /presets shows: each preset with what it produces and the
    overrides it takes (their defaults and meaning), the hls ladder and the
    sprite among them."""
    from core.outputs import hls_listing, sprite_listing  # they build on this module

    data = catalogue()
    presets = [{
        "name": name,
        "description": preset["description"],
        "extension": preset["extension"],
        "container": preset["container"],
        "video": preset["video"],
        "audio": preset["audio"],
        "overrides": {key: {"default": value, "meaning": data["overrides"][key]}
                      for key, value in preset["defaults"].items() if key in data["overrides"]},
    } for name, preset in data["presets"].items()]
    return sorted(presets + [hls_listing(), sprite_listing()],
                  key=lambda preset: preset["name"])


def _fill(value: object, values: dict[str, str]) -> object:
    if isinstance(value, str):
        return _PLACEHOLDER.sub(lambda match: values[match.group(1)], value)
    if isinstance(value, list):
        return [_fill(item, values) for item in value]
    if isinstance(value, dict):
        return {key: _fill(item, values) for key, item in value.items()}
    return value


def expand_preset(request: dict, field: str = "job_options") -> dict:
    """The wire-form job options of the catalogue preset `request` names,
    with its overrides applied (not yet through the allowlist).

    Raises ValidationError for an unknown preset, an override the preset
    does not take, or an override value that fails its check.
    """
    data = catalogue()
    name = request.get("preset")
    if not isinstance(name, str) or name not in data["presets"]:
        raise ValidationError(f"{field}.preset {str(name)[:40]!r} is not known; known presets: "
                              f"{', '.join(sorted(data['presets']))} (GET /presets lists them)")
    preset = data["presets"][name]
    takes = sorted(key for key in preset["defaults"] if key in data["overrides"])
    values = {key: str(value) for key, value in preset["defaults"].items()}
    for key, value in request.items():
        if key in ("preset", "nommer"):
            continue
        if key not in takes:
            raise ValidationError(f"{field}: preset {name!r} takes no override {key[:40]!r}; "
                                  f"it takes: {', '.join(takes) or 'none'}")
        try:
            values[key] = OVERRIDE_CHECKS[key](value)
        except ValueError as refusal:
            raise ValidationError(f"{field}.{key} {refusal}") from None
    return {"nommer": FFMPEG_NOMMER, "options": _fill(preset["passes"], values)}


def options_to_run(job_options: object, field: str = "job_options") -> dict:
    """The normalized options an encoder will run for what a client sent:
    a catalogue preset expanded, or the client's options translated from
    2011-era ffmpeg; either way checked by the allowlist.

    Raises ValidationError (code BADINPUT) naming what is wrong.
    """
    if isinstance(job_options, dict) and "preset" in job_options:
        nommer = job_options.get("nommer", FFMPEG_NOMMER)
        if nommer not in KNOWN_NOMMERS:
            raise ValidationError(f"{field}.nommer is not known; known nommers: "
                                  f"{', '.join(KNOWN_NOMMERS)}")
        return validate_job_options(expand_preset(job_options, field), field)
    return validate_job_options(translate_job_options(job_options, field), field)
