"""nommerd's view of its own EC2 instance (core.instance): IMDSv2 against a
small metadata server on 127.0.0.1 that, like EC2's, answers GETs only with
a session token; self-termination against moto's EC2."""
from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request

import boto3
import pytest

from core.errors import BackendError, NotFound
from core.instance import instance_id, spot_interruption_pending, terminate_self
from tests.fixtures.imds import INSTANCE_ID, FakeIMDS

@pytest.fixture
def imds():
    server = FakeIMDS()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _status_of_get(url: str, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


def test_metadata_server_refuses_a_get_without_a_valid_token(imds):
    url = imds.url + "/latest/meta-data/instance-id"
    assert _status_of_get(url, {}) == 401
    assert _status_of_get(url, {"X-aws-ec2-metadata-token": "made-up"}) == 401


def test_instance_id_is_read_with_a_session_token(imds, monkeypatch):
    # A proxy from the environment must not be used for metadata requests.
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)

    assert instance_id(imds.url) == INSTANCE_ID

    (put_method, put_path, put_headers), (get_method, get_path, get_headers) = imds.requests
    assert (put_method, put_path) == ("PUT", "/latest/api/token")
    assert int(put_headers["x-aws-ec2-metadata-token-ttl-seconds"]) > 0
    assert (get_method, get_path) == ("GET", "/latest/meta-data/instance-id")
    assert get_headers["x-aws-ec2-metadata-token"] in imds.tokens


def test_refused_token_is_a_backend_error(imds):
    imds.accept_tokens = False
    with pytest.raises(BackendError, match="refused the session token"):
        instance_id(imds.url)


def test_metadata_service_refusing_tokens_is_a_backend_error(imds):
    imds.token_status = 403
    with pytest.raises(BackendError, match="HTTP 403"):
        instance_id(imds.url)
    assert [method for method, _, _ in imds.requests] == ["PUT"]


def test_spot_interruption_is_pending_only_once_announced(imds):
    assert spot_interruption_pending(imds.url) is False

    imds.spot_action = {"action": "terminate", "time": "2030-01-01T00:02:00Z"}
    assert spot_interruption_pending(imds.url) is True


def test_spot_check_with_a_refused_token_is_an_error_not_a_false_all_clear(imds):
    imds.accept_tokens = False
    with pytest.raises(BackendError):
        spot_interruption_pending(imds.url)


def test_unreachable_metadata_service_fails_fast():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    started = time.monotonic()
    with pytest.raises(BackendError, match="not reachable"):
        instance_id(closed, timeout_s=1)
    assert time.monotonic() - started < 5


def test_terminate_self_terminates_the_instance(moto_server):
    ec2 = boto3.client("ec2", endpoint_url=moto_server.endpoint_url, region_name="us-east-1")
    try:
        image = ec2.register_image(Name="nommer-encoder", RootDeviceName="/dev/xvda")["ImageId"]
        own = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]

        terminate_self(ec2, own)

        state = ec2.describe_instances(InstanceIds=[own])["Reservations"][0]["Instances"][0]["State"]
        assert state["Name"] in ("shutting-down", "terminated")
        with pytest.raises(NotFound):
            terminate_self(ec2, "i-00000000000000000")
    finally:
        ec2.close()
