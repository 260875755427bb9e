"""The live scaler's side of draining and of boot measurement: which
encoders it may terminate, and what it tells the policy."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from core.interfaces import Encoder, Node
from feeder.scaler import FleetMemory, drained, encoder_view

LAUNCHED = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
T0 = LAUNCHED.timestamp()


def report(state: str, at_s: float, started_s: float = 40, draining: bool = True) -> Node:
    return Node(id="i-1", state=state, active_jobs=1 if state == "working" else 0,
                last_report=LAUNCHED + timedelta(seconds=at_s),
                started_at=LAUNCHED + timedelta(seconds=started_s), draining=draining)


def test_a_draining_encoder_is_terminated_only_once_it_has_stopped_or_gone_silent():
    encoder = Encoder("i-1", "running", LAUNCHED)
    now = T0 + 100
    assert not drained(encoder, report("working", 95), 30, now)  # still finishing a job
    assert not drained(encoder, report("idle", 95), 30, now)  # has not seen the mark yet
    assert drained(encoder, report("stopped", 99), 30, now)  # confirmed
    assert drained(encoder, report("working", 60), 30, now)  # silent for 40 s
    assert drained(encoder, None, 30, now)  # never reported
    # A report of an earlier run in the same slot is not this encoder's.
    assert drained(encoder, report("working", 99, started_s=-600), 30, now)


def test_the_policy_sees_the_mark_and_the_measured_boot():
    memory = FleetMemory()
    encoder = Encoder("i-1", "running", LAUNCHED)
    view = encoder_view(encoder, report("idle", 45, draining=False), memory, 60, T0 + 50)
    assert (view.state, view.draining) == ("running", False)
    assert memory.boot_samples_s == [40.0]
    # Marked (by this scaler, or by another before a restart): draining.
    view = encoder_view(encoder, report("idle", 55), memory, 60, T0 + 60)
    assert view.draining
    assert memory.boot_samples_s == [40.0]  # one sample per encoder
    memory.draining.add("i-2")
    other = encoder_view(Encoder("i-2", "pending", LAUNCHED), None, memory, 60, T0 + 10)
    assert other.draining and other.state == "pending"
