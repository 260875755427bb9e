"""Messages held a long time, on the real boto3 SQS client against moto
behind the fault proxy: SQS's errors for a receipt handle it no longer
takes, and an encoder handing its job to a fresh message before SQS's
12 h in-flight cap."""
from __future__ import annotations

import dataclasses
import json

import pytest

from core.app.local_system import wait_for
from core.aws import client as aws_client
from core.backends import Backends
from core.errors import NotFound
from core.queues.sqs import SQSQueue
from core.settings import Settings
from core.stores.sqlite import SQLiteJobStore
from nommerd.ffmpeg import FFmpegRunner
from nommerd.worker import Control, HeldJob, Watchdog
from tests.fixtures.aws import unique_name
from tests.fixtures.fault_proxy import RECEIPT_EXPIRED, RECEIPT_NOT_AVAILABLE, FaultProxy

RECEIPT_MAX_AGE_S = 1.0


@pytest.fixture
def sqs_proxy(moto_server):
    with FaultProxy(moto_server.endpoint_url) as proxy:
        client = aws_client(Settings(backend="aws", aws_endpoint_url=proxy.url), "sqs")
        yield proxy, client
        client.close()


@pytest.mark.parametrize("reason", [RECEIPT_EXPIRED, RECEIPT_NOT_AVAILABLE])
def test_a_stale_receipt_cannot_extend_and_its_delete_is_ignored(sqs_proxy, reason):
    proxy, client = sqs_proxy
    proxy.receipt_max_age_s, proxy.receipt_reason = RECEIPT_MAX_AGE_S, reason
    queue = SQSQueue(client, unique_name("stale"), visibility_timeout_s=30)
    queue.send("job-1")
    [message] = queue.receive(wait_s=1)
    queue.extend(message.receipt, 30)  # young: fine

    wait_for(lambda: proxy.stale_receipt("DeleteMessage",
                                         b'{"ReceiptHandle": "%s"}' % message.receipt.encode()),
             10, what="the receipt to age out")
    with pytest.raises(NotFound):
        queue.extend(message.receipt, 30)
    queue.delete(message.receipt)  # no error
    assert proxy.faults[("sqs", "stale-receipt")] >= 3


def test_a_long_held_job_is_handed_to_a_fresh_message_and_stays_held(sqs_proxy, tmp_path):
    proxy, client = sqs_proxy
    settings = Settings(data_dir=str(tmp_path), nommerd_heartbeat_interval_s=1, job_lease_s=3,
                        visibility_timeout_s=30)
    prefix = unique_name("handoff")
    backends = Backends(store=SQLiteJobStore(str(tmp_path / "jobs.sqlite3")),
                        new_jobs=SQSQueue(client, f"{prefix}-jobs"),
                        state_changes=SQSQueue(client, f"{prefix}-changes"), settings=settings)
    job = backends.jobs.submit("file:///in.mov", "file:///out.mp4", {})
    [message] = backends.new_jobs.receive(wait_s=1)
    held = HeldJob(backends, backends.jobs.claim(job.id, "encoder-1", 3), 3)
    # SQS's cap, scaled down: the old receipt stops working at 4 s.
    proxy.receipt_max_age_s = 4.0
    watchdog = Watchdog(held, backends, message.receipt, FFmpegRunner(200, {}), Control(),
                        settings, max_in_flight_s=4.0)
    watchdog.start()
    try:
        wait_for(lambda: watchdog.receipt is None, 10, what="the hand-off")
        # The fresh message shows up once the lease would have run out, for
        # an encoder to take over if this one died; this one still holds it.
        fresh = wait_for(lambda: backends.new_jobs.receive(wait_s=1), 15,
                         what="the fresh message")
        assert [m.body for m in fresh] == [job.id] and fresh[0].receive_count == 1
        assert not held.lost and held.heartbeat()
        assert backends.store.get_job(job.id).node == "encoder-1"
    finally:
        watchdog.stop()
    assert not held.lost
    assert proxy.faults[("sqs", "stale-receipt")] == 0, "the old receipt was let go in time"


def test_an_existing_queue_that_dead_letters_too_early_is_refused_naming_the_setting(
        moto_server, tmp_path):
    from core.backends import open_backends
    from core.errors import ConfigError

    sqs = aws_client(Settings(backend="aws", aws_endpoint_url=moto_server.endpoint_url), "sqs")
    name = unique_name("early")
    dead = sqs.create_queue(QueueName=f"{name}_dead")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=dead, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    sqs.create_queue(QueueName=name, Attributes={"RedrivePolicy": json.dumps(
        {"deadLetterTargetArn": arn, "maxReceiveCount": "3"})})
    settings = Settings(backend="aws", aws_endpoint_url=moto_server.endpoint_url,
                        aws_store="dynamodb", max_receives=5, sqs_new_job_queue_name=name,
                        simpledb_job_state_domain=unique_name("early-jobs"),
                        simpledb_ec2_nommer_state_domain=unique_name("early-nodes"))
    with pytest.raises(ConfigError, match="'max_receives'.*after 3 receives"):
        open_backends(settings)
    # Within the limit it opens (max_receives + 1 = 3 receives allowed).
    open_backends(dataclasses.replace(settings, max_receives=2)).close()
    sqs.close()
