"""Media facts and sample clips, from the ffmpeg binary alone.

There is no ffprobe beside the ffmpeg that imageio-ffmpeg ships, so `probe`
reads what `ffmpeg -i FILE` prints about its input. subprocess errors stop
here: a file ffmpeg cannot read, a missing binary or a hung probe are all
MediaError.
"""
from __future__ import annotations

import dataclasses
import re
import subprocess
from collections.abc import Iterable

import imageio_ffmpeg

from core.errors import MediaError
from core.settings import Settings

PROBE_TIMEOUT_S = 60.0
SAMPLE_TIMEOUT_S = 300.0

_INPUT = re.compile(r"^Input #0, (?P<format>.+), from '", re.MULTILINE)
_DURATION = re.compile(r"^\s+Duration: (?:(?P<h>\d+):(?P<m>\d\d):(?P<s>\d\d(?:\.\d+)?)|N/A)",
                       re.MULTILINE)
_STREAM = re.compile(r"^\s+Stream #0:\d+\S*: (?P<kind>Video|Audio|Subtitle|Data|Attachment): "
                     r"(?P<codec>[\w-]+)", re.MULTILINE)
# ffmpeg's own error lines carry a "[in#0 @ 0x55...]" prefix that means nothing to a user.
_CONTEXT_PREFIX = re.compile(r"^\[[^\]]*@ 0x[0-9a-f]+\] ")


@dataclasses.dataclass(frozen=True)
class MediaInfo:
    """What ffmpeg reports about a file.

    format_name: the demuxer's name list, e.g. "mov,mp4,m4a,3gp,3g2,mj2".
    duration_s: seconds, or None when the container does not say.
    streams: (kind, codec) per stream in order, kind lower-case, e.g. ("video", "h264").
    """

    format_name: str
    duration_s: float | None
    streams: tuple[tuple[str, str], ...]

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


def parse_probe(stderr: str) -> MediaInfo | None:
    """MediaInfo from `ffmpeg -i` stderr, or None if no input was opened."""
    found = _INPUT.search(stderr)
    if found is None:
        return None
    # Only the input's own lines: an "Output #0" section numbers its streams #0:n too.
    end = stderr.find("\nOutput #", found.end())
    end = len(stderr) if end < 0 else end
    duration_s = None
    match = _DURATION.search(stderr, found.end(), end)
    if match and match.group("h") is not None:
        duration_s = int(match["h"]) * 3600 + int(match["m"]) * 60 + float(match["s"])
    streams = tuple((m["kind"].lower(), m["codec"]) for m in _STREAM.finditer(stderr, found.end(), end))
    return MediaInfo(found["format"], duration_s, streams)


def _open_error(lines: list[str], returncode: int) -> str:
    """The line that says why ffmpeg could not open its input."""
    for line in reversed(lines):
        if line.startswith("Error opening input:"):
            return line.removeprefix("Error opening input:").strip()
    return lines[-1] if lines else f"ffmpeg exited with code {returncode}"


def probe(ffmpeg: str, path: str, allowed_formats: Iterable[str] | None = None,
          timeout_s: float = PROBE_TIMEOUT_S) -> MediaInfo:
    """What ffmpeg sees in the local file `path`.

    Only the file protocol is allowed, so a playlist cannot make the probe
    reach the network. With `allowed_formats`, ffmpeg refuses to open any
    other demuxer (its format_whitelist), so a playlist or concat file is
    refused before it opens the files it names.
    Raises MediaError with ffmpeg's reason if the file cannot be read.
    """
    argv = [ffmpeg, "-hide_banner", "-nostdin", "-protocol_whitelist", "file"]
    if allowed_formats is not None:
        argv += ["-format_whitelist", ",".join(allowed_formats)]
    argv += ["-i", f"file:{path}"]
    done = _run_ffmpeg(argv, timeout_s, "reading the media")
    stderr = done.stderr.decode("utf-8", "replace")
    info = parse_probe(stderr)
    if info is None:
        lines = error_lines(stderr, {f"file:{path}": "source", path: "source"})
        if any("Format not on whitelist" in line for line in lines):
            raise MediaError("source is not an allowed media container")
        raise MediaError(f"source is not media that ffmpeg can read: {_open_error(lines, done.returncode)}")
    return info


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
