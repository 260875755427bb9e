"""A feeder host's supervisord and API, driven over SSH: start, reload,
restart, status, logs, and the health check that ends every change.
"""
from __future__ import annotations

import time

from provisioning.errors import ProvisioningError
from provisioning.layout import FEEDER_PROGRAMS, FeederLayout
from provisioning.remote import Host, q

UNIT_NAME = "media-nommer.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT_NAME}"
# How long supervisord may take to answer on its socket after a start.
SUPERVISORD_START_TIMEOUT_S = 30.0
# Lines of a program's log quoted when the API is not healthy.
DIAGNOSTIC_LOG_LINES = 20


class FeederHost(Host):
    """The feeder host behind `connection`, with its files under `layout`."""

    def __init__(self, connection, layout: FeederLayout):
        super().__init__(connection)
        self.layout = layout

    # --- supervisord ---------------------------------------------------

    def supervisorctl(self, arguments: str, what: str | None = None) -> str:
        """Output of `supervisorctl <arguments>`; with `what`, a non-zero exit
        raises ProvisioningError, else the output is returned either way
        (`status` exits non-zero while any program is stopped)."""
        command = f"{self.layout.supervisorctl} {arguments}"
        if what:
            return self.must(command, what)
        result = self.run(command)
        return result.stdout + result.stderr

    def supervisord_pid(self) -> int | None:
        """supervisord's pid when it answers on its socket, else None."""
        if not self.exists(self.layout.current):
            return None
        said = self.run(f"{self.layout.supervisorctl} pid").stdout.strip()
        return int(said) if said.isdigit() else None

    def uses_systemd(self, wanted: str) -> bool:
        """Whether supervisord runs as a systemd unit: `wanted` is "yes",
        "no", or "auto" (when systemd runs the host and we are root)."""
        if wanted in ("yes", "no"):
            return wanted == "yes"
        if wanted != "auto":
            raise ProvisioningError(f"--systemd must be auto, yes or no, not {wanted!r}")
        return self.user == "root" and self.run("test -d /run/systemd/system").exited == 0

    def start_supervisord(self, unit_text: str | None) -> None:
        """Start supervisord: as the systemd unit `unit_text` when given (and
        enable it, so it starts at boot), else as a daemon of its own."""
        if unit_text is not None:
            if self.read(UNIT_PATH) != unit_text:
                self.put_text(unit_text, UNIT_PATH)
                self.must("systemctl daemon-reload", "systemctl daemon-reload")
            self.must(f"systemctl enable --now {UNIT_NAME}", f"starting {UNIT_NAME}")
        else:
            layout = self.layout
            # supervisord forks into the background once its configuration
            # is read; what it says before that goes to the log folder.
            self.must(f"cd {q(layout.prefix)} && {q(layout.current)}/venv/bin/supervisord "
                      f"--configuration {q(layout.supervisord_conf)} "
                      f"</dev/null >>{q(layout.log_dir)}/supervisord.start.log 2>&1",
                      "starting supervisord")
        self.wait_supervisord()

    def wait_supervisord(self) -> int:
        deadline = time.monotonic() + SUPERVISORD_START_TIMEOUT_S
        while True:
            pid = self.supervisord_pid()
            if pid is not None:
                return pid
            if time.monotonic() > deadline:
                log = self.run(f"tail -n {DIAGNOSTIC_LOG_LINES} "
                               f"{q(self.layout.log_dir)}/supervisord.log").stdout
                raise ProvisioningError(f"supervisord on {self.name} did not answer within "
                                        f"{SUPERVISORD_START_TIMEOUT_S:g} s:\n{log.strip()}")
            time.sleep(0.5)

    def reload_supervisord(self) -> None:
        """Apply a changed supervisord.conf: programs whose section changed are
        restarted, new ones added, removed ones stopped."""
        self.supervisorctl("reread", "supervisorctl reread")
        self.supervisorctl("update", "supervisorctl update")

    def restart_feeder(self) -> None:
        """Restart api, scheduler and scaler (each stops within its stopwaitsecs)."""
        # A program that fails to start is reported by the health check,
        # with its log; supervisorctl's own message says less.
        self.supervisorctl("restart " + " ".join(FEEDER_PROGRAMS))

    def shutdown_supervisord(self, uses_systemd: bool) -> None:
        if uses_systemd:
            self.must(f"systemctl stop {UNIT_NAME}", f"stopping {UNIT_NAME}")
        else:
            self.supervisorctl("shutdown", "supervisorctl shutdown")
            deadline = time.monotonic() + SUPERVISORD_START_TIMEOUT_S + 60
            while self.supervisord_pid() is not None:
                if time.monotonic() > deadline:
                    raise ProvisioningError(f"supervisord on {self.name} did not stop")
                time.sleep(0.5)

    # --- the API and what to show when it is not healthy ----------------

    def wait_healthy(self, timeout_s: float) -> str:
        """The API's /health answer. Raises ProvisioningError with the
        programs' states and the API's log when it does not answer success
        within `timeout_s`."""
        layout = self.layout
        result = self.run(f"{q(layout.python)} -m provisioning.hostcheck health "
                          f"--nomconf {q(layout.nomconf)} --timeout-s {timeout_s:g}",
                          timeout_s=timeout_s + 60)
        if result.exited == 0:
            return result.stdout.strip()
        raise ProvisioningError(f"the API on {self.name} is not healthy: "
                                f"{(result.stderr or result.stdout).strip()}\n"
                                f"{self.diagnostics()}")

    def diagnostics(self) -> str:
        status = self.supervisorctl("status").strip()
        log = self.run(f"tail -n {DIAGNOSTIC_LOG_LINES} {q(self.layout.log_dir)}/api.log").stdout
        return (f"supervisorctl status:\n{status}\n"
                f"last lines of {self.layout.log_dir}/api.log:\n{log.strip()}")

    def logs(self, programs: list[str], lines: int) -> str:
        parts = []
        for program in programs:
            path = self.layout.log_dir / f"{program}.log"
            text = self.run(f"tail -n {int(lines)} {q(path)}").stdout
            parts.append(f"==> {path} <==\n{text.rstrip()}")
        return "\n\n".join(parts)
