"""Job traces for the simulator: the CSV format, the shipped traces and the
trace families of `nommer-scaler suite`.

A trace is a CSV file with the header `arrival_s,encode_s`: when each job
arrives (seconds from the start of the trace) and how long its encode takes
on one slot. Every generator is deterministic in (kind or family, seed).
"""
from __future__ import annotations

import csv
import math
import random
from pathlib import Path
from typing import Callable

Trace = list[tuple[float, float]]

TRACE_KINDS = ("steady", "burst", "diurnal")
TRACES_DIR = Path(__file__).resolve().parent / "traces"
DEFAULT_SEED = 2011


def _encode_s(rng: random.Random, median_s: float) -> float:
    """Encode time: log-normal around `median_s`, clipped to [10 s, 30 min]."""
    return round(min(1800.0, max(10.0, rng.lognormvariate(math.log(median_s), 0.6))), 1)


def _heavy_encode_s(rng: random.Random) -> float:
    """Encode time with a heavy tail: Pareto (shape 1.5) from 30 s, capped at 1 h."""
    return round(min(3600.0, 30.0 * rng.paretovariate(1.5)), 1)


def _poisson(rng: random.Random, rate_per_s: Callable[[float], float], peak_per_s: float,
             start_s: float, end_s: float) -> list[float]:
    """Arrival times of a Poisson process with a time-varying rate (thinning)."""
    times, t = [], start_s
    while True:
        t += rng.expovariate(peak_per_s)
        if t >= end_s:
            return times
        if rng.random() < rate_per_s(t) / peak_per_s:
            times.append(round(t, 1))


def _burst(rng: random.Random, at_s: float, jobs: int, spread_s: float) -> list[float]:
    return sorted(round(at_s + rng.uniform(0, spread_s), 1) for _ in range(jobs))


def _diurnal_rate(trough_per_s: float, peak_per_s: float) -> Callable[[float], float]:
    """A rate that follows the day: lowest at 03:00, highest at 15:00."""
    def rate(t: float) -> float:
        day = (1 - math.cos(2 * math.pi * (t - 3 * 3600) / 86400)) / 2
        return trough_per_s + (peak_per_s - trough_per_s) * day
    return rate


def generate_trace(kind: str, seed: int = DEFAULT_SEED) -> Trace:
    """One of the shipped traces as (arrival_s, encode_s) pairs, ascending.

    - steady: 8 h of Poisson arrivals, one job per 2 min on average, encodes
      around 2 min (a median of 120 s; about 1.2 jobs running on average).
    - burst: an idle hour, then 200 jobs within one minute, encodes around 90 s.
    - diurnal: 24 h whose arrival rate follows the day, from one job per
      30 min at 03:00 to one per minute at 15:00, encodes around 2 min.
    Raises ValueError for an unknown kind.
    """
    rng = random.Random(f"{kind}:{seed}")
    if kind == "steady":
        arrivals = _poisson(rng, lambda t: 1 / 120, 1 / 120, 0.0, 8 * 3600)
        return [(t, _encode_s(rng, 120)) for t in arrivals]
    if kind == "burst":
        return [(t, _encode_s(rng, 90)) for t in _burst(rng, 3600, 200, 60)]
    if kind == "diurnal":
        arrivals = _poisson(rng, _diurnal_rate(1 / 1800, 1 / 60), 1 / 60, 0.0, 86400)
        return [(t, _encode_s(rng, 120)) for t in arrivals]
    raise ValueError(f"unknown trace kind {kind!r}; known: {list(TRACE_KINDS)}")


# --- the suite's families -----------------------------------------------------

def _family_poisson(per_min: float, hours: float):
    def make(rng: random.Random) -> Trace:
        rate = per_min / 60
        return [(t, _encode_s(rng, 120)) for t in _poisson(rng, lambda t: rate, rate, 0.0,
                                                           hours * 3600)]
    return make


def _family_burst(rng: random.Random) -> Trace:
    jobs = rng.randint(60, 200)
    return [(t, _encode_s(rng, 90)) for t in _burst(rng, 600, jobs, 60)]


def _family_bursts(rng: random.Random) -> Trace:
    arrivals: list[float] = []
    at_s = 300.0
    for _ in range(rng.randint(3, 5)):
        arrivals += _burst(rng, at_s, rng.randint(15, 60), 60)
        at_s += rng.uniform(900, 2400)
    return [(t, _encode_s(rng, 90)) for t in sorted(arrivals)]


def _family_ramp(rng: random.Random) -> Trace:
    # From nothing to 3 jobs a minute over two hours, then an hour at that rate.
    peak = 3 / 60
    arrivals = _poisson(rng, lambda t: peak * min(1.0, t / 7200), peak, 0.0, 3 * 3600)
    return [(t, _encode_s(rng, 120)) for t in arrivals]


def _family_diurnal(rng: random.Random) -> Trace:
    arrivals = _poisson(rng, _diurnal_rate(1 / 1800, 1 / 60), 1 / 60, 0.0, 86400)
    return [(t, _encode_s(rng, 120)) for t in arrivals]


def _family_heavy(rng: random.Random) -> Trace:
    rate = 1 / 120
    return [(t, _heavy_encode_s(rng)) for t in _poisson(rng, lambda t: rate, rate, 0.0, 6 * 3600)]


def _family_batches(rng: random.Random) -> Trace:
    # Batches of 5-30 jobs, each spread over a minute, about 9 minutes apart.
    arrivals: list[float] = []
    at_s = 0.0
    while at_s < 4 * 3600:
        arrivals += _burst(rng, at_s, rng.randint(5, 30), 60)
        at_s += rng.uniform(360, 720)
    return [(t, _encode_s(rng, 120)) for t in sorted(arrivals)]


FAMILIES: dict[str, Callable[[random.Random], Trace]] = {
    "poisson-low": _family_poisson(0.1, 8),    # one job per 10 min
    "poisson-mid": _family_poisson(1.0, 6),    # one job per minute
    "poisson-high": _family_poisson(4.0, 3),   # four jobs per minute
    "burst": _family_burst,                    # 60-200 jobs in one minute
    "bursts": _family_bursts,                  # 3-5 bursts, 15-40 min apart
    "ramp": _family_ramp,                      # 0 -> 3 jobs/min over 2 h
    "diurnal": _family_diurnal,                # 24 h, 1/30 min at night to 1/min
    "heavy-tail": _family_heavy,               # Pareto encode times
    "batches": _family_batches,                # batches ~9 min apart, idle between
}


def family_trace(family: str, seed: int) -> Trace:
    """Draw `seed` of `family` (see FAMILIES). Raises ValueError for an unknown family."""
    if family not in FAMILIES:
        raise ValueError(f"unknown trace family {family!r}; known: {list(FAMILIES)}")
    return FAMILIES[family](random.Random(f"{family}:{seed}"))


# --- files ----------------------------------------------------------------------

def write_trace(path: str | Path, jobs: Trace) -> None:
    """Write `jobs` as a trace CSV (header arrival_s,encode_s)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["arrival_s", "encode_s"])
        writer.writerows(jobs)


def read_trace(path: str | Path) -> list[tuple[float, float]]:
    """Read a trace CSV, sorted by arrival (equal arrivals in file order).

    Raises ValueError naming the line for a missing header, a value that is
    not a number, a negative arrival or a non-positive encode time.
    """
    jobs = []
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = [cell.strip() for cell in next(reader, [])]
        if header[:2] != ["arrival_s", "encode_s"]:
            raise ValueError(f"{path}: line 1: expected the header 'arrival_s,encode_s'")
        for line_no, row in enumerate(reader, start=2):
            if not row or not "".join(row).strip():
                continue
            try:
                arrival_s, encode_s = float(row[0]), float(row[1])
            except (ValueError, IndexError):
                raise ValueError(
                    f"{path}: line {line_no}: expected two numbers, got {row}") from None
            if arrival_s < 0 or encode_s <= 0 or not math.isfinite(arrival_s + encode_s):
                raise ValueError(
                    f"{path}: line {line_no}: arrival_s must be >= 0 and encode_s > 0")
            jobs.append((arrival_s, encode_s))
    jobs.sort(key=lambda job: job[0])  # stable: equal arrivals keep the file's order
    return jobs


def resolve_trace(name: str) -> Path:
    """A trace path: `name` as given if it exists, else a shipped trace ("burst", "burst.csv")."""
    path = Path(name)
    if path.exists():
        return path
    shipped = TRACES_DIR / (name if name.endswith(".csv") else name + ".csv")
    if shipped.exists():
        return shipped
    raise FileNotFoundError(f"no trace {name!r} (shipped traces: {', '.join(TRACE_KINDS)})")

