"""The feeder's scheduler: state changes -> notifications; stale jobs -> ABANDONED.

The loop is a checklist, run until SIGTERM or SIGINT:

    settle finished sends -> start each job's next notification
    -> abandon stale jobs and sweep the outboxes when due
    -> receive state changes -> start again

A state change stays in the queue until its notification is settled
(delivered, not wanted, or given up), so a crash loses nothing: the message
comes back after its visibility timeout and is sent again (at least once).
A failed send is retried by hiding its message for a growing delay (1, 2,
4, ... 60 s) until settings.notify_retry_for_s has passed since the change.

Order per job: one job's changes are sent one at a time, lowest version
first. While a change waits for its retry, the job's later changes are
hidden until after it, so they do not overtake it. Only this process knows
that, so across a restart the order is kept as far as the queue allows.

All store and queue calls are made by the thread running the loop; the
pool's threads only send HTTP, so a slow receiver holds up no one else. At
most settings.notify_per_receiver sends go to one receiver (host and port)
at once; a job whose receiver is busy is put back in the queue for a moment
(BUSY_RECEIVER_DEFER_S), so receivers that hang can neither take every
thread nor fill the changes held in memory.

Whatever a send raises settles it like a failed delivery: retried, then
given up. A give-up is listed on the job (`notifications_given_up`, and a
line in its details) once the job has ended: a write to a job an encoder
still holds would take it from the encoder. Until then it is kept in this
process, and written when a later change of the job is handled and the job
has ended; it is also parked in the queue as a message of its own (the
give-up itself, looked at again after 2, 4, ... 300 s until the job has
ended), so a restart in between loses nothing.
Nothing a receiver or a URL does stops the loop.

A job's notify_format says what is sent: the original's form, or JSON
signed with settings.webhook_secret (feeder.notify); each attempt is built
from the job as it is then and signed at its own time.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import collections
import dataclasses
import json
import logging
import sys
import time
from datetime import datetime, timezone

from core.backends import Backends, open_backends
from core.daemon import configure_logging, run_until_signalled
from core.errors import BackendError, ConflictError, NommerError, NotFound, ValidationError
from core.interfaces import Message
from core.jobs import MAX_DETAILS_CHARS, MAX_GIVEN_UP_LISTED, Job, utcnow
from core.jobservice import StateChange
from core.reach import Reach
from core.settings import Settings, load
from feeder.notify import (JSON_CONTENT_TYPE, NotifyError, Payload, describe_url, json_body,
                           receiver_key, send_notification)

log = logging.getLogger("feeder.scheduler")

BATCH_MAX = 10  # the most SQS hands out per receive
# Long-poll bound while idle: a stop request is seen within about this long.
IDLE_WAIT_S = 1.0
# While sends are in flight the loop waits for them, not the queue, and
# looks at the queue at least this often.
BUSY_WAIT_S = 0.2
# Sends in flight at once, whatever their receivers: hung receivers hold a
# thread each until notify_timeout_s, so there are many more threads than
# one receiver may use.
SENDER_THREADS = 32
# A job whose receiver already has its share of sends comes back this long later.
BUSY_RECEIVER_DEFER_S = 1.0
# Changes kept in memory at once (sending or waiting their turn), besides those
# of jobs with a send in flight; the rest stay in the queue, where a crash
# cannot lose them.
MAX_HELD = 40
BACKOFF_CAP_S = 60.0
# A job's later changes come back this long after its change being retried,
# so the retry is received first.
DEFER_MARGIN_S = 0.5
# If the retried change has not come back this long after it was due (deleted
# by hand, taken by another scheduler), later changes stop waiting for it.
RETRY_GRACE_S = 5.0
BACKEND_BACKOFF_CAP_S = 30.0
# A give-up's reason as listed on the job is cut to this many characters.
MAX_GIVE_UP_REASON_CHARS = 300
# Writes of a give-up to an ended job that another writer got to first.
GIVE_UP_WRITE_TRIES = 3
# Jobs still running whose give-ups are kept in memory; past this the oldest
# kept are dropped (they stay in the log and the give-up count).
MAX_JOBS_WITH_UNRECORDED_GIVE_UPS = 10_000
# A give-up parked in the queue while its job runs is looked at again after
# PARK_FIRST_S, then twice as long each time up to PARK_CAP_S.
PARK_FIRST_S = 2.0
PARK_CAP_S = 300.0
# Pruning lists every active job; never more often than this.
MIN_PRUNE_INTERVAL_S = 1.0
_STOP_CHECK_S = 0.2


@dataclasses.dataclass
class _Held:
    """A received state change this process is working on."""

    message_id: str
    receipt: str  # of the newest delivery: only it deletes or hides the message
    receive_count: int
    change: StateChange
    changed_at: datetime


@dataclasses.dataclass
class _Sending:
    held: _Held
    url: str
    receiver: str
    future: concurrent.futures.Future


@dataclasses.dataclass(frozen=True)
class _Retry:
    """A job whose change `message_id` is hidden until `due` (time.monotonic s)."""

    message_id: str
    due: float


def parse_parked_give_up(body: str) -> tuple[str, dict] | None:
    """(job id, give-up) of a give-up parked in the queue, or None for any
    other body."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or set(data) != {"job_id", "given_up"}:
        return None
    job_id, record = data["job_id"], data["given_up"]
    texts = ("state", "changed_at", "given_up_at", "reason")
    if not isinstance(job_id, str) or not job_id or not isinstance(record, dict) \
            or set(record) != {*texts, "attempts"} \
            or not all(isinstance(record[key], str) for key in texts) \
            or not isinstance(record["attempts"], int) or isinstance(record["attempts"], bool):
        return None
    return job_id, record


def parse_change(body: str) -> tuple[StateChange, datetime]:
    """The change in a message body and its time (aware, UTC). Raises ValueError."""
    try:
        change = StateChange.from_json(body)
    except TypeError as exc:  # not an object, or other keys than a StateChange's
        raise ValueError(f"not a state change: {exc}") from None
    texts = (change.job_id, change.state, change.state_details, change.at)
    if not all(isinstance(value, str) for value in texts) or not change.job_id:
        raise ValueError("job_id, state, state_details and at must be strings")
    if not isinstance(change.version, int) or isinstance(change.version, bool):
        raise ValueError("version must be an integer")
    changed_at = datetime.fromisoformat(change.at)
    if changed_at.tzinfo is None:
        changed_at = changed_at.replace(tzinfo=timezone.utc)
    return change, changed_at


def retry_delay_s(receive_count: int, left_s: float) -> float:
    """Seconds to wait before delivery `receive_count` + 1: 1, 2, 4, ... capped at
    BACKOFF_CAP_S and at `left_s`, the time left to keep trying."""
    return max(0.0, min(doubling_s(receive_count, 1.0, BACKOFF_CAP_S), left_s))


def doubling_s(receive_count: int, first_s: float, cap_s: float) -> float:
    """`first_s` at the first delivery, twice as long at each later one, at most `cap_s`."""
    exponent = min(max(receive_count - 1, 0), 16)
    return min(first_s * 2.0 ** exponent, cap_s)


def _give_up_key(give_up: dict) -> tuple:
    """Which change a give-up is of: the same change given up twice is listed once."""
    return give_up.get("state"), give_up.get("changed_at")


class Scheduler:
    """Sends a notification for every state change and abandons stale jobs.

    `run()` works until `request_stop()`. Store and queue failures
    (BackendError) are logged and backed off; the loop keeps running.
    """

    def __init__(self, backends: Backends, settings: Settings):
        self._store = backends.store
        self._queue = backends.state_changes
        self._jobs = backends.jobs
        self._settings = settings
        self._stopping = False
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._held: dict[str, _Held] = {}           # by message id
        self._waiting: dict[str, list[_Held]] = {}  # by job id, lowest version first
        self._sending: dict[str, _Sending] = {}     # by job id, at most one each
        self._retrying: dict[str, _Retry] = {}      # by job id
        self._per_receiver: collections.Counter[str] = collections.Counter()
        # Deliveries of a change that only waited for its busy receiver (by
        # message id): they are not failures, so they do not lengthen backoff.
        self._busy_waits: collections.Counter[str] = collections.Counter()
        # Give-ups of jobs that had not ended yet (by job id), written once they have.
        self._unrecorded_give_ups: dict[str, list[dict]] = {}
        self._reach = Reach(settings)
        self._next_prune_at = 0.0  # time.monotonic(); 0 prunes at start
        self._backend_backoff_s = 1.0

    def request_stop(self) -> None:
        """Ask the loop to end. Only sets a flag, so a signal handler may call it."""
        self._stopping = True

    def run(self) -> None:
        """Work until request_stop(); then finish the sends in flight and return."""
        self._pool = concurrent.futures.ThreadPoolExecutor(
            SENDER_THREADS, thread_name_prefix="notify")
        try:
            while not self._stopping:
                self.step()
        finally:
            self._wind_down()

    def step(self) -> None:
        """One pass of the checklist (waits at most about IDLE_WAIT_S)."""
        try:
            self._settle_finished()
            self._start_ready()
            self._prune_if_due()
            self._receive()
            self._start_ready()
        except BackendError as exc:
            log.warning("backend failed: %s; trying again in %.0f s",
                        exc, self._backend_backoff_s)
            self._back_off()
        except Exception:  # a bug must not end notifications for everyone
            log.exception("unexpected failure; trying again in %.0f s", self._backend_backoff_s)
            self._back_off()
        else:
            self._backend_backoff_s = 1.0

    def _back_off(self) -> None:
        self._sleep(self._backend_backoff_s)
        self._backend_backoff_s = min(self._backend_backoff_s * 2, BACKEND_BACKOFF_CAP_S)

    # --- receive ---

    def _receive(self) -> None:
        """Take new changes; while sends are in flight, wait for those instead,
        so a job's next change goes out as soon as the one before is settled."""
        wait_s = IDLE_WAIT_S
        if self._sending:
            concurrent.futures.wait(
                [s.future for s in self._sending.values()], timeout=BUSY_WAIT_S,
                return_when=concurrent.futures.FIRST_COMPLETED)
            wait_s = 0.0
        # Changes queued behind a send in flight do not count: they are few
        # per job, and those jobs are at most SENDER_THREADS; so receivers
        # that hang cannot keep other jobs' changes out.
        behind_sends = sum(1 for h in self._held.values() if h.change.job_id in self._sending)
        room = MAX_HELD - (len(self._held) - behind_sends)
        if room <= 0:
            return
        for message in self._queue.receive(max_messages=min(BATCH_MAX, room), wait_s=wait_s):
            self._accept(message)

    def _accept(self, message: Message) -> None:
        known = self._held.get(message.id)
        if known is not None:
            # Delivered again while still here (its visibility ran out):
            # only the newest receipt can delete or hide it.
            known.receipt, known.receive_count = message.receipt, message.receive_count
            return
        parked = parse_parked_give_up(message.body)
        if parked is not None:
            self._look_at_parked(message, *parked)
            return
        try:
            change, changed_at = parse_change(message.body)
        except ValueError as exc:
            log.error("message %s is not a state change (%s); deleted", message.id, exc)
            self._delete(message.receipt)
            return
        held = _Held(message.id, message.receipt, message.receive_count, change, changed_at)
        if self._defer_behind_retry(held):
            return
        self._held[held.message_id] = held
        lane = self._waiting.setdefault(change.job_id, [])
        lane.append(held)
        lane.sort(key=lambda h: h.change.version)

    def _defer_behind_retry(self, held: _Held) -> bool:
        """Hide `held` until after its job's change that waits for a retry, if any."""
        job_id = held.change.job_id
        retry = self._retrying.get(job_id)
        if retry is None:
            return False
        now = time.monotonic()
        if retry.message_id == held.message_id or now > retry.due + RETRY_GRACE_S:
            del self._retrying[job_id]
            return False
        self._hide(held.receipt, max(0.0, retry.due - now) + DEFER_MARGIN_S)
        return True

    # --- send ---

    def _start_ready(self) -> None:
        for job_id in list(self._waiting):
            if job_id not in self._sending:
                self._start_next(job_id)

    def _start_next(self, job_id: str) -> None:
        """Send the job's lowest waiting change; settle at once those that need no send."""
        lane = self._waiting[job_id]
        while lane:
            held = lane[0]
            try:
                job = self._store.get_job(job_id)
            except NotFound:
                job = None
            # (BackendError leaves `held` first in line for the next pass.)
            lane.pop(0)
            if job is not None and job.is_terminal and job_id in self._unrecorded_give_ups:
                self._record_give_ups(job_id)
            if job is None:
                log.warning("job %s %s: not in the store; change dropped",
                            job_id, held.change.state)
                self._done(held)
            elif not job.notify_url:
                self._done(held)
            elif not self._has_room(receiver_key(job.notify_url)):
                lane.insert(0, held)
                self._busy_waits[held.message_id] += 1
                self._defer_lane(job_id, BUSY_RECEIVER_DEFER_S)
                return
            else:
                self._jobs.metrics.add("notification_attempts_total")
                self._send(held, job)
                break
        if not lane:
            del self._waiting[job_id]

    def _has_room(self, receiver: str) -> bool:
        return (len(self._sending) < SENDER_THREADS
                and self._per_receiver[receiver] < self._settings.notify_per_receiver)

    def _send(self, held: _Held, job: Job) -> None:
        settings = self._settings
        url = job.notify_url
        receiver = receiver_key(url)
        future = self._pool.submit(
            send_notification, url, held.change.job_id, held.change.state,
            held.change.state_details, settings.notify_timeout_s, self._reach,
            settings.outbound_connect_timeout_s, self._payload(held.change, job))
        self._per_receiver[receiver] += 1
        self._sending[held.change.job_id] = _Sending(held, url, receiver, future)

    def _payload(self, change: StateChange, job: Job) -> Payload | None:
        """The JSON payload for a job that asked for it; None sends the form."""
        if job.notify_format != "json":
            return None
        body = json_body(job, change.state, change.state_details, change.version, change.at)
        return Payload(body, JSON_CONTENT_TYPE, signing_secret=self._settings.webhook_secret)

    def _defer_lane(self, job_id: str, delay_s: float) -> None:
        """Hide the job's waiting changes: the first for `delay_s`, the later
        ones a little longer, so they come back in order."""
        lane = self._waiting.pop(job_id, [])
        if not lane:
            return
        first, later = lane[0], lane[1:]
        self._forget(first)
        self._hide(first.receipt, delay_s)
        self._retrying[job_id] = _Retry(first.message_id, time.monotonic() + delay_s)
        for held in later:
            self._forget(held)
            self._hide(held.receipt, delay_s + DEFER_MARGIN_S)

    # --- settle ---

    def _settle_finished(self) -> None:
        for job_id, sending in list(self._sending.items()):
            if sending.future.done():
                del self._sending[job_id]
                self._per_receiver[sending.receiver] -= 1
                if self._per_receiver[sending.receiver] <= 0:
                    del self._per_receiver[sending.receiver]
                self._settle(sending)

    def _settle(self, sending: _Sending) -> None:
        try:
            sending.future.result()
        except NotifyError as exc:
            self._after_failure(sending.held, sending.url, exc)
        except Exception as exc:  # noqa: BLE001 - any failure settles this notification only
            log.error("job %s %s: notification failed unexpectedly (%s)",
                      sending.held.change.job_id, sending.held.change.state,
                      type(exc).__name__, exc_info=exc)
            self._after_failure(sending.held, sending.url,
                                NotifyError("the notification could not be sent"))
        else:
            self._done(sending.held)

    def _after_failure(self, held: _Held, url: str, exc: NotifyError) -> None:
        change = held.change
        age_s = (utcnow() - held.changed_at).total_seconds()
        left_s = self._settings.notify_retry_for_s - age_s
        self._jobs.metrics.add("notification_failures_total")
        if not exc.retryable or left_s <= 0:
            self._jobs.metrics.add("notification_give_ups_total")
            log.warning("job %s %s: notification to %s given up after %.0f s: %s",
                        change.job_id, change.state, describe_url(url), age_s, exc)
            attempts = max(1, held.receive_count - self._busy_waits[held.message_id])
            record = self._give_up(change, exc, attempts)
            if change.job_id in self._unrecorded_give_ups:
                self._park(change.job_id, record)  # the job runs on: not written yet
            self._done(held)
            return
        failures = held.receive_count - self._busy_waits[held.message_id]
        delay_s = retry_delay_s(failures, left_s)
        log.warning("job %s %s: notification to %s failed: %s; retrying in %.1f s",
                    change.job_id, change.state, describe_url(url), exc, delay_s)
        self._waiting.setdefault(change.job_id, []).insert(0, held)
        self._defer_lane(change.job_id, delay_s)

    def _give_up(self, change: StateChange, exc: NotifyError, attempts: int) -> dict:
        """Keep the give-up, to be listed on the job once it has ended; returns it."""
        kept = self._unrecorded_give_ups
        if change.job_id not in kept and len(kept) >= MAX_JOBS_WITH_UNRECORDED_GIVE_UPS:
            dropped = next(iter(kept))
            del kept[dropped]
            log.warning("job %s: too many running jobs with notifications given up; "
                        "its give-ups will not be listed on it", dropped)
        record = {"state": change.state, "changed_at": change.at,
                  "given_up_at": utcnow().isoformat(), "attempts": attempts,
                  "reason": str(exc)[:MAX_GIVE_UP_REASON_CHARS]}
        kept.setdefault(change.job_id, []).append(record)
        self._record_give_ups(change.job_id)
        return record

    def _park(self, job_id: str, record: dict) -> None:
        """Put a give-up not yet written in the queue, so that it outlives this process."""
        try:
            self._queue.send(json.dumps({"job_id": job_id, "given_up": record}),
                             delay_s=PARK_FIRST_S)
        except BackendError as exc:
            log.warning("job %s: could not park the notification give-up in the queue (%s); "
                        "it is kept in this process only", job_id, exc)

    def _look_at_parked(self, message: Message, job_id: str, record: dict) -> None:
        """A parked give-up came back: write it if its job has ended, else
        park it again for longer."""
        kept = self._unrecorded_give_ups.setdefault(job_id, [])
        if _give_up_key(record) not in {_give_up_key(one) for one in kept}:
            kept.append(record)
        self._record_give_ups(job_id)
        if job_id in self._unrecorded_give_ups:
            self._hide(message.receipt,
                       doubling_s(message.receive_count, PARK_FIRST_S, PARK_CAP_S))
        else:
            self._delete(message.receipt)

    def _record_give_ups(self, job_id: str) -> None:
        """List the job's kept give-ups on it (and a line each in its details),
        if it has ended: a write to a job an encoder still holds would take it
        from the encoder. A give-up already listed (the same change given up
        again after a redelivery) is not listed twice."""
        pending = self._unrecorded_give_ups.get(job_id)
        if not pending:
            return
        for _ in range(GIVE_UP_WRITE_TRIES):
            try:
                job = self._store.get_job(job_id)
                if not job.is_terminal:
                    return
                listed = _with_give_ups(job, pending)
                if listed is not None:
                    self._store.update_job(listed, job.version)
            except NotFound:
                break
            except ConflictError:
                continue  # retried, or another scheduler listed its own: read again
            except BackendError as exc:
                log.warning("job %s: could not record the notification give-up (%s); "
                            "tried again with its next change", job_id, exc)
                return
            break
        self._unrecorded_give_ups.pop(job_id, None)

    def _done(self, held: _Held) -> None:
        self._busy_waits.pop(held.message_id, None)
        self._forget(held)
        self._delete(held.receipt)

    def _forget(self, held: _Held) -> None:
        self._held.pop(held.message_id, None)

    def _delete(self, receipt: str) -> None:
        try:
            self._queue.delete(receipt)
        except BackendError as exc:
            # The message comes back after its visibility timeout: one more
            # notification, never a lost one.
            log.warning("could not delete a settled state change (%s); it will come again", exc)

    def _hide(self, receipt: str, delay_s: float) -> None:
        try:
            self._queue.extend(receipt, delay_s)
        except NotFound:
            pass  # delivered again meanwhile: the newer delivery decides
        except BackendError as exc:
            log.warning("could not delay a state change (%s); it comes back at its "
                        "visibility timeout", exc)

    # --- prune ---

    def _prune_if_due(self) -> None:
        now = time.monotonic()
        if now < self._next_prune_at:
            return
        self._next_prune_at = now + max(self._settings.feederd_prune_interval_s,
                                        MIN_PRUNE_INTERVAL_S)
        thresh_s = self._settings.feederd_abandon_inactive_jobs_thresh
        try:
            abandoned = self._jobs.abandon_stale(thresh_s)
        except (ConflictError, ValidationError) as exc:
            log.warning("abandoning stale jobs: %s", exc)
            return
        for job in abandoned:
            log.info("job %s ABANDONED: no update for %d s", job.id, thresh_s)
        # State changes left in a job's outbox longer than a visibility
        # timeout: their writer died or could not reach the queue.
        for job in self._jobs.announce_missed(self._settings.visibility_timeout_s):
            log.info("job %s %s: announced from its outbox", job.id, job.state)

    # --- stop ---

    def _wind_down(self) -> None:
        """Finish the sends in flight; put changes not yet sent back in the queue."""
        try:
            # Each send ends by its own timeout; the margin covers the settling.
            concurrent.futures.wait([s.future for s in self._sending.values()],
                                    timeout=self._settings.notify_timeout_s + 1)
            self._settle_finished()
            for lane in self._waiting.values():
                for held in lane:
                    self._hide(held.receipt, 0)
            self._waiting.clear()
            self._held.clear()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < deadline:
            time.sleep(min(_STOP_CHECK_S, max(0.0, deadline - time.monotonic())))


def _with_give_ups(job: Job, give_ups: list[dict]) -> Job | None:
    """`job` with the `give_ups` it does not list yet added to its list and
    details; None when it lists them all already."""
    listed = {_give_up_key(g) for g in job.notifications_given_up}
    new = [g for g in give_ups if _give_up_key(g) not in listed]
    if not new:
        return None
    details = job.state_details
    for give_up in new:
        note = f"notification of {give_up['state']} given up: {give_up['reason']}"
        details = f"{details}\n{note}" if details else note
    return dataclasses.replace(
        job, state_details=details[-MAX_DETAILS_CHARS:],
        notifications_given_up=(job.notifications_given_up + new)[-MAX_GIVEN_UP_LISTED:])


def main(argv: list[str] | None = None) -> int:
    """Run the scheduler until SIGTERM or SIGINT. Returns 0, or 2 if it cannot start."""
    parser = argparse.ArgumentParser(
        prog="nommer-scheduler",
        description="Send job state notifications and abandon stale jobs.")
    parser.add_argument("--config", help="TOML settings file (default: $NOMMER_CONFIG)")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        settings = load(args.config)
        backends = open_backends(settings)
    except NommerError as exc:
        log.error("cannot start: %s", exc)
        return 2
    scheduler = Scheduler(backends, settings)
    log.info("scheduler started")
    try:
        run_until_signalled(scheduler.run, scheduler.request_stop)
    finally:
        backends.close()
    log.info("scheduler stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
