"""What the DynamoDB job store sets up, beyond the JobStore contract (which
tests/contract/test_store_contract.py runs against it on the moto server)."""
from __future__ import annotations

import dataclasses
import socket
from datetime import datetime, timezone

import pytest

from tests.fixtures.aws import unique_name
from core.aws import client as aws_client
from core.stores.dynamodb import BY_CREATED_INDEX, BY_STATE_INDEX, OUTBOX_INDEX, DynamoDBJobStore
from core.errors import BackendError
from core.jobs import Job
from core.settings import Settings


@pytest.fixture
def dynamodb(moto_server):
    """A client on the moto server; tables a test makes are deleted after it."""
    client = aws_client(Settings(backend="aws", aws_endpoint_url=moto_server.endpoint_url),
                        "dynamodb")
    before = set(client.list_tables()["TableNames"])
    yield client
    for name in set(client.list_tables()["TableNames"]) - before:
        client.delete_table(TableName=name)
    client.close()


def test_missing_tables_are_created_on_demand_with_the_listing_indexes(dynamodb):
    jobs, nodes = unique_name("jobs"), unique_name("nodes")
    DynamoDBJobStore(dynamodb, jobs, nodes)

    table = dynamodb.describe_table(TableName=jobs)["Table"]
    assert table["TableStatus"] == "ACTIVE"
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    indexes = {index["IndexName"]: [key["AttributeName"] for key in index["KeySchema"]]
               for index in table["GlobalSecondaryIndexes"]}
    assert indexes == {BY_STATE_INDEX: ["state", "created_key"],
                       BY_CREATED_INDEX: ["listing", "created_key"],
                       OUTBOX_INDEX: ["outbox", "updated_at"]}
    assert dynamodb.describe_table(TableName=nodes)["Table"]["TableStatus"] == "ACTIVE"


def test_a_second_store_opens_the_existing_tables_and_sees_the_same_jobs(dynamodb):
    jobs, nodes = unique_name("jobs"), unique_name("nodes")
    first = DynamoDBJobStore(dynamodb, jobs, nodes)
    first.create_job(Job(id="job-1", source="s3://a/b", destination="s3://c/d", options={}))

    second = DynamoDBJobStore(dynamodb, jobs, nodes)
    assert second.get_job("job-1") == first.get_job("job-1")


def test_store_from_settings_names_tables_after_the_domain_settings(moto_server, dynamodb):
    jobs, nodes = unique_name("media_nommer"), unique_name("media_nommer_ec2nommer_state")
    settings = Settings(backend="aws", aws_store="dynamodb",
                        aws_endpoint_url=moto_server.endpoint_url,
                        simpledb_job_state_domain=jobs, simpledb_ec2_nommer_state_domain=nodes)
    store = DynamoDBJobStore.from_settings(settings)
    try:
        assert {jobs, nodes} <= set(dynamodb.list_tables()["TableNames"])
        assert store.list_jobs() == ([], None)
    finally:
        store.close()


def test_an_unreachable_dynamodb_is_a_backend_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = Settings(backend="aws", aws_endpoint_url=f"http://127.0.0.1:{port}")
    with pytest.raises(BackendError):
        DynamoDBJobStore(aws_client(settings, "dynamodb", max_attempts=1, connect_timeout_s=2),
                         "jobs-table", "nodes-table")


def test_a_job_over_the_400_kb_item_limit_is_a_validation_error(dynamodb):
    from core.errors import ValidationError

    store = DynamoDBJobStore(dynamodb, unique_name("jobs"), unique_name("nodes"))
    big = Job(id="job-1", source="s3://a/b", destination="s3://c/d",
              options={"note": "x" * (400 * 1024)})
    with pytest.raises(ValidationError, match="too large for DynamoDB"):
        store.create_job(big)
    job = store.create_job(Job(id="job-2", source="s3://a/b", destination="s3://c/d", options={}))
    with pytest.raises(ValidationError, match="too large for DynamoDB"):
        store.update_job(dataclasses.replace(job, state_details="y" * (400 * 1024)), 1)


def test_listing_reads_sharded_and_unsharded_partitions_newest_first(dynamodb):
    jobs = unique_name("jobs")
    store = DynamoDBJobStore(dynamodb, jobs, unique_name("nodes"))
    for n in range(12):
        store.create_job(Job(id=f"job-{n:02d}", source="s3://a/b", destination="s3://c/d",
                             options={}, created_at=datetime(2024, 5, 1, 12, n, tzinfo=timezone.utc)))
    # A job written before the listing key was sharded.
    dynamodb.update_item(TableName=jobs, Key={"id": {"S": "job-05"}},
                         UpdateExpression="SET listing = :l",
                         ExpressionAttributeValues={":l": {"S": "job"}})
    seen, cursor = [], None
    while True:
        page, cursor = store.list_jobs(limit=5, cursor=cursor)
        seen += [job.id for job in page]
        if cursor is None:
            break
    assert seen == [f"job-{n:02d}" for n in reversed(range(12))]
