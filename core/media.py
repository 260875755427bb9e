"""Media facts and sample clips.

There is no ffprobe beside the ffmpeg that imageio-ffmpeg ships, and what
`ffmpeg -i` prints mixes the file's own metadata text with the facts, so
`probe` reads the facts as JSON from a child process using FFmpeg's
libraries (core.probe, through PyAV). Sample clips come from the ffmpeg
binary. subprocess errors stop here: a file that cannot be read, a missing
binary or a hung probe are all MediaError.
"""
from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import imageio_ffmpeg

from core.errors import MediaError
from core.settings import Settings

PROBE_TIMEOUT_S = 60.0
SAMPLE_TIMEOUT_S = 300.0

# The probe child is run as `python -m core.probe` from here.
_PROJECT_ROOT = str(Path(__file__).resolve().parents[1])
# ffmpeg's own error lines carry a "[in#0 @ 0x55...]" prefix that means nothing to a user.
_CONTEXT_PREFIX = re.compile(r"^\[[^\]]*@ 0x[0-9a-f]+\] ")


@dataclasses.dataclass(frozen=True)
class MediaInfo:
    """What ffmpeg reports about a file.

    format_name: the demuxer's name list, e.g. "mov,mp4,m4a,3gp,3g2,mj2".
    duration_s: seconds, or None when the container does not say.
    streams: (kind, codec) per stream in order, kind lower-case, e.g. ("video", "h264").
    bit_rate: the container's overall bits per second, when known.
    width, height, frame_rate: of the first video stream, when there is one
        (width and height as stored; display_width and display_height as
        a player shows them, after `rotation` and `sample_aspect_ratio`).
    """

    format_name: str
    duration_s: float | None
    streams: tuple[tuple[str, str], ...]
    bit_rate: int | None = None
    width: int | None = None
    height: int | None = None
    frame_rate: float | None = None
    rotation: int = 0
    sample_aspect_ratio: tuple[int, int] | None = None

    @property
    def display_width(self) -> int | None:
        return self._display()[0]

    @property
    def display_height(self) -> int | None:
        return self._display()[1]

    def _display(self) -> tuple[int | None, int | None]:
        width, height = self.width, self.height
        if width and height and self.sample_aspect_ratio:
            num, den = self.sample_aspect_ratio
            width = max(1, round(width * num / den))
        if self.rotation in (90, 270):
            width, height = height, width
        return width, height

    def codec(self, kind: str) -> str | None:
        """The codec of the first stream of `kind` ("video", "audio"), or None."""
        return next((codec for found, codec in self.streams if found == kind), None)

    @property
    def demuxer(self) -> str:
        """The demuxer's first name, as `-f` accepts it ("mov" for "mov,mp4,...")."""
        return self.format_name.split(",")[0]


def ffmpeg_path(settings: Settings) -> str:
    """The ffmpeg binary: settings.ffmpeg_path, else the one imageio-ffmpeg ships."""
    if settings.ffmpeg_path:
        return settings.ffmpeg_path
    return imageio_ffmpeg.get_ffmpeg_exe()


def error_lines(stderr: str, replacements: dict[str, str] | None = None) -> list[str]:
    """Non-empty stderr lines without ffmpeg's "[x @ 0x...]" prefixes, each
    `replacements` key (a local path) replaced by its value."""
    lines = []
    for line in stderr.splitlines():
        line = _CONTEXT_PREFIX.sub("", line.rstrip())
        for old, new in (replacements or {}).items():
            line = line.replace(old, new)
        if line.strip():
            lines.append(line)
    return lines


def read_probe(text: str) -> MediaInfo | str:
    """MediaInfo from the probe child's JSON, or its error text. Raises ValueError
    when `text` is not what the child prints."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if "error" in data:
        return str(data["error"])
    duration = data["duration_s"]
    if duration is not None and not isinstance(duration, (int, float)):
        raise ValueError("duration_s is not a number")
    streams = tuple((str(kind).lower(), str(codec)) for kind, codec in data["streams"])
    video = data.get("video") or {}
    return MediaInfo(str(data["format_name"]), float(duration) if duration else None, streams,
                     bit_rate=_whole(data.get("bit_rate")), width=_whole(video.get("width")),
                     height=_whole(video.get("height")),
                     frame_rate=_positive(video.get("frame_rate")),
                     rotation=video.get("rotation") if video.get("rotation") in (90, 180, 270)
                     else 0,
                     sample_aspect_ratio=_ratio(video.get("sample_aspect_ratio")))


def _ratio(value: object) -> tuple[int, int] | None:
    """A sample aspect ratio [num, den] within what video uses (1:100 to 100:1)."""
    if isinstance(value, list) and len(value) == 2 and all(_whole(part) for part in value) \
            and 1 / 100 <= value[0] / value[1] <= 100:
        return value[0], value[1]
    return None


def _whole(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _positive(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and 0 < value < 10000 else None


def probe(ffmpeg: str, path: str, allowed_formats: Iterable[str] | None = None,
          timeout_s: float = PROBE_TIMEOUT_S) -> MediaInfo:
    """What FFmpeg's libraries see in the local file `path`.

    The file is opened by a child process (core.probe) through PyAV, which
    reports the container's structures as JSON: no text ffmpeg prints is
    parsed, so metadata cannot spoof the duration or add lines. Only the file
    protocol is allowed; with `allowed_formats`, no other demuxer may open the
    file, so a playlist or concat file is refused before it opens the files
    it names. `ffmpeg` is not used (the libraries come with PyAV); callers
    pass the binary they encode with. Raises MediaError with the reason if the
    file cannot be read.
    """
    argv = [sys.executable, "-m", "core.probe", path]
    if allowed_formats is not None:
        argv += ["--formats", ",".join(allowed_formats)]
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout_s, cwd=_PROJECT_ROOT)
    except subprocess.TimeoutExpired:
        raise MediaError(f"reading the media took longer than {timeout_s:g} s") from None
    except OSError as exc:
        raise MediaError(f"the probe could not be run: {exc.strerror or exc}") from None
    try:
        found = read_probe(done.stdout.decode("utf-8"))
    except (ValueError, KeyError, TypeError):
        # The demuxer crashed (a hostile file) or the probe failed to start.
        raise MediaError("source is not media that ffmpeg can read: the probe failed "
                         f"(exit code {done.returncode})") from None
    if isinstance(found, str):
        if allowed_formats is not None:
            # The libraries do not tell a refused demuxer from unreadable data.
            raise MediaError(f"source is not media that ffmpeg can read, or not an allowed "
                             f"media container ({found})")
        raise MediaError(f"source is not media that ffmpeg can read: {found}")
    return found


def _run_ffmpeg(argv: list[str], timeout_s: float, doing: str) -> subprocess.CompletedProcess:
    """Run a short ffmpeg command, stderr captured. Raises MediaError if it
    cannot start or takes longer than `timeout_s` (`doing` names the step)."""
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise MediaError(f"{doing} took longer than {timeout_s:g} s") from None
    except OSError as exc:
        raise MediaError(f"ffmpeg could not be run: {exc.strerror or exc}") from None


def make_sample_clip(ffmpeg: str, out_path: str, duration_s: float = 5, size: str = "320x240",
                     rate: int = 25, preset: str = "ultrafast") -> str:
    """Write a test-pattern H.264/AAC MP4 of `duration_s` seconds to `out_path`.

    Generated (lavfi testsrc + a sine tone), so tests and demos never download.
    Returns `out_path`. Raises MediaError if ffmpeg fails.
    """
    argv = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc=size={size}:rate={rate}:duration={duration_s}",
            "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={duration_s}",
            "-c:v", "libx264", "-preset", preset, "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-shortest", "-movflags", "+faststart", "-f", "mp4", out_path]
    done = _run_ffmpeg(argv, SAMPLE_TIMEOUT_S, "making the sample clip")
    if done.returncode != 0:
        tail = " | ".join(error_lines(done.stderr.decode("utf-8", "replace"))[-5:])
        raise MediaError(f"making the sample clip failed: {tail}")
    return out_path
