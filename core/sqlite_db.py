"""SQLite connections shared by the embedded job store and queues.

One database file holds the jobs, the nodes and every queue. Several
processes (api workers, scheduler, scaler, encoders) and several threads in
each open it at once, so:

- WAL journal: readers never wait for the writer, and the one writer at a
  time waits (up to the busy timeout) instead of failing.
- One connection per thread: a sqlite3 connection must not be used by two
  threads at the same time, and a per-thread connection needs no lock.
- Connections are never carried across fork(): SQLite forbids it, so a
  child process that inherited the object opens its own.

sqlite3 errors stop here: `translate_errors` turns them into BackendError.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator

from core.errors import BackendError

# How long a writer waits for another process's write lock before failing.
BUSY_TIMEOUT_S = 10.0


@contextlib.contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn any sqlite3.Error raised inside into BackendError("<what>: ...")."""
    try:
        yield
    except sqlite3.Error as exc:
        raise BackendError(f"{what}: {exc}") from exc


class _Connection(sqlite3.Connection):
    """A connection that can be weakly referenced (the base class cannot)."""


class SQLiteDatabase:
    """Per-thread connections to one SQLite file, in autocommit mode.

    Autocommit (isolation_level=None) because the callers decide where a
    transaction starts: a single statement is its own transaction, and a
    read-modify-write uses `write_transaction` (BEGIN IMMEDIATE).
    `schema` is a list of DDL statements run once per instance (they must be
    idempotent: CREATE ... IF NOT EXISTS).
    """

    def __init__(self, path: str, schema: list[str], busy_timeout_s: float = BUSY_TIMEOUT_S):
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self._schema = list(schema)
        self._local = threading.local()
        self._lock = threading.Lock()
        # Weak, so the connection of a thread that has ended is closed when
        # its thread-local slot goes, not kept open until close().
        self._all: weakref.WeakSet[sqlite3.Connection] = weakref.WeakSet()
        self._inherited: list = []
        self._pid = os.getpid()
        self._closed = False
        with translate_errors(f"opening {path}"):
            self._create_schema(self.connection())

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use. Raises BackendError if closed."""
        if self._closed:
            raise BackendError(f"{self.path}: database closed")
        if os.getpid() != self._pid:
            self._forget_inherited()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            self._local.conn = conn
            with self._lock:
                self._all.add(conn)
        return conn

    @contextlib.contextmanager
    def write_transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error).

        IMMEDIATE takes the write lock at the start, so what the transaction
        reads cannot change before it writes (no lost update between processes).
        """
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.commit()
        except BaseException:
            # Never leave a transaction open: the thread's next BEGIN would fail.
            with contextlib.suppress(sqlite3.Error):
                conn.rollback()
            raise

    def close(self) -> None:
        """Close every thread's connection; later use raises BackendError."""
        with self._lock:
            self._closed = True
            conns, self._all = list(self._all), weakref.WeakSet()
        if os.getpid() != self._pid:
            return  # inherited from the parent: theirs to close
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _open(self) -> sqlite3.Connection:
        # check_same_thread=False only so close() may close other threads'
        # connections; each connection is still used by its own thread alone.
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s,
                               isolation_level=None, check_same_thread=False,
                               factory=_Connection)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        self._enable_wal(conn)
        return conn

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        # Switching to WAL needs an exclusive moment and does not always wait
        # on the busy handler, so processes opening a new file together retry.
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
                continue
            if mode.lower() != "wal":
                raise sqlite3.OperationalError(f"cannot use WAL journal (got {mode})")
            return

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        with self.write_transaction():
            for statement in self._schema:
                conn.execute(statement)

    def _forget_inherited(self) -> None:
        # Keep the parent's connections referenced but unused: closing them
        # here, even through garbage collection, could disturb the WAL files
        # the parent is still using.
        with self._lock:
            self._inherited.append((self._local, list(self._all)))
            self._all = weakref.WeakSet()
        self._local = threading.local()
        self._pid = os.getpid()
