"""send_notification speaks the original feederd's form POST to a real HTTP server."""
from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

import pytest

from core.webhooks import verify
from feeder.notify import JSON_CONTENT_TYPE, NotifyError, Payload, send_notification

pytestmark = pytest.mark.timeout(30)


class Receiver:
    """An HTTP server on 127.0.0.1 that records every request.

    `answers` maps a path (without query) to a function (handler) that
    writes the response; unknown paths answer 200 "ok".
    """

    def __init__(self):
        self.requests: list[dict] = []
        self.answers: dict = {}
        self.release = threading.Event()  # lets handlers that hang return at teardown
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length).decode("ascii")
                receiver.requests.append({
                    "method": self.command, "path": self.path,
                    "headers": dict(self.headers), "body": body,
                    "form": parse_qsl(body, keep_blank_values=True)})
                answer = receiver.answers.get(self.path.split("?")[0], _answer_ok)
                answer(self)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _answer_ok(handler, status: int = 200) -> None:
    handler.send_response(status)
    handler.send_header("Content-Length", "2")
    handler.end_headers()
    handler.wfile.write(b"ok")


def _answer_status(status: int, location: str | None = None):
    def answer(handler):
        handler.send_response(status)
        if location:
            handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    return answer


@pytest.fixture
def receiver():
    built = Receiver()
    yield built
    built.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_notification_is_the_original_form_post(receiver):
    send_notification(receiver.url("/encoding/done/?app=7"), "job42", "ERROR",
                      "ffmpeg: bad input & worse", timeout_s=5)

    [request] = receiver.requests
    assert request["method"] == "POST"
    assert request["path"] == "/encoding/done/?app=7"
    assert request["headers"]["User-Agent"] == "media-nommer feederd"
    assert request["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert request["form"] == [("unique_id", "job42"), ("job_state", "ERROR"),
                               ("job_state_details", "ffmpeg: bad input & worse")]


def test_empty_details_are_sent_as_an_empty_field(receiver):
    send_notification(receiver.url("/hook"), "job1", "PENDING", "", timeout_s=5)

    assert receiver.requests[0]["body"] == "unique_id=job1&job_state=PENDING&job_state_details="


def test_a_json_payload_is_sent_signed_and_its_redirect_carries_the_same_signature(receiver):
    receiver.answers["/moved"] = _answer_status(307, "/hook")
    body = b'{"id": "job1", "state": "FINISHED"}'
    send_notification(receiver.url("/moved"), "job1", "FINISHED", "", timeout_s=5,
                      payload=Payload(body, JSON_CONTENT_TYPE, signing_secret="k3y"))

    first, moved = receiver.requests
    assert moved["path"] == "/hook" and moved["headers"]["Content-Type"] == "application/json"
    assert moved["headers"]["Nommer-Signature"] == first["headers"]["Nommer-Signature"]
    verify("k3y", moved["headers"]["Nommer-Signature"], moved["body"].encode(), now=time.time())


def test_a_json_payload_without_a_secret_is_never_sent(receiver):
    with pytest.raises(NotifyError) as caught:
        send_notification(receiver.url("/hook"), "job1", "FINISHED", "", timeout_s=5,
                          payload=Payload(b"{}", JSON_CONTENT_TYPE, signing_secret=""))
    assert caught.value.retryable is False and "webhook_secret" in str(caught.value)
    assert receiver.requests == []


def test_server_error_raises_notify_error_worth_retrying(receiver):
    receiver.answers["/hook"] = _answer_status(500)

    with pytest.raises(NotifyError) as caught:
        send_notification(receiver.url("/hook"), "job1", "PENDING", "", timeout_s=5)

    assert caught.value.status == 500
    assert caught.value.retryable
    assert "500" in str(caught.value)


def test_client_error_raises_notify_error(receiver):
    receiver.answers["/hook"] = _answer_status(404)

    with pytest.raises(NotifyError):
        send_notification(receiver.url("/hook"), "job1", "PENDING", "", timeout_s=5)


def test_refused_connection_raises_notify_error():
    url = f"http://127.0.0.1:{_free_port()}/hook"

    with pytest.raises(NotifyError) as caught:
        send_notification(url, "job1", "PENDING", "", timeout_s=5)

    assert caught.value.retryable


def test_silent_receiver_is_given_up_at_the_timeout():
    # Connections are accepted by the kernel (listen backlog) but never answered.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
        started = time.monotonic()
        with pytest.raises(NotifyError) as silent:
            send_notification(url, "job1", "PENDING", "", timeout_s=0.5)
        assert time.monotonic() - started < 2.0
    # Now closed: the same words, so a client cannot tell what listened there.
    with pytest.raises(NotifyError) as closed:
        send_notification(url, "job1", "PENDING", "", timeout_s=0.5)
    assert str(silent.value) == str(closed.value) == "receiver could not be reached or did not answer"


def test_receiver_that_trickles_its_answer_is_cut_off_at_the_timeout(receiver):
    def trickle(handler):
        handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
        for _ in range(50):  # one header byte every 0.1 s: each read is quick, the sum is not
            handler.wfile.write(b"X")
            handler.wfile.flush()
            if receiver.release.wait(0.1):
                return

    receiver.answers["/hook"] = trickle
    started = time.monotonic()
    with pytest.raises(NotifyError, match="could not be reached or did not answer"):
        send_notification(receiver.url("/hook"), "job1", "PENDING", "", timeout_s=0.8)
    assert time.monotonic() - started < 2.0


def test_long_answer_is_not_read_to_the_end(receiver):
    def endless(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(100 * 1024 * 1024))
        handler.end_headers()
        handler.wfile.write(b"x" * 65536)
        receiver.release.wait(10)

    receiver.answers["/hook"] = endless
    started = time.monotonic()
    send_notification(receiver.url("/hook"), "job1", "FINISHED", "", timeout_s=5)
    assert time.monotonic() - started < 2.0


def test_temporary_redirect_is_followed_with_the_same_post(receiver):
    receiver.answers["/old"] = _answer_status(307, "/new?x=1")

    send_notification(receiver.url("/old"), "job1", "FINISHED", "done", timeout_s=5)

    assert [r["path"] for r in receiver.requests] == ["/old", "/new?x=1"]
    assert receiver.requests[1]["method"] == "POST"
    assert receiver.requests[1]["form"] == receiver.requests[0]["form"]


@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://127.0.0.1/x"])
def test_redirect_to_another_scheme_is_not_followed(receiver, location):
    receiver.answers["/hook"] = _answer_status(302, location)

    with pytest.raises(NotifyError, match="not followed"):
        send_notification(receiver.url("/hook"), "job1", "FINISHED", "", timeout_s=5)

    assert len(receiver.requests) == 1


def test_endless_redirects_end_in_an_error(receiver):
    receiver.answers["/loop"] = _answer_status(307, "/loop")

    with pytest.raises(NotifyError, match="redirects"):
        send_notification(receiver.url("/loop"), "job1", "FINISHED", "", timeout_s=5)

    assert len(receiver.requests) == 4


@pytest.mark.parametrize("url", [
    "ftp://127.0.0.1/hook", "file:///etc/passwd", "http:///no-host",
    "http://user:secret@127.0.0.1/hook", "http://127.0.0.1/a b",
])
def test_urls_that_cannot_work_are_refused_for_good(url):
    with pytest.raises(NotifyError) as caught:
        send_notification(url, "job1", "PENDING", "", timeout_s=5)

    assert not caught.value.retryable
