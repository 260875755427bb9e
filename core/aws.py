"""boto3 clients for the AWS backends, and the boundary where botocore's
errors become the project's own.

Credentials come only from boto3's standard chain (environment, shared
config, the instance profile): never from settings, URIs or user data.
Throttling and 5xx answers are retried by botocore's "standard" retry mode
with bounded backoff; what still fails reaches the caller as BackendError.
"""
from __future__ import annotations

import contextlib
import dataclasses

import boto3
import botocore.config
import botocore.exceptions

from core.errors import BackendError, ConflictError, NotFound
from core.settings import Settings

# Retries for throttling, 5xx and connection errors, with botocore's
# exponential backoff and jitter; bounded so a dead service surfaces.
RETRY_MAX_ATTEMPTS = 8


@dataclasses.dataclass(frozen=True)
class RetryBudget:
    """How long one call may take: attempts (with botocore's backoff) and timeouts."""

    max_attempts: int
    connect_timeout_s: float
    read_timeout_s: float


# Daemons (encoders, scheduler, scaler) wait out a bad minute.
BACKGROUND = RetryBudget(RETRY_MAX_ATTEMPTS, connect_timeout_s=5, read_timeout_s=30)
# An API request answers within seconds, an error (503) if it must: its
# client retries, not we for minutes. At worst about 3 x 5 s plus backoff.
INTERACTIVE = RetryBudget(3, connect_timeout_s=2, read_timeout_s=5)

_NOT_FOUND_CODES = frozenset({
    "NoSuchDomain", "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist",
    "NoSuchKey", "NoSuchBucket", "404", "ResourceNotFoundException",
    "InvalidInstanceID.NotFound", "AttributeDoesNotExist",
})
_CONFLICT_CODES = frozenset({"ConditionalCheckFailed", "ConditionalCheckFailedException"})
# A domain or table that is missing: for a store, a broken backend, not a missing record.
_CONTAINER_MISSING_CODES = frozenset({"NoSuchDomain", "ResourceNotFoundException"})


def client(settings: Settings, service: str, *, budget: RetryBudget = BACKGROUND,
           max_attempts: int | None = None, connect_timeout_s: float | None = None,
           read_timeout_s: float | None = None):
    """A boto3 client for `service` in settings.aws_region (at aws_endpoint_url
    if set), retrying within `budget` (each part may be given alone)."""
    max_attempts = budget.max_attempts if max_attempts is None else max_attempts
    connect_timeout_s = budget.connect_timeout_s if connect_timeout_s is None else connect_timeout_s
    read_timeout_s = budget.read_timeout_s if read_timeout_s is None else read_timeout_s
    config = botocore.config.Config(
        region_name=settings.aws_region,
        retries={"mode": "standard", "max_attempts": max_attempts},
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
    )
    return boto3.session.Session().client(
        service, endpoint_url=settings.aws_endpoint_url or None, config=config)


def error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextlib.contextmanager
def aws_errors(what: str, *, missing_container_is_error: bool = False):
    """Translate botocore errors raised inside the block into core.errors types.

    ConditionalCheckFailed -> ConflictError; not-found codes -> NotFound;
    anything else (throttling after retries, 5xx, no connection, no
    credentials) -> BackendError. `what` names the operation in the message.
    With `missing_container_is_error`, a missing SimpleDB domain or DynamoDB
    table is a BackendError: a job store's reads and writes must not take a
    deleted domain for a missing job (the API would answer 404, an encoder
    drop the job's message).
    """
    try:
        yield
    except botocore.exceptions.ClientError as exc:
        code = error_code(exc)
        message = exc.response.get("Error", {}).get("Message", "")
        if code in _CONFLICT_CODES:
            raise ConflictError(f"{what}: {code}") from None
        if missing_container_is_error and code in _CONTAINER_MISSING_CODES:
            raise BackendError(f"{what}: {code} {message}".strip()) from None
        if code in _NOT_FOUND_CODES:
            raise NotFound(f"{what}: {code} {message}".strip()) from None
        raise BackendError(f"{what}: {code} {message}".strip()) from None
    except botocore.exceptions.NoCredentialsError:
        raise BackendError(f"{what}: no AWS credentials (use an instance profile, "
                           "environment variables or ~/.aws/credentials)") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise BackendError(f"{what}: {exc}") from None
