"""The DynamoDB job store, for AWS accounts that cannot use SimpleDB (it is
closed to new accounts): one item per job in the jobs table, one per
encoder in the nodes table. Table names default to the SimpleDB domain
settings' names.

Tables are created when missing, with on-demand capacity
(PAY_PER_REQUEST) and three global secondary indexes that project keys
only, so a write that changes no index key (a heartbeat, a progress tick)
costs no index write:

- `by_state`: partition `state`, sort `created_key` ("<created_at>|<id>",
  fixed-width UTC time, so newest first with a tie-break on the id). Lists
  and counts one state without reading the others.
- `by_created`: partition `listing` ("job#0" .. "job#7", from a hash of
  the id, so no one partition takes every job's index writes; items
  written before the sharding keep "job", and listings read it too), sort
  `created_key`. Lists every job newest first without a Scan; the arrival
  times the scaler needs come from its keys alone.
- `outbox`: partition `outbox`, present only while a state change awaits
  its announcement (a sparse index), sort `updated_at`.

A listing reads keys from an index, then the jobs with one consistent
BatchGetItem. A job larger than DynamoDB's 400 KB item limit is refused
with ValidationError before it is sent. Tables made before these indexes
keep theirs (projecting everything, one listing partition); they still
work, and an outbox sweep on them scans the table.

Reads of a job are consistent (get_item ConsistentRead). Index queries
cannot be: a listing may trail a write by a moment. Every write of a job is
conditional on its `version` and carries a fresh random `write_token`.
botocore resends a write whose answer was lost (a 500 or a read timeout
after DynamoDB applied it), and the resend fails its condition; the failure
returns the stored item (ReturnValuesOnConditionCheckFailure), and when its
version and token are the ones this call wrote, the write took and counts
as done. A write that failed for good is checked the same way with one
consistent read. botocore errors are translated by core.aws.aws_errors.
"""
from __future__ import annotations

import heapq
import json
import uuid
import zlib

import botocore.exceptions

import functools

from core.aws import aws_errors, error_code
from core.errors import BackendError, ConflictError, NotFound, ValidationError
from core.interfaces import Node
from core.jobs import Job, JobState
from core.stores.aws_client import AWSJobStore
from core.stores.codec import decode_cursor, encode_cursor, text_to_time, time_to_text

# A missing domain or table is a BackendError here, never a missing job.
_errors = functools.partial(aws_errors, missing_container_is_error=True)

BY_STATE_INDEX = "by_state"
BY_CREATED_INDEX = "by_created"
# A sparse index of the jobs whose outbox holds a state change to announce.
OUTBOX_INDEX = "outbox"
_OUTBOX = "pending"
_LISTING = "job"
# Counters (core.metrics): one item of the jobs table, with an id no job can
# have and neither index's key, so no listing sees it. One UpdateItem ADDs
# every amount atomically.
_COUNTERS_ID = "#counters"
# by_created partitions; items written before sharding sit under _LISTING.
LISTING_SHARDS = 8
# BatchGetItem takes at most this many keys a call.
BATCH_GET_KEYS = 100
# DynamoDB's limit on one item, names and values together.
MAX_ITEM_BYTES = 400 * 1024
# How long to wait for a new table to become ACTIVE (seconds).
TABLE_CREATE_TIMEOUT_S = 300


def _string(value: str | None) -> dict:
    return {"NULL": True} if value is None else {"S": value}


def _unstring(attr: dict) -> str | None:
    return None if attr.get("NULL") else attr["S"]


def _created_key(job: Job) -> str:
    return f"{time_to_text(job.created_at)}|{job.id}"


def new_write_token() -> str:
    return uuid.uuid4().hex


def _job_item(job: Job, version: int, token: str) -> dict:
    item = {
        "write_token": {"S": token},
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
        "listing": {"S": _listing_key(job.id)},
        "sent_options": _json_or_null(job.sent_options),
        "outputs": _json_or_null(job.outputs),
        "notify_format": {"S": job.notify_format},
        "notifications_given_up": {"S": json.dumps(job.notifications_given_up, sort_keys=True)},
    }
    if job.announce_version is not None:
        # The outbox; `outbox` keys the sparse index that finds it.
        item["announce_version"] = {"N": str(job.announce_version)}
        item["outbox"] = {"S": _OUTBOX}
    size = _item_bytes(item)
    if size > MAX_ITEM_BYTES:
        raise ValidationError(f"job {job.id} is too large for DynamoDB ({size} bytes, "
                              f"at most {MAX_ITEM_BYTES})")
    return item


def _item_bytes(item: dict) -> int:
    """An item's size as DynamoDB counts it toward its 400 KB limit (names
    plus values; a number taken at its text length, a bound on its size)."""
    total = 0
    for name, value in item.items():
        total += len(name.encode())
        kind, content = next(iter(value.items()))
        total += 1 if kind == "NULL" else len(str(content).encode())
    return total


def _listing_key(job_id: str) -> str:
    """The by_created partition of a job: one of LISTING_SHARDS, so no single
    partition takes every job's index writes."""
    return f"{_LISTING}#{zlib.crc32(job_id.encode()) % LISTING_SHARDS}"


def _same_write(stored: dict, written: dict) -> bool:
    """Whether `stored` is the item `written` put (same version and token)."""
    return (stored.get("version") == written["version"]
            and stored.get("write_token") == written["write_token"])


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
        announce_version=int(item["announce_version"]["N"]) if "announce_version" in item else None,
        sent_options=_json_field(item, "sent_options"),
        outputs=_json_field(item, "outputs"),
        # Items written before these fields existed have no attribute at all.
        notify_format=item["notify_format"]["S"] if "notify_format" in item else "form",
        notifications_given_up=(json.loads(item["notifications_given_up"]["S"])
                                if "notifications_given_up" in item else []),
    )


def _json_or_null(value) -> dict:
    return _string(None if value is None else json.dumps(value, sort_keys=True))


def _json_field(item: dict, name: str):
    # Items written before the field existed have no attribute at all.
    text = _unstring(item[name]) if name in item else None
    return json.loads(text) if text else None


def _encode_cursor(created_key: str) -> str:
    return encode_cursor(*created_key.split("|", 1))


def _decode_cursor(cursor: str) -> str:
    """The created_key of the last job of the previous page. Raises ValidationError."""
    return "|".join(decode_cursor(cursor))


def _index(name: str, partition: str, sort: str = "created_key",
           projection: str = "ALL") -> dict:
    return {"IndexName": name,
            "KeySchema": [{"AttributeName": partition, "KeyType": "HASH"},
                          {"AttributeName": sort, "KeyType": "RANGE"}],
            "Projection": {"ProjectionType": projection}}


_JOBS_TABLE = {
    "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
    "AttributeDefinitions": [{"AttributeName": name, "AttributeType": "S"}
                             for name in ("id", "state", "listing", "created_key", "outbox",
                                          "updated_at")],
    "GlobalSecondaryIndexes": [_index(BY_STATE_INDEX, "state", projection="KEYS_ONLY"),
                               _index(BY_CREATED_INDEX, "listing", projection="KEYS_ONLY"),
                               _index(OUTBOX_INDEX, "outbox", "updated_at", "KEYS_ONLY")],
    "BillingMode": "PAY_PER_REQUEST",
}
_NODES_TABLE = {
    "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
    "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
    "BillingMode": "PAY_PER_REQUEST",
}


class DynamoDBJobStore(AWSJobStore):
    """JobStore in two DynamoDB tables (created if missing).

    `client` is a boto3 "dynamodb" client. Every method raises BackendError
    when DynamoDB fails (after botocore's retries) or cannot be reached.
    """

    SERVICE = "dynamodb"

    def __init__(self, client, table_name: str, nodes_table_name: str,
                 create_timeout_s: float = TABLE_CREATE_TIMEOUT_S):
        super().__init__(client)
        self.table_name = table_name
        self.nodes_table_name = nodes_table_name
        self._ensure_table(table_name, _JOBS_TABLE, create_timeout_s)
        self._ensure_table(nodes_table_name, _NODES_TABLE, create_timeout_s)
        with aws_errors(f"describe table {table_name}"):
            indexes = self._client.describe_table(TableName=table_name)["Table"].get(
                "GlobalSecondaryIndexes", [])
        self._has_outbox_index = any(i["IndexName"] == OUTBOX_INDEX for i in indexes)

    def create_job(self, job: Job) -> Job:
        """Store `job` as version 1 and return it. Raises ConflictError if the id exists
        (and was not written by this call: see the module docstring)."""
        item = _job_item(job, version=1, token=new_write_token())
        took = self._conditional_put(item, "attribute_not_exists(#id)", {"#id": "id"}, {},
                                     "create job")
        if not took:
            raise ConflictError(f"job {job.id} already exists")
        return _job_from_item(item)

    def get_job(self, job_id: str) -> Job:
        """The stored job, read consistently. Raises NotFound."""
        with _errors("get job"):
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
        # A missing item fails the same condition and returns no item: NotFound.
        #
        # A write whose answer was lost is resent by botocore; the resend
        # fails the condition although the first one took:
        #
        #   A: put if v (token t) -> applied, answer lost -> put if v -> failed, item: v + 1, t
        #   A: that is our own write: success
        item = _job_item(job, version=expected_version + 1, token=new_write_token())
        took = self._conditional_put(
            item, "attribute_exists(#id) AND #version = :expected",
            {"#id": "id", "#version": "version"},
            {":expected": {"N": str(expected_version)}}, "update job")
        if took is None:
            raise NotFound(f"job {job.id} not found")
        if not took:
            raise ConflictError(f"job {job.id} changed since version {expected_version}")
        return _job_from_item(item)

    def _conditional_put(self, item: dict, condition: str, names: dict, values: dict,
                         what: str) -> bool | None:
        """put_item `item` if `condition` holds. True if it took (also when
        only an earlier, lost attempt of this call did), False if the
        condition failed against another write, None if it failed on no item.
        Raises BackendError."""
        request = {"TableName": self.table_name, "Item": item, "ConditionExpression": condition,
                   "ExpressionAttributeNames": names,
                   "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}
        if values:
            request["ExpressionAttributeValues"] = values
        try:
            with _errors(what):
                try:
                    self._client.put_item(**request)
                    return True
                except botocore.exceptions.ClientError as exc:
                    if error_code(exc) != "ConditionalCheckFailedException":
                        raise
                    stored = exc.response.get("Item")
        except BackendError:
            # Failed for good (after retries): it may still have taken.
            try:
                stored = self._raw_item(item["id"]["S"])
            except BackendError:
                stored = None
            if stored is None or not _same_write(stored, item):
                raise
            return True
        if not stored:
            # No item came back: the item is missing, or the service does not
            # return it (older emulators); one consistent read tells.
            stored = self._raw_item(item["id"]["S"])
            if stored is None:
                return None
        return _same_write(stored, item)

    def _raw_item(self, job_id: str) -> dict | None:
        with _errors("check job write"):
            answer = self._client.get_item(TableName=self.table_name,
                                           Key={"id": {"S": job_id}}, ConsistentRead=True)
        return answer.get("Item")

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
            index, partition = BY_CREATED_INDEX, "listing"
            partitions = [f"{_LISTING}#{n}" for n in range(LISTING_SHARDS)] + [_LISTING]
        else:
            index, partition, partitions = BY_STATE_INDEX, "state", [JobState(state).value]
        condition = "#p = :p"
        names, values = {"#p": partition}, {}
        if cursor is not None:
            # DynamoDB refuses names and values the expression does not use.
            condition += " AND #k < :k"
            names["#k"], values[":k"] = "created_key", {"S": _decode_cursor(cursor)}
        wanted = limit + 1  # one more than asked tells whether a next page exists
        # Each partition newest first; merged, the newest `wanted` of all.
        runs = [self._query(index, condition, names, dict(values, **{":p": {"S": value}}),
                            wanted, "list jobs") for value in partitions]
        keys = list(heapq.merge(*runs, key=lambda item: item["created_key"]["S"],
                                reverse=True))[:wanted]
        page = self._get_many([item["id"]["S"] for item in keys[:limit]])
        if len(keys) <= limit:
            return page, None
        return page, _encode_cursor(keys[limit - 1]["created_key"]["S"])

    def created_since(self, since, limit: int = 2000) -> list:
        """Creation times after `since`, newest first: keys of the by_created
        index only (its sort key holds the time), no job is read."""
        names = {"#p": "listing", "#k": "created_key"}
        runs = []
        for value in [f"{_LISTING}#{n}" for n in range(LISTING_SHARDS)] + [_LISTING]:
            values = {":p": {"S": value}, ":k": {"S": time_to_text(since) + "|~"}}
            runs.append(self._query(BY_CREATED_INDEX, "#p = :p AND #k > :k", names, values,
                                    limit, "list arrivals"))
        keys = heapq.merge(*runs, key=lambda item: item["created_key"]["S"], reverse=True)
        return [text_to_time(item["created_key"]["S"].split("|", 1)[0])
                for item in list(keys)[:limit]]

    def _get_many(self, job_ids: list[str]) -> list[Job]:
        """The jobs `job_ids`, in that order, read consistently (BatchGetItem,
        100 keys a call; keys DynamoDB leaves unprocessed are asked again).
        A job deleted meanwhile is left out."""
        found: dict[str, Job] = {}
        for start in range(0, len(job_ids), BATCH_GET_KEYS):
            wanted = {self.table_name: {
                "Keys": [{"id": {"S": job_id}} for job_id in job_ids[start:start + BATCH_GET_KEYS]],
                "ConsistentRead": True}}
            while wanted:
                with _errors("read jobs"):
                    answer = self._client.batch_get_item(RequestItems=wanted)
                for item in answer.get("Responses", {}).get(self.table_name, []):
                    job = _job_from_item(item)
                    found[job.id] = job
                wanted = answer.get("UnprocessedKeys") or {}
        return [found[job_id] for job_id in job_ids if job_id in found]

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
                with _errors("count jobs"):
                    answer = self._client.query(**request)
                total += answer["Count"]
                if "LastEvaluatedKey" not in answer:
                    break
                request["ExclusiveStartKey"] = answer["LastEvaluatedKey"]
        return total

    def mark_announced(self, job_id: str, version: int) -> None:
        """Empty the job's outbox if it holds `version`: an update_item of the
        outbox attributes alone, conditional on them, so the version stays."""
        try:
            with _errors("mark job announced"):
                self._client.update_item(
                    TableName=self.table_name, Key={"id": {"S": job_id}},
                    UpdateExpression="REMOVE #a, #o", ConditionExpression="#a = :v",
                    ExpressionAttributeNames={"#a": "announce_version", "#o": "outbox"},
                    ExpressionAttributeValues={":v": {"N": str(version)}})
        except ConflictError:
            pass  # another change waits in the outbox now, or the job is gone

    def list_unannounced(self, updated_before, limit: int = 100) -> list[Job]:
        """Jobs with a state change to announce, updated before `updated_before`:
        keys from the sparse outbox index (a table made before it existed is
        scanned instead), each job then read consistently."""
        cutoff = {"S": time_to_text(updated_before)}
        if self._has_outbox_index:
            request = {"TableName": self.table_name, "IndexName": OUTBOX_INDEX,
                       "KeyConditionExpression": "#o = :o AND #u < :t",
                       "ExpressionAttributeNames": {"#o": "outbox", "#u": "updated_at"},
                       "ExpressionAttributeValues": {":o": {"S": _OUTBOX}, ":t": cutoff},
                       "Limit": limit}
            operation = self._client.query
        else:
            request = {"TableName": self.table_name, "ProjectionExpression": "#i",
                       "FilterExpression": "attribute_exists(#o) AND #u < :t",
                       "ExpressionAttributeNames": {"#i": "id", "#o": "outbox", "#u": "updated_at"},
                       "ExpressionAttributeValues": {":t": cutoff}}
            operation = self._client.scan
        ids: list[str] = []
        while len(ids) < limit:
            with _errors("list unannounced jobs"):
                answer = operation(**request)
            ids += [item["id"]["S"] for item in answer.get("Items", [])]
            if "LastEvaluatedKey" not in answer:
                break
            request["ExclusiveStartKey"] = answer["LastEvaluatedKey"]
        jobs = []
        for job_id in ids[:limit]:
            try:
                job = self.get_job(job_id)
            except NotFound:
                continue
            if job.announce_version is not None:
                jobs.append(job)
        return jobs

    def put_node(self, node: Node) -> None:
        """Create or replace the report of encoder `node.id` (the original's attributes)."""
        # An update of the report's own attributes, so the draining mark stays.
        with _errors("put node"):
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
            with _errors("list nodes"):
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
            with _errors("mark node draining"):
                self._client.update_item(
                    TableName=self.nodes_table_name, Key={"id": {"S": node_id}},
                    UpdateExpression="SET draining = :yes",
                    ConditionExpression="attribute_exists(id)",
                    ExpressionAttributeValues={":yes": {"BOOL": True}})
        except ConflictError:
            pass  # no such report: nothing to mark

    def delete_node(self, node_id: str) -> None:
        """Forget encoder `node_id`; no error if unknown."""
        with _errors("delete node"):
            self._client.delete_item(TableName=self.nodes_table_name, Key={"id": {"S": node_id}})

    def add_counters(self, increments: dict[str, float]) -> None:
        """Add to named counters with one atomic UpdateItem ADD."""
        if not increments:
            return
        keys = sorted(increments)
        with _errors("add counters"):
            self._client.update_item(
                TableName=self.table_name, Key={"id": {"S": _COUNTERS_ID}},
                UpdateExpression="ADD " + ", ".join(f"#c{n} :v{n}" for n in range(len(keys))),
                ExpressionAttributeNames={f"#c{n}": key for n, key in enumerate(keys)},
                ExpressionAttributeValues={f":v{n}": {"N": repr(float(increments[key]))}
                                           for n, key in enumerate(keys)})

    def read_counters(self) -> dict[str, float]:
        with _errors("read counters"):
            answer = self._client.get_item(TableName=self.table_name,
                                           Key={"id": {"S": _COUNTERS_ID}}, ConsistentRead=True)
        return {key: float(value["N"]) for key, value in answer.get("Item", {}).items()
                if key != "id"}

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
            with _errors(what):
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
