"""Start and stop a whole embedded system (supervisord and everything under it)
as a child process: what tests and benchmarks drive, exactly as `nommer run`.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import xmlrpc.client
from pathlib import Path

from core import settings as settings_module
from core.app.cli import ApiClient
from core.app.launcher import PROJECT_ROOT, socket_url
from core.fleets.supervisor import SupervisorFleet, supervisor_proxy


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalSystem:
    """One running system in `data_dir`, configured by NOMMER_* `settings_env`.

    Use as a context manager; `stop()` ends supervisord and every process it
    started, and kills leftovers by PID if supervisord could not.
    """

    def __init__(self, data_dir: Path, settings_env: dict[str, str] | None = None,
                 start_timeout_s: float = 60.0):
        self.data_dir = Path(data_dir)
        self.api_port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("NOMMER_")}
        self.env.update({
            "NOMMER_DATA_DIR": str(self.data_dir),
            "NOMMER_API_PORT": str(self.api_port),
        })
        self.env.update(settings_env or {})
        self.settings = settings_module.load(environ=self.env)
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen | None = None
        self.client = ApiClient(f"http://127.0.0.1:{self.api_port}")
        self._log = None

    @property
    def media_dir(self) -> Path:
        return self.settings.file_root_paths[0]

    def start(self) -> "LocalSystem":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.media_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.data_dir / "nommer-run.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "core.app.cli", "run"], env=self.env, cwd=str(PROJECT_ROOT),
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self.client.wait_healthy(self.start_timeout_s)
        except Exception:
            self.stop()
            raise
        return self

    def fleet(self) -> SupervisorFleet:
        return SupervisorFleet(socket_url(self.settings), self.settings.supervisor_program)

    def supervisor(self):
        return supervisor_proxy(socket_url(self.settings)).supervisor

    def child_pids(self) -> list[int]:
        try:
            return [info["pid"] for info in self.supervisor().getAllProcessInfo() if info["pid"]]
        except (OSError, xmlrpc.client.Error):  # supervisord already gone: nothing to list
            return []

    def log_tail(self, program: str, lines: int = 40) -> str:
        path = self.data_dir / "run" / "logs" / f"{program}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 45.0) -> None:
        if self.process is None:
            return
        children = self.child_pids()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._log:
            self._log.close()
        self.process = None

    def __enter__(self) -> "LocalSystem":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_for(predicate, timeout_s: float, what: str = "condition", interval_s: float = 0.1):
    """Call `predicate` until it returns a truthy value; raise TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)
