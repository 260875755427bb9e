"""nommerd.thumbnails: sprite sheets and their WebVTT track, made by real
ffmpeg from a clip whose colour changes every two seconds."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.media_checks import describe
from core.media import ffmpeg_path
from core.settings import Settings
from core.storage.file import FileStorage
from nommerd.thumbnails import (SpriteGeometry, sprite_ffmpeg, sprite_geometry, sprite_outputs,
                                vtt_text, write_sprite_vtt)

pytestmark = pytest.mark.timeout(120)

# One colour per two seconds; the last segment is one second long, so the
# duration (9 s) is not a whole number of intervals.
SEGMENTS = [("red", (255, 0, 0), 2), ("lime", (0, 255, 0), 2), ("blue", (0, 0, 255), 2),
            ("yellow", (255, 255, 0), 2), ("white", (255, 255, 255), 1)]
DURATION_S = 9.0
CUE = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})$")


@pytest.fixture(scope="module")
def ffmpeg() -> str:
    return ffmpeg_path(Settings())


@pytest.fixture(scope="module")
def colour_clip(ffmpeg, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("clips") / "colours.mp4")
    argv = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
    for name, _rgb, seconds in SEGMENTS:
        argv += ["-f", "lavfi", "-i", f"color=c={name}:s=320x180:r=25:d={seconds}"]
    inputs = "".join(f"[{index}]" for index in range(len(SEGMENTS)))
    argv += ["-filter_complex", f"{inputs}concat=n={len(SEGMENTS)}:v=1:a=0[v]", "-map", "[v]",
             "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", path]
    subprocess.run(argv, check=True, timeout=60)
    return path


def _encode(ffmpeg: str, clip: str, geometry: SpriteGeometry, out_dir: Path) -> None:
    """The sprite as one output beside an MP4 rendition, from one decode."""
    graph, args = sprite_ffmpeg(geometry, "[sprite_in]", "[sprite_out]", str(out_dir))
    argv = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-i", clip,
            "-filter_complex", f"[0:v]split=2[sprite_in][mp4_in];{graph}",
            *args, "-map", "[mp4_in]", "-c:v", "libx264", "-preset", "ultrafast",
            str(out_dir / "rendition.mp4")]
    subprocess.run(argv, check=True, timeout=60)


def _cues(text: str) -> list[tuple[float, float, str, tuple[int, ...]]]:
    """(start_s, end_s, sheet, (x, y, w, h)) of each cue."""
    lines = text.split("\n")
    assert lines[0] == "WEBVTT" and lines[1] == ""
    cues = []
    for timing, target in zip(lines[2::3], lines[3::3]):
        match = CUE.match(timing)
        assert match, timing
        parts = [int(value) for value in match.groups()]
        start = parts[0] * 3600 + parts[1] * 60 + parts[2] + parts[3] / 1000
        end = parts[4] * 3600 + parts[5] * 60 + parts[6] + parts[7] / 1000
        sheet, _, fragment = target.partition("#xywh=")
        cues.append((start, end, sheet, tuple(int(v) for v in fragment.split(","))))
    return cues


def _mean_colour(ffmpeg: str, image: Path, x: int, y: int, w: int, h: int) -> tuple[int, ...]:
    """The average RGB of the box's inner half (away from JPEG's edge bleeding)."""
    crop = f"crop={w // 2}:{h // 2}:{x + w // 4}:{y + h // 4},scale=1:1:flags=area"
    done = subprocess.run([ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-i",
                           str(image), "-vf", crop, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                          capture_output=True, check=True, timeout=30)
    return tuple(done.stdout)


@pytest.fixture(scope="module")
def two_sheets(ffmpeg, colour_clip, tmp_path_factory):
    """Five tiles, two columns, at most four tiles a sheet: two sheets of 2x2."""
    out_dir = tmp_path_factory.mktemp("sprite")
    geometry = sprite_geometry(DURATION_S, 320, 180, interval_s=2, tile_width=160, columns=2,
                               max_tiles_per_sheet=4)
    _encode(ffmpeg, colour_clip, geometry, out_dir)
    write_sprite_vtt(geometry, str(out_dir))
    return geometry, out_dir


def test_each_sheet_is_columns_tiles_wide_and_rows_tiles_tall(ffmpeg, two_sheets):
    geometry, out_dir = two_sheets
    assert (geometry.tiles, geometry.columns, geometry.rows, geometry.sheets) == (5, 2, 2, 2)
    assert (geometry.tile_width, geometry.tile_height) == (160, 90)
    assert sorted(path.name for path in out_dir.glob("*.jpg")) == [
        "sprite_000.jpg", "sprite_001.jpg"]
    for sheet in out_dir.glob("*.jpg"):
        found = describe(ffmpeg, str(sheet))
        assert (found.width, found.height) == (2 * 160, 2 * 90)
    assert describe(ffmpeg, str(out_dir / "rendition.mp4")).duration_s == pytest.approx(9, abs=0.1)


def test_the_track_covers_the_whole_duration_without_gaps(two_sheets):
    _geometry, out_dir = two_sheets
    cues = _cues((out_dir / "sprite.vtt").read_text())

    assert [(start, end) for start, end, _, _ in cues] == [
        (0, 2), (2, 4), (4, 6), (6, 8), (8, 9)]
    assert all(end > start for start, end, _, _ in cues)


def test_every_tile_lies_inside_its_sheet_and_shows_the_frame_of_its_time(ffmpeg, two_sheets):
    _geometry, out_dir = two_sheets
    cues = _cues((out_dir / "sprite.vtt").read_text())

    assert [sheet for _, _, sheet, _ in cues] == ["sprite_000.jpg"] * 4 + ["sprite_001.jpg"]
    for (start, _end, sheet, (x, y, w, h)), (name, rgb, _) in zip(cues, SEGMENTS):
        width, height = 320, 180
        assert 0 <= x and x + w <= width and 0 <= y and y + h <= height
        found = _mean_colour(ffmpeg, out_dir / sheet, x, y, w, h)
        assert all(abs(a - b) <= 40 for a, b in zip(found, rgb)), (start, name, found)


def test_a_short_source_makes_one_sheet_named_plainly(ffmpeg, colour_clip, tmp_path):
    geometry = sprite_geometry(DURATION_S, 320, 180, interval_s=2)
    assert (geometry.columns, geometry.rows, geometry.sheets) == (5, 1, 1)

    _encode(ffmpeg, colour_clip, geometry, tmp_path)

    assert [path.name for path in tmp_path.glob("*.jpg")] == ["sprite.jpg"]
    found = describe(ffmpeg, str(tmp_path / "sprite.jpg"))
    assert (found.width, found.height) == (5 * 160, 90)
    assert _mean_colour(ffmpeg, tmp_path / "sprite.jpg", 4 * 160, 0, 160, 90)[0] > 215


def test_the_upload_set_puts_the_track_last_and_describes_the_sprite(two_sheets, tmp_path):
    geometry, out_dir = two_sheets
    root = tmp_path / "media"
    prefix = (root / "thumbs").as_uri() + "/"

    files, description = sprite_outputs(geometry, str(out_dir), prefix)
    FileStorage([root]).upload_files(files, prefix)

    assert [(f.key, f.content_type, f.last) for f in files] == [
        ("sprite_000.jpg", "image/jpeg", False), ("sprite_001.jpg", "image/jpeg", False),
        ("sprite.vtt", "text/vtt", True)]
    assert description == {
        "kind": "sprite", "uri": prefix + "sprite_000.jpg", "vtt": prefix + "sprite.vtt",
        "tiles": 5, "interval_s": 2, "sheets": [prefix + "sprite_000.jpg",
                                                prefix + "sprite_001.jpg"],
        "tile_width": 160, "tile_height": 90, "columns": 2, "rows": 2}
    assert (root / "thumbs" / "sprite.vtt").read_text() == (out_dir / "sprite.vtt").read_text()


def test_a_feature_film_makes_sheets_of_a_hundred_tiles():
    geometry = SpriteGeometry.from_settings(Settings(), 2 * 3600 + 5.5, 1920, 1080)

    assert (geometry.interval_s, geometry.tiles, geometry.columns, geometry.rows) == (10, 721, 10, 10)
    assert geometry.sheets == 8 and geometry.sheet_size == (1600, 900)
    cues = _cues(vtt_text(geometry))
    # The eighth sheet holds tiles 700..720: 719 ends its second row, 720 starts the third.
    assert cues[-2][2:] == ("sprite_007.jpg", (1440, 90, 160, 90))
    assert cues[-1] == (7200, 7205.5, "sprite_007.jpg", (0, 180, 160, 90))
    assert all(a[1] == b[0] for a, b in zip(cues, cues[1:]))


@pytest.mark.parametrize("width, height, tile_height", [(1080, 1920, 284), (720, 576, 128),
                                                        (1998, 1080, 86)])
def test_tile_height_keeps_the_aspect_and_is_even(width, height, tile_height):
    assert sprite_geometry(60, width, height).tile_height == tile_height


@pytest.mark.parametrize("duration_s", [None, 0, -1, float("nan")])
def test_a_sprite_needs_a_duration(duration_s):
    with pytest.raises(ValueError, match="duration"):
        sprite_geometry(duration_s, 320, 180)
