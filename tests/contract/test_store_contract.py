"""The JobStore contract, run against every job store backend."""
from __future__ import annotations

import base64
import dataclasses
import json
import threading
from datetime import datetime, timedelta, timezone

import pytest

from core.errors import BackendError, ConflictError, NotFound, ValidationError
from core.interfaces import Node
from core.jobs import Job, JobState
from core.stores.sqlite import SQLiteJobStore

_T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


def _job(job_id: str, created_at: datetime = _T0, state: JobState = JobState.PENDING,
         **changes) -> Job:
    fields = dict(source=f"file:///media/{job_id}.mov", destination=f"file:///media/{job_id}.mp4",
                  options={"preset": "web"}, state=state, created_at=created_at,
                  updated_at=created_at)
    return Job(id=job_id, **{**fields, **changes})


def test_every_field_survives_create_and_get(store):
    plus_two = timezone(timedelta(hours=2))
    job = Job(
        id="job-1", source="s3://in/clip.mov", destination="s3://out/clip.mp4",
        options={"passes": [{"video_codec": "libx264", "crf": 23}], "note": "ünïcode",
                 "flag": True, "ratio": 0.5, "nothing": None},
        notify_url=None, state=JobState.ENCODING, state_details="pass 1 of 2",
        progress=42, attempts=2, node="encoder-3",
        created_at=datetime(2024, 5, 1, 12, 0, 0, tzinfo=plus_two),
        updated_at=datetime(2024, 5, 1, 12, 0, 1, 123456, tzinfo=timezone.utc),
        lease_expires_at=datetime(2024, 5, 1, 12, 1, 1, tzinfo=timezone.utc),
        version=0,
        sent_options={"nommer": "ffmpeg", "options": [{"outfile_options": [["threads", 0],
                                                                         ["an", None]]}]},
        notify_format="json",
        notifications_given_up=[{"state": "PENDING", "changed_at": "2024-05-01T12:00:00+00:00",
                                 "given_up_at": "2024-05-01T12:05:00+00:00", "attempts": 7,
                                 "reason": "receiver answered HTTP 500"}])

    created = store.create_job(job)
    fetched = store.get_job("job-1")

    assert created == fetched == dataclasses.replace(job, version=1)
    assert fetched.created_at.utcoffset() is not None
    assert fetched.notify_url is None


def test_a_finished_jobs_outputs_survive_update_and_get_even_past_one_simpledb_value(store):
    created = store.create_job(_job("job-1"))
    outputs = [{"kind": "file", "uri": f"s3://out/clip-{height}p.mp4", "size_bytes": 123456789,
                "duration_s": 5.02, "container": "mp4", "video_codec": "h264",
                "audio_codec": "aac", "width": height * 16 // 9, "height": height,
                "bitrate": 800000, "note": "é" * 40} for height in (360, 720, 1080)] * 4
    assert len(json.dumps(outputs)) > 2048
    store.update_job(dataclasses.replace(created, outputs=outputs), expected_version=1)
    assert store.get_job("job-1").outputs == outputs
    assert store.list_jobs()[0][0].outputs == outputs


def test_a_job_without_sent_options_reads_back_none(store):
    store.create_job(_job("job-1"))
    assert store.get_job("job-1").sent_options is None


def test_a_job_stored_without_a_notify_format_reads_back_form_and_no_give_ups(store):
    store.create_job(_job("job-1"))
    fetched = store.get_job("job-1")
    assert fetched.notify_format == "form"
    assert fetched.notifications_given_up == []


def test_notify_url_and_empty_lease_round_trip(store):
    store.create_job(_job("job-1", notify_url="https://app.example/hook"))
    fetched = store.get_job("job-1")
    assert fetched.notify_url == "https://app.example/hook"
    assert fetched.lease_expires_at is None and fetched.node is None


def test_creating_an_existing_id_is_a_conflict(store):
    store.create_job(_job("job-1"))
    with pytest.raises(ConflictError):
        store.create_job(_job("job-1", source="file:///media/other.mov"))
    assert store.get_job("job-1").source == "file:///media/job-1.mov"


def test_getting_an_unknown_job_is_not_found(store):
    with pytest.raises(NotFound):
        store.get_job("no-such-job")


def test_update_with_the_current_version_writes_and_bumps_it(store):
    created = store.create_job(_job("job-1"))
    changed = dataclasses.replace(created, state=JobState.DOWNLOADING, node="encoder-1",
                                  attempts=1, options={"preset": "mobile"})

    stored = store.update_job(changed, expected_version=1)

    assert stored == dataclasses.replace(changed, version=2)
    assert store.get_job("job-1") == stored


def test_update_with_a_stale_version_is_a_conflict_and_changes_nothing(store):
    created = store.create_job(_job("job-1"))
    store.update_job(dataclasses.replace(created, progress=10), expected_version=1)

    with pytest.raises(ConflictError):
        store.update_job(dataclasses.replace(created, progress=99), expected_version=1)
    assert store.get_job("job-1").progress == 10


def test_update_of_an_unknown_job_is_not_found(store):
    with pytest.raises(NotFound):
        store.update_job(_job("no-such-job"), expected_version=1)


_RACE = """
import dataclasses, json, sys
from tests.conftest import open_backend
name, ids = sys.argv[2], json.loads(sys.argv[3])
store = open_backend(json.loads(sys.argv[1])).store()
seen = [store.get_job(job_id) for job_id in ids]
print("ready", flush=True)
sys.stdin.readline()
won = []
for job in seen:
    try:
        store.update_job(dataclasses.replace(job, node=name), job.version)
        won.append(job.id)
    except Exception as exc:
        if type(exc).__name__ != "ConflictError":
            raise
print(json.dumps(won), flush=True)
store.close()
"""


def test_two_processes_racing_the_same_update_exactly_one_wins(store, backend, spawn_python):
    ids = [f"job-{n}" for n in range(30)]
    for job_id in ids:
        store.create_job(_job(job_id))
    racers = {name: spawn_python(_RACE, json.dumps(backend.recipe()), name, json.dumps(ids))
              for name in ("encoder-a", "encoder-b")}
    for racer in racers.values():
        assert racer.stdout.readline().strip() == "ready"
    for racer in racers.values():
        racer.stdin.write("go\n")
        racer.stdin.flush()

    won = {}
    for name, racer in racers.items():
        out, err = racer.communicate(timeout=60)
        assert racer.returncode == 0, err
        won[name] = set(json.loads(out.strip().splitlines()[-1]))

    assert not won["encoder-a"] & won["encoder-b"]
    assert won["encoder-a"] | won["encoder-b"] == set(ids)
    for job_id in ids:
        stored = store.get_job(job_id)
        assert stored.version == 2
        assert job_id in won[stored.node]


_WRITE_PROGRESS = """
import dataclasses, json, sys
from tests.conftest import open_backend
store = open_backend(json.loads(sys.argv[1])).store()
job = store.get_job(sys.argv[2])
store.update_job(dataclasses.replace(job, progress=int(sys.argv[3])), job.version)
store.close()
"""


def test_a_read_sees_what_another_process_wrote_since_the_last_read(store, backend,
                                                                    spawn_python):
    store.create_job(_job("job-1"))
    for progress in (10, 20, 30):
        assert store.get_job("job-1").progress == progress - 10
        writer = spawn_python(_WRITE_PROGRESS, json.dumps(backend.recipe()), "job-1",
                              str(progress))
        _, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err
        job = store.get_job("job-1")
        assert (job.progress, job.version) == (progress, progress // 10 + 1)


def test_a_read_sees_writes_through_another_handle_and_another_thread(store, backend):
    store.create_job(_job("job-1"))
    other = backend.store()
    try:
        for progress in range(1, 6):
            before = store.get_job("job-1")
            other.update_job(dataclasses.replace(before, progress=progress), before.version)
            assert store.get_job("job-1").progress == progress
        # Each thread of the SQLite store has its own connection.
        before = store.get_job("job-1")
        worker = threading.Thread(target=store.update_job,
                                  args=(dataclasses.replace(before, state_details="moved"),
                                        before.version))
        worker.start()
        worker.join(timeout=60)
        assert store.get_job("job-1").state_details == "moved"
    finally:
        other.close()


def _create_spread(store, count: int) -> list[Job]:
    """`count` jobs a minute apart, the last two created at the same instant."""
    jobs = [_job(f"job-{n:02d}", created_at=_T0 + timedelta(minutes=n)) for n in range(count)]
    jobs[-1].created_at = jobs[-2].created_at
    states = [JobState.PENDING, JobState.DOWNLOADING, JobState.FINISHED]
    return [store.create_job(dataclasses.replace(job, state=states[n % 3]))
            for n, job in enumerate(jobs)]


def _newest_first(jobs: list[Job]) -> list[str]:
    return [j.id for j in sorted(jobs, key=lambda j: (j.created_at, j.id), reverse=True)]


def test_list_jobs_is_newest_first(store):
    jobs = _create_spread(store, 7)
    page, cursor = store.list_jobs()
    assert [j.id for j in page] == _newest_first(jobs)
    assert cursor is None
    assert page[0] == store.get_job(page[0].id)


def test_list_jobs_filters_by_state(store):
    jobs = _create_spread(store, 9)
    page, _ = store.list_jobs(state=JobState.DOWNLOADING)
    assert [j.id for j in page] == _newest_first(
        [j for j in jobs if j.state is JobState.DOWNLOADING])
    assert store.list_jobs(state=JobState.CANCELLED) == ([], None)


def test_paging_with_the_cursor_covers_every_job_exactly_once(store):
    jobs = _create_spread(store, 11)
    seen, cursor, pages = [], None, 0
    while True:
        page, cursor = store.list_jobs(limit=3, cursor=cursor)
        assert len(page) <= 3
        seen.extend(j.id for j in page)
        pages += 1
        if pages == 1:
            # A job created while a client pages must not shift later pages.
            store.create_job(_job("job-new", created_at=_T0 + timedelta(days=1)))
        if cursor is None:
            break
    assert seen == _newest_first(jobs)
    assert pages == 4


def test_paging_a_state_filter_covers_every_job_of_that_state(store):
    jobs = _create_spread(store, 12)
    seen, cursor = [], None
    while True:
        page, cursor = store.list_jobs(state=JobState.PENDING, limit=2, cursor=cursor)
        seen.extend(j.id for j in page)
        if cursor is None:
            break
    assert seen == _newest_first([j for j in jobs if j.state is JobState.PENDING])


@pytest.mark.parametrize("cursor", [
    "not a cursor!",
    base64.urlsafe_b64encode(b"not json").decode(),
    base64.urlsafe_b64encode(b'["a", "list"]').decode(),
    base64.urlsafe_b64encode(b'{"unexpected": 1}').decode(),
])
def test_a_malformed_cursor_is_a_validation_error(store, cursor):
    store.create_job(_job("job-1"))
    with pytest.raises(ValidationError, match="bad cursor"):
        store.list_jobs(cursor=cursor)


def test_count_jobs_counts_every_given_state(store):
    _create_spread(store, 9)  # three each of PENDING, DOWNLOADING, FINISHED
    assert store.count_jobs(frozenset({JobState.PENDING})) == 3
    assert store.count_jobs(frozenset({JobState.PENDING, JobState.DOWNLOADING})) == 6
    assert store.count_jobs(frozenset({JobState.ERROR})) == 0
    assert store.count_jobs(frozenset()) == 0


def test_nodes_are_put_replaced_listed_and_deleted(store):
    started = datetime(2024, 5, 1, 11, 0, tzinfo=timezone.utc)
    store.put_node(Node(id="encoder-b", state="idle", active_jobs=0,
                        last_report=started, started_at=started))
    store.put_node(Node(id="encoder-a", state="working", active_jobs=1,
                        last_report=started, started_at=started))
    later = started + timedelta(minutes=5)
    replacement = Node(id="encoder-b", state="working", active_jobs=2,
                       last_report=later, started_at=started)
    store.put_node(replacement)

    nodes = sorted(store.list_nodes(), key=lambda n: n.id)
    assert [n.id for n in nodes] == ["encoder-a", "encoder-b"]
    assert nodes[1] == replacement

    store.delete_node("encoder-a")
    store.delete_node("never-seen")
    assert [n.id for n in store.list_nodes()] == ["encoder-b"]


# SQLite only: its vendor errors must arrive as the project's own.

def test_counters_start_at_zero_add_up_and_hide_from_job_listings(store):
    assert store.read_counters() == {}
    store.create_job(_job("job-1"))
    bucket = 'encode_duration_seconds_bucket{kind="mp4-720p",le="+Inf"}'

    store.add_counters({"upload_bytes_total": 1000.0, bucket: 1.0})
    store.add_counters({"upload_bytes_total": 24.5, "notification_attempts_total": 1.0})

    assert store.read_counters() == {"upload_bytes_total": 1024.5, bucket: 1.0,
                                     "notification_attempts_total": 1.0}
    assert [job.id for job in store.list_jobs()[0]] == ["job-1"]
    assert store.count_jobs(frozenset(JobState)) == 1


_ADD = """
import json, sys
from tests.conftest import open_backend
store = open_backend(json.loads(sys.argv[1])).store()
print("ready", flush=True)
sys.stdin.readline()
for _ in range(int(sys.argv[2])):
    store.add_counters({"download_bytes_total": 10.0, "notification_attempts_total": 1.0})
print("done", flush=True)
store.close()
"""


def test_counter_adds_from_two_processes_at_once_all_count(store, backend, spawn_python):
    adders = [spawn_python(_ADD, json.dumps(backend.recipe()), "15") for _ in range(2)]
    for adder in adders:
        assert adder.stdout.readline().strip() == "ready"
    for adder in adders:
        adder.stdin.write("go\n")
        adder.stdin.flush()
    for adder in adders:
        out, err = adder.communicate(timeout=90)
        assert adder.returncode == 0, err

    assert store.read_counters() == {"download_bytes_total": 300.0,
                                     "notification_attempts_total": 30.0}


def test_sqlite_store_in_a_missing_folder_is_a_backend_error(tmp_path):
    with pytest.raises(BackendError):
        SQLiteJobStore(str(tmp_path / "no-such-folder" / "nommer.sqlite3"))


def test_sqlite_store_on_a_file_that_is_not_a_database_is_a_backend_error(tmp_path):
    path = tmp_path / "nommer.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(BackendError):
        SQLiteJobStore(str(path))


def test_sqlite_store_used_after_close_is_a_backend_error(tmp_path):
    store = SQLiteJobStore(str(tmp_path / "nommer.sqlite3"))
    store.close()
    with pytest.raises(BackendError):
        store.get_job("job-1")


def test_the_outbox_is_listed_until_emptied_and_emptying_keeps_the_version(store):
    later = _T0 + timedelta(hours=1)
    store.create_job(_job("job-1", announce_version=1))
    store.create_job(_job("job-2"))
    assert [job.id for job in store.list_unannounced(later)] == ["job-1"]
    assert store.list_unannounced(_T0) == []  # updated at _T0: not before it

    store.mark_announced("job-1", 2)  # another change: left alone
    assert store.get_job("job-1").announce_version == 1
    store.mark_announced("job-1", 1)
    store.mark_announced("no-such-job", 1)  # no error

    assert store.get_job("job-1").version == 1
    assert store.get_job("job-1").announce_version is None
    assert store.list_unannounced(later) == []


def test_creation_times_since_a_moment_come_newest_first_and_bounded(store):
    for minute in range(5):
        store.create_job(_job(f"job-{minute}", created_at=_T0 + timedelta(minutes=minute)))

    since = store.created_since(_T0 + timedelta(minutes=1))

    assert since == [_T0 + timedelta(minutes=m) for m in (4, 3, 2)]
    assert store.created_since(_T0 - timedelta(minutes=1), limit=2) == [
        _T0 + timedelta(minutes=4), _T0 + timedelta(minutes=3)]


def test_a_draining_mark_survives_the_encoders_own_reports(store):
    started = datetime(2024, 5, 1, 11, 0, tzinfo=timezone.utc)
    report = Node(id="encoder-a", state="idle", active_jobs=0,
                  last_report=started, started_at=started)
    store.put_node(report)
    assert store.get_node("encoder-a").draining is False
    store.mark_node_draining("encoder-a")
    # The encoder's next report (which knows nothing of the mark) keeps it.
    store.put_node(dataclasses.replace(report, state="working", active_jobs=1,
                                       last_report=started + timedelta(seconds=5)))
    node = store.get_node("encoder-a")
    assert (node.draining, node.state, node.active_jobs) == (True, "working", 1)
    # Marking an encoder that never reported creates nothing.
    store.mark_node_draining("never-seen")
    assert [n.id for n in store.list_nodes()] == ["encoder-a"]
    assert store.get_node("never-seen") is None
    # A new report after the old one is deleted starts unmarked.
    store.delete_node("encoder-a")
    store.put_node(report)
    assert store.get_node("encoder-a").draining is False


def test_sqlite_store_opens_a_database_made_before_sent_options(tmp_path):
    import sqlite3
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL);
        INSERT INTO schema_versions VALUES ('jobs', 1);
        CREATE TABLE jobs (id TEXT PRIMARY KEY, source TEXT NOT NULL,
            destination TEXT NOT NULL, options TEXT NOT NULL, notify_url TEXT,
            state TEXT NOT NULL, state_details TEXT NOT NULL, progress INTEGER NOT NULL,
            attempts INTEGER NOT NULL, node TEXT, created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL, lease_expires_at TEXT, version INTEGER NOT NULL);
        INSERT INTO jobs VALUES ('old-1', 'file:///m/a.mov', 'file:///m/a.mp4', '{}', NULL,
            'PENDING', '', 0, 0, NULL, '2024-05-01T12:00:00.000000+00:00',
            '2024-05-01T12:00:00.000000+00:00', NULL, 1);
    """)
    old.close()

    store = SQLiteJobStore(str(path))
    try:
        assert store.get_job("old-1").sent_options is None
        assert store.get_job("old-1").outputs is None
        assert store.get_job("old-1").notify_format == "form"
        assert store.get_job("old-1").notifications_given_up == []
        store.create_job(_job("new-1", sent_options={"preset": "mp4-720p"}))
        assert store.get_job("new-1").sent_options == {"preset": "mp4-720p"}
    finally:
        store.close()
    reopened = SQLiteJobStore(str(path))
    try:
        assert reopened.get_job("new-1").sent_options == {"preset": "mp4-720p"}
    finally:
        reopened.close()


def test_sqlite_store_opens_a_database_made_before_the_draining_mark(tmp_path):
    import sqlite3
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE nodes (id TEXT PRIMARY KEY, state TEXT NOT NULL,
            active_jobs INTEGER NOT NULL, last_report TEXT NOT NULL, started_at TEXT NOT NULL);
        INSERT INTO nodes VALUES ('encoder-a', 'idle', 0, '2024-05-01T12:00:00.000000+00:00',
            '2024-05-01T11:00:00.000000+00:00');
    """)
    old.close()
    store = SQLiteJobStore(str(path))
    try:
        assert store.get_node("encoder-a").draining is False
        store.mark_node_draining("encoder-a")
        assert store.get_node("encoder-a").draining is True
    finally:
        store.close()
