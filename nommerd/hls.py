"""An HLS ladder as part of one ffmpeg run, and what it leaves behind.

The ladder's renditions come from one decode of the source: a split filter
feeds one scaler per rung, and ffmpeg's hls muxer writes every rendition
and the shared audio rendition (an EXT-X-MEDIA audio group) at once. Every
rendition gets keyframes forced at the same times (each segment target,
scene cuts off, the same GOP), so all segments start at the same times and
a player can switch between renditions at any segment boundary.

ffmpeg's own master playlist has BANDWIDTH, AVERAGE-BANDWIDTH (measured),
RESOLUTION and CODECS but no FRAME-RATE, and lists the audio rendition as a
variant of its own; `fix_master` adds the frame rate and keeps only the
video variants (each pointing at the audio group).

With "dash", the same renditions are packaged once more for DASH
(`dash_argv`): ffmpeg copies them, without encoding again, into a DASH
manifest (manifest.mpd, or named after the master playlist) with its own
segments under dash/, one video adaptation set and one audio set.
"""
from __future__ import annotations

import os
import re

from core.errors import MediaError
from core.media import MediaInfo
from core.outputs import HLS_MASTER, dash_manifest_name, master_name

MASTER = HLS_MASTER
DASH_FOLDER = "dash"
PLAYLIST = "index.m3u8"
AUDIO_NAME = "audio"
AUDIO_GROUP = "audio"
DEFAULT_FRAME_RATE = 25.0
_ATTRIBUTE = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')
_SEGMENT_SUFFIX = {"fmp4": ".m4s", "ts": ".ts"}


def rungs_for(spec: dict, info: MediaInfo) -> list[dict]:
    """The ladder's rungs no taller than the source; a source shorter than
    every rung gets one rung at its own height. Raises MediaError when the
    source has no video."""
    # Heights as a player shows the source: ffmpeg turns a rotated source
    # before the ladder's scalers see it.
    height = info.display_height
    if info.codec("video") is None or not height:
        raise MediaError("an hls output needs a source with video")
    rungs = [rung for rung in spec["ladder"] if rung["height"] <= height]
    if not rungs:
        rungs = [{"height": height - height % 2,
                  "video_bitrate": spec["ladder"][0]["video_bitrate"]}]
    return rungs


def _bits_per_s(bitrate: str) -> int:
    scale = {"k": 1000, "m": 1000_000}.get(bitrate[-1].lower(), 1)
    return int(float(bitrate.rstrip("kKmM")) * scale)


def ladder_args(spec: dict, info: MediaInfo, out_dir: str, label: str) -> tuple[str, list[str]]:
    """(filter graph, output arguments) that write the ladder of `spec` (an
    hls output as core.outputs stores it) under `out_dir`. `label` keeps this
    output's filter labels apart from another's."""
    rungs = rungs_for(spec, info)
    has_audio = info.codec("audio") is not None
    frame_rate = info.frame_rate or DEFAULT_FRAME_RATE
    segment_s = spec["segment_s"]
    gop = max(1, round(frame_rate * segment_s))
    graph = f"[0:v:0]split={len(rungs)}" + "".join(f"[{label}s{k}]" for k in range(len(rungs)))
    for k, rung in enumerate(rungs):
        graph += f";[{label}s{k}]scale=-2:{rung['height']}[{label}v{k}]"
    args: list[str] = []
    for k in range(len(rungs)):
        args += ["-map", f"[{label}v{k}]"]
    if has_audio:
        args += ["-map", "0:a:0"]
    args += ["-c:v", "libx264", "-preset", spec["encoder_preset"], "-profile:v", "high",
             "-pix_fmt", "yuv420p", "-sc_threshold", "0", "-g", str(gop),
             "-keyint_min", str(gop), "-force_key_frames", f"expr:gte(t,n_forced*{segment_s})"]
    for k, rung in enumerate(rungs):
        bits = _bits_per_s(rung["video_bitrate"])
        args += [f"-b:v:{k}", str(bits), f"-maxrate:v:{k}", str(bits * 107 // 100),
                 f"-bufsize:v:{k}", str(bits * 3 // 2)]
    streams = [f"v:{k},name:{rung['height']}p" for k, rung in enumerate(rungs)]
    if has_audio:
        args += ["-c:a", "aac", "-b:a", spec["audio_bitrate"], "-ac", "2"]
        streams = [f"{stream},agroup:{AUDIO_GROUP}" for stream in streams]
        streams.insert(0, f"a:0,agroup:{AUDIO_GROUP},name:{AUDIO_NAME},default:yes")
    suffix = _SEGMENT_SUFFIX[spec["segment_type"]]
    args += ["-f", "hls", "-hls_time", str(segment_s), "-hls_playlist_type", "vod",
             "-hls_flags", "independent_segments",
             "-hls_segment_type", "fmp4" if spec["segment_type"] == "fmp4" else "mpegts",
             "-hls_segment_filename", os.path.join(out_dir, "%v", "seg_%05d" + suffix),
             "-master_pl_name", master_name(spec), "-var_stream_map", " ".join(streams)]
    if spec["segment_type"] == "fmp4":
        args += ["-hls_fmp4_init_filename", "init.mp4"]
    args.append(os.path.join(out_dir, "%v", PLAYLIST))
    return graph, args


def dash_argv(ffmpeg: str, spec: dict, out_dir: str, variants: list[dict],
              has_audio: bool) -> list[str]:
    """The ffmpeg command that packages a finished ladder (its fMP4
    renditions, read through their media playlists) for DASH by copying,
    and makes the folders it writes into."""
    inputs = [os.path.join(out_dir, variant["uri"]) for variant in variants]
    if has_audio:
        inputs.append(os.path.join(out_dir, AUDIO_NAME, PLAYLIST))
    argv = [ffmpeg, "-hide_banner", "-nostdin", "-y", "-nostats", "-progress", "pipe:1"]
    for path in inputs:
        argv += ["-protocol_whitelist", "file", "-i", path]
    for index in range(len(variants)):
        argv += ["-map", f"{index}:v:0"]
    if has_audio:
        argv += ["-map", f"{len(variants)}:a:0"]
    for index in range(len(inputs)):
        os.makedirs(os.path.join(out_dir, DASH_FOLDER, str(index)), exist_ok=True)
    # One adaptation set lets a player switch between the renditions, and
    # ffmpeg takes only one display aspect in a set: each rung's width was
    # rounded to even, so all are given the top rung's.
    top = max(variants, key=lambda variant: variant["height"])
    sets = "id=0,streams=v" + (" id=1,streams=a" if has_audio else "")
    argv += ["-c", "copy", "-aspect:v", f"{top['width']}:{top['height']}",
             "-f", "dash", "-seg_duration", str(spec["segment_s"]),
             "-use_template", "1", "-use_timeline", "1", "-adaptation_sets", sets,
             "-init_seg_name", f"{DASH_FOLDER}/$RepresentationID$/init.mp4",
             "-media_seg_name", f"{DASH_FOLDER}/$RepresentationID$/seg_$Number%05d$.m4s",
             os.path.join(out_dir, dash_manifest_name(spec))]
    return argv


def attributes(line: str) -> dict[str, str]:
    """The attributes of an #EXT-X-... line, quotes removed."""
    return {key: value.strip('"') for key, value in _ATTRIBUTE.findall(line.partition(":")[2])}


def fix_master(out_dir: str, info: MediaInfo, master: str = MASTER) -> list[dict]:
    """Rewrite ffmpeg's master playlist: video variants only, each with a
    FRAME-RATE. Returns one dict per variant (uri, bandwidth,
    average_bandwidth, width, height, codecs, frame_rate). Raises MediaError
    when ffmpeg wrote no usable master playlist."""
    path = os.path.join(out_dir, master)
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line.rstrip("\n") for line in handle]
    except OSError:
        raise MediaError("ffmpeg wrote no master playlist") from None
    frame_rate = f"{info.frame_rate or DEFAULT_FRAME_RATE:.3f}"
    kept, variants, index = [], [], 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line.startswith("#EXT-X-STREAM-INF:"):
            if line.strip():
                kept.append(line)
            continue
        uri = lines[index] if index < len(lines) else ""
        index += 1
        found = attributes(line)
        if "RESOLUTION" not in found:
            continue  # the audio rendition's own variant: it is in the audio group
        if "FRAME-RATE" not in found:
            line += f",FRAME-RATE={frame_rate}"
        kept += [line, uri]
        width, _, height = found["RESOLUTION"].partition("x")
        variants.append({"uri": uri, "bandwidth": int(found["BANDWIDTH"]),
                         "average_bandwidth": int(found.get("AVERAGE-BANDWIDTH") or 0) or None,
                         "width": int(width), "height": int(height),
                         "codecs": found.get("CODECS"), "frame_rate": float(frame_rate)})
    if not variants:
        raise MediaError("ffmpeg's master playlist names no video rendition")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(kept) + "\n")
    return variants


def media_playlist(path: str) -> tuple[list[str], float]:
    """(segment file names, total seconds) of one media playlist."""
    segments, total_s = [], 0.0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if line.startswith("#EXTINF:"):
                total_s += float(line[len("#EXTINF:"):].split(",")[0])
            elif line and not line.startswith("#"):
                segments.append(line)
    return segments, total_s


def describe(out_dir: str, prefix_uri: str, variants: list[dict], has_audio: bool,
             master: str = MASTER, dash_manifest: str | None = None) -> dict:
    """What the job record says of a finished ladder under `prefix_uri`
    (`dash_manifest`: the name of its DASH manifest, if it has one)."""
    segments, duration_s = 0, 0.0
    for name in sorted(os.listdir(out_dir)):
        playlist = os.path.join(out_dir, name, PLAYLIST)
        if os.path.isfile(playlist):
            found, seconds = media_playlist(playlist)
            segments += len(found)
            duration_s = max(duration_s, seconds)
    size_bytes = sum(os.path.getsize(os.path.join(folder, name))
                     for folder, _dirs, names in os.walk(out_dir) for name in names)
    top = max(variants, key=lambda variant: variant["height"])
    master_uri = prefix_uri + master
    return {"kind": "hls", "uri": master_uri, "master_playlist": master_uri,
            "renditions": len(variants), "segments": segments, "size_bytes": size_bytes,
            "duration_s": round(duration_s, 3), "container": "hls", "video_codec": "h264",
            "audio_codec": "aac" if has_audio else None, "width": top["width"],
            "height": top["height"], "bitrate": top["average_bandwidth"] or top["bandwidth"],
            "variants": [{**variant, "uri": prefix_uri + variant["uri"]} for variant in variants],
            "dash_manifest": prefix_uri + dash_manifest if dash_manifest else None}
