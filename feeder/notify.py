"""Tell an application that its job changed state: the original's form POST,
or a signed JSON body.

The form (the default; kept from media-nommer's feederd, which applications
rely on):

    POST <notify_url>
    User-Agent: media-nommer feederd
    Content-Type: application/x-www-form-urlencoded

    unique_id=<job id>&job_state=<STATE>&job_state_details=<text>

JSON (a job submitted with notify_format "json"): the same POST with
Content-Type application/json, the body of `json_body`, and a
Nommer-Signature header (core.webhooks) made afresh for every attempt.

The receiver's answer is only logged. Failures become NotifyError, so the
caller decides whether to try again. The request itself goes through
core.outbound: the receiver's address is resolved once and checked against
the reach policy, and so is every redirect hop.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from urllib.parse import urlencode

from core import uris, webhooks
from core.jobs import Job
from core.outbound import (UNREACHABLE, OutboundError, Target, open_hop, parse_target,
                           redirect_target)
from core.reach import Reach

log = logging.getLogger(__name__)

USER_AGENT = "media-nommer feederd"
CONTENT_TYPE = "application/x-www-form-urlencoded"
JSON_CONTENT_TYPE = "application/json"
# The answer is only logged, so a receiver cannot make us read megabytes.
MAX_ANSWER_BYTES = 4096
MAX_REDIRECTS = 3
DEFAULT_CONNECT_TIMEOUT_S = 3.0
# Redirects after which the same POST is sent again to the new location:
# the notification only means something as this POST (a moved receiver, or
# http -> https). 303 is not among them: it is the receiver saying "handled,
# see elsewhere" (post/redirect/get), so it counts as delivered.
_RESEND_ON = frozenset({301, 302, 307, 308})
_DELIVERED_ON_SEE_OTHER = 303


class NotifyError(OutboundError):
    """The receiver did not take the notification.

    `retryable` is False when sending again cannot help (a URL that is not
    http(s), carries credentials, cannot be parsed, or whose address is
    refused). `status` is the receiver's HTTP status when it answered, else None.
    """


def form_body(job_id: str, state: str, details: str) -> bytes:
    """The form-encoded body, fields in the original's order."""
    return urlencode([("unique_id", job_id), ("job_state", state),
                      ("job_state_details", details or "")]).encode("ascii")


@dataclasses.dataclass(frozen=True)
class Payload:
    """A notification's body and Content-Type. With `signing_secret` set
    (JSON), each attempt carries a Nommer-Signature made at its own time."""

    body: bytes
    content_type: str = CONTENT_TYPE
    signing_secret: str | None = dataclasses.field(default=None, repr=False)

    def headers(self, now: float) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, "Content-Type": self.content_type}
        if self.signing_secret is not None:
            if not self.signing_secret:
                raise NotifyError("webhook_secret is not set on the scheduler; a JSON "
                                  "notification is never sent unsigned", retryable=False)
            headers[webhooks.SIGNATURE_HEADER] = webhooks.sign(self.signing_secret, self.body,
                                                               int(now))
        return headers


def json_body(job: Job, state: str, details: str, version: int, changed_at: str) -> bytes:
    """The JSON notification of the change of `job` to `state`, with the names
    GET /jobs/<id> uses. `state`, `state_details`, `version` and `changed_at`
    are the change's own; the other figures are the job's when sent. URIs
    are shown without credentials."""
    return json.dumps({
        "id": job.id,
        "state": state,
        "state_details": details or "",
        "version": version,
        "changed_at": changed_at,
        "progress": job.progress,
        "attempts": job.attempts,
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "updated_at": job.updated_at.isoformat() if job.updated_at else None,
        "source": uris.redact(job.source),
        "destination": uris.redact(job.destination),
        # Through the dict: a job record without an `outputs` field gives null.
        "outputs": job.to_dict().get("outputs"),
    }, sort_keys=True).encode("utf-8")


def receiver_key(url: str) -> str:
    """The receiver a URL names ("host:port"), for per-receiver limits; the
    URL itself when it cannot be parsed."""
    try:
        target = parse_target(url)
    except OutboundError:
        return url
    return f"{target.host}:{target.port}"


def describe_url(url: str) -> str:
    """`url` without credentials, query string or fragment, fit for a log line."""
    try:
        target = parse_target(url)
    except OutboundError:
        return "<unparseable url>"
    return f"{target.scheme}://{target.host_header}{target.request_uri.split('?')[0]}"


def send_notification(url: str, job_id: str, state: str, details: str, timeout_s: float,
                      reach: Reach | None = None,
                      connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
                      payload: Payload | None = None) -> None:
    """POST the job's state to `url`; return once the receiver answered 2xx (or 303).

    The body is `payload`'s, else the original's form of `details`; a
    signed payload is signed now, so each attempt has its own timestamp.

    `timeout_s` bounds the whole exchange, redirects included (a receiver
    that trickles bytes is cut off too); each connection attempt takes at
    most `connect_timeout_s`. Redirects are followed only to http(s) URLs
    the reach policy allows, at most MAX_REDIRECTS times. Raises NotifyError
    when the URL or an address is refused, the connection fails, the time
    runs out or the answer is any other status.
    """
    if reach is None:
        from core.settings import Settings
        reach = Reach(Settings())
    payload = payload or Payload(form_body(job_id, state, details))
    headers = payload.headers(time.time())
    deadline = time.monotonic() + timeout_s
    try:
        target = parse_target(url)
        for _ in range(MAX_REDIRECTS + 1):
            status, location = _post_once(target, payload.body, headers, reach, deadline,
                                          timeout_s, connect_timeout_s)
            if 200 <= status < 300 or status == _DELIVERED_ON_SEE_OTHER:
                log.info("job %s %s: notified %s, HTTP %d", job_id, state, describe_url(url),
                         status)
                return
            if status not in _RESEND_ON:
                raise NotifyError(f"receiver answered HTTP {status}", status=status)
            try:
                target = redirect_target(target, location)
            except OutboundError as exc:
                raise NotifyError(f"receiver answered HTTP {status}; {exc}; not followed",
                                  retryable=False, status=status) from None
        raise NotifyError(f"more than {MAX_REDIRECTS} redirects", status=status)
    except NotifyError:
        raise
    except OutboundError as exc:
        raise NotifyError(f"receiver {exc}", retryable=exc.retryable, status=exc.status) from None


def _post_once(target: Target, body: bytes, headers: dict[str, str], reach: Reach,
               deadline: float, timeout_s: float,
               connect_timeout_s: float) -> tuple[int, str | None]:
    """One POST: (status, Location header or None)."""
    # A receiver that hangs reads like a closed port: the text must not tell
    # a client what listens at an address.
    if deadline - time.monotonic() <= 0:
        raise NotifyError(f"receiver {UNREACHABLE}")
    try:
        with open_hop(target, reach, method="POST", body=body, headers=headers,
                      connect_timeout_s=connect_timeout_s, read_timeout_s=timeout_s,
                      deadline=deadline) as exchange:
            answer = exchange.read(MAX_ANSWER_BYTES)
            log.debug("receiver answered %r", answer[:200])
            return exchange.status, exchange.header("Location")
    except OutboundError:
        if time.monotonic() >= deadline:
            raise NotifyError(f"receiver {UNREACHABLE}") from None
        raise
