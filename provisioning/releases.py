"""What a feeder host has deployed, beyond the files in place:

    deployed.json   written only after a deploy (or rollback) was healthy:
                    the release then running, the one before it, and a
                    digest of each configuration file. A deploy that finds
                    the host differing from it (cut off after the switch,
                    say) applies and checks again instead of saying
                    "nothing changed".
    <prefix>.lock   a folder made atomically by `mkdir`: one deploy or
                    rollback at a time per host.

and the steps that use them: the release list, rollback and pruning.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from pathlib import PurePosixPath

from provisioning.errors import ProvisioningError
from provisioning.feeder_host import FeederHost
from provisioning.remote import q


@dataclasses.dataclass(frozen=True)
class Marker:
    """deployed.json: `release` ran healthy with `files` ({path: sha256});
    `previous` is the release that ran before it (None on the first)."""

    release: str
    previous: str | None
    files: dict[str, str]

    def text(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"


def digests(files: dict[PurePosixPath, str]) -> dict[str, str]:
    return {str(path): hashlib.sha256(text.encode("utf-8")).hexdigest()
            for path, text in files.items()}


def read_marker(host: FeederHost) -> Marker | None:
    text = host.read(host.layout.marker)
    if text is None:
        return None
    try:
        document = json.loads(text)
        return Marker(document["release"], document.get("previous"), dict(document["files"]))
    except (ValueError, KeyError, TypeError):
        return None  # unreadable: treated as never confirmed, so the deploy applies


def write_marker(host: FeederHost, marker: Marker) -> None:
    if host.read(host.layout.marker) != marker.text():
        host.put_text(marker.text(), host.layout.marker)


@contextlib.contextmanager
def deploy_lock(host: FeederHost, what: str):
    """Hold the host's deploy lock for the block. Raises ProvisioningError
    naming the holder when another deploy or rollback holds it."""
    lock = host.layout.lock
    owner = f"{what} by {host.user} since {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}"
    taken = host.run(f"mkdir -p {q(lock.parent)} && mkdir -m 0700 {q(lock)} && "
                     f"printf '%s\\n' {q(owner)} > {q(lock)}/owner")
    if taken.exited != 0:
        holder = (host.read(lock / "owner") or "unknown").strip()
        raise ProvisioningError(
            f"{host.name} is locked by another deploy ({holder}); if none runs any more, "
            f"remove the lock: fab -H {host.name} unlock")
    try:
        yield
    finally:
        host.run(f"rm -rf {q(lock)}")


def installed_releases(host: FeederHost) -> list[str]:
    """Installed releases, newest first (by the time their install finished)."""
    releases = host.layout.releases
    listed = host.run(f"cd {q(releases)} 2>/dev/null && ls -1t */.installed").stdout
    return [line.split("/")[0] for line in listed.split()]


def describe(host: FeederHost) -> str:
    """The releases on the host, newest first, marked current/deployed/previous."""
    marker = read_marker(host)
    link = host.readlink(host.layout.current)
    current = PurePosixPath(link).name if link else None
    lines = []
    for release in installed_releases(host):
        notes = []
        if release == current:
            notes.append("current")
        if marker and release == marker.release:
            notes.append("healthy when deployed")
        if marker and release == marker.previous:
            notes.append("previous: fab rollback goes here")
        lines.append(release + (f"  ({', '.join(notes)})" if notes else ""))
    return "\n".join(lines) or "no release installed"


def prune(host: FeederHost, keep: int, protected: set[str]) -> list[str]:
    """Remove all but the newest `keep` installed releases, never one in
    `protected`, and any half-installed release folder. Returns the removed."""
    layout = host.layout
    installed = installed_releases(host)
    listed = host.run(f"ls -1 {q(layout.releases)}").stdout.split()
    keep_names = set(installed[:keep]) | protected
    removed = [name for name in listed if name not in keep_names]
    for name in removed:
        host.must(f"rm -rf {q(layout.release(name))}", f"removing old release {name}")
    return removed


def rollback(host: FeederHost, health_timeout_s: float, uses_systemd: bool) -> str:
    """Run the previous healthy release again, with the configuration in
    place; returns a summary. Raises ProvisioningError (with the release
    that was running put back) when it is not healthy."""
    with deploy_lock(host, "rollback"):
        marker = read_marker(host)
        if marker is None or marker.previous is None:
            raise ProvisioningError(f"{host.name} has no earlier healthy release to go back to")
        target = marker.previous
        if not host.exists(host.layout.release(target) / ".installed"):
            raise ProvisioningError(f"release {target} is no longer installed on {host.name}")
        before = host.readlink(host.layout.current)
        host.point_current(f"releases/{target}")
        _restart(host, uses_systemd)
        try:
            health = host.wait_healthy(health_timeout_s)
        except ProvisioningError as exc:
            if before:
                host.point_current(before)
                _restart(host, uses_systemd)
            raise ProvisioningError(f"{exc}\n\nrollback to {target} failed; "
                                    f"{before} is back in place") from None
        write_marker(host, Marker(target, marker.release, marker.files))
        return (f"{host.name}: rolled back from {marker.release} to {target}\n"
                f"/health: {health}")


def _restart(host: FeederHost, uses_systemd: bool) -> None:
    if host.supervisord_pid() is None:
        host.start_installed_supervisord(uses_systemd)
    else:
        host.restart_feeder()
