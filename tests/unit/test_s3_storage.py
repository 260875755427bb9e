"""S3 storage (core.storage.s3) against moto's S3, over HTTP."""
from __future__ import annotations

import os
import socket
import threading

import pytest

from tests.fixtures.aws import unique_name
from core.aws import client
from core.errors import BackendError, StorageError, ValidationError
from core.storage.s3 import S3Storage
from core.settings import Settings

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def s3(moto_server):
    built = client(Settings(backend="aws", aws_endpoint_url=moto_server.endpoint_url), "s3")
    yield built
    built.close()


@pytest.fixture
def bucket(s3):
    name = unique_name("nommer-media")
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def storage(s3):
    return S3Storage(s3)


def _file(path, size_bytes: int) -> str:
    path.write_bytes(os.urandom(size_bytes))
    return str(path)


def test_upload_then_download_round_trips_the_bytes(storage, s3, bucket, tmp_path):
    source = _file(tmp_path / "out.mp4", 300_000)
    uri = f"s3://{bucket}/encoded/out.mp4"

    storage.upload(source, uri)
    written = storage.download(uri, str(tmp_path / "back.mp4"), max_bytes=10 * MIB)

    assert written == 300_000
    assert (tmp_path / "back.mp4").read_bytes() == (tmp_path / "out.mp4").read_bytes()
    head = s3.head_object(Bucket=bucket, Key="encoded/out.mp4")
    assert head["ContentType"] == "video/mp4"
    assert "-" not in head["ETag"]  # one PUT below the multipart threshold


@pytest.mark.parametrize("name, content_type", [
    ("talk.webm", "video/webm"), ("talk.mkv", "video/x-matroska"),
    ("poster.jpg", "image/jpeg"), ("talk.ts", "video/mp2t"), ("talk.unknown", "application/octet-stream")])
def test_a_single_file_is_stored_with_the_content_type_players_expect(storage, s3, bucket,
                                                                     tmp_path, name, content_type):
    storage.upload(_file(tmp_path / "out", 1000), f"s3://{bucket}/{name}")

    assert s3.head_object(Bucket=bucket, Key=name)["ContentType"] == content_type


def test_file_above_the_threshold_is_uploaded_in_parts(s3, bucket, tmp_path):
    storage = S3Storage(s3, multipart_threshold_bytes=1 * MIB, multipart_chunk_bytes=5 * MIB)
    source = _file(tmp_path / "big.mkv", 6 * MIB + 123)
    uri = f"s3://{bucket}/big.mkv"

    storage.upload(source, uri)

    # A multipart object's ETag ends in "-<number of parts>".
    assert s3.head_object(Bucket=bucket, Key="big.mkv")["ETag"].strip('"').endswith("-2")
    assert storage.download(uri, str(tmp_path / "back.mkv"), max_bytes=7 * MIB) == 6 * MIB + 123
    assert (tmp_path / "back.mkv").read_bytes() == (tmp_path / "big.mkv").read_bytes()


def test_missing_key_is_a_storage_error_that_says_so(storage, bucket, tmp_path):
    uri = f"s3://{bucket}/no/such/in.mp4"
    with pytest.raises(StorageError, match=f"^source {uri} does not exist$"):
        storage.download(uri, str(tmp_path / "in.mp4"), max_bytes=MIB)


def test_missing_bucket_is_a_storage_error_for_source_and_destination(storage, tmp_path):
    uri = f"s3://{unique_name('no-such-bucket')}/in.mp4"
    with pytest.raises(StorageError, match="bucket .* does not exist"):
        storage.download(uri, str(tmp_path / "in.mp4"), max_bytes=MIB)
    with pytest.raises(StorageError, match="bucket .* does not exist"):
        storage.upload(_file(tmp_path / "out.mp4", 10), uri)


def test_source_larger_than_max_bytes_is_refused(storage, bucket, tmp_path):
    uri = f"s3://{bucket}/in.mp4"
    storage.upload(_file(tmp_path / "in.mp4", 1000), uri)

    with pytest.raises(StorageError, match="larger than the limit of 999 bytes"):
        storage.download(uri, str(tmp_path / "too-big.mp4"), max_bytes=999)
    assert storage.download(uri, str(tmp_path / "fits.mp4"), max_bytes=1000) == 1000


@pytest.mark.parametrize("uri", [
    "s3://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI/K7MDENG@media-bucket/in.mp4",
    "s3://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMIK7MDENG@media-bucket/in.mp4",
    "s3://AKIAIOSFODNN7EXAMPLE@media-bucket/in.mp4",
])
def test_uri_with_credentials_is_refused_with_what_to_do_instead(storage, uri, tmp_path):
    for check in (storage.check_source, storage.check_destination):
        with pytest.raises(ValidationError) as refused:
            check(uri)
        message = str(refused.value)
        assert "instance profile" in message and "credential chain" in message
        assert "AKIAIOSFODNN7EXAMPLE" not in message and "wJalrXUtnFEMI" not in message

    with pytest.raises(StorageError) as refused:
        storage.download(uri, str(tmp_path / "in.mp4"), max_bytes=MIB)
    assert "AKIAIOSFODNN7EXAMPLE" not in str(refused.value)


@pytest.mark.parametrize("uri", [
    "s3://Media_Bucket/in.mp4",  # uppercase and underscore
    "s3://ab/in.mp4",  # too short
    "s3://-media/in.mp4",
    "s3://media..bucket/in.mp4",
    "s3://192.168.1.10/in.mp4",
    "s3:///in.mp4",  # no bucket
    "s3://media-bucket",  # no key
    "s3://media-bucket/",  # empty key
    "s3://media-bucket/in\n.mp4",
    "s3://media-bucket/" + "k" * 1025,
    "file:///in.mp4",
])
def test_malformed_uri_is_refused_without_io(storage, uri):
    with pytest.raises(ValidationError):
        storage.check_source(uri)
    with pytest.raises(ValidationError):
        storage.check_destination(uri)


def test_key_is_taken_as_written(storage, s3, bucket, tmp_path):
    uri = f"s3://{bucket}/clips/a b%20c?.mp4"
    storage.check_destination(uri)
    storage.upload(_file(tmp_path / "clip.mp4", 10), uri)
    assert s3.head_object(Bucket=bucket, Key="clips/a b%20c?.mp4")["ContentLength"] == 10


def test_unreachable_s3_is_a_retryable_backend_error(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    settings = Settings(backend="aws", aws_endpoint_url=f"http://127.0.0.1:{closed_port}")
    storage = S3Storage(client(settings, "s3", max_attempts=1, connect_timeout_s=2))

    with pytest.raises(BackendError):
        storage.download("s3://media-bucket/in.mp4", str(tmp_path / "in.mp4"), max_bytes=MIB)
    with pytest.raises(BackendError):
        storage.upload(_file(tmp_path / "out.mp4", 10), "s3://media-bucket/out.mp4")


def test_a_download_cut_mid_way_fetches_only_the_cut_ranges_again(s3, bucket, tmp_path,
                                                                    moto_server):
    from tests.fixtures.fault_proxy import FaultProxy

    size = 20 * MIB + 17
    s3.upload_file(_file(tmp_path / "big.mov", size), bucket, "in/big.mov")
    with FaultProxy(moto_server.endpoint_url) as proxy:
        through = client(Settings(backend="aws", aws_endpoint_url=proxy.url), "s3")
        storage = S3Storage(through, multipart_threshold_bytes=5 * MIB,
                            multipart_chunk_bytes=5 * MIB)
        proxy.cut_bodies(2)  # two connections reset mid-way
        got = storage.download(f"s3://{bucket}/in/big.mov", str(tmp_path / "back.mov"),
                               max_bytes=size)
        through.close()
        sent = proxy.s3_body_bytes

    assert got == size
    assert (tmp_path / "back.mov").read_bytes() == (tmp_path / "big.mov").read_bytes()
    assert proxy.faults[("s3", "cut-body")] == 2
    # Two cut 5 MiB ranges cost at most 5 MiB more, not whole restarts.
    assert sent <= size + 5 * MIB + 17


def test_a_download_stops_once_its_job_is_cancelled(s3, bucket, tmp_path):
    storage = S3Storage(s3, multipart_threshold_bytes=5 * MIB, multipart_chunk_bytes=5 * MIB)
    s3.put_object(Bucket=bucket, Key="big.bin", Body=b"\0" * (12 * MIB))
    stop = threading.Event()
    stop.set()  # cancelled before the first chunk arrives

    with pytest.raises(StorageError, match="was stopped"):
        storage.download(f"s3://{bucket}/big.bin", str(tmp_path / "got"), 20 * MIB, stop=stop)
