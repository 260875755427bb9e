"""The SimpleDB test server answers the real boto3 `sdb` client as AWS does,
and the SimpleDB job store's own encoding rides on it correctly."""
from __future__ import annotations

import base64
import dataclasses
import json
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

import boto3
import botocore.config
import botocore.exceptions
import pytest

from tests.fixtures.aws import unique_name
from core.aws import client as aws_client
from core.errors import BackendError
from core.jobs import Job, JobState
from core.settings import Settings
from core.stores.simpledb import SimpleDBJobStore
from tests.fixtures.simpledb_server import SimpleDBServer

def _sdb(endpoint_url: str):
    return boto3.session.Session().client(
        "sdb", endpoint_url=endpoint_url, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
        config=botocore.config.Config(retries={"mode": "standard", "max_attempts": 1}))


@pytest.fixture
def sdb(simpledb_server):
    client = _sdb(simpledb_server.endpoint_url)
    yield client
    client.close()


@pytest.fixture
def domain(sdb):
    name = unique_name("dom")
    sdb.create_domain(DomainName=name)
    yield name
    sdb.delete_domain(DomainName=name)


def _error(call, **kwargs) -> tuple[str, int]:
    """(error code, HTTP status) of a call that must fail."""
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        call(**kwargs)
    response = caught.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def _post(endpoint_url: str, **params) -> tuple[int, ET.Element]:
    """A raw form POST, for requests boto3 refuses to build."""
    data = urllib.parse.urlencode({"Version": "2009-04-15", **params}).encode()
    try:
        with urllib.request.urlopen(endpoint_url, data, timeout=10) as answer:
            return answer.status, ET.fromstring(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, ET.fromstring(error.read())


def _attrs(pairs: dict[str, str], replace: bool = False) -> list[dict]:
    return [{"Name": n, "Value": v, "Replace": replace} for n, v in pairs.items()]


def _put_items(sdb, domain: str, items: dict[str, dict[str, str]]) -> None:
    for name, pairs in items.items():
        sdb.put_attributes(DomainName=domain, ItemName=name, Attributes=_attrs(pairs))


def _select_names(sdb, expression: str) -> list[str]:
    names, token = [], None
    while True:
        extra = {"NextToken": token} if token else {}
        answer = sdb.select(SelectExpression=expression, ConsistentRead=True, **extra)
        names.extend(item["Name"] for item in answer.get("Items", []))
        token = answer.get("NextToken")
        if not token:
            return names


# --- domains ---

def test_domains_are_created_idempotently_listed_in_pages_and_deleted(sdb):
    prefix = unique_name("list")
    names = [f"{prefix}-{n}" for n in range(5)]
    for name in names + names[:2]:
        sdb.create_domain(DomainName=name)
    listed, token = [], None
    while True:
        extra = {"NextToken": token} if token else {}
        answer = sdb.list_domains(MaxNumberOfDomains=2, **extra)
        assert len(answer["DomainNames"]) <= 2
        listed.extend(answer["DomainNames"])
        token = answer.get("NextToken")
        if not token:
            break
    assert [n for n in listed if n.startswith(prefix)] == names
    for name in names + names[:1]:
        sdb.delete_domain(DomainName=name)
    assert not [n for n in sdb.list_domains().get("DomainNames", []) if n.startswith(prefix)]


def test_a_bad_domain_name_is_an_invalid_parameter(sdb):
    assert _error(sdb.create_domain, DomainName="no spaces allowed") == (
        "InvalidParameterValue", 400)
    assert _error(sdb.create_domain, DomainName="ab") == ("InvalidParameterValue", 400)


def test_every_call_on_an_unknown_domain_is_no_such_domain(sdb):
    missing = unique_name("missing")
    calls = [
        (sdb.put_attributes, dict(DomainName=missing, ItemName="i", Attributes=_attrs({"a": "1"}))),
        (sdb.get_attributes, dict(DomainName=missing, ItemName="i")),
        (sdb.delete_attributes, dict(DomainName=missing, ItemName="i")),
        (sdb.domain_metadata, dict(DomainName=missing)),
        (sdb.select, dict(SelectExpression=f"select * from `{missing}`")),
        (sdb.batch_put_attributes, dict(DomainName=missing, Items=[
            {"Name": "i", "Attributes": _attrs({"a": "1"})}])),
    ]
    for call, kwargs in calls:
        assert _error(call, **kwargs) == ("NoSuchDomain", 400), call


def test_domain_metadata_counts_items_names_and_values(sdb, domain):
    _put_items(sdb, domain, {"one": {"a": "xy", "b": "z"}, "two": {"a": "xyz"}})
    sdb.put_attributes(DomainName=domain, ItemName="two", Attributes=_attrs({"a": "w"}))
    meta = sdb.domain_metadata(DomainName=domain)
    assert (meta["ItemCount"], meta["ItemNamesSizeBytes"]) == (2, 6)
    assert (meta["AttributeNameCount"], meta["AttributeNamesSizeBytes"]) == (2, 2)
    assert (meta["AttributeValueCount"], meta["AttributeValuesSizeBytes"]) == (4, 7)
    assert abs(meta["Timestamp"] - time.time()) < 60


# --- puts, gets, deletes ---

def test_values_accumulate_unless_replaced_and_get_can_name_attributes(sdb, domain):
    sdb.put_attributes(DomainName=domain, ItemName="i", Attributes=[
        {"Name": "color", "Value": "red"}, {"Name": "color", "Value": "blue"},
        {"Name": "size", "Value": "L"}])
    sdb.put_attributes(DomainName=domain, ItemName="i", Attributes=[
        {"Name": "color", "Value": "red"}, {"Name": "color", "Value": "green"}])

    got = sdb.get_attributes(DomainName=domain, ItemName="i", ConsistentRead=True)
    assert sorted((a["Name"], a["Value"]) for a in got["Attributes"]) == [
        ("color", "blue"), ("color", "green"), ("color", "red"), ("size", "L")]

    sdb.put_attributes(DomainName=domain, ItemName="i",
                       Attributes=_attrs({"color": "black"}, replace=True))
    only = sdb.get_attributes(DomainName=domain, ItemName="i", AttributeNames=["color"])
    assert only["Attributes"] == [{"Name": "color", "Value": "black"}]
    assert "Attributes" not in sdb.get_attributes(DomainName=domain, ItemName="nothing-here")


def test_expected_value_guards_a_put_as_aws_does(sdb, domain):
    put = sdb.put_attributes
    put(DomainName=domain, ItemName="job", Attributes=_attrs({"version": "001"}),
        Expected={"Name": "version", "Exists": False})

    assert _error(put, DomainName=domain, ItemName="job",
                  Attributes=_attrs({"version": "002"}, replace=True),
                  Expected={"Name": "version", "Exists": False}) == ("ConditionalCheckFailed", 409)
    assert _error(put, DomainName=domain, ItemName="job",
                  Attributes=_attrs({"version": "002"}, replace=True),
                  Expected={"Name": "version", "Value": "007"}) == ("ConditionalCheckFailed", 409)
    assert _error(put, DomainName=domain, ItemName="gone",
                  Attributes=_attrs({"version": "002"}, replace=True),
                  Expected={"Name": "version", "Value": "001"}) == ("AttributeDoesNotExist", 404)
    put(DomainName=domain, ItemName="job", Attributes=_attrs({"version": "002"}, replace=True),
        Expected={"Name": "version", "Value": "001", "Exists": True})

    got = sdb.get_attributes(DomainName=domain, ItemName="job", ConsistentRead=True)
    assert got["Attributes"] == [{"Name": "version", "Value": "002"}]
    assert "Attributes" not in sdb.get_attributes(DomainName=domain, ItemName="gone")


def test_malformed_expectations_are_refused(sdb, domain):
    put = sdb.put_attributes
    sdb.put_attributes(DomainName=domain, ItemName="i", Attributes=[
        {"Name": "tag", "Value": "a"}, {"Name": "tag", "Value": "b"}])
    assert _error(put, DomainName=domain, ItemName="i", Attributes=_attrs({"x": "1"}),
                  Expected={"Name": "tag", "Value": "a"}) == ("MultiValuedAttribute", 409)
    assert _error(put, DomainName=domain, ItemName="i", Attributes=_attrs({"x": "1"}),
                  Expected={"Name": "tag", "Value": "a", "Exists": False}) == (
        "ExistsAndExpectedValue", 400)
    assert _error(put, DomainName=domain, ItemName="i", Attributes=_attrs({"x": "1"}),
                  Expected={"Name": "tag"}) == ("IncompleteExpectedExpression", 400)


def test_the_documented_expected_1_form_is_understood_too(simpledb_server, sdb, domain):
    sdb.put_attributes(DomainName=domain, ItemName="i", Attributes=_attrs({"v": "1"}))
    status, body = _post(simpledb_server.endpoint_url, Action="PutAttributes",
                         DomainName=domain, ItemName="i", **{
                             "Attribute.1.Name": "v", "Attribute.1.Value": "2",
                             "Attribute.1.Replace": "true", "Expected.1.Name": "v",
                             "Expected.1.Value": "9"})
    assert status == 409
    assert body.find("Errors/Error/Code").text == "ConditionalCheckFailed"
    assert body.find("RequestID").text


def test_only_one_of_many_concurrent_conditional_puts_wins(simpledb_server, domain):
    first = _sdb(simpledb_server.endpoint_url)
    first.put_attributes(DomainName=domain, ItemName="job", Attributes=_attrs({"version": "1"}))
    outcomes: list[str] = []
    start = threading.Barrier(12, timeout=10)

    def racer(n: int) -> None:
        client = _sdb(simpledb_server.endpoint_url)
        start.wait()
        try:
            client.put_attributes(DomainName=domain, ItemName="job",
                                  Attributes=_attrs({"version": "2", "by": str(n)}, True),
                                  Expected={"Name": "version", "Value": "1"})
            outcomes.append("won")
        except client.exceptions.ClientError as error:
            outcomes.append(error.response["Error"]["Code"])

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["ConditionalCheckFailed"] * 11 + ["won"]
    got = first.get_attributes(DomainName=domain, ItemName="job", ConsistentRead=True)
    assert len([a for a in got["Attributes"] if a["Name"] == "by"]) == 1


def test_delete_attributes_by_pair_by_name_whole_item_and_on_condition(
        simpledb_server, sdb, domain):
    sdb.put_attributes(DomainName=domain, ItemName="i", Attributes=[
        {"Name": "a", "Value": "1"}, {"Name": "a", "Value": "2"}, {"Name": "b", "Value": "x"},
        {"Name": "c", "Value": "y"}, {"Name": "v", "Value": "5"}])
    sdb.delete_attributes(DomainName=domain, ItemName="i", Attributes=[{"Name": "a", "Value": "1"}])
    # boto3's model insists on a Value; AWS deletes every value of a name sent alone.
    status, _ = _post(simpledb_server.endpoint_url, Action="DeleteAttributes", DomainName=domain,
                      ItemName="i", **{"Attribute.1.Name": "b"})
    assert status == 200
    got = sdb.get_attributes(DomainName=domain, ItemName="i", ConsistentRead=True)
    assert sorted((a["Name"], a["Value"]) for a in got["Attributes"]) == [
        ("a", "2"), ("c", "y"), ("v", "5")]

    assert _error(sdb.delete_attributes, DomainName=domain, ItemName="i",
                  Expected={"Name": "v", "Value": "4"}) == ("ConditionalCheckFailed", 409)
    sdb.delete_attributes(DomainName=domain, ItemName="i", Expected={"Name": "v", "Value": "5"})
    assert "Attributes" not in sdb.get_attributes(DomainName=domain, ItemName="i")
    sdb.delete_attributes(DomainName=domain, ItemName="never-there")
    assert sdb.domain_metadata(DomainName=domain)["ItemCount"] == 0


def test_batch_put_and_batch_delete_up_to_25_items(sdb, domain):
    items = [{"Name": f"item-{n:02d}", "Attributes": _attrs({"n": f"{n:02d}", "k": "x"})}
             for n in range(26)]
    assert _error(sdb.batch_put_attributes, DomainName=domain, Items=items) == (
        "NumberSubmittedItemsExceeded", 409)
    assert _error(sdb.batch_put_attributes, DomainName=domain,
                  Items=[items[0], items[0]]) == ("DuplicateItemName", 400)
    assert sdb.domain_metadata(DomainName=domain)["ItemCount"] == 0, "a refused batch writes nothing"

    sdb.batch_put_attributes(DomainName=domain, Items=items[:25])
    assert sdb.domain_metadata(DomainName=domain)["ItemCount"] == 25
    sdb.batch_delete_attributes(DomainName=domain, Items=[
        {"Name": f"item-{n:02d}", "Attributes": [{"Name": "k", "Value": "x"}]} for n in range(5)])
    sdb.batch_delete_attributes(DomainName=domain, Items=[
        {"Name": f"item-{n:02d}"} for n in range(5, 25)])
    assert _select_names(sdb, f"select itemName() from `{domain}`") == [
        f"item-{n:02d}" for n in range(5)]
    assert _select_names(sdb, f"select * from `{domain}` where k is not null") == []


# --- limits ---

def test_names_and_values_are_capped_at_1024_bytes(sdb, domain):
    put = sdb.put_attributes
    put(DomainName=domain, ItemName="i", Attributes=_attrs({"n" * 1024: "v" * 1024}))
    # 513 two-byte characters: 1026 bytes.
    assert _error(put, DomainName=domain, ItemName="i",
                  Attributes=_attrs({"a": "é" * 513})) == ("InvalidParameterValue", 400)
    assert _error(put, DomainName=domain, ItemName="i",
                  Attributes=_attrs({"n" * 1025: "v"})) == ("InvalidParameterValue", 400)
    assert _error(put, DomainName=domain, ItemName="i" * 1025,
                  Attributes=_attrs({"a": "v"})) == ("InvalidParameterValue", 400)


def test_256_pairs_per_call_and_per_item(sdb, domain):
    put = sdb.put_attributes
    too_many = {f"a{n:03d}": "v" for n in range(257)}
    assert _error(put, DomainName=domain, ItemName="i", Attributes=_attrs(too_many)) == (
        "NumberSubmittedAttributesExceeded", 409)
    put(DomainName=domain, ItemName="i", Attributes=_attrs(dict(list(too_many.items())[:200])))
    assert _error(put, DomainName=domain, ItemName="i",
                  Attributes=_attrs(dict(list(too_many.items())[200:]))) == (
        "NumberItemAttributesExceeded", 409)
    put(DomainName=domain, ItemName="i", Attributes=_attrs(dict(list(too_many.items())[200:256])))
    got = sdb.get_attributes(DomainName=domain, ItemName="i", ConsistentRead=True)
    assert len(got["Attributes"]) == 256


def test_missing_parameters_and_unknown_actions_are_errors(simpledb_server, domain):
    url = simpledb_server.endpoint_url
    status, body = _post(url, Action="PutAttributes", DomainName=domain, ItemName="i")
    assert (status, body.find("Errors/Error/Code").text) == (400, "MissingParameter")
    status, body = _post(url, Action="GetAttributes", DomainName=domain)
    assert (status, body.find("Errors/Error/Code").text) == (400, "MissingParameter")
    status, body = _post(url, Action="Select")
    assert (status, body.find("Errors/Error/Code").text) == (400, "MissingParameter")
    status, body = _post(url, Action="Frobnicate")
    assert (status, body.find("Errors/Error/Code").text) == (400, "InvalidAction")
    assert body.tag == "Response" and body.find("Errors/Error/Message").text


def test_values_xml_cannot_carry_come_back_base64_as_aws_sends_them(sdb, domain):
    sdb.put_attributes(DomainName=domain, ItemName="i",
                       Attributes=_attrs({"bell": "ding\x07", "crlf": "a\r\nb"}))
    got = {a["Name"]: a for a in sdb.get_attributes(DomainName=domain, ItemName="i")["Attributes"]}
    assert got["bell"]["AlternateValueEncoding"] == "base64"
    assert base64.b64decode(got["bell"]["Value"]) == b"ding\x07"
    assert got["crlf"]["Value"] == "a\r\nb"


# --- select ---

@pytest.fixture
def people(sdb, domain):
    _put_items(sdb, domain, {
        "ann": {"age": "09", "city": "Oslo", "name": "Ann O'Neil"},
        "bob": {"age": "10", "city": "Bergen", "name": "Bob"},
        "cyd": {"age": "31", "city": "Oslo"},
        "dee": {"age": "45", "name": "Dee"},
    })
    sdb.put_attributes(DomainName=domain, ItemName="eve", Attributes=[
        {"Name": "tag", "Value": "x"}, {"Name": "tag", "Value": "y"}, {"Name": "age", "Value": "9"}])
    return domain


@pytest.mark.parametrize("where, expected", [
    ("age > '10'", ["cyd", "dee", "eve"]),            # lexicographic: "9" > "10"
    ("age < '10'", ["ann"]),
    ("age >= '10' and age <= '31'", ["bob", "cyd"]),
    ("age between '10' and '31'", ["bob", "cyd"]),
    ("city = 'Oslo'", ["ann", "cyd"]),
    ("city != 'Oslo'", ["bob"]),                       # items without city never match
    ("city is null", ["dee", "eve"]),
    ("name is not null and not city = 'Oslo'", ["bob", "dee"]),
    ("name like 'B%'", ["bob"]),
    ("name like '%Neil'", ["ann"]),
    ("name not like '%ee'", ["ann", "bob"]),
    ("city in ('Bergen', 'Oslo')", ["ann", "bob", "cyd"]),
    ("tag = 'y'", ["eve"]),
    ("every(tag) = 'y'", []),
    ("every(tag) in ('x', 'y')", ["eve"]),
    ("(city = 'Bergen' or age = '45') and name is not null", ["bob", "dee"]),
    ("itemName() in ('ann', 'zed')", ["ann"]),
    ("itemName() > 'c'", ["cyd", "dee", "eve"]),
    ("name = 'Ann O''Neil'", ["ann"]),
    ('name = "Bob"', ["bob"]),
    ("`age` = '31'", ["cyd"]),
])
def test_select_where_follows_aws_semantics(sdb, people, where, expected):
    assert sorted(_select_names(sdb, f"select * from `{people}` where {where}")) == expected


def test_select_orders_by_a_predicate_attribute_and_pages_with_next_token(sdb, people):
    base = f"select * from `{people}` where age is not null order by age"
    assert _select_names(sdb, base + " desc") == ["eve", "dee", "cyd", "bob", "ann"]
    assert _select_names(sdb, base + " asc limit 2") == ["ann", "bob", "cyd", "dee", "eve"]
    first = sdb.select(SelectExpression=base + " limit 2")
    assert [i["Name"] for i in first["Items"]] == ["ann", "bob"] and first["NextToken"]
    assert _error(sdb.select, SelectExpression=base + " limit 3",
                  NextToken=first["NextToken"]) == ("InvalidNextToken", 400)
    assert _error(sdb.select, SelectExpression=base, NextToken="garbage") == (
        "InvalidNextToken", 400)


def test_select_refuses_a_sort_on_an_attribute_outside_the_where_clause(sdb, people):
    for expression in (f"select * from `{people}` order by age",
                       f"select * from `{people}` where city = 'Oslo' order by age",
                       f"select * from `{people}` where age is null order by age"):
        assert _error(sdb.select, SelectExpression=expression) == ("InvalidSortExpression", 400)


def test_select_outputs_count_item_names_and_chosen_attributes(sdb, people):
    count = sdb.select(SelectExpression=f"select count(*) from `{people}` where age > '1'")
    assert count["Items"] == [{"Name": "Domain", "Attributes": [{"Name": "Count", "Value": "4"}]}]
    names = sdb.select(SelectExpression=f"select itemName() from `{people}` where city = 'Oslo'")
    assert names["Items"] == [{"Name": "ann"}, {"Name": "cyd"}]
    chosen = sdb.select(SelectExpression=f"select name, `city` from `{people}` "
                                         f"where itemName() = 'ann'")
    assert chosen["Items"][0]["Attributes"] == [{"Name": "city", "Value": "Oslo"},
                                                {"Name": "name", "Value": "Ann O'Neil"}]


def test_select_default_page_is_100_items_and_a_count_is_summed_over_pages(sdb, domain):
    for start in range(0, 230, 25):
        sdb.batch_put_attributes(DomainName=domain, Items=[
            {"Name": f"i{n:03d}", "Attributes": _attrs({"n": f"{n:03d}"})}
            for n in range(start, min(start + 25, 230))])
    first = sdb.select(SelectExpression=f"select * from `{domain}`")
    assert len(first["Items"]) == 100 and first["NextToken"]
    assert _select_names(sdb, f"select * from `{domain}`") == [f"i{n:03d}" for n in range(230)]
    counts, token = [], None
    while True:
        extra = {"NextToken": token} if token else {}
        answer = sdb.select(SelectExpression=f"select count(*) from `{domain}` limit 100", **extra)
        counts.append(int(answer["Items"][0]["Attributes"][0]["Value"]))
        token = answer.get("NextToken")
        if not token:
            break
    assert counts == [100, 100, 30]


@pytest.mark.parametrize("expression", [
    "select * from",
    "select * from `{d}` where age = 10",          # values must be quoted
    "select * from `{d}` where age === '1'",
    "select * from `{d}` where order = '1'",       # a keyword must be backticked
    "select * from `{d}` limit 2501",
    "select * from `{d}` where age = '1' and",
])
def test_malformed_selects_are_refused(sdb, domain, expression):
    code, status = _error(sdb.select, SelectExpression=expression.format(d=domain))
    assert status == 400 and code in ("InvalidQueryExpression", "InvalidParameterValue")


# --- a server whose select pages are cut by size ---

@pytest.fixture(scope="module")
def small_pages_server(tmp_path_factory):
    """A second server (a world of its own) whose select pages end at 3000 bytes."""
    server = SimpleDBServer(str(tmp_path_factory.mktemp("sdb-small") / "server.log"),
                            max_response_bytes=3000)
    yield server
    server.stop()


def test_a_page_cut_by_size_ends_early_with_a_next_token(small_pages_server):
    sdb = _sdb(small_pages_server.endpoint_url)
    domain = unique_name("big")
    sdb.create_domain(DomainName=domain)
    _put_items(sdb, domain, {f"i{n}": {"v": "x" * 1000} for n in range(7)})
    first = sdb.select(SelectExpression=f"select * from `{domain}` limit 5")
    assert len(first["Items"]) == 2 and first["NextToken"]
    assert _select_names(sdb, f"select * from `{domain}` limit 5") == [f"i{n}" for n in range(7)]


def test_the_store_fills_its_pages_when_select_pages_end_early(small_pages_server):
    store = SimpleDBJobStore(_sdb(small_pages_server.endpoint_url),
                             unique_name("jobs"), unique_name("nodes"))
    t0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
    for n in range(9):
        store.create_job(Job(id=f"job-{n}", source="s3://in/a.mov", destination="s3://out/a.mp4",
                             options={"pad": "p" * 600}, created_at=t0.replace(minute=n)))
    page, cursor = store.list_jobs(limit=4)
    assert [j.id for j in page] == ["job-8", "job-7", "job-6", "job-5"]
    page, cursor = store.list_jobs(limit=4, cursor=cursor)
    assert [j.id for j in page] == ["job-4", "job-3", "job-2", "job-1"]
    assert store.list_jobs(limit=4, cursor=cursor) == ([store.get_job("job-0")], None)
    assert store.count_jobs(frozenset({JobState.PENDING})) == 9


# --- the SimpleDB store's encoding ---

@pytest.fixture
def sdb_store(sdb):
    store = SimpleDBJobStore(sdb, unique_name("jobs"), unique_name("nodes"))
    yield store
    for name in (store.jobs_domain, store.nodes_domain):
        sdb.delete_domain(DomainName=name)


def _raw(sdb, store, job_id: str) -> dict[str, str]:
    got = sdb.get_attributes(DomainName=store.jobs_domain, ItemName=job_id, ConsistentRead=True)
    return {a["Name"]: a["Value"] for a in got["Attributes"]}


def test_long_values_are_split_into_1024_byte_attributes_and_joined_back(sdb, sdb_store):
    options = {"passes": [{"outfile_options": [["-metadata", f"title=ünïcode {n}"]]}
                          for n in range(200)]}
    details = "ffmpeg said:\r\n\x1b[31mError\x1b[0m " + "é" * 1000
    job = Job(id="job-1", source="s3://in/" + "k" * 3000, destination="s3://out/x.mp4",
              options=options, state_details=details)
    sdb_store.create_job(job)

    raw = _raw(sdb, sdb_store, "job-1")
    assert int(raw["options__count"]) > 5 and int(raw["source__count"]) == 3
    assert all(len(value.encode()) <= 1024 for value in raw.values())
    assert all(value.isascii() for value in raw.values())
    assert sdb_store.get_job("job-1") == dataclasses.replace(job, version=1)

    shorter = dataclasses.replace(job, options={"preset": "web"}, source="s3://in/a.mov")
    sdb_store.update_job(shorter, expected_version=1)
    assert sdb_store.get_job("job-1") == dataclasses.replace(shorter, version=2)


def test_numbers_are_zero_padded_and_times_fixed_width_utc(sdb, sdb_store):
    sdb_store.create_job(Job(id="job-1", source="s3://a/b", destination="s3://c/d",
                             options={}, progress=7, attempts=2,
                             created_at=datetime(2024, 5, 1, 12, tzinfo=timezone.utc)))
    raw = _raw(sdb, sdb_store, "job-1")
    assert (raw["version"], raw["progress"], raw["attempts"]) == (
        "0000000001", "0000000007", "0000000002")
    assert raw["created_at"] == "2024-05-01T12:00:00.000000+00:00"
    assert raw["created_key"] == "2024-05-01T12:00:00.000000+00:00|job-1"
    assert raw["lease_expires_at"] == ""


def test_store_from_settings_uses_the_domains_the_settings_name(simpledb_server, sdb):
    jobs, nodes = unique_name("media_nommer"), unique_name("media_nommer_ec2nommer_state")
    settings = Settings(backend="aws", aws_endpoint_url=simpledb_server.endpoint_url,
                        simpledb_job_state_domain=jobs, simpledb_ec2_nommer_state_domain=nodes)
    store = SimpleDBJobStore.from_settings(settings)
    try:
        assert {jobs, nodes} <= set(sdb.list_domains()["DomainNames"])
        assert store.list_jobs() == ([], None)
    finally:
        store.close()
        for name in (jobs, nodes):
            sdb.delete_domain(DomainName=name)


def test_an_unreachable_simpledb_is_a_backend_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = Settings(backend="aws", aws_endpoint_url=f"http://127.0.0.1:{port}")
    with pytest.raises(BackendError):
        SimpleDBJobStore(aws_client(settings, "sdb", max_attempts=1, connect_timeout_s=2),
                         "jobs-domain", "nodes-domain")


# --- the server as a program ---

def test_the_server_runs_as_a_program_on_the_port_given(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "tests.fixtures.simpledb_server", "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               cwd=Path(__file__).resolve().parents[2])
    try:
        ready, _, _ = select.select([process.stdout], [], [], 30)
        assert ready, "the server said nothing for 30 s"
        assert process.stdout.readline().decode().strip() == f"listening on http://127.0.0.1:{port}"
        sdb = _sdb(f"http://127.0.0.1:{port}")
        sdb.create_domain(DomainName="only-here")
        assert sdb.list_domains()["DomainNames"] == ["only-here"], "a world of its own"
        sdb.close()
    finally:
        process.terminate()
        process.communicate(timeout=10)


def test_json_is_what_the_store_writes_for_text(sdb, sdb_store):
    sdb_store.create_job(Job(id="job-1", source="s3://a/b", destination="s3://c/d",
                             options={"k": 1}, notify_url=None))
    raw = _raw(sdb, sdb_store, "job-1")
    assert json.loads(raw["notify_url__0"]) is None
    assert json.loads(raw["source__0"]) == "s3://a/b"
