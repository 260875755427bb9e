"""Where things live: on a feeder host (under one prefix, with releases) and
on an encoder instance (the AMI's fixed paths).

Paths are PurePosixPath: they name files on another machine, whatever the
machine that deploys from.
"""
from __future__ import annotations

import dataclasses
from pathlib import PurePosixPath

from core.fleets.ec2 import NOMCONF_PATH

DEFAULT_PREFIX = "/opt/media-nommer"
# The environment variable that overrides DEFAULT_PREFIX for the fab tasks.
# Not NOMMER_*: those are settings, and an unknown one stops start-up.
PREFIX_ENV = "MEDIA_NOMMER_PREFIX"
# Releases kept on a feeder host: the current one, the one a rollback goes
# back to, and one more.
KEEP_RELEASES = 3

# The feeder's programs; the local backend adds the `nommerd` slots.
FEEDER_PROGRAMS = ("api", "scheduler", "scaler")

# Encoder stop timing. nommerd gets this long after SIGTERM to finish a job
# that is about to end before it gives the job back (nommerd --stop-grace-s).
ENCODER_STOP_GRACE_S = 60
# Local encoder slots on a feeder host stop as the project's supervisord.conf.
LOCAL_ENCODER_STOP_GRACE_S = 20
# What supervisord waits beyond the grace and nommerd's own release wait
# (nommerd.daemon.RELEASE_WAIT_S) before it sends SIGKILL.
STOP_MARGIN_S = 5


@dataclasses.dataclass(frozen=True)
class FeederLayout:
    """A feeder host's files under `prefix`:

        releases/<id>/venv   one virtualenv per release (never moved: venvs
                             are not relocatable)
        current -> releases/<id>
        etc/                 nomconf.toml, supervisord.conf
        var/                 the default data_dir (SQLite, media)
        run/                 supervisord's socket and pid file
        log/                 supervisord's and the programs' logs
        deployed.json        the release and files last seen healthy

    and beside the prefix, <prefix>.lock while a deploy or rollback runs.
    """

    prefix: PurePosixPath

    @classmethod
    def at(cls, prefix: str) -> "FeederLayout":
        path = PurePosixPath(prefix)
        if not path.is_absolute():
            raise ValueError(f"prefix {prefix!r} is not an absolute path")
        return cls(path)

    @property
    def releases(self) -> PurePosixPath:
        return self.prefix / "releases"

    def release(self, release_id: str) -> PurePosixPath:
        return self.releases / release_id

    @property
    def current(self) -> PurePosixPath:
        return self.prefix / "current"

    @property
    def etc_dir(self) -> PurePosixPath:
        return self.prefix / "etc"

    @property
    def nomconf(self) -> PurePosixPath:
        return self.etc_dir / "nomconf.toml"

    @property
    def supervisord_conf(self) -> PurePosixPath:
        return self.etc_dir / "supervisord.conf"

    @property
    def data_dir(self) -> PurePosixPath:
        return self.prefix / "var"

    @property
    def run_dir(self) -> PurePosixPath:
        return self.prefix / "run"

    @property
    def log_dir(self) -> PurePosixPath:
        return self.prefix / "log"

    @property
    def marker(self) -> PurePosixPath:
        return self.prefix / "deployed.json"

    @property
    def lock(self) -> PurePosixPath:
        """Beside the prefix, not in it: a failed first deploy removes the
        prefix while it still holds the lock."""
        return self.prefix.with_name(self.prefix.name + ".lock")

    @property
    def socket(self) -> PurePosixPath:
        return self.run_dir / "supervisor.sock"

    @property
    def pidfile(self) -> PurePosixPath:
        return self.run_dir / "supervisord.pid"

    @property
    def python(self) -> PurePosixPath:
        """The interpreter of the current release (through the link)."""
        return self.current / "venv" / "bin" / "python"

    @property
    def supervisorctl(self) -> str:
        return f"{self.current}/venv/bin/supervisorctl -c {self.supervisord_conf}"

    def resolve(self, path: str) -> PurePosixPath:
        """`path` from the settings as the host sees it: relative paths are
        taken from the prefix, where the programs run."""
        given = PurePosixPath(path)
        return given if given.is_absolute() else self.prefix / given


@dataclasses.dataclass(frozen=True)
class EncoderLayout:
    """An encoder instance's files. The defaults are the AMI's; the install
    script may move every one of them (into a temporary folder, in tests).

    `etc_dir` defaults to the folder of core.fleets.ec2.NOMCONF_PATH: the
    user data writes the settings file there and the nommerd program reads
    it from there, so both sides name the same file by construction.
    """

    prefix: PurePosixPath = PurePosixPath(DEFAULT_PREFIX)
    etc_dir: PurePosixPath = PurePosixPath(NOMCONF_PATH).parent
    data_dir: PurePosixPath = PurePosixPath("/var/lib/media-nommer")
    log_dir: PurePosixPath = PurePosixPath("/var/log/media-nommer")
    run_dir: PurePosixPath = PurePosixPath("/run/media-nommer")
    bin_dir: PurePosixPath = PurePosixPath("/usr/local/bin")
    systemd_dir: PurePosixPath = PurePosixPath("/etc/systemd/system")
    user: str = "nommer"

    @property
    def venv(self) -> PurePosixPath:
        return self.prefix / "venv"

    @property
    def nomconf(self) -> PurePosixPath:
        return self.etc_dir / PurePosixPath(NOMCONF_PATH).name

    @property
    def supervisord_conf(self) -> PurePosixPath:
        return self.etc_dir / "supervisord.conf"

    @property
    def supervisorctl_wrapper(self) -> PurePosixPath:
        return self.bin_dir / "supervisorctl"

    @property
    def boot_start(self) -> PurePosixPath:
        return self.bin_dir / "media-nommer-start-nommerd"

    @property
    def host_keys_unit_path(self) -> PurePosixPath:
        return self.systemd_dir / "media-nommer-ssh-host-keys.service"

    @property
    def unit_name(self) -> str:
        return "media-nommer-encoder.service"

    @property
    def unit_path(self) -> PurePosixPath:
        return self.systemd_dir / self.unit_name
