"""2011-era ffmpeg options, translated to what today's ffmpeg runs.

The original media-nommer's client library ships presets written for the
ffmpeg of 2011 (`-acodec libfaac`, `-vprofile baseline`, `-b 400k`,
`-async 480`, `("threads", 0)`, `scale='640:...'`). Applications still send
them, so a job's outfile options go through TRANSLATIONS when it is
accepted, before the allowlist (core.options) checks them. The job keeps
both what the client sent and what will run.

TRANSLATIONS is the one table: each row names the old option (or option and
value) and what it becomes. Rows apply in order to every pair of a pass, so
a later row sees what an earlier one made ("acodec libfaac" -> "c:a libfaac"
-> "c:a aac"). A row without a replacement refuses the job at submit with
what to use instead: an option today's ffmpeg no longer has must never be
accepted and then fail inside ffmpeg.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

from core.errors import ValidationError

Pair = list  # [option name, value or None]

_AUDIO_CODEC_KEYS = frozenset({"c:a", "codec:a"})
_VIDEO_CODEC_KEYS = frozenset({"c:v", "codec:v"})
_FILTER_KEYS = frozenset({"vf", "af", "filter:v", "filter:a"})
# One chain per stream: ffmpeg only uses the last -vf (or -af) given.
_CHAIN_KEY = {"vf": "vf", "filter:v": "vf", "af": "af", "filter:a": "af"}
# Graph-level syntax: text containing any of these must stay quoted.
_GRAPH_SPECIALS = frozenset(",;[]'\\")
# H.264 profiles that allow only 8-bit 4:2:0 video.
_YUV420_PROFILES = frozenset({"baseline", "constrained_baseline", "main", "high"})


@dataclasses.dataclass(frozen=True)
class Translation:
    """One row: `old` and what it `becomes` are for people (docs, errors);
    `matches` picks the pairs; `apply` maps a value to the pairs that run
    (a None name keeps the option's own; ValueError refuses the value),
    or is None when the option has no modern equivalent (`instead` says
    what to use)."""

    old: str
    becomes: str
    matches: Callable[[str, object], bool]
    apply: Callable[[object], list[Pair]] | None = None
    instead: str = ""


def _rename(old: str, new: str) -> Translation:
    return Translation(old, new, lambda key, value: key == old,
                       lambda value: [[new, value]])


def _codec(keys: frozenset[str], old: str, new: str) -> Translation:
    return Translation(f"{sorted(keys)[0]} {old}", f"{sorted(keys)[0]} {new}",
                       lambda key, value: key in keys and value == old,
                       lambda value: [[None, new]])


def _async_filter(value: object) -> list[Pair]:
    if not isinstance(value, str) or not value.isascii() or not value.isdigit():
        raise ValueError("needs a whole number of samples per second, e.g. 480")
    return [["af", f"aresample=async={value}"]]


def _refuse(old: str, instead: str) -> Translation:
    return Translation(old, "refused", lambda key, value: key == old, None, instead)


def unquote_filter_args(graph: str) -> str:
    """`graph` with each quoted span unquoted where the quotes protect nothing.

    The 2011 presets quote filter arguments as on a shell command line
    (`scale='640:trunc(ow/a/2)*2'`). A span that holds no comma, semicolon,
    bracket or backslash means the same to ffmpeg without its quotes, and
    the options that run read as a user would write them; a span that does
    keeps its quotes, since there they protect something.
    """
    parts = graph.split("'")
    if len(parts) % 2 == 0:
        return graph  # unbalanced: the allowlist refuses it with its own message
    out = [parts[0]]
    for quoted, after in zip(parts[1::2], parts[2::2]):
        keep = any(char in _GRAPH_SPECIALS for char in quoted)
        out.append(f"'{quoted}'" if keep else quoted)
        out.append(after)
    return "".join(out)


def _with_pix_fmt(value: object) -> list[Pair]:
    return [["profile:v", value], ["pix_fmt", "yuv420p", _IMPLIED]]


_IMPLIED = "implied"  # third element: dropped when the pass names its own value

TRANSLATIONS: tuple[Translation, ...] = (
    Translation("any whole number, e.g. threads 0", "the same number as a string",
                lambda key, value: isinstance(value, int) and not isinstance(value, bool),
                lambda value: [[None, str(value)]]),
    _rename("vcodec", "c:v"),
    _rename("acodec", "c:a"),
    _rename("vprofile", "profile:v"),
    _rename("profile", "profile:v"),
    _rename("b", "b:v"),
    _rename("vb", "b:v"),
    _rename("ab", "b:a"),
    _rename("qscale", "q:v"),
    _rename("vframes", "frames:v"),
    _codec(_AUDIO_CODEC_KEYS, "libfaac", "aac"),
    _codec(_AUDIO_CODEC_KEYS, "libvo_aacenc", "aac"),
    _codec(_AUDIO_CODEC_KEYS, "libfdk_aac", "aac"),
    _codec(_AUDIO_CODEC_KEYS, "faac", "aac"),
    _codec(_VIDEO_CODEC_KEYS, "libxvid", "mpeg4"),
    Translation("async N", "the audio filter aresample=async=N, joined to the pass's af chain",
                lambda key, value: key == "async", _async_filter),
    Translation("deinterlace", "the video filter yadif, joined to the pass's vf chain",
                lambda key, value: key == "deinterlace", lambda value: [["vf", "yadif"]]),
    Translation("vf/af with quoted arguments, e.g. scale='640:trunc(ow/a/2)*2'",
                "the same chain unquoted, e.g. scale=640:trunc(ow/a/2)*2",
                lambda key, value: key in _FILTER_KEYS and isinstance(value, str),
                lambda value: [[None, unquote_filter_args(value)]]),
    Translation("profile:v baseline, main or high", "the same, plus pix_fmt yuv420p unless "
                "the pass sets pix_fmt (these profiles allow only 8-bit 4:2:0; today's "
                "sources may be 4:4:4 or 10-bit)",
                lambda key, value: key == "profile:v" and value in _YUV420_PROFILES,
                _with_pix_fmt),
    _refuse("vpre", "ffmpeg no longer reads preset files: use preset and tune "
                    "(e.g. [\"preset\", \"medium\"])"),
    _refuse("fpre", "ffmpeg option files are refused: spell the options out"),
    _refuse("sameq", "'same quality' was removed from ffmpeg: use crf (e.g. 23) or q:v"),
    _refuse("croptop", "use the video filter crop (vf crop=w:h:x:y)"),
    _refuse("cropbottom", "use the video filter crop (vf crop=w:h:x:y)"),
    _refuse("cropleft", "use the video filter crop (vf crop=w:h:x:y)"),
    _refuse("cropright", "use the video filter crop (vf crop=w:h:x:y)"),
    _refuse("padtop", "use the video filter pad (vf pad=w:h:x:y:color)"),
    _refuse("padbottom", "use the video filter pad (vf pad=w:h:x:y:color)"),
    _refuse("padleft", "use the video filter pad (vf pad=w:h:x:y:color)"),
    _refuse("padright", "use the video filter pad (vf pad=w:h:x:y:color)"),
    _refuse("padcolor", "use the video filter pad (vf pad=w:h:x:y:color)"),
    _refuse("vhook", "video hooks were replaced by filters: use vf"),
    _refuse("newaudio", "use map to pick streams (e.g. [\"map\", \"0:a\"])"),
    _refuse("newvideo", "use map to pick streams (e.g. [\"map\", \"0:v\"])"),
    *(_refuse(old, "libx264 sets this through its presets today: use preset and tune "
                   "(e.g. [\"preset\", \"slow\"])")
      for old in ("flags2", "directpred", "wpredp", "me_method")),
)


def _apply_row(row: Translation, pair: Pair, where: str) -> list[Pair]:
    key, value = pair[0], pair[1]
    if row.apply is None:
        raise ValidationError(f"{where}: option {key!r} has no equivalent in today's "
                              f"ffmpeg; {row.instead}")
    try:
        made = row.apply(value)
    except ValueError as refusal:
        raise ValidationError(f"{where}: option {key!r} {refusal}") from None
    # A row's None key keeps the option's own name (a value-only change).
    return [[key if new[0] is None else new[0], *new[1:]] for new in made]


def _merge(pairs: list[Pair]) -> list[Pair]:
    """One chain per filter kind, at the place of the first; implied pairs
    dropped where the pass sets the option itself."""
    explicit = {pair[0] for pair in pairs if len(pair) == 2}
    merged: list[Pair] = []
    chains: dict[str, Pair] = {}
    for pair in pairs:
        key = pair[0]
        if len(pair) == 3:
            if key in explicit or any(p[0] == key for p in merged):
                continue
            pair = pair[:2]
        chain = _CHAIN_KEY.get(key) if isinstance(key, str) else None
        if chain and isinstance(pair[1], str):
            if chain in chains:
                chains[chain][1] += "," + pair[1]
                continue
            chains[chain] = pair = [key, pair[1]]
        merged.append(pair)
    return merged


def _translate_pairs(pairs: list, where: str) -> list:
    for row in TRANSLATIONS:
        translated = []
        for pair in pairs:
            key = pair[0]
            if isinstance(key, str) and key.startswith("-"):
                key = key[1:]  # the allowlist takes either spelling; rows match one
            if isinstance(key, str) and row.matches(key, pair[1]):
                translated.extend(_apply_row(row, [key, *pair[1:]], where))
            else:
                translated.append(pair)
        pairs = translated
    return _merge(pairs)


def _well_formed(pairs: object) -> bool:
    return isinstance(pairs, list) and all(
        isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)
        for pair in pairs)


def translate_job_options(job_options: object, field: str = "job_options") -> object:
    """A copy of `job_options` with every pass's outfile options translated.

    Anything not shaped like the wire form is returned as it is, for the
    allowlist to refuse with its own message. Raises ValidationError naming
    an option that has no modern equivalent and what to use instead.
    """
    if not isinstance(job_options, dict) or not isinstance(job_options.get("options"), list):
        return job_options
    # New containers along the translated path only: what the client sent
    # stays as it was (the job keeps it), and nothing walks nesting that a
    # hostile body might make deep.
    passes = []
    for index, encoding_pass in enumerate(job_options["options"]):
        pairs = encoding_pass.get("outfile_options") if isinstance(encoding_pass, dict) else None
        if _well_formed(pairs):
            encoding_pass = {**encoding_pass, "outfile_options": _translate_pairs(
                [list(pair) for pair in pairs], f"{field}.options[{index}].outfile_options")}
        passes.append(encoding_pass)
    return {**job_options, "options": passes}
