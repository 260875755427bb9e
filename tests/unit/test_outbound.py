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


# --- TLS: connected to the checked address, verified against the URL's name ---

def _certificate(tmp_path, name: str):
    """A CA and a server certificate for `name`, as PEM files: (ca, cert, key)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = (tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@pytest.fixture
def tls_server(tmp_path, monkeypatch):
    """An HTTPS server on 127.0.0.1 whose certificate names `localhost`;
    yields (port, seen) where seen collects (SNI, Host header) per request."""
    import ssl

    ca, cert, key = _certificate(tmp_path, "localhost")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # what create_default_context trusts
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    seen = []
    context.sni_callback = lambda sock, name, ctx: seen.append(name)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    if REACH.resolve("localhost", listener.getsockname()[1]) != "127.0.0.1":
        listener.close()
        pytest.skip("localhost does not resolve to 127.0.0.1 first here")

    def serve():
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(raw, server_side=True) as conn:
                    request = conn.recv(65536).decode()
                    host = next(line.split(":", 1)[1].strip() for line in request.split("\r\n")
                                if line.lower().startswith("host:"))
                    seen.append(host)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            except (OSError, StopIteration):
                pass
    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1], seen
    listener.close()


def test_https_sends_the_urls_name_as_sni_and_host_and_verifies_it(tls_server):
    port, seen = tls_server
    with open_hop(parse_target(f"https://localhost:{port}/x"), REACH) as exchange:
        assert exchange.status == 200 and exchange.read(10) == b"ok"
    assert seen == ["localhost", f"localhost:{port}"]


def test_https_to_a_name_the_certificate_does_not_hold_fails(tls_server):
    port, _ = tls_server
    # 127.0.0.1 is where localhost resolves, but the certificate names localhost only.
    assert failure(f"https://127.0.0.1:{port}/x") == "could not be reached or did not answer"
