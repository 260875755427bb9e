"""A discrete-event simulation of the scaler on a job trace, and its report.

The simulator calls `feeder.policy.decide`, the function the live scaler
calls, every scale interval, and models what the policy cannot see:

- an encoder is billed from launch to stop, per second (rounded up) with a
  60 s minimum (`billing_minimum_s`, `billing_increment_s` of the settings);
- it boots for `boot_s` before it takes work, then runs `slots` jobs at once;
- a queued job goes to the free slot that has waited longest (the way
  long-polling receivers share a queue); jobs are taken in arrival order;
- under the original policy an encoder stops itself after `idle_exit_s`
  without work (nommerd_max_inactivity, 600 s in the original); under the
  predictive policy the scaler stops idle encoders, so they do not.

A trace is a CSV file with the header `arrival_s,encode_s`: when each job
arrives (seconds from the start of the trace) and how long its encode takes
on one slot. `generate_trace` makes the three shipped traces.
"""
from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import heapq
import math
import random
import sys
from bisect import bisect_right
from pathlib import Path

from core.errors import NommerError
from feeder.policy import (Decision, EncoderView, Observation, PolicySettings,
                           decide)

TRACE_KINDS = ("steady", "burst", "diurnal")
TRACES_DIR = Path(__file__).resolve().parent / "traces"
DEFAULT_SEED = 2011

# Events at the same instant are handled in this order: a slot freed or an
# encoder booted at t can take a job arriving at t, and the scaler's tick at
# t sees everything that happened at t.
_FINISH, _READY, _ARRIVAL, _IDLE_EXIT, _TICK = range(5)


# --- traces -----------------------------------------------------------------

def _encode_s(rng: random.Random, median_s: float) -> float:
    """Encode time: log-normal around `median_s`, clipped to [10 s, 30 min]."""
    return round(min(1800.0, max(10.0, rng.lognormvariate(math.log(median_s), 0.6))), 1)


def generate_trace(kind: str, seed: int = DEFAULT_SEED) -> list[tuple[float, float]]:
    """One of the shipped traces as (arrival_s, encode_s) pairs, ascending.

    The same `kind` and `seed` always give the same trace.
    - steady: 8 h of Poisson arrivals, one job per 2 min on average, encodes
      around 2 min (a median of 120 s; about 1.2 jobs running on average).
    - burst: an idle hour, then 200 jobs within one minute, encodes around 90 s.
    - diurnal: 24 h whose arrival rate follows the day, from one job per
      30 min at 03:00 to one per minute at 15:00, encodes around 2 min.
    Raises ValueError for an unknown kind.
    """
    rng = random.Random(f"{kind}:{seed}")
    jobs: list[tuple[float, float]] = []
    if kind == "steady":
        t = 0.0
        while True:
            t += rng.expovariate(1 / 120)
            if t >= 8 * 3600:
                break
            jobs.append((round(t, 1), _encode_s(rng, 120)))
    elif kind == "burst":
        arrivals = sorted(3600 + rng.uniform(0, 60) for _ in range(200))
        jobs = [(round(t, 1), _encode_s(rng, 90)) for t in arrivals]
    elif kind == "diurnal":
        # Poisson with a time-varying rate, drawn by thinning a peak-rate process.
        peak_per_s, trough_per_s = 1 / 60, 1 / 1800
        t = 0.0
        while True:
            t += rng.expovariate(peak_per_s)
            if t >= 86400:
                break
            day = (1 - math.cos(2 * math.pi * (t - 3 * 3600) / 86400)) / 2
            rate = trough_per_s + (peak_per_s - trough_per_s) * day
            if rng.random() < rate / peak_per_s:
                jobs.append((round(t, 1), _encode_s(rng, 120)))
    else:
        raise ValueError(f"unknown trace kind {kind!r}; known: {list(TRACE_KINDS)}")
    return jobs


def write_trace(path: str | Path, jobs: list[tuple[float, float]]) -> None:
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


# --- simulation -------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SimConfig:
    """One simulated run: the policy and the world it acts on (seconds).

    idle_exit_s: idle time after which an encoder stops itself under the
    original policy (None: never).
    """

    policy: PolicySettings
    interval_s: float = 5.0
    boot_s: float = 60.0
    idle_exit_s: float | None = 600.0
    label: str = ""


@dataclasses.dataclass
class SimResult:
    """What one run cost and how long jobs waited (seconds)."""

    label: str
    encoder_seconds: float
    waits_s: list[float]
    makespan_s: float
    launched: int
    peak_encoders: int

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
    busy: int = 0
    idle_since_s: float | None = None
    # When each free slot became free: the oldest takes the next job.
    free_since_s: list[float] = dataclasses.field(default_factory=list)


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
        self.jobs = jobs
        self.config = config
        self.ps = config.policy
        self.arrivals = [arrival for arrival, _ in jobs]
        self.events: list = []
        self.seq = 0
        self.queue: collections.deque[int] = collections.deque()
        self.live: dict[str, _Encoder] = {}
        self.waits_s: list[float] = []
        self.encoder_seconds = 0.0
        self.launched = 0
        self.peak = 0
        self.done = 0
        self.arrived = 0
        self.last_finish_s = 0.0
        self.last_scale_in_s: float | None = None
        self.idle_exit_s = config.idle_exit_s if self.ps.policy == "original" else None
        self.now_s = 0.0

    def push(self, at_s: float, kind: int, data=None) -> None:
        self.seq += 1
        heapq.heappush(self.events, (at_s, kind, self.seq, data))

    def dispatch(self, now_s: float) -> None:
        while self.queue:
            ready = [e for e in self.live.values() if e.running and e.free_since_s]
            if not ready:
                return
            encoder = min(ready, key=lambda e: (e.free_since_s[0], e.id))
            encoder.free_since_s.pop(0)
            encoder.busy += 1
            encoder.idle_since_s = None
            index = self.queue.popleft()
            arrival_s, encode_s = self.jobs[index]
            self.waits_s.append(now_s - arrival_s)
            self.push(now_s + encode_s, _FINISH, encoder.id)

    def became_idle(self, encoder: _Encoder, now_s: float) -> None:
        encoder.idle_since_s = now_s
        if self.idle_exit_s is not None:
            self.push(now_s + self.idle_exit_s, _IDLE_EXIT, (encoder.id, now_s))

    def stop(self, encoder_id: str, now_s: float) -> None:
        encoder = self.live.pop(encoder_id)
        self.encoder_seconds += billed_s(now_s - encoder.launched_at_s, self.ps)

    def observe(self) -> Observation:
        queued = len(self.queue)
        in_flight = sum(e.busy for e in self.live.values())
        views = tuple(
            EncoderView(id=e.id, state="running" if e.running else "pending",
                        launched_at_s=e.launched_at_s, busy_slots=e.busy,
                        idle_since_s=e.idle_since_s)
            for e in self.live.values())
        window_start = bisect_right(self.arrivals, self.now_s - self.ps.arrival_window_s,
                                    0, self.arrived)
        return Observation(queued=queued, in_flight=in_flight, encoders=views,
                           arrivals_s=tuple(self.arrivals[window_start:self.arrived]),
                           last_scale_in_s=self.last_scale_in_s)

    def apply(self, decision: Decision, now_s: float) -> None:
        for encoder_id in decision.stop:
            encoder = self.live.get(encoder_id)
            # A policy may only stop idle encoders; anything else is its bug.
            if encoder is None or encoder.busy:
                raise RuntimeError(f"policy asked to stop {encoder_id!r}, which is busy or gone")
            self.stop(encoder_id, now_s)
        if decision.stop:
            self.last_scale_in_s = now_s
        for _ in range(decision.launch):
            self.launched += 1
            encoder_id = f"e{self.launched}"
            self.live[encoder_id] = _Encoder(id=encoder_id, launched_at_s=now_s)
            self.push(now_s + self.config.boot_s, _READY, encoder_id)
        self.peak = max(self.peak, len(self.live))

    def settle_s(self) -> float:
        """How long after the last job the fleet is watched before billing what is left.

        Long enough for every stop that can still come: an idle exit, a
        scale-in after its idle time and cooldown, and (predictive) the end
        of the warm slots the arrival window still asks for.
        """
        ps = self.ps
        memory_s = ps.arrival_window_s if ps.policy == "predictive" else 0.0
        return (max(self.idle_exit_s or 0.0, ps.scale_in_idle_s + ps.scale_cooldown_s)
                + memory_s + self.config.boot_s + 2 * self.config.interval_s
                + ps.billing_minimum_s)

    def handle(self, kind: int, data) -> None:
        now_s = self.now_s
        if kind == _ARRIVAL:
            self.arrived += 1
            self.queue.append(data)
        elif kind == _FINISH:
            encoder = self.live[data]
            encoder.busy -= 1
            encoder.free_since_s.append(now_s)
            self.done += 1
            self.last_finish_s = now_s
            if encoder.busy == 0:
                self.became_idle(encoder, now_s)
        elif kind == _READY:
            encoder = self.live.get(data)
            if encoder is None:
                return
            encoder.running = True
            encoder.free_since_s = [now_s] * self.ps.slots_per_encoder
            self.became_idle(encoder, now_s)
        elif kind == _IDLE_EXIT:
            encoder_id, idle_since_s = data
            encoder = self.live.get(encoder_id)
            if encoder is not None and encoder.busy == 0 and encoder.idle_since_s == idle_since_s:
                self.stop(encoder_id, now_s)
        elif kind == _TICK:
            self.apply(decide(self.observe(), self.ps, now_s), now_s)
            if not self.finished(now_s):
                self.push(now_s + self.config.interval_s, _TICK)
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
                         launched=self.launched, peak_encoders=self.peak)


def simulate(jobs: list[tuple[float, float]], config: SimConfig) -> SimResult:
    """Run `config`'s policy on `jobs` ((arrival_s, encode_s), ascending).

    The scaler ticks at 0, interval, 2 x interval, ... The run ends at the
    first tick when every job has finished and the fleet is empty, or when
    it has been watched for `settle` seconds more (long enough for every
    encoder the policy will let go to be stopped, see `_Run.settle_s`);
    encoders still up then (the minimum the policy keeps) are billed up to
    that tick. Makespan: first arrival to
    last finish. Raises ValueError for an unknown policy.
    """
    return _Run(jobs, config).run()


# --- report -----------------------------------------------------------------

def _ratio(new: float, old: float) -> str:
    if old == 0:
        return "-" if new == 0 else "inf"
    return f"{new / old:.2f}x"


def format_report(title: str, results: list[SimResult]) -> str:
    """A side-by-side table: the first result is the baseline of the ratios."""
    rows = [
        ("encoder-seconds billed", lambda r: r.encoder_seconds),
        ("wait p50 (s)", lambda r: r.wait_percentile_s(50)),
        ("wait p95 (s)", lambda r: r.wait_percentile_s(95)),
        ("wait max (s)", lambda r: r.wait_percentile_s(100)),
        ("makespan (s)", lambda r: r.makespan_s),
        ("encoders launched", lambda r: r.launched),
        ("most encoders at once", lambda r: r.peak_encoders),
    ]
    base = results[0]
    header = ["", base.label]
    for result in results[1:]:
        header += [result.label, "vs " + base.label]
    table = [header]
    for name, value in rows:
        line = [name, f"{value(base):.0f}"]
        for result in results[1:]:
            line += [f"{value(result):.0f}", _ratio(value(result), value(base))]
        table.append(line)
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    out = [title]
    for line in table:
        cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:])]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def _settings_for(args):
    from core.settings import load

    return load(args.config)


def _configs(args, settings) -> list[SimConfig]:
    base = PolicySettings.from_settings(settings, preset="")
    overrides = {}
    if args.max is not None:
        overrides["max_encoders"] = args.max
    if args.slots is not None:
        overrides["slots_per_encoder"] = args.slots
    if args.boot_s is not None:
        overrides["boot_time_estimate_s"] = args.boot_s
    base = dataclasses.replace(base, **overrides)
    boot_s = base.boot_time_estimate_s
    interval_s = (settings.feederd_auto_scale_interval if args.interval_s is None
                  else args.interval_s)
    idle_exit_s = settings.nommerd_max_inactivity if args.idle_exit_s is None else args.idle_exit_s
    world = dict(interval_s=interval_s, boot_s=boot_s, idle_exit_s=idle_exit_s)
    configs = [SimConfig(policy=dataclasses.replace(base, policy="original"),
                         label="original", **world)]
    for preset in args.preset or [settings.scaling_preset]:
        preset = "" if preset == "none" else preset
        policy = dataclasses.replace(base, policy="predictive").with_preset(preset)
        label = f"predictive/{preset}" if preset else "predictive"
        configs.append(SimConfig(policy=policy, label=label, **world))
    return configs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nommer-scaler simulate",
        description="Simulate the original and the predictive scaling policy on a job trace "
                    "and print them side by side.")
    parser.add_argument("traces", nargs="*", metavar="TRACE",
                        help="trace CSV (arrival_s,encode_s), or a shipped one: "
                             + ", ".join(TRACE_KINDS) + " (default: all three)")
    parser.add_argument("--config", help="settings file (nomconf.toml); default $NOMMER_CONFIG")
    parser.add_argument("--max", type=int, help="most encoders (default: max_num_ec2_instances)")
    parser.add_argument("--slots", type=int,
                        help="jobs per encoder (default: max_encoding_jobs_per_ec2_instance)")
    parser.add_argument("--boot-s", type=float,
                        help="launch-to-work seconds, simulated and estimated "
                             "(default: boot_time_estimate_s)")
    parser.add_argument("--interval-s", type=float,
                        help="seconds between decisions (default: feederd_auto_scale_interval)")
    parser.add_argument("--idle-exit-s", type=float,
                        help="idle seconds after which an encoder stops itself under the "
                             "original policy (default: nommerd_max_inactivity)")
    parser.add_argument("--preset", action="append", choices=["none", "latency", "cost"],
                        help="predictive preset to add as a column, 'none' for the settings "
                             "as they are; repeat for several (default: the scaling_preset "
                             "setting)")
    parser.add_argument("--write-traces", metavar="DIR",
                        help="write the generated shipped traces to DIR and exit")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help="seed for --write-traces (the shipped traces use the default)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`nommer-scaler simulate`: print one side-by-side table per trace.

    Returns 0, or 2 with a message on stderr for bad settings or a bad trace.
    """
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except (NommerError, ValueError, OSError) as exc:
        print(f"nommer-scaler simulate: {exc}", file=sys.stderr)
        return 2


def _main(args) -> int:
    if args.write_traces:
        out_dir = Path(args.write_traces)
        out_dir.mkdir(parents=True, exist_ok=True)
        for kind in TRACE_KINDS:
            write_trace(out_dir / f"{kind}.csv", generate_trace(kind, args.seed))
            print(f"wrote {out_dir / (kind + '.csv')}")
        return 0
    settings = _settings_for(args)
    configs = _configs(args, settings)
    world = configs[0]
    for name in args.traces or list(TRACE_KINDS):
        path = resolve_trace(name)
        jobs = read_trace(path)
        span_s = jobs[-1][0] - jobs[0][0] if jobs else 0.0
        span = f"{span_s / 3600:.1f} h" if span_s >= 3600 else f"{span_s:.0f} s"
        title = (f"trace {path.name}: {len(jobs)} jobs over {span}; "
                 f"max {world.policy.max_encoders} encoders x "
                 f"{world.policy.slots_per_encoder} slots, "
                 f"boot {world.boot_s:g} s, decisions every {world.interval_s:g} s, "
                 f"original idle exit {world.idle_exit_s:g} s")
        print(format_report(title, [simulate(jobs, config) for config in configs]))
        print()
    return 0
