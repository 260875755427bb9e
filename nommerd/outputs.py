"""A job's several outputs from one download and one decode of the source.

Options in the outputs form (core.outputs) become:

- one ffmpeg process for every one-pass file output, every HLS ladder and
  every sprite: the source is opened and decoded once, and each output has
  its own encoders, filters and muxer (a ladder splits the decoded video in
  a filter graph, one scaler per rendition; a sprite is one more branch of
  the graph, nommerd.thumbnails);
- then one ffmpeg per two-pass output (its two passes, as a single-output
  job runs them): a first pass analyses a whole encode before the second
  writes, so it cannot share a process with outputs written in one go.

Every output is written under work_dir/out/<index>/, so the size cap
watches them all together and errors name the output ("outputs[1]/...").
A failure of any output fails the job.
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable

from core.errors import MediaError
from core.interfaces import OutputFile
from core.media import MediaInfo, probe
from core.outputs import (PER_OUTPUT_INPUT_OPTIONS, dash_manifest_name, master_name,
                          sprite_track_name)
from core.storage.content_types import content_type_for
from core.settings import Settings
from nommerd import hls, thumbnails
from nommerd.ffmpeg import (FFmpegRunner, _flags, _seek_in_seconds, build_pass_argvs,
                            output_name)

_FFMPEG_OUTPUT = re.compile(r"out#(\d+)")


@dataclasses.dataclass
class Output:
    """One output of the job, as the encoder works on it."""

    index: int
    destination: str
    kind: str             # "file", "hls" or "sprite"
    local_dir: str        # work_dir/out/<index>
    passes: list          # a file output's passes (wire form); [] for the others
    hls: dict | None = None
    sprite: dict | None = None
    variants: list = dataclasses.field(default_factory=list)
    geometry: thumbnails.SpriteGeometry | None = None

    @property
    def where(self) -> str:
        return f"outputs[{self.index}]"

    @property
    def local_path(self) -> str:
        """A file output's file."""
        return os.path.join(self.local_dir, output_name(self.destination))

    @property
    def master(self) -> str:
        """An hls output's master playlist file name."""
        return master_name(self.hls or {})

    @property
    def dash_manifest(self) -> str | None:
        """An hls output's DASH manifest file name, when it asked for one."""
        return dash_manifest_name(self.hls) if self.hls and self.hls.get("dash") else None

    @property
    def sprite_base(self) -> str:
        """What a sprite's track and sheets are named after."""
        return sprite_track_name(self.sprite or {})

    @property
    def shared(self) -> bool:
        """Written by the one ffmpeg that all one-pass outputs share."""
        return self.kind != "file" or len(self.passes) == 1


def plan(job_options: dict, work_dir: str) -> list[Output]:
    """The outputs of `job_options` (the outputs form), each with its folder made."""
    outputs = []
    for index, spec in enumerate(job_options["outputs"]):
        local_dir = os.path.join(work_dir, "out", str(index))
        os.makedirs(local_dir, exist_ok=True)
        outputs.append(Output(index, spec["destination"], spec["kind"], local_dir,
                              spec.get("options") or [], spec.get("hls"), spec.get("sprite")))
    return outputs


def path_names(outputs: list[Output]) -> dict[str, str]:
    """Local folders -> the names errors show for them."""
    return {output.local_dir + os.sep: output.where + "/" for output in outputs}


def shared_argv(ffmpeg: str, outputs: list[Output], source_path: str, info: MediaInfo,
                settings: Settings) -> list[str]:
    """The one ffmpeg command that writes every shared output of `outputs`
    (a sprite's layout is settled here, from the source and the settings).
    Raises MediaError when the source cannot make one of them."""
    tolerate_decode_errors = settings.tolerate_decode_errors
    argv = [ffmpeg, "-hide_banner", "-nostdin", "-y", "-nostats", "-progress", "pipe:1"]
    if not tolerate_decode_errors:
        argv.append("-xerror")
    argv += ["-protocol_whitelist", "file", "-f", info.demuxer, "-i", source_path]
    graphs, per_output = [], []
    for output in outputs:
        if output.kind == "hls":
            try:
                graph, args = hls.ladder_args(output.hls, info, output.local_dir,
                                              f"o{output.index}")
            except MediaError as exc:
                raise MediaError(f"{output.where}: {exc}") from None
            graphs.append(graph)
            per_output.append(args)
        elif output.kind == "sprite":
            output.geometry = _sprite_geometry(output, info, settings)
            graph, args = thumbnails.sprite_ffmpeg(output.geometry, "[0:v:0]",
                                                   f"[o{output.index}sprite]", output.local_dir,
                                                   output.sprite_base)
            graphs.append(graph)
            per_output.append(args)
        else:
            per_output.append(_file_args(output, info))
    if graphs:
        argv += ["-filter_complex", ";".join(graphs)]
    for args in per_output:
        argv += args
    return argv


def _sprite_geometry(output: Output, info: MediaInfo,
                     settings: Settings) -> thumbnails.SpriteGeometry:
    if info.codec("video") is None:
        raise MediaError(f"{output.where}: a sprite needs a source with video")
    try:
        return thumbnails.SpriteGeometry.from_settings(
            settings, info.duration_s or 0.0, info.display_width or 0, info.display_height or 0,
            (output.sprite or {}).get("interval_s"))
    except ValueError as exc:
        raise MediaError(f"{output.where}: {exc}") from None


def _file_args(output: Output, info: MediaInfo) -> list[str]:
    options = output.passes[0]
    # The input is shared: this output's own seek and length become output
    # options (frame-accurate, cut from the shared decode). Others are
    # refused at submit.
    moved = [[key, value] for key, value in
             _seek_in_seconds(options.get("infile_options") or [], info.duration_s)
             if key in PER_OUTPUT_INPUT_OPTIONS]
    args = _flags(moved) + _flags(options.get("outfile_options") or [])
    if options.get("move_atom_to_front"):
        args += ["-movflags", "+faststart"]
    return args + [output.local_path]


def encode(ffmpeg: str, runner: FFmpegRunner, outputs: list[Output], source_path: str,
           info: MediaInfo, work_dir: str, settings: Settings,
           on_progress: Callable[[int], None]) -> None:
    """Write every output: the shared run first, then each two-pass output.

    Progress spans the whole job (the shared run weighs as one encode per
    output in it, a two-pass output as two). Raises MediaError naming the
    output that failed, EncodeCancelled when stopped.
    """
    shared = [output for output in outputs if output.shared]
    alone = [output for output in outputs if not output.shared]
    runs: list[tuple[list[list[str]], list[Output], int]] = []
    if shared:
        runs.append(([shared_argv(ffmpeg, shared, source_path, info, settings)],
                     shared, len(shared)))
    for output in alone:
        argvs = build_pass_argvs(ffmpeg, {"options": output.passes}, source_path, info.demuxer,
                                 output.local_path, output.local_dir,
                                 settings.tolerate_decode_errors, duration_s=info.duration_s)
        runs.append((argvs, [output], len(argvs)))
    total = sum(weight for _argvs, _outs, weight in runs)
    done = 0
    out_root = os.path.join(work_dir, "out")
    for argvs, members, weight in runs:
        for number, argv in enumerate(argvs):
            share = weight / len(argvs)
            span = (int(100 * (done + number * share) / total),
                    int(100 * (done + (number + 1) * share) / total))
            try:
                runner.run(argv, info.duration_s, on_progress, span, output_path=out_root,
                           time_scale=len(members))
            except MediaError as exc:
                raise MediaError(f"{_failed(runner.last_stderr, members)}: {exc}") from None
        done += weight
    for output in outputs:
        if output.kind == "hls":
            output.variants = hls.fix_master(output.local_dir, info, output.master)
            if output.dash_manifest:
                _package_dash(ffmpeg, runner, output, info, out_root)
        elif output.kind == "sprite":
            thumbnails.write_sprite_vtt(output.geometry, output.local_dir, output.sprite_base)


def _package_dash(ffmpeg: str, runner: FFmpegRunner, output: Output, info: MediaInfo,
                  out_root: str) -> None:
    argv = hls.dash_argv(ffmpeg, output.hls, output.local_dir, output.variants,
                         info.codec("audio") is not None)
    try:
        runner.run(argv, info.duration_s, output_path=out_root)
    except MediaError as exc:
        raise MediaError(f"{output.where}: packaging for DASH: {exc}") from None


def _failed(stderr: str, members: list[Output]) -> str:
    """Which output a failed run's stderr blames ("out#1" is ffmpeg's second output)."""
    if len(members) == 1:
        return members[0].where
    errors = [line for line in stderr.splitlines() if "rror" in line]
    named = [output for output in members
             if any(output.local_dir + os.sep in line for line in errors)]
    if len(named) == 1:
        return named[0].where
    found = [int(number) for line in errors for number in _FFMPEG_OUTPUT.findall(line)]
    if found and len(set(found)) == 1 and found[0] < len(members):
        return members[found[0]].where
    return ", ".join(output.where for output in members)


def upload_files(output: Output) -> list[OutputFile]:
    """The files of an output written under a prefix, in upload order: a
    ladder's segments and init files, then its media playlists, then its
    master playlist; a sprite's sheets, then its track."""
    if output.kind == "sprite":
        return thumbnails.sprite_outputs(output.geometry, output.local_dir,
                                         output.destination, output.sprite_base)[0]
    media, playlists = [], []
    for folder, _dirs, names in sorted(os.walk(output.local_dir)):
        for name in sorted(names):
            path = os.path.join(folder, name)
            key = os.path.relpath(path, output.local_dir).replace(os.sep, "/")
            if key in (output.master, output.dash_manifest):
                continue
            one = OutputFile(path, key, content_type_for(name), last=name.endswith(".m3u8"))
            (playlists if one.last else media).append(one)
    manifests = [output.master] + ([output.dash_manifest] if output.dash_manifest else [])
    return media + playlists + [OutputFile(os.path.join(output.local_dir, name), name,
                                           content_type_for(name), last=True)
                                for name in manifests]


def describe_file(ffmpeg: str, path: str, uri: str, passes: list) -> dict:
    """What the job record says of one written file (probed; a file the
    probe cannot read is described by its size alone)."""
    size_bytes = os.path.getsize(path)
    described = {"kind": "file", "uri": uri, "size_bytes": size_bytes, "duration_s": None,
                 "container": _container(path, passes), "video_codec": None,
                 "audio_codec": None, "width": None, "height": None, "bitrate": None}
    try:
        info = probe(ffmpeg, path)
    except MediaError:
        return _with_codecs(described)
    bitrate = info.bit_rate
    if not bitrate and info.duration_s:
        bitrate = round(size_bytes * 8 / info.duration_s)
    described.update(
        duration_s=round(info.duration_s, 3) if info.duration_s else None,
        video_codec=info.codec("video"), audio_codec=info.codec("audio"),
        width=info.display_width, height=info.display_height, bitrate=bitrate)
    return _with_codecs(described)


def _with_codecs(described: dict) -> dict:
    """`described` with "codecs": its video and audio codecs as one list."""
    codecs = [described.get(key) for key in ("video_codec", "audio_codec")]
    return {**described, "codecs": [codec for codec in codecs if codec]}


def _container(path: str, passes: list) -> str:
    for key, value in (passes[-1].get("outfile_options") or [] if passes else []):
        if key == "f":
            return value
    return os.path.splitext(path)[1].lstrip(".").lower() or "unknown"


def describe(ffmpeg: str, output: Output, info: MediaInfo) -> dict:
    if output.kind == "sprite":
        described = thumbnails.sprite_outputs(output.geometry, output.local_dir,
                                              output.destination, output.sprite_base)[1]
        return _with_codecs({**described, "video_codec": "mjpeg", "audio_codec": None,
                             "size_bytes": _folder_bytes(output.local_dir)})
    if output.kind == "hls":
        return _with_codecs(hls.describe(output.local_dir, output.destination, output.variants,
                                         info.codec("audio") is not None, output.master,
                                         output.dash_manifest))
    return describe_file(ffmpeg, output.local_path, output.destination, output.passes)


def _folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(parent, name))
               for parent, _dirs, names in os.walk(folder) for name in names)
