"""Scaling policies: pure functions from what the scaler observes to a decision.

The live scaler (feeder.scaler) and the simulator (feeder.simulate) call the
same `decide`. Nothing here reads a clock, a setting file or a backend: the
caller passes the time (`now_s`, seconds on any fixed clock; the same clock
as every other time in the Observation) and the settings.

Two policies:

- "original": the 2011 feederd rule, kept for users who want its behaviour.
- "predictive": counts booting encoders as capacity, keeps warm capacity for
  the recent arrival rate, and stops idle encoders soon instead of letting
  every encoder idle for ten minutes (EC2 now bills per second).
"""
from __future__ import annotations

import bisect
import dataclasses
import math

POLICIES = ("original", "predictive")

# Named bundles of predictive settings for the wait-versus-money choice.
# A preset overrides the keys it names; the simulator's table in
# docs/scaling.md measures each one.
PRESETS: dict[str, dict[str, float]] = {
    # Both keep warm slots for the jobs expected during a whole boot
    # (acceptable wait 0) and stop an encoder the target no longer needs
    # after 10 idle seconds: with per-second billing an idle encoder is pure
    # cost, and the warm target already keeps the ones likely to be needed.
    # They differ in how many of those jobs may find no warm slot.
    "latency": {"acceptable_wait_s": 0.0, "warm_miss_prob": 0.2, "scale_in_idle_s": 10.0},
    "cost": {"acceptable_wait_s": 0.0, "warm_miss_prob": 0.5, "scale_in_idle_s": 10.0},
}


@dataclasses.dataclass(frozen=True)
class EncoderView:
    """One encoder as the policy sees it.

    state: "pending" (launched, still booting) or "running". Times are
    seconds on the caller's clock. `idle_since_s` is when the encoder last
    became idle (no busy slot), or None while it works or boots.
    """

    id: str
    state: str
    launched_at_s: float
    busy_slots: int = 0
    idle_since_s: float | None = None


@dataclasses.dataclass(frozen=True)
class Observation:
    """The backlog and the fleet at one moment.

    queued: jobs waiting in the new-job queue; in_flight: jobs being worked
    on. `unfinished`, when known, is the store's count of unfinished jobs
    (what the original compared with capacity); None means queued +
    in_flight. `arrivals_s`: arrival times of recent jobs, ascending, at
    least those within the arrival window. `last_scale_in_s`: when the
    scaler last stopped encoders, or None.
    """

    queued: int
    in_flight: int
    encoders: tuple[EncoderView, ...] = ()
    arrivals_s: tuple[float, ...] = ()
    unfinished: int | None = None
    last_scale_in_s: float | None = None

    @property
    def unfinished_jobs(self) -> int:
        return self.queued + self.in_flight if self.unfinished is None else self.unfinished


@dataclasses.dataclass(frozen=True)
class Decision:
    """How many encoders to launch and which to stop; `reason` is for the log."""

    launch: int = 0
    stop: tuple[str, ...] = ()
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class PolicySettings:
    """What the policies need from the settings (seconds, counts).

    warm_miss_prob: the share of jobs arriving during a boot that may find
    no warm slot (see `warm_slots`). Billing: an encoder is billed from
    launch to stop in increments of `billing_increment_s`, at least
    `billing_minimum_s` (EC2 today: per second, 60 s minimum).
    """

    policy: str = "original"
    min_encoders: int = 0
    max_encoders: int = 3
    slots_per_encoder: int = 1
    job_overflow_thresh: int = 2
    boot_time_estimate_s: float = 60.0
    acceptable_wait_s: float = 60.0
    scale_in_idle_s: float = 120.0
    scale_cooldown_s: float = 30.0
    arrival_window_s: float = 900.0
    warm_miss_prob: float = 0.5
    billing_minimum_s: float = 60.0
    billing_increment_s: float = 1.0

    @classmethod
    def from_settings(cls, settings, preset: str | None = None) -> "PolicySettings":
        """Build from a core.settings.Settings (or anything with those attributes).

        `preset` (default: the `scaling_preset` setting, "" for none) overrides the keys its PRESETS entry names. Raises
        ValueError for an unknown policy or preset.
        """
        values = dict(
            policy=settings.scaling_policy,
            min_encoders=settings.min_encoders,
            max_encoders=settings.max_num_ec2_instances,
            slots_per_encoder=settings.max_encoding_jobs_per_ec2_instance,
            job_overflow_thresh=settings.job_overflow_thresh,
            boot_time_estimate_s=settings.boot_time_estimate_s,
            acceptable_wait_s=settings.acceptable_wait_s,
            scale_in_idle_s=settings.scale_in_idle_s,
            scale_cooldown_s=settings.scale_cooldown_s,
            arrival_window_s=settings.scale_arrival_window_s,
            warm_miss_prob=settings.scale_warm_miss_prob,
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


def warm_slots(rate_per_s: float, ps: PolicySettings) -> int:
    """Free slots to keep for jobs expected to arrive while a new encoder boots.

    Only the part of the boot that exceeds the acceptable wait counts: a job
    may wait that long anyway, so an encoder launched when it arrives is soon
    enough for it. Arrivals in that time are taken as Poisson(mean m); with
    w warm slots the jobs that find none number E[(N - w)+] on average. The
    result is the fewest w for which that is at most `warm_miss_prob` of the
    m expected jobs, capped at max_encoders x slots. It ignores slots that
    running jobs free meanwhile, so it errs towards warm.
    """
    exposed_s = max(0.0, ps.boot_time_estimate_s - ps.acceptable_wait_s)
    mean = rate_per_s * exposed_s
    cap = ps.max_encoders * ps.slots_per_encoder
    if mean <= 0 or ps.warm_miss_prob >= 1:
        return 0
    # E[(N - w)+] = m - w + sum_{j<w} P(N <= j), built up one w at a time.
    term = math.exp(-mean)  # P(N = j)
    cdf = term  # P(N <= j)
    cdf_sum = 0.0
    slots = 0
    while slots < cap and (mean - slots + cdf_sum) > ps.warm_miss_prob * mean:
        cdf_sum += cdf
        slots += 1
        term *= mean / slots
        cdf += term
    return slots


def target_encoders(obs: Observation, ps: PolicySettings, now_s: float) -> tuple[int, str]:
    """The fleet size the predictive policy aims at, clamped to [min, max], and why."""
    rate = arrival_rate_per_s(obs.arrivals_s, now_s, ps.arrival_window_s)
    spare = warm_slots(rate, ps)
    needed_slots = obs.queued + obs.in_flight + spare
    wanted = math.ceil(needed_slots / ps.slots_per_encoder)
    target = max(ps.min_encoders, min(ps.max_encoders, wanted))
    return target, (f"queued {obs.queued} in_flight {obs.in_flight} "
                    f"rate {rate * 60:.2f}/min warm {spare} -> target {target}")


def predictive_policy(obs: Observation, ps: PolicySettings, now_s: float) -> Decision:
    """Launch for the backlog plus warm capacity; stop idle encoders beyond that.

    - Booting encoders count as capacity to come, so nothing is launched
      twice for one backlog.
    - Target = ceil((queued + in flight + warm slots) / slots), clamped to
      [min_encoders, max_encoders]; warm slots = the jobs expected, at the
      arrival rate over the last `arrival_window_s` (forgotten quickly
      after a burst, see `arrival_rate_per_s`), during the part of a boot
      that exceeds the acceptable wait (see `warm_slots`).
    - Never launches past max_encoders, whatever the fleet holds (it may
      hold more: encoders the original rule launched).
    - Above the target, stops only encoders idle for at least
      `scale_in_idle_s`, least paid time left first (then longest idle),
      and not within `scale_cooldown_s` of the last launch or stop.
    """
    count = len(obs.encoders)
    target, why = target_encoders(obs, ps, now_s)
    if target > count:
        return Decision(launch=target - count, reason=why)
    surplus = count - target
    if surplus <= 0:
        return Decision(reason=why)
    last_change_s = max([e.launched_at_s for e in obs.encoders]
                        + ([obs.last_scale_in_s] if obs.last_scale_in_s is not None else []))
    if now_s - last_change_s < ps.scale_cooldown_s:
        return Decision(reason=why + " (cooldown)")
    idle = [e for e in obs.encoders
            if e.state == "running" and e.busy_slots == 0 and e.idle_since_s is not None
            and now_s - e.idle_since_s >= ps.scale_in_idle_s]
    idle.sort(key=lambda e: (paid_time_left_s(e.launched_at_s, now_s, ps), e.idle_since_s, e.id))
    stop = tuple(e.id for e in idle[:surplus])
    return Decision(stop=stop, reason=why)
