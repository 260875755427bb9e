"""Commands and files on a host over a Fabric connection.

Every command runs with output captured (shown only in an error), no pty
and no stdin, and a failure becomes ProvisioningError naming the step; the
deploy code above never sees a Fabric, invoke or paramiko exception.

Connected as a user other than root (`admin` on Debian's EC2 images, where
root cannot log in), every command runs through `sudo -n`: the user needs
passwordless sudo, as cloud-init gives the image's default user. Uploads go
to a folder of the SSH user's own first, then into place as root.
"""
from __future__ import annotations

import io
import shlex
from pathlib import Path, PurePosixPath

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


class _WholeText(io.StringIO):
    """stdin for a remote command, handed over in one read: invoke reads a
    stream it cannot size one character at a time, with a pause after each."""

    def read(self, size: int | None = -1) -> str:
        return super().read()


class Host:
    """One host reached through `connection` (a fabric.Connection); commands
    run as root, through sudo when the SSH user is not root."""

    def __init__(self, connection: Connection):
        self.connection = connection
        self.sudo = connection.user != "root"

    @property
    def name(self) -> str:
        return self.connection.host

    @property
    def user(self) -> str:
        return self.connection.user

    def run(self, command: str, timeout_s: float | None = 600, stdin: str | None = None,
            as_root: bool = True):
        """The result of `command` (exit status in .exited), failed or not,
        run as root unless `as_root` is False; `stdin` is its input. Raises
        ProvisioningError only when the host cannot be reached."""
        if self.sudo and as_root:
            command = f"sudo -n -- sh -c {q(command)}"
        in_stream = _WholeText(stdin) if stdin is not None else False
        try:
            return self.connection.run(command, hide=True, warn=True, pty=False,
                                       in_stream=in_stream, timeout=timeout_s)
        except invoke.exceptions.CommandTimedOut:
            raise ProvisioningError(f"on {self.name}: `{command}` did not finish "
                                    f"in {timeout_s:g} s") from None
        except (paramiko.SSHException, OSError) as exc:
            raise ProvisioningError(f"cannot reach {self.name} over SSH: {exc}") from None

    def must(self, command: str, what: str, timeout_s: float | None = 600,
             stdin: str | None = None, as_root: bool = True) -> str:
        """stdout of `command`. Raises ProvisioningError("<what> failed ...")
        with the command's last output lines when it exits non-zero."""
        result = self.run(command, timeout_s, stdin, as_root)
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

    def check_root(self) -> None:
        """Raise ProvisioningError unless commands can run as root here."""
        said = self.run("id -u")
        if said.exited != 0 or said.stdout.strip() != "0":
            raise ProvisioningError(
                f"{self.user} on {self.name} cannot run commands as root without a password: "
                f"{(said.stderr or said.stdout).strip()}\nconnect as a user with passwordless "
                "sudo (admin on Debian's EC2 images) or as root")

    def put_text(self, text: str, path: PurePosixPath, mode: int = 0o644,
                 group: str | None = None) -> None:
        """Write `path` whole: a temporary file beside it, then a rename. The
        file has `mode` (and `group`) from its first byte on, so a secret is
        never readable by more than its final readers."""
        temporary = q(f"{path}.upload")
        umask = ~mode & 0o777
        regroup = f"chgrp {q(group)} {temporary} && " if group else ""
        # The subshell's umask creates the file with `mode`; root's group
        # may read it until chgrp, no one else.
        self.must(f"{{ (umask {umask:03o} && rm -f {temporary} && cat > {temporary}) && "
                  f"{regroup}chmod {mode:o} {temporary} && mv -f {temporary} {q(path)}; }} || "
                  f"{{ rm -f {temporary}; exit 1; }}", f"writing {path}", stdin=text)

    def put_file(self, local, remote: str) -> None:
        """Upload `local` (a path or a binary file object) to `remote` (owned
        by root, mode 0644)."""
        if not self.sudo:
            self._sftp_put(local, remote)
            return
        # SFTP writes as the SSH user: into a folder only that user may
        # enter, then moved into place as root.
        staging = self.must("mktemp -d", "making an upload folder", as_root=False).strip()
        try:
            self._sftp_put(local, f"{staging}/upload")
            self.must(f"install -m 0644 -o root -g root {q(staging)}/upload {q(remote)}",
                      f"moving the upload to {remote}")
        finally:
            self.run(f"rm -rf {q(staging)}", as_root=False)

    def _sftp_put(self, local, remote: str) -> None:
        try:
            self.connection.put(local, remote)
        except (paramiko.SSHException, OSError) as exc:
            raise ProvisioningError(f"uploading to {self.name}:{remote} failed: {exc}") from None


class _RefuseUnknownHost(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client, hostname, key):
        raise paramiko.SSHException(
            f"the host key of {hostname} ({key.get_name()} {key.fingerprint}) is not in "
            "known_hosts; check that fingerprint with the host's owner, then pass "
            "--accept-new-host-key once to record it")


def check_host_keys(connection: Connection, known_hosts: Path, accept_new: bool) -> None:
    """Make `connection` verify the host's key against `known_hosts` (and the
    system's /etc/ssh/ssh_known_hosts): a changed key is always refused; an
    unknown one is refused too, unless `accept_new`, when it is recorded in
    `known_hosts` (ssh's StrictHostKeyChecking=accept-new)."""
    client = connection.client
    system = Path("/etc/ssh/ssh_known_hosts")
    if system.exists():
        client.load_system_host_keys(str(system))
    if accept_new and not known_hosts.exists():
        known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        known_hosts.touch(mode=0o600)
    if known_hosts.exists():
        # Loaded as the client's own keys: AutoAddPolicy saves new ones there.
        client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy() if accept_new
                                       else _RefuseUnknownHost())
