"""Encodings every job store shares: sortable time text and page cursors.

Times are fixed-width ISO-8601 in UTC with microseconds, so comparing the
text (SQLite, SimpleDB's lexicographic select, DynamoDB sort keys) orders
by time. A cursor is the (created_at, id) of the last job of a page, opaque
to clients.
"""
from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime, timezone

from core.errors import ValidationError

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%f+00:00"


def time_to_text(value: datetime | None) -> str | None:
    """Fixed-width ISO-8601 in UTC (None for None)."""
    if value is None:
        return None
    if value.tzinfo is None:
        # Naive times in this project are UTC (core.jobs.utcnow is aware,
        # but a caller's datetime.utcnow() must not shift by the local offset).
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime(_TIME_FORMAT)


def text_to_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def encode_cursor(created_at: str, job_id: str) -> str:
    raw = json.dumps({"c": created_at, "i": job_id}).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii")


def decode_cursor(cursor: str) -> tuple[str, str]:
    """(created_at text, id) of the last job of the previous page. Raises ValidationError."""
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor.encode("ascii")))
        created_at, job_id = data["c"], data["i"]
        created_at.encode("utf-8"), job_id.encode("utf-8")  # no lone surrogates
    except (binascii.Error, UnicodeError, ValueError, KeyError, TypeError, AttributeError):
        raise ValidationError("bad cursor") from None
    if not isinstance(created_at, str) or not isinstance(job_id, str):
        raise ValidationError("bad cursor")
    return created_at, job_id
