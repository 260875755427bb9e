"""Signing and checking JSON notifications (core.webhooks), against an HMAC
computed here from the documented scheme, so a wrong sign() cannot pass."""
from __future__ import annotations

import hashlib
import hmac

import pytest

from core.webhooks import SignatureError, sign, verify

SECRET = "whsec-unit"
BODY = b'{"id": "job-1", "state": "FINISHED"}'
T = 1_700_000_000


def expected_hex(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def test_sign_is_hmac_sha256_of_the_timestamp_dot_body():
    assert sign(SECRET, BODY, T) == f"t={T},v1={expected_hex(SECRET, T, BODY)}"


def test_a_header_made_by_hand_from_the_scheme_verifies_and_gives_its_time():
    header = f"t={T},v1={expected_hex(SECRET, T, BODY)}"
    assert verify(SECRET, header, BODY, now=T + 10) == T


@pytest.mark.parametrize("now", [T + 301, T - 301])
def test_a_timestamp_more_than_five_minutes_off_is_rejected(now):
    with pytest.raises(SignatureError, match="from now"):
        verify(SECRET, sign(SECRET, BODY, T), BODY, now=now)


def test_a_replayed_header_with_a_new_timestamp_is_rejected():
    digest = expected_hex(SECRET, T, BODY)
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, f"t={T + 600},v1={digest}", BODY, now=T + 600)


@pytest.mark.parametrize("body", [BODY + b" ", BODY.replace(b"FINISHED", b"ERROR"), b""])
def test_a_changed_body_is_rejected(body):
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, sign(SECRET, BODY, T), body, now=T)


@pytest.mark.parametrize("header", [None, "", "v1=abc", f"t={T}", f"t=soon,v1=abc",
                                    f"t={T},v0={expected_hex(SECRET, T, BODY)}",
                                    "t=\u0661\u0662,v1=ab"])
def test_a_missing_or_malformed_header_is_rejected(header):
    with pytest.raises(SignatureError):
        verify(SECRET, header, BODY, now=T)


def test_any_of_several_signatures_may_match_so_a_secret_can_be_rotated():
    header = f"t={T},v1={expected_hex('old-secret', T, BODY)},v1={expected_hex(SECRET, T, BODY)}"
    assert verify(SECRET, header, BODY, now=T) == T
    assert verify("old-secret", header, BODY, now=T) == T
    with pytest.raises(SignatureError):
        verify("third", header, BODY, now=T)


def test_an_empty_secret_neither_signs_nor_verifies():
    with pytest.raises(ValueError):
        sign("", BODY, T)
    with pytest.raises(SignatureError):
        verify("", f"t={T},v1={expected_hex('', T, BODY)}", BODY, now=T)


def test_the_webhook_secret_never_shows_in_the_settings_repr():
    from core.settings import load
    settings = load(environ={"NOMMER_WEBHOOK_SECRET": "s3cret-value"})
    assert settings.webhook_secret == "s3cret-value"
    assert "s3cret-value" not in repr(settings)


def test_the_json_body_hides_credentials_and_shows_outputs_once_a_job_has_them():
    import dataclasses
    import json

    from core.jobs import Job
    from feeder.notify import json_body

    job = Job(id="job-1", source="https://user:pw@in.example/a.mp4?X-Amz-Signature=abc",
              destination="s3://bucket/out.mp4", options={}, progress=40, attempts=1)
    body = json.loads(json_body(job, "ENCODING", "pass 1", 3, "2026-01-01T00:00:00+00:00"))
    assert body["source"] == "https://REDACTED@in.example/a.mp4?X-Amz-Signature=REDACTED"
    assert (body["id"], body["state"], body["state_details"], body["version"]) == (
        "job-1", "ENCODING", "pass 1", 3)
    assert (body["progress"], body["attempts"], body["outputs"]) == (40, 1, None)

    # A record that carries outputs (a field of later versions) shows them.
    outputs = [{"uri": "s3://bucket/out.mp4", "size_bytes": 10}]
    with_outputs = dataclasses.make_dataclass("WithOutputs", [("outputs", list, None)],
                                              bases=(Job,))
    finished = with_outputs(**{**dataclasses.asdict(job), "outputs": outputs})
    assert json.loads(json_body(finished, "FINISHED", "", 4, ""))["outputs"] == outputs


def test_the_receivers_example_in_the_api_docs_accepts_what_we_sign_and_nothing_else():
    import re
    import time
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    example = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    namespace: dict = {}
    exec(example, namespace)  # noqa: S102 - the project's own documentation
    receiver_verify = namespace["verify"]
    now = int(time.time())
    assert receiver_verify(SECRET.encode(), sign(SECRET, BODY, now), BODY)
    assert not receiver_verify(SECRET.encode(), sign(SECRET, BODY, now), BODY + b"x")
    assert not receiver_verify(SECRET.encode(), sign(SECRET, BODY, now - 301), BODY)
    assert not receiver_verify(b"other", sign(SECRET, BODY, now), BODY)
