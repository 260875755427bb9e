"""The DynamoDB job store, for AWS accounts that cannot use SimpleDB (it is
closed to new accounts): one item per job in the jobs table, one per
encoder in the nodes table. Table names default to the SimpleDB domain
settings' names.

Tables are created when missing, with on-demand capacity
(PAY_PER_REQUEST) and two global secondary indexes, both projecting every
attribute so a listing needs no second read:

- `by_state`: partition `state`, sort `created_key` ("<created_at>|<id>",
  fixed-width UTC time, so newest first with a tie-break on the id). Lists
  and counts one state without reading the others.
- `by_created`: partition `listing` (the constant "job"), sort
  `created_key`. Lists every job newest first without a Scan. The trade-off:
  one partition key takes every job, so this index's writes are capped at
  what one partition takes (about 1000 writes/s); far above an encoding
  system's rate of job changes. Both indexes cost storage and a write each.

Reads of a job are consistent (get_item ConsistentRead). Index queries
cannot be: a listing may trail a write by a moment. Every write of a job is
a put_item conditional on its `version`. botocore errors are translated by
core.aws.aws_errors.
"""
from __future__ import annotations

import json

from core.aws import aws_errors, client as aws_client
from core.errors import ConflictError, NotFound, ValidationError
from core.interfaces import JobStore, Node
from core.jobs import Job, JobState
from core.settings import Settings
from core.stores.codec import decode_cursor, encode_cursor, text_to_time, time_to_text

BY_STATE_INDEX = "by_state"
BY_CREATED_INDEX = "by_created"
_LISTING = "job"
# How long to wait for a new table to become ACTIVE (seconds).
TABLE_CREATE_TIMEOUT_S = 300


def _string(value: str | None) -> dict:
    return {"NULL": True} if value is None else {"S": value}


def _unstring(attr: dict) -> str | None:
    return None if attr.get("NULL") else attr["S"]


def _created_key(job: Job) -> str:
    return f"{time_to_text(job.created_at)}|{job.id}"


def _job_item(job: Job, version: int) -> dict:
    return {
        "id": {"S": job.id},
        "source": {"S": job.source},
        "destination": {"S": job.destination},
        "options": {"S": json.dumps(job.options, sort_keys=True)},
        "notify_url": _string(job.notify_url),
        "state": {"S": JobState(job.state).value},
        "state_details": {"S": job.state_details},
        "progress": {"N": str(job.progress)},
        "attempts": {"N": str(job.attempts)},
        "node": _string(job.node),
        "created_at": {"S": time_to_text(job.created_at)},
        "updated_at": {"S": time_to_text(job.updated_at)},
        "lease_expires_at": _string(time_to_text(job.lease_expires_at)),
        "version": {"N": str(version)},
        "created_key": {"S": _created_key(job)},
        "listing": {"S": _LISTING},
        "sent_options": _string(None if job.sent_options is None
                                else json.dumps(job.sent_options, sort_keys=True)),
    }


def _job_from_item(item: dict) -> Job:
    return Job(
        id=item["id"]["S"], source=item["source"]["S"], destination=item["destination"]["S"],
        options=json.loads(item["options"]["S"]), notify_url=_unstring(item["notify_url"]),
        state=JobState(item["state"]["S"]), state_details=item["state_details"]["S"],
        progress=int(item["progress"]["N"]), attempts=int(item["attempts"]["N"]),
        node=_unstring(item["node"]),
        created_at=text_to_time(item["created_at"]["S"]),
        updated_at=text_to_time(item["updated_at"]["S"]),
        lease_expires_at=text_to_time(_unstring(item["lease_expires_at"])),
        version=int(item["version"]["N"]),
        sent_options=_sent_options(item),
    )


def _sent_options(item: dict) -> dict | None:
    # Items written before the field existed have no attribute at all.
    text = _unstring(item["sent_options"]) if "sent_options" in item else None
    return json.loads(text) if text else None


def _encode_cursor(created_key: str) -> str:
    return encode_cursor(*created_key.split("|", 1))


def _decode_cursor(cursor: str) -> str:
    """The created_key of the last job of the previous page. Raises ValidationError."""
    return "|".join(decode_cursor(cursor))


def _index(name: str, partition: str) -> dict:
    return {"IndexName": name,
            "KeySchema": [{"AttributeName": partition, "KeyType": "HASH"},
                          {"AttributeName": "created_key", "KeyType": "RANGE"}],
            "Projection": {"ProjectionType": "ALL"}}


_JOBS_TABLE = {
    "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
    "AttributeDefinitions": [{"AttributeName": name, "AttributeType": "S"}
                             for name in ("id", "state", "listing", "created_key")],
    "GlobalSecondaryIndexes": [_index(BY_STATE_INDEX, "state"),
                               _index(BY_CREATED_INDEX, "listing")],
    "BillingMode": "PAY_PER_REQUEST",
}
_NODES_TABLE = {
    "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
    "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
    "BillingMode": "PAY_PER_REQUEST",
}


class DynamoDBJobStore(JobStore):
    """JobStore in two DynamoDB tables (created if missing).

    `client` is a boto3 "dynamodb" client. Every method raises BackendError
    when DynamoDB fails (after botocore's retries) or cannot be reached.
    """

    def __init__(self, client, table_name: str, nodes_table_name: str,
                 create_timeout_s: float = TABLE_CREATE_TIMEOUT_S):
        self._client = client
        self._owns_client = False
        self.table_name = table_name
        self.nodes_table_name = nodes_table_name
        self._ensure_table(table_name, _JOBS_TABLE, create_timeout_s)
        self._ensure_table(nodes_table_name, _NODES_TABLE, create_timeout_s)

    @classmethod
    def from_settings(cls, settings: Settings) -> "DynamoDBJobStore":
        """The store in tables named like the SimpleDB domain settings, through core.aws.client."""
        store = cls(aws_client(settings, "dynamodb"), settings.simpledb_job_state_domain,
                    settings.simpledb_ec2_nommer_state_domain)
        store._owns_client = True
        return store

    def close(self) -> None:
        """Close the client if this store made it (from_settings)."""
        if self._owns_client:
            self._client.close()

    def create_job(self, job: Job) -> Job:
        """Store `job` as version 1 and return it. Raises ConflictError if the id exists."""
        item = _job_item(job, version=1)
        try:
            with aws_errors("create job"):
                self._client.put_item(TableName=self.table_name, Item=item,
                                      ConditionExpression="attribute_not_exists(#id)",
                                      ExpressionAttributeNames={"#id": "id"})
        except ConflictError:
            raise ConflictError(f"job {job.id} already exists") from None
        return _job_from_item(item)

    def get_job(self, job_id: str) -> Job:
        """The stored job, read consistently. Raises NotFound."""
        with aws_errors("get job"):
            answer = self._client.get_item(TableName=self.table_name,
                                           Key={"id": {"S": job_id}}, ConsistentRead=True)
        if "Item" not in answer:
            raise NotFound(f"job {job_id} not found")
        return _job_from_item(answer["Item"])

    def update_job(self, job: Job, expected_version: int) -> Job:
        """Write every field of `job` if the stored version is `expected_version`.

        Returns the job as stored (version = expected_version + 1). Raises
        ConflictError if the version moved on, NotFound if the job is gone.
        """
        # The race: encoders A and B both read version v and both send
        # "put_item(version = v + 1) if version = v". DynamoDB evaluates the
        # condition and writes atomically per item: the first put finds v
        # and writes v + 1; the second finds v + 1 and fails with
        # ConditionalCheckFailedException, writing nothing.
        #
        #   A: get v ----- put if v -> ok (v + 1)
        #   B: get v ------------------- put if v -> ConditionalCheckFailed
        #
        # A missing item fails the same condition; one consistent read then
        # tells "gone" (NotFound) from "changed" (ConflictError).
        item = _job_item(job, version=expected_version + 1)
        try:
            with aws_errors("update job"):
                self._client.put_item(
                    TableName=self.table_name, Item=item,
                    ConditionExpression="attribute_exists(#id) AND #version = :expected",
                    ExpressionAttributeNames={"#id": "id", "#version": "version"},
                    ExpressionAttributeValues={":expected": {"N": str(expected_version)}})
        except ConflictError:
            self.get_job(job.id)  # raises NotFound if the job is gone
            raise ConflictError(f"job {job.id} changed since version {expected_version}") from None
        return _job_from_item(item)

    def list_jobs(self, state: JobState | None = None, limit: int = 50,
                  cursor: str | None = None) -> tuple[list[Job], str | None]:
        """Jobs newest first (by created_at, then id), optionally of one state.

        One index query, newest first; a cursor continues strictly after the
        last job seen (keyset paging), so jobs created meanwhile never shift
        a page. Returns (page of at most `limit` jobs, next cursor or None).
        Raises ValidationError for a bad cursor or limit < 1.
        """
        if limit < 1:
            raise ValidationError("limit must be at least 1")
        if state is None:
            index, partition, value = BY_CREATED_INDEX, "listing", _LISTING
        else:
            index, partition, value = BY_STATE_INDEX, "state", JobState(state).value
        condition = "#p = :p"
        names, values = {"#p": partition}, {":p": {"S": value}}
        if cursor is not None:
            # DynamoDB refuses names and values the expression does not use.
            condition += " AND #k < :k"
            names["#k"], values[":k"] = "created_key", {"S": _decode_cursor(cursor)}
        wanted = limit + 1  # one more than asked tells whether a next page exists
        items = self._query(index, condition, names, values, wanted, "list jobs")
        page = [_job_from_item(item) for item in items[:limit]]
        if len(items) <= limit:
            return page, None
        return page, _encode_cursor(_created_key(page[-1]))

    def count_jobs(self, states: frozenset[JobState]) -> int:
        """How many jobs are in any of `states` (0 for no states): one COUNT
        query of the state index per state."""
        total = 0
        for state in sorted(JobState(s).value for s in states):
            request = {"TableName": self.table_name, "IndexName": BY_STATE_INDEX,
                       "KeyConditionExpression": "#p = :p", "Select": "COUNT",
                       "ExpressionAttributeNames": {"#p": "state"},
                       "ExpressionAttributeValues": {":p": {"S": state}}}
            while True:
                with aws_errors("count jobs"):
                    answer = self._client.query(**request)
                total += answer["Count"]
                if "LastEvaluatedKey" not in answer:
                    break
                request["ExclusiveStartKey"] = answer["LastEvaluatedKey"]
        return total

    def put_node(self, node: Node) -> None:
        """Create or replace the report of encoder `node.id` (the original's attributes)."""
        # An update of the report's own attributes, so the draining mark stays.
        with aws_errors("put node"):
            self._client.update_item(
                TableName=self.nodes_table_name, Key={"id": {"S": node.id}},
                UpdateExpression="SET #state = :state, active_jobs = :active, "
                                 "last_report_dtime = :report, started_at = :started",
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues={
                    ":state": {"S": node.state}, ":active": {"N": str(node.active_jobs)},
                    ":report": {"S": time_to_text(node.last_report)},
                    ":started": {"S": time_to_text(node.started_at)}})

    def list_nodes(self) -> list[Node]:
        """Every encoder report, by id (a consistent Scan: the table is one item per encoder)."""
        nodes = []
        request = {"TableName": self.nodes_table_name, "ConsistentRead": True}
        while True:
            with aws_errors("list nodes"):
                answer = self._client.scan(**request)
            for item in answer.get("Items", []):
                nodes.append(Node(id=item["id"]["S"], state=item["state"]["S"],
                                  active_jobs=int(item["active_jobs"]["N"]),
                                  last_report=text_to_time(item["last_report_dtime"]["S"]),
                                  started_at=text_to_time(item["started_at"]["S"]),
                                  draining=item.get("draining", {}).get("BOOL", False)))
            if "LastEvaluatedKey" not in answer:
                break
            request["ExclusiveStartKey"] = answer["LastEvaluatedKey"]
        return sorted(nodes, key=lambda node: node.id)

    def mark_node_draining(self, node_id: str) -> None:
        """Set encoder `node_id`'s draining mark; no error if unknown."""
        try:
            with aws_errors("mark node draining"):
                self._client.update_item(
                    TableName=self.nodes_table_name, Key={"id": {"S": node_id}},
                    UpdateExpression="SET draining = :yes",
                    ConditionExpression="attribute_exists(id)",
                    ExpressionAttributeValues={":yes": {"BOOL": True}})
        except ConflictError:
            pass  # no such report: nothing to mark

    def delete_node(self, node_id: str) -> None:
        """Forget encoder `node_id`; no error if unknown."""
        with aws_errors("delete node"):
            self._client.delete_item(TableName=self.nodes_table_name, Key={"id": {"S": node_id}})

    def _query(self, index: str, condition: str, names: dict, values: dict,
               wanted: int, what: str) -> list[dict]:
        """The first `wanted` items of an index query, newest first. A page
        ends at 1 MB as well as at Limit, so pages are followed until enough."""
        request = {"TableName": self.table_name, "IndexName": index,
                   "KeyConditionExpression": condition, "ExpressionAttributeNames": names,
                   "ExpressionAttributeValues": values, "ScanIndexForward": False}
        items: list[dict] = []
        while len(items) < wanted:
            request["Limit"] = wanted - len(items)
            with aws_errors(what):
                answer = self._client.query(**request)
            items.extend(answer.get("Items", []))
            if "LastEvaluatedKey" not in answer:
                break
            request["ExclusiveStartKey"] = answer["LastEvaluatedKey"]
        return items

    def _ensure_table(self, name: str, definition: dict, timeout_s: float) -> None:
        """Create table `name` unless it exists, then wait until it is ACTIVE."""
        try:
            with aws_errors(f"describe table {name}"):
                status = self._client.describe_table(TableName=name)["Table"]["TableStatus"]
        except NotFound:
            status = None
        if status == "ACTIVE":
            return
        with aws_errors(f"create table {name}"):
            if status is None:
                try:
                    self._client.create_table(TableName=name, **definition)
                except self._client.exceptions.ResourceInUseException:
                    pass  # another process created it first; wait for it below
            delay_s = 1
            self._client.get_waiter("table_exists").wait(
                TableName=name,
                WaiterConfig={"Delay": delay_s, "MaxAttempts": max(1, int(timeout_s / delay_s))})
