"""The local fleet: encoder slots of one supervisord `nommerd` program.

supervisord.conf declares `nommerd` with numprocs = the most encoders and
autostart=false; launching an encoder is starting a stopped slot, and an
encoder that idles out exits 0 and leaves its slot stopped. Slot ids are
"group:process" names, which is also the node id nommerd reports under.
"""
from __future__ import annotations

import http.client
import socket
import xmlrpc.client
from datetime import datetime, timezone

from core.errors import BackendError
from core.interfaces import Encoder, Fleet

# supervisord's process states (supervisor.states.ProcessStates), as the
# fleet reports them to the scaler.
_STATE_BY_NAME = {
    "STARTING": "pending",
    "BACKOFF": "pending",
    "RUNNING": "running",
    "STOPPING": "stopping",
    "STOPPED": "stopped",
    "EXITED": "stopped",
    "FATAL": "stopped",
    "UNKNOWN": "stopped",
}


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout_s: float):
        super().__init__("localhost", timeout=timeout_s)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._socket_path)
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    """XML-RPC over supervisord's unix socket (its default, private endpoint)."""

    def __init__(self, socket_path: str, timeout_s: float):
        super().__init__()
        self._socket_path = socket_path
        self._timeout_s = timeout_s

    def make_connection(self, host):
        return _UnixHTTPConnection(self._socket_path, self._timeout_s)


def supervisor_proxy(url: str, timeout_s: float = 10.0) -> xmlrpc.client.ServerProxy:
    """A proxy for supervisord's XML-RPC API at `url` (unix:///path.sock or http://host:port)."""
    if url.startswith("unix://"):
        return xmlrpc.client.ServerProxy(
            "http://localhost/RPC2", transport=_UnixTransport(url[len("unix://"):], timeout_s))
    if url.startswith(("http://", "https://")):
        return xmlrpc.client.ServerProxy(url.rstrip("/") + "/RPC2")
    raise BackendError(f"supervisor_url {url!r}: expected unix:///path or http://host:port")


class SupervisorFleet(Fleet):
    """Encoder slots of supervisord program `program` at `url`."""

    def __init__(self, url: str, program: str = "nommerd", timeout_s: float = 10.0):
        if not url:
            raise BackendError("setting 'supervisor_url' is empty: the local fleet needs "
                               "supervisord's socket (nommer run sets it)")
        self._proxy = supervisor_proxy(url, timeout_s)
        self.program = program

    def _call(self, method: str, *args):
        try:
            return getattr(self._proxy.supervisor, method)(*args)
        except xmlrpc.client.Fault as exc:
            raise BackendError(f"supervisord {method}: {exc.faultString}") from None
        except (OSError, xmlrpc.client.ProtocolError, http.client.HTTPException) as exc:
            raise BackendError(f"supervisord {method}: {exc}") from None

    def _slots(self) -> list[dict]:
        return [info for info in self._call("getAllProcessInfo") if info["group"] == self.program]

    def list_encoders(self) -> list[Encoder]:
        encoders = []
        for info in self._slots():
            started = info.get("start") or 0
            encoders.append(Encoder(
                id=f"{info['group']}:{info['name']}",
                state=_STATE_BY_NAME.get(info["statename"], "stopped"),
                launched_at=datetime.fromtimestamp(started, timezone.utc) if started else None,
            ))
        return encoders

    def launch(self, count: int) -> list[str]:
        started = []
        for encoder in self.list_encoders():
            if len(started) >= count:
                break
            if encoder.state != "stopped":
                continue
            try:
                # wait=False: the scaler must not block while a slot boots.
                self._call("startProcess", encoder.id, False)
            except BackendError as exc:
                if "ALREADY_STARTED" in str(exc):
                    continue
                raise
            started.append(encoder.id)
        return started

    def stop(self, encoder_ids: list[str]) -> None:
        for encoder_id in encoder_ids:
            try:
                self._call("stopProcess", encoder_id, False)
            except BackendError as exc:
                if "NOT_RUNNING" not in str(exc):
                    raise

    def pid_of(self, encoder_id: str) -> int:
        """The OS process id of a running slot (0 if not running)."""
        return int(self._call("getProcessInfo", encoder_id)["pid"])
