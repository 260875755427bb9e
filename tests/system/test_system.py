"""The whole system on one machine: real supervisord from the project's
supervisord.conf, real HTTP, real ffmpeg, encoders started by the scaler."""
from __future__ import annotations

import http.server
import os
import signal
import threading
import urllib.parse

import pytest

from core.jobs import JobState
from core.app.local_system import LocalSystem, wait_for
from core.media import ffmpeg_path, make_sample_clip, probe
from core.settings import load

pytestmark = pytest.mark.timeout(240)

FAST = {
    "NOMMER_FEEDERD_AUTO_SCALE_INTERVAL": "0.5",
    "NOMMER_MAX_NUM_EC2_INSTANCES": "2",
    "NOMMER_VISIBILITY_TIMEOUT_S": "4",
    "NOMMER_JOB_LEASE_S": "4",
    "NOMMER_NOMMERD_HEARTBEAT_INTERVAL_S": "1",
    "NOMMER_NOMMERD_MAX_INACTIVITY": "60",
    "NOMMER_PROGRESS_INTERVAL_MS": "200",
}


def wait_state(system: LocalSystem, job_id: str, states, timeout_s: float = 90) -> dict:
    states = {str(s) for s in states}

    def reached():
        job = system.client.job(job_id)
        return job if job["state"] in states else None

    try:
        return wait_for(reached, timeout_s, interval_s=0.1, what=f"job {job_id} in {states}")
    except TimeoutError:
        print(system.log_tail("nommerd_00"), system.log_tail("scaler"), sep="\n")
        raise


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    with LocalSystem(tmp_path_factory.mktemp("system"), FAST) as running:
        yield running


@pytest.fixture(scope="module")
def clip(system):
    path = system.media_dir / "in" / "clip.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    make_sample_clip(ffmpeg_path(system.settings), str(path), duration_s=3, size="320x240")
    return path


@pytest.fixture(scope="module")
def long_clip(system):
    path = system.media_dir / "in" / "long.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    make_sample_clip(ffmpeg_path(system.settings), str(path), duration_s=40, size="640x480")
    return path


def passes(two_pass=False, extra=()):
    video = [["c:v", "libx264"], ["preset", "veryfast"], ["b:v", "300k"], *extra]
    if not two_pass:
        return [{"infile_options": [], "outfile_options": video + [["c:a", "aac"]],
                 "move_atom_to_front": True}]
    return [{"infile_options": [], "outfile_options": video + [["an", None], ["f", "mp4"]]},
            {"infile_options": [], "outfile_options": video + [["c:a", "aac"]],
             "move_atom_to_front": True}]


@pytest.mark.parametrize("two_pass", [False, True], ids=["one-pass", "two-pass"])
def test_job_reaches_finished_with_playable_output(system, clip, two_pass):
    out = system.media_dir / "out" / f"{'two' if two_pass else 'one'}-pass.mp4"
    job_id = system.client.submit(clip.as_uri(), out.as_uri(), passes(two_pass))
    job = wait_state(system, job_id, {JobState.FINISHED, JobState.ERROR})
    assert job["state"] == "FINISHED", job["state_details"]
    assert job["progress"] == 100
    info = probe(ffmpeg_path(system.settings), str(out))
    assert ("video", "h264") in info.streams
    assert ("audio", "aac") in info.streams
    assert info.duration_s == pytest.approx(3.0, abs=0.3)


def test_scaler_started_an_encoder_for_the_backlog(system, clip):
    # The system started with every slot stopped; work made the scaler start one.
    out = system.media_dir / "out" / "scaled.mp4"
    job_id = system.client.submit(clip.as_uri(), out.as_uri(), passes())
    job = wait_state(system, job_id, {JobState.FINISHED, JobState.ERROR})
    assert job["node"].startswith("nommerd:nommerd_")
    assert any(e.state in {"running", "pending"} for e in system.fleet().list_encoders())


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        self.received.append((self.path, self.headers.get("User-Agent"), form))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_notifications_arrive_with_the_original_fields(system, clip):
    received = []
    handler = type("Handler", (_Receiver,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/encoding/done/"
        out = system.media_dir / "out" / "notified.mp4"
        job_id = system.client.submit(clip.as_uri(), out.as_uri(), passes(), notify_url=url)
        wait_state(system, job_id, {JobState.FINISHED})
        wait_for(lambda: any(f["job_state"] == ["FINISHED"] for _, _, f in received), 20,
                 what="FINISHED notification")
    finally:
        server.shutdown()
        server.server_close()
    states = [form["job_state"][0] for _, _, form in received]
    assert states[0] == "PENDING" and states[-1] == "FINISHED"
    assert {"DOWNLOADING", "ENCODING", "UPLOADING"} <= set(states)
    for path, agent, form in received:
        assert path == "/encoding/done/"
        assert agent == "media-nommer feederd"
        assert form["unique_id"] == [job_id]


def test_encoder_killed_mid_encode_job_still_finishes_once(system, long_clip):
    out = system.media_dir / "out" / "survivor.mp4"
    job_id = system.client.submit(long_clip.as_uri(), out.as_uri(),
                                  passes(extra=[["preset", "slow"]]))
    job = wait_state(system, job_id, {JobState.ENCODING, JobState.FINISHED})
    assert job["state"] == "ENCODING", "the encode finished before it could be interrupted"
    victim = job["node"]
    os.kill(system.fleet().pid_of(victim), signal.SIGKILL)
    job = wait_state(system, job_id, {JobState.FINISHED, JobState.ERROR}, timeout_s=180)
    assert job["state"] == "FINISHED", job["state_details"]
    assert job["attempts"] >= 2
    outputs = [p.name for p in out.parent.iterdir() if p.name.startswith("survivor")]
    assert outputs == ["survivor.mp4"]
    assert probe(ffmpeg_path(system.settings), str(out)).duration_s == pytest.approx(40, abs=1)


def test_corrupt_source_ends_in_error_with_a_reason(system):
    bad = system.media_dir / "in" / "corrupt.mp4"
    bad.write_bytes(os.urandom(64 * 1024))
    out = system.media_dir / "out" / "corrupt-out.mp4"
    job_id = system.client.submit(bad.as_uri(), out.as_uri(), passes())
    job = wait_state(system, job_id, {JobState.FINISHED, JobState.ERROR})
    assert job["state"] == "ERROR"
    assert job["state_details"].strip()
    assert not out.exists()


def test_missing_source_ends_in_error_saying_so(system):
    out = system.media_dir / "out" / "never.mp4"
    job_id = system.client.submit((system.media_dir / "in" / "nope.mp4").as_uri(),
                                  out.as_uri(), passes())
    job = wait_state(system, job_id, {JobState.FINISHED, JobState.ERROR})
    assert job["state"] == "ERROR"
    assert "does not exist" in job["state_details"] or "not found" in job["state_details"].lower()


@pytest.mark.parametrize("body, status", [
    (b"not json", 400),
    (b"[]", 400),
    (b'{"source_path": "", "dest_path": "x", "job_options": {}}', 400),
    (b'{"source_path": "s3://KEY:SECRET@bucket/in.mp4", "dest_path": "file:///tmp/o.mp4",'
     b' "job_options": {"nommer": "ffmpeg", "options": [{}]}}', 400),
])
def test_bad_input_to_the_running_api_is_a_4xx_with_a_message(system, body, status):
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{system.api_port}/job/submit/",
                                     data=body, method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == status
    answer = json.load(caught.value)
    assert answer["success"] is False and answer["message"]


def test_cancelled_pending_job_is_never_encoded(tmp_path):
    # Launches off: the job stays PENDING until cancelled; then an encoder
    # is started by hand and must not run it.
    env = dict(FAST, NOMMER_FEEDERD_ALLOW_EC2_LAUNCHES="false")
    with LocalSystem(tmp_path / "sys", env) as system:
        src = system.media_dir / "in.mp4"
        make_sample_clip(ffmpeg_path(system.settings), str(src), duration_s=1, size="160x120")
        out = system.media_dir / "cancelled.mp4"
        job_id = system.client.submit(src.as_uri(), out.as_uri(), passes())
        assert system.client.job(job_id)["state"] == "PENDING"
        answer = system.client._request("POST", f"/jobs/{job_id}/cancel")
        assert answer["success"] and answer["job"]["state"] == "CANCELLED"
        fleet = system.fleet()
        assert fleet.launch(1)
        # The encoder takes the message, sees the job has ended and drops it.
        from core.backends import open_backends
        backends = open_backends(load(environ=system.env))
        try:
            wait_for(lambda: backends.new_jobs.counts() == (0, 0), 30, what="message dropped")
        finally:
            backends.close()
        job = system.client.job(job_id)
        assert job["state"] == "CANCELLED" and job["attempts"] == 0
        assert not out.exists()
