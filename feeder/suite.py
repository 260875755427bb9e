"""The trace suite: every policy over many draws of every trace family, as
ratios against the original policy, and the targets those ratios are held to.

`run_suite` simulates; `summarize` turns the runs into per-family
distributions (median, 10th and 90th percentile) and checks the targets.
"""
from __future__ import annotations

import dataclasses
import statistics

from feeder.simulate import SimConfig, SimResult, simulate
from feeder.tracegen import FAMILIES, family_trace

# The columns: the original, the predictive policy with its defaults, and each preset.
VARIANTS = ("original", "default", "latency", "cost")


@dataclasses.dataclass(frozen=True)
class Target:
    """A preset's target: the share of traces on which `meets` must hold."""

    share: float
    text: str

    def meets(self, variant: str, new: SimResult, old: SimResult) -> bool:
        es = new.encoder_seconds / old.encoder_seconds if old.encoder_seconds else 1.0
        p95, old_p95 = new.wait_percentile_s(95), old.wait_percentile_s(95)
        if variant == "default":
            return es <= 1.05 and p95 <= 1.1 * old_p95 + 15
        if variant == "latency":
            return es <= 1.25 and p95 <= max(0.5 * old_p95, 15)
        if variant == "cost":
            return es <= 0.8 and p95 <= 1.2 * old_p95 + 15
        raise ValueError(variant)


TARGETS = {
    "default": Target(0.9, "encoder-s <= 1.05x and p95 <= 1.1x + 15 s"),
    "latency": Target(0.8, "p95 <= 0.5x (or <= 15 s) at encoder-s <= 1.25x"),
    "cost": Target(0.8, "encoder-s <= 0.8x at p95 <= 1.2x + 15 s"),
}
# Over the whole suite, the default's total encoder-seconds against the original's.
DEFAULT_TOTAL_TARGET = 0.85
# On no trace may a variant launch more than this many times the original's launches.
LAUNCH_RATIO_CAP = 3.0


@dataclasses.dataclass
class TraceRuns:
    family: str
    seed: int
    jobs: int
    results: dict[str, SimResult]


def run_suite(base: SimConfig, families: list[str], seeds: list[int],
              progress=lambda family, seed: None) -> list[TraceRuns]:
    """Simulate every variant on every (family, seed). `base` gives the world
    and the policy settings; the world's seed follows the trace's seed."""
    runs = []
    for family in families:
        for seed in seeds:
            jobs = family_trace(family, seed)
            results = {}
            for variant in VARIANTS:
                policy = dataclasses.replace(
                    base.policy, policy="original" if variant == "original" else "predictive")
                if variant in ("latency", "cost"):
                    policy = policy.with_preset(variant)
                config = dataclasses.replace(base, policy=policy, seed=seed, label=variant)
                results[variant] = simulate(jobs, config)
            runs.append(TraceRuns(family, seed, len(jobs), results))
            progress(family, seed)
    return runs


def percentile(values: list[float], percent: float) -> float:
    """Linear-interpolated percentile (statistics.quantiles' inclusive method)."""
    if len(values) == 1:
        return values[0]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return values[0] if percent <= 0 else cuts[min(98, max(0, round(percent) - 1))]


def _ratio(new: float, old: float) -> float:
    if old == 0:
        return 1.0 if new == 0 else float("inf")
    return new / old


def ratios(runs: list[TraceRuns], variant: str) -> dict[str, list[float]]:
    """Per-trace ratios against the original: encoder_seconds, wait_p95 (+15 s
    on both sides, so a few seconds against none is not infinite), launches."""
    out: dict[str, list[float]] = {"encoder_seconds": [], "wait_p95": [], "launches": []}
    for run in runs:
        new, old = run.results[variant], run.results["original"]
        out["encoder_seconds"].append(_ratio(new.encoder_seconds, old.encoder_seconds))
        out["wait_p95"].append(_ratio(new.wait_percentile_s(95) + 15,
                                      old.wait_percentile_s(95) + 15))
        out["launches"].append(_ratio(new.launched, old.launched))
    return out


def summarize(runs: list[TraceRuns]) -> dict:
    """Per family and variant: median, p10 and p90 of each ratio; per variant:
    the share of traces meeting its target, total encoder-seconds ratio and
    the worst launch ratio."""
    families = sorted({run.family for run in runs}, key=list(FAMILIES).index)
    table: dict = {"families": {}, "targets": {}}
    for family in families:
        of_family = [run for run in runs if run.family == family]
        table["families"][family] = {}
        for variant in VARIANTS[1:]:
            table["families"][family][variant] = {
                name: {"p10": percentile(sorted(values), 10),
                       "median": statistics.median(values),
                       "p90": percentile(sorted(values), 90)}
                for name, values in ratios(of_family, variant).items()}
    total_old = sum(run.results["original"].encoder_seconds for run in runs)
    for variant in VARIANTS[1:]:
        met = sum(TARGETS[variant].meets(variant, run.results[variant], run.results["original"])
                  for run in runs)
        launch_ratios = ratios(runs, variant)["launches"]
        worst = max(range(len(runs)), key=lambda i: launch_ratios[i])
        total_new = sum(run.results[variant].encoder_seconds for run in runs)
        table["targets"][variant] = {
            "target": TARGETS[variant].text, "share_wanted": TARGETS[variant].share,
            "share_met": met / len(runs), "traces": len(runs),
            "encoder_seconds_total_ratio": total_new / total_old if total_old else 1.0,
            "launch_ratio_max": launch_ratios[worst],
            "launch_ratio_worst_trace": f"{runs[worst].family}:{runs[worst].seed}",
            "met_by_family": {
                family: sum(TARGETS[variant].meets(variant, run.results[variant],
                                                   run.results["original"])
                            for run in runs if run.family == family)
                / sum(1 for run in runs if run.family == family)
                for family in families},
        }
    return table


def format_summary(summary: dict) -> str:
    """The per-family distributions and the target checks as plain text."""
    out = ["ratios against the original: median [p10 - p90] over the seeds of each family",
           "(p95 wait ratio taken as (new + 15 s) / (original + 15 s))", ""]
    header = f"{'family':<13} {'preset':<8} {'encoder-s':>22} {'p95 wait':>22} {'launches':>22}"
    out.append(header)
    for family, variants in summary["families"].items():
        for variant, cols in variants.items():
            cells = [f"{c['median']:.2f} [{c['p10']:.2f} - {c['p90']:.2f}]".rjust(22)
                     for c in (cols["encoder_seconds"], cols["wait_p95"], cols["launches"])]
            out.append(f"{family:<13} {variant:<8} " + " ".join(cells))
    out.append("")
    for variant, check in summary["targets"].items():
        verdict = "met" if check["share_met"] >= check["share_wanted"] else "MISSED"
        out.append(f"{variant}: {check['target']} on {check['share_met']:.0%} of "
                   f"{check['traces']} traces (wanted {check['share_wanted']:.0%}): {verdict}")
        extra = f"  total encoder-s {check['encoder_seconds_total_ratio']:.2f}x"
        if variant == "default":
            ok = check["encoder_seconds_total_ratio"] <= DEFAULT_TOTAL_TARGET
            extra += f" (wanted <= {DEFAULT_TOTAL_TARGET}x: {'met' if ok else 'MISSED'})"
        ok = check["launch_ratio_max"] <= LAUNCH_RATIO_CAP
        extra += (f"; most launches {check['launch_ratio_max']:.2f}x "
                  f"({check['launch_ratio_worst_trace']}; wanted <= {LAUNCH_RATIO_CAP:g}x: "
                  f"{'met' if ok else 'MISSED'})")
        out.append(extra)
        out.append("  met per family: " + ", ".join(
            f"{family} {share:.0%}" for family, share in check["met_by_family"].items()))
    return "\n".join(out)
