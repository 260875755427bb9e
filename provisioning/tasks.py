"""The `fab` tasks (fabfile.py exposes them):

    fab -H HOST deploy     [--prefix P] [--config nomconf.toml] [--wheelhouse DIR]
                           [--python python3] [--run-as USER] [--systemd auto|yes|no]
                           [--health-timeout 30] [--keep-releases 3]
    fab -H HOST status     [--prefix P]
    fab -H HOST releases   [--prefix P]
    fab -H HOST rollback   [--prefix P] [--systemd auto|yes|no] [--health-timeout 30]
    fab -H HOST restart    [--prefix P] [--supervisord] [--health-timeout 30]
    fab -H HOST logs       [--prefix P] [--program api] [--lines 50]
    fab -H HOST unlock     [--prefix P]
    fab build-ami          [--config nomconf.toml] [--region R] [--instance-type T]
                           [--ami-name N] [--ami-version V] [--subnet-id S]
                           [--public] [--copy-to R2,R3] [--ssh-from CIDR,...]
                           [--packer PATH] [--wheelhouse DIR]
    fab wheelhouse --dest DIR [--python-version 3.11 --machine x86_64 --glibc 2.36]

Every host task takes --accept-new-host-key: the host's SSH key is checked
against ~/.ssh/known_hosts, and an unknown one is refused unless this is
given (then it is recorded, for the first contact only).

The prefix defaults to $MEDIA_NOMMER_PREFIX, else /opt/media-nommer. The
settings deployed (and the region build-ami uses) are loaded as the daemons
load them: --config, else $NOMMER_CONFIG, else ./nomconf.toml if present,
then NOMMER_* variables. Every failure ends the task with exit status 1 and
a message that says what failed.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fabric import Connection, task
from invoke.exceptions import Exit

from core.errors import NommerError
from core.settings import Settings, load
from provisioning import ami as ami_build
from provisioning.deploy import DeployOptions, deploy as deploy_release
from provisioning import releases as host_releases
from provisioning.feeder_host import FeederHost
from provisioning.layout import (DEFAULT_PREFIX, FEEDER_PROGRAMS, KEEP_RELEASES, PREFIX_ENV,
                                 FeederLayout)
from provisioning.remote import check_host_keys, q
from provisioning.wheelhouse import ENCODER_TARGET, Target, build_wheelhouse

_PREFIX_HELP = f"install folder on the host (default: ${PREFIX_ENV}, else {DEFAULT_PREFIX})"
_CONFIG_HELP = "settings file (default: $NOMMER_CONFIG, else ./nomconf.toml if present)"
_NEW_KEY_HELP = ("record the host's SSH key in ~/.ssh/known_hosts if it is not there "
                 "(first contact only; a changed key is always refused)")
_SYSTEMD_HELP = "supervisord runs as a systemd unit: auto, yes or no (default: auto)"
_HEALTH_HELP = "seconds the programs and /health have to come up (default: 30)"
# What `status` allows the API for one answer.
STATUS_TIMEOUT_S = 5


def load_settings(config: str | None) -> Settings:
    if config is None and not os.environ.get("NOMMER_CONFIG") and Path("nomconf.toml").exists():
        config = "nomconf.toml"
    try:
        return load(config)
    except NommerError as exc:
        raise Exit(f"settings: {exc}", code=1) from None


def _host(c, prefix: str | None, accept_new_host_key: bool) -> FeederHost:
    if not isinstance(c, Connection):
        raise Exit("this task needs a host: fab -H [USER@]HOST[:PORT] TASK", code=1)
    check_host_keys(c, Path.home() / ".ssh" / "known_hosts", accept_new_host_key)
    try:
        layout = FeederLayout.at(prefix or os.environ.get(PREFIX_ENV) or DEFAULT_PREFIX)
    except ValueError as exc:
        raise Exit(f"--prefix: {exc}", code=1) from None
    return FeederHost(c, layout)


def _listed(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _fail(what: str, exc: Exception) -> Exit:
    return Exit(f"{what} failed: {exc}", code=1)


@task(help={"prefix": _PREFIX_HELP, "config": _CONFIG_HELP,
            "wheelhouse": "use this wheelhouse instead of building one for the host",
            "python": "the host's Python the virtualenv is made from (default: python3)",
            "run-as": "user the processes run as, created if missing (default: nommer; "
                      "root: no drop)",
            "systemd": _SYSTEMD_HELP, "health-timeout": _HEALTH_HELP,
            "keep-releases": f"installed releases kept (default: {KEEP_RELEASES})",
            "accept-new-host-key": _NEW_KEY_HELP})
def deploy(c, prefix=None, config=None, wheelhouse=None, python="python3", run_as=None,
           systemd="auto", health_timeout=30, keep_releases=KEEP_RELEASES,
           accept_new_host_key=False):
    """Install the project on the host and run api, scheduler and scaler under supervisord."""
    settings = load_settings(config)
    host = _host(c, prefix, accept_new_host_key)
    options = DeployOptions(python=python, run_as=run_as, systemd=systemd,
                            health_timeout_s=float(health_timeout),
                            wheelhouse=Path(wheelhouse) if wheelhouse else None,
                            keep_releases=max(1, int(keep_releases)))
    with tempfile.TemporaryDirectory(prefix="media-nommer-deploy-") as scratch:
        try:
            print(deploy_release(host, settings, options, Path(scratch)))
        except NommerError as exc:
            raise _fail(f"deploy to {host.name}", exc) from None


@task(help={"prefix": _PREFIX_HELP, "accept-new-host-key": _NEW_KEY_HELP})
def status(c, prefix=None, accept_new_host_key=False):
    """Show the release, the processes and /health; exit 1 unless all are healthy."""
    host = _host(c, prefix, accept_new_host_key)
    try:
        release = host.readlink(host.layout.current)
        print(f"{host.name}: {host.layout.current} -> {release or '(nothing deployed)'}")
        if host.supervisord_pid() is None:
            raise Exit(f"supervisord is not running on {host.name}", code=1)
        print(host.supervisorctl("status").rstrip())
        print(f"/health: {host.wait_healthy(STATUS_TIMEOUT_S, settle_s=0)}")
    except NommerError as exc:
        raise _fail(f"status of {host.name}", exc) from None


@task(help={"prefix": _PREFIX_HELP, "accept-new-host-key": _NEW_KEY_HELP})
def releases(c, prefix=None, accept_new_host_key=False):
    """List the releases installed on the host, newest first."""
    host = _host(c, prefix, accept_new_host_key)
    try:
        print(host_releases.describe(host))
    except NommerError as exc:
        raise _fail(f"releases of {host.name}", exc) from None


@task(help={"prefix": _PREFIX_HELP, "systemd": _SYSTEMD_HELP, "health-timeout": _HEALTH_HELP,
            "accept-new-host-key": _NEW_KEY_HELP})
def rollback(c, prefix=None, systemd="auto", health_timeout=30, accept_new_host_key=False):
    """Run the previous healthy release again (the settings in place stay)."""
    host = _host(c, prefix, accept_new_host_key)
    try:
        host.check_root()
        print(host_releases.rollback(host, float(health_timeout), host.uses_systemd(systemd)))
    except NommerError as exc:
        raise _fail(f"rollback on {host.name}", exc) from None


@task(help={"prefix": _PREFIX_HELP, "accept-new-host-key": _NEW_KEY_HELP})
def unlock(c, prefix=None, accept_new_host_key=False):
    """Remove the deploy lock left by a deploy that was cut off."""
    host = _host(c, prefix, accept_new_host_key)
    try:
        holder = host.read(host.layout.lock / "owner")
        host.must(f"rm -rf {q(host.layout.lock)}", "removing the lock")
        print(f"{host.name}: removed the lock ({(holder or 'not locked').strip()})")
    except NommerError as exc:
        raise _fail(f"unlock of {host.name}", exc) from None


@task(help={"prefix": _PREFIX_HELP,
            "supervisord": "restart supervisord itself too (after changing its own settings)",
            "config": "settings file, for the systemd unit when --supervisord restarts it",
            "systemd": _SYSTEMD_HELP, "health-timeout": _HEALTH_HELP,
            "accept-new-host-key": _NEW_KEY_HELP})
def restart(c, prefix=None, supervisord=False, config=None, systemd="auto", health_timeout=30,
            accept_new_host_key=False):
    """Restart api, scheduler and scaler (or all of supervisord), then check their health."""
    host = _host(c, prefix, accept_new_host_key)
    try:
        if supervisord:
            uses_systemd = host.uses_systemd(systemd)
            host.shutdown_supervisord(uses_systemd)
            from provisioning.render import render_feeder_unit

            unit = render_feeder_unit(load_settings(config), host.layout) if uses_systemd else None
            host.start_supervisord(unit)
        else:
            host.restart_feeder()
        print(host.supervisorctl("status").rstrip())
        print(f"/health: {host.wait_healthy(float(health_timeout))}")
    except NommerError as exc:
        raise _fail(f"restart on {host.name}", exc) from None


@task(help={"prefix": _PREFIX_HELP,
            "program": "one log: supervisord, api, scheduler, scaler or nommerd_00... "
                       "(default: supervisord and the feeder's programs)",
            "lines": "lines from the end of each log (default: 50)",
            "accept-new-host-key": _NEW_KEY_HELP})
def logs(c, prefix=None, program=None, lines=50, accept_new_host_key=False):
    """Show the end of the host's logs."""
    host = _host(c, prefix, accept_new_host_key)
    programs = [program] if program else ["supervisord", *FEEDER_PROGRAMS]
    try:
        print(host.logs(programs, int(lines)))
    except NommerError as exc:
        raise _fail(f"logs of {host.name}", exc) from None


@task(name="build-ami",
      help={"config": _CONFIG_HELP + "; its aws_region is the default region",
            "region": "AWS region to build in", "instance-type": "build machine type",
            "ami-name": "AMI name prefix", "ami-version": "AMI version (default: a timestamp)",
            "subnet-id": "subnet of the build machine (default VPC if empty)",
            "public": "share the AMI with every AWS account (after marking it IMDSv2-only)",
            "copy-to": "further regions to copy the AMI to, comma-separated",
            "ssh-from": "addresses that may reach the build machine over SSH, comma-separated "
                        "CIDRs (default: 0.0.0.0/0)",
            "packer": "packer executable (default: packer on PATH)",
            "wheelhouse": "use this wheelhouse (for Python 3.11 on x86_64) instead of building one"})
def build_ami(c, config=None, region=None, instance_type="", ami_name="", ami_version="",
              subnet_id="", public=False, copy_to="", ssh_from="", packer=None, wheelhouse=None):
    """Build the encoder AMI with Packer and print its id and the setting to use it."""
    settings = load_settings(config)
    request = ami_build.AmiRequest(region=region or settings.aws_region,
                                   instance_type=instance_type, ami_name=ami_name,
                                   ami_version=ami_version, subnet_id=subnet_id, public=public,
                                   copy_regions=_listed(copy_to), ssh_source_cidrs=_listed(ssh_from))
    with tempfile.TemporaryDirectory(prefix="media-nommer-ami-") as scratch:
        try:
            ami = ami_build.build_ami(request, settings, Path(scratch), packer,
                                      Path(wheelhouse) if wheelhouse else None)
        except NommerError as exc:
            raise _fail("build-ami", exc) from None
    print(ami_build.how_to_use(ami, request.region))


@task(help={"dest": "folder to fill with wheels",
            "python-version": f"target Python (default: {ENCODER_TARGET.python}, the AMI's)",
            "machine": f"target machine (default: {ENCODER_TARGET.machine})",
            "glibc": f"target glibc (default: {'.'.join(map(str, ENCODER_TARGET.glibc))})"})
def wheelhouse(c, dest, python_version=None, machine=None, glibc=None):
    """Build the project and its dependencies as wheels for a target (default: the AMI)."""
    try:
        glibc_version = tuple(int(part) for part in glibc.split(".")[:2]) if glibc else None
    except ValueError:
        raise Exit(f"--glibc {glibc!r}: expected a version such as 2.36", code=1) from None
    target = Target(python=python_version or ENCODER_TARGET.python,
                    machine=machine or ENCODER_TARGET.machine,
                    glibc=glibc_version or ENCODER_TARGET.glibc)
    try:
        print(build_wheelhouse(Path(dest), target))
    except NommerError as exc:
        raise _fail("wheelhouse", exc) from None
