"""What the AWS job stores share about their boto3 client: made from the
settings (and then closed with the store), or passed in by the caller (and
then the caller's to close)."""
from __future__ import annotations

from core.aws import BACKGROUND, RetryBudget, client as aws_client
from core.interfaces import JobStore
from core.settings import Settings


class AWSJobStore(JobStore):
    """A JobStore over one boto3 client of `SERVICE`, keeping jobs and nodes
    apart under two names (SimpleDB domains, DynamoDB tables)."""

    SERVICE = ""

    def __init__(self, client):
        self._client = client
        self._owns_client = False

    @classmethod
    def from_settings(cls, settings: Settings, budget: RetryBudget = BACKGROUND):
        """The store under the names the settings give (simpledb_job_state_domain,
        simpledb_ec2_nommer_state_domain), through core.aws.client."""
        store = cls(aws_client(settings, cls.SERVICE, budget=budget),
                    settings.simpledb_job_state_domain, settings.simpledb_ec2_nommer_state_domain)
        store._owns_client = True
        return store

    def close(self) -> None:
        """Close the client if this store made it (from_settings)."""
        if self._owns_client:
            self._client.close()
