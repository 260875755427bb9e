"""The rules of a job's life, written once above the backends.

Every state change is a conditional write on the job's version followed by
an announcement on the state-change queue, so the scheduler can notify.
The write puts the change in the job's outbox (`announce_version`); once
the announcement is sent the outbox is emptied. A process that dies, or a
queue that fails, between the two leaves the change in the outbox, and the
scheduler's sweep (`announce_missed`) announces it: nothing is lost.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from datetime import datetime, timedelta

from core.errors import (BackendError, ConflictError, InvalidTransition, NommerError,
                         NotFound, ValidationError)
from core.interfaces import JobStore, Queue
from core.metrics import Metrics, job_kind
from core.jobs import (ACTIVE_STATES, Job, JobState, new_job_id, retry, transition,
                       utcnow)

log = logging.getLogger(__name__)

# How many times a read-modify-write is retried when another writer wins.
_CONFLICT_RETRIES = 10


@dataclasses.dataclass(frozen=True)
class StateChange:
    """The body of a state-change message."""

    job_id: str
    state: str
    state_details: str
    version: int
    at: str

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, body: str) -> "StateChange":
        return cls(**json.loads(body))


class JobService:
    """Submit, claim, advance, heartbeat, cancel and abandon jobs."""

    def __init__(self, store: JobStore, new_jobs: Queue, state_changes: Queue):
        self.store = store
        self.new_jobs = new_jobs
        self.state_changes = state_changes
        self.metrics = Metrics(store)
        # job id -> monotonic time it entered ENCODING here: an encoder's
        # ENCODING and UPLOADING both pass through its own service.
        self._encoding_since: dict[str, float] = {}

    def submit(self, source: str, destination: str, options: dict,
               notify_url: str | None = None, sent_options: dict | None = None,
               notify_format: str = "form") -> Job:
        """Store a PENDING job and queue it for an encoder.

        The job is queued before it is announced: a failure to queue raises
        here, so the API answers an error instead of accepting a job that no
        encoder will ever see.
        """
        job = self._create(Job(id=new_job_id(), source=source, destination=destination,
                               options=options, notify_url=notify_url,
                               sent_options=sent_options, notify_format=notify_format,
                               announce_version=1))
        self._queue(job)
        return self._announce(job)

    def retry(self, job_id: str) -> Job:
        """Put a job that ended ERROR, ABANDONED or CANCELLED back to PENDING
        under the same id and queue it again. Raises NotFound, InvalidTransition
        (not ended, or FINISHED), ConflictError if it changed under us."""
        job = self.store.get_job(job_id)
        stored = self.store.update_job(_in_outbox(retry(job)), job.version)
        self._queue(stored)
        return self._announce(stored)

    def renotify(self, job_id: str) -> Job:
        """Queue the job's current state for notification again (the scheduler
        sends, retries and gives it up like any other). Raises NotFound, and
        ConflictError when the job has no notify_url.

        The change goes on the state-change queue directly, not through the
        job's outbox: that would be a write to the job, which takes it from
        the encoder holding it. A failure to queue raises BackendError, so the
        caller knows it was not queued.
        """
        job = self.store.get_job(job_id)
        if not job.notify_url:
            raise ConflictError(f"job {job_id} has no notify_url: there is nowhere to notify")
        self.state_changes.send(StateChange(
            job_id=job.id, state=job.state.value, state_details=job.state_details,
            version=job.version, at=utcnow().isoformat()).to_json())
        return job

    def _queue(self, job: Job) -> None:
        """Queue a PENDING job for an encoder. A failure to queue raises here
        (so the API answers an error) after marking the job ERROR."""
        try:
            self.new_jobs.send(job.id)
        except BackendError:
            # Best effort: leave no PENDING job behind that nothing will run.
            try:
                self.store.update_job(
                    _in_outbox(transition(job, JobState.ERROR, "could not be queued")),
                    job.version)
            except NommerError:
                log.exception("job %s could not be queued nor marked ERROR", job.id)
            raise

    def _create(self, job: Job) -> Job:
        """Create `job`; a create whose answer was lost and retried is no conflict.

        Ids are fresh and random, so "already exists" for the same id, with
        the same request at version 1, can only be our own first attempt.
        """
        try:
            return self.store.create_job(job)
        except ConflictError:
            stored = self.store.get_job(job.id)
            same = (stored.version == 1 and stored.source == job.source
                    and stored.destination == job.destination and stored.options == job.options
                    and stored.notify_url == job.notify_url)
            if not same:
                raise
            return stored

    def claim(self, job_id: str, node_id: str, lease_s: float,
              now: datetime | None = None) -> Job | None:
        """Take the job for `node_id` (state DOWNLOADING), or None if not ours to run.

        Two encoders may receive the same message (at-least-once delivery).
        Both read version v; both try "write DOWNLOADING if version == v";
        the store lets exactly one through and the other gets ConflictError,
        so it returns None and never runs the job. An active job is taken
        over only when its holder's lease has run out.
        """
        now = now or utcnow()
        try:
            job = self.store.get_job(job_id)
        except NotFound:
            log.warning("job %s from the queue is not in the store", job_id)
            return None
        if job.state in ACTIVE_STATES and job.lease_expires_at and job.lease_expires_at > now:
            return None
        if job.state is not JobState.PENDING and job.state not in ACTIVE_STATES:
            return None
        claimed = transition(job, JobState.DOWNLOADING, node=node_id, progress=0,
                             attempts=job.attempts + 1,
                             lease_expires_at=now + timedelta(seconds=lease_s))
        try:
            stored = self.store.update_job(_in_outbox(claimed), job.version)
        except ConflictError:
            return None
        if job.state is JobState.PENDING:
            # A PENDING job is never heartbeated: updated_at is when it was queued.
            self.metrics.observe("dispatch_latency_seconds",
                                 (now - job.updated_at).total_seconds(), kind=job_kind(job))
        return self._announce(stored)

    def advance(self, job: Job, new_state: JobState, details: str = "", **changes) -> Job:
        """Move a job we hold to `new_state`. Raises ConflictError if it changed
        under us (cancelled, or taken over), InvalidTransition if not allowed."""
        job = self._announce(job)  # an earlier change whose send failed goes first
        stored = self.store.update_job(_in_outbox(transition(job, new_state, details, **changes)),
                                       job.version)
        stored = self._announce(stored)
        self._time_encoding(stored)
        return stored

    def _time_encoding(self, job: Job) -> None:
        started = self._encoding_since.pop(job.id, None)
        if job.state is JobState.ENCODING:
            self._encoding_since[job.id] = time.monotonic()
        elif started is not None and job.state is JobState.UPLOADING:
            self.metrics.observe("encode_duration_seconds", time.monotonic() - started,
                                 kind=job_kind(job))

    def heartbeat(self, job: Job, lease_s: float, progress: int | None = None) -> Job:
        """Extend our lease on the job (and record progress). Raises ConflictError
        if the job changed under us: the caller must stop working on it."""
        job = self._announce(job)  # a change whose send failed is tried again
        changed = dataclasses.replace(
            job, updated_at=utcnow(),
            lease_expires_at=utcnow() + timedelta(seconds=lease_s),
            progress=job.progress if progress is None else max(0, min(100, progress)))
        return self.store.update_job(changed, job.version)

    def fail(self, job_id: str, reason: str) -> Job | None:
        """Put a job in ERROR whoever holds it, unless it has already ended."""
        return self._force(job_id, JobState.ERROR, reason)

    def cancel(self, job_id: str) -> Job:
        """Cancel a job that has not ended. Raises NotFound, or InvalidTransition
        if it is already FINISHED, ERROR, ABANDONED or CANCELLED."""
        job = self._force(job_id, JobState.CANCELLED, "cancelled by request", strict=True)
        assert job is not None
        return job

    def abandon_stale(self, older_than_s: float, now: datetime | None = None) -> list[Job]:
        """Mark ABANDONED the active jobs not updated for `older_than_s` seconds."""
        cutoff = (now or utcnow()) - timedelta(seconds=older_than_s)
        abandoned = []
        for state in sorted(ACTIVE_STATES):
            cursor = None
            while True:
                page, cursor = self.store.list_jobs(state=state, limit=100, cursor=cursor)
                for job in page:
                    if job.updated_at < cutoff:
                        try:
                            done = self._force(job.id, JobState.ABANDONED,
                                               f"no update for {older_than_s:.0f} s",
                                               stale_before=cutoff)
                        except ValidationError as exc:
                            # The store refuses this job's record (too large):
                            # the others are still abandoned.
                            log.error("job %s could not be abandoned: %s", job.id, exc)
                            continue
                        if done is not None:
                            abandoned.append(done)
                if cursor is None:
                    break
        return abandoned

    def _force(self, job_id: str, new_state: JobState, details: str,
               strict: bool = False, stale_before: datetime | None = None) -> Job | None:
        for _ in range(_CONFLICT_RETRIES):
            job = self.store.get_job(job_id)
            if job.is_terminal:
                if strict:
                    raise InvalidTransition(f"job {job_id} has already ended ({job.state})")
                return None
            if stale_before is not None and job.updated_at >= stale_before:
                return None
            try:
                stored = self.store.update_job(_in_outbox(transition(job, new_state, details)),
                                               job.version)
            except ConflictError:
                continue
            return self._announce(stored)
        raise ConflictError(f"job {job_id} kept changing; gave up moving it to {new_state}")

    def announce_missed(self, older_than_s: float, now: datetime | None = None) -> list[Job]:
        """Announce the state changes left in outboxes for `older_than_s`
        seconds (their writer died or could not reach the queue); returns
        their jobs. At least once: a writer merely slow may announce too."""
        cutoff = (now or utcnow()) - timedelta(seconds=older_than_s)
        swept = []
        for job in self.store.list_unannounced(cutoff):
            if self._announce(job).announce_version is None:
                swept.append(job)
        return swept

    def _announce(self, job: Job) -> Job:
        """Send the state change in `job`'s outbox, if any, and empty the
        outbox; returns the job as we now know it (outbox empty once sent).
        A failed send is logged and left in the outbox for the next write or
        the scheduler's sweep."""
        version = job.announce_version
        if version is None:
            return job
        try:
            self.state_changes.send(StateChange(
                job_id=job.id, state=job.state.value, state_details=job.state_details,
                version=version, at=job.updated_at.isoformat()).to_json())
        except BackendError as exc:
            log.warning("job %s %s: announcing failed (%s); it stays in the outbox",
                        job.id, job.state, exc)
            return job
        try:
            self.store.mark_announced(job.id, version)
        except BackendError as exc:
            # Our next write empties it; else the sweep announces it once more.
            log.warning("job %s: emptying the outbox failed: %s", job.id, exc)
        return dataclasses.replace(job, announce_version=None)


def _in_outbox(job: Job) -> Job:
    """`job` with its state change (the version its write will make) in the outbox."""
    return dataclasses.replace(job, announce_version=job.version + 1)
