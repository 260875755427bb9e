"""The system's own figures, kept as counters in the job store.

Encoders, the scheduler and the scaler each add to named counters in the
store they already share (one atomic increment per event); the API reads
them all back on a scrape, so one scrape shows the whole system whatever
the backend, without reaching into each process.

A counter's key is its metric name, with labels in braces:
`notification_attempts_total` or `encode_duration_seconds_bucket{kind="libx264",le="30"}`.
A histogram is stored as cumulative bucket counters plus `_sum` and `_count`.
"""
from __future__ import annotations

import logging
import re

from core.errors import NommerError
from core.interfaces import JobStore
from core.jobs import Job

log = logging.getLogger(__name__)

# name -> help text. Every counter is shown from the first scrape (at 0).
COUNTERS = {
    "download_bytes_total": "bytes of source media encoders downloaded",
    "upload_bytes_total": "bytes of output encoders uploaded",
    "notification_attempts_total": "state-change notifications sent to a notify_url",
    "notification_failures_total": "notifications that failed (each retry counts)",
    "notification_give_ups_total": "notifications given up (not retryable, or out of time)",
    "scaler_decisions_total": "scaler decisions, by action (launch, stop, hold)",
    "scaler_encoders_launched_total": "encoders the scaler started",
    "scaler_encoders_stopped_total": "encoders the scaler stopped",
}
# name -> (help text, upper bounds of the buckets in seconds).
HISTOGRAMS = {
    "dispatch_latency_seconds": (
        "from queued (submit or retry) to claimed by an encoder, by preset or codec",
        (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)),
    "encode_duration_seconds": (
        "time ffmpeg ran for a job, by preset or codec",
        (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 14400)),
}

_LABEL_VALUE = re.compile(r"[^A-Za-z0-9_.:+-]")
_KEY = re.compile(r'^(?P<name>[a-z_]+)(?:\{(?P<labels>.*)\})?$')
_LABEL = re.compile(r'([a-z_]+)="([^"]*)"')


def counter_key(name: str, **labels: str) -> str:
    """The stored key of counter `name` with `labels` (values made safe)."""
    if not labels:
        return name
    inner = ",".join(f'{key}="{_LABEL_VALUE.sub("_", str(value))[:64]}"'
                     for key, value in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def parse_key(key: str) -> tuple[str, dict[str, str]] | None:
    """(name, labels) of a stored key; None for one this module did not write."""
    match = _KEY.match(key)
    if match is None:
        return None
    return match["name"], dict(_LABEL.findall(match["labels"] or ""))


def bound_text(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def histogram_increments(name: str, value_s: float, **labels: str) -> dict[str, float]:
    """The counter increments that record one observation of `value_s` in `name`."""
    _, bounds = HISTOGRAMS[name]
    increments = {counter_key(f"{name}_bucket", le=bound_text(bound), **labels): 1.0
                  for bound in bounds if value_s <= bound}
    increments[counter_key(f"{name}_bucket", le="+Inf", **labels)] = 1.0
    increments[counter_key(f"{name}_count", **labels)] = 1.0
    increments[counter_key(f"{name}_sum", **labels)] = max(0.0, value_s)
    return increments


def job_kind(job: Job) -> str:
    """What a job's figures are labelled with: the catalogue preset it named,
    "outputs" for a job of several outputs (or a ladder), else its first
    pass's video codec, else "other"."""
    if isinstance(job.sent_options, dict) and isinstance(job.sent_options.get("preset"), str):
        return job.sent_options["preset"]
    if isinstance(job.options, dict) and "outputs" in job.options:
        return "outputs"
    for one_pass in (job.options or {}).get("options", [])[:1]:
        for pair in one_pass.get("outfile_options", []):
            if pair and pair[0] in ("c:v", "vcodec", "codec:v") and len(pair) > 1:
                return str(pair[1])
    return "other"


class Metrics:
    """Adds to the store's counters. Best effort: a figure that cannot be
    written is logged and dropped, never failing the work it describes."""

    def __init__(self, store: JobStore):
        self._store = store

    def add(self, name: str, amount: float = 1.0, **labels: str) -> None:
        self._write({counter_key(name, **labels): float(amount)})

    def observe(self, name: str, value_s: float, **labels: str) -> None:
        self._write(histogram_increments(name, value_s, **labels))

    def _write(self, increments: dict[str, float]) -> None:
        try:
            self._store.add_counters(increments)
        except NommerError as exc:
            log.warning("a figure was not recorded (%s): %s", ", ".join(increments)[:200], exc)
