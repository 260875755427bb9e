"""GET /metrics on the whole running system: the encoders', scheduler's and
scaler's figures reach one scrape through the store, and move as a job runs."""
from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.app.local_system import LocalSystem, free_port, wait_for
from core.media import ffmpeg_path, make_sample_clip
from tests.system.test_system import FAST, passes, wait_state

pytestmark = pytest.mark.timeout(240)


def scrape(system) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one scrape of `system`'s API
    (anything with an api_port on 127.0.0.1), parsed by prometheus_client."""
    url = f"http://127.0.0.1:{system.api_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain; version=")
        text = answer.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    # Notifications are given up after 1 s, so a failing receiver is given up
    # within the test.
    with LocalSystem(tmp_path_factory.mktemp("metrics"),
                     {**FAST, "NOMMER_NOTIFY_RETRY_FOR_S": "1"}) as running:
        yield running


def test_one_scrape_shows_the_whole_system_moving_as_a_job_runs(system):
    clip = system.media_dir / "in" / "clip.mp4"
    clip.parent.mkdir(parents=True, exist_ok=True)
    make_sample_clip(ffmpeg_path(system.settings), str(clip), duration_s=2, size="320x240")
    out = system.media_dir / "out" / "metrics.mp4"
    before = scrape(system)
    assert before[("nommer_jobs", (("state", "FINISHED"),))] == 0
    assert before[("nommer_download_bytes_total", ())] == 0
    assert before[("nommer_queue_depth", ())] == 0

    # Nothing listens on this port: every notification of the job fails.
    refusing = f"http://127.0.0.1:{free_port()}/hook"
    job_id = system.client.submit(clip.as_uri(), out.as_uri(), passes(), notify_url=refusing)
    assert wait_state(system, job_id, {"FINISHED", "ERROR"})["state"] == "FINISHED"

    def settled():
        now = scrape(system)
        return now if now.get(("nommer_notification_give_ups_total", ()), 0) >= 1 else None

    after = wait_for(settled, 60, what="a notification given up")
    assert after[("nommer_jobs", (("state", "FINISHED"),))] == 1
    assert after[("nommer_download_bytes_total", ())] == clip.stat().st_size
    assert after[("nommer_upload_bytes_total", ())] == out.stat().st_size
    libx264 = (("kind", "libx264"),)
    assert after[("nommer_dispatch_latency_seconds_count", libx264)] == 1
    assert after[("nommer_encode_duration_seconds_count", libx264)] == 1
    assert 0 < after[("nommer_encode_duration_seconds_sum", libx264)] < 60
    assert after[("nommer_encode_duration_seconds_bucket", libx264 + (("le", "+Inf"),))] == 1
    assert after[("nommer_notification_attempts_total", ())] >= 1
    assert after[("nommer_notification_failures_total", ())] >= 1
    assert after[("nommer_scaler_decisions_total", (("action", "launch"),))] >= 1
    assert after[("nommer_scaler_encoders_launched_total", ())] >= 1
    encoders = sum(value for (name, _), value in after.items() if name == "nommer_encoders")
    assert encoders >= 1
