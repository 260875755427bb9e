"""`nommer-scaler simulate` and `nommer-scaler suite`: the simulator's commands.

simulate: the policies side by side on given traces (a table, or --json:
one object per trace and policy/preset). suite: every policy over many
draws of every trace family, as distributions of ratios against the
original (feeder.suite).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from core.errors import NommerError
from feeder.policy import PRESETS, PolicySettings
from feeder.simulate import PICKUPS, SimConfig, SimResult, simulate
from feeder.suite import format_summary, run_suite, summarize
from feeder.tracegen import (DEFAULT_SEED, FAMILIES, TRACE_KINDS, family_trace, generate_trace,
                             read_trace, resolve_trace, write_trace)


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
        ("jobs restarted", lambda r: r.restarts),
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


def result_json(trace: str, policy: str, preset: str, result: SimResult) -> dict:
    """One run as the --json object."""
    return {"trace": trace, "policy": policy, "preset": preset,
            "encoder_seconds": result.encoder_seconds,
            "wait_p50_s": result.wait_percentile_s(50),
            "wait_p95_s": result.wait_percentile_s(95),
            "wait_max_s": result.wait_percentile_s(100),
            "makespan_s": result.makespan_s, "launches": result.launched,
            "peak_encoders": result.peak_encoders, "jobs": len(result.waits_s),
            "restarts": result.restarts, "failed_launches": result.failed_launches,
            "interruptions": result.interruptions}


def parse_boot(text: str) -> tuple[float, float]:
    """'60' -> (60, 60); '40-120' -> (40, 120). Raises argparse.ArgumentTypeError."""
    low, _, high = text.partition("-")
    try:
        pair = (float(low), float(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected S or MIN-MAX seconds, got {text!r}") from None
    if not 0 <= pair[0] <= pair[1]:
        raise argparse.ArgumentTypeError(f"expected 0 <= MIN <= MAX, got {text!r}")
    return pair


def _world_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="settings file (nomconf.toml); default $NOMMER_CONFIG")
    parser.add_argument("--max", type=int, help="most encoders (default: max_num_ec2_instances)")
    parser.add_argument("--slots", type=int,
                        help="jobs per encoder (default: max_encoding_jobs_per_ec2_instance)")
    parser.add_argument("--boot-s", type=parse_boot, metavar="S|MIN-MAX",
                        help="boot time, drawn uniformly from MIN-MAX; the policy measures "
                             "it (default: simulate_boot_min_s-simulate_boot_max_s)")
    parser.add_argument("--interval-s", type=float,
                        help="seconds between the predictive policy's decisions (default: "
                             "feederd_auto_scale_interval; the original decides every 60 s)")
    parser.add_argument("--idle-exit-s", type=float,
                        help="idle seconds after which an encoder stops itself under the "
                             "original policy (default: nommerd_max_inactivity)")
    parser.add_argument("--pickup", choices=PICKUPS, default="random",
                        help="which free slot takes a queued job (default: random, as SQS)")
    parser.add_argument("--launch-failure-prob", type=float,
                        help="share of launches that never come up "
                             "(default: simulate_launch_failure_prob)")
    parser.add_argument("--interruptions-per-hour", type=float,
                        help="Spot interruptions per encoder-hour "
                             "(default: simulate_interruptions_per_hour)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def base_config(args, settings) -> SimConfig:
    """The world and the predictive settings from the settings and the options."""
    policy = PolicySettings.from_settings(settings, preset="")
    if args.max is not None:
        policy = dataclasses.replace(policy, max_encoders=args.max)
    if args.slots is not None:
        policy = dataclasses.replace(policy, slots_per_encoder=args.slots)
    boot = args.boot_s or (settings.simulate_boot_min_s, settings.simulate_boot_max_s)
    pick = lambda given, default: default if given is None else given  # noqa: E731
    return SimConfig(
        policy=policy, interval_s=None, boot_min_s=boot[0], boot_max_s=boot[1],
        idle_exit_s=pick(args.idle_exit_s, settings.nommerd_max_inactivity),
        pickup=args.pickup,
        launch_failure_prob=pick(args.launch_failure_prob,
                                 settings.simulate_launch_failure_prob),
        interruptions_per_hour=pick(args.interruptions_per_hour,
                                    settings.simulate_interruptions_per_hour))


def _predictive_interval_s(args, settings) -> float:
    return settings.feederd_auto_scale_interval if args.interval_s is None else args.interval_s


def run_configs(args, settings) -> list[SimConfig]:
    """The columns of `simulate`: the original (if asked) then each preset."""
    base = base_config(args, settings)
    policies = args.policy or ["original", "predictive"]
    configs = []
    if "original" in policies:
        configs.append(dataclasses.replace(
            base, policy=dataclasses.replace(base.policy, policy="original"), label="original"))
    if "predictive" in policies:
        for preset in args.preset or [settings.scaling_preset]:
            preset = "" if preset == "none" else preset
            policy = dataclasses.replace(base.policy, policy="predictive").with_preset(preset)
            configs.append(dataclasses.replace(
                base, policy=policy, interval_s=_predictive_interval_s(args, settings),
                label=f"predictive/{preset}" if preset else "predictive"))
    return configs


def build_simulate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nommer-scaler simulate",
        description="Simulate the original and the predictive scaling policy on job traces "
                    "and print them side by side.")
    parser.add_argument("traces", nargs="*", metavar="TRACE",
                        help="trace CSV (arrival_s,encode_s), or a shipped one: "
                             + ", ".join(TRACE_KINDS))
    parser.add_argument("--trace", action="append", default=[], metavar="FILE",
                        help="a trace CSV; repeat for several (default: the shipped traces)")
    parser.add_argument("--policy", action="append", choices=["original", "predictive"],
                        help="policy to run; repeat for both (default: both)")
    parser.add_argument("--preset", action="append", choices=["none", *sorted(PRESETS)],
                        help="predictive preset to add as a column, 'none' for the settings "
                             "as they are; repeat for several (default: scaling_preset)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the world's chance (boots, pickup, failures)")
    parser.add_argument("--write-traces", metavar="DIR",
                        help="write the shipped traces, generated with --trace-seed, to DIR")
    parser.add_argument("--trace-seed", type=int, default=DEFAULT_SEED,
                        help="seed for --write-traces (the shipped traces use the default)")
    _world_options(parser)
    return parser


def build_suite_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nommer-scaler suite",
        description="Run every policy over many draws of every trace family and print the "
                    "distribution of ratios against the original, and the targets.")
    parser.add_argument("--family", action="append", choices=list(FAMILIES),
                        help="trace family; repeat for several (default: all)")
    parser.add_argument("--seeds", type=int, default=20, help="draws per family (default 20)")
    parser.add_argument("--first-seed", type=int, default=1000,
                        help="first draw (default 1000: the draws the docs report; "
                             "tune on others)")
    parser.add_argument("--write-traces", metavar="DIR",
                        help="write the suite's traces to DIR (FAMILY-SEED.csv) and exit")
    _world_options(parser)
    return parser


def _guarded(command, args, prog: str) -> int:
    """Run `command(args)`; bad settings, a bad trace or a missing file: 2 and a message."""
    try:
        return command(args)
    except (NommerError, ValueError, OSError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2


def simulate_main(argv: list[str] | None = None) -> int:
    """`nommer-scaler simulate`. Returns 0, or 2 with a message for bad input."""
    return _guarded(_simulate, build_simulate_parser().parse_args(argv), "nommer-scaler simulate")


def suite_main(argv: list[str] | None = None) -> int:
    """`nommer-scaler suite`. Returns 0, or 2 with a message for bad input."""
    return _guarded(_suite, build_suite_parser().parse_args(argv), "nommer-scaler suite")


def _load(args):
    from core.settings import load

    return load(args.config)


def _simulate(args) -> int:
    if args.write_traces:
        out_dir = Path(args.write_traces)
        out_dir.mkdir(parents=True, exist_ok=True)
        for kind in TRACE_KINDS:
            write_trace(out_dir / f"{kind}.csv", generate_trace(kind, args.trace_seed))
            print(f"wrote {out_dir / (kind + '.csv')}")
        return 0
    settings = _load(args)
    configs = [dataclasses.replace(c, seed=args.seed) for c in run_configs(args, settings)]
    objects = []
    for name in [*args.traces, *args.trace] or list(TRACE_KINDS):
        path = resolve_trace(name)
        jobs = read_trace(path)
        results = [simulate(jobs, config) for config in configs]
        if args.json:
            objects += [result_json(path.name, c.policy.policy, c.label.partition("/")[2], r)
                        for c, r in zip(configs, results)]
            continue
        world = configs[0]
        span_s = jobs[-1][0] - jobs[0][0] if jobs else 0.0
        span = f"{span_s / 3600:.1f} h" if span_s >= 3600 else f"{span_s:.0f} s"
        print(format_report(
            f"trace {path.name}: {len(jobs)} jobs over {span}; max {world.policy.max_encoders} "
            f"encoders x {world.policy.slots_per_encoder} slots, boot {world.boot_min_s:g}-"
            f"{world.boot_max_s:g} s, {world.pickup} pickup, decisions every "
            + ", ".join(f"{c.decision_interval_s:g} s ({c.label})" for c in configs), results))
        print()
    if args.json:
        print(json.dumps(objects, indent=1))
    return 0


def _suite(args) -> int:
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    families = args.family or list(FAMILIES)
    if args.write_traces:
        out_dir = Path(args.write_traces)
        out_dir.mkdir(parents=True, exist_ok=True)
        for family in families:
            for seed in seeds:
                write_trace(out_dir / f"{family}-{seed}.csv", family_trace(family, seed))
        print(f"wrote {len(families) * len(seeds)} traces to {out_dir}")
        return 0
    if args.interval_s is not None:
        raise ValueError("the suite runs each policy at its own interval; no --interval-s")
    base = base_config(args, _load(args))

    def progress(family: str, seed: int) -> None:
        if not args.json:
            print(f"  {family} {seed}", file=sys.stderr)

    runs = run_suite(base, families, seeds, progress)
    summary = summarize(runs)
    if args.json:
        summary["runs"] = [
            {"family": run.family, "seed": run.seed, "jobs": run.jobs,
             "results": {variant: result_json(
                 f"{run.family}-{run.seed}", "original" if variant == "original" else "predictive",
                 variant if variant in PRESETS else "", result)
                 for variant, result in run.results.items()}}
            for run in runs]
        print(json.dumps(summary, indent=1))
    else:
        print(format_summary(summary))
    return 0
