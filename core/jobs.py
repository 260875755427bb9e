"""The job record and its state machine.

Every state change in the system goes through `transition`, the one place
that knows which changes are allowed.
"""
from __future__ import annotations

import dataclasses
import enum
import uuid
from datetime import datetime, timezone

from core.errors import InvalidTransition


class JobState(str, enum.Enum):
    PENDING = "PENDING"
    DOWNLOADING = "DOWNLOADING"
    ENCODING = "ENCODING"
    UPLOADING = "UPLOADING"
    FINISHED = "FINISHED"
    ERROR = "ERROR"
    ABANDONED = "ABANDONED"
    CANCELLED = "CANCELLED"

    def __str__(self) -> str:
        return self.value


ACTIVE_STATES = frozenset({JobState.DOWNLOADING, JobState.ENCODING, JobState.UPLOADING})
TERMINAL_STATES = frozenset(
    {JobState.FINISHED, JobState.ERROR, JobState.ABANDONED, JobState.CANCELLED}
)
UNFINISHED_STATES = frozenset({JobState.PENDING}) | ACTIVE_STATES
# Ends a client may try again (FINISHED is not one: its output exists).
RETRYABLE_STATES = frozenset({JobState.ERROR, JobState.ABANDONED, JobState.CANCELLED})

_ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset(
        {JobState.DOWNLOADING, JobState.ERROR, JobState.CANCELLED, JobState.ABANDONED}
    ),
    # An active job may start over at DOWNLOADING: that is another encoder
    # taking over after the first one died (its lease ran out).
    JobState.DOWNLOADING: frozenset(
        {JobState.DOWNLOADING, JobState.ENCODING, JobState.PENDING, JobState.ERROR,
         JobState.CANCELLED, JobState.ABANDONED}
    ),
    JobState.ENCODING: frozenset(
        {JobState.DOWNLOADING, JobState.UPLOADING, JobState.PENDING, JobState.ERROR,
         JobState.CANCELLED, JobState.ABANDONED}
    ),
    JobState.UPLOADING: frozenset(
        {JobState.DOWNLOADING, JobState.FINISHED, JobState.PENDING, JobState.ERROR,
         JobState.CANCELLED, JobState.ABANDONED}
    ),
}

# The original cut ERROR details to 1023 characters (one SimpleDB value).
MAX_DETAILS_CHARS = 1023

# How a job's notifications are sent: the original's form POST, or a signed
# JSON body (feeder.notify, core.webhooks).
NOTIFY_FORMATS = ("form", "json")
# Notifications given up that a job keeps listed (the latest): a job record
# must stay small (SimpleDB items, DynamoDB's 400 KB).
MAX_GIVEN_UP_LISTED = 20


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_job_id() -> str:
    return uuid.uuid4().hex


@dataclasses.dataclass
class Job:
    """One encoding job.

    `version` increases by one on every write; conditional writes compare it.
    `options` are what the encoder runs; `sent_options` what the client
    sent (before 2011-era options were translated, or the catalogue preset
    it named), None for jobs stored before it was kept.
    `lease_expires_at` is when the encoder working on the job must have
    heartbeated again, or another encoder may take the job over.
    `announce_version` is the outbox: the version whose state change is
    still to be announced (written with the change itself), None once it
    was announced.
    `outputs` describes what the job wrote, one dict per output, once it is
    FINISHED (None before): uri, size_bytes, duration_s, container,
    video_codec, audio_codec, width, height, bitrate and kind ("file", "hls");
    an hls output adds master_playlist, renditions and segments.
    `notify_format` is "form" (the original's) or "json" (signed).
    `notifications_given_up` lists the notifications the scheduler gave up
    on, oldest first: dicts of state, changed_at, given_up_at, attempts and
    reason (at most MAX_GIVEN_UP_LISTED, the latest).
    """

    id: str
    source: str
    destination: str
    options: dict
    notify_url: str | None = None
    state: JobState = JobState.PENDING
    state_details: str = ""
    progress: int = 0
    attempts: int = 0
    node: str | None = None
    created_at: datetime = dataclasses.field(default_factory=utcnow)
    updated_at: datetime = dataclasses.field(default_factory=utcnow)
    lease_expires_at: datetime | None = None
    version: int = 0
    announce_version: int | None = None
    sent_options: dict | None = None
    outputs: list | None = None
    notify_format: str = "form"
    notifications_given_up: list = dataclasses.field(default_factory=list)

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def to_dict(self) -> dict:
        """A JSON-ready dict of every field (times as ISO-8601 UTC)."""
        out = dataclasses.asdict(self)
        out["state"] = self.state.value
        for key in ("created_at", "updated_at", "lease_expires_at"):
            value = getattr(self, key)
            out[key] = value.isoformat() if value else None
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Job":
        values = dict(data)
        values["state"] = JobState(values["state"])
        for key in ("created_at", "updated_at", "lease_expires_at"):
            if values.get(key):
                values[key] = datetime.fromisoformat(values[key])
        return cls(**values)


def can_transition(current: JobState, new: JobState) -> bool:
    return new in _ALLOWED.get(current, frozenset())


def transition(job: Job, new_state: JobState, details: str = "", **changes) -> Job:
    """Return a copy of `job` moved to `new_state`, with `changes` applied.

    Raises InvalidTransition if the state machine does not allow the move.
    The copy keeps the old version: the store's conditional write bumps it.
    """
    if not can_transition(job.state, new_state):
        raise InvalidTransition(f"job {job.id}: {job.state} -> {new_state} is not allowed")
    if len(details) > MAX_DETAILS_CHARS:
        details = details[-MAX_DETAILS_CHARS:]
    changed = dataclasses.replace(
        job, state=new_state, state_details=details, updated_at=utcnow(), **changes
    )
    if new_state is JobState.FINISHED:
        changed.progress = 100
    if new_state in TERMINAL_STATES:
        changed.lease_expires_at = None
    return changed


def retry(job: Job) -> Job:
    """Return a copy of an ended `job` back at PENDING, as a new attempt.

    The id, creation time and attempt count are kept (the next claim counts
    the new attempt); the previous ending is kept in the details, so the job
    reads as one history. Raises InvalidTransition unless the job ended
    ERROR, ABANDONED or CANCELLED.
    """
    if job.state not in RETRYABLE_STATES:
        raise InvalidTransition(f"job {job.id} is {job.state}: only a job that ended "
                                "ERROR, ABANDONED or CANCELLED can be retried")
    details = f"retry after {job.state.value}: {job.state_details}".rstrip(": ")
    return dataclasses.replace(
        job, state=JobState.PENDING, state_details=details[:MAX_DETAILS_CHARS], progress=0,
        node=None, lease_expires_at=None, updated_at=utcnow())
