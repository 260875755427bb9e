"""A discrete-event simulation of the scaler on a job trace.

The simulator calls `feeder.policy.decide`, the function the live scaler
calls, at each policy's own decision interval (the original decided every
60 s), and models the world the policy cannot see:

- an encoder is billed from launch to stop, per second (rounded up) with a
  60 s minimum (`billing_minimum_s`, `billing_increment_s` of the settings);
- its boot time is drawn uniformly from [boot_min_s, boot_max_s]; the
  policy is not told it, it measures the boots it sees (launch to ready);
- a launch fails with `launch_failure_prob`: the encoder never takes work
  and disappears at the end of its boot, billed for that time;
- a running encoder is interrupted (Spot) at `interruptions_per_hour`
  (exponential times): it goes at once and its running jobs go back to the
  front of the queue and start again (`restarts`);
- a queued job goes to a free slot chosen by `pickup`: "random" (an SQS
  long poll: any waiting receiver may get it), "oldest" (the earliest
  launched encoder with a free slot) or "round-robin" (the slot that has
  been free longest); jobs are taken in arrival order;
- under the original policy an encoder stops itself after `idle_exit_s`
  without work (nommerd_max_inactivity, 600 s in the original); under the
  predictive policy the scaler drains encoders: a draining encoder takes no
  new job and stops when its running jobs end, so scale-in never
  interrupts a job.

Everything random comes from one `seed`, so a run is reproducible.
Traces (feeder.tracegen) are lists of (arrival_s, encode_s).
"""
from __future__ import annotations

import collections
import dataclasses
import heapq
import math
import random
from bisect import bisect_right

from feeder.policy import (ORIGINAL_INTERVAL_S, BusyHistory, Decision, EncoderView,
                           Observation, PolicySettings, decide)

PICKUPS = ("random", "oldest", "round-robin")

# Events at the same instant are handled in this order: a slot freed or an
# encoder booted at t can take a job arriving at t, and the scaler's tick at
# t sees everything that happened at t.
_FINISH, _READY, _FAIL, _INTERRUPT, _ARRIVAL, _IDLE_EXIT, _TICK = range(7)


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """One simulated run: the policy and the world it acts on (seconds).

    interval_s: seconds between decisions; None: the policy's own (the
    original's 60 s, else 5 s, the live scaler's default). idle_exit_s: idle
    time after which an encoder stops itself under the original policy
    (None: never).
    """

    policy: PolicySettings
    interval_s: float | None = None
    boot_min_s: float = 60.0
    boot_max_s: float = 60.0
    idle_exit_s: float | None = 600.0
    pickup: str = "random"
    launch_failure_prob: float = 0.0
    interruptions_per_hour: float = 0.0
    seed: int = 0
    label: str = ""

    @property
    def decision_interval_s(self) -> float:
        if self.interval_s is not None:
            return self.interval_s
        return ORIGINAL_INTERVAL_S if self.policy.policy == "original" else 5.0


@dataclasses.dataclass
class SimResult:
    """What one run cost and how long jobs waited (seconds)."""

    label: str
    encoder_seconds: float
    waits_s: list[float]
    makespan_s: float
    launched: int
    peak_encoders: int
    restarts: int = 0
    failed_launches: int = 0
    interruptions: int = 0

    def wait_percentile_s(self, percent: float) -> float:
        """Nearest-rank percentile of the waits (0 for an empty trace)."""
        if not self.waits_s:
            return 0.0
        ordered = sorted(self.waits_s)
        rank = max(1, math.ceil(percent / 100 * len(ordered)))
        return ordered[rank - 1]


@dataclasses.dataclass
class _Encoder:
    id: str
    launched_at_s: float
    running: bool = False
    draining: bool = False
    idle_since_s: float | None = None
    # Running jobs: trace index -> start time.
    jobs: dict[int, float] = dataclasses.field(default_factory=dict)
    # When each free slot became free (round-robin takes the oldest).
    free_since_s: list[float] = dataclasses.field(default_factory=list)

    @property
    def busy(self) -> int:
        return len(self.jobs)


def billed_s(duration_s: float, ps: PolicySettings) -> float:
    """Seconds billed for an encoder that ran `duration_s`."""
    increment = ps.billing_increment_s
    if increment > 0:
        # The epsilon keeps 61.0000000001 s (float noise) from billing 62 s.
        duration_s = math.ceil(duration_s / increment - 1e-9) * increment
    return max(ps.billing_minimum_s, duration_s)


class _Run:
    """The state of one simulation; `simulate` drives it."""

    def __init__(self, jobs: list[tuple[float, float]], config: SimConfig):
        if config.pickup not in PICKUPS:
            raise ValueError(f"unknown pickup {config.pickup!r}; known: {list(PICKUPS)}")
        self.jobs = jobs
        self.config = config
        self.ps = config.policy
        self.interval_s = config.decision_interval_s
        self.rng = random.Random(f"world:{config.seed}")
        self.arrivals = [arrival for arrival, _ in jobs]
        self.events: list = []
        self.seq = 0
        self.queue: collections.deque[int] = collections.deque()
        self.live: dict[str, _Encoder] = {}
        self.first_start_s: dict[int, float] = {}
        self.waits_s: list[float] = []
        self.encoder_seconds = 0.0
        self.launched = self.peak = self.done = self.arrived = 0
        self.restarts = self.failed = self.interrupted = 0
        self.boot_samples_s: list[float] = []
        self.busy_history = BusyHistory()
        self.last_finish_s = 0.0
        self.last_scale_in_s: float | None = None
        self.idle_exit_s = config.idle_exit_s if self.ps.policy == "original" else None
        self.now_s = 0.0

    def push(self, at_s: float, kind: int, data=None) -> None:
        self.seq += 1
        heapq.heappush(self.events, (at_s, kind, self.seq, data))

    # --- pickup ---

    def _free_slot_owner(self) -> _Encoder | None:
        ready = [e for e in self.live.values() if e.running and not e.draining and e.free_since_s]
        if not ready:
            return None
        pickup = self.config.pickup
        if pickup == "round-robin":
            return min(ready, key=lambda e: (e.free_since_s[0], e.id))
        if pickup == "oldest":
            return min(ready, key=lambda e: (e.launched_at_s, e.id))
        # Any waiting receiver is as likely as another: weight by free slots.
        pick = self.rng.randrange(sum(len(e.free_since_s) for e in ready))
        for encoder in ready:
            if pick < len(encoder.free_since_s):
                return encoder
            pick -= len(encoder.free_since_s)
        raise AssertionError("unreachable")

    def dispatch(self, now_s: float) -> None:
        while self.queue:
            encoder = self._free_slot_owner()
            if encoder is None:
                return
            encoder.free_since_s.sort()
            encoder.free_since_s.pop(0)
            encoder.idle_since_s = None
            index = self.queue.popleft()
            arrival_s, encode_s = self.jobs[index]
            encoder.jobs[index] = now_s
            self.first_start_s.setdefault(index, now_s)
            self.push(now_s + encode_s, _FINISH, (encoder.id, index))

    # --- the fleet ---

    def became_idle(self, encoder: _Encoder, now_s: float) -> None:
        encoder.idle_since_s = now_s
        if encoder.draining:
            self.stop(encoder.id, now_s)
        elif self.idle_exit_s is not None:
            self.push(now_s + self.idle_exit_s, _IDLE_EXIT, (encoder.id, now_s))

    def stop(self, encoder_id: str, now_s: float) -> None:
        encoder = self.live.pop(encoder_id)
        self.encoder_seconds += billed_s(now_s - encoder.launched_at_s, self.ps)

    def launch(self, now_s: float) -> None:
        self.launched += 1
        encoder_id = f"e{self.launched}"
        self.live[encoder_id] = _Encoder(id=encoder_id, launched_at_s=now_s)
        boot_s = self.rng.uniform(self.config.boot_min_s, self.config.boot_max_s)
        fails = self.rng.random() < self.config.launch_failure_prob
        self.push(now_s + boot_s, _FAIL if fails else _READY, encoder_id)

    def observe(self) -> Observation:
        now_s = self.now_s
        views = tuple(
            EncoderView(id=e.id, state="running" if e.running else "pending",
                        launched_at_s=e.launched_at_s, busy_slots=e.busy,
                        idle_since_s=e.idle_since_s, draining=e.draining)
            for e in self.live.values())
        window_s = self.ps.arrival_window_s
        window_start = bisect_right(self.arrivals, now_s - window_s, 0, self.arrived)
        in_flight = sum(e.busy for e in self.live.values())
        self.busy_history.record(now_s, in_flight, window_s)
        return Observation(queued=len(self.queue), in_flight=in_flight, encoders=views,
                           arrivals_s=tuple(self.arrivals[window_start:self.arrived]),
                           last_scale_in_s=self.last_scale_in_s,
                           boot_samples_s=tuple(self.boot_samples_s[-20:]),
                           busy_slots_mean=self.busy_history.mean(now_s, window_s))

    def apply(self, decision: Decision, now_s: float) -> None:
        for encoder_id in decision.stop:
            encoder = self.live.get(encoder_id)
            if encoder is None:
                raise RuntimeError(f"policy asked to stop {encoder_id!r}, which is gone")
            encoder.draining = True
            if not encoder.running or encoder.busy == 0:
                self.stop(encoder_id, now_s)
        if decision.stop:
            self.last_scale_in_s = now_s
        for _ in range(decision.launch):
            self.launch(now_s)
        self.peak = max(self.peak, len(self.live))

    def settle_s(self) -> float:
        """How long after the last job the fleet is watched before billing what is left.

        Long enough for every stop that can still come: an idle exit, a
        drain after its hold time and cooldown, and (predictive) the end of
        the capacity the arrival window still asks for.
        """
        ps = self.ps
        memory_s = ps.arrival_window_s if ps.policy == "predictive" else 0.0
        hold_s = max(ps.scale_in_idle_s, ps.scale_in_boots * self.config.boot_max_s)
        return (max(self.idle_exit_s or 0.0, hold_s + ps.scale_cooldown_s)
                + memory_s + self.config.boot_max_s + 2 * self.interval_s
                + ps.billing_minimum_s)

    # --- events ---

    def handle(self, kind: int, data) -> None:
        now_s = self.now_s
        if kind == _ARRIVAL:
            self.arrived += 1
            self.queue.append(data)
        elif kind == _FINISH:
            encoder_id, index = data
            encoder = self.live.get(encoder_id)
            if encoder is None or index not in encoder.jobs:
                return  # interrupted meanwhile
            started_s = encoder.jobs.pop(index)
            self.waits_s.append(started_s - self.jobs[index][0])
            encoder.free_since_s.append(now_s)
            self.done += 1
            self.last_finish_s = now_s
            if encoder.busy == 0:
                self.became_idle(encoder, now_s)
        elif kind in (_READY, _FAIL):
            encoder = self.live.get(data)
            if encoder is None:
                return  # drained while booting
            if kind == _FAIL:
                self.failed += 1
                self.stop(data, now_s)
                return
            encoder.running = True
            self.boot_samples_s.append(now_s - encoder.launched_at_s)
            encoder.free_since_s = [now_s] * self.ps.slots_per_encoder
            rate = self.config.interruptions_per_hour
            if rate > 0:
                self.push(now_s + self.rng.expovariate(rate / 3600), _INTERRUPT, data)
            self.became_idle(encoder, now_s)
        elif kind == _INTERRUPT:
            encoder = self.live.get(data)
            if encoder is None:
                return
            self.interrupted += 1
            self.restarts += encoder.busy
            # Its jobs go back first in line, in arrival order.
            self.queue.extendleft(sorted(encoder.jobs, reverse=True))
            self.stop(data, now_s)
        elif kind == _IDLE_EXIT:
            encoder_id, idle_since_s = data
            encoder = self.live.get(encoder_id)
            if encoder is not None and encoder.busy == 0 and encoder.idle_since_s == idle_since_s:
                self.stop(encoder_id, now_s)
        elif kind == _TICK:
            self.apply(decide(self.observe(), self.ps, now_s), now_s)
            if not self.finished(now_s):
                self.push(now_s + self.interval_s, _TICK)
            return
        self.dispatch(now_s)

    def finished(self, now_s: float) -> bool:
        if self.done < len(self.jobs):
            return False
        return not self.live or now_s >= self.last_finish_s + self.settle_s()

    def run(self) -> SimResult:
        for index, (arrival_s, _) in enumerate(self.jobs):
            self.push(arrival_s, _ARRIVAL, index)
        self.push(0.0, _TICK)
        while self.events:
            self.now_s, kind, _, data = heapq.heappop(self.events)
            self.handle(kind, data)
            if kind == _TICK and self.finished(self.now_s):
                break
        for encoder_id in list(self.live):
            self.stop(encoder_id, self.now_s)
        first_s = self.jobs[0][0] if self.jobs else 0.0
        return SimResult(label=self.config.label or self.ps.policy,
                         encoder_seconds=self.encoder_seconds, waits_s=self.waits_s,
                         makespan_s=self.last_finish_s - first_s if self.jobs else 0.0,
                         launched=self.launched, peak_encoders=self.peak,
                         restarts=self.restarts, failed_launches=self.failed,
                         interruptions=self.interrupted)


def simulate(jobs: list[tuple[float, float]], config: SimConfig) -> SimResult:
    """Run `config`'s policy on `jobs` ((arrival_s, encode_s), ascending).

    The scaler ticks at 0, interval, 2 x interval, ... The run ends at the
    first tick when every job has finished and the fleet is empty, or when
    it has been watched for `settle` seconds more (long enough for every
    encoder the policy will let go to be stopped, see `_Run.settle_s`);
    encoders still up then (the minimum the policy keeps) are billed up to
    that tick. A job's wait runs from its arrival to the start of the run
    that finished it. Makespan: first arrival to last finish. Raises
    ValueError for an unknown policy or pickup.
    """
    return _Run(jobs, config).run()
