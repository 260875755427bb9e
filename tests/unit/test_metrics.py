"""core.metrics: how figures are keyed, labelled and written to the store."""
from __future__ import annotations

import pytest

from core import metrics
from core.errors import BackendError
from core.jobs import Job
from core.stores.sqlite import SQLiteJobStore


def _job(options: dict, sent: dict | None = None) -> Job:
    return Job(id="j1", source="file:///a", destination="file:///b", options=options,
               sent_options=sent)


def test_a_job_is_labelled_by_its_preset_else_its_video_codec():
    passes = {"options": [{"outfile_options": [["c:v", "libvpx-vp9"], ["b:v", "1M"]]}]}
    assert metrics.job_kind(_job(passes, {"preset": "webm-vp9"})) == "webm-vp9"
    assert metrics.job_kind(_job(passes, {"options": []})) == "libvpx-vp9"
    assert metrics.job_kind(_job({"options": [{"outfile_options": [["an", None]]}]})) == "other"


def test_hostile_label_values_cannot_break_the_key_format():
    key = metrics.counter_key("scaler_decisions_total", action='x"} 1\nevil{a="')
    name, labels = metrics.parse_key(key)
    assert name == "scaler_decisions_total"
    assert '"' not in labels["action"] and "\n" not in labels["action"]


def test_an_observation_fills_every_bucket_at_or_above_it():
    increments = metrics.histogram_increments("encode_duration_seconds", 7.0, kind="libx264")
    buckets = sorted(float(metrics.parse_key(k)[1]["le"]) for k in increments
                     if k.startswith("encode_duration_seconds_bucket"))
    assert buckets[0] == 10 and buckets[-1] == float("inf")
    assert increments['encode_duration_seconds_sum{kind="libx264"}'] == 7.0
    assert increments['encode_duration_seconds_count{kind="libx264"}'] == 1.0


def test_a_figure_the_store_cannot_take_is_dropped_not_raised(tmp_path, caplog):
    store = SQLiteJobStore(str(tmp_path / "nommer.sqlite3"))
    store.close()  # every call now fails with BackendError
    with pytest.raises(BackendError):
        store.read_counters()

    metrics.Metrics(store).add("upload_bytes_total", 10)

    assert "was not recorded" in caplog.text
