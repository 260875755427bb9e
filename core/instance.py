"""What nommerd needs to know and do about its own EC2 instance.

Identity and the Spot interruption notice come from the instance metadata
service with IMDSv2 (a session token fetched by PUT, then sent with every
GET); the encoder instances require it. Requests to the metadata service
never go through an HTTP proxy from the environment.
"""
from __future__ import annotations

import http.client
import urllib.error
import urllib.request

from core.aws import aws_errors
from core.errors import BackendError

IMDS_URL = "http://169.254.169.254"
TOKEN_PATH = "/latest/api/token"
INSTANCE_ID_PATH = "/latest/meta-data/instance-id"
SPOT_ACTION_PATH = "/latest/meta-data/spot/instance-action"
TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
# A token outlives one question; asking again is cheap, so keep it short.
TOKEN_TTL_S = 60
TIMEOUT_S = 2.0


def _opener() -> urllib.request.OpenerDirector:
    # An empty ProxyHandler: http_proxy must not see (or break) metadata calls.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _request(imds_url: str, method: str, path: str, headers: dict[str, str],
             timeout_s: float) -> tuple[int, str]:
    """(status, body) of one metadata request; 4xx/5xx are returned, not raised.

    Raises BackendError when the metadata service cannot be reached.
    """
    request = urllib.request.Request(imds_url.rstrip("/") + path, method=method,
                                     headers=headers)
    try:
        with _opener().open(request, timeout=timeout_s) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code, ""
    except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
        reason = getattr(exc, "reason", exc)
        raise BackendError(f"instance metadata service at {imds_url} "
                           f"is not reachable: {reason}") from None


def metadata_token(imds_url: str = IMDS_URL, timeout_s: float = TIMEOUT_S) -> str:
    """A fresh IMDSv2 session token. Raises BackendError if none is given."""
    status, token = _request(imds_url, "PUT", TOKEN_PATH,
                             {TOKEN_TTL_HEADER: str(TOKEN_TTL_S)}, timeout_s)
    if status != 200 or not token:
        raise BackendError(f"instance metadata service refused a session token (HTTP {status})")
    return token


def _get(imds_url: str, path: str, timeout_s: float) -> tuple[int, str]:
    token = metadata_token(imds_url, timeout_s)
    status, body = _request(imds_url, "GET", path, {TOKEN_HEADER: token}, timeout_s)
    if status == 401:
        raise BackendError(f"instance metadata service refused the session token for {path}")
    return status, body


def instance_id(imds_url: str = IMDS_URL, timeout_s: float = TIMEOUT_S) -> str:
    """This instance's id ("i-..."). Raises BackendError if the metadata
    service is unreachable or does not answer with one."""
    status, body = _get(imds_url, INSTANCE_ID_PATH, timeout_s)
    found = body.strip()
    if status != 200 or not found.startswith("i-"):
        raise BackendError(f"instance metadata service gave no instance id (HTTP {status})")
    return found


def spot_interruption_pending(imds_url: str = IMDS_URL, timeout_s: float = TIMEOUT_S) -> bool:
    """True once EC2 has announced that it will stop or terminate this Spot
    instance (about two minutes ahead); False while there is no notice (404).
    Raises BackendError if the metadata service cannot answer."""
    status, _ = _get(imds_url, SPOT_ACTION_PATH, timeout_s)
    if status == 404:
        return False
    if status == 200:
        return True
    raise BackendError(f"instance metadata service answered HTTP {status} for {SPOT_ACTION_PATH}")


def terminate_self(ec2_client, own_instance_id: str) -> None:
    """Terminate this instance (TerminateInstances on its own id; the instance
    profile must allow ec2:TerminateInstances on it). Raises BackendError
    (NotFound if EC2 does not know the id)."""
    with aws_errors(f"terminate own instance {own_instance_id}"):
        ec2_client.terminate_instances(InstanceIds=[own_instance_id])
