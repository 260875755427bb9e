"""Commands and files on a host over a Fabric connection.

Every command runs with output captured (shown only in an error), no pty
and no stdin, and a failure becomes ProvisioningError naming the step; the
deploy code above never sees a Fabric, invoke or paramiko exception.
"""
from __future__ import annotations

import io
import shlex
from pathlib import PurePosixPath

import invoke
import paramiko
from fabric import Connection

from provisioning.errors import ProvisioningError

# Lines of a failed command's output quoted in the error.
_ERROR_TAIL_LINES = 20


def q(value) -> str:
    """`value` quoted for the remote shell."""
    return shlex.quote(str(value))


def _tail(text: str, lines: int = _ERROR_TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class Host:
    """One host reached through `connection` (a fabric.Connection)."""

    def __init__(self, connection: Connection):
        self.connection = connection

    @property
    def name(self) -> str:
        return self.connection.host

    @property
    def user(self) -> str:
        return self.connection.user

    def run(self, command: str, timeout_s: float | None = 600):
        """The result of `command` (exit status in .exited), failed or not.
        Raises ProvisioningError only when the host cannot be reached."""
        try:
            return self.connection.run(command, hide=True, warn=True, pty=False,
                                       in_stream=False, timeout=timeout_s)
        except invoke.exceptions.CommandTimedOut:
            raise ProvisioningError(f"on {self.name}: `{command}` did not finish "
                                    f"in {timeout_s:g} s") from None
        except (paramiko.SSHException, OSError) as exc:
            raise ProvisioningError(f"cannot reach {self.name} over SSH: {exc}") from None

    def must(self, command: str, what: str, timeout_s: float | None = 600) -> str:
        """stdout of `command`. Raises ProvisioningError("<what> failed ...")
        with the command's last output lines when it exits non-zero."""
        result = self.run(command, timeout_s)
        if result.exited != 0:
            said = _tail(result.stderr + "\n" + result.stdout)
            raise ProvisioningError(f"{what} failed on {self.name} "
                                    f"(exit status {result.exited}):\n{said}")
        return result.stdout

    def exists(self, path: PurePosixPath) -> bool:
        return self.run(f"test -e {q(path)}").exited == 0

    def read(self, path: PurePosixPath) -> str | None:
        """The text of `path`, or None when there is no such file."""
        result = self.run(f"cat {q(path)}")
        return result.stdout if result.exited == 0 else None

    def readlink(self, path: PurePosixPath) -> str | None:
        result = self.run(f"readlink {q(path)}")
        return result.stdout.strip() if result.exited == 0 else None

    def put_text(self, text: str, path: PurePosixPath, mode: int = 0o644) -> None:
        """Write `path` whole: a temporary file beside it, then a rename."""
        temporary = f"{path}.upload"
        self.put_file(io.BytesIO(text.encode("utf-8")), temporary)
        self.must(f"chmod {mode:o} {q(temporary)} && mv -f {q(temporary)} {q(path)}",
                  f"writing {path}")

    def put_file(self, local, remote: str) -> None:
        """Upload `local` (a path or a binary file object) to `remote` over SFTP."""
        try:
            self.connection.put(local, remote)
        except (paramiko.SSHException, OSError) as exc:
            raise ProvisioningError(f"uploading to {self.name}:{remote} failed: {exc}") from None
