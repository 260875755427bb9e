"""Writes whose answer is lost after the service applied them, on the real
boto3 clients: SimpleDB on the project's SimpleDB test server, DynamoDB and
SQS on moto, behind the fault proxy (tests/fixtures/fault_proxy.py).

botocore resends such a write; the resend fails its condition. Each test
loses the answer of exactly one write and checks that the job service
counts its own applied write as done: a claim is not refused, a heartbeat
does not lose the job, an advance is announced.
"""
from __future__ import annotations

import json

import pytest

from core.aws import client as aws_client
from core.errors import BackendError, ConflictError
from core.jobs import JobState
from core.jobservice import JobService
from core.queues.sqs import SQSQueue
from core.settings import Settings
from core.stores.dynamodb import DynamoDBJobStore
from core.stores.simpledb import SimpleDBJobStore
from tests.fixtures.aws import unique_name
from tests.fixtures.fault_proxy import FaultProxy

# A lost answer by timeout: the proxy holds the answer longer than the
# client waits for it.
READ_TIMEOUT_S = 1.0
HANG_S = 2.0


@pytest.fixture
def proxy(moto_server, simpledb_server):
    with FaultProxy(moto_server.endpoint_url, simpledb_server.endpoint_url,
                    hang_s=HANG_S) as running:
        yield running


def _client(proxy: FaultProxy, service: str):
    return aws_client(Settings(backend="aws", aws_endpoint_url=proxy.url), service,
                      read_timeout_s=READ_TIMEOUT_S)


@pytest.fixture(params=["simpledb", "dynamodb"])
def service(request, proxy):
    """A JobService on one store, with SQS queues, all through the proxy."""
    prefix = unique_name("lost")
    if request.param == "simpledb":
        client = _client(proxy, "sdb")
        store = SimpleDBJobStore(client, f"{prefix}-jobs", f"{prefix}-nodes")
    else:
        client = _client(proxy, "dynamodb")
        store = DynamoDBJobStore(client, f"{prefix}-jobs", f"{prefix}-nodes")
    sqs = _client(proxy, "sqs")
    jobs = JobService(store, SQSQueue(sqs, f"{prefix}-new"), SQSQueue(sqs, f"{prefix}-changes"))
    yield jobs
    client.close()
    sqs.close()


def _changes(jobs: JobService) -> list[tuple[str, int]]:
    found = []
    while True:
        messages = jobs.state_changes.receive(max_messages=10, wait_s=0)
        if not messages:
            return sorted(found, key=lambda change: change[1])
        for message in messages:
            body = json.loads(message.body)
            found.append((body["state"], body["version"]))
            jobs.state_changes.delete(message.receipt)


def _submit(jobs: JobService):
    return jobs.submit("s3://in/a.mov", "s3://out/a.mp4", {"passes": []})


@pytest.mark.parametrize("kind", ["500", "timeout"])
def test_a_claim_whose_answer_was_lost_is_still_ours(service, proxy, kind):
    job = _submit(service)
    proxy.lose_next_answers(kind)

    claimed = service.claim(job.id, "encoder-1", lease_s=60)

    assert claimed is not None, "our own applied claim must not read as lost"
    assert (claimed.state, claimed.attempts, claimed.version) == (JobState.DOWNLOADING, 1, 2)
    assert service.store.get_job(job.id) == claimed
    assert ("DOWNLOADING", 2) in _changes(service)
    assert proxy.faults


@pytest.mark.parametrize("kind", ["500", "timeout"])
def test_a_heartbeat_whose_answer_was_lost_keeps_the_job(service, proxy, kind):
    job = service.claim(_submit(service).id, "encoder-1", lease_s=60)
    proxy.lose_next_answers(kind)

    beat = service.heartbeat(job, lease_s=60, progress=40)  # no ConflictError
    again = service.heartbeat(beat, lease_s=60, progress=50)

    assert (again.version, again.progress) == (job.version + 2, 50)
    assert service.store.get_job(job.id) == again


def test_an_advance_whose_answer_was_lost_is_announced(service, proxy):
    job = service.claim(_submit(service).id, "encoder-1", lease_s=60)
    _changes(service)
    proxy.lose_next_answers("500")

    encoding = service.advance(job, JobState.ENCODING)

    assert encoding.state is JobState.ENCODING
    assert _changes(service) == [("ENCODING", job.version + 1)]


def test_a_create_whose_answer_was_lost_is_accepted(service, proxy):
    proxy.lose_next_answers("timeout")
    job = _submit(service)
    assert service.store.get_job(job.id).version == 1


def test_another_writers_change_is_still_a_conflict(service, proxy):
    job = service.claim(_submit(service).id, "encoder-1", lease_s=60)
    service.heartbeat(job, lease_s=60)
    proxy.lose_next_answers("500")  # lost answers change nothing here
    with pytest.raises(ConflictError):
        service.heartbeat(job, lease_s=60)


def test_a_write_whose_every_answer_is_lost_counts_once_it_is_seen_stored(service, proxy):
    job = service.claim(_submit(service).id, "encoder-1", lease_s=60)
    proxy.lose_next_answers(*["500"] * 20)  # more than botocore's attempts
    try:
        beat = service.heartbeat(job, lease_s=60, progress=10)
    finally:
        proxy.lose_next_answers()
    assert service.store.get_job(job.id) == beat


def test_a_write_that_never_reached_the_store_is_a_backend_error(service, proxy):
    job = service.claim(_submit(service).id, "encoder-1", lease_s=60)
    proxy.fault_share, proxy.throttle_share = 1.0, 0.0
    try:
        with pytest.raises(BackendError):
            service.heartbeat(job, lease_s=60)
    finally:
        proxy.fault_share = 0.0
    assert service.store.get_job(job.id) == job


def test_the_api_path_gives_up_after_a_short_retry_budget(proxy):
    from core.backends import open_backends

    prefix = unique_name("budget")
    settings = Settings(backend="aws", aws_store="dynamodb", aws_endpoint_url=proxy.url,
                        sqs_new_job_queue_name=f"{prefix}-jobs",
                        sqs_job_state_change_queue_name=f"{prefix}-changes",
                        simpledb_job_state_domain=f"{prefix}-jobs",
                        simpledb_ec2_nommer_state_domain=f"{prefix}-nodes")
    backends = open_backends(settings, interactive=True)
    proxy.fault_share, proxy.throttle_share = 1.0, 0.0
    before = proxy.requests["dynamodb"]
    try:
        with pytest.raises(BackendError):
            backends.store.get_job("job-1")
    finally:
        proxy.fault_share = 0.0
        backends.close()
    # (botocore may add one attempt for DynamoDB: "reached max retries: 3")
    assert proxy.requests["dynamodb"] - before <= 4, "a few attempts, not eight or more"
