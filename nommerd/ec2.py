"""What nommerd does differently on EC2 (settings.backend == "aws").

- Its node id is its instance id, read from the instance metadata service
  (IMDSv2) unless --node-id names it.
- A SpotWatch thread asks the metadata service for a Spot interruption
  notice every settings.spot_check_interval_s; once there is one, the daemon
  stops taking work and gives its jobs back at once.
- Idle past the limit, it terminates its own instance before it exits.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from core.errors import BackendError, NotFound
from core.instance import instance_id, spot_interruption_pending, terminate_self
from core.settings import Settings

log = logging.getLogger("nommerd.ec2")

# A metadata request that hangs must not delay the notice check for long.
SPOT_CHECK_TIMEOUT_S = 2.0
MIN_SPOT_CHECK_INTERVAL_S = 0.1


def own_instance_id(settings: Settings) -> str:
    """This instance's id from the metadata service at settings.imds_url.

    Raises BackendError, with what to do about it, when there is none.
    """
    try:
        return instance_id(settings.imds_url)
    except BackendError as exc:
        raise BackendError(
            f"cannot learn this instance's id: {exc}. On EC2 the metadata service must be "
            "enabled (IMDSv2, hop limit 1, as the fleet launches encoders); elsewhere pass "
            "--node-id") from None


def looks_like_instance_id(node_id: str) -> bool:
    return node_id.startswith("i-") and len(node_id) > 2


class SpotWatch:
    """Calls `on_notice()` once, from its own thread, when the metadata
    service at `imds_url` announces that EC2 will interrupt this Spot
    instance. Metadata failures are logged (once per outage) and the check
    goes on: an outage must not read as "no notice" forever, nor kill nommerd.
    """

    def __init__(self, imds_url: str, interval_s: float, on_notice: Callable[[], None]):
        self.imds_url = imds_url
        self.interval_s = max(MIN_SPOT_CHECK_INTERVAL_S, interval_s)
        self._on_notice = on_notice
        self._done = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="spot-watch", daemon=True)

    def start(self) -> "SpotWatch":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=SPOT_CHECK_TIMEOUT_S * 3)

    def _run(self) -> None:
        while not self._done.wait(self.interval_s):
            if self._notice_given():
                log.warning("Spot interruption notice: giving jobs back and stopping")
                self._on_notice()
                return

    def _notice_given(self) -> bool:
        try:
            pending = spot_interruption_pending(self.imds_url, SPOT_CHECK_TIMEOUT_S)
        except BackendError as exc:
            if not self._failing:
                log.warning("cannot check for a Spot interruption notice: %s; "
                            "trying again every %.0f s", exc, self.interval_s)
            self._failing = True
            return False
        if self._failing:
            log.info("instance metadata service answers again")
            self._failing = False
        return pending


def terminate_own_instance(settings: Settings, node_id: str) -> bool:
    """Terminate the instance `node_id` names (this one). True when EC2 took
    the request, or when `node_id` is no instance id (nothing to terminate);
    False, logged, when EC2 refused or could not be reached."""
    from core.aws import client

    if not looks_like_instance_id(node_id):
        log.warning("node id %r is not an EC2 instance id: no instance to terminate", node_id)
        return True
    ec2 = client(settings, "ec2")
    try:
        terminate_self(ec2, node_id)
    except (BackendError, NotFound) as exc:
        log.error("could not terminate instance %s: %s", node_id, exc)
        return False
    finally:
        ec2.close()
    log.info("terminating instance %s", node_id)
    return True
