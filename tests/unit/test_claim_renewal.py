"""A claim that took long leaves a short lease: the encoder renews it before
it works, and when even the renewal comes too late (another encoder may
hold the job by then) it leaves the job alone. On the real SQLite store."""
from __future__ import annotations

import logging

import pytest

from core.app.local_system import wait_for
from core.backends import open_backends
from core.jobs import utcnow
from core.settings import Settings
from nommerd.worker import HeldJob, ready_to_work

LEASE_S = 30.0


@pytest.fixture
def backends(tmp_path):
    opened = open_backends(Settings(data_dir=str(tmp_path)))
    yield opened
    opened.close()


def stale_claim(backends, lease_s: float = 0.3):
    """A job claimed by encoder-1 whose lease has run out, as after a claim
    botocore retried for longer than the lease."""
    job = backends.jobs.submit("file:///in.mov", "file:///out.mp4", {})
    claimed = backends.jobs.claim(job.id, "encoder-1", lease_s)
    wait_for(lambda: utcnow() > claimed.lease_expires_at, 5, what="the lease to run out")
    return claimed


def test_a_quick_claim_is_worked_on_as_it_is(backends):
    job = backends.jobs.submit("file:///in.mov", "file:///out.mp4", {})
    claimed = backends.jobs.claim(job.id, "encoder-1", LEASE_S)
    held = ready_to_work(HeldJob(backends, claimed, LEASE_S), 1)
    assert held is not None and held.job.version == claimed.version


def test_a_short_lease_no_one_else_took_is_renewed_before_the_work(backends):
    claimed = stale_claim(backends)
    held = ready_to_work(HeldJob(backends, claimed, LEASE_S), 1)
    assert held is not None and held.lease_left_s() > LEASE_S - 5
    assert backends.store.get_job(claimed.id).lease_expires_at > utcnow()


def test_a_claim_whose_lease_another_encoder_took_meanwhile_is_not_worked_on(backends, caplog):
    claimed = stale_claim(backends)
    other = backends.jobs.claim(claimed.id, "encoder-2", LEASE_S)
    assert other is not None
    with caplog.at_level(logging.INFO, logger="nommerd.worker"):
        assert ready_to_work(HeldJob(backends, claimed, LEASE_S), 2) is None
    stored = backends.store.get_job(claimed.id)
    assert stored.node == "encoder-2" and stored.version == other.version
    assert "lease ran out before the claim (delivery 2) could be renewed" in caplog.text
    assert f"job {claimed.id}: claimed" not in caplog.text
