"""JSON notifications, end to end: the API (waitress on 127.0.0.1) and the
scheduler (`python -m feeder.scheduler`) on one SQLite store, POSTing to a
real receiver on loopback that checks every signature with its own HMAC."""
from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path

import pytest

from core import webhooks
from tests.process.test_api import Api, settings_for
from tests.process.test_scheduler import Schedulers, queued_bodies, wait_for

pytestmark = pytest.mark.timeout(90)

SECRET = "whsec-for-tests-0123456789"


def independent_check(request: dict, secret: str = SECRET) -> int:
    """The receiver's own check, written from the documented scheme alone:
    HMAC-SHA256 of "<t>.<body>", hex, compared in constant time; t recent."""
    header = request["headers"]["Nommer-Signature"]
    fields = dict(item.split("=", 1) for item in header.split(","))
    expected = hmac.new(secret.encode(), fields["t"].encode() + b"." + request["body"],
                        hashlib.sha256).hexdigest()
    assert hmac.compare_digest(fields["v1"], expected), header
    assert abs(request["at"] - int(fields["t"])) < 30
    return int(fields["t"])


@pytest.fixture
def api(tmp_path):
    running = Api(settings_for(tmp_path, webhook_secret=SECRET))
    yield running
    running.stop()


@pytest.fixture
def schedulers(tmp_path):
    built = Schedulers(Path(tmp_path) / "var")
    yield built
    built.stop_all()


def submit_json(api: Api, url: str, **changes) -> str:
    return api.submit(notify_url=url, notify_format="json", **changes)


def test_json_notification_carries_the_job_and_a_signature_the_receiver_can_check(
        api, receiver, schedulers):
    schedulers.start(webhook_secret=SECRET)
    signed = "https://media.example.com/in.mp4?X-Amz-Signature=0bad5ecre7"
    job_id = submit_json(api, receiver.url("/ok"), source_path=signed)

    request = wait_for(lambda: receiver.json_of(job_id), 15, "the PENDING notification",
                       schedulers)[0]
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["User-Agent"] == "media-nommer feederd"
    sent_at = independent_check(request)
    assert webhooks.verify(SECRET, request["headers"]["Nommer-Signature"], request["body"],
                           now=time.time()) == sent_at
    body = json.loads(request["body"])
    job = api.request("GET", f"/jobs/{job_id}").json["job"]
    assert body["id"] == job_id and body["state"] == "PENDING"
    assert body["source"] == "https://media.example.com/in.mp4?X-Amz-Signature=REDACTED"
    assert b"0bad5ecre7" not in request["body"]
    assert body["destination"] == job["destination"]
    assert body["outputs"] is None
    assert {k: body[k] for k in ("progress", "attempts", "created_at", "state_details")} == {
        "progress": 0, "attempts": 0, "created_at": job["created_at"], "state_details": ""}
    assert body["updated_at"] and body["changed_at"] and body["version"] >= 1
    assert job["notify_format"] == "json"


def test_a_changed_body_an_old_timestamp_or_another_secret_is_rejected(
        api, receiver, schedulers):
    schedulers.start(webhook_secret=SECRET)
    job_id = submit_json(api, receiver.url("/ok"))
    request = wait_for(lambda: receiver.json_of(job_id), 15, "the notification", schedulers)[0]
    header, body = request["headers"]["Nommer-Signature"], request["body"]
    sent_at = webhooks.verify(SECRET, header, body, now=time.time())

    tampered = body.replace(b'"PENDING"', b'"FINISHED"')
    assert tampered != body
    with pytest.raises(webhooks.SignatureError, match="does not match"):
        webhooks.verify(SECRET, header, tampered, now=time.time())
    with pytest.raises(webhooks.SignatureError, match="from now"):
        webhooks.verify(SECRET, header, body, now=sent_at + 301)
    with pytest.raises(webhooks.SignatureError, match="does not match"):
        webhooks.verify("another-secret", header, body, now=time.time())


def test_a_receiver_that_fails_twice_gets_a_freshly_signed_retry(api, receiver, schedulers):
    schedulers.start(webhook_secret=SECRET)
    job_id = submit_json(api, receiver.url("/flaky/2"))

    tries = wait_for(lambda: (lambda r: r if len(r) >= 3 else None)(receiver.json_of(job_id)),
                     30, "the third attempt", schedulers)
    assert [r["status"] for r in tries] == [500, 500, 200]
    times = [independent_check(r) for r in tries]
    # Backoff waits 1 s, then 2 s: each retry is signed at its own, later time.
    assert times[0] < times[2] and times == sorted(times)
    assert tries[0]["headers"]["Nommer-Signature"] != tries[2]["headers"]["Nommer-Signature"]
    assert {r["body"] for r in tries} == {tries[0]["body"]}


def test_given_up_notifications_are_listed_on_the_job_and_kept_across_retry(
        api, receiver, schedulers):
    schedulers.start(webhook_secret=SECRET, notify_retry_for_s=2)
    job_id = submit_json(api, receiver.url("/down"))
    wait_for(lambda: "PENDING: notification to" in schedulers.logs()
             and "given up" in schedulers.logs(), 20, "PENDING given up", schedulers)
    # Still PENDING: nothing is written to a job that has not ended.
    assert api.request("GET", f"/jobs/{job_id}").json["job"]["notifications_given_up"] == []

    assert api.request("POST", f"/jobs/{job_id}/cancel").status == 200
    job = wait_for(lambda: (lambda j: j if len(j["notifications_given_up"]) == 2 else None)(
        api.request("GET", f"/jobs/{job_id}").json["job"]), 30,
        "both give-ups listed", schedulers)
    given_up = job["notifications_given_up"]
    assert [g["state"] for g in given_up] == ["PENDING", "CANCELLED"]
    assert all(g["attempts"] >= 2 and "HTTP 500" in g["reason"] and g["given_up_at"]
               for g in given_up)
    assert "notification of CANCELLED given up" in job["state_details"]

    retried = api.request("POST", f"/jobs/{job_id}/retry")
    assert retried.status == 200
    assert retried.json["job"]["notifications_given_up"] == given_up


def test_a_give_up_while_the_job_runs_is_listed_when_it_ends_though_that_is_delivered(
        api, receiver, schedulers):
    schedulers.start(webhook_secret=SECRET, notify_retry_for_s=2)
    job_id = submit_json(api, receiver.url("/mended"))
    wait_for(lambda: "given up" in schedulers.logs(), 20, "PENDING given up", schedulers)
    receiver.mended.set()

    assert api.request("POST", f"/jobs/{job_id}/cancel").status == 200
    wait_for(lambda: [r for r in receiver.json_of(job_id) if r["status"] == 200], 15,
             "the CANCELLED notification delivered", schedulers)
    job = wait_for(lambda: (lambda j: j if j["notifications_given_up"] else None)(
        api.request("GET", f"/jobs/{job_id}").json["job"]), 15, "the give-up listed",
        schedulers)
    assert [g["state"] for g in job["notifications_given_up"]] == ["PENDING"]


def test_a_give_up_while_the_job_runs_survives_a_scheduler_restart(api, receiver, schedulers):
    first = schedulers.start(webhook_secret=SECRET, notify_retry_for_s=2)
    job_id = submit_json(api, receiver.url("/down"))
    wait_for(lambda: "PENDING: notification to" in schedulers.logs()
             and "given up" in schedulers.logs(), 20, "PENDING given up", schedulers)
    first.terminate()
    assert first.wait(timeout=15) == 0
    # The job had not ended, so the give-up could not be written yet; the
    # next scheduler must still list it when the job ends.
    schedulers.start(webhook_secret=SECRET, notify_retry_for_s=2)
    assert api.request("POST", f"/jobs/{job_id}/cancel").status == 200
    job = wait_for(lambda: (lambda j: j if len(j["notifications_given_up"]) == 2 else None)(
        api.request("GET", f"/jobs/{job_id}").json["job"]), 40,
        "both give-ups listed", schedulers)
    assert [g["state"] for g in job["notifications_given_up"]] == ["PENDING", "CANCELLED"]


def test_a_give_up_parked_twice_is_listed_once(api, receiver, schedulers):
    schedulers.start(webhook_secret=SECRET, notify_retry_for_s=2)
    job_id = submit_json(api, receiver.url("/down"))
    parked = wait_for(lambda: [body for body in queued_bodies(api.backends) if "given_up" in body],
                      20, "the PENDING give-up parked", schedulers)
    # A send that took but lost its answer is sent again: SQS then holds the
    # same give-up twice.
    api.backends.state_changes.send(json.dumps(parked[0]))

    assert api.request("POST", f"/jobs/{job_id}/cancel").status == 200
    job = wait_for(lambda: (lambda j: j if len(j["notifications_given_up"]) == 2 else None)(
        api.request("GET", f"/jobs/{job_id}").json["job"]), 40,
        "both give-ups listed", schedulers)
    wait_for(lambda: not queued_bodies(api.backends), 30,
             "every parked give-up settled", schedulers)
    listed = api.request("GET", f"/jobs/{job_id}").json["job"]["notifications_given_up"]
    assert [g["state"] for g in listed] == ["PENDING", "CANCELLED"] == \
        [g["state"] for g in job["notifications_given_up"]]
    assert job["state_details"].count("notification of PENDING given up") == 1


def test_post_notify_sends_the_current_state_again(api, receiver, schedulers):
    schedulers.start(webhook_secret=SECRET)
    job_id = submit_json(api, receiver.url("/ok"))
    wait_for(lambda: receiver.json_of(job_id), 15, "the first notification", schedulers)

    answer = api.request("POST", f"/jobs/{job_id}/notify")
    assert answer.status == 202 and answer.json["success"] is True
    assert answer.json["job"]["id"] == job_id
    both = wait_for(lambda: (lambda r: r if len(r) == 2 else None)(receiver.json_of(job_id)),
                    15, "the notification sent again", schedulers)
    first, again = (json.loads(r["body"]) for r in both)
    assert again["state"] == first["state"] == "PENDING"
    assert again["changed_at"] > first["changed_at"]
    independent_check(both[1])


def test_post_notify_refuses_an_unknown_job_and_one_without_notify_url(api):
    missing = api.request("POST", "/jobs/no-such-job/notify")
    assert missing.status == 404 and missing.json["error_code"] == "NOTFOUND"
    silent = api.submit(notify_url=None)
    refused = api.request("POST", f"/jobs/{silent}/notify")
    assert refused.status == 409 and "notify_url" in refused.json["message"]


def test_form_stays_the_default_and_unsigned(api, receiver, schedulers):
    schedulers.start(webhook_secret=SECRET)
    job_id = api.submit(notify_url=receiver.url("/ok"))

    request = wait_for(lambda: receiver.attempts(job_id), 15, "the notification", schedulers)[0]
    assert request["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert "Nommer-Signature" not in request["headers"]
    assert request["body"] == f"unique_id={job_id}&job_state=PENDING&job_state_details=".encode()
    assert api.request("GET", f"/jobs/{job_id}").json["job"]["notify_format"] == "form"


@pytest.mark.parametrize("value", ["xml", "JSON", 1, ["json"], ""])
def test_an_unknown_notify_format_is_refused_naming_the_field(api, value):
    answer = api.request("POST", "/job/submit/", api.submit_body(notify_format=value))
    assert answer.status == 400 and answer.json["error_code"] == "BADINPUT"
    assert "notify_format" in answer.json["message"]


def test_json_notifications_are_refused_while_no_webhook_secret_is_set(tmp_path):
    unsigned = Api(settings_for(tmp_path))
    try:
        answer = unsigned.request("POST", "/job/submit/",
                                  unsigned.submit_body(notify_format="json"))
        assert answer.status == 400
        assert "webhook_secret" in answer.json["message"]
        assert unsigned.request("POST", "/job/submit/",
                                unsigned.submit_body(notify_format="form")).status == 200
    finally:
        unsigned.stop()
