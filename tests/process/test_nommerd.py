"""nommerd as a real process: real SQLite store and queue, real ffmpeg, real signals."""
from __future__ import annotations

import http.server
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest

from core.jobs import JobState
from core.app.local_system import wait_for
from core.media import ffmpeg_path, make_sample_clip, probe
from core.settings import Settings
from tests.fixtures.nommerd import FAST, Nommerd, passes
from tests.fixtures.processes import is_running

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def ffmpeg() -> str:
    return ffmpeg_path(Settings())


@pytest.fixture(scope="module")
def clip(media, ffmpeg) -> Path:
    path = media / "in" / "clip.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    make_sample_clip(ffmpeg, str(path), duration_s=2, size="160x120")
    return path


@pytest.fixture(scope="module")
def long_clip(media, ffmpeg) -> Path:
    # Long enough that a veryslow encode is still running when the test acts.
    path = media / "in" / "long.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    make_sample_clip(ffmpeg, str(path), duration_s=20, size="640x480")
    return path


def make_env(data_dir: Path, media: Path, **overrides) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NOMMER_", "SUPERVISOR_"))}
    env.update(FAST, NOMMER_DATA_DIR=str(data_dir), NOMMER_FILE_ROOTS=str(media))
    env.update(overrides)
    return env


@pytest.fixture
def nommerd_factory(tmp_path, media):
    started: list[Nommerd] = []

    def make(args=(), start=True, **env_overrides) -> Nommerd:
        data = tmp_path / f"data{len(started)}"
        daemon = Nommerd(make_env(data, media, **env_overrides), tmp_path / f"nommerd{len(started)}.log",
                         ["--node-id", "test-node", *args])
        started.append(daemon)
        return daemon.start() if start else daemon

    yield make
    for daemon in started:
        daemon.stop()


@pytest.fixture(scope="module")
def shared(tmp_path_factory, media):
    """One long-running nommerd for the jobs that need no special set-up."""
    tmp = tmp_path_factory.mktemp("shared")
    daemon = Nommerd(make_env(tmp / "data", media), tmp / "nommerd.log", ["--node-id", "shared"])
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.mark.parametrize("two_pass", [False, True], ids=["one-pass", "two-pass"])
def test_job_finishes_with_a_playable_output(shared, clip, media, ffmpeg, two_pass):
    out = media / "out" / f"{'two' if two_pass else 'one'}-pass.mp4"
    job = shared.jobs.submit(clip.as_uri(), out.as_uri(), passes(two_pass))
    done = shared.wait_state(job.id, {JobState.FINISHED, JobState.ERROR})
    assert done.state is JobState.FINISHED, done.state_details
    assert done.progress == 100 and done.node == "shared"
    info = probe(ffmpeg, str(out))
    assert ("video", "h264") in info.streams and ("audio", "aac") in info.streams
    assert info.duration_s == pytest.approx(2.0, abs=0.3)
    wait_for(lambda: shared.backends.new_jobs.counts() == (0, 0), 10, "the message deleted")
    work = Path(shared.settings.data_dir) / "work"
    wait_for(lambda: list(work.iterdir()) == [], 10, "the job folder removed")


def test_corrupt_source_ends_in_error_with_a_reason(shared, media):
    bad = media / "in" / "corrupt.mp4"
    bad.write_bytes(random.Random(11).randbytes(64 * 1024))
    out = media / "out" / "corrupt.mp4"
    job = shared.jobs.submit(bad.as_uri(), out.as_uri(), passes())
    done = shared.wait_state(job.id, {JobState.FINISHED, JobState.ERROR})
    assert done.state is JobState.ERROR
    assert "source is not media that ffmpeg can read" in done.state_details
    assert not out.exists()
    wait_for(lambda: shared.backends.new_jobs.counts() == (0, 0), 10, "no retry of a bad source")


def test_missing_source_ends_in_error_saying_so(shared, media):
    missing = media / "in" / "nope.mp4"
    job = shared.jobs.submit(missing.as_uri(), (media / "out" / "nope.mp4").as_uri(), passes())
    done = shared.wait_state(job.id, {JobState.FINISHED, JobState.ERROR})
    assert done.state is JobState.ERROR
    assert done.state_details == f"source {missing.as_uri()} does not exist"


def test_destination_outside_the_roots_ends_in_error(shared, clip, media, tmp_path):
    outside = tmp_path / "escaped.mp4"
    job = shared.jobs.submit(clip.as_uri(), outside.as_uri(), passes())
    done = shared.wait_state(job.id, {JobState.FINISHED, JobState.ERROR})
    assert done.state is JobState.ERROR
    assert "outside the folders" in done.state_details
    assert not outside.exists()


def test_unwritable_destination_folder_ends_in_error(shared, clip, media):
    (media / "out").mkdir(exist_ok=True)
    (media / "out" / "a-file").write_text("not a folder")
    job = shared.jobs.submit(clip.as_uri(), (media / "out" / "a-file" / "x.mp4").as_uri(), passes())
    done = shared.wait_state(job.id, {JobState.FINISHED, JobState.ERROR})
    assert done.state is JobState.ERROR
    assert "destination folder" in done.state_details


def test_cancel_during_encoding_stops_ffmpeg_and_writes_nothing(shared, long_clip, media):
    out = media / "out" / "cancelled.mp4"
    job = shared.jobs.submit(long_clip.as_uri(), out.as_uri(), passes(preset="veryslow"))
    shared.wait_state(job.id, {JobState.ENCODING})
    ffmpeg_pids = wait_for(shared.ffmpeg_children, 20, "ffmpeg to start")
    # The main loop reports the job's start within a tick of its claim.
    [node] = wait_for(lambda: (lambda nodes: nodes if nodes[0].state == "working" else None)(
        shared.backends.store.list_nodes()), 10, "the node reported working")
    assert (node.id, node.state, node.active_jobs) == ("shared", "working", 1)
    shared.jobs.cancel(job.id)
    wait_for(lambda: not any(is_running(pid) for pid in ffmpeg_pids), 10, "ffmpeg to stop")
    assert shared.job(job.id).state is JobState.CANCELLED
    wait_for(lambda: shared.backends.new_jobs.counts() == (0, 0), 10, "the message deleted")
    assert not out.exists()


def test_long_job_keeps_its_message_hidden_and_its_lease_alive(nommerd_factory, long_clip, media):
    daemon = nommerd_factory()
    job = daemon.jobs.submit(long_clip.as_uri(), (media / "out" / "long.mp4").as_uri(),
                             passes(preset="veryslow"))
    claimed = daemon.wait_state(job.id, {JobState.ENCODING})
    # Past the 4 s visibility timeout and lease: the one busy worker must
    # have extended both, or the message would be visible again.
    time.sleep(5)
    running = daemon.job(job.id)
    if running.state is JobState.ENCODING:
        assert daemon.backends.new_jobs.counts() == (0, 1)
        assert running.lease_expires_at > claimed.lease_expires_at
        assert 0 < running.progress < 100
        assert running.attempts == 1
    else:  # a very fast machine: then it must have finished, once
        assert running.state is JobState.FINISHED and running.attempts == 1


class _TrickleHandler(http.server.BaseHTTPRequestHandler):
    """Announces a big body and sends one byte at a time: a download that never ends."""

    stop: threading.Event

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(10**9))
        self.end_headers()
        try:
            while not self.stop.wait(0.1):
                self.wfile.write(b"x")
                self.wfile.flush()
        except OSError:
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def trickle_url():
    stop = threading.Event()
    handler = type("Handler", (_TrickleHandler,), {"stop": stop})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/slow.mp4"
    stop.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_sigterm_during_an_endless_download_still_releases_and_exits_0(nommerd_factory, trickle_url,
                                                                        media):
    daemon = nommerd_factory(args=["--stop-grace-s", "1"])
    job = daemon.jobs.submit(trickle_url, (media / "out" / "trickle.mp4").as_uri(), passes())
    daemon.wait_state(job.id, {JobState.DOWNLOADING})
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=15) == 0
    released = daemon.job(job.id)
    assert released.state is JobState.PENDING, released.state_details
    assert daemon.backends.new_jobs.counts() == (1, 0)


def test_sigterm_mid_encode_releases_the_job_and_exits_0(nommerd_factory, long_clip, media):
    daemon = nommerd_factory(args=["--stop-grace-s", "1"])
    job = daemon.jobs.submit(long_clip.as_uri(), (media / "out" / "released.mp4").as_uri(),
                             passes(preset="veryslow"))
    daemon.wait_state(job.id, {JobState.ENCODING})
    ffmpeg_pids = wait_for(daemon.ffmpeg_children, 20, "ffmpeg to start")
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=10) == 0
    released = daemon.job(job.id)
    assert released.state is JobState.PENDING, released.state_details
    assert released.state_details == "released by test-node"
    assert daemon.backends.new_jobs.counts() == (1, 0), "the message is visible again"
    assert not any(is_running(pid) for pid in ffmpeg_pids)
    [node] = daemon.backends.store.list_nodes()
    assert (node.id, node.state, node.active_jobs) == ("test-node", "stopped", 0)


def test_sigterm_lets_a_short_job_finish_before_exiting(nommerd_factory, clip, media):
    daemon = nommerd_factory(args=["--stop-grace-s", "30"])
    job = daemon.jobs.submit(clip.as_uri(), (media / "out" / "graceful.mp4").as_uri(),
                             passes(preset="veryslow"))
    daemon.wait_state(job.id, {JobState.DOWNLOADING, JobState.ENCODING, JobState.UPLOADING,
                               JobState.FINISHED})
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=30) == 0
    assert daemon.job(job.id).state is JobState.FINISHED


def test_second_sigterm_releases_at_once(nommerd_factory, long_clip, media):
    daemon = nommerd_factory(args=["--stop-grace-s", "600"])
    job = daemon.jobs.submit(long_clip.as_uri(), (media / "out" / "twice.mp4").as_uri(),
                             passes(preset="veryslow"))
    daemon.wait_state(job.id, {JobState.ENCODING})
    wait_for(daemon.ffmpeg_children, 20, "ffmpeg to start")
    daemon.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=10) == 0
    assert daemon.job(job.id).state is JobState.PENDING


def test_job_claimed_too_often_ends_in_error(nommerd_factory, clip, media):
    daemon = nommerd_factory(start=False, NOMMER_MAX_RECEIVES="2")
    job = daemon.jobs.submit(clip.as_uri(), (media / "out" / "too-often.mp4").as_uri(), passes())
    for _ in range(2):  # two encoders that claimed it and died (their leases ran out)
        assert daemon.backends.new_jobs.receive(wait_s=1, visibility_timeout_s=0)
        assert daemon.jobs.claim(job.id, "dead-encoder", lease_s=0) is not None
    daemon.start()
    done = daemon.wait_state(job.id, {JobState.ERROR, JobState.FINISHED})
    assert done.state is JobState.ERROR
    assert done.state_details.startswith("gave up after 2 attempts")
    assert not (media / "out" / "too-often.mp4").exists()


def test_deliveries_without_claims_do_not_fail_the_job(nommerd_factory, clip, media):
    daemon = nommerd_factory(start=False, NOMMER_MAX_RECEIVES="2")
    job = daemon.jobs.submit(clip.as_uri(), (media / "out" / "redelivered.mp4").as_uri(), passes())
    for _ in range(2):  # received and never claimed (SQS unreachable, say)
        assert daemon.backends.new_jobs.receive(wait_s=1, visibility_timeout_s=0)
    daemon.start()
    assert daemon.wait_state(job.id, {JobState.ERROR, JobState.FINISHED}).state is JobState.FINISHED


def test_a_redelivered_message_never_fails_a_job_another_encoder_holds(nommerd_factory, clip,
                                                                       media):
    daemon = nommerd_factory(start=False, NOMMER_MAX_RECEIVES="1")
    job = daemon.jobs.submit(clip.as_uri(), (media / "out" / "held.mp4").as_uri(), passes())
    # Another encoder holds the job with a live lease; its message keeps
    # coming back (past SQS's in-flight cap, or while SQS was unreachable).
    assert daemon.backends.new_jobs.receive(wait_s=1, visibility_timeout_s=0)
    held = daemon.jobs.claim(job.id, "long-encode", lease_s=10)
    daemon.start()
    wait_for(lambda: "left for its holder" in daemon.log_path.read_text(), 30,
             what="the redelivery left for the holder")
    assert daemon.job(job.id) == held
    # The holder finishes; the message, back when the lease would have run
    # out, is dropped and the job stays FINISHED.
    for state in (JobState.ENCODING, JobState.UPLOADING, JobState.FINISHED):
        held = daemon.jobs.advance(held, state)
    wait_for(lambda: daemon.backends.new_jobs.counts() == (0, 0), 30,
             what="the message to be dropped")
    assert daemon.job(job.id).state is JobState.FINISHED


def test_idle_nommerd_exits_0_by_itself(nommerd_factory):
    daemon = nommerd_factory(NOMMER_NOMMERD_MAX_INACTIVITY="1")
    assert daemon.proc.wait(timeout=20) == 0
    [node] = daemon.backends.store.list_nodes()
    assert node.state == "stopped"
