"""`nommer-api` as a real process against hostile requests: every error is
JSON with error_code and message (waitress's own ones too), never a 500;
what the sender could not open, what would loop, flood or be lost is
refused at submit."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from core.app.cli import ApiClient
from core.app.local_system import free_port
from tests.fixtures.processes import stop_process

pytestmark = pytest.mark.timeout(60)

PROJECT_DIR = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api")
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NOMMER_", "AWS_"))}
    env.update({"NOMMER_DATA_DIR": str(folder), "NOMMER_API_PORT": str(port),
                "NOMMER_MAX_REQUEST_BYTES": "4096",
                # No AWS credentials anywhere boto3 looks.
                "AWS_SHARED_CREDENTIALS_FILE": str(folder / "none"),
                "AWS_CONFIG_FILE": str(folder / "none"), "AWS_EC2_METADATA_DISABLED": "true"})
    (folder / "media").mkdir()
    with open(folder / "api.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "feeder.api"], env=env,
                                cwd=str(PROJECT_DIR), stdout=log, stderr=subprocess.STDOUT)
    try:
        ApiClient(f"http://127.0.0.1:{port}").wait_healthy(30)
        yield port, folder / "media"
    finally:
        stop_process(proc)


def exchange(port: int, raw: bytes) -> tuple[int, dict]:
    """Send `raw` bytes as the request; (status, the answer's JSON)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    assert b"application/json" in head.lower(), answer[:300]
    return status, json.loads(body)


def post(port: int, body: bytes, headers: str = "") -> tuple[int, dict]:
    return exchange(port, (f"POST /job/submit/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                           f"Content-Type: application/json\r\n{headers}"
                           f"Content-Length: {len(body)}\r\n\r\n").encode() + body)


def submit_body(media: Path, **changes) -> dict:
    body = {"source_path": (media / "in.mp4").as_uri(), "dest_path": (media / "out.mp4").as_uri(),
            "job_options": {"nommer": "ffmpeg", "options": [
                {"outfile_options": [["c:v", "libx264"]]}]}}
    body.update(changes)
    return body


def assert_refused(status: int, answer: dict, words: str = "") -> None:
    assert status == 400, answer
    assert answer["success"] is False and answer["error_code"] == "BADINPUT"
    assert words in answer["message"]


@pytest.mark.parametrize("raw", [
    # A body over waitress's own limit (1 MiB here), announced up front.
    b"POST /job/submit/ HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n{}",
    b"POST /job/submit/ HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n{}",
    b"POST /job/submit/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
], ids=["too-large", "bad-content-length", "bad-chunked"])
def test_waitress_errors_answer_json(api, raw):
    port, _ = api
    status, answer = exchange(port, raw)
    assert status in (400, 413)
    assert answer["success"] is False and answer["error_code"] in ("BADINPUT", "TOO_LARGE")
    assert answer["message"]


@pytest.mark.parametrize("field, value", [
    ("source_path", "file:///\\ud800.mp4"),
    ("source_path", "http://\\ud800.example/in.mp4"),
    ("source_path", "http://example.com/\\ud800"),
    ("dest_path", "s3://bucket/\\udfff.mp4"),
    ("notify_url", "http://example.com/\\ud800"),
])
def test_lone_surrogates_anywhere_get_400(api, field, value):
    port, media = api
    body = json.dumps(submit_body(media, **{field: "PLACEHOLDER"})).replace(
        "PLACEHOLDER", value)
    assert_refused(*post(port, body.encode()), "invalid Unicode")


def test_lone_surrogate_in_a_list_cursor_gets_400(api):
    port, _ = api
    import base64
    cursor = base64.urlsafe_b64encode(b'{"c": "\\ud800", "i": "x"}').decode()
    status, answer = exchange(port, f"GET /jobs?cursor={cursor} HTTP/1.1\r\nHost: x\r\n"
                                    f"Connection: close\r\n\r\n".encode())
    assert_refused(status, answer, "cursor")


@pytest.mark.parametrize("changes, words", [
    ({"notify_url": "http://[bad/done"}, "notify_url"),
    ({"notify_url": "http://169.254.169.254/latest/"}, "notify_url"),
    ({"dest_path": "OUT.m3u8"}, "several files"),
    ({"dest_path": "OUT.mpd"}, "several files"),
    ({"job_options": {"nommer": "ffmpeg", "options": [
        {"outfile_options": [["vf", "crop=w='while(1,1)':h=10"]]}]}}, "while()"),
    ({"job_options": {"nommer": "ffmpeg", "options": [
        {"outfile_options": [["s", "16000x16000"]]}]}}, "max_frame_pixels"),
    ({"job_options": {"nommer": "ffmpeg", "options": [
        {"outfile_options": [["r", "100000"], ["c:v", "rawvideo"]]}]}}, "max_frame_rate"),
    ({"job_options": {"nommer": "ffmpeg", "options": [
        {"outfile_options": [["f", "null"]]}]}}, "writes no output"),
    ({"source_path": "s3://bucket/in.mp4"}, "no AWS credentials"),
], ids=["malformed-notify", "metadata-notify", "m3u8", "mpd", "while", "frame-size",
        "frame-rate", "null-muxer", "s3-without-credentials"])
def test_submit_refuses_what_would_fail_loop_flood_or_be_lost(api, changes, words):
    port, media = api
    for key in ("dest_path",):
        if key in changes and changes[key].startswith("OUT"):
            changes[key] = (media / changes[key].lower()).as_uri()
    body = json.dumps(submit_body(media, **changes)).encode()
    assert_refused(*post(port, body), words)


def test_notify_url_at_the_apis_own_port_is_refused(api):
    port, media = api
    for host in ("127.0.0.1", "127.0.0.2", "[::1]", "2130706433"):
        url = f"http://{host}:{port}/jobs/some-job/cancel"
        body = json.dumps(submit_body(media, notify_url=url)).encode()
        assert_refused(*post(port, body), "not one this service may reach")


def test_ipv6_literal_notify_url_is_accepted(api):
    port, media = api
    body = json.dumps(submit_body(media, notify_url="http://[2001:db8::cafe]/done")).encode()
    status, answer = post(port, body)
    assert status == 200 and answer["success"] is True


def test_nommer_run_beyond_loopback_without_a_token_refuses_in_the_foreground(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOMMER_")}
    env.update({"NOMMER_DATA_DIR": str(tmp_path), "NOMMER_API_HOST": "0.0.0.0",
                "NOMMER_API_PORT": str(free_port())})
    done = subprocess.run([sys.executable, "-m", "core.app.cli", "run"], env=env,
                          cwd=str(PROJECT_DIR), capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "refusing to listen on 0.0.0.0" in done.stderr
    assert "API on" not in done.stdout
