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
- `commit_mark` tells, without a query, whether anything was committed
  since an earlier mark: readers may keep what they read while it holds.

sqlite3 errors stop here: `translate_errors` turns them into BackendError.
"""
from __future__ import annotations

import contextlib
import mmap
import os
import sqlite3
import sys
import threading
import time
import weakref
from collections.abc import Iterator

from core.errors import BackendError

# How long a writer waits for another process's write lock before failing.
BUSY_TIMEOUT_S = 10.0

# The WAL-index header (sqlite.org/walformat.html, "The WAL-Index Header"):
# two copies of 48 bytes at the start of the "-shm" file, shared by every
# process using the database. A commit rewrites them (the second copy, then
# the first) before it returns, and readers take their snapshot from them,
# so unchanged copies mean no transaction committed in between.
_WAL_INDEX_HEADER_BYTES = 48
_WAL_INDEX_VERSION = 3007000


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
        self._wal_index: _WalIndexView | _NoWalIndex | None = None
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

    def commit_mark(self) -> bytes | None:
        """A value that changes whenever any connection, in any process,
        commits to the database: equal marks mean nothing was committed in
        between. None while a commit is being published or when the mark
        cannot be read; None never equals a mark. Costs no query and never
        releases the GIL, unlike any sqlite3 call.

        Raises BackendError if closed.
        """
        if self._closed:
            raise BackendError(f"{self.path}: database closed")
        view = self._wal_index
        if view is None or view.pid != os.getpid():
            view = self._open_wal_index()
        return view.mark()

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
            view, self._wal_index = self._wal_index, None
        if os.getpid() != self._pid:
            return  # inherited from the parent: theirs to close
        if view is not None and view.pid == self._pid:
            view.close()
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

    def _open_wal_index(self) -> _WalIndexView | _NoWalIndex:
        with self._lock:
            view = self._wal_index
            if view is not None and view.pid == os.getpid():
                return view
            if view is not None:
                # Inherited across fork(): kept referenced but unused, like
                # the parent's connections (see _forget_inherited).
                self._inherited.append(view)
            view = _WalIndexView.open(self.path, self._open) or _NoWalIndex()
            self._wal_index = view
            return view

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


class _WalIndexView:
    """The WAL-index header of one database, mapped read-only.

    It keeps a connection of its own open: while any connection of this
    process has the database open, SQLite neither truncates nor removes the
    "-shm" file, so the mapping stays valid and current.
    """

    def __init__(self, conn: sqlite3.Connection, shm, view: mmap.mmap):
        self.pid = os.getpid()
        self._conn, self._shm, self._view = conn, shm, view

    @classmethod
    def open(cls, path: str, connect) -> _WalIndexView | None:
        """The view of `path`'s header, or None if it cannot be read as documented."""
        conn = connect()
        try:
            # A read opens the "-shm" file and, if needed, builds the index.
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            shm = open(f"{path}-shm", "rb")
        except (OSError, sqlite3.Error):
            conn.close()
            return None
        try:
            view = mmap.mmap(shm.fileno(), 2 * _WAL_INDEX_HEADER_BYTES, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            shm.close()
            conn.close()
            return None
        self = cls(conn, shm, view)
        header = self.mark()
        # iVersion, then isInit: a format this code does not know reads as "no mark".
        if (header is None or int.from_bytes(header[0:4], sys.byteorder) != _WAL_INDEX_VERSION
                or header[12] != 1):
            self.close()
            return None
        return self

    def mark(self) -> bytes | None:
        # The first copy, then the second, as SQLite's readers do: a commit
        # writes them in the other order, so copies that differ mean a
        # commit is being published.
        first = self._view[0:_WAL_INDEX_HEADER_BYTES]
        second = self._view[_WAL_INDEX_HEADER_BYTES:2 * _WAL_INDEX_HEADER_BYTES]
        return first if first == second else None

    def close(self) -> None:
        self._view.close()
        self._shm.close()
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()


class _NoWalIndex:
    """Stands for a header that cannot be read: no marks, so nothing is kept."""

    def __init__(self):
        self.pid = os.getpid()

    def mark(self) -> None:
        return None

    def close(self) -> None:
        pass
