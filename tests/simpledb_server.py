"""A SimpleDB test server: SimpleDB's Query API (version 2009-04-15) over
real HTTP, with AWS's documented semantics for what the job store uses.

moto's SimpleDB lacks Select, the batch calls, DeleteAttributes and
DomainMetadata and ignores `Expected`, so the tests run the real boto3
`sdb` client against this instead. What it implements and what it does not
is in docs/simpledb-test-server.md. Signatures are not checked.

Run it:   python tests/simpledb_server.py --port 8089
Use it:   boto3.client("sdb", endpoint_url="http://127.0.0.1:8089", ...)
In tests: the session-scoped `simpledb_server` fixture (its `endpoint_url`).

One server process is one isolated world: its domains live in its memory.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import simpledb_select
from processes import stop_process

NAMESPACE = "http://sdb.amazonaws.com/doc/2009-04-15/"
API_VERSION = "2009-04-15"
# AWS's limits.
MAX_NAME_OR_VALUE_BYTES = 1024
MAX_PAIRS_PER_ITEM = 256
MAX_PAIRS_PER_CALL = 256
MAX_ITEMS_PER_BATCH = 25
MAX_DOMAINS = 250
MAX_RESPONSE_BYTES = 1024 * 1024
_BOX_USAGE = "0.0000219907"
_DOMAIN_NAME = re.compile(r"[a-zA-Z0-9_.-]{3,255}")
# Characters XML 1.0 cannot carry: names and values holding any are sent
# base64-encoded with AlternateNameEncoding / AlternateValueEncoding, as AWS does.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

_STATUS = {
    "AttributeDoesNotExist": 404, "ConditionalCheckFailed": 409,
    "MultiValuedAttribute": 409, "NumberItemAttributesExceeded": 409,
    "NumberSubmittedAttributesExceeded": 409, "NumberSubmittedItemsExceeded": 409,
    "NumberDomainsExceeded": 409, "InternalError": 500,
}

Items = dict[str, dict[str, list[str]]]  # item name -> attribute name -> values


class SdbError(Exception):
    """An error answer: SimpleDB's code, its message; the HTTP status follows the code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = _STATUS.get(code, 400)


def _missing(name: str) -> SdbError:
    return SdbError("MissingParameter", f"The request must contain the parameter {name}")


def _required(params: dict[str, str], name: str) -> str:
    if name not in params:
        raise _missing(name)
    return params[name]


def _indexed(params: dict[str, str], prefix: str) -> list[tuple[str, dict[str, str]]]:
    """The members of a list sent as `prefix.N.Field=value`, in N order, as
    (the member's parameter prefix, {Field: value}); `prefix.N=value` gives {"": value}."""
    members: dict[int, dict[str, str]] = {}
    head = prefix + "."
    for key, value in params.items():
        if key.startswith(head):
            index, _, field = key[len(head):].partition(".")
            if index.isdigit():
                members.setdefault(int(index), {})[field] = value
    return [(f"{prefix}.{n}", members[n]) for n in sorted(members)]


def _check_size(parameter: str, text: str) -> None:
    if len(text.encode("utf-8", "surrogatepass")) > MAX_NAME_OR_VALUE_BYTES:
        raise SdbError("InvalidParameterValue",
                       f"Value ({text[:32]}...) for parameter {parameter} is invalid. "
                       f"{parameter} exceeds maximum length of {MAX_NAME_OR_VALUE_BYTES}.")


def _boolean(parameter: str, text: str | None, default: bool) -> bool:
    if text is None:
        return default
    if text.lower() not in ("true", "false"):
        raise SdbError("InvalidParameterValue",
                       f"Value ({text}) for parameter {parameter} is invalid. "
                       "Must be true or false.")
    return text.lower() == "true"


def _item_name(params: dict[str, str], key: str = "ItemName") -> str:
    name = _required(params, key)
    _check_size("ItemName", name)
    return name


def _attributes(fields: dict[str, str], prefix: str, with_replace: bool,
                value_required: bool) -> list[tuple[str, str | None, bool]]:
    """(name, value or None, replace) for each Attribute.N of one item."""
    pairs = []
    for member, attr in _indexed(fields, "Attribute"):
        if "Name" not in attr:
            raise _missing(f"{prefix}{member}.Name")
        if value_required and "Value" not in attr:
            raise _missing(f"{prefix}{member}.Value")
        if not attr["Name"]:
            raise SdbError("InvalidParameterValue",
                           f"Value () for parameter {prefix}{member}.Name is invalid.")
        _check_size("Name", attr["Name"])
        if attr.get("Value") is not None:
            _check_size("Value", attr["Value"])
        replace = with_replace and _boolean("Replace", attr.get("Replace"), False)
        pairs.append((attr["Name"], attr.get("Value"), replace))
    if len(pairs) > MAX_PAIRS_PER_CALL:
        raise SdbError("NumberSubmittedAttributesExceeded",
                       f"Too many attributes in this request: {len(pairs)}, "
                       f"at most {MAX_PAIRS_PER_CALL}.")
    return pairs


def _expected(params: dict[str, str]) -> tuple[str, str | None, bool] | None:
    """The update condition (name, value, exists), sent as Expected.Field or
    Expected.1.Field (boto3 sends the first, AWS's documents show the second)."""
    fields = {}
    for head in ("Expected.", "Expected.1."):
        for field in ("Name", "Value", "Exists"):
            if head + field in params:
                fields[field] = params[head + field]
    if not fields:
        return None
    if not fields.get("Name"):
        raise _missing("Expected.Name")
    exists = _boolean("Expected.Exists", fields.get("Exists"), True)
    if not exists and "Value" in fields:
        raise SdbError("ExistsAndExpectedValue",
                       "Expected.Exists=false and Expected.Value cannot be specified together")
    if exists and "Value" not in fields:
        raise SdbError("IncompleteExpectedExpression",
                       "If Expected.Exists=true or unspecified, then Expected.Value "
                       "has to be specified")
    return fields["Name"], fields.get("Value"), exists


def _check_expected(item: dict[str, list[str]] | None,
                    expected: tuple[str, str | None, bool] | None) -> None:
    if expected is None:
        return
    name, value, exists = expected
    values = (item or {}).get(name, [])
    if not exists:
        if values:
            raise SdbError("ConditionalCheckFailed",
                           f"Conditional check failed. Attribute ({name}) value exists.")
        return
    if not values:
        raise SdbError("AttributeDoesNotExist", f"Attribute ({name}) does not exist")
    if len(values) > 1:
        raise SdbError("MultiValuedAttribute",
                       f"Attribute ({name}) has multiple values. Conditional check can "
                       "only be performed on a single-valued attribute.")
    if values[0] != value:
        raise SdbError("ConditionalCheckFailed",
                       f"Conditional check failed. Attribute ({name}) value is "
                       f"({values[0]}) but was expected ({value})")


def _after_put(item: dict[str, list[str]] | None,
               pairs: list[tuple[str, str | None, bool]]) -> dict[str, list[str]]:
    """The item once `pairs` are put: Replace drops every earlier value of that
    name; a name-value pair already there is not added twice."""
    new = {name: list(values) for name, values in (item or {}).items()}
    for name in {name for name, _, replace in pairs if replace}:
        new.pop(name, None)
    for name, value, _ in pairs:
        values = new.setdefault(name, [])
        if value not in values:
            values.append(value)
    total = sum(len(values) for values in new.values())
    if total > MAX_PAIRS_PER_ITEM:
        raise SdbError("NumberItemAttributesExceeded",
                       f"Too many attributes in this item: {total}, "
                       f"at most {MAX_PAIRS_PER_ITEM}.")
    return new


def _after_delete(item: dict[str, list[str]] | None,
                  pairs: list[tuple[str, str | None, bool]]) -> dict[str, list[str]] | None:
    """The item once `pairs` are deleted (no pairs: the whole item); None if nothing is left."""
    if not pairs or item is None:
        return None
    new = {name: list(values) for name, values in item.items()}
    for name, value, _ in pairs:
        if value is None:
            new.pop(name, None)
        elif value in new.get(name, []):
            new[name].remove(value)
            if not new[name]:
                del new[name]
    return new or None


def _text(parent: ET.Element, tag: str, text: str, encoding_tag: str | None = None) -> None:
    if encoding_tag and _NOT_XML.search(text):
        raw = text.encode("utf-8", "surrogatepass")
        ET.SubElement(parent, tag).text = base64.b64encode(raw).decode("ascii")
        ET.SubElement(parent, encoding_tag).text = "base64"
        return
    ET.SubElement(parent, tag).text = text


def _add_attributes(parent: ET.Element, attrs: dict[str, list[str]]) -> None:
    for name in sorted(attrs):
        for value in attrs[name]:
            element = ET.SubElement(parent, "Attribute")
            _text(element, "Name", name, "AlternateNameEncoding")
            _text(element, "Value", value, "AlternateValueEncoding")


class World:
    """Every domain of one server, behind one lock: each call is atomic, as a
    conditional put must be."""

    def __init__(self, max_response_bytes: int = MAX_RESPONSE_BYTES):
        self.domains: dict[str, Items] = {}
        self.max_response_bytes = max_response_bytes
        self._lock = threading.Lock()
        self._actions = {
            "CreateDomain": self.create_domain, "DeleteDomain": self.delete_domain,
            "ListDomains": self.list_domains, "DomainMetadata": self.domain_metadata,
            "PutAttributes": self.put_attributes,
            "BatchPutAttributes": self.batch_put_attributes,
            "GetAttributes": self.get_attributes, "DeleteAttributes": self.delete_attributes,
            "BatchDeleteAttributes": self.batch_delete_attributes, "Select": self.select,
        }

    def handle(self, params: dict[str, str]) -> tuple[int, bytes]:
        """Answer one request: (HTTP status, XML body)."""
        request_id = str(uuid.uuid4())
        try:
            action = params.get("Action")
            if not action:
                raise SdbError("MissingAction", "No action was supplied with this request.")
            if action not in self._actions:
                raise SdbError("InvalidAction",
                               f"The action {action} is not valid for this web service.")
            version = _required(params, "Version")
            if version != API_VERSION:
                raise SdbError("NoSuchVersion",
                               f"SimpleDB API version {version} does not exist.")
            with self._lock:
                result = self._actions[action](params)
        except SdbError as error:
            return error.status, _error_xml(error, request_id)
        response = ET.Element(f"{action}Response", xmlns=NAMESPACE)
        if result is not None:
            response.append(result)
        metadata = ET.SubElement(response, "ResponseMetadata")
        ET.SubElement(metadata, "RequestId").text = request_id
        ET.SubElement(metadata, "BoxUsage").text = _BOX_USAGE
        return 200, _to_bytes(response)

    def _domain(self, params: dict[str, str]) -> Items:
        name = _required(params, "DomainName")
        if name not in self.domains:
            raise SdbError("NoSuchDomain", "The specified domain does not exist.")
        return self.domains[name]

    def create_domain(self, params: dict[str, str]) -> None:
        name = _required(params, "DomainName")
        if not _DOMAIN_NAME.fullmatch(name):
            raise SdbError("InvalidParameterValue",
                           f"Value ({name}) for parameter DomainName is invalid.")
        if name not in self.domains and len(self.domains) >= MAX_DOMAINS:
            raise SdbError("NumberDomainsExceeded", "The domain limit was exceeded.")
        self.domains.setdefault(name, {})

    def delete_domain(self, params: dict[str, str]) -> None:
        self.domains.pop(_required(params, "DomainName"), None)

    def list_domains(self, params: dict[str, str]) -> ET.Element:
        text = params.get("MaxNumberOfDomains", "100")
        if not text.isdigit() or not 1 <= int(text) <= 100:
            raise SdbError("InvalidParameterValue",
                           f"Value ({text}) for parameter MaxNumberOfDomains is invalid. "
                           "MaxNumberOfDomains must be between 1 and 100.")
        after = _decode_token(params["NextToken"], "domains") if "NextToken" in params else ""
        names = [name for name in sorted(self.domains) if name > after]
        page = names[:int(text)]
        result = ET.Element("ListDomainsResult")
        for name in page:
            ET.SubElement(result, "DomainName").text = name
        if len(page) < len(names):
            ET.SubElement(result, "NextToken").text = _encode_token(page[-1], "domains")
        return result

    def domain_metadata(self, params: dict[str, str]) -> ET.Element:
        items = self._domain(params)
        names = {name for attrs in items.values() for name in attrs}
        values = [value for attrs in items.values() for vs in attrs.values() for value in vs]
        figures = {
            "ItemCount": len(items),
            "ItemNamesSizeBytes": sum(len(n.encode()) for n in items),
            "AttributeNameCount": len(names),
            "AttributeNamesSizeBytes": sum(len(n.encode()) for n in names),
            "AttributeValueCount": len(values),
            "AttributeValuesSizeBytes": sum(len(v.encode()) for v in values),
            "Timestamp": int(time.time()),
        }
        result = ET.Element("DomainMetadataResult")
        for tag, figure in figures.items():
            ET.SubElement(result, tag).text = str(figure)
        return result

    def put_attributes(self, params: dict[str, str]) -> None:
        items = self._domain(params)
        name = _item_name(params)
        pairs = _attributes(params, "", with_replace=True, value_required=True)
        if not pairs:
            raise _missing("Attribute.1.Name")
        _check_expected(items.get(name), _expected(params))
        items[name] = _after_put(items.get(name), pairs)

    def batch_put_attributes(self, params: dict[str, str]) -> None:
        items = self._domain(params)
        updates = {}
        for member, fields in self._batch(params):
            name = _item_name(fields, "ItemName")
            pairs = _attributes(fields, member + ".", with_replace=True, value_required=True)
            if not pairs:
                raise _missing(f"{member}.Attribute.1.Name")
            updates[name] = pairs
        # Every item is checked before any is written: a bad batch changes nothing.
        after = {name: _after_put(items.get(name), pairs) for name, pairs in updates.items()}
        items.update(after)

    def get_attributes(self, params: dict[str, str]) -> ET.Element:
        items = self._domain(params)
        item = items.get(_item_name(params), {})
        wanted = [fields[""] for _, fields in _indexed(params, "AttributeName") if "" in fields]
        _boolean("ConsistentRead", params.get("ConsistentRead"), False)
        if wanted:
            item = {name: values for name, values in item.items() if name in wanted}
        result = ET.Element("GetAttributesResult")
        _add_attributes(result, item)
        return result

    def delete_attributes(self, params: dict[str, str]) -> None:
        items = self._domain(params)
        name = _item_name(params)
        pairs = _attributes(params, "", with_replace=False, value_required=False)
        _check_expected(items.get(name), _expected(params))
        self._store(items, name, _after_delete(items.get(name), pairs))

    def batch_delete_attributes(self, params: dict[str, str]) -> None:
        items = self._domain(params)
        deletes = [(_item_name(fields, "ItemName"),
                    _attributes(fields, member + ".", with_replace=False, value_required=False))
                   for member, fields in self._batch(params)]
        for name, pairs in deletes:
            self._store(items, name, _after_delete(items.get(name), pairs))

    def select(self, params: dict[str, str]) -> ET.Element:
        expression = _required(params, "SelectExpression")
        _boolean("ConsistentRead", params.get("ConsistentRead"), False)
        try:
            query = simpledb_select.parse(expression)
        except simpledb_select.SelectError as error:
            raise SdbError(error.code, error.message) from None
        items = self._domain({"DomainName": query.domain})
        after = _decode_token(params["NextToken"], expression) if "NextToken" in params else None
        rows, next_after = simpledb_select.run(query, items, after, self.max_response_bytes)
        result = ET.Element("SelectResult")
        for name, attrs in rows:
            element = ET.SubElement(result, "Item")
            _text(element, "Name", name, "AlternateNameEncoding")
            _add_attributes(element, attrs)
        if next_after is not None:
            ET.SubElement(result, "NextToken").text = _encode_token(next_after, expression)
        return result

    @staticmethod
    def _batch(params: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
        members = _indexed(params, "Item")
        if not members:
            raise _missing("Item.1.ItemName")
        if len(members) > MAX_ITEMS_PER_BATCH:
            raise SdbError("NumberSubmittedItemsExceeded",
                           f"Too many items in a single call: {len(members)}, "
                           f"at most {MAX_ITEMS_PER_BATCH}.")
        names = [fields.get("ItemName") for _, fields in members]
        for name in names:
            if names.count(name) > 1:
                raise SdbError("DuplicateItemName", f"Item {name} was specified more than once.")
        return members

    @staticmethod
    def _store(items: Items, name: str, item: dict[str, list[str]] | None) -> None:
        if item is None:
            items.pop(name, None)
        else:
            items[name] = item


def _encode_token(position, scope: str) -> str:
    """An opaque NextToken: where the last page ended, bound to the query it came from."""
    digest = hashlib.sha256(scope.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    raw = json.dumps({"q": digest, "after": position}).encode()
    return base64.b64encode(raw).decode("ascii")


def _decode_token(token: str, scope: str):
    digest = hashlib.sha256(scope.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    try:
        data = json.loads(base64.b64decode(token.encode("ascii"), validate=True))
        if data["q"] == digest:
            return data["after"]
    except (binascii.Error, UnicodeError, ValueError, KeyError, TypeError):
        pass
    raise SdbError("InvalidNextToken", "The specified next token is not valid.")


def _to_bytes(element: ET.Element) -> bytes:
    body = ET.tostring(element, encoding="utf-8", xml_declaration=True)
    # A literal CR would reach the client as LF (XML line-end handling).
    return body.replace(b"\r", b"&#13;")


def _error_xml(error: SdbError, request_id: str) -> bytes:
    response = ET.Element("Response")
    detail = ET.SubElement(ET.SubElement(response, "Errors"), "Error")
    ET.SubElement(detail, "Code").text = error.code
    ET.SubElement(detail, "Message").text = _NOT_XML.sub("?", error.message)
    ET.SubElement(detail, "BoxUsage").text = _BOX_USAGE
    ET.SubElement(response, "RequestID").text = request_id
    return _to_bytes(response)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without TCP_NODELAY, Nagle's
    # algorithm holds the body until the client's delayed ACK (~40 ms a call).
    disable_nagle_algorithm = True
    server: "SimpleDBHTTPServer"

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        length = int(self.headers.get("Content-Length") or 0)
        self._answer(self.rfile.read(length).decode("utf-8", "surrogateescape"))

    def do_GET(self) -> None:  # noqa: N802
        self._answer(urllib.parse.urlsplit(self.path).query)

    def _answer(self, form: str) -> None:
        pairs = urllib.parse.parse_qsl(form, keep_blank_values=True)
        status, body = self.server.world.handle(dict(pairs))
        self.send_response(status)
        self.send_header("Content-Type", "text/xml; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        if self.server.verbose:
            super().log_message(format, *args)


class SimpleDBHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, world: World, verbose: bool = False):
        super().__init__((host, port), _Handler)
        self.world = world
        self.verbose = verbose

    @property
    def endpoint_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def make_server(host: str = "127.0.0.1", port: int = 0,
                max_response_bytes: int = MAX_RESPONSE_BYTES,
                verbose: bool = False) -> SimpleDBHTTPServer:
    """A server bound to (host, port) with a new, empty world; port 0 picks a free one.
    Call serve_forever() to run it."""
    return SimpleDBHTTPServer(host, port, World(max_response_bytes), verbose)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="SimpleDB test server (not for production).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--max-response-bytes", type=int, default=MAX_RESPONSE_BYTES,
                        help="a Select page ends before passing this size (AWS: 1 MiB)")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    server = make_server(args.host, args.port, args.max_response_bytes, args.verbose)
    # The first line of stdout tells a parent which port was picked.
    print(f"listening on {server.endpoint_url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


# --- for the tests ---

_DUMMY_AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                  "AWS_DEFAULT_REGION": "us-east-1"}
_START_TIMEOUT_S = 30


class SimpleDBServer:
    """This file run as a child process on a free 127.0.0.1 port; stop() ends it."""

    def __init__(self, log_path: str, max_response_bytes: int = MAX_RESPONSE_BYTES):
        self._log = open(log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--port", "0",
             "--max-response-bytes", str(max_response_bytes)],
            stdout=subprocess.PIPE, stderr=self._log)
        ready, _, _ = select.select([self.process.stdout], [], [], _START_TIMEOUT_S)
        line = self.process.stdout.readline().decode() if ready else ""
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"SimpleDB test server did not start (see {log_path})")
        self.endpoint_url = line.split()[-1]

    def stop(self) -> None:
        stop_process(self.process)
        self.process.stdout.close()
        self._log.close()


@pytest.fixture(scope="session")
def simpledb_server(tmp_path_factory):
    """A running SimpleDB test server for the whole session; use its `endpoint_url`
    with dummy credentials and unique domain names per test."""
    for key, value in _DUMMY_AWS_ENV.items():
        os.environ.setdefault(key, value)
    server = SimpleDBServer(str(tmp_path_factory.mktemp("simpledb") / "simpledb.log"))
    yield server
    server.stop()


if __name__ == "__main__":
    sys.exit(main())
