"""Sprite sheets with a WebVTT thumbnail track, for scrubbing in a player.

One tile every `interval_s` seconds of the source, `tile_width` pixels wide
(the height keeps the display aspect, rounded to even), `columns` tiles
across and as many rows as needed, up to `max_tiles_per_sheet` tiles per
image; a longer source makes several sheets. The track (WEBVTT) has one cue
per tile, back to back from 0 to the source's duration:

    WEBVTT

    00:00:00.000 --> 00:00:10.000
    sprite.jpg#xywh=0,0,160,90

The sprite is one more output of the job's single ffmpeg process: it takes
a labelled video stream of the shared -filter_complex (a branch of `split`)
and needs nothing else. Use, in this order:

    geometry = sprite_geometry(duration_s, width, height, interval_s=...)  # or
    geometry = SpriteGeometry.from_settings(settings, duration_s, width, height)
    graph, args = sprite_ffmpeg(geometry, "[sprite_in]", "[sprite_out]", out_dir)
    # graph joins the -filter_complex with ";" ("[0:v]split=2[a][sprite_in];" + graph),
    # args go after the other outputs' arguments; then ffmpeg runs.
    write_sprite_vtt(geometry, out_dir)
    files, description = sprite_outputs(geometry, out_dir, prefix_uri)
    storage.upload_files(files, prefix_uri)      # the sheets, then the .vtt (last)
    # description, for the job record's outputs:
    # {"kind": "sprite", "uri": <first sheet>, "vtt": <track>, "tiles": 18,
    #  "interval_s": 10.0, "sheets": [<every sheet>], "tile_width": 160,
    #  "tile_height": 90, "columns": 10, "rows": 2}

`width` and `height` are the source's display size (after rotation and
sample aspect ratio); `duration_s` is the video stream's duration. Files
are named after `base` ("sprite"): sprite.jpg for one sheet, else
sprite_000.jpg, sprite_001.jpg, ...; and sprite.vtt, whose cues name the
sheets relative to itself, so the set can sit under any prefix. `base` is
a plain file name (no folder).

Each tile is the first frame at or after its cue's start (timestamps
counted from the video's first frame), picked by `select`, so the number
of tiles is exactly ceil(duration / interval) and the track and the sheets
agree. A poster frame is the preset `poster-jpeg`, not this module.
"""
from __future__ import annotations

import dataclasses
import math
import os

from core.interfaces import OutputFile
from core.outputs import SPRITE_BASE
from core.settings import Settings
from core.storage.content_types import content_type_for

DEFAULT_BASE = SPRITE_BASE
# JPEG quality for ffmpeg's mjpeg encoder: 2 (best) .. 31; tiles are small and
# viewed in passing, 4 keeps a 1600x900 sheet around 100 KB.
JPEG_QUALITY = 4


@dataclasses.dataclass(frozen=True)
class SpriteGeometry:
    """How a source's sprite is laid out. Every sheet is columns*tile_width by
    rows*tile_height pixels (the last one padded with black)."""

    duration_s: float
    interval_s: float
    tile_width: int
    tile_height: int
    columns: int
    rows: int
    tiles: int

    @property
    def tiles_per_sheet(self) -> int:
        return self.columns * self.rows

    @property
    def sheets(self) -> int:
        return math.ceil(self.tiles / self.tiles_per_sheet)

    @property
    def sheet_size(self) -> tuple[int, int]:
        """(width, height) of each sheet in pixels."""
        return self.columns * self.tile_width, self.rows * self.tile_height

    @classmethod
    def from_settings(cls, settings: Settings, duration_s: float, width: int, height: int,
                      interval_s: float | None = None) -> "SpriteGeometry":
        """The geometry the settings ask for (sprite_*); `interval_s`, when
        given (a job's own option), replaces sprite_interval_s."""
        return sprite_geometry(duration_s, width, height,
                               interval_s=interval_s or settings.sprite_interval_s,
                               tile_width=settings.sprite_tile_width_px,
                               columns=settings.sprite_columns,
                               max_tiles_per_sheet=settings.sprite_max_tiles_per_sheet)


def sprite_geometry(duration_s: float, width: int, height: int, interval_s: float = 10.0,
                    tile_width: int = 160, columns: int = 10,
                    max_tiles_per_sheet: int = 100) -> SpriteGeometry:
    """The layout for a source of `duration_s` seconds shown at `width` x
    `height`. Sheets hold `columns` tiles across and as many rows as the
    tiles need, at most max_tiles_per_sheet // columns rows (at least one).
    Raises ValueError for a duration, size or setting that is not positive."""
    if not (duration_s and duration_s > 0 and math.isfinite(duration_s)):
        raise ValueError("a sprite needs the source's duration")
    if width <= 0 or height <= 0:
        raise ValueError("a sprite needs the source's width and height")
    if interval_s <= 0 or tile_width < 2 or columns < 1 or max_tiles_per_sheet < 1:
        raise ValueError("sprite interval, tile width, columns and tiles per sheet "
                         "must be positive")
    tile_width -= tile_width % 2
    tile_height = max(2, 2 * round(tile_width * height / width / 2))
    # In whole milliseconds, as the track states its times.
    tiles = max(1, math.ceil(_ms(duration_s) / _ms(interval_s)))
    columns = min(columns, tiles)
    rows = min(max(1, max_tiles_per_sheet // columns), math.ceil(tiles / columns))
    return SpriteGeometry(duration_s, interval_s, tile_width, tile_height, columns, rows, tiles)


def sheet_names(geometry: SpriteGeometry, base: str = DEFAULT_BASE) -> list[str]:
    """The sheets' file names, in tile order."""
    if geometry.sheets == 1:
        return [f"{base}.jpg"]
    return [f"{base}_{index:03d}.jpg" for index in range(geometry.sheets)]


def sprite_filter(geometry: SpriteGeometry) -> str:
    """The filter chain from decoded video to sheets: one frame per interval
    (the first at or after each cue's start, none at or past the duration),
    scaled to a tile, laid out in a grid."""
    interval = f"{_ms(geometry.interval_s) / 1000:.3f}"
    select = (f"lt(t,{_ms(geometry.duration_s) / 1000:.3f})*(isnan(prev_selected_t)"
              f"+gt(floor(t/{interval}),floor(prev_selected_t/{interval})))")
    return (f"setpts=PTS-STARTPTS,select='{select}',"
            f"scale={geometry.tile_width}:{geometry.tile_height},setsar=1,"
            f"tile={geometry.columns}x{geometry.rows}")


def sprite_ffmpeg(geometry: SpriteGeometry, input_label: str, output_label: str,
                  out_dir: str, base: str = DEFAULT_BASE) -> tuple[str, list[str]]:
    """(the filter graph segment "[in]chain[out]" to join into the shared
    -filter_complex, the output arguments that write the sheets into
    `out_dir`). Labels are given with their brackets ("[sprite_in]")."""
    graph = f"{input_label}{sprite_filter(geometry)}{output_label}"
    if geometry.sheets == 1:
        target = ["-update", "1", os.path.join(out_dir, f"{base}.jpg")]
    else:
        target = ["-start_number", "0", os.path.join(out_dir, f"{base}_%03d.jpg")]
    # passthrough: one image per sheet the tile filter makes, whatever its timestamp.
    return graph, ["-map", output_label, "-fps_mode", "passthrough", "-an", "-sn",
                   "-c:v", "mjpeg", "-q:v", str(JPEG_QUALITY), "-f", "image2", *target]


def vtt_text(geometry: SpriteGeometry, base: str = DEFAULT_BASE) -> str:
    """The WebVTT thumbnail track: one cue per tile, back to back from 0 to
    the duration (the last cue ends at the duration)."""
    names = sheet_names(geometry, base)
    step_ms, end_ms = _ms(geometry.interval_s), _ms(geometry.duration_s)
    cues = ["WEBVTT", ""]
    for tile in range(geometry.tiles):
        sheet, index = divmod(tile, geometry.tiles_per_sheet)
        row, column = divmod(index, geometry.columns)
        start, end = tile * step_ms, min((tile + 1) * step_ms, end_ms)
        cues += [f"{_timestamp(start)} --> {_timestamp(end)}",
                 f"{os.path.basename(names[sheet])}#xywh={column * geometry.tile_width},"
                 f"{row * geometry.tile_height},{geometry.tile_width},{geometry.tile_height}",
                 ""]
    return "\n".join(cues)


def write_sprite_vtt(geometry: SpriteGeometry, out_dir: str, base: str = DEFAULT_BASE) -> str:
    """Write `base`.vtt into `out_dir`; returns its path."""
    path = os.path.join(out_dir, f"{base}.vtt")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(vtt_text(geometry, base))
    return path


def sprite_outputs(geometry: SpriteGeometry, out_dir: str, prefix_uri: str,
                   base: str = DEFAULT_BASE) -> tuple[list[OutputFile], dict]:
    """(the files to upload under `prefix_uri`: the sheets, then the track
    marked last, so a player never reads cues naming a missing sheet;
    the output's description for the job record)."""
    names = sheet_names(geometry, base)
    vtt = f"{base}.vtt"
    files = [OutputFile(os.path.join(out_dir, name), name, content_type_for(name))
             for name in names]
    files.append(OutputFile(os.path.join(out_dir, vtt), vtt, content_type_for(vtt), last=True))
    description = {
        "kind": "sprite", "uri": prefix_uri + names[0], "vtt": prefix_uri + vtt,
        "tiles": geometry.tiles, "interval_s": geometry.interval_s,
        "sheets": [prefix_uri + name for name in names],
        "tile_width": geometry.tile_width, "tile_height": geometry.tile_height,
        "columns": geometry.columns, "rows": geometry.rows,
    }
    return files, description


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _timestamp(ms: int) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}"
