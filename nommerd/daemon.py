"""nommerd's process: settings, signals, worker threads, the node report, idle exit.

    nommerd [--config nomconf.toml] [--node-id ID] [--stop-grace-s 20]

Signals only set flags; the main loop acts on them (CONVENTIONS 6):
- first SIGTERM/SIGINT: take no new work; let held jobs finish for up to
  --stop-grace-s, then kill ffmpeg and give the jobs back (PENDING, message
  visible again);
- second SIGTERM/SIGINT: give the jobs back at once.
supervisord's stopwaitsecs must exceed the grace plus RELEASE_WAIT_S, so it
does not SIGKILL an encoder before its jobs are given back.

Scale-in never interrupts a job: the scaler marks the node draining in the
store; at its next heartbeat nommerd sees the mark, takes no new job, and
exits 0 (reporting "stopped") when its running jobs end. Its first act is
to delete any report an earlier run in the same slot left, mark and all.

On EC2 (backend "aws", nommerd/ec2.py): the node id is the instance id from
the metadata service unless --node-id is given; a Spot interruption notice
acts like a second SIGTERM (jobs given back at once, then exit 0); drained,
or idle too long with nommerd_terminate_when_idle, it terminates its own
instance, then exits.

Exit status: 0 after a signal, a Spot notice, when drained or when idle too long
(supervisord's autorestart=unexpected with exitcodes=0 leaves the slot
stopped), 1 when the store and queues cannot be opened or an idle EC2
encoder could not terminate its instance (supervisord starts it again, and
it tries again when next idle), 2 for a bad configuration or, on EC2
without --node-id, no instance metadata.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from datetime import datetime

from core.backends import Backends, open_backends
from core.errors import BackendError, ConfigError
from core.interfaces import Node
from core.jobs import utcnow
from core.media import ffmpeg_path
from core.settings import Settings, load
from core.storage.router import storage_for
from nommerd import ec2
from nommerd.worker import Control, Worker

log = logging.getLogger("nommerd")

DEFAULT_STOP_GRACE_S = 20.0
# After giving jobs back, how long workers get to wind down before the
# process exits anyway (a worker may be stuck in a long download).
RELEASE_WAIT_S = 5.0
LOOP_TICK_S = 0.2


def default_node_id(environ: dict[str, str]) -> str:
    """supervisord's "group:process" name when run by it, else "hostname-pid"."""
    group = environ.get("SUPERVISOR_GROUP_NAME")
    process = environ.get("SUPERVISOR_PROCESS_NAME")
    if group and process:
        return f"{group}:{process}"
    return f"{socket.gethostname()}-{os.getpid()}"


class Daemon:
    """The main loop of one nommerd: starts the workers and watches over them."""

    def __init__(self, settings: Settings, backends: Backends, node_id: str,
                 stop_grace_s: float = DEFAULT_STOP_GRACE_S):
        self.settings = settings
        self.backends = backends
        self.node_id = node_id
        self.stop_grace_s = stop_grace_s
        # A job's start or end is reported by the main loop, not by the
        # worker: a store write that hangs in retries must not delay a
        # worker between its claim and its watchdog (its lease would run
        # out unguarded).
        self._report_wanted = threading.Event()
        self.control = Control(on_change=self._report_wanted.set)
        self.started_at: datetime = utcnow()
        self.signals_seen = 0  # written only by signal handlers
        self._signals_handled = 0
        self.interruption_notice = False  # written only by on_interruption_notice
        self.stopped_idle = False
        self.drained = False
        self._release_at: float | None = None
        self._released_at: float | None = None
        self._stopped = False
        self._report_lock = threading.Lock()
        storage = storage_for(settings)
        ffmpeg = ffmpeg_path(settings)
        self.workers = [
            Worker(f"worker-{n}", backends, storage, settings, node_id, ffmpeg, self.control)
            for n in range(settings.max_encoding_jobs_per_ec2_instance)]
        self._threads = [threading.Thread(target=w.run, name=w.name, daemon=True)
                         for w in self.workers]

    def on_signal(self, signum: int, frame) -> None:
        self.signals_seen += 1

    def on_interruption_notice(self) -> None:
        """The machine is about to be taken away (a Spot interruption):
        give jobs back at once. Only sets a flag; the main loop acts on it."""
        self.interruption_notice = True

    def run(self) -> int:
        """Work until stopped by a signal or idleness; returns the exit status."""
        log.info("node %s: starting %d worker(s)", self.node_id, len(self.workers))
        self._forget_old_report()
        self.report()
        for thread in self._threads:
            thread.start()
        next_report_at = time.monotonic() + self.settings.nommerd_heartbeat_interval_s
        try:
            while not self._workers_done():
                self._handle_signals()
                self._handle_interruption()
                self._release_after_grace()
                if self._gave_up_waiting():
                    break
                self._stop_when_idle()
                due = time.monotonic() >= next_report_at
                if due:
                    self._check_draining()
                    next_report_at = time.monotonic() + self.settings.nommerd_heartbeat_interval_s
                if due or self._report_wanted.is_set():
                    self._report_wanted.clear()
                    self.report()
                time.sleep(LOOP_TICK_S)
        finally:
            self._stopped = True
            self.report()
        log.info("node %s: stopped", self.node_id)
        return 0

    def report(self) -> None:
        """Write this node's record: working, idle or (at exit) stopped."""
        active = self.control.active_jobs
        state = "stopped" if self._stopped else ("working" if active else "idle")
        node = Node(id=self.node_id, state=state, active_jobs=active,
                    last_report=utcnow(), started_at=self.started_at)
        with self._report_lock:
            try:
                self.backends.store.put_node(node)
            except BackendError as exc:
                log.warning("node report failed: %s", exc)

    # --- the checklist -------------------------------------------------

    def _workers_done(self) -> bool:
        return not any(thread.is_alive() for thread in self._threads)

    def _handle_signals(self) -> None:
        seen = self.signals_seen
        if seen == self._signals_handled:
            return
        self._signals_handled = seen
        if not self.control.stopping.is_set():
            log.info("stop requested: taking no new work; held jobs get %.0f s to finish",
                     self.stop_grace_s)
            self.control.stopping.set()
            self._release_at = time.monotonic() + self.stop_grace_s
        if seen >= 2:
            self._release_now("second stop request")

    def _handle_interruption(self) -> None:
        if not self.interruption_notice or self.control.release_now.is_set():
            return
        self.control.stopping.set()
        self._release_now("instance interruption notice")

    def _release_after_grace(self) -> None:
        if self._release_at is not None and time.monotonic() >= self._release_at:
            self._release_now(f"grace of {self.stop_grace_s:.0f} s over")

    def _release_now(self, why: str) -> None:
        if self.control.release_now.is_set():
            return
        log.info("%s: giving held jobs back", why)
        self.control.release_now.set()
        self._released_at = time.monotonic()

    def _gave_up_waiting(self) -> bool:
        if self._released_at is None or time.monotonic() < self._released_at + RELEASE_WAIT_S:
            return False
        log.warning("workers did not wind down in %.0f s; releasing their jobs and exiting",
                    RELEASE_WAIT_S)
        for worker in self.workers:
            try:
                worker.release_held()
            except BackendError as exc:
                log.warning("%s: releasing its job failed: %s", worker.name, exc)
        return True

    def _forget_old_report(self) -> None:
        # A report left by an earlier run in this slot may carry a draining
        # mark meant for that run.
        try:
            self.backends.store.delete_node(self.node_id)
        except BackendError as exc:
            log.warning("clearing the old node report failed: %s", exc)

    def _check_draining(self) -> None:
        """The scaler marked this node draining: take no new job, and stop
        once the running ones end (the workers return, so run() does)."""
        if self.control.draining.is_set():
            return
        try:
            node = self.backends.store.get_node(self.node_id)
        except BackendError as exc:
            log.warning("reading the node report failed: %s", exc)
            return
        if node is not None and node.draining:
            log.info("draining: taking no new work; stopping when %d running job(s) end",
                     self.control.active_jobs)
            self.drained = True
            self.control.draining.set()

    def _stop_when_idle(self) -> None:
        if not self.settings.nommerd_terminate_when_idle or self.control.stopping.is_set():
            return
        idle_for_s = self.control.idle_for_s()
        if idle_for_s >= self.settings.nommerd_max_inactivity:
            log.info("no work for %.0f s: stopping", idle_for_s)
            self.stopped_idle = True
            self.control.stopping.set()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nommerd", description="The media-nommer encoder daemon.")
    parser.add_argument("--config", help="nomconf.toml (default: $NOMMER_CONFIG)")
    parser.add_argument("--node-id", help="this encoder's id (default: on EC2 the instance id "
                        "from the metadata service; else supervisord's group:process name, "
                        "else hostname-pid)")
    parser.add_argument("--stop-grace-s", type=float, default=DEFAULT_STOP_GRACE_S,
                        help="after a stop signal, how long held jobs may run on before "
                        "they are given back (seconds; default %(default)s)")
    return parser


def node_id_for(settings: Settings, given: str | None) -> str:
    """--node-id if given; on EC2 the instance id (raises BackendError when
    the metadata service cannot tell it); else default_node_id."""
    if given:
        return given
    if settings.backend == "aws":
        return ec2.own_instance_id(settings)
    return default_node_id(dict(os.environ))


def run_daemon(settings: Settings, backends: Backends, node_id: str, stop_grace_s: float) -> int:
    """Run one Daemon with its signal handlers and, on EC2, its Spot watch and
    idle self-termination; returns the exit status."""
    daemon = Daemon(settings, backends, node_id, stop_grace_s)
    signal.signal(signal.SIGTERM, daemon.on_signal)
    signal.signal(signal.SIGINT, daemon.on_signal)
    on_ec2 = settings.backend == "aws"
    watch = (ec2.SpotWatch(settings.imds_url, settings.spot_check_interval_s,
                           daemon.on_interruption_notice).start() if on_ec2 else None)
    try:
        status = daemon.run()
    finally:
        if watch is not None:
            watch.stop()
        # Jobs are given back and the node reported: a stop request from now
        # on (an instance shutting down after terminate_own_instance) asks
        # for what is already happening. Ignored, so it cannot turn a clean
        # exit into a death by signal while the interpreter shuts down.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)
    if (on_ec2 and (daemon.stopped_idle or daemon.drained)
            and not ec2.terminate_own_instance(settings, node_id)):
        return 1
    return status


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s nommerd[%(process)d] %(threadName)s: "
                        "%(message)s")
    try:
        settings = load(args.config)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    try:
        node_id = node_id_for(settings, args.node_id)
    except BackendError as exc:
        log.error("%s", exc)
        return 2
    try:
        backends = open_backends(settings)
    except (BackendError, ConfigError) as exc:
        log.error("cannot open the job store and queues: %s", exc)
        return 1
    try:
        return run_daemon(settings, backends, node_id, args.stop_grace_s)
    finally:
        backends.close()


if __name__ == "__main__":
    sys.exit(main())
