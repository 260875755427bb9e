"""JSON notifications through the whole running system (API, scheduler and
an encoder under supervisord): a real encode notified, signed, to a receiver
on loopback that checks each signature with its own HMAC; sent again on
request; given up and listed on the job."""
from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest

from core import webhooks
from core.app.local_system import LocalSystem, wait_for
from tests.fixtures.hostile_http import HostileServer
from tests.fixtures.system_jobs import ONE_ENCODER, small_clip, wait_ended

pytestmark = pytest.mark.timeout(300)

SECRET = "system-whsec-0123456789"
SETTINGS = {**ONE_ENCODER, "NOMMER_WEBHOOK_SECRET": SECRET, "NOMMER_NOTIFY_RETRY_FOR_S": "3"}


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    with LocalSystem(tmp_path_factory.mktemp("webhooks"), SETTINGS) as running:
        yield running


@pytest.fixture(scope="module")
def receiver():
    server = HostileServer()
    yield server
    server.close()


def passes():
    return [{"infile_options": [], "outfile_options": [["c:v", "libx264"],
                                                       ["preset", "ultrafast"], ["c:a", "aac"]]}]


def submit_json(system: LocalSystem, url: str, name: str) -> str:
    clip = small_clip(system)
    out = system.media_dir / "out" / f"{name}-{time.monotonic_ns()}.mp4"
    return system.client.submit(clip.as_uri(), out.as_uri(), passes(), url,
                                notify_format="json")


def notifications(receiver: HostileServer, path: str, job_id: str, state: str) -> list[dict]:
    found = []
    for request in receiver.received(path):
        body = json.loads(request["body"])
        if body["id"] == job_id and body["state"] == state:
            found.append({**request, "json": body})
    return found


def check_signature(request: dict) -> None:
    """The receiver's own check: HMAC-SHA256 of "<t>.<body>", t within 5 minutes."""
    fields = dict(i.split("=", 1) for i in request["headers"]["Nommer-Signature"].split(","))
    expected = hmac.new(SECRET.encode(), f"{fields['t']}.".encode() + request["body"],
                        hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, fields["v1"])
    assert abs(request["at"] - int(fields["t"])) < 300


def test_a_finished_encode_is_notified_as_signed_json_and_again_on_request(system, receiver):
    job_id = submit_json(system, receiver.url("/ok"), "json")
    assert wait_ended(system, job_id)["state"] == "FINISHED"

    finished = wait_for(lambda: notifications(receiver, "/ok", job_id, "FINISHED"), 20,
                        what="the FINISHED notification")[0]
    check_signature(finished)
    webhooks.verify(SECRET, finished["headers"]["Nommer-Signature"], finished["body"],
                    now=time.time())
    assert finished["headers"]["Content-Type"] == "application/json"
    body = finished["json"]
    assert body["progress"] == 100 and body["attempts"] == 1
    assert body["destination"].endswith(".mp4") and body["source"].endswith("clip.mp4")
    job = system.client.job(job_id)
    assert body["outputs"] == job.get("outputs")  # null, or the outputs once recorded
    sent = {json.loads(r["body"])["state"] for r in receiver.received("/ok")
            if json.loads(r["body"])["id"] == job_id}
    assert {"PENDING", "DOWNLOADING", "ENCODING", "UPLOADING", "FINISHED"} <= sent

    assert system.client.act(job_id, "notify")["state"] == "FINISHED"
    again = wait_for(lambda: (lambda f: f[1:] or None)(
        notifications(receiver, "/ok", job_id, "FINISHED")), 20, what="the re-sent FINISHED")
    check_signature(again[0])
    assert again[0]["json"]["changed_at"] > body["changed_at"]


def test_notifications_given_up_are_listed_on_the_finished_job(system, receiver):
    # The receiver answers 404 to everything sent to this path.
    job_id = submit_json(system, receiver.url("/gone"), "given-up")
    assert wait_ended(system, job_id)["state"] == "FINISHED"

    job = wait_for(lambda: (lambda j: j if any(g["state"] == "FINISHED"
                                               for g in j["notifications_given_up"]) else None)(
        system.client.job(job_id)), 60, what="the FINISHED give-up listed")
    states = [g["state"] for g in job["notifications_given_up"]]
    # Those given up while the job ran are listed once it has ended, too.
    assert states[0] == "PENDING" and states[-1] == "FINISHED"
    assert all("HTTP 404" in g["reason"] and g["attempts"] >= 1
               for g in job["notifications_given_up"])
    for request in receiver.received("/gone"):
        check_signature(request)
