"""The media probe's child process: open one local file with FFmpeg's
libraries (PyAV) and print what it holds as one JSON object.

    python -m core.probe PATH [--formats mov,mp4,...]

prints {"format_name": ..., "duration_s": float or null, "streams":
[[kind, codec], ...], "bit_rate": int or null, "video": {"width", "height",
"frame_rate", "rotation", "sample_aspect_ratio"} of the first video stream
or null}, or {"error": ..., "refused": bool} when the file cannot be
opened. Fields are read from the libraries' structures, never
parsed from text, so metadata in the file (a title with newlines) cannot
change them. It runs as a child so that a file that crashes the
demuxer takes down only the probe (core.media.probe runs it).
"""
from __future__ import annotations

import argparse
import json
import sys

import av

_AV_TIME_BASE = 1_000_000
# The rotation a player applies (a phone's portrait video is stored
# landscape with a display matrix) is read from the first decoded frame: at
# most this many packets are read for it, and none of a frame larger than 8K.
_ROTATION_PACKETS = 32
_ROTATION_MAX_PIXELS = 7680 * 4320


def describe(path: str, formats: str | None) -> dict:
    # Only the file protocol, and only the allowed demuxers: a playlist or
    # concat file is refused before it can open what it names.
    options = {"protocol_whitelist": "file"}
    if formats:
        options["format_whitelist"] = formats
    try:
        container = av.open(f"file:{path}", options=options)
    except av.error.FFmpegError as exc:
        return {"error": exc.strerror or type(exc).__name__}
    with container:
        duration = container.duration
        streams = [[stream.type, stream.codec_context.name if stream.codec_context else "none"]
                   for stream in container.streams]
        return {"format_name": container.format.name,
                "duration_s": duration / _AV_TIME_BASE if duration and duration > 0 else None,
                "streams": streams,
                "bit_rate": container.bit_rate or None,
                "video": _first_video(container)}


def _first_video(container) -> dict | None:
    for stream in container.streams.video:
        context = stream.codec_context
        rate = stream.average_rate or stream.guessed_rate
        sar = stream.sample_aspect_ratio
        width, height = context.width or None, context.height or None
        return {"width": width, "height": height,
                "frame_rate": float(rate) if rate else None,
                "rotation": _rotation(container, stream, (width or 0) * (height or 0)),
                "sample_aspect_ratio": [sar.numerator, sar.denominator]
                if sar and sar.numerator > 0 and sar != 1 else None}
    return None


def _rotation(container, stream, pixels: int) -> int:
    """Degrees (0, 90, 180, 270) the first frame is turned when displayed."""
    if not 0 < pixels <= _ROTATION_MAX_PIXELS:
        return 0
    try:
        for count, packet in enumerate(container.demux(stream)):
            for frame in packet.decode():
                return round(float(frame.rotation or 0) / 90) * 90 % 360
            if count >= _ROTATION_PACKETS:
                break
    except (av.error.FFmpegError, ValueError, OverflowError):
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.probe")
    parser.add_argument("path")
    parser.add_argument("--formats", help="comma-separated demuxers that may open the file")
    args = parser.parse_args(argv)
    av.logging.set_level(av.logging.PANIC)
    json.dump(describe(args.path, args.formats), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
