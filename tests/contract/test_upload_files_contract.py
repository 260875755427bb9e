"""Storage.upload_files: a set of files under a destination prefix, playlists
last, run against every writable storage (file://, and s3:// on moto's server),
always through the StorageRouter the encoder uses.

The order is observed where each backend really writes: the file storage's
atomic write of each file, and on S3 the requests botocore sends to the
server (a PutObject, or CreateMultipartUpload .. CompleteMultipartUpload).
"""
from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from tests.fixtures.aws import unique_name
from core.aws import client
from core.errors import BackendError, StorageError
from core.interfaces import OutputFile
from core.settings import Settings
from core.storage.content_types import content_type_for
from core.storage.file import FileStorage
from core.storage.router import StorageRouter
from core.storage.s3 import S3Storage

pytestmark = pytest.mark.timeout(60)

MIB = 1024 * 1024


class Observer:
    """What a backend did, in order: ("start", key) when a file's write began,
    ("end", key) once it was stored; `peak` is the most requests seen in
    flight at once. `on_end` runs after each stored file (a test's fault)."""

    def __init__(self):
        self.events: list[tuple[str, str]] = []
        self.on_end = lambda key: None
        self._lock = threading.Lock()
        self._in_flight = 0
        self.peak = 0

    def started(self, key: str, counts: bool = True) -> None:
        with self._lock:
            self.events.append(("start", key))
            self._in_flight += counts
            self.peak = max(self.peak, self._in_flight)

    def ended(self, key: str, counts: bool = True) -> None:
        with self._lock:
            self.events.append(("end", key))
            self._in_flight -= counts
        self.on_end(key)

    def request(self, delta: int) -> None:
        with self._lock:
            self._in_flight += delta
            self.peak = max(self.peak, self._in_flight)


class ObservedFileStorage(FileStorage):
    def __init__(self, roots, folder: Path, observer: Observer):
        super().__init__(roots)
        self._folder = folder.resolve()
        self._observer = observer

    def _write(self, local_path, path, uri):
        key = path.relative_to(self._folder).as_posix()
        self._observer.started(key)
        super()._write(local_path, path, uri)
        self._observer.ended(key)


class FileTarget:
    def __init__(self, tmp_path: Path):
        self.root = tmp_path / "media"
        self.folder = self.root / "out" / "clip 1"
        self.root.mkdir()
        self.prefix = self.folder.as_uri() + "/"
        self.observer = Observer()

    def storage(self, **_options) -> StorageRouter:
        return StorageRouter([ObservedFileStorage([self.root], self.folder, self.observer)])

    def stored(self) -> dict[str, bytes]:
        if not self.folder.exists():
            return {}
        return {path.relative_to(self.folder).as_posix(): path.read_bytes()
                for path in self.folder.rglob("*") if path.is_file()}

    def content_type(self, key: str) -> str | None:
        return None  # a file system keeps no type

    def close(self) -> None:
        pass


class S3Target:
    def __init__(self, endpoint_url: str):
        self.client = client(Settings(backend="aws", aws_endpoint_url=endpoint_url), "s3")
        self.bucket = unique_name("nommer-sets")
        self.client.create_bucket(Bucket=self.bucket)
        self.base = "ladders/clip 1/"
        self.prefix = f"s3://{self.bucket}/{self.base}"
        self.observer = Observer()
        events = self.client.meta.events
        events.register("before-parameter-build.s3", self._before)
        events.register("after-call.s3", self._after)

    def _before(self, params, model, context, **_kwargs):
        key = params.get("Key", "")
        if not key.startswith(self.base):
            return
        context["observed_key"] = key[len(self.base):]
        if model.name in ("PutObject", "CreateMultipartUpload"):
            self.observer.started(context["observed_key"], counts=model.name == "PutObject")
        elif model.name == "UploadPart":
            self.observer.request(+1)

    def _after(self, http_response, model, context, **_kwargs):
        key = context.get("observed_key")
        if key is None:
            return
        if model.name == "UploadPart":
            self.observer.request(-1)
        elif http_response.status_code == 200 and model.name in (
                "PutObject", "CompleteMultipartUpload"):
            self.observer.ended(key, counts=model.name == "PutObject")

    def storage(self, **options) -> StorageRouter:
        options.setdefault("upload_parallel_requests", 4)
        return StorageRouter([S3Storage(self.client, **options)])

    def stored(self) -> dict[str, bytes]:
        found = {}
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        for page in pages:
            for item in page.get("Contents", []):
                body = self.client.get_object(Bucket=self.bucket, Key=item["Key"])["Body"]
                found[item["Key"][len(self.base):]] = body.read()
        return found

    def content_type(self, key: str) -> str | None:
        return self.client.head_object(Bucket=self.bucket, Key=self.base + key)["ContentType"]

    def etag(self, key: str) -> str:
        return self.client.head_object(Bucket=self.bucket, Key=self.base + key)["ETag"].strip('"')

    def close(self) -> None:
        self.client.close()


@pytest.fixture(params=["file", "s3"])
def target(request, tmp_path):
    if request.param == "file":
        built = FileTarget(tmp_path)
    else:
        built = S3Target(request.getfixturevalue("moto_server").endpoint_url)
    yield built
    built.close()


@pytest.fixture
def s3_target(moto_server):
    """For what only S3 has: content types, parallel requests, multipart."""
    built = S3Target(moto_server.endpoint_url)
    yield built
    built.close()


def _ladder(tmp_path: Path, segment_bytes: int = 20_000) -> list[OutputFile]:
    """An HLS-like set: two renditions of init + 4 segments, an audio
    rendition, a sprite and its track; the playlists come first in the
    list (marked last), the master after the renditions' playlists."""
    local = tmp_path / "local"
    local.mkdir(exist_ok=True)

    def file(key: str, size: int, last: bool = False) -> OutputFile:
        path = local / key.replace("/", "__")
        path.write_bytes(os.urandom(size))
        return OutputFile(str(path), key, content_type_for(key), last)

    playlists = [file("360p/index.m3u8", 300, True), file("720p/index.m3u8", 300, True),
                 file("audio/index.m3u8", 300, True), file("master.m3u8", 400, True)]
    media = [file(f"{rendition}/init.mp4", 800) for rendition in ("360p", "720p", "audio")]
    media += [file(f"{rendition}/seg_{n:05d}.m4s", segment_bytes)
              for rendition in ("360p", "720p", "audio") for n in range(1, 5)]
    media += [file("sprite.jpg", 5000), file("sprite.vtt", 200)]
    return playlists + media


def _local_bytes(files: list[OutputFile]) -> dict[str, bytes]:
    return {file.key: Path(file.local_path).read_bytes() for file in files}


def test_every_file_is_stored_with_its_bytes(target, tmp_path):
    files = _ladder(tmp_path)

    target.storage().upload_files(files, target.prefix)

    assert target.stored() == _local_bytes(files)


def test_each_object_carries_its_content_type(s3_target, tmp_path):
    target = s3_target
    files = _ladder(tmp_path)

    target.storage().upload_files(files, target.prefix)

    expected = {"master.m3u8": "application/vnd.apple.mpegurl", "360p/init.mp4": "video/mp4",
                "720p/seg_00003.m4s": "video/iso.segment", "sprite.jpg": "image/jpeg",
                "sprite.vtt": "text/vtt"}
    for key, content_type in expected.items():
        assert target.content_type(key) == content_type
    for file in files:
        assert target.content_type(file.key) == file.content_type


def test_playlists_are_written_after_every_other_file_in_the_order_given(target, tmp_path):
    files = _ladder(tmp_path)
    last = [file.key for file in files if file.last]
    others = {file.key for file in files if not file.last}

    target.storage().upload_files(files, target.prefix)

    events = target.observer.events
    assert sorted(key for kind, key in events if kind == "end") == sorted(_local_bytes(files))
    first_playlist_start = events.index(("start", last[0]))
    ended_before = {key for kind, key in events[:first_playlist_start] if kind == "end"}
    assert ended_before == others
    # One playlist at a time, in the order given: each starts after the one before ended.
    playlist_events = [event for event in events if event[1] in last]
    assert playlist_events == [(kind, key) for key in last for kind in ("start", "end")]


def test_files_go_to_s3_in_parallel(s3_target, tmp_path):
    target = s3_target
    target.storage().upload_files(_ladder(tmp_path, segment_bytes=200_000), target.prefix)
    assert target.observer.peak >= 2


def test_a_file_above_the_threshold_is_stored_in_parts(s3_target, tmp_path):
    target = s3_target
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(6 * MIB + 123))
    files = [OutputFile(str(big), "1080p/full.mp4", "video/mp4"), *_ladder(tmp_path)]
    storage = target.storage(multipart_threshold_bytes=1 * MIB, multipart_chunk_bytes=5 * MIB)

    storage.upload_files(files, target.prefix)

    # A multipart object's ETag ends in "-<number of parts>".
    assert target.etag("1080p/full.mp4").endswith("-2")
    assert target.stored()["1080p/full.mp4"] == big.read_bytes()
    assert target.content_type("1080p/full.mp4") == "video/mp4"
    assert "-" not in target.etag("360p/seg_00001.m4s")


@pytest.mark.parametrize("bad_key", ["../escape.m4s", "720p/../../escape.m4s", "/etc/escape",
                                     "720p//seg.m4s", "./seg.m4s", "720p\\..\\seg.m4s", ""])
def test_a_key_that_could_leave_the_prefix_refuses_the_whole_set(target, tmp_path, bad_key):
    files = _ladder(tmp_path)
    files.insert(3, OutputFile(files[-1].local_path, bad_key, "video/iso.segment"))

    with pytest.raises(StorageError, match="key"):
        target.storage().upload_files(files, target.prefix)

    assert target.stored() == {}


def test_a_symbolic_link_inside_the_folder_cannot_lead_out_of_it(tmp_path):
    target = FileTarget(tmp_path)
    elsewhere = target.root / "elsewhere"
    elsewhere.mkdir()
    target.folder.mkdir(parents=True)
    (target.folder / "720p").symlink_to(elsewhere)

    with pytest.raises(StorageError, match="leads outside"):
        target.storage().upload_files(_ladder(tmp_path), target.prefix)

    assert list(elsewhere.iterdir()) == []


def test_a_root_itself_may_be_the_destination_folder(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    files = _ladder(tmp_path)
    FileStorage([root]).upload_files(files, root.as_uri() + "/")
    assert (root / "master.m3u8").read_bytes() == Path(files[3].local_path).read_bytes()


def test_a_prefix_outside_the_roots_or_not_a_folder_is_refused(tmp_path):
    target = FileTarget(tmp_path)
    files = _ladder(tmp_path)
    with pytest.raises(StorageError, match="outside"):
        target.storage().upload_files(files, (tmp_path / "other").as_uri() + "/")
    with pytest.raises(StorageError, match="must end with '/'"):
        target.storage().upload_files(files, target.folder.as_uri())


def test_a_failure_names_the_file_and_no_playlist_is_written(target, tmp_path):
    files = _ladder(tmp_path)
    broken = next(file for file in files if file.key == "720p/seg_00003.m4s")
    os.unlink(broken.local_path)

    with pytest.raises(StorageError) as failed:
        target.storage().upload_files(files, target.prefix)

    assert "720p/seg_00003.m4s" in str(failed.value)
    assert not any(key.endswith(".m3u8") for key in target.stored())


def test_setting_stop_ends_the_upload_before_the_playlists(target, tmp_path):
    files = _ladder(tmp_path)
    stop = threading.Event()
    target.observer.on_end = lambda key: stop.set()

    with pytest.raises(StorageError, match="stopped"):
        target.storage().upload_files(files, target.prefix, stop=stop)

    assert not any(key.endswith(".m3u8") for key in target.stored())


def test_a_missing_bucket_fails_naming_the_file(moto_server, tmp_path):
    storage = S3Storage(client(Settings(backend="aws", aws_endpoint_url=moto_server.endpoint_url),
                               "s3"))
    prefix = f"s3://{unique_name('no-such-bucket')}/out/"
    with pytest.raises(StorageError, match=r"bucket of s3://.*/out/\S+ does not exist"):
        storage.upload_files(_ladder(tmp_path), prefix)


def test_s3_unreachable_is_a_retryable_backend_error_naming_the_file(tmp_path):
    files = [file for file in _ladder(tmp_path) if file.key == "360p/seg_00002.m4s"]
    # Bound but never listening for the whole test: every connection is refused.
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        endpoint_url = "http://127.0.0.1:%d" % unused.getsockname()[1]
        storage = S3Storage(client(Settings(backend="aws", aws_endpoint_url=endpoint_url), "s3",
                                   max_attempts=1, connect_timeout_s=2))
        with pytest.raises(BackendError, match="360p/seg_00002.m4s"):
            storage.upload_files(files, "s3://media-bucket/out/")


def test_an_unknown_scheme_is_a_storage_error(tmp_path):
    with pytest.raises(StorageError, match="no storage"):
        StorageRouter([FileStorage([tmp_path])]).upload_files(_ladder(tmp_path), "ftp://host/out/")
