"""The whole system against hostile sources and receivers (tests/fixtures/
hostile_http.py): nothing they do stops the scheduler, pins an encoder,
fakes a success or reaches inside; a normal job still FINISHES after each."""
from __future__ import annotations

import time
from datetime import datetime

import pytest

from core.app.local_system import LocalSystem, wait_for
from tests.fixtures.hostile_http import HostileServer
from tests.fixtures.system_jobs import ONE_ENCODER, small_clip, wait_ended

pytestmark = pytest.mark.timeout(300)

SETTINGS = {
    **ONE_ENCODER,
    "NOMMER_NOTIFY_TIMEOUT_S": "5",
    "NOMMER_NOTIFY_RETRY_FOR_S": "4",
    "NOMMER_DOWNLOAD_MIN_BYTES_PER_S": "1000",
    "NOMMER_DOWNLOAD_RATE_WINDOW_S": "6",
}


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    with LocalSystem(tmp_path_factory.mktemp("hostile"), SETTINGS) as running:
        yield running


@pytest.fixture(scope="module")
def hostile():
    server = HostileServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def clip(system, hostile):
    path = small_clip(system)
    hostile.add("clip.mp4", path.read_bytes())
    return path


def passes():
    return [{"infile_options": [], "outfile_options": [["c:v", "libx264"],
                                                       ["preset", "ultrafast"], ["c:a", "aac"]]}]


def ended(system: LocalSystem, job_id: str, timeout_s: float = 90) -> dict:
    return wait_ended(system, job_id, timeout_s)


def submit(system, clip, source=None, name="out", notify_url=None) -> str:
    out = system.media_dir / "out" / f"{name}-{time.monotonic_ns()}.mp4"
    return system.client.submit(source or clip.as_uri(), out.as_uri(), passes(), notify_url)


def scheduler_pid(system) -> int:
    return system.supervisor().getProcessInfo("scheduler")["pid"]


def assert_normal_job_finishes_and_is_notified(system, clip, hostile):
    job_id = submit(system, clip, name="normal", notify_url=hostile.url("/ok"))
    job = ended(system, job_id)
    assert job["state"] == "FINISHED", job["state_details"]
    wait_for(lambda: any(r["form"].get("unique_id") == job_id
                         and r["form"].get("job_state") == "FINISHED"
                         for r in hostile.received("/ok")), 20,
             what="the normal job's FINISHED notification")


@pytest.mark.parametrize("notify_path", ["ipv6", "/bad-redirect"])
def test_unopenable_notify_url_is_given_up_and_the_scheduler_keeps_running(
        system, clip, hostile, notify_path):
    pid = scheduler_pid(system)
    url = "http://[2001:db8::cafe]/done" if notify_path == "ipv6" else hostile.url(notify_path)
    job_id = submit(system, clip, notify_url=url)
    assert ended(system, job_id)["state"] == "FINISHED"

    job = wait_for(lambda: (lambda j: j if "notification of FINISHED given up"
                            in j["state_details"] else None)(system.client.job(job_id)),
                   30, what="the give-up recorded on the job")
    assert job["state"] == "FINISHED"
    assert scheduler_pid(system) == pid, system.log_tail("scheduler")
    assert_normal_job_finishes_and_is_notified(system, clip, hostile)


def test_hung_receivers_do_not_delay_another_jobs_finished_notification(system, clip, hostile):
    hung = [HostileServer() for _ in range(16)]
    try:
        for server in hung:
            # Each ends ERROR at once (404); its notifications hang.
            submit(system, clip, source=hostile.url("/file/missing"),
                   notify_url=server.url("/hang"))
        wait_for(lambda: sum(len(s.received("/hang")) for s in hung) >= 16, 20,
                 what="every hung receiver holding a notification")

        job_id = submit(system, clip, name="during-hang", notify_url=hostile.url("/ok"))
        job = ended(system, job_id)
        assert job["state"] == "FINISHED", job["state_details"]
        finished_at = datetime.fromisoformat(job["updated_at"]).timestamp()
        arrival = wait_for(lambda: next((r["at"] for r in hostile.received("/ok")
                                         if r["form"].get("unique_id") == job_id
                                         and r["form"].get("job_state") == "FINISHED"), None),
                           20, what="the FINISHED notification")
        print(f"FINISHED notification {arrival - finished_at:.2f} s after the change")
        assert arrival - finished_at < 2.0
    finally:
        for server in hung:
            server.close()


def test_dripping_source_ends_error_and_frees_the_encoder(system, clip, hostile):
    hostile.add("big.bin", b"\0" * 10_000_000)
    job_id = submit(system, clip, source=hostile.url("/drip/big.bin"))
    job = ended(system, job_id, timeout_s=60)
    assert job["state"] == "ERROR"
    assert "too slow" in job["state_details"]
    assert_normal_job_finishes_and_is_notified(system, clip, hostile)


def test_cancel_stops_a_dripping_download_within_seconds(system, clip, hostile):
    hostile.add("slow.bin", b"\0" * 10_000_000)
    closed_before = len(hostile.drips_closed)
    job_id = submit(system, clip, source=hostile.url("/drip/slow.bin"))
    wait_for(lambda: system.client.job(job_id)["state"] == "DOWNLOADING", 60,
             what="the download to start")
    cancelled_at = time.time()
    system.client.cancel(job_id)

    closed_at = wait_for(lambda: hostile.drips_closed[closed_before:], 15,
                         what="the encoder to hang up")[0]
    assert closed_at - cancelled_at < 5.0
    assert system.client.job(job_id)["state"] == "CANCELLED"
    assert_normal_job_finishes_and_is_notified(system, clip, hostile)


def test_source_shorter_than_its_content_length_ends_error(system, clip, hostile):
    job_id = submit(system, clip, source=hostile.url("/short/clip.mp4"))
    job = ended(system, job_id)
    assert job["state"] == "ERROR"
    assert "Content-Length" in job["state_details"]
    assert_normal_job_finishes_and_is_notified(system, clip, hostile)


@pytest.mark.parametrize("to", ["http://169.254.169.254/latest/meta-data/",
                                "http://[fe80::1]/x", "api"])
def test_source_redirect_inside_is_refused(system, clip, hostile, to):
    if to == "api":
        to = f"http://127.0.0.1:{system.api_port}/health"
    job_id = submit(system, clip, source=hostile.url(f"/redirect?to={to}"))
    job = ended(system, job_id)
    assert job["state"] == "ERROR"
    assert "refused" in job["state_details"]
    assert_normal_job_finishes_and_is_notified(system, clip, hostile)


def test_notification_redirected_to_the_api_cannot_cancel_a_job(system, clip, hostile):
    # The victim waits on the one encoder slot behind a slow download.
    hostile.add("victim.bin", b"\0" * 100_000)
    victim = submit(system, clip, source=hostile.url("/drip/victim.bin"))
    cancel_url = f"http://127.0.0.1:{system.api_port}/jobs/{victim}/cancel"
    attacker = submit(system, clip, notify_url=hostile.url(f"/redirect?to={cancel_url}"))
    wait_for(lambda: hostile.received("/redirect"), 20, what="the attacker's receiver asked")

    job = wait_for(lambda: (lambda j: j if "given up" in j["state_details"] else None)(
        system.client.job(attacker)), 90, what="the attacker's notification given up")
    assert "refused" in job["state_details"]
    assert system.client.job(victim)["state"] == "ERROR"  # too slow, not CANCELLED
