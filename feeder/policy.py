"""Scaling policies: pure functions from what the scaler observes to a decision.

The live scaler (feeder.scaler) and the simulator (feeder.simulate) call the
same `decide`. Nothing here reads a clock, a setting file or a backend: the
caller passes the time (`now_s`, seconds on any fixed clock; the same clock
as every other time in the Observation) and the settings.

Two policies:

- "original": the 2011 feederd rule, kept for users who want its behaviour.
- "predictive": sizes the fleet with Erlang C from the arrival rate and the
  encode time it measures, against a target wait; counts booting encoders
  as capacity to come and draining ones as gone; keeps an idle encoder for
  about one boot before it lets it go (what a new one would cost to get
  back), and never one whose minimum billing is still running.
"""
from __future__ import annotations

import bisect
import dataclasses
import math

POLICIES = ("original", "predictive")

# How often the 2011 feederd decided (seconds); the simulator runs the
# original policy at this interval.
ORIGINAL_INTERVAL_S = 60.0

# Named bundles of predictive settings for the wait-versus-money choice.
# A preset overrides the keys it names; `nommer-scaler suite` measures each
# one (docs/scaling.md).
# Chosen on draws 0-2 of each trace family, judged on draws 1000-1019.
PRESETS: dict[str, dict[str, float]] = {
    # Warm slots whatever the rate, sized so that 5 % of jobs wait > 30 s.
    "latency": {"acceptable_wait_s": 30.0, "wait_tail_prob": 0.05,
                "warm_min_arrivals_per_boot": 0.0, "scale_in_boots": 2.0},
    # Warm slots only at rates of one job per boot or more, 10 % may wait
    # > 90 s; an idle encoder goes after 1.5 boots.
    "cost": {"acceptable_wait_s": 90.0, "wait_tail_prob": 0.1,
             "warm_min_arrivals_per_boot": 1.0, "scale_in_boots": 1.5},
}

# An encoder is drained only when at most this much of its paid time is
# left: until then keeping it costs nothing (inside EC2's 60 s minimum, or
# in a paid hour).
PAID_SLACK_S = 5.0

# Boot times the policy remembers, and the share of them it plans for.
BOOT_SAMPLES = 20
BOOT_QUANTILE = 0.8


@dataclasses.dataclass(frozen=True)
class EncoderView:
    """One encoder as the policy sees it.

    state: "pending" (launched, still booting) or "running". Times are
    seconds on the caller's clock. `idle_since_s` is when the encoder last
    became idle (no busy slot), or None while it works or boots. A
    `draining` encoder takes no new jobs and goes when its jobs end: it is
    not capacity.
    """

    id: str
    state: str
    launched_at_s: float
    busy_slots: int = 0
    idle_since_s: float | None = None
    draining: bool = False


@dataclasses.dataclass(frozen=True)
class Observation:
    """The backlog and the fleet at one moment.

    queued: jobs waiting in the new-job queue; in_flight: jobs being worked
    on. `unfinished`, when known, is the store's count of unfinished jobs
    (what the original compared with capacity); None means queued +
    in_flight. `arrivals_s`: arrival times of recent jobs, ascending, at
    least those within the arrival window. `last_scale_in_s`: when the
    scaler last stopped encoders, or None. `boot_samples_s`: how long recent
    encoders took from launch to their first report (newest last).
    `busy_slots_mean`: the mean number of busy slots over the arrival window
    (None: unknown); with the arrival rate it gives the mean encode time
    (Little's law).
    """

    queued: int
    in_flight: int
    encoders: tuple[EncoderView, ...] = ()
    arrivals_s: tuple[float, ...] = ()
    unfinished: int | None = None
    last_scale_in_s: float | None = None
    boot_samples_s: tuple[float, ...] = ()
    busy_slots_mean: float | None = None

    @property
    def unfinished_jobs(self) -> int:
        return self.queued + self.in_flight if self.unfinished is None else self.unfinished


@dataclasses.dataclass(frozen=True)
class Decision:
    """How many encoders to launch and which to drain; `reason` is for the log.

    `stop`: encoders to drain (the scaler marks them; they take no new job
    and go when their jobs end).
    """

    launch: int = 0
    stop: tuple[str, ...] = ()
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class PolicySettings:
    """What the policies need from the settings (seconds, counts).

    boot_time_estimate_s and encode_time_estimate_s: what the policy assumes
    until it has measured boots and encodes. acceptable_wait_s and
    wait_tail_prob: the share of jobs that may wait longer than the
    acceptable wait (Erlang C). Below warm_min_arrivals_per_boot arrivals
    per boot time no slot is kept warm: it would mostly idle, and a job gets
    an encoder launched for it instead. scale_in_boots: an idle encoder is kept for
    this many boot times (at least scale_in_idle_s) before it is let go.
    Billing: an encoder is billed from launch to stop in increments of
    `billing_increment_s`, at least `billing_minimum_s` (EC2 today: per
    second, 60 s minimum).
    """

    policy: str = "original"
    min_encoders: int = 0
    max_encoders: int = 3
    slots_per_encoder: int = 1
    job_overflow_thresh: int = 2
    boot_time_estimate_s: float = 60.0
    encode_time_estimate_s: float = 120.0
    acceptable_wait_s: float = 60.0
    wait_tail_prob: float = 0.1
    warm_min_arrivals_per_boot: float = 1.0
    scale_in_idle_s: float = 10.0
    scale_in_boots: float = 2.0
    scale_cooldown_s: float = 30.0
    arrival_window_s: float = 900.0
    billing_minimum_s: float = 60.0
    billing_increment_s: float = 1.0

    @classmethod
    def from_settings(cls, settings, preset: str | None = None) -> "PolicySettings":
        """Build from a core.settings.Settings (or anything with those attributes).

        `preset` (default: the `scaling_preset` setting, "" for none)
        overrides the keys its PRESETS entry names. Raises ValueError for an
        unknown policy or preset.
        """
        values = dict(
            policy=settings.scaling_policy,
            min_encoders=settings.min_encoders,
            max_encoders=settings.max_num_ec2_instances,
            slots_per_encoder=settings.max_encoding_jobs_per_ec2_instance,
            job_overflow_thresh=settings.job_overflow_thresh,
            boot_time_estimate_s=settings.boot_time_estimate_s,
            encode_time_estimate_s=settings.encode_time_estimate_s,
            acceptable_wait_s=settings.acceptable_wait_s,
            wait_tail_prob=settings.scale_wait_tail_prob,
            warm_min_arrivals_per_boot=settings.scale_warm_min_arrivals_per_boot,
            scale_in_idle_s=settings.scale_in_idle_s,
            scale_in_boots=settings.scale_in_boots,
            scale_cooldown_s=settings.scale_cooldown_s,
            arrival_window_s=settings.scale_arrival_window_s,
            billing_minimum_s=settings.billing_minimum_s,
            billing_increment_s=settings.billing_increment_s,
        )
        if preset is None:
            preset = settings.scaling_preset
        return cls(**values).with_preset(preset)

    def with_preset(self, preset: str) -> "PolicySettings":
        """A copy with the named PRESETS entry applied ("" = unchanged). Raises ValueError."""
        if not preset:
            return self
        if preset not in PRESETS:
            raise ValueError(f"unknown scaling preset {preset!r}; known: {sorted(PRESETS)}")
        return dataclasses.replace(self, **PRESETS[preset])


def decide(obs: Observation, ps: PolicySettings, now_s: float) -> Decision:
    """Run the policy `ps.policy` names. Raises ValueError for an unknown name."""
    if ps.policy == "original":
        return original_policy(obs, ps, now_s)
    if ps.policy == "predictive":
        return predictive_policy(obs, ps, now_s)
    raise ValueError(f"unknown scaling policy {ps.policy!r}; known: {list(POLICIES)}")


def original_policy(obs: Observation, ps: PolicySettings, now_s: float) -> Decision:
    """The original feederd rule, faithfully, flaws included.

    Every interval: instances = all encoders (pending + running); nothing
    if instances >= max. unfinished = the store's unfinished jobs; nothing
    if none. capacity = instances x slots. If there are no instances, or
    unfinished >= capacity + threshold: shortage = unfinished - capacity
    (minus the threshold when capacity > 0); if shortage > 0 launch
    max(1, shortage // slots), but never more than max in one go.

    Flaws kept on purpose: the cap is on one launch, not on the fleet, so
    2 running encoders with max 3 can become 5; a queue of `threshold` jobs
    waits for a busy fleet before anything is launched; it never stops an
    encoder (they stop themselves after nommerd_max_inactivity idle, 600 s
    in the original: chosen when EC2 billed by the hour). `now_s` is unused.
    """
    instances = len(obs.encoders)
    if instances >= ps.max_encoders:
        return Decision(reason=f"at max ({instances} >= {ps.max_encoders})")
    unfinished = obs.unfinished_jobs
    if unfinished <= 0:
        return Decision(reason="no unfinished jobs")
    capacity = instances * ps.slots_per_encoder
    if instances and unfinished < capacity + ps.job_overflow_thresh:
        return Decision(reason=f"unfinished {unfinished} < capacity {capacity} + threshold")
    shortage = unfinished - capacity
    if capacity > 0:
        shortage -= ps.job_overflow_thresh
    if shortage <= 0:
        return Decision(reason=f"no shortage (unfinished {unfinished}, capacity {capacity})")
    launch = min(max(1, shortage // ps.slots_per_encoder), ps.max_encoders)
    return Decision(launch=launch,
                    reason=f"shortage {shortage} (unfinished {unfinished}, capacity {capacity})")


# A silence of g seconds is unlikely (5 %) under a Poisson rate above 3 / g:
# exp(-3) = 0.05. Used to forget a burst as soon as it is over.
SILENCE_CONFIDENCE = 3.0


def arrival_rate_per_s(arrivals_s: tuple[float, ...], now_s: float, window_s: float) -> float:
    """Estimated job arrivals per second at `now_s`.

    The mean rate over (now_s - window_s, now_s], but no more than the
    fastest rate the silence since the last arrival still allows (3 / gap):
    a minute after a burst of 200 jobs ends, a 10-minute mean would still
    expect 20 jobs a minute. 0 for an empty window.
    """
    if window_s <= 0:
        return 0.0
    low = bisect.bisect_right(arrivals_s, now_s - window_s)
    high = bisect.bisect_right(arrivals_s, now_s)
    if high == low:
        return 0.0
    rate = (high - low) / window_s
    silence_s = now_s - arrivals_s[high - 1]
    if silence_s > 0:
        rate = min(rate, SILENCE_CONFIDENCE / silence_s)
    return rate


def paid_time_left_s(launched_at_s: float, now_s: float, ps: PolicySettings) -> float:
    """Seconds already paid for beyond `now_s` if the encoder stopped now.

    Billing runs from launch in `billing_increment_s` steps with a
    `billing_minimum_s` minimum, so stopping early in a paid step saves nothing.
    """
    age_s = max(0.0, now_s - launched_at_s)
    if age_s < ps.billing_minimum_s:
        return ps.billing_minimum_s - age_s
    increment = ps.billing_increment_s
    if increment <= 0:
        return 0.0
    into_step = (age_s - ps.billing_minimum_s) % increment
    return 0.0 if into_step == 0 else increment - into_step



class BusyHistory:
    """Busy-slot counts seen at each decision, for `Observation.busy_slots_mean`.

    The caller (live scaler or simulator) records the in-flight count at
    every decision; `mean_s` is their time-weighted mean over a window.
    """

    def __init__(self) -> None:
        self._samples: list[tuple[float, int]] = []

    def record(self, now_s: float, busy: int, window_s: float) -> None:
        self._samples.append((now_s, busy))
        while len(self._samples) > 2 and self._samples[1][0] <= now_s - window_s:
            self._samples.pop(0)

    def mean(self, now_s: float, window_s: float) -> float | None:
        """Time-weighted mean busy slots over (now_s - window_s, now_s]; None before two samples."""
        if len(self._samples) < 2:
            return None
        total = span = 0.0
        for (t0, busy), (t1, _) in zip(self._samples, self._samples[1:]):
            t0 = max(t0, now_s - window_s)
            if t1 > t0:
                total += busy * (t1 - t0)
                span += t1 - t0
        return total / span if span > 0 else None


def estimate_boot_s(samples_s: tuple[float, ...], ps: PolicySettings) -> float:
    """The boot time to plan for: the 80th percentile of the last boots seen,
    the setting until one is seen."""
    recent = sorted(samples_s[-BOOT_SAMPLES:])
    if not recent:
        return ps.boot_time_estimate_s
    return recent[max(1, math.ceil(BOOT_QUANTILE * len(recent))) - 1]


def estimate_encode_s(obs: Observation, ps: PolicySettings, now_s: float) -> float:
    """Mean encode time on one slot: busy slots / arrival rate over the window
    (Little's law), the setting while either is unknown or zero."""
    if obs.busy_slots_mean is None or ps.arrival_window_s <= 0:
        return ps.encode_time_estimate_s
    low = bisect.bisect_right(obs.arrivals_s, now_s - ps.arrival_window_s)
    high = bisect.bisect_right(obs.arrivals_s, now_s)
    if high - low < 5 or obs.busy_slots_mean <= 0:
        return ps.encode_time_estimate_s
    return obs.busy_slots_mean / ((high - low) / ps.arrival_window_s)


def erlang_c(servers: int, load: float) -> float:
    """Probability that a job must queue in M/M/c with `servers` slots and
    offered load `load` (arrival rate x mean service time); 1 when load >= servers.

    Erlang B by its stable recursion, then C = c B / (c - a (1 - B)).
    """
    if servers <= 0 or load >= servers:
        return 1.0
    if load <= 0:
        return 0.0
    blocking = 1.0
    for k in range(1, servers + 1):
        blocking = load * blocking / (k + load * blocking)
    return servers * blocking / (servers - load * (1 - blocking))


def wait_exceeds_prob(servers: int, rate_per_s: float, service_s: float, wait_s: float) -> float:
    """P(wait > wait_s) in M/M/c: C(c, a) exp(-(c - a) wait_s / service_s)."""
    load = rate_per_s * service_s
    if servers <= load:
        return 1.0
    return erlang_c(servers, load) * math.exp(-(servers - load) * wait_s / service_s)


def erlang_slots(rate_per_s: float, service_s: float, wait_s: float, tail_prob: float,
                 cap: int) -> int:
    """The fewest slots (at most `cap`) for which P(wait > wait_s) <= tail_prob; 0 at rate 0."""
    if rate_per_s <= 0 or service_s <= 0:
        return 0
    servers = max(1, math.floor(rate_per_s * service_s) + 1)
    while servers < cap and wait_exceeds_prob(servers, rate_per_s, service_s, wait_s) > tail_prob:
        servers += 1
    return min(servers, cap)


def target_encoders(obs: Observation, ps: PolicySettings, now_s: float) -> tuple[int, str]:
    """The fleet size the predictive policy aims at, clamped to [min, max], and why.

    Slots = the larger of the Erlang C size for the recent arrival rate and
    the backlog: jobs running plus the queued ones that the running slots
    will not take within the acceptable wait.
    """
    boot_s = estimate_boot_s(obs.boot_samples_s, ps)
    rate = arrival_rate_per_s(obs.arrivals_s, now_s, ps.arrival_window_s)
    encode_s = estimate_encode_s(obs, ps, now_s)
    cap = ps.max_encoders * ps.slots_per_encoder
    # A job that finds no free slot gets one within a boot (the backlog below
    # launches for it): warm slots matter only when that is too late, and
    # pay only when jobs come often enough to use them.
    warm = ps.acceptable_wait_s < boot_s and rate * boot_s >= ps.warm_min_arrivals_per_boot
    steady = (erlang_slots(rate, encode_s, ps.acceptable_wait_s, ps.wait_tail_prob, cap)
              if warm else 0)
    # Jobs on draining encoders end there; they need no capacity.
    in_flight = obs.in_flight - sum(e.busy_slots for e in obs.encoders if e.draining)
    # A queued job needs a new slot only if no running one frees up within
    # the acceptable wait: about in_flight x wait / encode time of them do.
    freed = in_flight * min(1.0, ps.acceptable_wait_s / encode_s)
    backlog = in_flight + max(0, math.ceil(obs.queued - freed))
    wanted = math.ceil(max(steady, backlog) / ps.slots_per_encoder)
    target = max(ps.min_encoders, min(ps.max_encoders, wanted))
    return target, (f"queued {obs.queued} in_flight {obs.in_flight} rate {rate * 60:.2f}/min "
                    f"encode {encode_s:.0f}s boot {boot_s:.0f}s erlang {steady} "
                    f"-> target {target}")


def predictive_policy(obs: Observation, ps: PolicySettings, now_s: float) -> Decision:
    """Launch up to the Erlang C / backlog target; drain idle encoders beyond it.

    - Booting encoders count as capacity to come, so nothing is launched
      twice for one backlog; draining encoders are not capacity.
    - Never launches past max_encoders, whatever the fleet holds.
    - Above the target, drains only encoders that are running, idle for at
      least max(scale_in_idle_s, scale_in_boots x the boot estimate) (a
      new encoder would cost about a boot to get back) and with at most
      PAID_SLACK_S of paid time left (stopping earlier saves nothing);
      least paid time left first, then longest idle; not within
      `scale_cooldown_s` of the last launch or drain.
    """
    capacity = [e for e in obs.encoders if not e.draining]
    count = len(capacity)
    target, why = target_encoders(obs, ps, now_s)
    if target > count:
        return Decision(launch=min(target - count, max(0, ps.max_encoders - len(obs.encoders))),
                        reason=why)
    surplus = count - target
    if surplus <= 0:
        return Decision(reason=why)
    last_change_s = max([e.launched_at_s for e in obs.encoders]
                        + ([obs.last_scale_in_s] if obs.last_scale_in_s is not None else []))
    if now_s - last_change_s < ps.scale_cooldown_s:
        return Decision(reason=why + " (cooldown)")
    hold_s = max(ps.scale_in_idle_s,
                 ps.scale_in_boots * estimate_boot_s(obs.boot_samples_s, ps))
    idle = [e for e in capacity
            if e.state == "running" and e.busy_slots == 0 and e.idle_since_s is not None
            and now_s - e.idle_since_s >= hold_s
            and paid_time_left_s(e.launched_at_s, now_s, ps) <= PAID_SLACK_S]
    idle.sort(key=lambda e: (paid_time_left_s(e.launched_at_s, now_s, ps), e.idle_since_s, e.id))
    stop = tuple(e.id for e in idle[:surplus])
    return Decision(stop=stop, reason=why)
