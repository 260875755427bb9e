"""ffmpeg for one job: check the source, build each pass's argv, run it with progress.

Sources are untrusted. Before anything is encoded the downloaded file is
probed with only the file protocol and only plain container demuxers
allowed; the demuxer found is then named with -f, so ffmpeg never guesses
(the local file has no meaningful extension) and can never be steered into
a playlist (hls, concat) that reads other files or the network.

ffmpeg runs without a shell, in its own process group, so `cancel` can kill
it from another thread without touching the daemon. On Linux it also gets
SIGKILL when the thread that started it dies, so an encoder killed outright
leaves no orphan ffmpeg behind burning a core.

Options and media are hostile, so each pass runs within EncodeLimits: a
wall-clock limit relative to the source's duration, an output-size cap
checked while ffmpeg writes, and an address-space cap (RLIMIT_AS). A pass
stopped by a limit fails with a MediaError that names the limit's setting.
"""
from __future__ import annotations

import collections
import contextlib
import ctypes
import dataclasses
import functools
import os
import re
import resource
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from core.errors import MediaError, NommerError
from core.jobs import MAX_DETAILS_CHARS
from core.media import MediaInfo, error_lines, probe

# Demuxers of self-contained files. Anything that names other resources
# (hls, concat, dash, image2 sequences), reads devices (lavfi, v4l2, x11grab)
# or pipes (*_pipe) is absent on purpose. First names as ffmpeg reports them.
ALLOWED_DEMUXERS = ("mov", "mp4", "matroska", "webm", "avi", "flv", "mpegts", "mpeg",
                    "ogg", "wav", "mp3", "aac", "flac", "asf", "mxf", "gif")
STDERR_TAIL_LINES = 40
_PLAYLIST_MAGIC = (b"#EXTM3U", b"ffconcat")
_OPTION_NAME = re.compile(r"[A-Za-z0-9_:.+\-]+")
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,10}")
_NULL_OUTPUT = "/dev/null"


_PR_SET_PDEATHSIG = 1
# A source whose duration is unknown gets the time limit of one this long.
UNKNOWN_DURATION_S = 3600.0
_LIMIT_TICK_S = 0.25
# How ffmpeg and its libraries say an allocation failed (ENOMEM, x264's own words).
_OUT_OF_MEMORY = ("Cannot allocate memory", "malloc of size", "Out of memory", "bad_alloc")


@dataclasses.dataclass(frozen=True)
class EncodeLimits:
    """Limits on each ffmpeg pass; 0 means no limit."""

    time_factor: float = 0.0      # wall-clock seconds per second of source
    time_base_s: float = 0.0      # plus this many seconds
    max_output_bytes: int = 0
    max_memory_bytes: int = 0     # RLIMIT_AS of the ffmpeg process
    min_free_bytes: int = 0       # on the output's disk, while ffmpeg writes

    @classmethod
    def from_settings(cls, settings) -> "EncodeLimits":
        return cls(settings.encode_time_factor, settings.encode_time_base_s,
                   settings.max_output_bytes, settings.ffmpeg_max_memory_bytes,
                   settings.min_free_bytes)

    def time_limit_s(self, duration_s: float | None) -> float | None:
        if not self.time_factor and not self.time_base_s:
            return None
        return self.time_base_s + self.time_factor * (duration_s or UNKNOWN_DURATION_S)


@functools.cache
def _prctl():
    """libc's prctl, looked up before any fork (None where there is none)."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _die_with_parent(prctl=None, max_memory_bytes: int = 0) -> None:
    # Runs in the child between fork and exec: single C calls, no locks.
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if max_memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (max_memory_bytes, max_memory_bytes))


class EncodeCancelled(NommerError):
    """ffmpeg was stopped by `FFmpegRunner.cancel` (job cancelled, lost or released)."""


def check_source(ffmpeg: str, path: str) -> MediaInfo:
    """Probe the downloaded source and refuse what must not be encoded.

    Raises MediaError: a playlist, a demuxer outside ALLOWED_DEMUXERS, a file
    ffmpeg cannot read, or no audio or video stream.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    except OSError as exc:
        raise MediaError(f"the downloaded source could not be read: {exc.strerror}") from None
    if head.startswith(_PLAYLIST_MAGIC):
        raise MediaError("source is a playlist, not a media file; playlists are refused")
    info = probe(ffmpeg, path, allowed_formats=ALLOWED_DEMUXERS)
    if info.demuxer not in ALLOWED_DEMUXERS:
        raise MediaError(f"source format {info.format_name!r} is not an allowed media container")
    if not any(kind in ("video", "audio") for kind, _ in info.streams):
        raise MediaError("source has no audio or video stream")
    return info


def output_name(destination: str) -> str:
    """Local output file name whose extension is the destination's, so ffmpeg
    picks the muxer the destination asks for ("output.mp4")."""
    suffix = Path(urllib.parse.urlsplit(destination).path).suffix
    return "output" + (suffix.lower() if _SUFFIX.fullmatch(suffix) else "")


def _flags(pairs: list) -> list[str]:
    """[[k, v], [k, None]] -> ["-k", "v", "-k"]."""
    argv = []
    for key, value in pairs:
        # Options arrive validated; this only keeps a stray value from
        # becoming something other than one option name.
        if not isinstance(key, str) or not _OPTION_NAME.fullmatch(key):
            raise MediaError(f"option name {key!r} is not allowed")
        argv.append("-" + key)
        if value is not None:
            argv.append(str(value))
    return argv


def _seek_in_seconds(pairs: list, duration_s: float | None) -> list:
    """Input pairs with an "ss" given as a percentage ("10%") turned into
    seconds of the source. Raises MediaError when the duration is unknown."""
    resolved = []
    for key, value in pairs:
        if key == "ss" and isinstance(value, str) and value.endswith("%"):
            if not duration_s:
                raise MediaError(f"a seek of {value} of the source needs its duration, "
                                 "which the source does not tell")
            value = f"{duration_s * float(value[:-1]) / 100:.3f}"
        resolved.append([key, value])
    return resolved


def build_pass_argvs(ffmpeg: str, job_options: dict, source_path: str, demuxer: str,
                     output_path: str, work_dir: str,
                     tolerate_decode_errors: bool = False,
                     duration_s: float | None = None) -> list[list[str]]:
    """One argv per pass of `job_options` (the original's wire form).

    With two passes, pass 1 writes to the null muxer and both share a pass
    log in `work_dir`. Unless `tolerate_decode_errors`, ffmpeg stops at the
    first error (-xerror): a truncated or corrupt source fails the job
    instead of ending with a short output. `duration_s` (the source's) turns
    a seek given in percent into seconds. Raises MediaError for an unusable
    pass list.
    """
    passes = job_options.get("options") or []
    if len(passes) not in (1, 2):
        raise MediaError(f"{len(passes)} passes given; one or two are supported")
    argvs = []
    for number, options in enumerate(passes, start=1):
        argv = [ffmpeg, "-hide_banner", "-nostdin", "-y", "-nostats", "-progress", "pipe:1"]
        if not tolerate_decode_errors:
            argv.append("-xerror")
        argv += _flags(_seek_in_seconds(options.get("infile_options") or [], duration_s))
        argv += ["-protocol_whitelist", "file", "-f", demuxer, "-i", source_path]
        argv += _flags(options.get("outfile_options") or [])
        if len(passes) == 2:
            argv += ["-pass", str(number), "-passlogfile", os.path.join(work_dir, "passlog")]
        if options.get("move_atom_to_front"):
            argv += ["-movflags", "+faststart"]
        if number < len(passes):
            argv += ["-f", "null", _NULL_OUTPUT]
        else:
            argv.append(output_path)
        argvs.append(argv)
    return argvs


class ProgressParser:
    """Reads `-progress` key=value lines; `feed` returns the fraction done
    (0.0-1.0) at the end of each report block, else None."""

    def __init__(self, duration_s: float | None):
        self.duration_s = duration_s
        self._out_time_us = 0

    def feed(self, line: str) -> float | None:
        key, _, value = line.strip().partition("=")
        # out_time_ms is in microseconds too (an old ffmpeg misnomer); older
        # builds print only that one.
        if key in ("out_time_us", "out_time_ms") and value.lstrip("-").isdigit():
            self._out_time_us = max(self._out_time_us, int(value))
        elif key == "progress":
            if value == "end":
                return 1.0
            if not self.duration_s:
                return 0.0
            return max(0.0, min(1.0, self._out_time_us / (self.duration_s * 1e6)))
        return None


def failure_reason(returncode: int, lines: list[str]) -> str:
    """The useful tail of ffmpeg's stderr, cut to fit a job's details."""
    if returncode < 0:
        head = f"ffmpeg was killed by signal {-returncode}"
    else:
        head = f"ffmpeg failed with exit code {returncode}"
    # Indented lines describe streams and metadata; the error is in the rest.
    useful = [line for line in lines if not line.startswith(" ")] or lines
    kept: list[str] = []
    room = MAX_DETAILS_CHARS - len(head) - 2
    for line in reversed(useful):
        if len(line) + 1 > room:
            if not kept:
                kept.append(line[-room:])
            break
        kept.insert(0, line)
        room -= len(line) + 1
    return head + (": " + "\n".join(kept) if kept else "")


class FFmpegRunner:
    """Runs ffmpeg passes one after another for one job.

    `cancel()` may be called from any thread at any time: it kills the
    running pass's whole process group and makes every later `run` raise
    EncodeCancelled at once.
    """

    def __init__(self, progress_interval_ms: int = 1000, replacements: dict[str, str] | None = None,
                 limits: EncodeLimits | None = None):
        self.progress_interval_ms = progress_interval_ms
        self.limits = limits or EncodeLimits()
        self._limit_hit: str | None = None
        # Local paths -> neutral names, so errors do not show this machine's layout.
        self.replacements = dict(replacements or {})
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._cancelled = False
        self.last_stderr = ""
        # Set by cancel(): a download for the same job watches it too.
        self.stop_event = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def pid(self) -> int | None:
        """The running ffmpeg's pid (also its process group id), or None."""
        proc = self._proc
        return proc.pid if proc is not None else None

    def cancel(self) -> None:
        """Kill the running pass (SIGKILL to its group) and refuse later ones."""
        with self._lock:
            self._cancelled = True
            self.stop_event.set()
            self._kill_locked()

    def run(self, argv: list[str], duration_s: float | None,
            on_progress: Callable[[int], None] | None = None,
            span: tuple[int, int] = (0, 100), output_path: str | None = None,
            time_scale: float = 1.0) -> None:
        """Run one pass to the end.

        `on_progress(percent)` gets increasing whole percents within `span`,
        at most every progress_interval_ms, plus the end of the span when the
        pass completes. Raises EncodeCancelled if cancelled, MediaError with
        the tail of stderr if ffmpeg fails; an exception from `on_progress`
        kills ffmpeg and propagates. A pass that outruns the time limit for
        `duration_s`, or whose `output_path` outgrows the size cap, is killed
        and raises MediaError naming the limit. `output_path` may be a folder
        (its files count together); `time_scale` multiplies the time limit (a
        pass writing several outputs). `last_stderr` keeps the tail of
        ffmpeg's stderr afterwards.
        """
        with self._lock:
            if self._cancelled:
                raise EncodeCancelled("encoding was stopped")
            self._limit_hit = None
            self.last_stderr = ""
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, start_new_session=True,
                                        preexec_fn=functools.partial(
                                            _die_with_parent, _prctl(),
                                            self.limits.max_memory_bytes))
            except OSError as exc:
                raise MediaError(f"ffmpeg could not be run: {exc.strerror or exc}") from None
            self._proc = proc
        time_limit_s = self.limits.time_limit_s(duration_s)
        if time_limit_s is not None:
            time_limit_s *= time_scale
        enforcer = threading.Thread(target=self._enforce_limits,
                                    args=(proc, time_limit_s, output_path),
                                    name=f"ffmpeg-{proc.pid}-limits", daemon=True)
        enforcer.start()
        tail: collections.deque[bytes] = collections.deque(maxlen=STDERR_TAIL_LINES)
        drainer = threading.Thread(target=tail.extend, args=(proc.stderr,),
                                   name=f"ffmpeg-{proc.pid}-stderr", daemon=True)
        drainer.start()
        try:
            self._follow(proc, ProgressParser(duration_s), on_progress, span)
            returncode = proc.wait()
        finally:
            with self._lock:
                self._kill_locked()
                self._proc = None
            proc.wait()
            drainer.join(timeout=5)
            enforcer.join(timeout=5)
            proc.stdout.close()
            proc.stderr.close()
        self.last_stderr = b"".join(tail).decode("utf-8", "replace")
        if self._cancelled:
            raise EncodeCancelled("encoding was stopped")
        if self._limit_hit:
            raise MediaError(self._limit_hit)
        reason = self._output_limit(output_path)
        if reason:
            raise MediaError(reason)
        if returncode != 0:
            text = self.last_stderr
            reason = failure_reason(returncode, error_lines(text, self.replacements))
            if self.limits.max_memory_bytes and any(sign in text for sign in _OUT_OF_MEMORY):
                reason = (f"stopped by a limit: ffmpeg needed more than "
                          f"{self.limits.max_memory_bytes} bytes of memory "
                          f"(setting ffmpeg_max_memory_bytes); {reason}")
            raise MediaError(reason)

    def _follow(self, proc: subprocess.Popen, parser: ProgressParser,
                on_progress: Callable[[int], None] | None, span: tuple[int, int]) -> None:
        start, end = span
        last_percent = -1
        last_at = float("-inf")
        for raw in proc.stdout:
            fraction = parser.feed(raw.decode("ascii", "replace"))
            if fraction is None or on_progress is None:
                continue
            percent = int(start + fraction * (end - start))
            now = time.monotonic()
            due = (now - last_at) * 1000 >= self.progress_interval_ms
            if percent > last_percent and (due or fraction >= 1.0):
                on_progress(percent)
                last_percent, last_at = percent, now

    def _enforce_limits(self, proc: subprocess.Popen, time_limit_s: float | None,
                        output_path: str | None) -> None:
        started = time.monotonic()
        while proc.poll() is None:
            time.sleep(_LIMIT_TICK_S)
            reason = None
            if time_limit_s is not None and time.monotonic() - started > time_limit_s:
                reason = (f"stopped by a limit: the pass ran longer than {time_limit_s:.0f} s "
                          "(settings encode_time_factor, encode_time_base_s)")
            else:
                reason = self._output_limit(output_path)
            if reason:
                with self._lock:
                    self._limit_hit = reason
                    self._kill_locked()
                return

    def _output_limit(self, output_path: str | None) -> str | None:
        """Why the output breaks a limit now, or None. Checked while ffmpeg
        writes, and once more after it ends (a pass may end between checks)."""
        max_bytes = self.limits.max_output_bytes
        if not output_path:
            return None
        if max_bytes and _size(output_path) > max_bytes:
            return (f"stopped by a limit: the output grew beyond {max_bytes} bytes "
                    "(setting max_output_bytes)")
        if _free_bytes(output_path) < self.limits.min_free_bytes:
            # The disk may also hold the job database: never fill it.
            return "stopped by a limit: the work disk is nearly full (setting min_free_bytes)"
        return None

    def _kill_locked(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)


def _free_bytes(path: str) -> int:
    try:
        return shutil.disk_usage(os.path.dirname(path) or ".").free
    except OSError:
        return 1 << 62  # cannot tell: do not stop the encode for it


def _size(path: str) -> int:
    """Bytes of a file, or of every file under a folder."""
    if os.path.isdir(path):
        return sum(_size(os.path.join(folder, name))
                   for folder, _dirs, names in os.walk(path) for name in names)
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
