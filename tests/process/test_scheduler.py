"""The scheduler, run as a real process against a real SQLite file, notifies a
real HTTP receiver of every state change and abandons stale jobs."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl

import pytest

from core.backends import open_backends
from core.jobs import JobState, transition, utcnow
from core.jobservice import StateChange
from core.settings import load
from feeder.scheduler import Scheduler

pytestmark = pytest.mark.timeout(60)

PROJECT_DIR = Path(__file__).resolve().parents[2]
OPTIONS = {"nommer": "media_nommer.ec2nommerd.nommers.ffmpeg.FFmpegNommer", "options": [{}]}
# Settings every scheduler in these tests starts with; a test adds its own.
BASE_SETTINGS = {
    "notify_timeout_s": 5,
    "notify_retry_for_s": 30,
    "feederd_prune_interval_s": 1,
    "local_queue_poll_ms": 10,
}
SLOW_ANSWER_S = 1.5


class Receiver:
    """An application's notification endpoint on 127.0.0.1.

    Paths: /ok answers 200; /flaky/N answers 500 to its first N requests,
    then 200; /down always 500; /slow answers 200 after SLOW_ANSWER_S;
    /mended 500 until `mended` is set. Each request is kept with its
    headers, raw body, arrival time (time.time()) and, for a form, its fields.
    """

    def __init__(self):
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}
        self.release = threading.Event()
        self.mended = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = receiver._record_and_decide(self, body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def _record_and_decide(self, handler, body: bytes) -> int:
        path = handler.path.split("?")[0]
        is_form = handler.headers.get("Content-Type") == "application/x-www-form-urlencoded"
        entry = {"path": handler.path, "user_agent": handler.headers.get("User-Agent"),
                 "headers": dict(handler.headers), "body": body, "at": time.time(),
                 "form": dict(parse_qsl(body.decode("ascii"), keep_blank_values=True))
                 if is_form else {}, "status": None}
        with self._lock:
            self._seen[path] = count = self._seen.get(path, 0) + 1
            self.requests.append(entry)
        if path.startswith("/flaky/"):
            status = 500 if count <= int(path.rsplit("/", 1)[1]) else 200
        elif path == "/down":
            status = 500
        elif path == "/mended":
            status = 200 if self.mended.is_set() else 500
        else:
            if path == "/slow":
                self.release.wait(SLOW_ANSWER_S)
            status = 200
        entry["status"] = status
        return status

    def attempts(self, job_id: str) -> list[dict]:
        with self._lock:
            return [r for r in self.requests if r["form"].get("unique_id") == job_id]

    def json_of(self, job_id: str) -> list[dict]:
        """The JSON notifications of `job_id`, as received."""
        with self._lock:
            requests = list(self.requests)
        return [r for r in requests
                if not r["form"] and json.loads(r["body"]).get("id") == job_id]

    def delivered_states(self, job_id: str) -> list[str]:
        return [r["form"]["job_state"] for r in self.attempts(job_id) if r["status"] == 200]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class Schedulers:
    """Starts `python -m feeder.scheduler` on the test's data dir; stops them all at teardown."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.started: list[tuple[subprocess.Popen, Path]] = []

    def start(self, **settings) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NOMMER_")}
        values = {**BASE_SETTINGS, **settings, "data_dir": self.data_dir}
        env.update({f"NOMMER_{key.upper()}": str(value) for key, value in values.items()})
        log_path = self.data_dir / f"scheduler-{len(self.started)}.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen([sys.executable, "-m", "feeder.scheduler"], env=env,
                                    cwd=str(PROJECT_DIR), stdout=log_file,
                                    stderr=subprocess.STDOUT)
        self.started.append((proc, log_path))
        return proc

    def logs(self) -> str:
        return "\n".join(path.read_text(errors="replace") for _, path in self.started)

    def stop_all(self) -> None:
        for proc, _ in self.started:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)


@pytest.fixture
def schedulers(tmp_path):
    built = Schedulers(tmp_path)
    yield built
    built.stop_all()


@pytest.fixture
def backends(tmp_path):
    opened = open_backends(load(environ={"NOMMER_DATA_DIR": str(tmp_path)}))
    yield opened
    opened.close()


def wait_for(predicate, timeout_s: float, what: str, schedulers: Schedulers | None = None):
    """The predicate's first truthy value; AssertionError (with the logs) after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    logs = schedulers.logs() if schedulers else ""
    raise AssertionError(f"not within {timeout_s} s: {what}\n{logs}")


def submit(backends, notify_url=None):
    return backends.jobs.submit("file:///in/a.mp4", "file:///out/a.mp4", OPTIONS,
                                notify_url=notify_url)


def queue_empty(backends) -> bool:
    return backends.state_changes.counts() == (0, 0)


def queued_bodies(backends) -> list[dict]:
    """Every message of the state-change queue, read without receiving it."""
    with contextlib.closing(sqlite3.connect(backends.settings.database_path)) as db:
        rows = db.execute("SELECT body FROM queue_messages WHERE queue = ?",
                          (backends.settings.sqs_job_state_change_queue_name,)).fetchall()
    return [json.loads(body) for (body,) in rows]


def only_parked_give_ups(backends) -> list[dict] | None:
    """The give-ups parked in the queue (of jobs that have not ended), once
    no state change is left in it; else None."""
    bodies = queued_bodies(backends)
    parked = [body["given_up"] for body in bodies if "given_up" in body]
    return parked if len(parked) == len(bodies) else None


def test_every_state_change_is_notified_once_in_order(receiver, backends, schedulers):
    schedulers.start()
    job = submit(backends, receiver.url("/ok?app=7"))
    wait_for(lambda: receiver.delivered_states(job.id) == ["PENDING"], 10,
             "PENDING notification", schedulers)

    jobs = backends.jobs
    claimed = jobs.claim(job.id, "node-1", lease_s=60)
    encoding = jobs.advance(claimed, JobState.ENCODING, "pass 1 of 2")
    uploading = jobs.advance(encoding, JobState.UPLOADING)
    jobs.advance(uploading, JobState.FINISHED)

    wait_for(lambda: queue_empty(backends), 10, "all changes settled", schedulers)
    assert receiver.delivered_states(job.id) == [
        "PENDING", "DOWNLOADING", "ENCODING", "UPLOADING", "FINISHED"]
    attempts = receiver.attempts(job.id)
    assert len(attempts) == 5
    # The details are the change's own, though the job has moved on since.
    assert attempts[2]["form"]["job_state_details"] == "pass 1 of 2"
    assert attempts[3]["form"]["job_state_details"] == ""
    assert {a["path"] for a in attempts} == {"/ok?app=7"}
    assert {a["user_agent"] for a in attempts} == {"media-nommer feederd"}


def test_failing_receiver_gets_the_notification_once_it_answers(receiver, backends, schedulers):
    schedulers.start()
    job = submit(backends, receiver.url("/flaky/2"))

    wait_for(lambda: receiver.delivered_states(job.id), 15, "delivery after retries", schedulers)
    wait_for(lambda: queue_empty(backends), 5, "the change deleted", schedulers)

    assert [a["status"] for a in receiver.attempts(job.id)] == [500, 500, 200]


def test_later_change_waits_for_the_earlier_ones_retry(receiver, backends, schedulers):
    schedulers.start()
    job = submit(backends, receiver.url("/flaky/1"))
    backends.jobs.claim(job.id, "node-1", lease_s=60)

    wait_for(lambda: len(receiver.delivered_states(job.id)) == 2, 10, "both delivered",
             schedulers)
    wait_for(lambda: queue_empty(backends), 5, "the changes deleted", schedulers)
    assert receiver.delivered_states(job.id) == ["PENDING", "DOWNLOADING"]
    assert [a["status"] for a in receiver.attempts(job.id)] == [500, 200, 200]


def test_slow_receiver_does_not_hold_up_other_jobs(receiver, backends, schedulers):
    schedulers.start()
    slow = submit(backends, receiver.url("/slow"))
    wait_for(lambda: receiver.attempts(slow.id), 10, "the slow send to begin", schedulers)
    quick = submit(backends, receiver.url("/ok"))

    wait_for(lambda: receiver.delivered_states(quick.id), SLOW_ANSWER_S, "the quick job's "
             "notification while the slow one is still waiting", schedulers)
    assert receiver.attempts(slow.id)[0]["status"] is None
    wait_for(lambda: queue_empty(backends), 5, "both changes deleted", schedulers)


def test_notification_is_given_up_after_the_retry_period(receiver, backends, schedulers):
    schedulers.start(notify_retry_for_s=2)
    job = submit(backends, receiver.url("/down"))

    parked = wait_for(lambda: only_parked_give_ups(backends), 10, "the change deleted",
                      schedulers)
    # The job has not ended: its give-up waits in the queue to be listed on it.
    assert [one["state"] for one in parked] == ["PENDING"] and parked[0]["attempts"] >= 2
    tried = len(receiver.attempts(job.id))
    assert tried >= 2
    time.sleep(1.0)
    assert len(receiver.attempts(job.id)) == tried
    assert "given up" in schedulers.logs()


def test_job_without_notify_url_sends_nothing(receiver, backends, schedulers):
    schedulers.start()
    job = submit(backends)
    backends.jobs.claim(job.id, "node-1", lease_s=60)

    wait_for(lambda: queue_empty(backends), 10, "the changes deleted", schedulers)
    assert receiver.requests == []


def test_malformed_and_orphan_changes_are_dropped(receiver, backends, schedulers):
    backends.state_changes.send("not json")
    backends.state_changes.send('{"job_id": 42}')
    backends.state_changes.send(StateChange(job_id="no-such-job", state="PENDING",
                                            state_details="", version=1,
                                            at=utcnow().isoformat()).to_json())
    schedulers.start()
    job = submit(backends, receiver.url("/ok"))

    wait_for(lambda: queue_empty(backends), 10, "every change settled", schedulers)
    assert receiver.delivered_states(job.id) == ["PENDING"]
    assert len(receiver.requests) == 1


def test_stale_active_job_is_abandoned_and_notified(receiver, backends, schedulers):
    schedulers.start(feederd_abandon_inactive_jobs_thresh=60)
    stale = submit(backends, receiver.url("/ok"))
    fresh = submit(backends, receiver.url("/ok"))
    backends.jobs.claim(fresh.id, "node-1", lease_s=60)
    claimed = backends.jobs.claim(stale.id, "node-2", lease_s=60)
    # The encoder died two hours ago: its last update is that old.
    backends.store.update_job(
        dataclasses.replace(claimed, updated_at=utcnow() - timedelta(hours=2)), claimed.version)

    wait_for(lambda: "ABANDONED" in receiver.delivered_states(stale.id), 10,
             "ABANDONED notification", schedulers)
    assert receiver.delivered_states(stale.id) == ["PENDING", "DOWNLOADING", "ABANDONED"]
    assert backends.store.get_job(stale.id).state is JobState.ABANDONED
    assert backends.store.get_job(fresh.id).state is JobState.DOWNLOADING


def test_sigterm_when_idle_exits_zero_within_two_seconds(backends, schedulers):
    proc = schedulers.start()
    wait_for(lambda: "scheduler started" in schedulers.logs(), 10, "start-up", schedulers)
    time.sleep(0.3)  # into the long poll

    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 0
    assert time.monotonic() - started < 2.0


def test_sigterm_finishes_the_send_in_flight(receiver, backends, schedulers):
    proc = schedulers.start()
    job = submit(backends, receiver.url("/slow"))
    wait_for(lambda: receiver.attempts(job.id), 10, "the slow send to begin", schedulers)

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=SLOW_ANSWER_S + 5) == 0
    assert receiver.delivered_states(job.id) == ["PENDING"]
    # Settled before exit: no second notification after a restart.
    assert queue_empty(backends)


def test_scheduler_killed_during_retries_loses_no_notification(receiver, backends, schedulers):
    # A short visibility timeout brings the change back soon even if the
    # scheduler died before it could set the retry delay itself.
    first = schedulers.start(visibility_timeout_s=2)
    job = submit(backends, receiver.url("/flaky/1"))
    wait_for(lambda: receiver.attempts(job.id), 10, "the first, failing, send", schedulers)
    first.kill()
    first.wait(timeout=5)

    schedulers.start(visibility_timeout_s=2)
    wait_for(lambda: receiver.delivered_states(job.id), 10, "delivery by the new scheduler",
             schedulers)
    wait_for(lambda: queue_empty(backends), 5, "the change deleted", schedulers)
    assert receiver.delivered_states(job.id) == ["PENDING"]


def test_queue_failure_is_backed_off_and_stop_still_prompt(tmp_path, caplog):
    settings = load(environ={"NOMMER_DATA_DIR": str(tmp_path)})
    broken = open_backends(settings)
    broken.state_changes.close()  # every call now raises BackendError
    scheduler = Scheduler(broken, settings)
    runner = threading.Thread(target=scheduler.run)
    try:
        runner.start()
        wait_for(lambda: "backend failed" in caplog.text, 5, "the failure logged")
        assert runner.is_alive()

        scheduler.request_stop()
        runner.join(timeout=2)
        assert not runner.is_alive()
    finally:
        scheduler.request_stop()
        runner.join(timeout=10)
        broken.close()


def test_unsendable_urls_are_given_up_and_later_jobs_still_notified(receiver, backends,
                                                                    schedulers):
    proc = schedulers.start(notify_retry_for_s=2)
    # Stored as they are (not through the API): whatever a store holds must
    # not stop the scheduler.
    for url in ("http://[2001:db8::cafe]/done", "http://[bad/x", "ftp://x/y", "not a url",
                "http://example.invalid:99999/"):
        submit(backends, url)
    good = submit(backends, receiver.url("/ok"))

    wait_for(lambda: receiver.delivered_states(good.id) == ["PENDING"], 10,
             "the good job's notification", schedulers)
    parked = wait_for(lambda: only_parked_give_ups(backends), 20, "every change settled",
                      schedulers)
    assert proc.poll() is None
    assert schedulers.logs().count("given up") >= 5 and len(parked) == 5


def test_a_state_change_whose_writer_died_before_announcing_is_still_notified(
        receiver, backends, schedulers):
    schedulers.start(visibility_timeout_s=1)
    job = submit(backends, receiver.url("/ok"))
    wait_for(lambda: receiver.delivered_states(job.id) == ["PENDING"], 10,
             "PENDING notification", schedulers)
    # What a claim writes; its encoder dies before it sends the announcement.
    claimed = transition(job, JobState.DOWNLOADING, node="node-1", attempts=1)
    backends.store.update_job(dataclasses.replace(claimed, announce_version=job.version + 1),
                              job.version)

    wait_for(lambda: receiver.delivered_states(job.id) == ["PENDING", "DOWNLOADING"], 15,
             "the DOWNLOADING notification, from the job's outbox", schedulers)
    wait_for(lambda: backends.store.get_job(job.id).announce_version is None, 10,
             "the outbox emptied", schedulers)
    assert "announced from its outbox" in schedulers.logs()
