"""The whole system against hostile media and options: a truncated source,
an encode that floods the disk or never ends. Each ends ERROR naming why;
a normal job still FINISHES after each."""
from __future__ import annotations

import pytest

from core.app.local_system import LocalSystem
from tests.fixtures.system_jobs import ONE_ENCODER, small_clip, wait_ended

pytestmark = pytest.mark.timeout(300)

SETTINGS = {
    **ONE_ENCODER,
    "NOMMER_MAX_OUTPUT_BYTES": "20000000",
    # A pass may take 2 x the source's duration + 6 s: plenty for a small
    # clip, far too little for a 4K veryslow encode.
    "NOMMER_ENCODE_TIME_FACTOR": "2",
    "NOMMER_ENCODE_TIME_BASE_S": "6",
}


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    with LocalSystem(tmp_path_factory.mktemp("media"), SETTINGS) as running:
        yield running


@pytest.fixture(scope="module")
def clip(system):
    return small_clip(system)


def run_job(system, source, outfile_options, suffix=".mp4") -> dict:
    out = system.media_dir / "out" / f"{source.stem}-{len(outfile_options)}{suffix}"
    job_id = system.client.submit(source.as_uri(), out.as_uri(),
                                  [{"infile_options": [], "outfile_options": outfile_options}])
    return wait_ended(system, job_id)


def assert_normal_job_finishes(system, clip):
    job = run_job(system, clip, [["c:v", "libx264"], ["preset", "ultrafast"], ["c:a", "aac"]])
    assert job["state"] == "FINISHED", job["state_details"]


def test_truncated_source_ends_error(system, clip):
    truncated = clip.with_name("truncated.mp4")
    data = clip.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    job = run_job(system, truncated, [["c:v", "libx264"], ["preset", "ultrafast"]])
    assert job["state"] == "ERROR"
    assert "Invalid data" in job["state_details"] or "corrupt" in job["state_details"]
    assert_normal_job_finishes(system, clip)


def test_output_flood_is_stopped_at_the_size_cap(system, clip):
    job = run_job(system, clip, [["c:v", "rawvideo"], ["pix_fmt", "yuv420p"],
                                 ["s", "3840x2160"], ["r", "240"], ["an", None]], ".mkv")
    assert job["state"] == "ERROR"
    assert "max_output_bytes" in job["state_details"]
    assert_normal_job_finishes(system, clip)


def test_encode_past_its_time_limit_is_stopped(system, clip):
    job = run_job(system, clip, [["c:v", "libx264"], ["preset", "placebo"],
                                 ["s", "3840x2160"], ["an", None]])
    assert job["state"] == "ERROR"
    assert "encode_time_factor" in job["state_details"]
    assert_normal_job_finishes(system, clip)
