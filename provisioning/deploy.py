"""`fab -H HOST deploy`: put a release of media-nommer on a feeder host and
run it under supervisord, as root (through sudo when the SSH user is not
root) with the programs dropped to a service user.

The checklist (deploy), under the host's deploy lock:
  probe    the host's Python -> the wheelhouse's target
  prepare  the service user and folders (what this deploy creates is noted)
  install  releases/<id>/venv from the uploaded wheelhouse (skipped when
           that release is already installed; <id> is a digest of the wheels)
  stage    nomconf.toml and supervisord.conf rendered here; only files whose
           text differs are uploaded, as <file>.new
  check    the staged files with the new release's code (settings load,
           supervisord parses)
  switch   old files kept as <file>.prev, new ones moved in, `current`
           pointed at the release (a rename: never half switched)
  apply    supervisord started if not running, else reread/update and the
           feeder programs restarted when their code or settings changed or
           the host differs from its last healthy deploy (deployed.json)
  health   api, scheduler and scaler RUNNING past their start and /health
           answering; if not, the last healthy release and files are put
           back, or on a first deploy everything it did is undone
  confirm  deployed.json written, old releases pruned

A deploy that finds everything as its last healthy deploy left it changes
nothing: same release, same files, no restart.
"""
from __future__ import annotations

import dataclasses
import json
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from core.settings import Settings
from provisioning.errors import ProvisioningError
from provisioning.feeder_host import FeederHost
from provisioning.layout import KEEP_RELEASES, FeederLayout
from provisioning.releases import Marker, deploy_lock, digests, prune, read_marker, write_marker
from provisioning.remote import q
from provisioning.render import render_feeder_supervisord, render_feeder_unit, render_nomconf
from provisioning.wheelhouse import (PROBE_CODE, Target, build_wheelhouse, project_version,
                                     release_id)

DEFAULT_SERVICE_USER = "nommer"


@dataclasses.dataclass(frozen=True)
class DeployOptions:
    """How to deploy. `run_as`: the user the processes run as (None:
    "nommer", created if missing; "root": no drop). `systemd`: "auto",
    "yes" or "no" (see FeederHost.uses_systemd). `keep_releases`: installed
    releases kept after a healthy deploy."""

    python: str = "python3"
    run_as: str | None = None
    systemd: str = "auto"
    health_timeout_s: float = 30.0
    wheelhouse: Path | None = None
    keep_releases: int = KEEP_RELEASES


@dataclasses.dataclass
class Change:
    """What a deploy changed on the host, enough to undo it."""

    release: str
    previous_link: str | None
    marker: Marker | None
    changed_files: list[PurePosixPath] = dataclasses.field(default_factory=list)
    files: dict[str, str] = dataclasses.field(default_factory=dict)  # path: sha256 wanted
    installed: bool = False
    created_folders: list[PurePosixPath] = dataclasses.field(default_factory=list)
    created_user: str | None = None
    supervisord_started: bool = False

    @property
    def link(self) -> str:
        return f"releases/{self.release}"

    @property
    def switched(self) -> bool:
        return self.previous_link != self.link

    @property
    def confirmed(self) -> bool:
        """The host ran this release with these files healthy before."""
        return (self.marker is not None and self.marker.release == self.release
                and self.marker.files == self.files)

    @property
    def first(self) -> bool:
        """Nothing was deployed on the host before."""
        return self.marker is None and self.previous_link is None

    @property
    def good_release(self) -> str | None:
        """The release to go back to: the last one seen healthy."""
        if self.marker is not None:
            return self.marker.release
        return PurePosixPath(self.previous_link).name if self.previous_link else None

    @property
    def anything(self) -> bool:
        return self.switched or bool(self.changed_files) or not self.confirmed

    def new_marker(self) -> Marker:
        previous = self.good_release if self.good_release != self.release else (
            self.marker.previous if self.marker else None)
        return Marker(self.release, previous, self.files)


def probe(host: FeederHost, python: str) -> Target:
    said = host.must(f"{q(python)} -c {q(PROBE_CODE)}",
                     f"running {python} (pass --python with a Python 3.11+ that has venv)")
    try:
        return Target.from_probe(json.loads(said.strip().splitlines()[-1]))
    except (ValueError, IndexError, KeyError):
        raise ProvisioningError(f"{python} on {host.name} said {said!r}") from None


def service_user(wanted: str | None) -> str | None:
    """The user supervisord drops to, or None to stay root."""
    user = wanted or DEFAULT_SERVICE_USER
    return None if user == "root" else user


def prepare(host: FeederHost, settings: Settings, run_as: str | None,
            change: Change) -> str | None:
    """Folders (and the service user) that every later step needs, noting
    in `change` what did not exist before. Returns the service user's
    primary group (None without a service user)."""
    layout = host.layout
    data_dir = layout.resolve(settings.data_dir)
    if run_as and host.run(f"id -u {q(run_as)}").exited != 0:
        host.must(f"useradd --system --user-group --home-dir {q(data_dir)} --no-create-home "
                  f"--shell /usr/sbin/nologin {q(run_as)}", f"creating the user {run_as}")
        change.created_user = run_as
    folders = [layout.prefix, layout.releases, layout.etc_dir, data_dir, layout.run_dir,
               layout.log_dir]
    missing = host.must("for folder in " + " ".join(q(folder) for folder in folders) +
                        '; do [ -e "$folder" ] || printf "%s\\n" "$folder"; done',
                        "looking at the folders")
    change.created_folders = [PurePosixPath(line) for line in missing.splitlines() if line]
    host.must("mkdir -p " + " ".join(q(folder) for folder in folders), "making folders")
    host.must(f"chmod 0700 {q(layout.run_dir)}", "chmod of the run folder")
    if not run_as:
        return None
    # The user's primary group, whatever its name: nomconf.toml is readable by it.
    group = host.must(f"id -gn {q(run_as)}", f"the group of {run_as}").strip()
    owned = " ".join(q(folder) for folder in (data_dir, layout.run_dir, layout.log_dir))
    host.must(f"chown {q(run_as)}:{q(group)} {owned}", f"giving {run_as} its folders")
    return group


def install(host: FeederHost, release: str, wheelhouse: Path, target: Target) -> bool:
    """Install `release` from `wheelhouse` unless it is installed already.
    True when it was installed now."""
    folder = host.layout.release(release)
    if host.exists(folder / ".installed"):
        return False
    wheels = folder / "wheelhouse"
    host.must(f"rm -rf {q(folder)} && mkdir -p {q(wheels)}", f"making {folder}")
    with tempfile.TemporaryFile() as bundle:
        # One upload of one file: far faster over SFTP than one per wheel.
        with tarfile.open(fileobj=bundle, mode="w") as archive:
            for wheel in sorted(Path(wheelhouse).glob("*.whl")):
                archive.add(wheel, arcname=wheel.name)
        bundle.seek(0)
        host.put_file(bundle, f"{wheels}.tar")
    host.must(f"tar -xf {q(wheels)}.tar -C {q(wheels)} && rm -f {q(wheels)}.tar",
              "unpacking the wheelhouse")
    host.must(f"{q(target.executable)} -m venv {q(folder)}/venv",
              f"making a virtualenv with {target.executable} (Debian: apt-get install python3-venv)")
    # Only the uploaded wheels: no registry, no pip configuration of the host.
    host.must(f"PIP_CONFIG_FILE=/dev/null {q(folder)}/venv/bin/python -m pip install --isolated "
              f"--no-index --no-cache-dir --disable-pip-version-check --quiet "
              f"--find-links {q(wheels)} media-nommer=={project_version(wheelhouse)}",
              f"installing release {release}")
    host.must(f"rm -rf {q(wheels)} && touch {q(folder)}/.installed", "marking the release installed")
    return True


def host_files(settings: Settings, layout: FeederLayout,
               run_as: str | None) -> dict[PurePosixPath, tuple[str, int]]:
    """{path: (text, mode)}; nomconf.toml may hold api_token and webhook_secret, so only root
    (and the service user's group) may read it."""
    return {
        layout.nomconf: (render_nomconf(settings, layout), 0o640 if run_as else 0o600),
        layout.supervisord_conf: (render_feeder_supervisord(settings, layout, run_as), 0o644),
    }


def stage(host: FeederHost, files: dict, group: str | None) -> list[PurePosixPath]:
    """Upload each file whose text differs as <path>.new, with its final
    mode and group from the first byte; returns their paths."""
    changed = []
    for path, (text, mode) in files.items():
        if host.read(path) == text:
            continue
        host.put_text(text, PurePosixPath(f"{path}.new"), mode, group)
        changed.append(path)
    return changed


def unstage(host: FeederHost, changed: list[PurePosixPath]) -> None:
    for path in changed:
        host.run(f"rm -f {q(path)}.new")


def check(host: FeederHost, release: str, changed: list[PurePosixPath]) -> None:
    """Validate the files the release will run with (staged or in place)."""
    layout = host.layout

    def effective(path: PurePosixPath) -> str:
        return q(f"{path}.new" if path in changed else path)

    python = layout.release(release) / "venv" / "bin" / "python"
    host.must(f"{q(python)} -m provisioning.hostcheck config "
              f"--nomconf {effective(layout.nomconf)} "
              f"--supervisord {effective(layout.supervisord_conf)}",
              "checking the new configuration")


def switch(host: FeederHost, change: Change) -> None:
    for path in change.changed_files:
        host.must(f"if [ -e {q(path)} ]; then cp -p {q(path)} {q(path)}.prev; "
                  f"else rm -f {q(path)}.prev; fi && mv -f {q(path)}.new {q(path)}",
                  f"putting {path} in place")
    if change.switched:
        host.point_current(change.link)


def apply(host: FeederHost, change: Change, settings: Settings, options: DeployOptions) -> None:
    """Make supervisord run what is now in place."""
    layout = host.layout
    if host.supervisord_pid() is None:
        unit = render_feeder_unit(settings, layout) if host.uses_systemd(options.systemd) else None
        change.supervisord_started = True
        host.start_supervisord(unit)
        return
    if layout.supervisord_conf in change.changed_files or not change.confirmed:
        host.reload_supervisord()
    if change.anything:
        host.restart_feeder()


def roll_back(host: FeederHost, change: Change, options: DeployOptions) -> str:
    """Put back the files and the last healthy release and restart them;
    returns what happened, for the error message."""
    for path in change.changed_files:
        host.must(f"if [ -e {q(path)}.prev ]; then mv -f {q(path)}.prev {q(path)}; "
                  f"else rm -f {q(path)}; fi", f"restoring {path}")
    good = f"releases/{change.good_release}"
    if host.readlink(host.layout.current) != good:
        host.point_current(good)
    if host.supervisord_pid() is None:
        host.start_installed_supervisord(host.uses_systemd(options.systemd))
    else:
        host.reload_supervisord()
        host.restart_feeder()
    previous = f"the last healthy release ({change.good_release}) and configuration"
    try:
        host.wait_healthy(options.health_timeout_s)
    except ProvisioningError:
        return f"put back {previous}, but they are not healthy either"
    return f"put back {previous}; they run and are healthy"


def undo_first(host: FeederHost, change: Change, options: DeployOptions) -> str:
    """Undo a failed first deploy: stop what it started, remove what it
    made. Returns what happened, for the error message."""
    layout = host.layout
    if host.uses_systemd(options.systemd):
        host.remove_unit()
    elif host.supervisord_pid() is not None:
        host.shutdown_supervisord(False)
    removed = [layout.current, *change.changed_files,
               *(PurePosixPath(f"{path}.prev") for path in change.changed_files)]
    if change.installed:
        removed.append(layout.release(change.release))
    host.must("rm -rf " + " ".join(q(path) for path in [*removed, *change.created_folders]),
              "removing what the deploy installed")
    if change.created_user:
        host.must(f"userdel {q(change.created_user)}", f"removing the user {change.created_user}")
    return ("it was the host's first deploy: what it started is stopped and what it "
            "installed removed; the host is as it was before")


def deploy(host: FeederHost, settings: Settings, options: DeployOptions, scratch: Path) -> str:
    """Deploy; returns a summary. Raises ProvisioningError when a step fails
    (after rolling back, or undoing a first deploy)."""
    host.check_root()
    target = probe(host, options.python)
    wheelhouse = options.wheelhouse or build_wheelhouse(scratch / "wheelhouse", target)
    release = release_id(wheelhouse)
    with deploy_lock(host, f"deploy of {release}"):
        change = Change(release, host.readlink(host.layout.current), read_marker(host))
        try:
            return _deploy_locked(host, settings, options, change, wheelhouse, target)
        except ProvisioningError as exc:
            if not change.first:
                raise
            try:
                outcome = undo_first(host, change, options)
            except ProvisioningError as also:
                outcome = f"undoing it failed as well: {also}"
            raise ProvisioningError(f"{exc}\n\ndeploy of {release} failed: {outcome}") from None


def _deploy_locked(host: FeederHost, settings: Settings, options: DeployOptions, change: Change,
                   wheelhouse: Path, target: Target) -> str:
    run_as = service_user(options.run_as)
    group = prepare(host, settings, run_as, change)
    change.installed = install(host, change.release, wheelhouse, target)
    files = host_files(settings, host.layout, run_as)
    change.files = digests({path: text for path, (text, _) in files.items()})
    change.changed_files = stage(host, files, group)
    try:
        check(host, change.release, change.changed_files)
    except ProvisioningError:
        unstage(host, change.changed_files)
        change.changed_files = []
        raise
    switch(host, change)
    try:
        apply(host, change, settings, options)
        health = host.wait_healthy(options.health_timeout_s)
    except ProvisioningError as exc:
        if change.first or not change.anything:
            raise
        try:
            outcome = roll_back(host, change, options)
        except ProvisioningError as also:
            outcome = f"rolling back failed as well: {also}"
        raise ProvisioningError(f"{exc}\n\ndeploy of {change.release} failed: {outcome}") \
            from None
    write_marker(host, change.new_marker())
    for path in change.changed_files:
        host.run(f"rm -f {q(path)}.prev")
    protected = {change.release} | ({change.new_marker().previous} - {None})
    prune(host, options.keep_releases, protected)
    return summary(host, change, health)


def summary(host: FeederHost, change: Change, health: str) -> str:
    """One paragraph on what the deploy did (or "nothing changed")."""
    layout = host.layout
    done = []
    if change.installed:
        done.append(f"installed release {change.release}")
    if change.switched:
        done.append(f"pointed {layout.current} at {change.link} "
                    f"(was {change.previous_link or 'nothing'})")
    done += [f"updated {path}" for path in change.changed_files]
    if change.supervisord_started:
        done.append("started supervisord")
    elif change.anything:
        if not (change.switched or change.changed_files):
            done.append("found the host differing from its last healthy deploy")
        done.append("restarted api, scheduler and scaler")
    return (f"{host.name}: release {change.release} in {layout.prefix}: "
            f"{'; '.join(done) or 'nothing changed'}\n/health: {health}")
