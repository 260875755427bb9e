"""The rules of a job's life (core.jobservice) over the embedded store and queues."""
from __future__ import annotations

import dataclasses
import json
import threading
from datetime import timedelta

import pytest

from core.errors import ConflictError, InvalidTransition, NotFound
from core.jobs import JobState, utcnow
from core.jobservice import JobService, StateChange
from core.queues.sqlite import SQLiteQueue
from core.stores.sqlite import SQLiteJobStore

_OPTIONS = {"passes": [{"video_codec": "libx264"}]}


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "nommer.sqlite3")


@pytest.fixture
def service(db_path):
    parts = (SQLiteJobStore(db_path), SQLiteQueue(db_path, "new_jobs"),
             SQLiteQueue(db_path, "state_changes"))
    yield JobService(*parts)
    for part in parts:
        part.close()


def _submit(service: JobService):
    return service.submit("file:///media/in.mov", "file:///media/out.mp4", _OPTIONS,
                          notify_url="https://app.example/hook")


def _announced(service: JobService) -> list[StateChange]:
    changes = []
    while batch := service.state_changes.receive(max_messages=10):
        for message in batch:
            changes.append(StateChange.from_json(message.body))
            service.state_changes.delete(message.receipt)
    return changes


def test_submit_stores_a_pending_job_queues_it_and_announces_it(service):
    job = _submit(service)

    stored = service.store.get_job(job.id)
    assert stored == job
    assert (stored.state, stored.version, stored.options) == (JobState.PENDING, 1, _OPTIONS)
    assert stored.notify_url == "https://app.example/hook"
    assert [m.body for m in service.new_jobs.receive(max_messages=10)] == [job.id]
    [change] = _announced(service)
    assert (change.job_id, change.state, change.version) == (job.id, "PENDING", 1)


def test_claim_takes_the_job_for_the_node_with_a_lease(service):
    job = _submit(service)
    _announced(service)
    before = utcnow()

    claimed = service.claim(job.id, "encoder-1", lease_s=60)

    assert (claimed.state, claimed.node, claimed.attempts, claimed.version) == (
        JobState.DOWNLOADING, "encoder-1", 1, 2)
    assert claimed.lease_expires_at >= before + timedelta(seconds=59)
    assert service.store.get_job(job.id) == claimed
    assert [(c.state, c.version) for c in _announced(service)] == [("DOWNLOADING", 2)]


def test_two_threads_claiming_the_same_jobs_never_share_one(service):
    jobs = [_submit(service) for _ in range(20)]
    start = threading.Barrier(2, timeout=30)
    won: dict[str, list[str]] = {"encoder-a": [], "encoder-b": []}

    def claim_all(node: str) -> None:
        start.wait()
        for job in jobs:
            if service.claim(job.id, node, lease_s=60) is not None:
                won[node].append(job.id)

    threads = [threading.Thread(target=claim_all, args=(node,)) for node in won]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()

    assert not set(won["encoder-a"]) & set(won["encoder-b"])
    assert set(won["encoder-a"]) | set(won["encoder-b"]) == {j.id for j in jobs}


_CLAIM = """
import json, sys
from core.jobservice import JobService
from core.queues.sqlite import SQLiteQueue
from core.stores.sqlite import SQLiteJobStore
path, node, ids = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
service = JobService(SQLiteJobStore(path), SQLiteQueue(path, "new_jobs"),
                     SQLiteQueue(path, "state_changes"))
print("ready", flush=True)
sys.stdin.readline()
won = [job_id for job_id in ids if service.claim(job_id, node, lease_s=60) is not None]
print(json.dumps(won), flush=True)
"""


def test_two_processes_claiming_the_same_jobs_never_share_one(service, db_path, spawn_python):
    ids = [_submit(service).id for _ in range(20)]
    nodes = {node: spawn_python(_CLAIM, db_path, node, json.dumps(ids))
             for node in ("encoder-a", "encoder-b")}
    for proc in nodes.values():
        assert proc.stdout.readline().strip() == "ready"
    for proc in nodes.values():
        proc.stdin.write("go\n")
        proc.stdin.flush()

    won = {}
    for node, proc in nodes.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        won[node] = set(json.loads(out.strip().splitlines()[-1]))

    assert not won["encoder-a"] & won["encoder-b"]
    assert won["encoder-a"] | won["encoder-b"] == set(ids)
    for job_id in ids:
        stored = service.store.get_job(job_id)
        assert stored.attempts == 1 and job_id in won[stored.node]


def test_a_job_with_a_live_lease_cannot_be_claimed(service):
    job = _submit(service)
    service.claim(job.id, "encoder-1", lease_s=60)

    assert service.claim(job.id, "encoder-2", lease_s=60) is None
    assert service.store.get_job(job.id).node == "encoder-1"


def test_after_the_lease_runs_out_another_node_takes_the_job_over(service):
    job = _submit(service)
    first = service.claim(job.id, "encoder-1", lease_s=60)
    first = service.advance(first, JobState.ENCODING)

    later = utcnow() + timedelta(seconds=61)
    second = service.claim(job.id, "encoder-2", lease_s=60, now=later)

    assert (second.state, second.node, second.attempts) == (JobState.DOWNLOADING, "encoder-2", 2)
    # The first encoder comes back to life: it must learn it lost the job.
    with pytest.raises(ConflictError):
        service.advance(first, JobState.UPLOADING)
    with pytest.raises(ConflictError):
        service.heartbeat(first, lease_s=60)
    assert service.store.get_job(job.id).node == "encoder-2"


@pytest.mark.parametrize("ending", ["cancel", "finish", "fail"])
def test_a_job_that_has_ended_is_not_claimed(service, ending):
    job = _submit(service)
    if ending == "cancel":
        service.cancel(job.id)
    elif ending == "fail":
        service.fail(job.id, "source unreadable")
    else:
        held = service.claim(job.id, "encoder-1", lease_s=60)
        for state in (JobState.ENCODING, JobState.UPLOADING, JobState.FINISHED):
            held = service.advance(held, state)
    ended = service.store.get_job(job.id)

    assert service.claim(job.id, "encoder-2", lease_s=60) is None
    assert service.store.get_job(job.id) == ended


def test_claiming_a_job_missing_from_the_store_returns_none(service):
    assert service.claim("no-such-job", "encoder-1", lease_s=60) is None


def test_the_whole_life_of_a_job_is_announced_in_order(service):
    job = _submit(service)
    held = service.claim(job.id, "encoder-1", lease_s=60)
    for state in (JobState.ENCODING, JobState.UPLOADING, JobState.FINISHED):
        held = service.advance(held, state)

    assert held.progress == 100
    assert [(c.state, c.version) for c in _announced(service)] == [
        ("PENDING", 1), ("DOWNLOADING", 2), ("ENCODING", 3), ("UPLOADING", 4), ("FINISHED", 5)]


def test_advance_after_a_cancel_is_a_conflict(service):
    job = _submit(service)
    held = service.claim(job.id, "encoder-1", lease_s=60)
    service.cancel(job.id)

    with pytest.raises(ConflictError):
        service.advance(held, JobState.ENCODING)
    assert service.store.get_job(job.id).state is JobState.CANCELLED


def test_advance_to_a_state_not_allowed_is_refused(service):
    held = service.claim(_submit(service).id, "encoder-1", lease_s=60)
    with pytest.raises(InvalidTransition):
        service.advance(held, JobState.FINISHED)


def test_cancel_of_a_finished_job_is_an_invalid_transition(service):
    job = _submit(service)
    held = service.claim(job.id, "encoder-1", lease_s=60)
    for state in (JobState.ENCODING, JobState.UPLOADING, JobState.FINISHED):
        held = service.advance(held, state)

    with pytest.raises(InvalidTransition):
        service.cancel(job.id)
    assert service.store.get_job(job.id).state is JobState.FINISHED


def test_cancel_of_an_unknown_job_is_not_found(service):
    with pytest.raises(NotFound):
        service.cancel("no-such-job")


def test_cancel_of_a_running_job_clears_its_lease_and_announces(service):
    job = _submit(service)
    service.claim(job.id, "encoder-1", lease_s=60)
    _announced(service)

    cancelled = service.cancel(job.id)

    assert (cancelled.state, cancelled.lease_expires_at) == (JobState.CANCELLED, None)
    assert [c.state for c in _announced(service)] == ["CANCELLED"]


def test_fail_puts_a_held_job_in_error_but_leaves_an_ended_one(service):
    running, cancelled = _submit(service), _submit(service)
    service.claim(running.id, "encoder-1", lease_s=60)
    service.cancel(cancelled.id)

    failed = service.fail(running.id, "ffmpeg: invalid data")

    assert (failed.state, failed.state_details) == (JobState.ERROR, "ffmpeg: invalid data")
    assert service.fail(cancelled.id, "too late") is None
    assert service.store.get_job(cancelled.id).state is JobState.CANCELLED


def _age(service: JobService, job, hours: float):
    """Pretend `job` was last written `hours` ago."""
    old = utcnow() - timedelta(hours=hours)
    return service.store.update_job(dataclasses.replace(job, updated_at=old), job.version)


def test_abandon_stale_marks_only_active_jobs_with_no_recent_update(service):
    stale_active = service.claim(_submit(service).id, "encoder-1", lease_s=60)
    stale_active = _age(service, service.advance(stale_active, JobState.ENCODING), hours=2)
    fresh_active = service.claim(_submit(service).id, "encoder-2", lease_s=60)
    stale_pending = _age(service, _submit(service), hours=2)
    stale_finished = service.claim(_submit(service).id, "encoder-3", lease_s=60)
    for state in (JobState.ENCODING, JobState.UPLOADING, JobState.FINISHED):
        stale_finished = service.advance(stale_finished, state)
    stale_finished = _age(service, stale_finished, hours=2)
    _announced(service)

    abandoned = service.abandon_stale(older_than_s=3600)

    assert [j.id for j in abandoned] == [stale_active.id]
    assert service.store.get_job(stale_active.id).state is JobState.ABANDONED
    assert service.store.get_job(fresh_active.id).state is JobState.DOWNLOADING
    assert service.store.get_job(stale_pending.id).state is JobState.PENDING
    assert service.store.get_job(stale_finished.id).state is JobState.FINISHED
    assert [(c.job_id, c.state) for c in _announced(service)] == [
        (stale_active.id, "ABANDONED")]


def test_abandon_stale_pages_through_many_stale_jobs(service):
    stale = []
    for _ in range(105):
        held = service.claim(_submit(service).id, "encoder-1", lease_s=60)
        stale.append(_age(service, held, hours=2).id)

    abandoned = service.abandon_stale(older_than_s=3600)

    assert sorted(j.id for j in abandoned) == sorted(stale)


def test_heartbeat_extends_the_lease_and_records_progress(service):
    held = service.claim(_submit(service).id, "encoder-1", lease_s=10)
    before = utcnow()

    beat = service.heartbeat(held, lease_s=120, progress=55)

    assert beat.lease_expires_at >= before + timedelta(seconds=119)
    assert (beat.progress, beat.version, beat.state) == (55, held.version + 1, held.state)
    assert service.store.get_job(held.id) == beat
    assert service.heartbeat(beat, lease_s=120, progress=250).progress == 100


def test_heartbeat_without_progress_keeps_the_last_progress(service):
    held = service.claim(_submit(service).id, "encoder-1", lease_s=10)
    beat = service.heartbeat(held, lease_s=60, progress=30)
    assert service.heartbeat(beat, lease_s=60).progress == 30


def test_heartbeat_of_a_cancelled_job_is_a_conflict(service):
    held = service.claim(_submit(service).id, "encoder-1", lease_s=60)
    service.cancel(held.id)
    with pytest.raises(ConflictError):
        service.heartbeat(held, lease_s=60)


def test_a_create_retried_after_its_answer_was_lost_is_not_a_conflict(tmp_path):
    # The store applied the first create but the answer never arrived; the
    # retry then finds the job already there. It is the same request, so
    # submit succeeds instead of leaving a PENDING job nobody queued.
    from core.jobs import Job
    from core.jobservice import JobService
    from core.queues.sqlite import SQLiteQueue
    from core.stores.sqlite import SQLiteJobStore

    path = str(tmp_path / "db.sqlite3")
    store = SQLiteJobStore(path)
    service = JobService(store, SQLiteQueue(path, "new"), SQLiteQueue(path, "states"))
    job = Job(id="abc", source="file:///a", destination="file:///b", options={"x": 1})
    store.create_job(job)
    assert service._create(job).id == "abc"
    other = Job(id="abc", source="file:///other", destination="file:///b", options={"x": 1})
    with pytest.raises(ConflictError):
        service._create(other)


def test_retry_of_a_failed_job_runs_it_again_under_the_same_id(service):
    job = _submit(service)
    service.new_jobs.delete(service.new_jobs.receive()[0].receipt)
    service.claim(job.id, "encoder-1", lease_s=60)
    service.fail(job.id, "ffmpeg: invalid data")
    _announced(service)

    retried = service.retry(job.id)

    assert (retried.id, retried.state, retried.progress, retried.node) == (
        job.id, JobState.PENDING, 0, None)
    assert retried.created_at == job.created_at
    assert retried.state_details == "retry after ERROR: ffmpeg: invalid data"
    assert [m.body for m in service.new_jobs.receive(max_messages=10)] == [job.id]
    assert [c.state for c in _announced(service)] == ["PENDING"]
    again = service.claim(job.id, "encoder-2", lease_s=60)
    assert (again.state, again.attempts, again.node) == (JobState.DOWNLOADING, 2, "encoder-2")


@pytest.mark.parametrize("end", ["cancel", "abandon"])
def test_retry_takes_cancelled_and_abandoned_jobs(service, end):
    job = _submit(service)
    if end == "cancel":
        service.cancel(job.id)
    else:
        _age(service, service.claim(job.id, "encoder-1", lease_s=60), hours=2)
        assert service.abandon_stale(older_than_s=3600)
    assert service.retry(job.id).state is JobState.PENDING


def test_retry_refuses_finished_and_unended_jobs(service):
    pending, finished = _submit(service), _submit(service)
    held = service.claim(finished.id, "encoder-1", lease_s=60)
    for state in (JobState.ENCODING, JobState.UPLOADING, JobState.FINISHED):
        held = service.advance(held, state)

    for job_id in (pending.id, finished.id):
        with pytest.raises(InvalidTransition):
            service.retry(job_id)
    assert service.store.get_job(finished.id).state is JobState.FINISHED
    with pytest.raises(NotFound):
        service.retry("no-such-job")
