"""A job store whose SimpleDB domain or DynamoDB table was deleted under it
fails as a backend (retryable, logged), never as a missing job: the API
would answer 404 and an encoder drop the job's message."""
from __future__ import annotations

import pytest

from core.aws import client as aws_client
from core.errors import BackendError
from core.jobs import Job
from core.settings import Settings
from core.stores.dynamodb import DynamoDBJobStore
from core.stores.simpledb import SimpleDBJobStore
from tests.fixtures.aws import unique_name


def _simpledb(simpledb_server, moto_server):
    client = aws_client(Settings(backend="aws", aws_endpoint_url=simpledb_server.endpoint_url),
                        "sdb")
    jobs = unique_name("gone")
    store = SimpleDBJobStore(client, jobs, unique_name("gone-nodes"))
    return client, store, lambda: client.delete_domain(DomainName=jobs)


def _dynamodb(simpledb_server, moto_server):
    client = aws_client(Settings(backend="aws", aws_endpoint_url=moto_server.endpoint_url),
                        "dynamodb")
    jobs = unique_name("gone")
    store = DynamoDBJobStore(client, jobs, unique_name("gone-nodes"))
    return client, store, lambda: client.delete_table(TableName=jobs)


@pytest.mark.parametrize("make", [_simpledb, _dynamodb], ids=["simpledb", "dynamodb"])
def test_a_deleted_domain_or_table_is_a_backend_error_not_a_missing_job(
        make, simpledb_server, moto_server):
    client, store, delete = make(simpledb_server, moto_server)
    job = store.create_job(Job(id="job-1", source="s3://a/b", destination="s3://c/d", options={}))
    delete()
    try:
        for call in (lambda: store.get_job("job-1"), lambda: store.update_job(job, 1),
                     lambda: store.list_jobs()):
            with pytest.raises(BackendError):
                call()
    finally:
        client.close()
