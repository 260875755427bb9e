"""The embedded job store: jobs and encoder nodes in one SQLite file.

Safe for several processes and threads (see core.sqlite_db). Every write to
a job is conditional on its version, like SimpleDB's `Expected` or a
DynamoDB condition expression.
"""
from __future__ import annotations

import json
import sqlite3

from core.errors import ConflictError, NotFound, ValidationError
from core.interfaces import JobStore, Node
from core.jobs import Job, JobState
from core.sqlite_db import SQLiteDatabase, translate_errors
from core.stores.codec import decode_cursor, encode_cursor, text_to_time, time_to_text

# Schema version 5 (2 added sent_options, 3 the nodes' draining mark, 4 the
# announce_version outbox, 5 the finished job's outputs, notify_format and
# notifications_given_up; see _migrate). A later version adds its migration
# there and bumps the row in schema_versions (shared with the queues, one row
# per component).
SCHEMA_VERSION = 5
_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS schema_versions (
        component TEXT PRIMARY KEY,
        version INTEGER NOT NULL)""",
    f"INSERT OR IGNORE INTO schema_versions VALUES ('jobs', {SCHEMA_VERSION})",
    """CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        destination TEXT NOT NULL,
        options TEXT NOT NULL,              -- JSON object
        notify_url TEXT,
        state TEXT NOT NULL,
        state_details TEXT NOT NULL,
        progress INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        node TEXT,
        created_at TEXT NOT NULL,           -- ISO-8601 UTC, fixed width
        updated_at TEXT NOT NULL,
        lease_expires_at TEXT,
        version INTEGER NOT NULL,
        sent_options TEXT,                  -- JSON object, or NULL
        announce_version INTEGER,
        outputs TEXT,                       -- JSON list, or NULL
        notify_format TEXT,                 -- "form" or "json"; NULL is "form"
        notifications_given_up TEXT)        -- JSON list, or NULL for none
    """,
    "CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created_at, id)",
    "CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created_at, id)",
    """CREATE TABLE IF NOT EXISTS nodes (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        active_jobs INTEGER NOT NULL,
        last_report TEXT NOT NULL,
        started_at TEXT NOT NULL,
        draining INTEGER NOT NULL DEFAULT 0)""",
    # The system's figures (core.metrics); added with no migration.
    """CREATE TABLE IF NOT EXISTS counters (
        name TEXT PRIMARY KEY,
        value REAL NOT NULL)""",
]

_JOB_COLUMNS = ("id", "source", "destination", "options", "notify_url", "state",
                "state_details", "progress", "attempts", "node", "created_at",
                "updated_at", "lease_expires_at", "version", "sent_options",
                "announce_version", "outputs", "notify_format", "notifications_given_up")
_SELECT_JOB = f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs"


def _job_params(job: Job, version: int) -> dict:
    return {
        "id": job.id, "source": job.source, "destination": job.destination,
        "options": json.dumps(job.options, sort_keys=True), "notify_url": job.notify_url,
        "state": JobState(job.state).value, "state_details": job.state_details,
        "progress": job.progress, "attempts": job.attempts, "node": job.node,
        "created_at": time_to_text(job.created_at),
        "updated_at": time_to_text(job.updated_at),
        "lease_expires_at": time_to_text(job.lease_expires_at),
        "version": version,
        "sent_options": (None if job.sent_options is None
                         else json.dumps(job.sent_options, sort_keys=True)),
        "announce_version": job.announce_version,
        "outputs": None if job.outputs is None else json.dumps(job.outputs, sort_keys=True),
        "notify_format": job.notify_format,
        "notifications_given_up": (json.dumps(job.notifications_given_up, sort_keys=True)
                                   if job.notifications_given_up else None),
    }


def _job_from_row(row: tuple) -> Job:
    values = dict(zip(_JOB_COLUMNS, row))
    return Job(
        id=values["id"], source=values["source"], destination=values["destination"],
        options=json.loads(values["options"]), notify_url=values["notify_url"],
        state=JobState(values["state"]), state_details=values["state_details"],
        progress=values["progress"], attempts=values["attempts"], node=values["node"],
        created_at=text_to_time(values["created_at"]),
        updated_at=text_to_time(values["updated_at"]),
        lease_expires_at=text_to_time(values["lease_expires_at"]),
        version=values["version"],
        sent_options=json.loads(values["sent_options"]) if values["sent_options"] else None,
        announce_version=values["announce_version"],
        outputs=json.loads(values["outputs"]) if values["outputs"] else None,
        notify_format=values["notify_format"] or "form",
        notifications_given_up=(json.loads(values["notifications_given_up"])
                                if values["notifications_given_up"] else []),
    )


class SQLiteJobStore(JobStore):
    """JobStore in the SQLite file at `path` (created if missing).

    Every method raises BackendError when SQLite fails (for example the
    database stayed locked past the busy timeout, or the disk is full).
    """

    def __init__(self, path: str):
        self._db = SQLiteDatabase(path, _SCHEMA)
        with translate_errors(f"migrating {path}"):
            self._migrate()

    def _migrate(self) -> None:
        """Bring a database made by an older version up to SCHEMA_VERSION."""
        # BEGIN IMMEDIATE: processes opening an old file together take turns,
        # and each sees whether another has already added the column.
        with self._db.write_transaction() as conn:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
            if "sent_options" not in columns:
                conn.execute("ALTER TABLE jobs ADD COLUMN sent_options TEXT")
            if "announce_version" not in columns:
                conn.execute("ALTER TABLE jobs ADD COLUMN announce_version INTEGER")
            if "outputs" not in columns:
                conn.execute("ALTER TABLE jobs ADD COLUMN outputs TEXT")
            if "notify_format" not in columns:
                conn.execute("ALTER TABLE jobs ADD COLUMN notify_format TEXT")
            if "notifications_given_up" not in columns:
                conn.execute("ALTER TABLE jobs ADD COLUMN notifications_given_up TEXT")
            conn.execute("CREATE INDEX IF NOT EXISTS jobs_outbox ON jobs (updated_at) "
                         "WHERE announce_version IS NOT NULL")
            node_columns = {row[1] for row in conn.execute("PRAGMA table_info(nodes)")}
            if "draining" not in node_columns:
                conn.execute("ALTER TABLE nodes ADD COLUMN draining INTEGER NOT NULL DEFAULT 0")
            conn.execute("UPDATE schema_versions SET version = ? WHERE component = 'jobs' "
                         "AND version < ?", (SCHEMA_VERSION, SCHEMA_VERSION))

    def create_job(self, job: Job) -> Job:
        """Store `job` as version 1 and return it. Raises ConflictError if the id exists."""
        params = _job_params(job, version=1)
        sql = (f"INSERT INTO jobs ({', '.join(_JOB_COLUMNS)}) "
               f"VALUES ({', '.join(':' + c for c in _JOB_COLUMNS)})")
        with translate_errors("create job"):
            try:
                self._db.connection().execute(sql, params)
            except sqlite3.IntegrityError:
                raise ConflictError(f"job {job.id} already exists") from None
        return self.get_job(job.id)

    def get_job(self, job_id: str) -> Job:
        """The stored job. Raises NotFound."""
        with translate_errors("get job"):
            row = self._db.connection().execute(f"{_SELECT_JOB} WHERE id = ?",
                                                (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"job {job_id} not found")
        return _job_from_row(row)

    def commit_mark(self) -> bytes | None:
        """SQLite's mark of the last commit, from any process (see
        SQLiteDatabase.commit_mark): costs no query. None inside a
        transaction of this thread, whose reads see its own writes."""
        with translate_errors("read the commit mark"):
            if self._db.connection().in_transaction:
                return None
            return self._db.commit_mark()

    def update_job(self, job: Job, expected_version: int) -> Job:
        """Write every field of `job` if the stored version is `expected_version`.

        Returns the job as stored (version = expected_version + 1). Raises
        ConflictError if the version moved on, NotFound if the job is gone.
        """
        # The race: two writers both read version v and both send
        # "UPDATE ... WHERE id = ? AND version = v". SQLite runs the UPDATEs
        # one after the other; the first changes the row to v + 1, so the
        # second matches no row (rowcount 0) and loses.
        params = _job_params(job, version=expected_version + 1)
        params["expected_version"] = expected_version
        assignments = ", ".join(f"{c} = :{c}" for c in _JOB_COLUMNS if c != "id")
        with translate_errors("update job"):
            conn = self._db.connection()
            cursor = conn.execute(
                f"UPDATE jobs SET {assignments} WHERE id = :id AND version = :expected_version",
                params)
            if cursor.rowcount == 0:
                exists = conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job.id,)).fetchone()
                if exists is None:
                    raise NotFound(f"job {job.id} not found")
                raise ConflictError(
                    f"job {job.id} changed since version {expected_version}")
        return _job_from_row(tuple(params[c] for c in _JOB_COLUMNS))

    def list_jobs(self, state: JobState | None = None, limit: int = 50,
                  cursor: str | None = None) -> tuple[list[Job], str | None]:
        """Jobs newest first (by created_at, then id), optionally of one state.

        Returns (page of at most `limit` jobs, cursor for the next page or
        None when this is the last). Raises ValidationError("bad cursor") for
        a cursor this store did not hand out, ValidationError if limit < 1.
        """
        if limit < 1:
            raise ValidationError("limit must be at least 1")
        where, params = [], []
        if state is not None:
            where.append("state = ?")
            params.append(JobState(state).value)
        if cursor is not None:
            # Keyset paging: rows strictly after the last one already seen,
            # so jobs created meanwhile never shift a page.
            where.append("(created_at, id) < (?, ?)")
            params.extend(decode_cursor(cursor))
        sql = _SELECT_JOB
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        params.append(limit + 1)  # one more than asked tells whether a next page exists
        with translate_errors("list jobs"):
            rows = self._db.connection().execute(sql, params).fetchall()
        page = [_job_from_row(row) for row in rows[:limit]]
        if len(rows) <= limit:
            return page, None
        last = rows[limit - 1]
        return page, encode_cursor(last[_JOB_COLUMNS.index("created_at")], last[0])

    def count_jobs(self, states: frozenset[JobState]) -> int:
        """How many jobs are in any of `states` (0 for no states)."""
        if not states:
            return 0
        values = sorted(JobState(s).value for s in states)
        marks = ", ".join("?" for _ in values)
        with translate_errors("count jobs"):
            row = self._db.connection().execute(
                f"SELECT COUNT(*) FROM jobs WHERE state IN ({marks})", values).fetchone()
        return row[0]

    def mark_announced(self, job_id: str, version: int) -> None:
        """Empty the job's outbox if it holds `version`; the version stays."""
        with translate_errors("mark job announced"):
            self._db.connection().execute(
                "UPDATE jobs SET announce_version = NULL WHERE id = ? AND announce_version = ?",
                (job_id, version))

    def list_unannounced(self, updated_before, limit: int = 100) -> list[Job]:
        """Jobs with a state change to announce, updated before `updated_before`."""
        with translate_errors("list unannounced jobs"):
            rows = self._db.connection().execute(
                f"{_SELECT_JOB} WHERE announce_version IS NOT NULL AND updated_at < ? "
                "ORDER BY updated_at LIMIT ?", (time_to_text(updated_before), limit)).fetchall()
        return [_job_from_row(row) for row in rows]

    def put_node(self, node: Node) -> None:
        """Create or replace the report of encoder `node.id`."""
        with translate_errors("put node"):
            # An upsert that leaves `draining` as it is: only the scaler sets it.
            self._db.connection().execute(
                "INSERT INTO nodes (id, state, active_jobs, last_report, started_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                " state = excluded.state, active_jobs = excluded.active_jobs,"
                " last_report = excluded.last_report, started_at = excluded.started_at",
                (node.id, node.state, node.active_jobs,
                 time_to_text(node.last_report), time_to_text(node.started_at)))

    def list_nodes(self) -> list[Node]:
        """Every encoder report, by id."""
        with translate_errors("list nodes"):
            rows = self._db.connection().execute(
                "SELECT id, state, active_jobs, last_report, started_at, draining"
                " FROM nodes ORDER BY id"
            ).fetchall()
        return [Node(id=r[0], state=r[1], active_jobs=r[2], last_report=text_to_time(r[3]),
                     started_at=text_to_time(r[4]), draining=bool(r[5])) for r in rows]

    def mark_node_draining(self, node_id: str) -> None:
        """Set encoder `node_id`'s draining mark; no error if unknown."""
        with translate_errors("mark node draining"):
            self._db.connection().execute("UPDATE nodes SET draining = 1 WHERE id = ?",
                                          (node_id,))

    def delete_node(self, node_id: str) -> None:
        """Forget encoder `node_id`; no error if unknown."""
        with translate_errors("delete node"):
            self._db.connection().execute("DELETE FROM nodes WHERE id = ?", (node_id,))

    def add_counters(self, increments: dict[str, float]) -> None:
        """Add to named counters in one transaction (an upsert adds atomically)."""
        with translate_errors("add counters"):
            with self._db.write_transaction() as conn:
                conn.executemany(
                    "INSERT INTO counters (name, value) VALUES (?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                    sorted(increments.items()))

    def read_counters(self) -> dict[str, float]:
        with translate_errors("read counters"):
            rows = self._db.connection().execute("SELECT name, value FROM counters").fetchall()
        return dict(rows)

    def close(self) -> None:
        self._db.close()
