"""The feeder's scaler: backlog versus capacity -> launch or stop encoders.

    nommer-scaler [--config nomconf.toml]          run the loop
    nommer-scaler simulate [TRACE.csv ...] [opts]  compare the policies on a trace
    nommer-scaler suite [opts]                     ... over the trace families

Every settings.feederd_auto_scale_interval seconds the loop is a checklist:

    observe (queue counts, unfinished jobs, fleet, node reports, arrivals)
    -> decide (feeder.policy.decide, the function the simulator runs)
    -> apply (terminate drained encoders, mark the ones to stop draining,
       fleet.launch) -> log the decision in one line

Scale-in never interrupts a job: an encoder the policy lets go is marked
draining in the store; nommerd takes no new job once it sees the mark and
exits when its running jobs end, reporting "stopped". Only then, or when it
has stopped reporting (or never reported), does the scaler terminate it.

Store, queue and fleet failures (BackendError) are logged and the loop backs
off; it never crashes on them. SIGTERM/SIGINT only set a flag, which the
loop checks at least every STOP_CHECK_S.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import threading
import time
from datetime import datetime, timezone

from core.backends import Backends, open_backends, open_fleet
from core.daemon import configure_logging, run_until_signalled
from core.errors import BackendError, NommerError
from core.interfaces import Encoder, Fleet, Node
from core.jobs import UNFINISHED_STATES
from core.settings import Settings, load
from feeder.policy import (BOOT_SAMPLES, BusyHistory, Decision, EncoderView, Observation,
                           PolicySettings, decide)

log = logging.getLogger("feeder.scaler")

STOP_CHECK_S = 0.5
BACKOFF_CAP_S = 60.0
# Arrivals are read newest first, this many per page, at most this many pages
# per decision: enough for 2000 jobs in the arrival window.
ARRIVALS_PAGE = 100
ARRIVALS_MAX_PAGES = 20
# A node report written by a process that started this long before the
# fleet's launch time still counts as the encoder's own (clock skew).
REPORT_SKEW_S = 5.0
# An encoder that has not reported after this many boot-time estimates is
# taken as running and idle, so the predictive policy can stop one that
# never comes up.
UNREPORTED_BOOTS = 3
# EC2 may list an instance that RunInstances started only seconds later
# (eventual consistency). A launched id counts as a pending encoder until
# the fleet lists it, or this long after launch.
LAUNCH_MEMORY_S = 600.0
# A draining encoder whose last report is this many heartbeats old has
# stopped reporting: it is terminated without its confirmation.
SILENT_HEARTBEATS = 3


@dataclasses.dataclass
class FleetMemory:
    """What the loop remembers between decisions (the policy itself is pure).

    idle_since_s: encoder id -> when this process first saw it idle.
    last_scale_in_s: when it last marked encoders draining.
    launched_s: encoder id -> when this process launched it, until the fleet lists it.
    draining: the encoders it marked draining. boot_samples_s: launch to
    first own report of the encoders it saw come up (newest last);
    booted: the encoders already sampled. busy: busy slots per decision.
    """

    idle_since_s: dict[str, float] = dataclasses.field(default_factory=dict)
    last_scale_in_s: float | None = None
    launched_s: dict[str, float] = dataclasses.field(default_factory=dict)
    draining: set[str] = dataclasses.field(default_factory=set)
    boot_samples_s: list[float] = dataclasses.field(default_factory=list)
    booted: set[str] = dataclasses.field(default_factory=set)
    busy: BusyHistory = dataclasses.field(default_factory=BusyHistory)

    def with_unlisted(self, listed: list[Encoder], now_s: float) -> list[Encoder]:
        """`listed` plus, as pending, the encoders launched here that the fleet
        does not list yet; forgets those it lists (or launched too long ago)."""
        seen = {encoder.id for encoder in listed}
        for encoder_id, at_s in list(self.launched_s.items()):
            if encoder_id in seen or now_s - at_s > LAUNCH_MEMORY_S:
                del self.launched_s[encoder_id]
        return listed + [Encoder(id=encoder_id, state="pending",
                                 launched_at=datetime.fromtimestamp(at_s, timezone.utc))
                         for encoder_id, at_s in sorted(self.launched_s.items())]


def encoder_view(encoder: Encoder, node: Node | None, memory: FleetMemory,
                 boot_time_estimate_s: float, now_s: float) -> EncoderView:
    """How the policy sees one pending or running encoder.

    Busy slots come from the encoder's node report, if that report was
    written by the process the fleet launched (not a stale one of an earlier
    run in the same slot). An encoder running without such a report is still
    booting (EC2 says "running" long before nommerd starts), until
    UNREPORTED_BOOTS boot-time estimates after launch. Idle-since is when
    this loop first saw the encoder idle; it is forgotten when it works.
    """
    launched_at_s = encoder.launched_at.timestamp() if encoder.launched_at else now_s
    own_report = (node is not None and node.state != "stopped"
                  and node.started_at.timestamp() >= launched_at_s - REPORT_SKEW_S)
    state = encoder.state
    if state == "running" and not own_report:
        if now_s - launched_at_s < UNREPORTED_BOOTS * boot_time_estimate_s:
            state = "pending"
    busy = node.active_jobs if own_report else 0
    if own_report and encoder.id not in memory.booted:
        memory.booted.add(encoder.id)
        memory.boot_samples_s.append(max(0.0, node.started_at.timestamp() - launched_at_s))
        del memory.boot_samples_s[:-BOOT_SAMPLES]
    draining = encoder.id in memory.draining or (own_report and node.draining)
    if state == "running" and busy == 0:
        idle_since_s = memory.idle_since_s.setdefault(encoder.id, now_s)
    else:
        memory.idle_since_s.pop(encoder.id, None)
        idle_since_s = None
    return EncoderView(id=encoder.id, state=state, launched_at_s=launched_at_s,
                       busy_slots=busy, idle_since_s=idle_since_s, draining=draining)


def drained(encoder: Encoder, node: Node | None, silent_after_s: float, now_s: float) -> bool:
    """Whether a draining encoder may be terminated: its own report says it
    stopped, or it has no own report, or its last one is older than `silent_after_s`."""
    launched_at_s = encoder.launched_at.timestamp() if encoder.launched_at else now_s
    if node is None or node.started_at.timestamp() < launched_at_s - REPORT_SKEW_S:
        return True
    return node.state == "stopped" or now_s - node.last_report.timestamp() > silent_after_s


def recent_arrivals_s(backends: Backends, now_s: float, window_s: float) -> tuple[float, ...]:
    """Creation times (epoch s, ascending) of the jobs created in the last
    `window_s`, at most ARRIVALS_PAGE x ARRIVALS_MAX_PAGES of them."""
    since = datetime.fromtimestamp(now_s - window_s, timezone.utc)
    created = backends.store.created_since(since, limit=ARRIVALS_PAGE * ARRIVALS_MAX_PAGES)
    return tuple(sorted(at.timestamp() for at in created))


class Scaler:
    """One scaler over a store, a queue and a fleet. Not thread-safe.

    `step(now_s)` runs one observe -> decide -> apply; `run()` repeats it
    until `request_stop()`, logging a BackendError and backing off instead
    of raising it.
    """

    def __init__(self, settings: Settings, backends: Backends, fleet: Fleet,
                 policy: PolicySettings | None = None):
        self.settings = settings
        self.backends = backends
        self.fleet = fleet
        self.policy = policy or PolicySettings.from_settings(settings)
        self.memory = FleetMemory()
        self._drained: list[str] = []
        self._stopping = threading.Event()
        self._last_logged: tuple | None = None

    def request_stop(self) -> None:
        """Ask run() to return. Only sets a flag, so a signal handler may call it."""
        self._stopping.set()

    def observe(self, now_s: float) -> Observation:
        """Read the backlog and the fleet. Raises BackendError."""
        queued, in_flight = self.backends.new_jobs.counts()
        unfinished = self.backends.store.count_jobs(UNFINISHED_STATES)
        listed = self.memory.with_unlisted(self.fleet.list_encoders(), now_s)
        live = [e for e in listed if e.state in ("pending", "running")]
        nodes = {node.id: node for node in self.backends.store.list_nodes()}
        memory = self.memory
        views = tuple(encoder_view(e, nodes.get(e.id), memory,
                                   self.policy.boot_time_estimate_s, now_s) for e in live)
        live_ids = {e.id for e in live}
        for gone in set(memory.idle_since_s) - live_ids:
            del memory.idle_since_s[gone]
        memory.draining &= live_ids
        memory.booted &= live_ids
        silent_after_s = SILENT_HEARTBEATS * self.settings.nommerd_heartbeat_interval_s
        self._drained = [view.id for view, e in zip(views, live) if view.draining
                         and drained(e, nodes.get(e.id), silent_after_s, now_s)]
        window_s = self.policy.arrival_window_s
        arrivals: tuple[float, ...] = ()
        busy_mean = None
        if self.policy.policy == "predictive":
            arrivals = recent_arrivals_s(self.backends, now_s, window_s)
            memory.busy.record(now_s, in_flight, window_s)
            busy_mean = memory.busy.mean(now_s, window_s)
        return Observation(queued=queued, in_flight=in_flight, encoders=views,
                           arrivals_s=arrivals, unfinished=unfinished,
                           last_scale_in_s=memory.last_scale_in_s,
                           boot_samples_s=tuple(memory.boot_samples_s),
                           busy_slots_mean=busy_mean)

    def decide(self, obs: Observation, now_s: float) -> Decision:
        """The policy's decision, without launches when launches are not allowed."""
        decision = decide(obs, self.policy, now_s)
        # The fleet never grows past the maximum, whatever the policy asks
        # (the original rule caps one launch, not the fleet).
        room = max(0, self.policy.max_encoders - len(obs.encoders))
        if decision.launch > room:
            decision = dataclasses.replace(
                decision, launch=room, reason=decision.reason + f"; capped at {room} by the maximum")
        if decision.launch and not self.settings.feederd_allow_ec2_launches:
            decision = dataclasses.replace(
                decision, launch=0, reason=decision.reason + "; launches disabled")
        return decision

    def apply(self, decision: Decision, now_s: float) -> list[str]:
        """Terminate drained encoders, mark the ones to stop draining, then
        launch, as decided; returns the ids launched. Raises BackendError."""
        if self._drained:
            self.fleet.stop(self._drained)
        for encoder_id in decision.stop:
            self.backends.store.mark_node_draining(encoder_id)
            self.memory.draining.add(encoder_id)
            self.memory.idle_since_s.pop(encoder_id, None)
        if decision.stop:
            self.memory.last_scale_in_s = now_s
        if decision.launch:
            launched = self.fleet.launch(decision.launch)
            self.memory.launched_s.update((encoder_id, now_s) for encoder_id in launched)
            return launched
        return []

    def step(self, now_s: float | None = None) -> Decision:
        """One observe -> decide -> apply, logged in one line. Raises BackendError."""
        now_s = time.time() if now_s is None else now_s
        obs = self.observe(now_s)
        decision = self.decide(obs, now_s)
        launched = self.apply(decision, now_s)
        self._count(decision, launched)
        booting = sum(1 for e in obs.encoders if e.state == "pending")
        picture = (obs.queued, obs.in_flight, obs.unfinished_jobs, len(obs.encoders), booting)
        line = (f"policy={self.policy.policy} queued={obs.queued} in_flight={obs.in_flight} "
                f"unfinished={obs.unfinished_jobs} encoders={len(obs.encoders)} "
                f"booting={booting} -> launch={decision.launch} started={len(launched)} "
                f"stop={list(decision.stop)} terminated={self._drained} ({decision.reason})")
        # Every decision is logged; the ones that change nothing, in an
        # unchanged picture, only at DEBUG, so an idle system does not write
        # a line every interval.
        acted = bool(decision.launch or decision.stop or self._drained)
        level = logging.INFO if acted or picture != self._last_logged else logging.DEBUG
        self._last_logged = picture
        log.log(level, "%s", line)
        return decision

    def _count(self, decision: Decision, launched: list[str]) -> None:
        """The decision in the store's counters, for GET /metrics."""
        metrics = self.backends.jobs.metrics
        action = "launch" if launched else "stop" if decision.stop else "hold"
        metrics.add("scaler_decisions_total", action=action)
        if launched:
            metrics.add("scaler_encoders_launched_total", len(launched))
        if decision.stop:
            metrics.add("scaler_encoders_stopped_total", len(decision.stop))

    def run(self) -> None:
        """Decide every interval until request_stop(); back off on BackendError."""
        interval_s = self.settings.feederd_auto_scale_interval
        failures = 0
        while not self._stopping.is_set():
            try:
                self.step()
                failures = 0
                delay_s = interval_s
            except BackendError as exc:
                failures += 1
                delay_s = min(interval_s * 2 ** min(failures, 10), BACKOFF_CAP_S)
                log.warning("backend failed: %s; trying again in %.0f s", exc, delay_s)
            self._sleep(delay_s)

    def _sleep(self, seconds: float) -> None:
        # Short slices: a stop request is seen within STOP_CHECK_S even if a
        # signal arrives while the wait is in progress.
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stopping.wait(min(left, STOP_CHECK_S))


def main(argv: list[str] | None = None) -> int:
    """Run the scaler until SIGTERM or SIGINT, or the simulator (`simulate ...`, `suite ...`).

    Returns 0, or 2 if the scaler cannot start (bad settings, no fleet).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["simulate"]:
        from feeder.simcli import simulate_main

        return simulate_main(argv[1:])
    if argv[:1] == ["suite"]:
        from feeder.simcli import suite_main

        return suite_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="nommer-scaler",
        description="Launch and stop encoders as the backlog needs. "
                    "'nommer-scaler simulate --help' compares the policies on a trace, "
                    "'nommer-scaler suite --help' over many.")
    parser.add_argument("--config", help="TOML settings file (default: $NOMMER_CONFIG)")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        settings = load(args.config)
        policy = PolicySettings.from_settings(settings)
        backends = open_backends(settings)
    except (NommerError, ValueError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    try:
        fleet = open_fleet(settings)
    except NommerError as exc:
        log.error("cannot start: %s", exc)
        backends.close()
        return 2
    scaler = Scaler(settings, backends, fleet, policy)
    log.info("scaler started: policy %s, every %g s, %d-%d encoders",
             policy.policy, settings.feederd_auto_scale_interval,
             policy.min_encoders, policy.max_encoders)
    try:
        run_until_signalled(scaler.run, scaler.request_stop)
    finally:
        backends.close()
    log.info("scaler stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
