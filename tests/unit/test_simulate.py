"""The scaling simulator: a tiny trace worked out by hand, traces, the CLI."""
from __future__ import annotations

import dataclasses
import json
import os

import pytest

from feeder import scaler, simulate as sim, tracegen
from feeder.policy import PolicySettings

# Jobs A and B arrive at 1 s and 2 s and encode for 60 s; job C arrives at
# 200 s and encodes for 10 s. Two encoders at most, one slot each, a 10 s
# boot every time, a decision every 5 s (at 0, 5, 10, ...), billing per
# second with a 60 s minimum.
TINY = [(1.0, 60.0), (2.0, 60.0), (200.0, 10.0)]
WORLD = dict(interval_s=5.0, boot_min_s=10.0, boot_max_s=10.0, idle_exit_s=30.0)
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
    # drained, 90 s each. C: launched at 200, starts at 210, ends at 220,
    # idle 20 s at 240 but paid until 260: drained at 255 (5 s of paid time
    # left), billed the 60 s minimum.
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
    for kind in tracegen.TRACE_KINDS:
        assert tracegen.read_trace(tracegen.resolve_trace(kind)) == \
            tracegen.generate_trace(kind), kind


def test_the_burst_trace_is_200_jobs_in_a_minute_after_an_idle_hour():
    arrivals = [arrival for arrival, _ in tracegen.generate_trace("burst")]
    assert len(arrivals) == 200
    assert 3600 <= min(arrivals) and max(arrivals) < 3660


def test_read_trace_names_the_bad_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,encode_s\n1,10\n2,ten\n")
    with pytest.raises(ValueError, match="line 3"):
        tracegen.read_trace(path)
    path.write_text("when,how_long\n1,10\n")
    with pytest.raises(ValueError, match="header"):
        tracegen.read_trace(path)


def test_an_own_trace_round_trips(tmp_path):
    path = tmp_path / "mine.csv"
    tracegen.write_trace(path, TINY)
    assert tracegen.read_trace(path) == TINY


# --- the world ------------------------------------------------------------------

def test_the_original_decides_every_minute_as_in_2011():
    # One job at 1 s: the original first sees it at the tick at 60 s, its
    # encoder boots for 10 s: it waits 69 s. The predictive policy, deciding
    # every 5 s, launches at 5 s: 14 s.
    one = [(1.0, 30.0)]
    world = dict(WORLD, interval_s=None)
    old = sim.simulate(one, sim.SimConfig(policy=dataclasses.replace(BASE, policy="original"),
                                          **world))
    new = sim.simulate(one, sim.SimConfig(
        policy=dataclasses.replace(BASE, policy="predictive", acceptable_wait_s=10), **world))
    assert (old.waits_s, new.waits_s) == ([69.0], [14.0])


def test_boot_times_are_drawn_from_the_range_and_the_policy_measures_them():
    # One job every 10 minutes: each finds no encoder, so each waits for a
    # boot (plus up to a 5 s tick).
    jobs = [(600.0 * i + 1, 10.0) for i in range(30)]
    ps = dataclasses.replace(BASE, policy="predictive", acceptable_wait_s=600,
                             scale_in_idle_s=1, scale_in_boots=0)
    result = sim.simulate(jobs, sim.SimConfig(policy=ps, interval_s=5.0, boot_min_s=40,
                                              boot_max_s=120, seed=3))
    assert result.launched == 30
    assert all(40 <= wait <= 125 for wait in result.waits_s)
    assert max(result.waits_s) - min(result.waits_s) > 40  # drawn, not fixed


def test_random_pickup_lets_the_originals_surplus_encoders_idle_out():
    # Under round-robin pickup every encoder gets work often enough never to
    # idle for 10 minutes; under random pickup some do, and stop.
    jobs = tracegen.generate_trace("steady")
    ps = PolicySettings(policy="original", max_encoders=10, slots_per_encoder=2)
    cost = {pickup: sim.simulate(jobs, sim.SimConfig(policy=ps, pickup=pickup)).encoder_seconds
            for pickup in sim.PICKUPS}
    assert cost["random"] < 0.95 * cost["round-robin"]
    with pytest.raises(ValueError, match="pickup"):
        sim.simulate(jobs, sim.SimConfig(policy=ps, pickup="fastest"))


def test_failed_launches_are_billed_and_replaced():
    ps = dataclasses.replace(BASE, policy="predictive", acceptable_wait_s=10)
    result = sim.simulate(TINY * 1, sim.SimConfig(policy=ps, launch_failure_prob=0.5,
                                                  seed=1, **WORLD))
    assert result.failed_launches > 0
    assert result.launched >= 3 + result.failed_launches - 1
    assert len(result.waits_s) == 3  # every job still ran


def test_an_interrupted_encoders_jobs_start_again():
    jobs = [(1.0, 3000.0), (2.0, 3000.0)]
    ps = dataclasses.replace(BASE, policy="predictive", acceptable_wait_s=10)
    result = sim.simulate(jobs, sim.SimConfig(policy=ps, interruptions_per_hour=2.0,
                                              seed=5, **WORLD))
    assert result.interruptions > 0 and result.restarts > 0
    assert len(result.waits_s) == 2
    # A restarted job's wait runs to the start of the run that finished it.
    assert max(result.waits_s) > 20


def test_a_draining_encoder_finishes_its_job_before_it_stops(monkeypatch):
    # A policy that drains every running encoder at every tick, busy or not:
    # the jobs still run to the end, once, and the encoder stops when they end.
    from feeder.policy import Decision, decide

    def drain_everything(obs, ps, now_s):
        decision = decide(obs, ps, now_s)
        busy = tuple(e.id for e in obs.encoders if e.state == "running" and not e.draining)
        return dataclasses.replace(decision, stop=busy) if busy else decision

    monkeypatch.setattr(sim, "decide", drain_everything)
    ps = dataclasses.replace(BASE, policy="predictive", acceptable_wait_s=10)
    result = sim.simulate([(1.0, 60.0)], sim.SimConfig(policy=ps, **WORLD))
    assert result.restarts == 0 and result.waits_s == [14.0]
    # e1 launched at 5, booted at 15, drained at once but busy until 75.
    assert result.encoder_seconds == 70
    assert Decision  # the policy's type is what the simulator applies


# --- the trace families -----------------------------------------------------------

@pytest.mark.parametrize("family", sorted(tracegen.FAMILIES))
def test_each_family_draws_its_own_reproducible_traces(family):
    one, again, other = (tracegen.family_trace(family, 1), tracegen.family_trace(family, 1),
                         tracegen.family_trace(family, 2))
    assert one and one == again and one != other
    assert [a for a, _ in one] == sorted(a for a, _ in one)
    assert all(encode_s > 0 for _, encode_s in one)


def test_the_families_have_their_shapes():
    low = tracegen.family_trace("poisson-low", 7)
    high = tracegen.family_trace("poisson-high", 7)
    assert 20 < len(low) < 80  # about 48 in 8 h
    assert 600 < len(high) < 840  # about 720 in 3 h
    heavy = sorted(e for _, e in tracegen.family_trace("heavy-tail", 7))
    light = sorted(e for _, e in tracegen.family_trace("poisson-mid", 7))
    assert heavy[-1] > 5 * heavy[len(heavy) // 2]
    assert heavy[-1] / heavy[len(heavy) // 2] > light[-1] / light[len(light) // 2]
    gaps = [b - a for (a, _), (b, _) in zip(tracegen.family_trace("batches", 7),
                                            tracegen.family_trace("batches", 7)[1:])]
    assert sum(gap > 240 for gap in gaps) >= 15  # idle gaps between batches
    with pytest.raises(ValueError, match="unknown trace family"):
        tracegen.family_trace("tsunami", 1)


# --- the commands ---------------------------------------------------------------------

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
    for row in ("wait p50 (s)", "wait p95 (s)", "wait max (s)", "makespan (s)",
                "jobs restarted"):
        assert row in out
    assert "max 10 encoders x 2 slots, boot 40-120 s, random pickup" in out
    assert "60 s (original)" in out


def test_the_cli_prints_json_for_each_trace_and_policy(no_nommer_env, tmp_path, capsys):
    mine = tmp_path / "mine.csv"
    tracegen.write_trace(mine, TINY)
    assert scaler.main(["simulate", "--trace", str(mine), "--trace", "burst", "--json",
                        "--boot-s", "30-60", "--max", "4", "--slots", "1",
                        "--preset", "cost", "--preset", "none", "--pickup", "oldest"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert [(r["trace"], r["policy"], r["preset"]) for r in runs] == [
        (trace, policy, preset) for trace in ("mine.csv", "burst.csv")
        for policy, preset in (("original", ""), ("predictive", "cost"), ("predictive", ""))]
    for run in runs:
        assert run["launches"] >= 1 and run["encoder_seconds"] >= 60
        assert 0 <= run["wait_p50_s"] <= run["wait_p95_s"]
    assert scaler.main(["simulate", "--trace", str(mine), "--json",
                        "--policy", "original"]) == 0
    assert [r["policy"] for r in json.loads(capsys.readouterr().out)] == ["original"]


def test_the_cli_says_what_is_wrong_with_a_missing_trace(no_nommer_env, tmp_path, capsys):
    assert scaler.main(["simulate", str(tmp_path / "none.csv")]) == 2
    assert "no trace" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        scaler.main(["simulate", "--boot-s", "120-40"])


def test_the_suite_prints_distributions_and_targets(no_nommer_env, capsys):
    assert scaler.main(["suite", "--family", "burst", "--family", "poisson-low",
                        "--seeds", "2", "--first-seed", "1"]) == 0
    out = capsys.readouterr().out
    for family in ("burst", "poisson-low"):
        for variant in ("default", "latency", "cost"):
            line = next(line for line in out.splitlines()
                        if line.split()[:2] == [family, variant])
            assert line.count("[") == 3  # median [p10 - p90] of three ratios
    for variant in ("default", "latency", "cost"):
        assert any(line.startswith(f"{variant}: ") and "of 4 traces" in line
                   for line in out.splitlines())


def test_the_suite_as_json_gives_every_run_and_the_targets(no_nommer_env, capsys):
    assert scaler.main(["suite", "--family", "burst", "--seeds", "1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    run = summary["runs"][0]
    assert (run["family"], run["seed"]) == ("burst", 1000)
    assert {v: (r["policy"], r["preset"]) for v, r in run["results"].items()} == {
        "original": ("original", ""), "default": ("predictive", ""),
        "latency": ("predictive", "latency"), "cost": ("predictive", "cost")}
    for variant in ("default", "latency", "cost"):
        check = summary["targets"][variant]
        assert check["traces"] == 1 and 0 <= check["share_met"] <= 1
        assert set(summary["families"]["burst"][variant]) == {
            "encoder_seconds", "wait_p95", "launches"}


def test_the_targets_are_the_stated_ones():
    from feeder.suite import TARGETS, percentile

    def result(es, p95):
        return sim.SimResult("x", es, [p95] * 20, 0, 1, 1)
    old = result(1000, 100)
    assert TARGETS["default"].meets("default", result(1050, 125), old)
    assert not TARGETS["default"].meets("default", result(1051, 100), old)
    assert not TARGETS["default"].meets("default", result(900, 126), old)
    assert TARGETS["latency"].meets("latency", result(1250, 50), old)
    assert TARGETS["latency"].meets("latency", result(1250, 15), result(1000, 10))
    assert not TARGETS["latency"].meets("latency", result(1251, 0), old)
    assert TARGETS["cost"].meets("cost", result(800, 135), old)
    assert not TARGETS["cost"].meets("cost", result(801, 0), old)
    values = [float(v) for v in range(1, 12)]  # 1 .. 11
    assert (percentile(values, 10), percentile(values, 90)) == (2.0, 10.0)
