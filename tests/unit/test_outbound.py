"""core.outbound against the hostile server: one parser for accept and send,
uniform failure texts, a cut-off at the deadline and at a minimum rate."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from core.outbound import OutboundError, open_hop, parse_target, redirect_target
from core.reach import Reach
from core.settings import Settings
from tests.fixtures.hostile_http import HostileServer

REACH = Reach(Settings())


@pytest.fixture
def hostile():
    server = HostileServer()
    yield server
    server.close()


def failure(url: str, **kwargs) -> str:
    with pytest.raises(OutboundError) as caught:
        with open_hop(parse_target(url), REACH, **kwargs) as exchange:
            while exchange.read(65536):
                pass
    return str(caught.value)


@pytest.fixture
def silent_port():
    """A port that accepts connections and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


@pytest.fixture
def garbage_port():
    """A port that answers anything with bytes that are not HTTP."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve():
        try:
            conn, _ = listener.accept()
            conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
            conn.close()
        except OSError:
            pass
    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()


def test_closed_silent_and_non_http_ports_fail_alike(silent_port, garbage_port):
    closed = failure("http://127.0.0.1:9/x", read_timeout_s=0.5)
    silent = failure(f"http://127.0.0.1:{silent_port}/x", read_timeout_s=0.5)
    garbage = failure(f"http://127.0.0.1:{garbage_port}/x", read_timeout_s=0.5)
    assert closed == silent == garbage == "could not be reached or did not answer"


def test_ipv6_literal_parses_and_fails_as_unreachable():
    target = parse_target("http://[2001:db8::cafe]/done")
    assert (target.host, target.port, target.host_header) == ("2001:db8::cafe", 80,
                                                             "[2001:db8::cafe]")
    assert failure("http://[2001:db8::cafe]/done", connect_timeout_s=0.5) in (
        "could not be reached or did not answer",)


@pytest.mark.parametrize("location", ["http://[bad", "ftp://example.com/x", "", None,
                                      "http://user:pw@example.com/"])
def test_malformed_or_foreign_redirects_are_refused_for_good(location):
    with pytest.raises(OutboundError) as caught:
        redirect_target(parse_target("http://example.com/a"), location)
    assert caught.value.retryable is False


def test_a_dripping_body_is_cut_off_below_the_minimum_rate(hostile):
    hostile.add("big", b"\0" * 1_000_000)
    started = time.monotonic()
    reason = failure(hostile.url("/drip/big"), min_bytes_per_s=1000, rate_window_s=1.0)
    assert "too slow" in reason
    assert time.monotonic() - started < 5


def test_a_dripping_body_is_cut_off_at_the_deadline(hostile):
    hostile.add("big", b"\0" * 1_000_000)
    reason = failure(hostile.url("/drip/big"), deadline=time.monotonic() + 1.0)
    assert reason == "did not complete in time"


def test_a_short_body_is_an_error(hostile):
    hostile.add("clip", b"x" * 10_000)
    assert "Content-Length" in failure(hostile.url("/short/clip"))


def test_a_stop_event_ends_the_exchange_within_a_tick(hostile):
    hostile.add("big", b"\0" * 1_000_000)
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    assert failure(hostile.url("/drip/big"), stop=stop) == "stopped"
    assert time.monotonic() - started < 2


def test_the_apis_own_address_is_refused_before_connecting():
    reach = Reach(Settings(api_port=8001))
    with pytest.raises(OutboundError, match="not one this service may reach"):
        open_hop(parse_target("http://localhost:8001/jobs/x/cancel"), reach, method="POST")
