"""The SQLite commit mark, which lets the job store keep rows it has read:
it must move with every commit, from any connection or process, and a
forked child must see its parent's later writes."""
from __future__ import annotations

import dataclasses
import multiprocessing
from datetime import datetime, timezone

from core.jobs import Job, JobState
from core.sqlite_db import SQLiteDatabase
from core.stores.sqlite import SQLiteJobStore


def _db(tmp_path) -> SQLiteDatabase:
    return SQLiteDatabase(str(tmp_path / "db.sqlite3"),
                          ["CREATE TABLE IF NOT EXISTS t (n INTEGER)"])


def test_the_mark_moves_with_each_commit_and_holds_over_reads(tmp_path):
    db, other = _db(tmp_path), _db(tmp_path)
    try:
        marks = [db.commit_mark()]
        for n in range(3):
            db.connection().execute("SELECT COUNT(*) FROM t").fetchone()
            assert db.commit_mark() == marks[-1]
            (other if n % 2 else db).connection().execute("INSERT INTO t VALUES (?)", (n,))
            marks.append(db.commit_mark())
        # A checkpoint that empties the log also moves it.
        other.connection().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        other.connection().execute("INSERT INTO t VALUES (9)")
        marks.append(db.commit_mark())
        assert None not in marks and len(set(marks)) == len(marks)
    finally:
        db.close()
        other.close()


def test_an_uncommitted_or_rolled_back_write_leaves_the_mark(tmp_path):
    db, other = _db(tmp_path), _db(tmp_path)
    try:
        before = db.commit_mark()
        with other.connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t VALUES (1)")
            assert db.commit_mark() == before
            conn.rollback()
        assert db.commit_mark() == before
    finally:
        db.close()
        other.close()


def _child_reads(store: SQLiteJobStore, pipe) -> None:
    pipe.send(store.get_job("job-1").progress)
    pipe.recv()  # the parent has written
    pipe.send(store.get_job("job-1").progress)


def test_a_forked_child_reads_its_parents_later_writes(tmp_path):
    now = datetime.now(timezone.utc)
    store = SQLiteJobStore(str(tmp_path / "db.sqlite3"))
    job = store.create_job(Job(id="job-1", source="file:///in.mov", destination="file:///o.mp4",
                               options={}, state=JobState.PENDING, created_at=now,
                               updated_at=now))
    store.get_job("job-1")  # kept, with the parent's mark, before the fork
    context = multiprocessing.get_context("fork")
    parent_end, child_end = context.Pipe()
    child = context.Process(target=_child_reads, args=(store, child_end))
    child.start()
    try:
        assert parent_end.poll(60) and parent_end.recv() == 0
        store.update_job(dataclasses.replace(job, progress=40), job.version)
        parent_end.send("written")
        assert parent_end.poll(60) and parent_end.recv() == 40
        assert store.get_job("job-1").progress == 40
    finally:
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
        store.close()


def test_a_read_inside_a_transaction_rolled_back_is_not_kept(tmp_path):
    now = datetime.now(timezone.utc)
    store = SQLiteJobStore(str(tmp_path / "db.sqlite3"))
    try:
        job = store.create_job(Job(id="job-1", source="file:///in.mov",
                                   destination="file:///o.mp4", options={},
                                   state=JobState.PENDING, created_at=now, updated_at=now))
        conn = store._db.connection()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE jobs SET progress = 50 WHERE id = 'job-1'")
        assert store.get_job("job-1").progress == 50  # its own write, uncommitted
        conn.rollback()
        assert store.get_job("job-1").progress == job.progress == 0
    finally:
        store.close()
