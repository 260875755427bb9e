"""A feeder host's supervisord and API, driven over SSH: start, reload,
restart, status, logs, and the health check that ends every change.
"""
from __future__ import annotations

import time

from provisioning.errors import ProvisioningError
from provisioning.hostcheck import DEFAULT_SETTLE_S
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

    def point_current(self, link: str) -> None:
        """Point `current` at `link` (releases/<id>) with a rename: never half switched."""
        current = self.layout.current
        self.must(f"ln -sfn {q(link)} {q(current)}.new && mv -Tf {q(current)}.new {q(current)}",
                  f"pointing {current} at {link}")

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
        "no", or "auto" (when systemd runs the host)."""
        if wanted in ("yes", "no"):
            return wanted == "yes"
        if wanted != "auto":
            raise ProvisioningError(f"--systemd must be auto, yes or no, not {wanted!r}")
        return self.run("test -d /run/systemd/system").exited == 0

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

    def start_installed_supervisord(self, uses_systemd: bool) -> None:
        """Start supervisord as installed before (the unit already written)."""
        if uses_systemd:
            self.must(f"systemctl start {UNIT_NAME}", f"starting {UNIT_NAME}")
            self.wait_supervisord()
        else:
            self.start_supervisord(None)

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

    def remove_unit(self) -> None:
        """Stop and remove the systemd unit, if there is one: undoes the first
        start_supervisord of a host."""
        if self.exists(UNIT_PATH):
            self.run(f"systemctl disable --now {UNIT_NAME}")
            self.must(f"rm -f {UNIT_PATH} && systemctl daemon-reload", f"removing {UNIT_PATH}")

    def shutdown_supervisord(self, uses_systemd: bool) -> None:
        """Stop supervisord and its programs; returns once it has exited."""
        if uses_systemd:
            self.must(f"systemctl stop {UNIT_NAME}", f"stopping {UNIT_NAME}")
            return
        pid = self.supervisord_pid()
        if pid is None:
            return
        self.supervisorctl("shutdown", "supervisorctl shutdown")
        # supervisord exits after its programs have stopped (each within its
        # stopwaitsecs).
        deadline = time.monotonic() + SUPERVISORD_START_TIMEOUT_S + 60
        while self.run(f"kill -0 {pid}").exited == 0:
            if time.monotonic() > deadline:
                raise ProvisioningError(f"supervisord on {self.name} did not stop")
            time.sleep(0.5)

    # --- the API and what to show when it is not healthy ----------------

    def wait_healthy(self, timeout_s: float, settle_s: float = DEFAULT_SETTLE_S) -> str:
        """The API's /health answer once api, scheduler and scaler have been
        RUNNING for `settle_s` and /health answers success. Raises
        ProvisioningError with the programs' states and the logs of those
        not running when that does not happen within `timeout_s`."""
        layout = self.layout
        result = self.run(f"{q(layout.python)} -m provisioning.hostcheck health "
                          f"--nomconf {q(layout.nomconf)} --socket {q(layout.socket)} "
                          f"--programs {','.join(FEEDER_PROGRAMS)} "
                          f"--timeout-s {timeout_s:g} --settle-s {settle_s:g}",
                          timeout_s=timeout_s + 60)
        if result.exited == 0:
            return result.stdout.strip()
        said = (result.stderr or result.stdout).strip()
        raise ProvisioningError(f"{self.name} is not healthy: {said}\n{self.diagnostics(said)}")

    def diagnostics(self, problem: str = "") -> str:
        """supervisorctl status and the end of the log of the API and of
        every feeder program that `problem` names."""
        parts = [f"supervisorctl status:\n{self.supervisorctl('status').strip()}"]
        for program in FEEDER_PROGRAMS:
            if program == "api" or f"{program} " in problem:
                path = self.layout.log_dir / f"{program}.log"
                log = self.run(f"tail -n {DIAGNOSTIC_LOG_LINES} {q(path)}").stdout
                parts.append(f"last lines of {path}:\n{log.strip()}")
        return "\n".join(parts)

    def logs(self, programs: list[str], lines: int) -> str:
        parts = []
        for program in programs:
            path = self.layout.log_dir / f"{program}.log"
            text = self.run(f"tail -n {int(lines)} {q(path)}").stdout
            parts.append(f"==> {path} <==\n{text.rstrip()}")
        return "\n\n".join(parts)
