"""GET /metrics: the whole system's figures in the Prometheus text format.

Read on each scrape from the shared job store and queue (see core.metrics
for how encoders, the scheduler and the scaler write theirs), so any API
process answers for the whole system, on the local and AWS backends alike.
"""
from __future__ import annotations

from collections import defaultdict

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from core import metrics
from core.backends import Backends
from core.jobs import JobState

PREFIX = "nommer_"
ENCODER_STATES = ("working", "idle", "stopped")


class SystemCollector:
    """A prometheus_client collector reading the store and queue when collected."""

    def __init__(self, backends: Backends):
        self.backends = backends

    def collect(self):
        yield self._jobs_by_state()
        yield from self._queue()
        yield self._encoders()
        stored = [(metrics.parse_key(key), value)
                  for key, value in self.backends.store.read_counters().items()]
        stored = [(parsed, value) for parsed, value in stored if parsed is not None]
        yield from self._counters(stored)
        yield from self._histograms(stored)

    def _jobs_by_state(self):
        family = GaugeMetricFamily(PREFIX + "jobs", "jobs in each state", labels=["state"])
        for state in JobState:
            family.add_metric([state.value], self.backends.store.count_jobs(frozenset({state})))
        return family

    def _queue(self):
        queued, in_flight = self.backends.new_jobs.counts()
        yield GaugeMetricFamily(PREFIX + "queue_depth",
                                "jobs queued for an encoder, not yet received", value=queued)
        yield GaugeMetricFamily(PREFIX + "queue_in_flight",
                                "jobs received by an encoder and not yet done", value=in_flight)

    def _encoders(self):
        counts = dict.fromkeys(ENCODER_STATES, 0)
        for node in self.backends.store.list_nodes():
            counts[node.state] = counts.get(node.state, 0) + 1
        family = GaugeMetricFamily(PREFIX + "encoders", "encoders by the state they last reported",
                                   labels=["state"])
        for state, count in sorted(counts.items()):
            family.add_metric([state], count)
        return family

    def _counters(self, stored):
        for name, meaning in metrics.COUNTERS.items():
            rows = [(labels, value) for (key, labels), value in stored if key == name]
            label_names = sorted({label for labels, _ in rows for label in labels})
            # prometheus_client adds "_total" to a counter's name itself.
            family = CounterMetricFamily(PREFIX + name.removesuffix("_total"), meaning,
                                         labels=label_names)
            if not rows and not label_names:
                family.add_metric([], 0.0)
            for labels, value in sorted(rows, key=lambda row: sorted(row[0].items())):
                family.add_metric([labels.get(n, "") for n in label_names], value)
            yield family

    def _histograms(self, stored):
        for name, (meaning, bounds) in metrics.HISTOGRAMS.items():
            series: dict[str, dict] = defaultdict(lambda: {"buckets": {}, "sum": 0.0})
            for (key, labels), value in stored:
                kind = labels.get("kind", "other")
                if key == f"{name}_bucket":
                    series[kind]["buckets"][labels.get("le", "+Inf")] = value
                elif key == f"{name}_sum":
                    series[kind]["sum"] = value
            family = HistogramMetricFamily(PREFIX + name, meaning, labels=["kind"])
            for kind, data in sorted(series.items()):
                # Only buckets an observation reached were ever written.
                edges = [metrics.bound_text(bound) for bound in bounds] + ["+Inf"]
                buckets = [(edge, data["buckets"].get(edge, 0.0)) for edge in edges]
                family.add_metric([kind], buckets, data["sum"])
            yield family


def render(backends: Backends) -> tuple[bytes, str]:
    """(body, content type) of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SystemCollector(backends))
    return generate_latest(registry), CONTENT_TYPE_LATEST
