"""Text of the files provisioning writes, from templates/ and the settings.

Every function here is pure: the same input gives the same bytes, which is
what lets a second deploy see that nothing changed. Templates use
string.Template (`${name}`), so supervisord's own `%(name)s` expansions
pass through untouched.
"""
from __future__ import annotations

import dataclasses
import math
import string
from importlib import resources

from core.settings import Settings
from core.toml_text import toml_value
from nommerd.daemon import RELEASE_WAIT_S
from provisioning.layout import (ENCODER_STOP_GRACE_S, LOCAL_ENCODER_STOP_GRACE_S,
                                 STOP_MARGIN_S, EncoderLayout, FeederLayout)

# systemd waits this much longer than the slowest program's stopwaitsecs
# before it kills what is left (supervisord stops programs one at a time).
UNIT_STOP_MARGIN_S = 30
# The feeder's own programs' longest stopwaitsecs (the scheduler's).
FEEDER_STOPWAITSECS = 15
# Log rotation on the hosts, by supervisord: size of a log file before it is
# rotated, and how many rotated files are kept.
LOG_MAX_BYTES = "20MB"
LOG_BACKUPS = 5
_LOGS = {"log_max_bytes": LOG_MAX_BYTES, "log_backups": LOG_BACKUPS}
# How long the encoder's boot start waits for supervisord's socket.
BOOT_START_WAIT_S = 60


def template(name: str) -> string.Template:
    """templates/<name> of this package (shipped in the wheel as package data)."""
    text = resources.files("provisioning").joinpath("templates", name).read_text("utf-8")
    return string.Template(text)


def stopwaitsecs(stop_grace_s: int) -> int:
    """supervisord's stopwaitsecs for a nommerd started with --stop-grace-s:
    the grace, then nommerd's wait while it gives jobs back, then a margin."""
    return int(stop_grace_s + math.ceil(RELEASE_WAIT_S) + STOP_MARGIN_S)





def host_settings(settings: Settings, layout: FeederLayout) -> dict:
    """The settings a feeder host runs with, in Settings' field order: those
    that differ from the defaults, with paths made absolute on the host and,
    for the local backend, supervisor_url pointing at the host's supervisord."""
    defaults = Settings()
    chosen = {field.name: getattr(settings, field.name)
              for field in dataclasses.fields(Settings)
              if getattr(settings, field.name) != getattr(defaults, field.name)}
    chosen["data_dir"] = str(layout.resolve(settings.data_dir))
    if settings.file_roots:
        chosen["file_roots"] = tuple(str(layout.resolve(root)) for root in settings.file_roots)
    if settings.backend == "local":
        chosen["supervisor_url"] = f"unix://{layout.socket}"
    order = [field.name for field in dataclasses.fields(Settings)]
    return {key: chosen[key] for key in order if key in chosen}


def render_nomconf(settings: Settings, layout: FeederLayout) -> str:
    """The feeder host's nomconf.toml."""
    lines = [f"{key} = {toml_value(key, value)}"
             for key, value in host_settings(settings, layout).items()]
    return template("nomconf.toml").substitute(settings="\n".join(lines))


def render_feeder_supervisord(settings: Settings, layout: FeederLayout,
                              run_as: str | None) -> str:
    """The feeder host's supervisord.conf: api, scheduler and scaler, plus the
    nommerd slots when the backend is "local" (on "aws" encoders are EC2
    instances). `run_as`: the user supervisord drops to after it starts as
    root, or None to stay the user that starts it."""
    common = {"python": layout.python, "nomconf": layout.nomconf, "log_dir": layout.log_dir,
              **_LOGS}
    encoder_programs, encoder_note = "", "Encoders are EC2 instances (backend \"aws\")."
    if settings.backend == "local":
        encoder_note = "Encoders are the `nommerd` slots (backend \"local\")."
        encoder_programs = template("feeder-nommerd.conf").substitute(
            common, stop_grace_s=LOCAL_ENCODER_STOP_GRACE_S,
            stopwaitsecs=stopwaitsecs(LOCAL_ENCODER_STOP_GRACE_S),
            # numprocs must be at least 1; the scaler never starts more
            # slots than max_num_ec2_instances anyway.
            numprocs=max(1, settings.max_num_ec2_instances))
    return template("feeder-supervisord.conf").substitute(
        common,
        encoder_note=encoder_note,
        encoder_programs=encoder_programs,
        supervisorctl=layout.supervisorctl,
        run_dir=layout.run_dir,
        prefix=layout.prefix,
        socket_owner=f"chown={run_as}\n" if run_as else "",
        supervisord_user=f"user={run_as}\n" if run_as else "",
    )


def feeder_unit_stop_s(settings: Settings) -> int:
    slowest = FEEDER_STOPWAITSECS
    if settings.backend == "local":
        slowest = max(slowest, stopwaitsecs(LOCAL_ENCODER_STOP_GRACE_S))
    return slowest + UNIT_STOP_MARGIN_S


def render_feeder_unit(settings: Settings, layout: FeederLayout) -> str:
    """The systemd unit that runs the feeder host's supervisord at boot."""
    return template("supervisord.service").substitute(
        description="media-nommer feeder (supervisord running api, scheduler, scaler)",
        written_by="fab deploy",
        run_dir=layout.run_dir,
        venv=layout.current / "venv",
        supervisord_conf=layout.supervisord_conf,
        timeout_stop_s=feeder_unit_stop_s(settings),
        exec_start_post="",
    )


def render_encoder_supervisord(layout: EncoderLayout) -> str:
    """The encoder AMI's supervisord.conf with its `nommerd` program."""
    return template("encoder-supervisord.conf").substitute(
        _LOGS,
        nomconf=layout.nomconf,
        bin_dir=layout.bin_dir,
        run_dir=layout.run_dir,
        log_dir=layout.log_dir,
        data_dir=layout.data_dir,
        venv=layout.venv,
        user=layout.user,
        unit_name=layout.unit_name,
        stop_grace_s=ENCODER_STOP_GRACE_S,
        stopwaitsecs=stopwaitsecs(ENCODER_STOP_GRACE_S),
    )


def render_encoder_unit(layout: EncoderLayout) -> str:
    """The systemd unit that runs the encoder's supervisord at boot."""
    return template("supervisord.service").substitute(
        description="media-nommer encoder (supervisord running nommerd)",
        written_by="packer/scripts/install-encoder.sh",
        run_dir=layout.run_dir,
        venv=layout.venv,
        supervisord_conf=layout.supervisord_conf,
        timeout_stop_s=stopwaitsecs(ENCODER_STOP_GRACE_S) + UNIT_STOP_MARGIN_S,
        exec_start_post=f"ExecStartPost={layout.boot_start}\n",
    )


def render_boot_start(layout: EncoderLayout) -> str:
    """The script that starts nommerd at boot once its settings are there."""
    return template("start-nommerd.sh").substitute(
        unit_name=layout.unit_name, nomconf=layout.nomconf,
        supervisorctl=layout.supervisorctl_wrapper, wait_s=BOOT_START_WAIT_S)


def render_host_keys_unit() -> str:
    return template("ssh-host-keys.service").template


def render_supervisorctl_wrapper(layout: EncoderLayout) -> str:
    """/usr/local/bin/supervisorctl on the encoder: the venv's supervisorctl
    with the encoder's config, so the user data's bare `supervisorctl` (run
    by cloud-init as root, with a minimal PATH) reaches the right supervisord."""
    return ("#!/bin/sh\n"
            "# media-nommer encoder: supervisorctl with the encoder's configuration.\n"
            f'exec {layout.venv}/bin/supervisorctl -c {layout.supervisord_conf} "$@"\n')
