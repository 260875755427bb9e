"""The SQLite commit mark, which lets the API keep the answers it has made:
it must move with every commit, from any connection or process, a forked
child included, and never be given inside the reader's own transaction."""
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


def _child_marks(store: SQLiteJobStore, pipe) -> None:
    pipe.send(store.commit_mark())
    pipe.recv()  # the parent has written
    pipe.send(store.commit_mark())


def _store_with_a_job(tmp_path) -> tuple[SQLiteJobStore, Job]:
    now = datetime.now(timezone.utc)
    store = SQLiteJobStore(str(tmp_path / "db.sqlite3"))
    return store, store.create_job(Job(id="job-1", source="file:///in.mov",
                                       destination="file:///o.mp4", options={},
                                       state=JobState.PENDING, created_at=now, updated_at=now))


def test_a_forked_child_sees_the_mark_move_with_its_parents_writes(tmp_path):
    store, job = _store_with_a_job(tmp_path)
    parents_mark = store.commit_mark()  # the parent's view of it, before the fork
    context = multiprocessing.get_context("fork")
    parent_end, child_end = context.Pipe()
    child = context.Process(target=_child_marks, args=(store, child_end))
    child.start()
    try:
        assert parent_end.poll(60)
        before = parent_end.recv()
        assert before == parents_mark is not None
        store.update_job(dataclasses.replace(job, progress=40), job.version)
        parent_end.send("written")
        assert parent_end.poll(60)
        after = parent_end.recv()
        assert after == store.commit_mark() and after not in (None, before)
    finally:
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
        store.close()


def test_there_is_no_mark_inside_a_transaction_of_the_reading_thread(tmp_path):
    store, _ = _store_with_a_job(tmp_path)
    try:
        conn = store._db.connection()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE jobs SET progress = 50 WHERE id = 'job-1'")
        # Its reads see its own uncommitted write: nothing read may be kept.
        assert store.commit_mark() is None
        conn.rollback()
        assert store.commit_mark() is not None
    finally:
        store.close()
