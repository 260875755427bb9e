"""The SimpleDB job store: one item per job in the jobs domain (the
original's `media_nommer`), one item per encoder in the nodes domain
(`media_nommer_ec2nommer_state`).

SimpleDB keeps strings only, compares them lexicographically, and caps
every name and value at 1024 bytes. So, for each job item:

- numbers are zero-padded to ten digits (`version`, `progress`, `attempts`)
  and times are ISO-8601 UTC of fixed width, so string order is number and
  time order;
- `created_key` is "<created_at>|<id>": the one attribute that orders jobs
  newest first with a tie-break (a select sorts on one attribute only);
- text fields (source, destination, notify_url, node, state_details,
  notify_format, and the options, sent options, outputs and notifications
  given up as JSON) are stored as JSON strings, so None, "" and control
  characters survive and every stored character is printable ASCII, cut
  into 1024-byte chunks `F__0`, `F__1`, ... with their number in `F__count`.
  A later, shorter value leaves unused chunks behind; `F__count` says how
  many count, so one PutAttributes call always writes a whole job.

Every read is a consistent read. Every write of a job is one PutAttributes
conditional on the stored `version` (`Expected`), carrying a fresh random
`write_token`. botocore resends a write whose answer was lost (a 500 or a
read timeout after SimpleDB applied it); the resend then fails its
condition. So a failed condition, or a write that failed for good, is
checked with one consistent read: if the stored version and token are the
ones this call wrote, the write took and counts as done. botocore errors
are translated by core.aws.aws_errors: a lost condition is ConflictError,
the rest BackendError.
"""
from __future__ import annotations

import collections
import json
import re
import uuid

import functools

from core.aws import aws_errors
from core.errors import BackendError, ConflictError, NotFound, ValidationError
from core.interfaces import Node
from core.jobs import Job, JobState
from core.stores.aws_client import AWSJobStore
from core.stores.codec import decode_cursor, encode_cursor, text_to_time, time_to_text

# A missing domain or table is a BackendError here, never a missing job.
_errors = functools.partial(aws_errors, missing_container_is_error=True)

CHUNK_BYTES = 1024
# AWS's cap on the name-value pairs of one item and of one PutAttributes call.
MAX_ITEM_ATTRIBUTES = 256
# A select answers at most 2500 items a page.
MAX_SELECT_LIMIT = 2500
_NUMBER_DIGITS = 10
_TEXT_FIELDS = ("source", "destination", "notify_url", "node", "state_details", "options",
                "sent_options", "outputs", "notify_format", "notifications_given_up")
# Counters (core.metrics) live in the jobs domain, one item per series
# (see _counter_family): "#counters:<series>", which no job id can be. They have no `created_key` or
# `state`, so job selects never see them. SimpleDB has no atomic add: each
# add is a read, then a put conditional on the item's `counters_version`.
_COUNTERS_PREFIX = "#counters:"
_COUNTER_RETRIES = 20
# Attribute names of the jobs read or written lately (job id -> (version,
# names)), so a write can count the stale chunks it leaves; bounded.
_NAMES_CACHE_JOBS = 1024


def _sdb_time(value) -> str:
    # SimpleDB has no null: an empty string stands for "no time".
    return time_to_text(value) or ""


def _number(value: int) -> str:
    return f"{value:0{_NUMBER_DIGITS}d}"


def _quote(value: str) -> str:
    """A select string literal: a quote inside is doubled, so no value can end
    the literal early and change the query."""
    return "'" + value.replace("'", "''") + "'"


def _name(name: str) -> str:
    """A select name in backticks (a backtick inside is doubled)."""
    return "`" + name.replace("`", "``") + "`"


def _chunks(field: str, value) -> list[tuple[str, str]]:
    text = json.dumps(value, sort_keys=True)  # ASCII only: one byte a character
    parts = [text[start:start + CHUNK_BYTES] for start in range(0, len(text), CHUNK_BYTES)]
    return [(f"{field}__count", str(len(parts)))] + [
        (f"{field}__{index}", part) for index, part in enumerate(parts)]


def _joined(attrs: dict[str, str], field: str, missing_ok: bool = False):
    if missing_ok and f"{field}__count" not in attrs:
        return None  # an item written before the field existed
    count = int(attrs[f"{field}__count"])
    return json.loads("".join(attrs[f"{field}__{index}"] for index in range(count)))


def _created_key(job: Job) -> str:
    return f"{_sdb_time(job.created_at)}|{job.id}"


def _job_attributes(job: Job, version: int, token: str) -> list[tuple[str, str]]:
    pairs = [
        ("version", _number(version)),
        ("write_token", token),
        ("state", JobState(job.state).value),
        ("progress", _number(job.progress)),
        ("attempts", _number(job.attempts)),
        ("created_at", _sdb_time(job.created_at)),
        ("updated_at", _sdb_time(job.updated_at)),
        ("lease_expires_at", _sdb_time(job.lease_expires_at)),
        ("created_key", _created_key(job)),
        # The outbox: "" when empty (SimpleDB has no null).
        ("announce_version", "" if job.announce_version is None else _number(job.announce_version)),
    ]
    for field in _TEXT_FIELDS:
        pairs.extend(_chunks(field, getattr(job, field)))
    _check_size(job.id, len(pairs))
    return pairs


def _check_size(job_id: str, pairs: int) -> None:
    if pairs > MAX_ITEM_ATTRIBUTES:
        raise ValidationError(f"job {job_id} is too large for SimpleDB "
                              f"({pairs} attributes, at most {MAX_ITEM_ATTRIBUTES})")


def new_write_token() -> str:
    return uuid.uuid4().hex


def _job_from_attributes(job_id: str, attrs: dict[str, str]) -> Job:
    return Job(
        id=job_id, source=_joined(attrs, "source"), destination=_joined(attrs, "destination"),
        options=_joined(attrs, "options"), notify_url=_joined(attrs, "notify_url"),
        state=JobState(attrs["state"]), state_details=_joined(attrs, "state_details"),
        progress=int(attrs["progress"]), attempts=int(attrs["attempts"]),
        node=_joined(attrs, "node"),
        created_at=text_to_time(attrs["created_at"]),
        updated_at=text_to_time(attrs["updated_at"]),
        lease_expires_at=text_to_time(attrs["lease_expires_at"]),
        version=int(attrs["version"]),
        announce_version=int(attrs["announce_version"]) if attrs.get("announce_version") else None,
        sent_options=_joined(attrs, "sent_options", missing_ok=True),
        outputs=_joined(attrs, "outputs", missing_ok=True),
        notify_format=_joined(attrs, "notify_format", missing_ok=True) or "form",
        notifications_given_up=_joined(attrs, "notifications_given_up", missing_ok=True) or [],
    )


def _as_dict(attributes: list[dict]) -> dict[str, str]:
    # Every attribute this store writes replaces the old value, so each
    # name has one value.
    return {attr["Name"]: attr["Value"] for attr in attributes}


def _encode_cursor(created_key: str) -> str:
    return encode_cursor(*created_key.split("|", 1))


def _decode_cursor(cursor: str) -> str:
    """The created_key of the last job of the previous page. Raises ValidationError."""
    return "|".join(decode_cursor(cursor))


def _counter_family(key: str) -> str:
    """The item a counter is kept in: its name without a histogram's suffix,
    with its labels but `le`. A histogram observation is then one put, and
    one item holds one series' buckets (far below 256 attributes)."""
    name, _, labels = key.partition("{")
    name = re.sub(r"_(bucket|sum|count)$", "", name)
    labels = re.sub(r'le="[^"]*",?', "", labels).rstrip(",}")
    return f"{name}{{{labels}}}" if labels else name


class SimpleDBJobStore(AWSJobStore):
    """JobStore in two SimpleDB domains (created if missing).

    `client` is a boto3 "sdb" client. Every method raises BackendError when
    SimpleDB fails (after botocore's retries) or cannot be reached.
    """

    SERVICE = "sdb"

    def __init__(self, client, jobs_domain: str, nodes_domain: str):
        super().__init__(client)
        self.jobs_domain = jobs_domain
        self.nodes_domain = nodes_domain
        self._names: collections.OrderedDict[str, tuple[int, frozenset[str]]] = (
            collections.OrderedDict())
        for domain in (jobs_domain, nodes_domain):
            self._ensure_domain(domain)

    def create_job(self, job: Job) -> Job:
        """Store `job` as version 1 and return it. Raises ConflictError if the id exists
        (and was not written by this call: see the module docstring)."""
        token = new_write_token()
        pairs = _job_attributes(job, version=1, token=token)
        try:
            self._put(job.id, pairs, {"Name": "version", "Exists": False}, "create job")
        except ConflictError:
            if not self._took(job.id, 1, token):
                raise ConflictError(f"job {job.id} already exists") from None
        except BackendError:
            if not self._took(job.id, 1, token, reraise=False):
                raise
        return self._stored(job.id, pairs, exact=True)

    def get_job(self, job_id: str) -> Job:
        """The stored job, read consistently. Raises NotFound."""
        with _errors("get job"):
            answer = self._client.get_attributes(DomainName=self.jobs_domain, ItemName=job_id,
                                                 ConsistentRead=True)
        attrs = _as_dict(answer.get("Attributes", []))
        if "version" not in attrs:
            raise NotFound(f"job {job_id} not found")
        self._remember(job_id, int(attrs["version"]), attrs, exact=True)
        return _job_from_attributes(job_id, attrs)

    def update_job(self, job: Job, expected_version: int) -> Job:
        """Write every field of `job` if the stored version is `expected_version`.

        Returns the job as stored (version = expected_version + 1). Raises
        ConflictError if the version moved on, NotFound if the job is gone.
        """
        # The race: encoders A and B both read version v and both send
        # "PutAttributes(version = v + 1, ...) Expected version = v".
        # SimpleDB applies conditional puts to an item one at a time: the
        # first finds v and writes v + 1; the second finds v + 1, not v, and
        # gets ConditionalCheckFailed, so it loses and writes nothing.
        #
        #   A: read v ----- put if v -> ok (v + 1)
        #   B: read v ------------------- put if v -> ConditionalCheckFailed
        #
        # A job that is gone has no version: AttributeDoesNotExist, NotFound.
        #
        # A write whose answer was lost is resent by botocore and the resend
        # fails the condition, although the first one took:
        #
        #   A: put if v (token t) -> applied, answer lost -> put if v -> ConditionalCheckFailed
        #   A: consistent read -> version v + 1, token t: our own write, success
        token = new_write_token()
        pairs = _job_attributes(job, version=expected_version + 1, token=token)
        expected = {"Name": "version", "Value": _number(expected_version), "Exists": True}
        self._drop_stale_chunks(job.id, expected_version, {name for name, _ in pairs})
        try:
            self._put(job.id, pairs, expected, "update job")
        except ConflictError:
            if not self._took(job.id, expected_version + 1, token):
                raise ConflictError(
                    f"job {job.id} changed since version {expected_version}") from None
        except NotFound:
            raise NotFound(f"job {job.id} not found") from None
        except BackendError:
            if not self._took(job.id, expected_version + 1, token, reraise=False):
                raise
        return self._stored(job.id, pairs)

    def list_jobs(self, state: JobState | None = None, limit: int = 50,
                  cursor: str | None = None) -> tuple[list[Job], str | None]:
        """Jobs newest first (by created_at, then id), optionally of one state.

        One select sorted on `created_key`; a cursor continues strictly after
        the last job seen (keyset paging), so jobs created meanwhile never
        shift a page. Returns (page of at most `limit` jobs, next cursor or
        None). Raises ValidationError for a bad cursor or limit < 1.
        """
        if limit < 1:
            raise ValidationError("limit must be at least 1")
        where = [f"{_name('created_key')} < {_quote(_decode_cursor(cursor))}" if cursor
                 else f"{_name('created_key')} is not null"]
        if state is not None:
            where.insert(0, f"{_name('state')} = {_quote(JobState(state).value)}")
        wanted = limit + 1  # one more than asked tells whether a next page exists
        expression = (f"select * from {_name(self.jobs_domain)} where {' and '.join(where)} "
                      f"order by {_name('created_key')} desc "
                      f"limit {min(wanted, MAX_SELECT_LIMIT)}")
        items = self._select(expression, "list jobs", stop_after=wanted)
        page = [_job_from_attributes(item["Name"], _as_dict(item.get("Attributes", [])))
                for item in items[:limit]]
        if len(items) <= limit:
            return page, None
        return page, _encode_cursor(_created_key(page[-1]))

    def count_jobs(self, states: frozenset[JobState]) -> int:
        """How many jobs are in any of `states` (0 for no states)."""
        if not states:
            return 0
        values = ", ".join(_quote(JobState(s).value) for s in sorted(states))
        expression = (f"select count(*) from {_name(self.jobs_domain)} "
                      f"where {_name('state')} in ({values})")
        # A count that runs long comes back partial with a NextToken: add the parts.
        return sum(int(_as_dict(item["Attributes"])["Count"])
                   for item in self._select(expression, "count jobs"))

    def mark_announced(self, job_id: str, version: int) -> None:
        """Empty the job's outbox if it holds `version`: one PutAttributes of
        announce_version alone, conditional on it, so the version stays."""
        try:
            with _errors("mark job announced"):
                self._client.put_attributes(
                    DomainName=self.jobs_domain, ItemName=job_id,
                    Attributes=[{"Name": "announce_version", "Value": "", "Replace": True}],
                    Expected={"Name": "announce_version", "Value": _number(version),
                              "Exists": True})
        except (ConflictError, NotFound):
            pass  # another change waits in the outbox now, or the job is gone

    def list_unannounced(self, updated_before, limit: int = 100) -> list[Job]:
        """Jobs with a state change to announce, updated before `updated_before`."""
        expression = (f"select * from {_name(self.jobs_domain)} "
                      f"where {_name('announce_version')} > '' "
                      f"and {_name('updated_at')} < {_quote(_sdb_time(updated_before))} "
                      f"limit {min(limit, MAX_SELECT_LIMIT)}")
        items = self._select(expression, "list unannounced jobs", stop_after=limit)
        return [_job_from_attributes(item["Name"], _as_dict(item.get("Attributes", [])))
                for item in items[:limit]]

    def put_node(self, node: Node) -> None:
        """Create or replace the report of encoder `node.id` (the original's attributes)."""
        pairs = [("id", node.id), ("state", node.state),
                 ("active_jobs", _number(node.active_jobs)),
                 ("last_report_dtime", _sdb_time(node.last_report)),
                 ("started_at", _sdb_time(node.started_at))]
        with _errors("put node"):
            self._client.put_attributes(
                DomainName=self.nodes_domain, ItemName=node.id,
                Attributes=[{"Name": n, "Value": v, "Replace": True} for n, v in pairs])

    def list_nodes(self) -> list[Node]:
        """Every encoder report, by id."""
        items = self._select(f"select * from {_name(self.nodes_domain)}", "list nodes")
        nodes = []
        for item in items:
            attrs = _as_dict(item.get("Attributes", []))
            nodes.append(Node(id=item["Name"], state=attrs["state"],
                              active_jobs=int(attrs["active_jobs"]),
                              last_report=text_to_time(attrs["last_report_dtime"]),
                              started_at=text_to_time(attrs["started_at"]),
                              draining=attrs.get("draining") == "1"))
        return sorted(nodes, key=lambda node: node.id)

    def mark_node_draining(self, node_id: str) -> None:
        """Set encoder `node_id`'s draining mark; no error if unknown (put_node
        writes only its own attributes, so it keeps the mark)."""
        try:
            with _errors("mark node draining"):
                self._client.put_attributes(
                    DomainName=self.nodes_domain, ItemName=node_id,
                    Attributes=[{"Name": "draining", "Value": "1", "Replace": True}],
                    Expected={"Name": "id", "Value": node_id, "Exists": True})
        except (ConflictError, NotFound):
            pass  # no such report: nothing to mark

    def delete_node(self, node_id: str) -> None:
        """Forget encoder `node_id`; no error if unknown (SimpleDB's own behaviour)."""
        with _errors("delete node"):
            self._client.delete_attributes(DomainName=self.nodes_domain, ItemName=node_id)

    def add_counters(self, increments: dict[str, float]) -> None:
        """Add to named counters: per metric name, read then put conditional
        on the item's version, again when another writer got there first."""
        families: dict[str, dict[str, float]] = {}
        for key, amount in increments.items():
            families.setdefault(_counter_family(key), {})[key] = amount
        for family, amounts in sorted(families.items()):
            self._add_to_item(_COUNTERS_PREFIX + family, family, amounts)

    def _add_to_item(self, item_name: str, family: str, amounts: dict[str, float]) -> None:
        for _ in range(_COUNTER_RETRIES):
            with _errors("read counters"):
                answer = self._client.get_attributes(
                    DomainName=self.jobs_domain, ItemName=item_name, ConsistentRead=True)
            stored = _as_dict(answer.get("Attributes", []))
            version = int(stored.get("counters_version", "0"))
            expected = ({"Name": "counters_version", "Value": _number(version), "Exists": True}
                        if version else {"Name": "counters_version", "Exists": False})
            pairs = [("counters_version", _number(version + 1)), ("counters_family", family)]
            pairs += [(key, repr(float(stored.get(key, 0.0)) + amount))
                      for key, amount in sorted(amounts.items())]
            try:
                self._put(item_name, pairs, expected, "add counters")
                return
            except ConflictError:
                continue
        raise ConflictError(f"counters {family} kept changing; the add was dropped")

    def read_counters(self) -> dict[str, float]:
        expression = (f"select * from {_name(self.jobs_domain)} "
                      f"where {_name('counters_family')} is not null")
        values: dict[str, float] = {}
        for item in self._select(expression, "read counters"):
            for key, value in _as_dict(item.get("Attributes", [])).items():
                if key not in ("counters_version", "counters_family"):
                    values[key] = float(value)
        return values

    def _ensure_domain(self, domain: str) -> None:
        # CreateDomain of an existing domain is harmless but slow on AWS (it
        # may take seconds), so every process opening the store asks first.
        try:
            with aws_errors(f"domain {domain}"):
                self._client.domain_metadata(DomainName=domain)
        except NotFound:
            with aws_errors(f"create domain {domain}"):
                self._client.create_domain(DomainName=domain)

    def _took(self, job_id: str, version: int, token: str, reraise: bool = True) -> bool:
        """Whether the stored job is at `version` with `token`: the write that
        carried them took. A failed read raises (or, with reraise False, is
        taken as "not known to have taken")."""
        try:
            with _errors("check job write"):
                answer = self._client.get_attributes(
                    DomainName=self.jobs_domain, ItemName=job_id, ConsistentRead=True,
                    AttributeNames=["version", "write_token"])
        except BackendError:
            if reraise:
                raise
            return False
        attrs = _as_dict(answer.get("Attributes", []))
        return attrs.get("version") == _number(version) and attrs.get("write_token") == token

    def _stored(self, job_id: str, pairs: list[tuple[str, str]], exact: bool = False) -> Job:
        attrs = dict(pairs)
        self._remember(job_id, int(attrs["version"]), attrs, exact)
        return _job_from_attributes(job_id, attrs)

    def _remember(self, job_id: str, version: int, attrs: dict[str, str],
                  exact: bool = False) -> None:
        """Note the attribute names job `job_id` has stored at `version`: all of
        them (`exact`, from a read) or those written. A write adds names and
        never removes one (stale chunks stay), so the names after a write are
        the union of those before and those written; unknown if not known before."""
        names = frozenset(attrs)
        known = self._names.pop(job_id, None)
        if not exact:
            if known is None or known[0] != version - 1:
                return
            names |= known[1]
        self._names[job_id] = (version, names)
        while len(self._names) > _NAMES_CACHE_JOBS:
            self._names.popitem(last=False)

    def _drop_stale_chunks(self, job_id: str, version: int, writing: set[str]) -> None:
        """Delete chunks of earlier, longer values that would take the item past
        SimpleDB's 256 name-value pairs once `writing` is added.

        SimpleDB counts every stored pair, stale chunks too. The names stored
        at `version` are known from the read or write that gave this version
        (else one read of them). The delete is conditional on `version`, so it
        never touches a newer write; a stale chunk is never read, so deleting
        it changes nothing a reader sees. Raises ValidationError if the job is
        too large even without them.
        """
        _check_size(job_id, len(writing))
        known = self._names.get(job_id)
        if known is None or known[0] != version:
            with _errors("count job attributes"):
                answer = self._client.get_attributes(DomainName=self.jobs_domain,
                                                     ItemName=job_id, ConsistentRead=True)
            stored = frozenset(_as_dict(answer.get("Attributes", [])))
        else:
            stored = known[1]
        if len(stored | writing) <= MAX_ITEM_ATTRIBUTES:
            return
        stale = sorted(stored - writing)
        expected = {"Name": "version", "Value": _number(version), "Exists": True}
        for start in range(0, len(stale), MAX_ITEM_ATTRIBUTES):
            names = stale[start:start + MAX_ITEM_ATTRIBUTES]
            # boto3 wants each deleted pair's value: read them (a rare path).
            with _errors("read stale chunks"):
                values = _as_dict(self._client.get_attributes(
                    DomainName=self.jobs_domain, ItemName=job_id, ConsistentRead=True,
                    AttributeNames=names).get("Attributes", []))
            if not values:
                continue  # no pairs would delete the whole item
            with _errors("delete stale chunks"):
                self._client.delete_attributes(
                    DomainName=self.jobs_domain, ItemName=job_id, Expected=expected,
                    Attributes=[{"Name": n, "Value": v} for n, v in values.items()])
        self._names[job_id] = (version, stored - set(stale))

    def _put(self, item_name: str, pairs: list[tuple[str, str]], expected: dict,
             what: str) -> None:
        with _errors(what):
            self._client.put_attributes(
                DomainName=self.jobs_domain, ItemName=item_name, Expected=expected,
                Attributes=[{"Name": n, "Value": v, "Replace": True} for n, v in pairs])

    def _select(self, expression: str, what: str, stop_after: int | None = None) -> list[dict]:
        """Every item `expression` selects, following NextToken, or the first
        `stop_after` of them. SimpleDB may end a page early (size or time
        limits) with a NextToken, so a short page does not mean the end."""
        items: list[dict] = []
        token = None
        while stop_after is None or len(items) < stop_after:
            request = {"SelectExpression": expression, "ConsistentRead": True}
            if token:
                request["NextToken"] = token
            with _errors(what):
                answer = self._client.select(**request)
            items.extend(answer.get("Items", []))
            token = answer.get("NextToken")
            if not token:
                break
        return items
