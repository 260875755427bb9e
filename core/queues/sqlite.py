"""The embedded queue: SQS semantics on a table in the shared SQLite file.

At-least-once delivery, a visibility timeout per received message, a fresh
receipt per delivery, a receive count, dead-lettering after N receives and
long polling, like SQS. Several queues (by name) share one table and file.

Times are wall-clock seconds (time.time()) because several processes
compare them; time.monotonic() values mean nothing across processes.
"""
from __future__ import annotations

import time
import uuid

from core.errors import NotFound
from core.interfaces import Message, Queue
from core.sqlite_db import SQLiteDatabase, translate_errors

# Schema version 1, recorded in schema_versions (shared with the job store).
SCHEMA_VERSION = 1
_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS schema_versions (
        component TEXT PRIMARY KEY,
        version INTEGER NOT NULL)""",
    f"INSERT OR IGNORE INTO schema_versions VALUES ('queues', {SCHEMA_VERSION})",
    """CREATE TABLE IF NOT EXISTS queue_messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- send order
        queue TEXT NOT NULL,
        id TEXT NOT NULL UNIQUE,
        body TEXT NOT NULL,
        sent_at REAL NOT NULL,                  -- time.time() seconds
        visible_at REAL NOT NULL,               -- hidden until then
        receipt TEXT,                           -- of the latest delivery
        receive_count INTEGER NOT NULL DEFAULT 0)""",
    # Serves both the cheap poll and "oldest visible first" without a sort.
    """CREATE INDEX IF NOT EXISTS queue_messages_visible
        ON queue_messages (queue, visible_at, seq)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS queue_messages_receipt ON queue_messages (receipt)",
]

# The longest a sent message may stay invisible (SQS DelaySeconds).
MAX_DELAY_S = 900


class SQLiteQueue(Queue):
    """The queue `name` in the SQLite file at `path` (created if missing).

    visibility_timeout_s: how long a received message stays hidden.
    dead_letter_after: a message already received this many times is moved
        to the queue f"{name}_dead" on the next receive attempt instead of
        being delivered (SQS maxReceiveCount).
    poll_interval_s: how often a long poll looks for a message.
    Every method raises BackendError when SQLite fails.
    """

    def __init__(self, path: str, name: str, visibility_timeout_s: float = 60,
                 dead_letter_after: int = 6, poll_interval_s: float = 0.025):
        if visibility_timeout_s < 0 or dead_letter_after < 1 or poll_interval_s <= 0:
            raise ValueError("visibility_timeout_s >= 0, dead_letter_after >= 1 and "
                             "poll_interval_s > 0 are required")
        self.name = name
        self.dead_letter_name = f"{name}_dead"
        self.visibility_timeout_s = visibility_timeout_s
        self.dead_letter_after = dead_letter_after
        self.poll_interval_s = poll_interval_s
        self._db = SQLiteDatabase(path, _SCHEMA)

    def send(self, body: str, delay_s: float = 0.0) -> str:
        """Enqueue `body`, visible after `delay_s` (at most 900 s, as SQS);
        returns the message id."""
        if not 0 <= delay_s <= MAX_DELAY_S:
            raise ValueError(f"delay_s must be within 0..{MAX_DELAY_S}")
        message_id = uuid.uuid4().hex
        now = time.time()
        with translate_errors(f"send to queue {self.name}"):
            self._db.connection().execute(
                "INSERT INTO queue_messages (queue, id, body, sent_at, visible_at)"
                " VALUES (?, ?, ?, ?, ?)", (self.name, message_id, body, now, now + delay_s))
        return message_id

    def receive(self, max_messages: int = 1, wait_s: float = 0.0,
                visibility_timeout_s: float | None = None) -> list[Message]:
        """Up to `max_messages` visible messages, each hidden for
        `visibility_timeout_s` (default: the queue's) under a fresh receipt.

        Messages come in the order they became visible: send order for
        messages never received, behind them those whose timeout ran out.

        With `wait_s` > 0, polls every poll_interval_s and returns as soon as
        something was received; returns [] when `wait_s` seconds pass first.
        """
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        hide_s = self.visibility_timeout_s if visibility_timeout_s is None else visibility_timeout_s
        if hide_s < 0:
            raise ValueError("visibility_timeout_s must not be negative")
        deadline = time.monotonic() + max(0.0, wait_s)
        while True:
            if self._any_visible():
                received = self._take(max_messages, hide_s)
                if received:
                    return received
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            time.sleep(min(self.poll_interval_s, remaining))

    def delete(self, receipt: str) -> None:
        """Remove the message if `receipt` is its latest delivery; otherwise do nothing."""
        with translate_errors(f"delete from queue {self.name}"):
            self._db.connection().execute(
                "DELETE FROM queue_messages WHERE queue = ? AND receipt = ?",
                (self.name, receipt))

    def extend(self, receipt: str, visibility_timeout_s: float) -> None:
        """Hide the message for `visibility_timeout_s` seconds from now.

        Raises NotFound if `receipt` is not the message's latest delivery
        (deleted, or received again by someone else after its timeout).
        """
        if visibility_timeout_s < 0:
            raise ValueError("visibility_timeout_s must not be negative")
        with translate_errors(f"extend in queue {self.name}"):
            cursor = self._db.connection().execute(
                "UPDATE queue_messages SET visible_at = ? WHERE queue = ? AND receipt = ?",
                (time.time() + visibility_timeout_s, self.name, receipt))
        if cursor.rowcount == 0:
            raise NotFound(f"queue {self.name}: receipt is stale or unknown")

    def counts(self) -> tuple[int, int]:
        """(visible, in flight) messages of this queue right now."""
        with translate_errors(f"count queue {self.name}"):
            row = self._db.connection().execute(
                "SELECT COALESCE(SUM(visible_at <= :now), 0), COALESCE(SUM(visible_at > :now), 0)"
                " FROM queue_messages WHERE queue = :queue",
                {"now": time.time(), "queue": self.name}).fetchone()
        return row[0], row[1]

    def close(self) -> None:
        self._db.close()

    def _any_visible(self) -> bool:
        # A plain read: in WAL mode it never waits for writers, so an idle
        # long poll costs one index probe per interval and no write lock.
        with translate_errors(f"poll queue {self.name}"):
            row = self._db.connection().execute(
                "SELECT 1 FROM queue_messages WHERE queue = ? AND visible_at <= ? LIMIT 1",
                (self.name, time.time())).fetchone()
        return row is not None

    def _take(self, max_messages: int, hide_s: float) -> list[Message]:
        """Deliver up to `max_messages` visible messages in one write transaction.

        BEGIN IMMEDIATE holds the write lock from the SELECT to the UPDATE,
        so two receivers (threads or processes) never take the same message.
        """
        received: list[Message] = []
        with translate_errors(f"receive from queue {self.name}"):
            with self._db.write_transaction() as conn:
                now = time.time()
                delivered: set[int] = set()
                # Dead-lettered rows leave this queue, so the next round sees
                # the rows behind them; delivered rows stay visible when
                # hide_s is 0, hence the skip by seq.
                while len(received) < max_messages:
                    rows = conn.execute(
                        "SELECT seq, id, body, receive_count FROM queue_messages"
                        " WHERE queue = ? AND visible_at <= ? ORDER BY visible_at, seq LIMIT ?",
                        (self.name, now, max_messages - len(received) + len(delivered))
                    ).fetchall()
                    fresh = [row for row in rows if row[0] not in delivered]
                    if not fresh:
                        break
                    for seq, message_id, body, receive_count in fresh:
                        if receive_count >= self.dead_letter_after:
                            self._move_to_dead_letter(conn, seq, now)
                            continue
                        delivered.add(seq)
                        receipt = uuid.uuid4().hex
                        conn.execute(
                            "UPDATE queue_messages SET receipt = ?, visible_at = ?,"
                            " receive_count = receive_count + 1 WHERE seq = ?",
                            (receipt, now + hide_s, seq))
                        received.append(Message(id=message_id, body=body, receipt=receipt,
                                                receive_count=receive_count + 1))
        return received

    def _move_to_dead_letter(self, conn, seq: int, now: float) -> None:
        # The count starts again at 0 so whoever drains the dead-letter
        # queue gets the message rather than an immediate second move.
        conn.execute(
            "UPDATE queue_messages SET queue = ?, receipt = NULL, receive_count = 0,"
            " visible_at = ? WHERE seq = ?", (self.dead_letter_name, now, seq))
