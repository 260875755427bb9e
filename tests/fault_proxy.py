"""One emulated AWS endpoint on 127.0.0.1 that can fail on purpose.

A real HTTP reverse proxy: boto3 clients get its URL as their endpoint.
Each request goes to the moto server, or, for SimpleDB, to the SimpleDB
test server (moto's SimpleDB is not usable): one endpoint for every
service, as the clients' single `aws_endpoint_url` setting expects.

A share of requests (`fault_share`, settable while it runs) is not
forwarded but answered with an error in the service's own wire format,
throttling (`throttle_share` of them, half by default) or an internal
error, so botocore's retry logic sees exactly what AWS would send:

    service            throttling                          internal error
    JSON (DynamoDB,    400 {"__type": "...#ThrottlingException"}  500 {"__type": "...#InternalServerError"}
      SQS)
    S3                 503 <Error><Code>SlowDown</Code>     500 <Error><Code>InternalError</Code>
    EC2                503 <Response><Errors><Error><Code>RequestLimitExceeded</Code>  500 InternalError
    SimpleDB           503 <Response><Errors><Error><Code>ServiceUnavailable</Code>    500 InternalError
    other query APIs   400 <ErrorResponse><Error><Code>Throttling</Code>  500 InternalFailure

A faulted request never reaches the service, as when AWS throttles or a
front end fails before the request is processed.

Run alone:  python tests/fault_proxy.py --upstream http://127.0.0.1:5000 --fault-share 0.2
"""
from __future__ import annotations

import argparse
import collections
import http.client
import http.server
import json
import random
import re
import sys
import threading
import urllib.parse
import uuid

SDB_API_VERSION = "2009-04-15"
# Headers that belong to one connection, not to the request or response.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailers", "transfer-encoding", "upgrade", "expect", "content-length",
})
UPSTREAM_TIMEOUT_S = 120.0
_CREDENTIAL_SCOPE = re.compile(r"Credential=[^/,]+/\d{8}/[^/,]+/([^/,]+)/aws4_request")


def service_of(headers, path: str, body: bytes) -> str:
    """The AWS service a request is for: from X-Amz-Target (JSON protocol),
    the SigV4 credential scope, or SimpleDB's API version (SimpleDB signs
    with SigV2, in the parameters)."""
    target = headers.get("X-Amz-Target", "")
    if target.startswith("DynamoDB"):
        return "dynamodb"
    if target.startswith("AmazonSQS"):
        return "sqs"
    found = _CREDENTIAL_SCOPE.search(headers.get("Authorization", ""))
    if found:
        return found.group(1)
    query = urllib.parse.urlsplit(path).query
    form = body.decode("latin-1") if body and "form-urlencoded" in headers.get(
        "Content-Type", "") else ""
    params = urllib.parse.parse_qs(query + "&" + form)
    if params.get("Version") == [SDB_API_VERSION]:
        return "sdb"
    return "unknown"


def _xml(text: str) -> bytes:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + text).encode()


def fault_answer(service: str, throttle: bool, json_protocol: bool) -> tuple[int, str, bytes]:
    """(status, content type, body) of a throttling or internal error from `service`."""
    request_id = str(uuid.uuid4())
    if json_protocol:
        prefix = {"dynamodb": "com.amazonaws.dynamodb.v20120810#",
                  "sqs": "com.amazonaws.sqs#"}.get(service, "")
        if throttle:
            body = {"__type": prefix + "ThrottlingException", "message": "Rate exceeded"}
            status = 400
        else:
            body = {"__type": prefix + "InternalServerError", "message": "Internal server error"}
            status = 500
        return status, "application/x-amz-json-1.0", json.dumps(body).encode()
    if service == "s3":
        code, status = ("SlowDown", 503) if throttle else ("InternalError", 500)
        return status, "application/xml", _xml(
            f"<Error><Code>{code}</Code><Message>Please reduce your request rate.</Message>"
            f"<RequestId>{request_id}</RequestId></Error>")
    if service in ("ec2", "sdb"):
        code = ("RequestLimitExceeded" if service == "ec2" else "ServiceUnavailable") \
            if throttle else "InternalError"
        status = 503 if throttle else 500
        usage = "<BoxUsage>0.0000219907</BoxUsage>" if service == "sdb" else ""
        return status, "text/xml", _xml(
            f"<Response><Errors><Error><Code>{code}</Code><Message>{code}</Message>{usage}"
            f"</Error></Errors><RequestID>{request_id}</RequestID></Response>")
    code, status, kind = (("Throttling", 400, "Sender") if throttle
                          else ("InternalFailure", 500, "Receiver"))
    return status, "text/xml", _xml(
        f"<ErrorResponse><Error><Type>{kind}</Type><Code>{code}</Code>"
        f"<Message>{code}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>")


class FaultProxy(http.server.ThreadingHTTPServer):
    """The proxy, listening on 127.0.0.1 (`url`). `upstream_url`: the moto
    server; `sdb_upstream_url`: where SimpleDB requests go (default: upstream).

    `fault_share` (0..1) of requests to `fault_services` (None: every service)
    get an error answer instead: throttling for `throttle_share` of them, an
    internal error for the rest. `requests` counts per service, `faults`
    per (service, "throttle" or "500").
    Use `start()` / `stop()`, or as a context manager.
    """

    daemon_threads = True
    block_on_close = False

    def __init__(self, upstream_url: str, sdb_upstream_url: str = "", fault_share: float = 0.0,
                 fault_services: set[str] | None = None, throttle_share: float = 0.5,
                 seed: int | None = None):
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.upstreams = {"default": urllib.parse.urlsplit(upstream_url),
                          "sdb": urllib.parse.urlsplit(sdb_upstream_url or upstream_url)}
        self.fault_share = fault_share
        self.fault_services = fault_services
        self.throttle_share = throttle_share
        self.requests: collections.Counter = collections.Counter()
        self.faults: collections.Counter = collections.Counter()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> "FaultProxy":
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def choose_fault(self, service: str) -> bool | None:
        """None to forward; else True for a throttling answer, False for a 500."""
        with self._lock:
            self.requests[service] += 1
            if self.fault_services is not None and service not in self.fault_services:
                return None
            if self._random.random() >= self.fault_share:
                return None
            throttle = self._random.random() < self.throttle_share
            self.faults[(service, "throttle" if throttle else "500")] += 1
            return throttle


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    server: FaultProxy
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore's connection pools expect

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self._proxy()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _proxy(self) -> None:
        body = self._body()
        service = service_of(self.headers, self.path, body)
        throttle = self.server.choose_fault(service)
        if throttle is not None:
            json_protocol = "X-Amz-Target" in self.headers
            status, content_type, answer = fault_answer(service, throttle, json_protocol)
            return self._reply(status, [("Content-Type", content_type)], answer)
        try:
            status, headers, answer = self._forward(service, body)
        except (OSError, http.client.HTTPException) as exc:
            return self._reply(502, [("Content-Type", "text/plain")], f"upstream: {exc}".encode())
        self._reply(status, headers, answer)

    def _forward(self, service: str, body: bytes) -> tuple[int, list, bytes]:
        upstream = self.server.upstreams["sdb" if service == "sdb" else "default"]
        connection = http.client.HTTPConnection(upstream.hostname, upstream.port,
                                                timeout=UPSTREAM_TIMEOUT_S)
        try:
            headers = {name: value for name, value in self.headers.items()
                       if name.lower() not in HOP_BY_HOP}
            if body or self.command in ("POST", "PUT"):
                headers["Content-Length"] = str(len(body))
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read()
            kept = [(name, value) for name, value in response.getheaders()
                    if name.lower() not in HOP_BY_HOP]
            if self.command == "HEAD":
                # A HEAD answer's Content-Length is the object's size, not this body's.
                kept += [(n, v) for n, v in response.getheaders() if n.lower() == "content-length"]
            return response.status, kept, answer
        finally:
            connection.close()

    def _reply(self, status: int, headers: list, body: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(body)))
        elif not any(name.lower() == "content-length" for name, _ in headers):
            self.send_header("Content-Length", "0")
        try:
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up on this request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="the moto server's URL")
    parser.add_argument("--sdb-upstream", default="", help="the SimpleDB test server's URL")
    parser.add_argument("--fault-share", type=float, default=0.0)
    args = parser.parse_args(argv)
    proxy = FaultProxy(args.upstream, args.sdb_upstream, args.fault_share)
    print(f"listening on {proxy.url}", flush=True)
    try:
        proxy.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        proxy.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
