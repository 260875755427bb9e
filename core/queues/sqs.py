"""The AWS queue: core.interfaces.Queue on Amazon SQS (a standard queue).

The queue is created on first use when missing, together with its
dead-letter queue f"{name}_dead", tied to it by a RedrivePolicy whose
maxReceiveCount is `dead_letter_after`. A queue that already exists is used
as it is, its attributes left alone, unless its RedrivePolicy would
dead-letter a message before `dead_letter_after` receives: then it is
refused with a ConfigError naming the setting (`check()` at start-up).

SQS counts visibility timeouts and long-poll waits in whole seconds, so
fractional seconds are rounded up (a message is never hidden for less than
asked; a long poll may wait up to one second longer than `wait_s`).
"""
from __future__ import annotations

import contextlib
import json
import math
import time

import botocore.exceptions

from core.aws import BACKGROUND, RetryBudget, aws_errors, error_code
from core.errors import BackendError, ConfigError, NotFound
from core.interfaces import Message, Queue
from core.settings import Settings

# ReceiveMessage limits set by SQS.
MAX_WAIT_S = 20
MAX_MESSAGES_PER_RECEIVE = 10
MAX_VISIBILITY_TIMEOUT_S = 43200
MAX_DELAY_S = 900

# A long poll whose remaining time is below this is not worth another request.
_WAIT_SLACK_S = 0.05

# Codes SQS gives a receipt handle it does not know (malformed, of a deleted
# message) or one of a message no longer in flight; with and without the
# AWS.SimpleQueueService. prefix the query protocol adds.
_UNKNOWN_RECEIPT_CODES = frozenset({
    "ReceiptHandleIsInvalid", "InvalidReceiptHandle",
    "MessageNotInflight", "AWS.SimpleQueueService.MessageNotInflight",
    "AWS.SimpleQueueService.ReceiptHandleIsInvalid",
})
# SQS also refuses a receipt handle past its message's 12 h in flight, or of
# a message that is no longer in flight, with InvalidParameterValue ("Value
# ... for parameter ReceiptHandle is invalid. Reason: The receipt handle has
# expired." / "... Message does not exist or is not available for
# visibility timeout change."); other InvalidParameterValue errors are not that.
_STALE_RECEIPT_REASONS = ("receipt handle has expired", "message does not exist",
                          "not available for visibility timeout change")


def _is_unknown_receipt(exc: botocore.exceptions.ClientError) -> bool:
    code = error_code(exc)
    if code in _UNKNOWN_RECEIPT_CODES:
        return True
    message = str(exc.response.get("Error", {}).get("Message", "")).lower()
    return (code in ("InvalidParameterValue", "AWS.SimpleQueueService.InvalidParameterValue")
            and "receipthandle" in message.replace(" ", "")
            and any(reason in message for reason in _STALE_RECEIPT_REASONS))


_QUEUE_EXISTS_CODES = frozenset({
    "QueueAlreadyExists", "QueueNameExists", "AWS.SimpleQueueService.QueueNameExists",
})


def _whole_seconds(seconds: float, limit: int) -> int:
    if seconds < 0:
        raise ValueError("a timeout must not be negative")
    return min(limit, math.ceil(seconds))


class SQSQueue(Queue):
    """The SQS queue `name`, reached through the boto3 SQS `client`.

    visibility_timeout_s: how long a received message stays hidden (sent
        with every ReceiveMessage, so an existing queue's default does not matter).
    dead_letter_after: SQS maxReceiveCount of a queue this creates: a message
        already received this many times goes to f"{name}_dead" instead.
    dead_letter_setting: the setting dead_letter_after comes from; when
        given, an existing queue must not dead-letter sooner (ConfigError
        naming it).
    The constructor does no I/O. Every method raises BackendError when SQS
    fails after botocore's retries.
    """

    def __init__(self, client, name: str, visibility_timeout_s: float = 60,
                 dead_letter_after: int = 6, *, owns_client: bool = False,
                 dead_letter_setting: str | None = None):
        if visibility_timeout_s < 0 or dead_letter_after < 1:
            raise ValueError("visibility_timeout_s >= 0 and dead_letter_after >= 1 are required")
        self.name = name
        self.dead_letter_name = f"{name}_dead"
        self.visibility_timeout_s = visibility_timeout_s
        self.dead_letter_after = dead_letter_after
        self._client = client
        self._owns_client = owns_client
        self.dead_letter_setting = dead_letter_setting
        self._queue_url: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings, name: str, dead_letter_after: int,
                      dead_letter_setting: str | None = None,
                      budget: RetryBudget = BACKGROUND) -> "SQSQueue":
        """The queue `name` in settings.aws_region with settings.visibility_timeout_s."""
        from core.aws import client

        return cls(client(settings, "sqs", budget=budget), name,
                   visibility_timeout_s=settings.visibility_timeout_s,
                   dead_letter_after=dead_letter_after, owns_client=True,
                   dead_letter_setting=dead_letter_setting)

    def check(self) -> None:
        """Find or create the queue now. Raises ConfigError if an existing
        queue dead-letters too early, BackendError if SQS cannot be reached."""
        self._url()

    def send(self, body: str, delay_s: float = 0.0) -> str:
        """Enqueue `body`, visible after `delay_s` (DelaySeconds, rounded up,
        at most 900 s); returns the SQS message id."""
        delay_whole_s = _whole_seconds(delay_s, MAX_DELAY_S)
        url = self._url()
        with self._errors("send to"):
            return self._client.send_message(QueueUrl=url, MessageBody=body,
                                             DelaySeconds=delay_whole_s)["MessageId"]

    def receive(self, max_messages: int = 1, wait_s: float = 0.0,
                visibility_timeout_s: float | None = None) -> list[Message]:
        """Up to `max_messages` (at most 10, SQS's limit) visible messages,
        each hidden for `visibility_timeout_s` (default: the queue's).

        With `wait_s` > 0, long-polls (20 s per request, repeated for a longer
        `wait_s`) and returns as soon as something arrives; [] when nothing did.
        """
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        hide_s = self.visibility_timeout_s if visibility_timeout_s is None else visibility_timeout_s
        hide_whole_s = _whole_seconds(hide_s, MAX_VISIBILITY_TIMEOUT_S)
        url = self._url()
        deadline = time.monotonic() + max(0.0, wait_s)
        while True:
            remaining_s = deadline - time.monotonic()
            wait_whole_s = max(0, min(MAX_WAIT_S, math.ceil(remaining_s - _WAIT_SLACK_S)))
            received = self._receive_once(url, max_messages, wait_whole_s, hide_whole_s)
            if received:
                return received
            if deadline - time.monotonic() <= _WAIT_SLACK_S:
                return []

    def delete(self, receipt: str) -> None:
        """Remove the received message. An unknown receipt is ignored.

        Unlike the embedded queue, a superseded receipt (the message was
        received again since) may still delete the message: SQS accepts old
        receipt handles. Nothing may rely on it; claims in the job store
        keep duplicate deliveries apart.
        """
        url = self._url()
        with self._errors("delete from"):
            try:
                self._client.delete_message(QueueUrl=url, ReceiptHandle=receipt)
            except botocore.exceptions.ClientError as exc:
                if not _is_unknown_receipt(exc):
                    raise

    def extend(self, receipt: str, visibility_timeout_s: float) -> None:
        """Hide the message for `visibility_timeout_s` seconds from now
        (ChangeMessageVisibility; rounded up to whole seconds, at most 12 h).

        Raises NotFound if SQS no longer takes `receipt` (the message was
        deleted, is no longer in flight, passed its 12 h in flight, or the
        receipt is malformed); a superseded receipt may still extend, as SQS
        accepts old receipt handles.
        """
        timeout_whole_s = _whole_seconds(visibility_timeout_s, MAX_VISIBILITY_TIMEOUT_S)
        url = self._url()
        unknown = False
        with self._errors("extend in"):
            try:
                self._client.change_message_visibility(
                    QueueUrl=url, ReceiptHandle=receipt, VisibilityTimeout=timeout_whole_s)
            except botocore.exceptions.ClientError as exc:
                if not _is_unknown_receipt(exc):
                    raise
                unknown = True
        if unknown:
            raise NotFound(f"queue {self.name}: receipt is unknown or its message not in flight")

    def counts(self) -> tuple[int, int]:
        """(visible, in flight): SQS's ApproximateNumberOfMessages and ...NotVisible."""
        url = self._url()
        with self._errors("count"):
            attributes = self._client.get_queue_attributes(
                QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                              "ApproximateNumberOfMessagesNotVisible"]
            )["Attributes"]
        return (int(attributes.get("ApproximateNumberOfMessages", 0)),
                int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)))

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def _receive_once(self, url: str, max_messages: int, wait_whole_s: int,
                      hide_whole_s: int) -> list[Message]:
        with self._errors("receive from"):
            reply = self._client.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=min(max_messages, MAX_MESSAGES_PER_RECEIVE),
                WaitTimeSeconds=wait_whole_s,
                VisibilityTimeout=hide_whole_s,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )
        return [Message(id=raw["MessageId"], body=raw["Body"], receipt=raw["ReceiptHandle"],
                        receive_count=int(raw.get("Attributes", {}).get(
                            "ApproximateReceiveCount", 1)))
                for raw in reply.get("Messages", [])]

    @contextlib.contextmanager
    def _errors(self, what: str):
        """core.aws.aws_errors, where a missing queue is a BackendError (not
        NotFound, which means an unknown receipt) and is looked up again next time."""
        try:
            with aws_errors(f"{what} queue {self.name}"):
                yield
        except NotFound as exc:
            # Deleted under us: the next call finds or creates it again.
            self._queue_url = None
            raise BackendError(str(exc)) from None

    def _url(self) -> str:
        """The queue's URL, creating the queue (and its dead-letter queue) if missing."""
        if self._queue_url is None:
            try:
                with aws_errors(f"find queue {self.name}"):
                    url = self._client.get_queue_url(QueueName=self.name)["QueueUrl"]
            except NotFound:
                url = self._create()
            self._check_redrive(url)
            self._queue_url = url
        return self._queue_url

    def _check_redrive(self, url: str) -> None:
        """Refuse a queue whose RedrivePolicy dead-letters before
        dead_letter_after receives: its jobs would be moved aside before they
        are given up properly, and stay PENDING for ever."""
        if self.dead_letter_setting is None:
            return
        with aws_errors(f"read queue {self.name}"):
            attributes = self._client.get_queue_attributes(
                QueueUrl=url, AttributeNames=["RedrivePolicy"]).get("Attributes", {})
        if "RedrivePolicy" not in attributes:
            return  # no dead-letter queue: never moved aside
        try:
            limit = int(json.loads(attributes["RedrivePolicy"])["maxReceiveCount"])
        except (ValueError, KeyError, TypeError):
            return
        if limit < self.dead_letter_after:
            raise ConfigError(
                f"setting '{self.dead_letter_setting}': queue {self.name} dead-letters a message "
                f"after {limit} receives (its RedrivePolicy maxReceiveCount); it must allow at "
                f"least {self.dead_letter_after}. Raise maxReceiveCount, or lower "
                f"'{self.dead_letter_setting}'.")

    def _create(self) -> str:
        # CreateQueue is idempotent for equal attributes, so two processes
        # creating at once both succeed; one with other attributes loses and
        # uses the queue the winner made.
        with aws_errors(f"create queue {self.dead_letter_name}"):
            dead_url = self._client.create_queue(QueueName=self.dead_letter_name)["QueueUrl"]
            dead_arn = self._client.get_queue_attributes(
                QueueUrl=dead_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        redrive = json.dumps({"deadLetterTargetArn": dead_arn,
                              "maxReceiveCount": str(self.dead_letter_after)})
        attributes = {"RedrivePolicy": redrive,
                      "VisibilityTimeout": str(_whole_seconds(self.visibility_timeout_s,
                                                              MAX_VISIBILITY_TIMEOUT_S))}
        with aws_errors(f"create queue {self.name}"):
            try:
                return self._client.create_queue(
                    QueueName=self.name, Attributes=attributes)["QueueUrl"]
            except botocore.exceptions.ClientError as exc:
                if error_code(exc) not in _QUEUE_EXISTS_CODES:
                    raise
                return self._client.get_queue_url(QueueName=self.name)["QueueUrl"]
