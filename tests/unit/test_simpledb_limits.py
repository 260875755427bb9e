"""The SimpleDB store against SimpleDB's 256 name-value pairs per item, on
the project's SimpleDB test server (which enforces the limit as AWS does)."""
from __future__ import annotations

import dataclasses

import pytest

from core.aws import client as aws_client
from core.errors import ValidationError
from core.jobs import Job
from core.settings import Settings
from core.stores.simpledb import SimpleDBJobStore
from tests.fixtures.aws import unique_name


@pytest.fixture
def stores(simpledb_server):
    """Two stores on the same domains, as two processes would have."""
    client = aws_client(Settings(backend="aws", aws_endpoint_url=simpledb_server.endpoint_url),
                        "sdb")
    prefix = unique_name("limits")
    yield [SimpleDBJobStore(client, f"{prefix}-jobs", f"{prefix}-nodes") for _ in range(2)]
    client.close()


def _kb_text(kilobytes: int) -> str:
    return "x" * (1024 * kilobytes - 10)


@pytest.mark.parametrize("writer", [0, 1], ids=["same-store", "other-store"])
def test_stale_chunks_of_a_longer_value_do_not_make_a_later_write_fail(stores, writer):
    first = stores[0].create_job(Job(id="job-1", source="s3://a/b", destination="s3://c/d",
                                     options={"note": _kb_text(200)}))
    # 200 option chunks stay stored after this write; with 100 new source
    # chunks the item would hold more than 256 pairs.
    shorter = stores[writer].update_job(dataclasses.replace(first, options={}),
                                        expected_version=1)
    longer_source = dataclasses.replace(shorter, source="s3://a/" + _kb_text(100))

    stored = stores[writer].update_job(longer_source, expected_version=2)

    assert stores[1 - writer].get_job("job-1") == stored
    assert stored.options == {} and len(stored.source) > 100_000


def test_a_job_too_large_even_alone_is_a_validation_error(stores):
    job = stores[0].create_job(Job(id="job-1", source="s3://a/b", destination="s3://c/d",
                                   options={}))
    with pytest.raises(ValidationError, match="too large for SimpleDB"):
        stores[0].update_job(dataclasses.replace(job, options={"n": _kb_text(300)}), 1)
