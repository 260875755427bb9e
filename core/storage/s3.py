"""s3://bucket/key sources and destinations on Amazon S3.

The key is everything after the bucket's slash, taken as it is (like the
AWS CLI: no percent-decoding; '?' and '#' are part of the key). Access
comes only from boto3's standard credential chain (the instance profile on
an encoder); a URI that carries credentials, as the original's
s3://KEY:SECRET@bucket/key did, is refused and never repeated in messages.

What retrying cannot fix (no such key or bucket, access denied, too large)
is StorageError, which fails the job; S3 unreachable or failing after
botocore's retries is BackendError, so the job's message comes back later.
"""
from __future__ import annotations

import ipaddress
import os
import queue
import re
from collections.abc import Sequence

import boto3.s3.transfer
import botocore.exceptions
import s3transfer.subscribers

from core.aws import aws_errors, error_code
from core.errors import StorageError, ValidationError
from core.interfaces import OutputFile, Storage
from core.settings import Settings
from core.storage.content_types import content_type_for
from core.storage.output_files import stopped, upload_order

SCHEME = "s3"
CREDENTIALS_REFUSAL = (
    "s3:// URIs must not carry credentials (the s3://KEY:SECRET@bucket/key form); "
    "give the encoders and the feeder an IAM instance profile, or use the standard "
    "AWS credential chain (environment, ~/.aws/credentials), and write s3://bucket/key")

MULTIPART_THRESHOLD_BYTES = 16 * 1024 * 1024
MULTIPART_CHUNK_BYTES = 16 * 1024 * 1024
MAX_KEY_BYTES = 1024
# How soon a set's upload notices its stop event.
_STOP_CHECK_S = 0.1

# Current S3 bucket naming rules (3-63 characters; lowercase letters,
# digits, dots, hyphens; a letter or digit at each end).
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")

_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_DENIED_CODES = frozenset({"AccessDenied", "403", "AllAccessDisabled"})


def _refuse(role: str, reason: str) -> ValidationError:
    return ValidationError(f"{role}: {reason}")


def parse_s3_uri(uri: str, role: str = "source") -> tuple[str, str]:
    """(bucket, key) of an s3://bucket/key URI.

    Raises ValidationError naming `role` for another scheme, embedded
    credentials (the message does not repeat the URI), a malformed bucket
    name, an empty key, a key over 1024 UTF-8 bytes or control characters.
    """
    if not isinstance(uri, str) or not uri.lower().startswith(f"{SCHEME}://"):
        raise _refuse(role, "not an s3://bucket/key URI")
    rest = uri[len(SCHEME) + 3:]
    bucket, slash, key = rest.partition("/")
    # '@' and ':' are never part of a bucket name: here they are userinfo
    # ("KEY:SECRET@bucket"), even when the secret contains a '/'.
    if "@" in bucket or ":" in bucket:
        raise _refuse(role, CREDENTIALS_REFUSAL)
    if not bucket:
        raise _refuse(role, "an s3:// URI needs a bucket (s3://bucket/key)")
    if (not _BUCKET_NAME.fullmatch(bucket) or ".." in bucket or _is_ip_address(bucket)):
        raise _refuse(role, f"{bucket!r} is not a valid S3 bucket name (3-63 lowercase "
                            "letters, digits, dots and hyphens)")
    if not slash or not key:
        raise _refuse(role, "an s3:// URI needs an object key after the bucket (s3://bucket/key)")
    if any(ord(char) < 32 or ord(char) == 127 for char in key):
        raise _refuse(role, "the S3 key contains control characters")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise _refuse(role, f"the S3 key is longer than {MAX_KEY_BYTES} bytes")
    return bucket, key


def _is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _stopper(uri: str, stop):
    """An s3transfer progress callback that ends the transfer once `stop` is set
    (the job was cancelled or its lease lost), or None when nothing can stop it."""
    if stop is None:
        return None

    def on_progress(_bytes: int) -> None:
        if stop.is_set():
            raise StorageError(f"reading source {uri} was stopped")
    return on_progress


class _Ended(s3transfer.subscribers.BaseSubscriber):
    """Puts (uri, future) on `ended` when a transfer ends, stored or not."""

    def __init__(self, ended: queue.Queue, uri: str):
        self._ended = ended
        self._uri = uri

    def on_done(self, future, **kwargs) -> None:
        self._ended.put((self._uri, future))


def _raise_for(future, uri: str) -> None:
    """Raise what the ended transfer of `uri` failed with, as a core.errors type."""
    with aws_errors(f"writing destination {uri}"):
        try:
            future.result()
        except botocore.exceptions.ClientError as exc:
            raise _refusal(exc, "destination", uri) or exc
        except OSError as exc:
            raise StorageError(f"uploading {uri} failed: {exc.strerror or exc}") from None


def _refusal(exc: botocore.exceptions.ClientError, role: str, uri: str) -> StorageError | None:
    """The StorageError for an S3 answer that retrying cannot change, else None."""
    code = error_code(exc)
    if code in _MISSING_CODES:
        return StorageError(f"{role} {uri} does not exist")
    if code == "NoSuchBucket":
        return StorageError(f"{role} bucket of {uri} does not exist")
    if code in _DENIED_CODES:
        return StorageError(f"{role} {uri}: access denied (the instance role needs "
                            f"{'s3:GetObject' if role == 'source' else 's3:PutObject'} on it)")
    if code == "InvalidObjectState":
        return StorageError(f"{role} {uri} is archived; restore it before encoding")
    return None


class S3Storage(Storage):
    """s3://bucket/key through the boto3 S3 `client`.

    Transfers use boto3's managed transfer (s3transfer): one request up to
    `multipart_threshold_bytes`; above it a multipart upload, or ranged
    parallel GETs, of `multipart_chunk_bytes` parts (S3 needs upload parts
    of 5 MiB or more, boto3 raises smaller chunk sizes to that).
    """

    schemes = (SCHEME,)

    def __init__(self, client, multipart_threshold_bytes: int = MULTIPART_THRESHOLD_BYTES,
                 multipart_chunk_bytes: int = MULTIPART_CHUNK_BYTES, max_concurrency: int = 4,
                 upload_parallel_requests: int = 8):
        self._client = client
        self._transfer_config = boto3.s3.transfer.TransferConfig(
            multipart_threshold=multipart_threshold_bytes,
            multipart_chunksize=multipart_chunk_bytes,
            max_concurrency=max_concurrency)
        self._set_config = boto3.s3.transfer.TransferConfig(
            multipart_threshold=multipart_threshold_bytes,
            multipart_chunksize=multipart_chunk_bytes,
            max_concurrency=upload_parallel_requests,
            preferred_transfer_client="classic")

    @classmethod
    def from_settings(cls, settings: Settings) -> "S3Storage":
        from core.aws import client

        return cls(client(settings, "s3"),
                   upload_parallel_requests=settings.s3_upload_parallel_requests)

    def check_source(self, uri: str) -> None:
        parse_s3_uri(uri, "source")

    def check_destination(self, uri: str) -> None:
        parse_s3_uri(uri, "destination")

    def download(self, uri: str, local_path: str, max_bytes: int, stop=None) -> int:
        """Copy the object into `local_path`; returns bytes written.

        Through s3transfer: an object above the multipart threshold comes in
        ranged GETs of `multipart_chunk_bytes`, `max_concurrency` at a time;
        a connection reset mid-way fetches that range again, not the whole
        object; every range is asked for with the ETag first seen (IfMatch),
        so a replaced object cannot be stitched from two versions. `stop`
        (a threading.Event), once set, ends the transfer at its next chunk.

        Raises StorageError if the URI is refused, the object or bucket does
        not exist, access is denied, or it holds more than `max_bytes`;
        BackendError if S3 fails.
        """
        bucket, key = self._parsed(uri, "source")
        with aws_errors(f"reading source {uri}"):
            try:
                size = int(self._client.head_object(Bucket=bucket, Key=key)["ContentLength"])
                if size > max_bytes:
                    raise StorageError(f"source {uri} is larger than the limit of {max_bytes} bytes")
                self._client.download_file(bucket, key, local_path, Config=self._transfer_config,
                                           Callback=_stopper(uri, stop))
            except botocore.exceptions.ClientError as exc:
                if error_code(exc) in _MISSING_CODES and not self._bucket_exists(bucket):
                    raise StorageError(f"source bucket of {uri} does not exist") from None
                raise _refusal(exc, "source", uri) or exc
            except OSError as exc:
                raise StorageError(f"writing the download of {uri} failed: "
                                   f"{exc.strerror or exc}") from None
        written = os.path.getsize(local_path)
        if written > max_bytes:  # replaced by a larger object between the two reads
            os.unlink(local_path)
            raise StorageError(f"source {uri} is larger than the limit of {max_bytes} bytes")
        if written != size:
            raise StorageError(f"source {uri} ended after {written} of {size} bytes")
        return written

    def upload(self, local_path: str, uri: str) -> None:
        """Write `local_path` to the object (atomic: readers see the old object
        or the whole new one). Raises StorageError if the URI is refused, the
        bucket does not exist, access is denied or the local file cannot be
        read; BackendError if S3 fails."""
        bucket, key = self._parsed(uri, "destination")
        # The project's own table, not mimetypes: its answers depend on the machine.
        extra = {"ContentType": content_type_for(key)}
        try:
            with open(local_path, "rb") as reader, aws_errors(f"writing destination {uri}"):
                try:
                    # upload_fileobj, unlike upload_file, lets S3's error code through.
                    self._client.upload_fileobj(reader, bucket, key, ExtraArgs=extra,
                                                Config=self._transfer_config)
                except botocore.exceptions.ClientError as exc:
                    raise _refusal(exc, "destination", uri) or exc
        except OSError as exc:
            raise StorageError(f"uploading to {uri} failed: {exc.strerror or exc}") from None

    def upload_files(self, files: Sequence[OutputFile], prefix_uri: str, stop=None) -> None:
        """Upload every file to `prefix_uri` + key with its content type (see
        Storage.upload_files).

        One s3transfer manager carries the files not marked `last`: up to
        `upload_parallel_requests` requests at once, a file above the
        multipart threshold in parts. Once all of them are stored, the `last`
        ones follow one at a time in the order given. On the first failure,
        or once `stop` is set, the transfers still running are cancelled
        (an unfinished multipart upload is aborted) before this returns.

        Raises StorageError naming the file (bad key, unreadable local file,
        missing bucket, access denied) or saying it was stopped;
        BackendError naming the file when S3 fails after retries.
        """
        first, last = upload_order(files, prefix_uri)
        targets = {file.key: self._parsed(prefix_uri + file.key, "destination") for file in files}
        # Leaving the manager's block by an exception cancels the transfers
        # still running (aborting unfinished multipart uploads) and waits for
        # them. (Its shutdown(cancel=True) fails in s3transfer 0.19.)
        with boto3.s3.transfer.create_transfer_manager(self._client, self._set_config) as manager:
            for batch in [first] + [[file] for file in last]:
                self._upload_batch(manager, batch, prefix_uri, targets, stop)

    def _upload_batch(self, manager, batch, prefix_uri: str, targets, stop) -> None:
        """Upload `batch` through `manager` at once; return when all are
        stored. Raises on the first that fails, or once `stop` is set."""
        ended: queue.Queue = queue.Queue()
        for file in batch:
            bucket, key = targets[file.key]
            manager.upload(file.local_path, bucket, key,
                           extra_args={"ContentType": file.content_type},
                           subscribers=[_Ended(ended, prefix_uri + file.key)])
        for _ in batch:
            while True:
                if stop is not None and stop.is_set():
                    raise stopped(prefix_uri)
                try:
                    uri, future = ended.get(timeout=_STOP_CHECK_S)
                    break
                except queue.Empty:
                    continue
            _raise_for(future, uri)

    def _bucket_exists(self, bucket: str) -> bool:
        # A HEAD answer has no body: 404 says "no key" and "no bucket" alike.
        try:
            self._client.head_bucket(Bucket=bucket)
        except botocore.exceptions.ClientError as exc:
            return error_code(exc) not in _MISSING_CODES | {"NoSuchBucket"}
        return True

    def _parsed(self, uri: str, role: str) -> tuple[str, str]:
        try:
            return parse_s3_uri(uri, role)
        except ValidationError as exc:
            raise StorageError(str(exc)) from None
