"""A real OpenSSH server on 127.0.0.1 for the provisioning tests.

`TestSshd(workdir)` generates a host key and a client key in `workdir`,
writes an sshd_config of its own (a free port, key login only, no PAM, the
current user only, SFTP built in) and runs `sshd -D` in the foreground as
a child process; `stop()` ends it by its pid. `ssh_config` is an empty
client configuration, so Fabric reads neither ~/.ssh/config nor
/etc/ssh/ssh_config.
"""
from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from processes import stop_process

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")
START_TIMEOUT_S = 15.0
# sshd (as root) needs its privilege separation folder; systemd normally
# makes it at boot.
PRIVSEP_DIR = Path("/run/sshd")


def find_sshd() -> str | None:
    for candidate in SSHD_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("sshd")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "media-nommer-test",
                    "-f", str(path)], check=True, timeout=30, stdin=subprocess.DEVNULL)


class TestSshd:
    """An sshd serving the current user on 127.0.0.1:`port` with `client_key`."""

    __test__ = False  # named Test..., but not a test class

    def __init__(self, workdir: Path):
        sshd = find_sshd()
        if sshd is None:
            raise RuntimeError("sshd is not installed (apt-get install openssh-server)")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.user = getpass.getuser()
        self.port = free_port()
        self.host_key = self.workdir / "ssh_host_ed25519_key"
        self.client_key = self.workdir / "client_ed25519_key"
        self.ssh_config = self.workdir / "ssh_config"
        self.log_path = self.workdir / "sshd.log"
        _keygen(self.host_key)
        _keygen(self.client_key)
        (self.workdir / "authorized_keys").write_text(
            Path(f"{self.client_key}.pub").read_text())
        self.ssh_config.write_text("")
        config = self.workdir / "sshd_config"
        config.write_text(self._sshd_config())
        if os.geteuid() == 0:
            PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)],
                                        stdin=subprocess.DEVNULL, stdout=self._log,
                                        stderr=subprocess.STDOUT)
        self._wait_listening()

    @property
    def destination(self) -> str:
        """USER@127.0.0.1:PORT, as `fab -H` takes it."""
        return f"{self.user}@127.0.0.1:{self.port}"

    def _sshd_config(self) -> str:
        return "\n".join([
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.host_key}",
            f"PidFile {self.workdir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.workdir / 'authorized_keys'}",
            f"AllowUsers {self.user}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            # The keys lie in a test's temporary folder.
            "StrictModes no",
            "Subsystem sftp internal-sftp",
            "LogLevel VERBOSE",
            "",
        ])

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"sshd exited: {self.log_path.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sshd did not listen within {START_TIMEOUT_S:g} s")
            time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()
