"""core.storage.router: file:// inside the roots, http(s):// reads, dispatch by scheme."""
from __future__ import annotations

import http.server
import os
import threading

import pytest

from core.errors import StorageError, ValidationError
from core.interfaces import Storage
from core.settings import Settings
from core.storage.file import FileStorage
from core.storage.http import HttpStorage
from core.storage.router import StorageRouter, storage_for

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def root(tmp_path):
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def files(root):
    return FileStorage([root])


# --- file:// ---------------------------------------------------------

def test_file_download_copies_the_bytes(files, root, tmp_path):
    (root / "in.mp4").write_bytes(b"media" * 1000)
    local = tmp_path / "local"
    assert files.download((root / "in.mp4").as_uri(), str(local), max_bytes=10_000) == 5000
    assert local.read_bytes() == b"media" * 1000


def test_missing_source_says_it_does_not_exist(files, root, tmp_path):
    uri = (root / "nope.mp4").as_uri()
    with pytest.raises(StorageError, match=f"source {uri} does not exist"):
        files.download(uri, str(tmp_path / "local"), max_bytes=1000)


def test_source_outside_the_roots_is_refused(files, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    with pytest.raises(ValidationError, match="outside"):
        files.check_source(outside.as_uri())
    with pytest.raises(StorageError, match="outside"):
        files.download(outside.as_uri(), str(tmp_path / "local"), max_bytes=1000)


def test_dot_dot_and_symlinks_cannot_leave_the_root(files, root, tmp_path):
    (tmp_path / "secret.txt").write_text("secret")
    (root / "link").symlink_to(tmp_path / "secret.txt")
    for uri in (f"file://{root}/../secret.txt", (root / "link").as_uri()):
        with pytest.raises(StorageError, match="outside"):
            files.download(uri, str(tmp_path / "local"), max_bytes=1000)
    assert not (tmp_path / "local").exists()


@pytest.mark.parametrize("uri", ["file://otherhost/x.mp4", "file:relative.mp4",
                                 "http://example.com/x.mp4", "file:///root/x.mp4?x=1"])
def test_malformed_file_uris_are_validation_errors(files, uri):
    with pytest.raises(ValidationError):
        files.check_source(uri)


def test_source_larger_than_the_limit_is_refused(files, root, tmp_path):
    (root / "big").write_bytes(b"x" * 5000)
    with pytest.raises(StorageError, match="larger than the limit of 4999 bytes"):
        files.download((root / "big").as_uri(), str(tmp_path / "local"), max_bytes=4999)


def test_a_fifo_source_is_refused_without_hanging(files, root, tmp_path):
    os.mkfifo(root / "fifo")
    with pytest.raises(StorageError, match="not a regular file"):
        files.download((root / "fifo").as_uri(), str(tmp_path / "local"), max_bytes=1000)


def test_upload_creates_missing_folders_inside_the_root(files, root, tmp_path):
    local = tmp_path / "out"
    local.write_bytes(b"encoded")
    uri = (root / "a" / "b" / "out.mp4").as_uri()
    files.upload(str(local), uri)
    assert (root / "a" / "b" / "out.mp4").read_bytes() == b"encoded"
    assert os.listdir(root / "a" / "b") == ["out.mp4"], "no temporary file left behind"


def test_upload_replaces_an_existing_file_whole(files, root, tmp_path):
    (root / "out.mp4").write_bytes(b"old" * 100)
    local = tmp_path / "new"
    local.write_bytes(b"new")
    files.upload(str(local), (root / "out.mp4").as_uri())
    assert (root / "out.mp4").read_bytes() == b"new"


def test_failed_upload_leaves_the_old_file_and_no_temporary(files, root, tmp_path):
    (root / "out.mp4").write_bytes(b"old")
    with pytest.raises(StorageError, match="could not be written"):
        files.upload(str(tmp_path / "missing-local"), (root / "out.mp4").as_uri())
    assert (root / "out.mp4").read_bytes() == b"old"
    assert os.listdir(root) == ["out.mp4"]


def test_upload_outside_the_roots_is_refused(files, tmp_path):
    local = tmp_path / "out"
    local.write_bytes(b"x")
    with pytest.raises(StorageError, match="outside"):
        files.upload(str(local), (tmp_path / "elsewhere.mp4").as_uri())
    assert not (tmp_path / "elsewhere.mp4").exists()


def test_upload_under_a_file_says_the_folder_cannot_be_made(files, root, tmp_path):
    (root / "plain").write_text("a file, not a folder")
    local = tmp_path / "out"
    local.write_bytes(b"x")
    with pytest.raises(StorageError, match="destination folder"):
        files.upload(str(local), (root / "plain" / "out.mp4").as_uri())


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_upload_into_a_read_only_folder_says_not_writable(files, root, tmp_path):
    (root / "ro").mkdir()
    os.chmod(root / "ro", 0o555)
    local = tmp_path / "out"
    local.write_bytes(b"x")
    try:
        with pytest.raises(StorageError, match="destination folder is not writable"):
            files.upload(str(local), (root / "ro" / "out.mp4").as_uri())
    finally:
        os.chmod(root / "ro", 0o755)


# --- http(s):// --------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    body = b"0123456789" * 1000

    def do_GET(self):
        if self.path == "/clip":
            self._send(self.body)
        elif self.path == "/unsized":
            # No Content-Length: the size limit must hold while streaming.
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(self.body)
        elif self.path == "/to-file":
            self._redirect("file:///etc/passwd")
        elif self.path == "/to-metadata":
            self._redirect("http://169.254.169.254/latest/meta-data/")
        elif self.path == "/to-clip":
            self._redirect("/clip")
        else:
            self.send_error(404)

    def _send(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location):
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def test_http_download_streams_the_body(server, tmp_path):
    local = tmp_path / "local"
    assert HttpStorage(timeout_s=5).download(f"{server}/clip", str(local), 1_000_000) == 10_000
    assert local.read_bytes() == _Handler.body


def test_http_404_says_so(server, tmp_path):
    with pytest.raises(StorageError, match="source returned HTTP 404"):
        HttpStorage(timeout_s=5).download(f"{server}/missing", str(tmp_path / "local"), 1000)


@pytest.mark.parametrize("path", ["/clip", "/unsized"])
def test_http_body_over_the_limit_is_refused(server, tmp_path, path):
    with pytest.raises(StorageError, match="larger than the limit"):
        HttpStorage(timeout_s=5).download(f"{server}{path}", str(tmp_path / "local"), 9_999)


def test_http_redirect_to_a_file_uri_is_refused(server, tmp_path):
    with pytest.raises(StorageError, match="refused"):
        HttpStorage(timeout_s=5).download(f"{server}/to-file", str(tmp_path / "local"), 1_000_000)
    assert not (tmp_path / "local").exists()


def test_http_redirect_to_a_link_local_address_is_refused(server, tmp_path):
    with pytest.raises(StorageError, match="refused: its address"):
        HttpStorage(timeout_s=5).download(f"{server}/to-metadata", str(tmp_path / "local"), 1000)


def test_http_redirect_to_http_is_followed(server, tmp_path):
    local = tmp_path / "local"
    HttpStorage(timeout_s=5).download(f"{server}/to-clip", str(local), 1_000_000)
    assert local.read_bytes() == _Handler.body


def test_unreachable_http_source_is_a_storage_error(tmp_path):
    with pytest.raises(StorageError, match="could not be reached"):
        # Port 9 on loopback: nothing listens, the connection is refused at once.
        HttpStorage(timeout_s=5).download("http://127.0.0.1:9/x", str(tmp_path / "local"), 100)


def test_http_is_read_only_and_credentials_are_refused(tmp_path):
    storage = HttpStorage()
    with pytest.raises(ValidationError):
        storage.check_destination("http://example.com/out.mp4")
    with pytest.raises(StorageError, match="not supported"):
        storage.upload(str(tmp_path / "x"), "https://example.com/out.mp4")
    with pytest.raises(ValidationError, match="credentials"):
        storage.check_source("https://user:secret@example.com/in.mp4")


# --- dispatch ---------------------------------------------------------

def test_router_dispatches_by_scheme_and_names_what_it_supports(root, tmp_path):
    router = storage_for(Settings(file_roots=(str(root),)))
    assert router.schemes == ("file", "http", "https", "s3")
    (root / "in").write_bytes(b"abc")
    router.download((root / "in").as_uri(), str(tmp_path / "local"), 100)
    assert (tmp_path / "local").read_bytes() == b"abc"
    with pytest.raises(ValidationError, match="'ftp' is not supported"):
        router.check_source("ftp://host/in.mp4")
    with pytest.raises(StorageError, match="no storage"):
        router.download("ftp://host/in.mp4", str(tmp_path / "x"), 100)


def test_router_takes_another_storage_for_a_new_scheme(tmp_path):
    class Memory(Storage):
        schemes = ("mem",)

        def download(self, uri, local_path, max_bytes, stop=None):
            with open(local_path, "wb") as out:
                return out.write(uri.encode())

        def upload(self, local_path, uri):
            raise StorageError("read only")

    router = StorageRouter([HttpStorage()])
    router.register(Memory())
    assert router.download("mem://x", str(tmp_path / "local"), 100) == len("mem://x")
    router.check_source("mem://x")


@pytest.mark.parametrize("uri", ["http://169.254.169.254/latest/meta-data/iam/",
                                 "http://[fe80::1]/x.mp4"])
def test_http_source_on_a_link_local_address_is_refused(uri, tmp_path):
    # Cloud metadata services answer there; no connection is attempted.
    with pytest.raises(StorageError, match="refused: its address"):
        HttpStorage(timeout_s=1).download(uri, str(tmp_path / "local"), 1000)
