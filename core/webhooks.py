"""Signatures of JSON notifications, the way Stripe signs its webhooks.

The sender adds one header:

    Nommer-Signature: t=<unix time, s>,v1=<hex HMAC-SHA256 of "<t>.<body>">

keyed with the `webhook_secret` setting. The time is part of what is
signed, so a receiver that checks it is recent (within `tolerance_s`)
rejects a captured notification replayed later, and the HMAC rejects a body
or time changed on the way. Every attempt, retries included, is signed
again with its own time.

A receiver may use `verify` from this module, or the few lines of hmac it
comes down to (docs/api.md shows them).
"""
from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "Nommer-Signature"
SCHEME = "v1"
DEFAULT_TOLERANCE_S = 300


class SignatureError(ValueError):
    """The signature header is missing, malformed, wrong or too old."""


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    signed = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The Nommer-Signature header value for `body` sent at `timestamp` (unix s).

    Raises ValueError for an empty secret: an HMAC keyed with nothing proves nothing.
    """
    if not secret:
        raise ValueError("webhook_secret is empty")
    return f"t={int(timestamp)},{SCHEME}={_digest(secret, int(timestamp), body)}"


def verify(secret: str, header: str | None, body: bytes, now: float,
           tolerance_s: float = DEFAULT_TOLERANCE_S) -> int:
    """Check a Nommer-Signature header against the raw `body` received at `now`
    (unix s). Returns the signed timestamp.

    Raises SignatureError when the header is missing or malformed, no v1
    signature matches (compared in constant time), or the timestamp is
    more than `tolerance_s` away from `now` (a replay, or a clock far off).
    Several v1 entries are accepted (one matching is enough), so a secret
    can be rotated.
    """
    if not secret:
        raise SignatureError("no secret to verify with")
    if not header:
        raise SignatureError(f"no {SIGNATURE_HEADER} header")
    timestamp, signatures = _parse(header)
    expected = _digest(secret, timestamp, body)
    # Every candidate is compared, so the time taken tells nothing either.
    matched = False
    for candidate in signatures:
        matched |= hmac.compare_digest(candidate.encode("ascii", "replace"),
                                       expected.encode("ascii"))
    if not matched:
        raise SignatureError("signature does not match")
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError(f"timestamp {timestamp} is more than {tolerance_s:.0f} s "
                             "from now")
    return timestamp


def _parse(header: str) -> tuple[int, list[str]]:
    timestamp = None
    signatures = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t" and value.isascii() and value.isdigit():
            timestamp = int(value)
        elif key == SCHEME and value:
            signatures.append(value)
    if timestamp is None or not signatures:
        raise SignatureError(f"malformed {SIGNATURE_HEADER} header: want t=<time>,"
                             f"{SCHEME}=<hex>")
    return timestamp, signatures
