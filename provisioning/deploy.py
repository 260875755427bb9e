"""`fab -H HOST deploy`: put a release of media-nommer on a feeder host and
run it under supervisord.

The checklist (deploy):
  probe    the host's Python -> the wheelhouse's target
  install  releases/<id>/venv from the uploaded wheelhouse (skipped when
           that release is already installed; <id> is a digest of the wheels)
  stage    nomconf.toml and supervisord.conf rendered here; only files whose
           text differs are uploaded, as <file>.new
  check    the staged files with the new release's code (settings load,
           supervisord parses)
  switch   old files kept as <file>.prev, new ones moved in, `current`
           pointed at the release (a rename: never half switched)
  apply    supervisord started if not running, else reread/update and the
           feeder programs restarted when their code or settings changed
  health   the API's /health must answer; if not, everything is switched
           back and the previous release restarted, and the deploy fails

A deploy that finds everything right changes nothing: same release, same
files, no restart.
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
from provisioning.remote import q
from provisioning.render import render_feeder_supervisord, render_feeder_unit, render_nomconf
from provisioning.wheelhouse import (PROBE_CODE, Target, build_wheelhouse, project_version,
                                     release_id)

DEFAULT_SERVICE_USER = "nommer"


@dataclasses.dataclass(frozen=True)
class DeployOptions:
    """How to deploy. `run_as`: the user the processes run as; None means
    "nommer" (created if missing) when connected as root, else the SSH user.
    `systemd`: "auto", "yes" or "no" (see FeederHost.uses_systemd)."""

    python: str = "python3"
    run_as: str | None = None
    systemd: str = "auto"
    health_timeout_s: float = 30.0
    wheelhouse: Path | None = None


@dataclasses.dataclass
class Change:
    """What a deploy changed on the host, enough to undo it."""

    release: str
    previous_link: str | None
    changed_files: list[PurePosixPath]
    installed: bool = False
    supervisord_started: bool = False

    @property
    def link(self) -> str:
        return f"releases/{self.release}"

    @property
    def switched(self) -> bool:
        return self.previous_link != self.link

    @property
    def anything(self) -> bool:
        return self.switched or bool(self.changed_files)


def probe(host: FeederHost, python: str) -> Target:
    said = host.must(f"{q(python)} -c {q(PROBE_CODE)}",
                     f"running {python} (pass --python with a Python 3.11+ that has venv)")
    try:
        return Target.from_probe(json.loads(said.strip().splitlines()[-1]))
    except (ValueError, IndexError, KeyError):
        raise ProvisioningError(f"{python} on {host.name} said {said!r}") from None


def service_user(host: FeederHost, wanted: str | None) -> str | None:
    """The user supervisord drops to, or None to stay the SSH user."""
    me = host.must("id -un", "id -un").strip()
    user = wanted or (DEFAULT_SERVICE_USER if me == "root" else me)
    if user == me:
        return None
    if me != "root":
        raise ProvisioningError(f"the processes can run as {user} only when the deploy "
                                f"connects as root; connect as root or pass --run-as {me}")
    return user


def prepare(host: FeederHost, settings: Settings, run_as: str | None) -> None:
    """Folders (and the service user) that every later step needs."""
    layout = host.layout
    data_dir = layout.resolve(settings.data_dir)
    if run_as:
        host.must(f"id -u {q(run_as)} >/dev/null 2>&1 || useradd --system --user-group "
                  f"--home-dir {q(data_dir)} --no-create-home --shell /usr/sbin/nologin "
                  f"{q(run_as)}", f"creating the user {run_as}")
    folders = [layout.releases, layout.etc_dir, data_dir, layout.run_dir, layout.log_dir]
    host.must("mkdir -p " + " ".join(q(folder) for folder in folders), "making folders")
    host.must(f"chmod 0700 {q(layout.run_dir)}", "chmod of the run folder")
    if run_as:
        owned = " ".join(q(folder) for folder in (data_dir, layout.run_dir, layout.log_dir))
        host.must(f"chown {q(run_as)}: {owned}", f"giving {run_as} its folders")


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
    """{path: (text, mode)}; nomconf.toml may hold api_token, so only its
    owner (and the service user's group) may read it."""
    return {
        layout.nomconf: (render_nomconf(settings, layout), 0o640 if run_as else 0o600),
        layout.supervisord_conf: (render_feeder_supervisord(settings, layout, run_as), 0o644),
    }


def stage(host: FeederHost, files: dict, run_as: str | None) -> list[PurePosixPath]:
    """Upload each file whose text differs as <path>.new; returns their paths."""
    changed = []
    for path, (text, mode) in files.items():
        if host.read(path) == text:
            continue
        host.put_text(text, PurePosixPath(f"{path}.new"), mode)
        if run_as:
            host.must(f"chgrp {q(run_as)} {q(path)}.new", f"chgrp of {path}")
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


def point_current(host: FeederHost, link: str) -> None:
    current = host.layout.current
    host.must(f"ln -sfn {q(link)} {q(current)}.new && mv -Tf {q(current)}.new {q(current)}",
              f"pointing {current} at {link}")


def switch(host: FeederHost, change: Change) -> None:
    for path in change.changed_files:
        host.must(f"if [ -e {q(path)} ]; then cp -p {q(path)} {q(path)}.prev; "
                  f"else rm -f {q(path)}.prev; fi && mv -f {q(path)}.new {q(path)}",
                  f"putting {path} in place")
    if change.switched:
        point_current(host, change.link)


def apply(host: FeederHost, change: Change, settings: Settings, options: DeployOptions) -> None:
    """Make supervisord run what is now in place."""
    layout = host.layout
    if host.supervisord_pid() is None:
        unit = render_feeder_unit(settings, layout) if host.uses_systemd(options.systemd) else None
        host.start_supervisord(unit)
        change.supervisord_started = True
        return
    if layout.supervisord_conf in change.changed_files:
        host.reload_supervisord()
    if change.switched or layout.nomconf in change.changed_files:
        host.restart_feeder()


def roll_back(host: FeederHost, change: Change, options: DeployOptions) -> str:
    """Put back the previous files and release and restart them; returns
    what happened, for the error message."""
    for path in change.changed_files:
        host.must(f"if [ -e {q(path)}.prev ]; then mv -f {q(path)}.prev {q(path)}; "
                  f"else rm -f {q(path)}; fi", f"restoring {path}")
    if change.switched and change.previous_link:
        point_current(host, change.previous_link)
    if change.previous_link is None:
        return "there was no earlier release to go back to; the new one stays in place"
    if host.layout.supervisord_conf in change.changed_files:
        host.reload_supervisord()
    host.restart_feeder()
    previous = f"the previous release ({change.previous_link}) and configuration"
    try:
        host.wait_healthy(options.health_timeout_s)
    except ProvisioningError:
        return f"put back {previous}, but the API is not healthy with them either"
    return f"put back {previous}; they run and the API is healthy"


def prune(host: FeederHost, change: Change) -> None:
    """Remove .prev files and all but the newest KEEP_RELEASES releases
    (never the current or the previous one)."""
    layout = host.layout
    for path in change.changed_files:
        host.run(f"rm -f {q(path)}.prev")
    names = host.run(f"ls -1t {q(layout.releases)}").stdout.split()
    keep = set(names[:KEEP_RELEASES]) | {change.release}
    if change.previous_link:
        keep.add(PurePosixPath(change.previous_link).name)
    for name in names:
        if name not in keep:
            host.must(f"rm -rf {q(layout.release(name))}", f"removing old release {name}")


def deploy(host: FeederHost, settings: Settings, options: DeployOptions, scratch: Path) -> str:
    """Deploy; returns a summary. Raises ProvisioningError when a step fails
    (after rolling back, once anything was switched)."""
    target = probe(host, options.python)
    wheelhouse = options.wheelhouse or build_wheelhouse(scratch / "wheelhouse", target)
    release = release_id(wheelhouse)
    run_as = service_user(host, options.run_as)
    prepare(host, settings, run_as)
    installed = install(host, release, wheelhouse, target)
    changed = stage(host, host_files(settings, host.layout, run_as), run_as)
    try:
        check(host, release, changed)
    except ProvisioningError:
        unstage(host, changed)
        raise
    change = Change(release, host.readlink(host.layout.current), changed, installed)
    switch(host, change)
    try:
        apply(host, change, settings, options)
        health = host.wait_healthy(options.health_timeout_s)
    except ProvisioningError as exc:
        if not change.anything:
            raise
        try:
            outcome = roll_back(host, change, options)
        except ProvisioningError as also:
            outcome = f"rolling back failed as well: {also}"
        raise ProvisioningError(f"{exc}\n\ndeploy of {release} failed: {outcome}") from None
    prune(host, change)
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
    else:
        if layout.supervisord_conf in change.changed_files:
            done.append("reloaded supervisord")
        if change.switched or layout.nomconf in change.changed_files:
            done.append("restarted api, scheduler and scaler")
    return (f"{host.name}: release {change.release} in {layout.prefix}: "
            f"{'; '.join(done) or 'nothing changed'}\n/health: {health}")
