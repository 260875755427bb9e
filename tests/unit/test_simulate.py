"""The scaling simulator: a tiny trace worked out by hand, traces, the CLI."""
from __future__ import annotations

import dataclasses
import os

import pytest

from feeder import scaler, simulate as sim
from feeder.policy import PRESETS, PolicySettings

# Jobs A and B arrive at 1 s and 2 s and encode for 60 s; job C arrives at
# 200 s and encodes for 10 s. Two encoders at most, one slot each, 10 s boot,
# a decision every 5 s (at 0, 5, 10, ...), billing per second with a 60 s
# minimum.
TINY = [(1.0, 60.0), (2.0, 60.0), (200.0, 10.0)]
WORLD = dict(interval_s=5.0, boot_s=10.0, idle_exit_s=30.0)
BASE = PolicySettings(max_encoders=2, slots_per_encoder=1, job_overflow_thresh=2,
                      boot_time_estimate_s=10, scale_in_idle_s=20, scale_cooldown_s=0,
                      arrival_window_s=600)


def test_original_on_the_tiny_trace():
    # t=5: 2 unfinished, no encoders -> launch min(2 // 1, 2) = 2 (e1, e2).
    # t=15: both booted; A -> e1 (waited 14 s), B -> e2 (13 s); done at 75.
    # Idle from 75, both stop themselves 30 s later, at 105: billed 100 s each.
    # t=200: C arrives; the tick at 200 launches e3; C starts at 210 (waited
    # 10 s), ends at 220; e3 stops itself at 250: 50 s, billed the 60 s minimum.
    result = sim.simulate(TINY, sim.SimConfig(
        policy=dataclasses.replace(BASE, policy="original"), **WORLD))
    assert result.encoder_seconds == 100 + 100 + 60
    assert sorted(result.waits_s) == [10, 13, 14]
    # Nearest rank: p50 is the 2nd of 3 waits, p95 the 3rd.
    assert (result.wait_percentile_s(50), result.wait_percentile_s(95),
            result.wait_percentile_s(100)) == (13, 14, 14)
    assert result.makespan_s == 220 - 1
    assert (result.launched, result.peak_encoders) == (3, 2)


def test_predictive_on_the_tiny_trace():
    # Acceptable wait 10 s = the boot, so no warm slots: only the backlog counts.
    # t=5: 2 queued -> target 2 -> launch e1, e2. Same starts as the original:
    # waits 14 and 13 s, both idle from 75. Idle 20 s at the tick at 95:
    # stopped, 90 s each. C: launched at 200, starts at 210, ends at 220,
    # stopped at 240 after 40 s: billed 60 s.
    ps = dataclasses.replace(BASE, policy="predictive", acceptable_wait_s=10)
    result = sim.simulate(TINY, sim.SimConfig(policy=ps, **WORLD))
    assert result.encoder_seconds == 90 + 90 + 60
    assert sorted(result.waits_s) == [10, 13, 14]
    assert result.makespan_s == 219


def test_predictive_keeping_one_encoder_warm_on_the_tiny_trace():
    # min_encoders 1: the tick at 0 launches e1 (booted at 10). t=5: 2 queued,
    # 1 encoder coming -> launch e2 (booted at 15). A starts on e1 at 10
    # (waited 9 s) and ends at 70; B on e2 at 15 (13 s), ends at 75. Target 1:
    # at 90 e1 has been idle 20 s -> stopped, billed 90 s. e2 stays; C starts
    # on it at once (0 s) and ends at 210. The run then watches for settle =
    # scale-in 20 + cooldown 0 + arrival window 600 + boot 10 + 2 x 5 + 60
    # = 700 s and ends at the tick at 910, billing e2 from 5 to 910: 905 s.
    ps = dataclasses.replace(BASE, policy="predictive", acceptable_wait_s=10, min_encoders=1)
    result = sim.simulate(TINY, sim.SimConfig(policy=ps, **WORLD))
    assert sorted(result.waits_s) == [0, 9, 13]
    assert result.encoder_seconds == 90 + 905
    assert result.makespan_s == 210 - 1


def test_billing_is_per_second_with_a_minimum():
    ps = PolicySettings()
    assert sim.billed_s(30, ps) == 60
    assert sim.billed_s(60.2, ps) == 61
    hourly = dataclasses.replace(ps, billing_minimum_s=3600, billing_increment_s=3600)
    assert sim.billed_s(3601, hourly) == 7200


def test_the_shipped_traces_are_the_generated_ones():
    for kind in sim.TRACE_KINDS:
        assert sim.read_trace(sim.resolve_trace(kind)) == sim.generate_trace(kind), kind


def test_the_burst_trace_is_200_jobs_in_a_minute_after_an_idle_hour():
    arrivals = [arrival for arrival, _ in sim.generate_trace("burst")]
    assert len(arrivals) == 200
    assert 3600 <= min(arrivals) and max(arrivals) < 3660


def test_read_trace_names_the_bad_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,encode_s\n1,10\n2,ten\n")
    with pytest.raises(ValueError, match="line 3"):
        sim.read_trace(path)
    path.write_text("when,how_long\n1,10\n")
    with pytest.raises(ValueError, match="header"):
        sim.read_trace(path)


def test_an_own_trace_round_trips(tmp_path):
    path = tmp_path / "mine.csv"
    sim.write_trace(path, TINY)
    assert sim.read_trace(path) == TINY


def _run(kind: str, policy: str, preset: str = "", seed: int = sim.DEFAULT_SEED,
         max_encoders: int = 10) -> sim.SimResult:
    """One run as docs/scaling.md makes them: 2 slots, 60 s boot, decisions every 5 s."""
    ps = PolicySettings(policy=policy, max_encoders=max_encoders, slots_per_encoder=2,
                        boot_time_estimate_s=60).with_preset(preset)
    return sim.simulate(sim.generate_trace(kind, seed), sim.SimConfig(policy=ps))


@pytest.mark.parametrize("seed", [sim.DEFAULT_SEED, 1, 2])
def test_a_burst_costs_the_predictive_policy_at_most_0_7x_within_the_maximum(seed):
    old = _run("burst", "original", seed=seed)
    for preset in sorted(PRESETS):
        new = _run("burst", "predictive", preset, seed=seed)
        assert new.encoder_seconds <= 0.7 * old.encoder_seconds
        assert new.peak_encoders <= 10


def test_on_the_shipped_burst_the_predictive_p95_wait_is_no_worse():
    old = _run("burst", "original")
    assert old.peak_encoders == 10  # its first decision saw enough jobs to launch all ten
    for preset in sorted(PRESETS):
        new = _run("burst", "predictive", preset)
        assert new.wait_percentile_s(95) <= old.wait_percentile_s(95)


def test_a_burst_is_finished_sooner_by_the_original_only_past_its_maximum():
    # On this burst the original's first decision sees fewer jobs than
    # 10 encoders x 2 slots, launches them, then launches again past max 10.
    old = _run("burst", "original", seed=1)
    assert old.peak_encoders > 10
    capped = _run("burst", "predictive", "latency", seed=1)
    assert capped.wait_percentile_s(95) > old.wait_percentile_s(95)
    # Given as many encoders as the original took, the predictive policy
    # waits no longer and still costs less.
    same = _run("burst", "predictive", "latency", seed=1, max_encoders=old.peak_encoders)
    assert same.wait_percentile_s(95) <= old.wait_percentile_s(95)
    assert same.encoder_seconds <= 0.7 * old.encoder_seconds


@pytest.mark.parametrize("kind", ["steady", "diurnal"])
def test_on_the_shipped_traces_each_preset_meets_its_target(kind):
    old = _run(kind, "original")
    fast, cheap = _run(kind, "predictive", "latency"), _run(kind, "predictive", "cost")
    assert fast.encoder_seconds <= 1.15 * old.encoder_seconds
    assert fast.wait_percentile_s(95) <= 0.5 * old.wait_percentile_s(95)
    assert cheap.encoder_seconds <= 0.95 * old.encoder_seconds
    assert cheap.wait_percentile_s(95) <= 1.1 * old.wait_percentile_s(95)


@pytest.fixture
def no_nommer_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("NOMMER_"):
            monkeypatch.delenv(name)


def test_the_cli_prints_both_policies_side_by_side(no_nommer_env, capsys):
    assert scaler.main(["simulate", "burst", "--max", "10", "--slots", "2",
                        "--preset", "latency", "--preset", "cost"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.split()[:1] == ["original"])
    assert header.split() == ["original", "predictive/latency", "vs", "original",
                              "predictive/cost", "vs", "original"]
    billed = next(line for line in out.splitlines() if line.startswith("encoder-seconds"))
    assert billed.split()[-1].endswith("x")
    for row in ("wait p50 (s)", "wait p95 (s)", "wait max (s)", "makespan (s)"):
        assert row in out
    assert "max 10 encoders x 2 slots" in out


def test_the_cli_says_what_is_wrong_with_a_missing_trace(no_nommer_env, tmp_path, capsys):
    assert scaler.main(["simulate", str(tmp_path / "none.csv")]) == 2
    assert "no trace" in capsys.readouterr().err
