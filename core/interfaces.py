"""The four seams, shaped like the cloud services behind them.

Each backend implements one of these and raises only core.errors types.
Rules (state transitions, retries, leases) live above, in core.jobservice.
"""
from __future__ import annotations

import abc
import dataclasses
import threading
from collections.abc import Sequence
from datetime import datetime

from core.jobs import Job, JobState
from core.storage.output_files import stopped, upload_order


@dataclasses.dataclass(frozen=True)
class Message:
    """A received queue message. `receipt` identifies this delivery."""

    id: str
    body: str
    receipt: str
    receive_count: int


@dataclasses.dataclass
class Node:
    """One encoder's report of itself (the original's ec2nommer state domain)."""

    id: str
    state: str  # "working", "idle" or "stopped"
    active_jobs: int
    last_report: datetime
    started_at: datetime
    # Set by the scaler (mark_node_draining), never by the encoder's reports:
    # take no new job, stop when the running ones end.
    draining: bool = False


class JobStore(abc.ABC):
    """Jobs and encoder nodes. Writes to a job are conditional on its version."""

    @abc.abstractmethod
    def create_job(self, job: Job) -> Job:
        """Store a new job (version 1). Raises ConflictError if the id exists."""

    @abc.abstractmethod
    def get_job(self, job_id: str) -> Job:
        """Return the job with a consistent read. Raises NotFound."""

    def commit_mark(self) -> object | None:
        """A value that changes whenever anything is committed to the store,
        by any process: while it stays equal, a job read after it is still
        as stored. None when the store cannot tell (then nothing read may be
        kept). Cheap: no round trip to the store."""
        return None

    @abc.abstractmethod
    def update_job(self, job: Job, expected_version: int) -> Job:
        """Write `job` if the stored version is still `expected_version`.

        Returns the job as stored (version = expected_version + 1). Raises
        ConflictError if another writer got there first, NotFound if gone.
        """

    @abc.abstractmethod
    def list_jobs(self, state: JobState | None = None, limit: int = 50,
                  cursor: str | None = None) -> tuple[list[Job], str | None]:
        """Jobs newest first, optionally of one state; returns (page, next cursor or None).

        Raises ValidationError for a cursor this store did not hand out.
        """

    @abc.abstractmethod
    def count_jobs(self, states: frozenset[JobState]) -> int:
        """How many jobs are in any of `states`."""

    def created_since(self, since: datetime, limit: int = 2000) -> list[datetime]:
        """Creation times of the jobs created after `since`, newest first, at
        most `limit`. A store may answer from its index alone (no job reads)."""
        times: list[datetime] = []
        cursor = None
        while len(times) < limit:
            page, cursor = self.list_jobs(limit=min(100, limit - len(times)), cursor=cursor)
            for job in page:
                if job.created_at <= since:
                    return times
                times.append(job.created_at)
            if cursor is None:
                break
        return times

    @abc.abstractmethod
    def mark_announced(self, job_id: str, version: int) -> None:
        """Empty the job's outbox if it still holds `version` (announce_version
        = None), without a new version, so the job's holder does not lose it.
        No error when the job is gone or the outbox holds another version."""

    @abc.abstractmethod
    def list_unannounced(self, updated_before: datetime, limit: int = 100) -> list[Job]:
        """Jobs whose outbox holds a version and that were updated before
        `updated_before`: state changes nobody announced (a crash or failure
        between the write and the announcement). At most `limit`."""

    @abc.abstractmethod
    def put_node(self, node: Node) -> None:
        """Create or replace an encoder's report."""

    @abc.abstractmethod
    def list_nodes(self) -> list[Node]:
        """Every encoder report."""

    @abc.abstractmethod
    def delete_node(self, node_id: str) -> None:
        """Forget an encoder; no error if it is unknown."""

    @abc.abstractmethod
    def mark_node_draining(self, node_id: str) -> None:
        """Set the draining mark on an encoder's report; no error if it is unknown.

        put_node keeps the mark (an encoder's own reports never clear it);
        delete_node forgets it with the report.
        """

    def get_node(self, node_id: str) -> Node | None:
        """One encoder's report, or None."""
        return next((node for node in self.list_nodes() if node.id == node_id), None)

    @abc.abstractmethod
    def add_counters(self, increments: dict[str, float]) -> None:
        """Add each amount to its named counter (created at 0), atomically per
        counter: concurrent adds from many processes all count."""

    @abc.abstractmethod
    def read_counters(self) -> dict[str, float]:
        """Every counter's current value (consistent read)."""

    def close(self) -> None:
        """Release connections."""


class Queue(abc.ABC):
    """At-least-once queue with SQS semantics.

    A received message is hidden for its visibility timeout, then delivered
    again unless deleted. Each delivery counts; past the queue's dead-letter
    limit a message is moved aside and not delivered again.
    """

    @abc.abstractmethod
    def send(self, body: str, delay_s: float = 0.0) -> str:
        """Enqueue `body`, visible after `delay_s` (at most 900 s, SQS's limit);
        returns the message id."""

    @abc.abstractmethod
    def receive(self, max_messages: int = 1, wait_s: float = 0.0,
                visibility_timeout_s: float | None = None) -> list[Message]:
        """Return up to `max_messages` visible messages, hiding each for the timeout.

        With `wait_s` > 0, waits at most that long and returns as soon as a
        message is available; returns [] when none came.
        """

    @abc.abstractmethod
    def delete(self, receipt: str) -> None:
        """Remove a received message for good. An unknown receipt is ignored.

        A receipt superseded by a later delivery is ignored by the embedded
        queue; SQS may still honour it. Nothing may rely on either: the
        store's conditional claims are what keep duplicate deliveries apart.
        """

    @abc.abstractmethod
    def extend(self, receipt: str, visibility_timeout_s: float) -> None:
        """Hide the message for `visibility_timeout_s` more seconds from now.

        Raises NotFound when the receipt no longer names an undeleted message.
        """

    def release(self, receipt: str) -> None:
        """Make the message visible again at once."""
        self.extend(receipt, 0)

    @abc.abstractmethod
    def counts(self) -> tuple[int, int]:
        """(visible, in flight) message counts; approximate on SQS."""

    def close(self) -> None:
        """Release connections."""


@dataclasses.dataclass(frozen=True)
class Encoder:
    """An encoder machine or slot as the fleet sees it.

    state: "pending" (launched, not yet working), "running", "stopping" or "stopped".
    """

    id: str
    state: str
    launched_at: datetime | None


class Fleet(abc.ABC):
    """The encoder machines: supervisord slots locally, EC2 instances on AWS."""

    @abc.abstractmethod
    def list_encoders(self) -> list[Encoder]:
        """Every encoder the fleet knows, in any state."""

    @abc.abstractmethod
    def launch(self, count: int) -> list[str]:
        """Start up to `count` encoders; returns the ids started."""

    @abc.abstractmethod
    def stop(self, encoder_ids: list[str]) -> None:
        """Stop these encoders (they finish or release their jobs first)."""


@dataclasses.dataclass(frozen=True)
class OutputFile:
    """One file of a set uploaded under a destination prefix (Storage.upload_files).

    `key` is its path below the prefix, "/"-separated ("720p/seg_00001.m4s");
    `content_type` comes from core.storage.content_types. `last` marks
    playlists and manifests: uploaded after every other file, in the order
    given, so a reader never sees one naming a file not yet there.
    """

    local_path: str
    key: str
    content_type: str
    last: bool = False


class Storage(abc.ABC):
    """Reads sources and writes destinations for the URI schemes it serves."""

    schemes: tuple[str, ...] = ()

    @abc.abstractmethod
    def download(self, uri: str, local_path: str, max_bytes: int,
                 stop: threading.Event | None = None) -> int:
        """Copy `uri` to `local_path`; returns bytes written.

        Raises StorageError with the reason (missing, too large, refused,
        fewer bytes than announced), and soon after `stop` is set.
        """

    @abc.abstractmethod
    def upload(self, local_path: str, uri: str) -> None:
        """Copy `local_path` to `uri`. Raises StorageError when not writable."""

    def check_source(self, uri: str) -> None:
        """Raise ValidationError if `uri` can never be read (bad form). Cheap; no I/O."""

    def check_destination(self, uri: str) -> None:
        """Raise ValidationError if `uri` can never be written (bad form). Cheap; no I/O."""

    def upload_files(self, files: Sequence[OutputFile], prefix_uri: str,
                     stop: threading.Event | None = None) -> None:
        """Upload every file to `prefix_uri` + file.key (`prefix_uri` ends with "/").

        Files not marked `last` first (an implementation may upload them in
        parallel), then the `last` ones one by one in the order given. Every
        key is checked before anything is written (no "..", no leading "/").
        Raises StorageError naming the file on the first failure, and soon
        after `stop` is set; a backend may raise BackendError when its
        service fails (the job is tried again later).

        This default uploads one file after another with `upload`, which
        chooses the content type itself; backends that store one override it.
        """
        first, last = upload_order(files, prefix_uri)
        for file in first + last:
            if stop is not None and stop.is_set():
                raise stopped(prefix_uri)
            self.upload(file.local_path, prefix_uri + file.key)
