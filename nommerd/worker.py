"""One encoder worker: receive -> claim -> download -> encode -> upload -> finish -> ack.

Several workers run as threads of one nommerd. They share a `Control`
(flags the daemon's main loop sets) and nothing else. While a worker holds
a job, a `Watchdog` keeps the queue message hidden and the job's lease
alive, and stops ffmpeg when the job changes under us, must be given back,
or its lease is about to run out because the store cannot be reached.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from core.backends import Backends
from core.errors import BackendError, ConflictError, NommerError, NotFound, StorageError
from core.interfaces import Message, Storage
from core.jobs import ACTIVE_STATES, Job, JobState, utcnow
from core.errors import MediaError
from core.settings import Settings
from core.media import MediaInfo
from core.outputs import is_several
from nommerd import outputs
from nommerd.ffmpeg import (EncodeCancelled, EncodeLimits, FFmpegRunner, build_pass_argvs,
                            check_source, output_name)

log = logging.getLogger(__name__)

# The embedded queue is long-polled in slices of this, so a worker sees the
# stop flag within it; with short polling (queue_wait_s 0) a worker waits
# this long between polls, so it does not spin.
RECEIVE_SLICE_S = 1.0
# SQS keeps a received message in flight for at most 12 h, however often
# its visibility is extended. A worker holding a job that long hands it to a
# fresh message this long before, so the job never reappears as if its
# encoder had died.
MAX_IN_FLIGHT_S = 43200.0
HANDOFF_MARGIN_S = 900.0
# SQS's longest send delay.
MAX_SEND_DELAY_S = 900.0
# How often the watchdog looks at the release flag and the lease (seconds).
WATCHDOG_TICK_S = 0.2
# A worker that could not renew its lease stops this long (at most a
# quarter of the lease) before it runs out: time to kill ffmpeg, plus clock
# differences between encoders.
LEASE_MARGIN_S = 1.0
MAX_BACKOFF_S = 10.0


def _lease_is_live(job: Job) -> bool:
    return (job.state in ACTIVE_STATES and job.lease_expires_at is not None
            and job.lease_expires_at > utcnow())


def _progress_to(held: "HeldJob", runner: FFmpegRunner) -> Callable[[int], None]:
    """An ffmpeg progress callback that heartbeats the job, and stops ffmpeg
    when the job is no longer ours."""
    def on_progress(percent: int) -> None:
        if not held.heartbeat(progress=percent):
            runner.cancel()
    return on_progress


class JobLost(NommerError):
    """The job changed under us (cancelled, failed or taken over): stop work on it."""


class JobReleased(NommerError):
    """We gave the job back to the queue (the daemon is stopping)."""


class Control:
    """Flags and counters shared by the daemon's threads.

    stopping: take no new work. release_now: give held jobs back at once.
    draining: the scaler wants this encoder gone: take no new work, but
    finish the jobs held (and one a receive already returned).
    `on_change` is called (outside the lock) whenever a job starts or ends.
    """

    def __init__(self, on_change: Callable[[], None] = lambda: None):
        self.stopping = threading.Event()
        self.draining = threading.Event()
        self.release_now = threading.Event()
        self.on_change = on_change
        self._lock = threading.Lock()
        self._active_jobs = 0
        self._last_busy = time.monotonic()

    @property
    def active_jobs(self) -> int:
        return self._active_jobs

    def idle_for_s(self) -> float:
        """Seconds since the last job ended (or start-up); 0 while any job runs."""
        with self._lock:
            return 0.0 if self._active_jobs else time.monotonic() - self._last_busy

    def job_started(self) -> None:
        with self._lock:
            self._active_jobs += 1
        self.on_change()

    def job_ended(self) -> None:
        with self._lock:
            self._active_jobs -= 1
            self._last_busy = time.monotonic()
        self.on_change()


class HeldJob:
    """The job a worker holds. Every write to it goes through here, one at a
    time, so the version we write against is always our latest.

    It also knows until when the stored lease is ours (`lease_left_s`),
    without asking the store, so a worker that cannot renew its lease can
    stop before another encoder may take the job over.
    """

    def __init__(self, backends: Backends, job: Job, lease_s: float):
        self._jobs = backends.jobs
        self._lease_s = lease_s
        self._lock = threading.Lock()
        self.job = job
        self.lost = False
        self.released = False
        self.lease_lapsing = False
        left_s = ((job.lease_expires_at - utcnow()).total_seconds()
                  if job.lease_expires_at else lease_s)
        # Read without the lock (a float), by the watchdog, while a write may hang.
        self._lease_until = time.monotonic() + left_s

    @property
    def lease_s(self) -> float:
        """How long each renewal makes the lease."""
        return self._lease_s

    def lease_left_s(self) -> float:
        """Seconds until the stored lease runs out, unless renewed before."""
        return self._lease_until - time.monotonic()

    def advance(self, state: JobState, details: str = "", **changes) -> Job:
        """Move the job on. Raises JobLost if it changed under us, JobReleased
        if we already gave it back."""
        with self._lock:
            if self.released:
                raise JobReleased(f"job {self.job.id} was released")
            try:
                self.job = self._jobs.advance(self.job, state, details, **changes)
            except (ConflictError, NotFound):
                self.lost = True
                raise JobLost(f"job {self.job.id} changed while we held it") from None
            return self.job

    def heartbeat(self, progress: int | None = None) -> bool:
        """Extend our lease (and record progress). False when the job is no
        longer ours; a store outage is logged and retried next time."""
        with self._lock:
            if self.released or self.lost:
                return False
            # The new lease is counted from before the write: botocore's
            # retries resend the same expiry, however late they get through.
            asked_at = time.monotonic()
            try:
                self.job = self._jobs.heartbeat(self.job, self._lease_s, progress)
            except (ConflictError, NotFound):
                self.lost = True
                return False
            except BackendError as exc:
                log.warning("job %s: heartbeat failed: %s", self.job.id, exc)
                return True
            self._lease_until = asked_at + self._lease_s
            return True

    def release(self, node_id: str) -> bool:
        """Put the job back to PENDING for another encoder. False if it was
        already released or is no longer ours."""
        with self._lock:
            if self.released or self.lost:
                return False
            try:
                self.job = self._jobs.advance(self.job, JobState.PENDING, f"released by {node_id}",
                                              node=None, lease_expires_at=None, progress=0)
            except (ConflictError, NotFound):
                self.lost = True
                return False
            self.released = True
            return True


def lease_margin_s(lease_s: float) -> float:
    """How long before an unrenewed lease runs out its worker stops."""
    return min(LEASE_MARGIN_S, lease_s / 4)


def ready_to_work(held: HeldJob, delivery: int) -> HeldJob | None:
    """`held`, just claimed, if its lease leaves time to work; else None.

    A claim that took long (botocore retried it) leaves a short lease: it is
    renewed before the work starts. When even the renewal takes longer than
    the lease, another encoder may have claimed the job meanwhile; working
    now would overlap it, so the job is left to the next delivery."""
    lease_s = held.lease_s
    if held.lease_left_s() < lease_s / 2:
        held.heartbeat()
    if held.lost or held.lease_left_s() < lease_margin_s(lease_s):
        log.warning("job %s: lease ran out before the claim (delivery %d) could be renewed; "
                    "not worked on here", held.job.id, delivery)
        return None
    log.info("job %s: claimed (delivery %d)", held.job.id, delivery)
    return held


class Watchdog:
    """While a job is worked on: every `interval_s` extend its message and
    heartbeat the job (in one thread); stop ffmpeg when the job is lost or
    must be released, or when the lease is about to run out unrenewed (in
    another, so a heartbeat that hangs in retries cannot delay it).

    The lease, not the message, decides who may work on a job: once it has
    run out another encoder may claim the job. So a worker whose heartbeats
    keep failing (the store is down) stops encoding shortly before then
    (LEASE_MARGIN_S), and a job is never encoded twice at the same time.
    """

    def __init__(self, held: HeldJob, backends: Backends, receipt: str, runner: FFmpegRunner,
                 control: Control, settings: Settings, received_at: float | None = None,
                 max_in_flight_s: float = MAX_IN_FLIGHT_S):
        self._held = held
        self._queue = backends.new_jobs
        self._receipt: str | None = receipt
        # time.monotonic() of the receive; the message is handed off before
        # max_in_flight_s (less a margin of at most a quarter) has passed.
        self._handoff_at = (time.monotonic() if received_at is None else received_at) + \
            max_in_flight_s - min(HANDOFF_MARGIN_S, max_in_flight_s / 4)
        self._runner = runner
        self._control = control
        self._interval_s = settings.nommerd_heartbeat_interval_s
        self._visibility_timeout_s = settings.visibility_timeout_s
        self._lease_s = settings.job_lease_s
        self._margin_s = lease_margin_s(settings.job_lease_s)
        self._done = threading.Event()
        name = held.job.id[:8]
        self._threads = [threading.Thread(target=self._guard, daemon=True, name=f"guard-{name}"),
                         threading.Thread(target=self._beats, daemon=True, name=f"beat-{name}")]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._done.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _guard(self) -> None:
        while not self._done.wait(WATCHDOG_TICK_S):
            if self._control.release_now.is_set():
                self._runner.cancel()
            if not self._held.lease_lapsing and self._held.lease_left_s() < self._margin_s:
                self._held.lease_lapsing = True
                log.warning("job %s: lease not renewed and about to run out; stopping work "
                            "so that no other encoder runs it at the same time", self._held.job.id)
                self._runner.cancel()

    def _beats(self) -> None:
        while not self._done.wait(self._interval_s):
            self._beat()

    @property
    def receipt(self) -> str | None:
        """The receipt of the message we hold, None once handed off."""
        return self._receipt

    def _beat(self) -> None:
        try:
            if self._receipt is not None and time.monotonic() >= self._handoff_at:
                self._hand_off()
            if self._receipt is not None:
                self._queue.extend(self._receipt, self._visibility_timeout_s)
        except (BackendError, NotFound) as exc:
            # The job's lease in the store, not the message, decides who
            # works on it: keep heartbeating even when the extend fails.
            log.warning("job %s: extending its message failed: %s", self._held.job.id, exc)
        if not self._held.heartbeat():
            self._runner.cancel()

    def _hand_off(self) -> None:
        """Replace our message, near SQS's in-flight cap, by a fresh one for
        the job. Other encoders that receive it find the job leased and leave
        it; if we die, it is there to be taken over. Raises BackendError (and
        keeps the old message) when the send fails."""
        job_id = self._held.job.id
        self._queue.send(job_id, delay_s=min(self._lease_s + LEASE_MARGIN_S, MAX_SEND_DELAY_S))
        old, self._receipt = self._receipt, None
        self._queue.delete(old)
        log.info("job %s: handed to a fresh message (the old one neared SQS's "
                 "in-flight cap)", job_id)


class Worker:
    """One worker thread's loop. `run` returns once `control.stopping` is set
    and any held job is finished or released."""

    def __init__(self, name: str, backends: Backends, storage: Storage, settings: Settings,
                 node_id: str, ffmpeg: str, control: Control):
        self.name = name
        self.backends = backends
        self.jobs = backends.jobs
        self.queue = backends.new_jobs
        self.storage = storage
        self.settings = settings
        self.node_id = node_id
        self.ffmpeg = ffmpeg
        self.control = control
        self.work_root = Path(settings.data_dir).resolve() / "work"
        self._held: tuple[HeldJob, Message] | None = None
        self._received_at = time.monotonic()  # of the last message received

    def run(self) -> None:
        backoff_s = 0.5
        while not (self.control.stopping.is_set() or self.control.draining.is_set()):
            try:
                message = self._receive()
                if message is not None:
                    self._handle(message)
                backoff_s = 0.5
            except BackendError as exc:
                log.warning("queue or store failed: %s; retrying in %.1f s", exc, backoff_s)
                self.control.stopping.wait(backoff_s)
                backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)
            except Exception:
                # A bug must not silently take this worker out of the daemon.
                log.exception("unexpected failure; carrying on in %.1f s", backoff_s)
                self.control.stopping.wait(backoff_s)
                backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)
        log.info("worker stopped")

    def release_held(self) -> None:
        """Give the held job back now (from another thread, when this one is stuck)."""
        held = self._held
        if held is not None:
            self._release(*held)

    # --- the checklist -------------------------------------------------

    def _receive(self) -> Message | None:
        # On SQS a long poll for the whole queue_wait_s: one ReceiveMessage
        # per 20 s per idle worker instead of one a second (a stop request is
        # seen when it returns; stopwaitsecs allows for that). The embedded
        # queue costs nothing to ask, so it is asked in short slices and a
        # stop is prompt.
        wait_s = self.settings.queue_wait_s
        if self.settings.backend != "aws":
            wait_s = min(wait_s, RECEIVE_SLICE_S)
        messages = self.queue.receive(max_messages=1, wait_s=wait_s,
                                      visibility_timeout_s=self.settings.visibility_timeout_s)
        if not messages:
            if wait_s < RECEIVE_SLICE_S:  # short polling: do not spin
                self.control.stopping.wait(RECEIVE_SLICE_S - wait_s)
            return None
        self._received_at = time.monotonic()
        return messages[0]

    def _handle(self, message: Message) -> None:
        if self.control.stopping.is_set():
            self.queue.release(message.receipt)
            return
        if message.receive_count > self.settings.max_receives and self._give_up(message):
            return
        held = self._claim(message)
        if held is None:
            return
        self.control.job_started()
        held_since = time.monotonic()
        try:
            self._work(held, message)
        finally:
            # With "claimed", this brackets the time the worker held the job
            # (ffmpeg stopped, files removed): how long a job took here, and
            # the record that shows two holds of one job never overlap.
            log.info("job %s: let go after %.1f s", held.job.id, time.monotonic() - held_since)
            self.control.job_ended()

    def _give_up(self, message: Message) -> bool:
        """Fail the job of a message delivered more than max_receives times, if
        its claims show encoders dying on it; True when the message is dealt
        with, False when the job should be claimed as usual.

        Deliveries alone prove nothing: a message comes back when SQS could
        not be reached to extend it, or past SQS's in-flight cap, while an
        encoder still works on the job. So a job with a live lease is left
        for its holder, and one claimed fewer than max_receives times is
        claimed again.
        """
        job_id = message.body.strip()
        try:
            job = self.backends.store.get_job(job_id)
        except NotFound:
            log.warning("message for unknown job %s dropped", job_id)
            self.queue.delete(message.receipt)
            return True
        if _lease_is_live(job):
            self._leave_for_holder(message, job)
            return True
        if job.attempts < self.settings.max_receives and not job.is_terminal:
            return False
        reason = (f"gave up after {job.attempts} attempts: "
                  "encoders stopped or died before finishing it each time")
        if self.jobs.fail(job_id, reason) is not None:
            log.warning("job %s: %s", job_id, reason)
        self.queue.delete(message.receipt)
        return True

    def _leave_for_holder(self, message: Message, job: Job) -> None:
        """Keep the message of a job another encoder holds out of sight until
        its lease runs out (then, if the holder died, it is taken over). Near
        the dead-letter limit the message is replaced by a fresh one, so the
        job keeps a message however long its encode runs."""
        log.info("job %s: held by %s; left for its holder", job.id, job.node)
        hide_s = max((job.lease_expires_at - utcnow()).total_seconds(), 0) + LEASE_MARGIN_S
        if message.receive_count >= self.settings.max_receives:
            self.queue.send(job.id, delay_s=min(hide_s, MAX_SEND_DELAY_S))
            self.queue.delete(message.receipt)
            return
        try:
            self.queue.extend(message.receipt, hide_s)
        except NotFound:
            pass  # delivered again meanwhile: the newer delivery decides

    def _claim(self, message: Message) -> HeldJob | None:
        job_id = message.body.strip()
        job = self.jobs.claim(job_id, self.node_id, self.settings.job_lease_s)
        if job is not None:
            return ready_to_work(HeldJob(self.backends, job, self.settings.job_lease_s),
                                 message.receive_count)
        try:
            current = self.backends.store.get_job(job_id)
        except NotFound:
            self.queue.delete(message.receipt)
            return None
        if current.is_terminal:
            log.info("job %s: already %s; message dropped", job_id, current.state)
            self.queue.delete(message.receipt)
        elif _lease_is_live(current):
            self._leave_for_holder(message, current)
        else:
            log.info("job %s: held by %s; left for its holder", job_id, current.node)
        return None

    def _work(self, held: HeldJob, message: Message) -> None:
        self.work_root.mkdir(parents=True, exist_ok=True)
        work_dir = tempfile.mkdtemp(prefix=f"{held.job.id}.", dir=self.work_root)
        runner = FFmpegRunner(self.settings.progress_interval_ms, {work_dir + os.sep: ""},
                              EncodeLimits.from_settings(self.settings))
        watchdog = Watchdog(held, self.backends, message.receipt, runner, self.control,
                            self.settings, received_at=self._received_at)
        watchdog.start()
        self._held = (held, message)
        try:
            source = os.path.join(work_dir, "source")
            self._download(held, runner, source)
            held.advance(JobState.ENCODING)
            info = check_source(self.ffmpeg, source)
            if is_several(held.job.options):
                described = self._encode_several(held, runner, source, info, work_dir)
            else:
                output = self._encode(held, runner, source, info, work_dir)
                self._upload(held, output)
                described = [outputs.describe_file(self.ffmpeg, output, held.job.destination,
                                                   held.job.options["options"])]
            held.advance(JobState.FINISHED, outputs=described)
            self.queue.delete(message.receipt)
            log.info("job %s: FINISHED", held.job.id)
        except (EncodeCancelled, JobLost, JobReleased):
            self._interrupted(held, message)
        except (MediaError, StorageError) as exc:
            self._fail(held, message, str(exc))
        except BackendError as exc:
            # The store or queue is down: the message comes back after its
            # visibility timeout and the job's lease runs out, so it is retried.
            log.error("job %s: gave it up for now: %s", held.job.id, exc)
        except Exception as exc:
            log.exception("job %s: unexpected failure", held.job.id)
            # Python's own texts ("'utf-8' codec can't decode byte ...") mean
            # nothing to a client, and may quote local data: the log has them.
            self._fail(held, message, f"internal error on the encoder ({type(exc).__name__}); "
                                      "its log has the details")
        finally:
            self._held = None
            runner.cancel()
            watchdog.stop()
            shutil.rmtree(work_dir, ignore_errors=True)

    def _download(self, held: HeldJob, runner: FFmpegRunner, source: str) -> None:
        free_bytes = shutil.disk_usage(os.path.dirname(source)).free
        if free_bytes < self.settings.min_free_bytes:
            raise MediaError(f"stopped by a limit: only {free_bytes} bytes free for work files "
                             "(setting min_free_bytes)")
        try:
            size = self.storage.download(held.job.source, source, self.settings.max_source_bytes,
                                         stop=runner.stop_event)
        except StorageError:
            if runner.cancelled:  # cancelled, lost or released: not the source's fault
                raise EncodeCancelled("the download was stopped") from None
            raise
        log.info("job %s: downloaded %d bytes", held.job.id, size)
        self.jobs.metrics.add("download_bytes_total", size)
        self._check_release(held)

    def _encode(self, held: HeldJob, runner: FFmpegRunner, source: str, info: MediaInfo,
                work_dir: str) -> str:
        output = os.path.join(work_dir, output_name(held.job.destination))
        argvs = build_pass_argvs(self.ffmpeg, held.job.options, source, info.demuxer, output,
                                 work_dir, self.settings.tolerate_decode_errors,
                                 duration_s=info.duration_s)
        on_progress = _progress_to(held, runner)
        for number, argv in enumerate(argvs):
            span = (100 * number // len(argvs), 100 * (number + 1) // len(argvs))
            log.info("job %s: pass %d of %d", held.job.id, number + 1, len(argvs))
            runner.run(argv, info.duration_s, on_progress, span, output_path=output)
        self._check_release(held)
        return output

    def _upload(self, held: HeldJob, output: str) -> None:
        held.advance(JobState.UPLOADING)
        self.storage.upload(output, held.job.destination)
        self.jobs.metrics.add("upload_bytes_total", os.path.getsize(output))

    def _encode_several(self, held: HeldJob, runner: FFmpegRunner, source: str,
                        info: MediaInfo, work_dir: str) -> list[dict]:
        """Encode and upload every output of the job; returns their descriptions."""
        planned = outputs.plan(held.job.options, work_dir)
        # Before the work folder's own entry, which would cut these short.
        runner.replacements = {**outputs.path_names(planned), **runner.replacements}
        log.info("job %s: %d outputs", held.job.id, len(planned))
        outputs.encode(self.ffmpeg, runner, planned, source, info, work_dir, self.settings,
                       _progress_to(held, runner))
        self._check_release(held)
        described = [outputs.describe(self.ffmpeg, output, info) for output in planned]
        held.advance(JobState.UPLOADING)
        # Single files first, then each set (a ladder, a sprite) with its
        # playlists or track last: a reader never finds one naming a file
        # not yet there.
        for output in sorted(planned, key=lambda output: output.kind != "file"):
            if output.kind != "file":
                self.storage.upload_files(outputs.upload_files(output), output.destination,
                                          stop=runner.stop_event)
            else:
                self.storage.upload(output.local_path, output.destination)
        self.jobs.metrics.add("upload_bytes_total",
                              sum(one.get("size_bytes") or 0 for one in described))
        return described

    # --- endings -------------------------------------------------------

    def _check_release(self, held: HeldJob) -> None:
        if self.control.release_now.is_set():
            raise JobReleased("the encoder is stopping")
        if held.lease_lapsing:
            raise JobReleased(f"job {held.job.id}: its lease could not be renewed")

    def _interrupted(self, held: HeldJob, message: Message) -> None:
        if held.lost:
            self._lost(held, message)
        else:
            self._release(held, message)

    def _release(self, held: HeldJob, message: Message) -> None:
        if held.release(self.node_id):
            try:
                self.queue.release(message.receipt)
            except NotFound:
                pass  # handed off to a fresh message, or deleted: nothing to show again
            log.info("job %s: released for another encoder", held.job.id)
        elif held.lost:
            self._lost(held, message)

    def _lost(self, held: HeldJob, message: Message) -> None:
        try:
            current = self.backends.store.get_job(held.job.id)
        except NotFound:
            self.queue.delete(message.receipt)
            return
        log.info("job %s: changed under us (now %s, node %s); stopped work",
                 current.id, current.state, current.node)
        if current.is_terminal:
            self.queue.delete(message.receipt)

    def _fail(self, held: HeldJob, message: Message, reason: str) -> None:
        # A bad source or a refused destination fails the same way every
        # time, so the job ends in ERROR instead of being retried.
        try:
            held.advance(JobState.ERROR, reason)
        except (JobLost, JobReleased):
            self._interrupted(held, message)
            return
        self.queue.delete(message.receipt)
        log.warning("job %s: ERROR: %s", held.job.id, reason)
