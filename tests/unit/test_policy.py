"""The scaling policies, rule by rule. Pure functions: no clock, no backend."""
from __future__ import annotations

import dataclasses
import math

import pytest

from core.settings import Settings
from feeder.policy import (PRESETS, BusyHistory, EncoderView, Observation, PolicySettings,
                           arrival_rate_per_s, decide, erlang_c, erlang_slots,
                           estimate_boot_s, estimate_encode_s, original_policy,
                           paid_time_left_s, predictive_policy, wait_exceeds_prob)

NOW = 10_000.0


def original(**changes) -> PolicySettings:
    base = PolicySettings(policy="original", max_encoders=3, slots_per_encoder=2,
                          job_overflow_thresh=2)
    return dataclasses.replace(base, **changes)


def predictive(**changes) -> PolicySettings:
    # No warm slots unless a test asks: acceptable wait = boot time. An idle
    # encoder is held scale_in_idle_s, not a number of boots.
    base = PolicySettings(policy="predictive", min_encoders=0, max_encoders=3,
                          slots_per_encoder=1, boot_time_estimate_s=60,
                          acceptable_wait_s=60, scale_in_idle_s=30, scale_in_boots=0,
                          scale_cooldown_s=30, arrival_window_s=600, wait_tail_prob=0.05)
    return dataclasses.replace(base, **changes)


def running(encoder_id: str, busy: int = 0, idle_for_s: float | None = None,
            age_s: float = 3600) -> EncoderView:
    idle_since = None if busy or idle_for_s is None else NOW - idle_for_s
    return EncoderView(encoder_id, "running", NOW - age_s, busy, idle_since)


def pending(encoder_id: str, age_s: float = 10) -> EncoderView:
    return EncoderView(encoder_id, "pending", NOW - age_s)


# --- original ---------------------------------------------------------------

def test_original_launches_one_encoder_for_one_job_when_there_are_none():
    assert original_policy(Observation(queued=1, in_flight=0), original(), NOW).launch == 1


def test_original_launches_nothing_at_the_maximum_whatever_the_backlog():
    obs = Observation(queued=500, in_flight=6,
                      encoders=(running("a", 2), running("b", 2), running("c", 2)))
    decision = original_policy(obs, original(), NOW)
    assert (decision.launch, decision.stop) == (0, ())


def test_original_launches_nothing_without_unfinished_jobs():
    assert original_policy(Observation(queued=0, in_flight=0), original(), NOW).launch == 0


def test_original_waits_until_the_backlog_passes_capacity_plus_threshold():
    one = (running("a", 2),)  # capacity 2, threshold 2
    launches = {unfinished: original_policy(
        Observation(queued=unfinished - 2, in_flight=2, encoders=one), original(), NOW).launch
        for unfinished in (3, 4, 5)}
    # 3 < 2 + 2: nothing. 4: shortage 4 - 2 - 2 = 0: nothing. 5: shortage 1 -> max(1, 0).
    assert launches == {3: 0, 4: 0, 5: 1}


def test_original_launches_shortage_divided_by_slots():
    obs = Observation(queued=10, in_flight=2, encoders=(running("a", 2),))
    # shortage = 12 - 2 - 2 = 8 -> 8 // 2 = 4, capped at max 3 per go.
    assert original_policy(obs, original(max_encoders=10), NOW).launch == 4
    assert original_policy(obs, original(max_encoders=3), NOW).launch == 3


def test_original_caps_one_launch_at_the_maximum_not_the_fleet():
    # The original's flaw, kept: two encoders and max 3 can become five.
    obs = Observation(queued=30, in_flight=2,
                      encoders=(running("a", 1), running("b", 1)))
    decision = original_policy(obs, original(slots_per_encoder=1, max_encoders=3), NOW)
    assert decision.launch == 3
    assert len(obs.encoders) + decision.launch > 3


def test_original_counts_booting_encoders_as_instances():
    obs = Observation(queued=3, in_flight=0, encoders=(pending("a"),))
    # capacity 2 + threshold 2 > 3 unfinished
    assert original_policy(obs, original(), NOW).launch == 0


def test_original_compares_the_stores_unfinished_count_when_given():
    obs = Observation(queued=0, in_flight=0, unfinished=1)
    assert original_policy(obs, original(), NOW).launch == 1


def test_original_never_stops_encoders():
    obs = Observation(queued=0, in_flight=0,
                      encoders=(running("a", idle_for_s=5000), running("b", idle_for_s=5000)))
    decision = original_policy(obs, original(), NOW)
    assert decision.stop == () and decision.launch == 0


# --- predictive: launching ----------------------------------------------------

def test_predictive_counts_booting_encoders_as_capacity_to_come():
    obs = Observation(queued=2, in_flight=0, encoders=(pending("a"), pending("b")))
    assert predictive_policy(obs, predictive(), NOW).launch == 0
    more = dataclasses.replace(obs, queued=3)
    assert predictive_policy(more, predictive(), NOW).launch == 1


def test_predictive_never_launches_past_the_maximum():
    obs = Observation(queued=50, in_flight=2, encoders=(running("a", 1), running("b", 1)))
    assert predictive_policy(obs, predictive(max_encoders=3), NOW).launch == 1
    over = dataclasses.replace(obs, encoders=obs.encoders + (pending("c"), pending("d")))
    assert predictive_policy(over, predictive(max_encoders=3), NOW).launch == 0


def test_predictive_launches_the_whole_fleet_for_a_burst():
    arrivals = tuple(NOW - 60 + i * 1.5 for i in range(40))
    obs = Observation(queued=40, in_flight=0, arrivals_s=arrivals)
    decision = predictive_policy(obs, predictive(max_encoders=10, slots_per_encoder=2), NOW)
    assert decision.launch == 10


def test_predictive_keeps_the_minimum_warm():
    ps = predictive(min_encoders=2)
    assert predictive_policy(Observation(queued=0, in_flight=0), ps, NOW).launch == 2
    idle = Observation(queued=0, in_flight=0,
                       encoders=(running("a", idle_for_s=900), running("b", idle_for_s=900),
                                 running("c", idle_for_s=900)))
    assert len(predictive_policy(idle, ps, NOW).stop) == 1


def test_predictive_keeps_warm_slots_for_the_arrival_rate():
    # Nine jobs in the last ten minutes, nothing queued or running, 2-minute
    # encodes (the estimate: nothing measured yet): an offered load of 1.8
    # slots. With no acceptable wait and half of the jobs allowed to queue,
    # Erlang C asks for 3 slots (C(2, 1.8) = 0.85, C(3, 1.8) = 0.35).
    arrivals = tuple(NOW - 600 + 60 * i for i in range(1, 10))
    ps = predictive(acceptable_wait_s=0, wait_tail_prob=0.5, encode_time_estimate_s=120,
                    warm_min_arrivals_per_boot=0)
    assert erlang_c(2, 1.8) > 0.5 >= erlang_c(3, 1.8)
    empty = Observation(queued=0, in_flight=0, arrivals_s=arrivals)
    assert predictive_policy(empty, ps, NOW).launch == 3
    warm = dataclasses.replace(empty, encoders=tuple(running(n, idle_for_s=900) for n in "abc"))
    assert predictive_policy(warm, ps, NOW).stop == ()
    # Without arrivals the same idle encoders are let go.
    quiet = dataclasses.replace(warm, arrivals_s=())
    assert predictive_policy(quiet, ps, NOW).stop == ("a", "b", "c")


def test_predictive_keeps_no_warm_slots_for_fewer_arrivals_than_one_per_boot():
    # 0.9 jobs a minute and a 60 s boot: a warm slot would mostly idle.
    arrivals = tuple(NOW - 600 + 60 * i for i in range(1, 10))
    obs = Observation(queued=0, in_flight=0, arrivals_s=arrivals)
    ps = predictive(acceptable_wait_s=0, warm_min_arrivals_per_boot=1)
    assert predictive_policy(obs, ps, NOW).launch == 0
    faster = dataclasses.replace(obs, arrivals_s=arrivals + (NOW - 1,))  # 1.0 a minute
    assert predictive_policy(faster, ps, NOW).launch > 0


def test_predictive_keeps_no_warm_slots_when_a_job_may_wait_a_boot():
    arrivals = tuple(NOW - 600 + 60 * i for i in range(1, 10))
    obs = Observation(queued=0, in_flight=0, arrivals_s=arrivals)
    assert predictive_policy(obs, predictive(acceptable_wait_s=60), NOW).launch == 0


# --- predictive: scaling in ---------------------------------------------------

def test_predictive_counts_draining_encoders_as_gone():
    draining = dataclasses.replace(running("a", busy=1), draining=True)
    obs = Observation(queued=1, in_flight=1, encoders=(draining,))
    assert predictive_policy(obs, predictive(acceptable_wait_s=0), NOW).launch == 1
    # ... and never past the maximum, which they still count against.
    full = Observation(queued=5, in_flight=1, encoders=(draining, running("b", 1),
                                                        running("c", 1)))
    assert predictive_policy(full, predictive(max_encoders=3), NOW).launch == 0


def test_predictive_holds_an_idle_encoder_for_boots_it_has_measured():
    # Boots of 100 s were seen: with scale_in_boots 1.5 an idle encoder stays 150 s.
    ps = predictive(scale_in_boots=1.5, scale_in_idle_s=10)
    boots = (100.0,) * 5
    held = Observation(queued=0, in_flight=0, encoders=(running("a", idle_for_s=149),),
                       boot_samples_s=boots)
    assert predictive_policy(held, ps, NOW).stop == ()
    gone = dataclasses.replace(held, encoders=(running("a", idle_for_s=150),))
    assert predictive_policy(gone, ps, NOW).stop == ("a",)


def test_predictive_stops_no_encoder_inside_its_minimum_billing():
    young = Observation(queued=0, in_flight=0, encoders=(running("a", idle_for_s=40, age_s=50),))
    assert predictive_policy(young, predictive(), NOW).stop == ()


def test_predictive_stops_only_idle_encoders():
    obs = Observation(queued=0, in_flight=2,
                      encoders=(running("busy1", 1), running("idle", idle_for_s=300),
                                running("busy2", 1)))
    ps = predictive(slots_per_encoder=2)  # target = ceil(2 / 2) = 1: two too many
    assert predictive_policy(obs, ps, NOW).stop == ("idle",)


def test_predictive_waits_for_the_scale_in_idle_time():
    obs = Observation(queued=0, in_flight=0, encoders=(running("a", idle_for_s=29),))
    assert predictive_policy(obs, predictive(scale_in_idle_s=30), NOW).stop == ()
    later = Observation(queued=0, in_flight=0, encoders=(running("a", idle_for_s=30),))
    assert predictive_policy(later, predictive(scale_in_idle_s=30), NOW).stop == ("a",)


def test_predictive_never_stops_a_booting_encoder():
    obs = Observation(queued=0, in_flight=0, encoders=(pending("a", age_s=500),))
    assert predictive_policy(obs, predictive(), NOW).stop == ()


def test_predictive_stops_the_encoder_with_the_least_paid_time_left_first():
    # Per-second billing, 60 s minimum: "young" is paid for 20 s more.
    obs = Observation(queued=0, in_flight=0, encoders=(
        running("young", idle_for_s=35, age_s=40), running("old", idle_for_s=31, age_s=300)))
    ps = predictive(min_encoders=1, scale_cooldown_s=0)
    assert predictive_policy(obs, ps, NOW).stop == ("old",)
    # Billed by the hour: "late" has 100 s of its hour left, "early" 2600 s.
    hourly = dataclasses.replace(ps, billing_minimum_s=3600, billing_increment_s=3600)
    obs = Observation(queued=0, in_flight=0, encoders=(
        running("early", idle_for_s=900, age_s=1000), running("late", idle_for_s=60, age_s=3500)))
    assert predictive_policy(obs, hourly, NOW).stop == ()  # both are paid for a while yet
    obs = Observation(queued=0, in_flight=0, encoders=(
        running("early", idle_for_s=900, age_s=1097), running("late", idle_for_s=60, age_s=3597)))
    assert predictive_policy(obs, hourly, NOW).stop == ("late",)


def test_predictive_stops_the_longest_idle_first_when_paid_time_is_equal():
    obs = Observation(queued=0, in_flight=0, encoders=(
        running("b", idle_for_s=100), running("a", idle_for_s=400), running("c", idle_for_s=200)))
    assert predictive_policy(obs, predictive(min_encoders=2), NOW).stop == ("a",)


def test_predictive_respects_the_cooldown_after_a_launch_or_a_stop():
    ps = predictive(scale_cooldown_s=30)
    just_launched = Observation(queued=0, in_flight=0, encoders=(
        running("a", idle_for_s=600), pending("b", age_s=10)))
    assert predictive_policy(just_launched, ps, NOW).stop == ()
    idle = (running("a", idle_for_s=600),)
    just_stopped = Observation(queued=0, in_flight=0, encoders=idle, last_scale_in_s=NOW - 10)
    assert predictive_policy(just_stopped, ps, NOW).stop == ()
    calm = Observation(queued=0, in_flight=0, encoders=idle, last_scale_in_s=NOW - 31)
    assert predictive_policy(calm, ps, NOW).stop == ("a",)


# --- the parts ----------------------------------------------------------------

def test_arrival_rate_is_the_window_mean():
    arrivals = tuple(NOW - 590 + 10 * i for i in range(60))  # one per 10 s, the last just now
    assert arrival_rate_per_s(arrivals, NOW, 600) == pytest.approx(0.1)
    assert arrival_rate_per_s((), NOW, 600) == 0
    assert arrival_rate_per_s((NOW - 700,), NOW, 600) == 0


def test_arrival_rate_forgets_a_burst_once_it_is_silent():
    burst = tuple(NOW - 300 + i * 0.3 for i in range(200))  # 200 jobs in a minute, 4 min ago
    # The window mean is 1/3 per second; 240 s of silence allow at most 3 / 240.
    assert arrival_rate_per_s(burst, NOW, 600) == pytest.approx(3 / (NOW - burst[-1]))


def _erlang_c_by_sum(c: int, a: float) -> float:
    """Erlang C from its textbook sum, to check the recursion."""
    top = a ** c / math.factorial(c) * c / (c - a)
    return top / (sum(a ** k / math.factorial(k) for k in range(c)) + top)


def test_erlang_c_matches_the_textbook_formula():
    assert erlang_c(1, 0.3) == pytest.approx(0.3)  # M/M/1: P(wait) = utilisation
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    for c, a in ((3, 2.0), (10, 8.0), (25, 20.5), (40, 1.0)):
        assert erlang_c(c, a) == pytest.approx(_erlang_c_by_sum(c, a), rel=1e-9)
    assert erlang_c(4, 4.0) == 1.0 and erlang_c(4, 0.0) == 0.0


def test_erlang_slots_are_the_fewest_that_meet_the_wait_target():
    for rate, service, wait, tail in ((1 / 60, 120, 0, 0.05), (0.5, 30, 10, 0.02),
                                      (1 / 600, 144, 60, 0.05), (2.0, 300, 30, 0.1)):
        c = erlang_slots(rate, service, wait, tail, cap=10_000)
        assert wait_exceeds_prob(c, rate, service, wait) <= tail
        assert c == 1 or wait_exceeds_prob(c - 1, rate, service, wait) > tail
    assert erlang_slots(0.0, 120, 0, 0.05, cap=10) == 0
    assert erlang_slots(100.0, 120, 0, 0.05, cap=10) == 10


def test_the_boot_estimate_is_the_80th_percentile_of_recent_boots():
    ps = predictive(boot_time_estimate_s=60)
    assert estimate_boot_s((), ps) == 60
    assert estimate_boot_s(tuple(float(b) for b in range(41, 51)), ps) == 48
    # Only the last 20 count.
    assert estimate_boot_s((500.0,) * 5 + (50.0,) * 20, ps) == 50


def test_the_encode_estimate_follows_littles_law():
    # One job a minute over the window and 2.5 slots busy on average: 150 s.
    arrivals = tuple(NOW - 600 + 60 * i for i in range(1, 11))
    ps = predictive(arrival_window_s=600, encode_time_estimate_s=120)
    obs = Observation(queued=0, in_flight=0, arrivals_s=arrivals, busy_slots_mean=2.5)
    assert estimate_encode_s(obs, ps, NOW) == pytest.approx(150)
    assert estimate_encode_s(dataclasses.replace(obs, busy_slots_mean=None), ps, NOW) == 120


def test_busy_history_is_a_time_weighted_mean_over_the_window():
    history = BusyHistory()
    history.record(0, 4, window_s=100)
    assert history.mean(0, 100) is None
    history.record(30, 0, window_s=100)
    history.record(100, 2, window_s=100)
    # 4 slots for 30 s, none for 70 s.
    assert history.mean(100, 100) == pytest.approx(1.2)
    history.record(150, 2, window_s=100)
    # Over (50, 150]: none for 50 s, 2 for 50 s.
    assert history.mean(150, 100) == pytest.approx(1.0)


def test_paid_time_left_follows_per_second_billing_with_a_minimum():
    ps = predictive()
    assert paid_time_left_s(NOW - 30, NOW, ps) == pytest.approx(30)
    assert paid_time_left_s(NOW - 90.25, NOW, ps) == pytest.approx(0.75)
    hourly = dataclasses.replace(ps, billing_minimum_s=3600, billing_increment_s=3600)
    assert paid_time_left_s(NOW - 7000, NOW, hourly) == pytest.approx(200)


# --- dispatch and settings ----------------------------------------------------

def test_decide_runs_the_named_policy():
    obs = Observation(queued=0, in_flight=0, encoders=(running("a", idle_for_s=900),))
    assert decide(obs, predictive(), NOW).stop == ("a",)
    assert decide(obs, dataclasses.replace(predictive(), policy="original"), NOW).stop == ()
    with pytest.raises(ValueError, match="unknown scaling policy"):
        decide(obs, dataclasses.replace(predictive(), policy="magic"), NOW)


def test_policy_settings_come_from_the_settings():
    settings = Settings(scaling_policy="predictive", min_encoders=1, max_num_ec2_instances=7,
                        max_encoding_jobs_per_ec2_instance=2, boot_time_estimate_s=90)
    ps = PolicySettings.from_settings(settings)
    assert (ps.policy, ps.min_encoders, ps.max_encoders, ps.slots_per_encoder,
            ps.boot_time_estimate_s) == ("predictive", 1, 7, 2, 90)


def test_a_preset_overrides_the_keys_it_names():
    ps = PolicySettings.from_settings(Settings(scaling_policy="predictive"), preset="latency")
    for key, value in PRESETS["latency"].items():
        assert getattr(ps, key) == value
    with pytest.raises(ValueError, match="unknown scaling preset"):
        PolicySettings.from_settings(Settings(), preset="fastest")
