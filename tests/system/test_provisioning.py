"""Provisioning for real: `fab deploy` over SSH to an sshd of the test's own
on 127.0.0.1, into a temporary prefix; and the encoder AMI's install script
run into a temporary folder, its supervisord started and its `nommerd`
program started the way an instance's user data starts it.

The wheelhouse is built once (pip's cache makes it quick) and shared.
Everything started here is stopped by its pid at teardown.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from core.fleets.ec2 import encoder_user_data
from core.settings import Settings
from nommerd.daemon import RELEASE_WAIT_S
from core.errors import ConfigError
from core.app.local_system import wait_for
from provisioning.hostcheck import check_supervisord
from provisioning.layout import ENCODER_STOP_GRACE_S, EncoderLayout, FeederLayout
from provisioning.render import render_encoder_supervisord, render_feeder_supervisord
from provisioning.wheelhouse import PROBE_CODE, Target, build_wheelhouse, release_id
from tests.fixtures.sshd import TestSshd, find_sshd, free_port

pytestmark = pytest.mark.timeout(300)

PROJECT_DIR = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = PROJECT_DIR / "packer" / "scripts" / "install-encoder.sh"
FAB = Path(sys.executable).parent / "fab"
# The interpreter this virtualenv was made from: a Python with venv.
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)
FEEDER_PROGRAMS = ("api", "scheduler", "scaler")
STOP_TIMEOUT_S = 90.0

needs_sshd = pytest.mark.skipif(find_sshd() is None,
                                reason="sshd is not installed (.ci/run installs openssh-server)")


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory) -> Path:
    answer = subprocess.run([BASE_PYTHON, "-c", PROBE_CODE], capture_output=True, text=True,
                            check=True, timeout=60)
    target = Target.from_probe(json.loads(answer.stdout))
    return build_wheelhouse(tmp_path_factory.mktemp("wheelhouse"), target)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        # A zombie is dead; nobody may be reaping it in a container.
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _wait_gone(pids, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    left = [pid for pid in pids if _alive(pid)]
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [pid for pid in left if _alive(pid)]
    return left


def _stop_by_pid(main_pid: int, child_pids) -> None:
    """SIGTERM to a supervisord; wait for it and its programs; SIGKILL what
    is left after STOP_TIMEOUT_S."""
    if _alive(main_pid):
        os.kill(main_pid, signal.SIGTERM)
    for pid in _wait_gone([main_pid, *child_pids], STOP_TIMEOUT_S):
        os.kill(pid, signal.SIGKILL)


def _program_pids(status_output: str) -> dict[str, int]:
    return {match.group(1): int(match.group(2))
            for match in re.finditer(r"^(\S+)\s+RUNNING\s+pid (\d+)", status_output, re.M)}


def _get_json(url: str) -> tuple[int, dict]:
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=5) as r:
        return r.status, json.load(r)


class Feeder:
    """The feeder host under test: `fab` run against the test sshd, the
    deployed files under `prefix`, the API on `api_port`."""

    def __init__(self, sshd: TestSshd, workdir: Path, wheelhouse: Path):
        self.sshd = sshd
        self.workdir = workdir
        self.wheelhouse = wheelhouse
        self.prefix = workdir / "prefix"
        self.home = workdir / "home"
        self.home.mkdir()
        self.api_port = free_port()
        self.settings_file = self.write_settings("nomconf.toml")

    def write_settings(self, name: str, extra: str = "") -> Path:
        path = self.workdir / name
        path.write_text(f'api_port = {self.api_port}\n'
                        f'data_dir = "{self.workdir / "data"}"\n'
                        'max_num_ec2_instances = 1\n' + extra)
        return path

    def fab(self, *arguments: str, timeout_s: float = 240) -> subprocess.CompletedProcess:
        # A home of its own: no ~/.ssh/known_hosts, ~/.ssh/config or
        # ~/.fabric.yml of this machine; no NOMMER_* settings either.
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("NOMMER_", "MEDIA_NOMMER_"))}
        env["HOME"] = str(self.home)
        command = [str(FAB), "-H", self.sshd.destination, "-i", str(self.sshd.client_key),
                   "-S", str(self.sshd.ssh_config), *arguments]
        return subprocess.run(command, cwd=PROJECT_DIR, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout_s)

    def deploy(self, settings_file: Path | None = None, health_timeout_s: int = 30):
        return self.fab("deploy", "--prefix", str(self.prefix),
                        "--config", str(settings_file or self.settings_file),
                        "--wheelhouse", str(self.wheelhouse), "--python", BASE_PYTHON,
                        "--run-as", self.sshd.user, "--systemd", "no",
                        "--health-timeout", str(health_timeout_s))

    def supervisorctl(self, *arguments: str) -> str:
        command = [str(self.prefix / "current/venv/bin/supervisorctl"),
                   "-c", str(self.prefix / "etc/supervisord.conf"), *arguments]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        return done.stdout

    def pids(self) -> dict[str, int]:
        return _program_pids(self.supervisorctl("status"))

    def health(self) -> tuple[int, dict]:
        return _get_json(f"http://127.0.0.1:{self.api_port}/health")

    def current(self) -> str:
        return os.readlink(self.prefix / "current")

    def stop(self) -> None:
        pidfile = self.prefix / "run" / "supervisord.pid"
        if not pidfile.exists():
            return
        children = self.pids().values() if (self.prefix / "current").exists() else []
        _stop_by_pid(int(pidfile.read_text().strip()), list(children))


@pytest.fixture(scope="module")
def feeder(tmp_path_factory, wheelhouse):
    """A feeder host deployed once for this module's tests; its supervisord
    and the sshd are stopped at the end."""
    if os.name != "posix":
        pytest.skip("needs a POSIX host")
    workdir = tmp_path_factory.mktemp("feeder")
    sshd = TestSshd(workdir / "ssh")
    host = Feeder(sshd, workdir, wheelhouse)
    try:
        host.first_deploy = host.deploy()
        yield host
    finally:
        try:
            host.stop()
        finally:
            sshd.stop()


@needs_sshd
def test_deploy_runs_api_scheduler_and_scaler_and_the_api_is_healthy(feeder, wheelhouse):
    result = feeder.first_deploy
    assert result.returncode == 0, result.stderr + result.stdout
    assert "started supervisord" in result.stdout
    status = feeder.supervisorctl("status")
    for program in FEEDER_PROGRAMS:
        assert re.search(rf"^{program}\s+RUNNING", status, re.M), status
    # backend "local": the encoder slots exist, stopped until the scaler needs them.
    assert re.search(r"^nommerd:nommerd_00\s+STOPPED", status, re.M), status
    assert feeder.health() == (200, {"success": True, "status": "ok", "queued": 0,
                                     "in_flight": 0})
    assert feeder.current() == f"releases/{release_id(wheelhouse)}"
    nomconf = (feeder.prefix / "etc" / "nomconf.toml").read_text()
    assert f"api_port = {feeder.api_port}" in nomconf
    assert f'supervisor_url = "unix://{feeder.prefix}/run/supervisor.sock"' in nomconf


@needs_sshd
def test_second_deploy_changes_nothing_and_restarts_nothing(feeder):
    before = feeder.pids()
    current = feeder.current()
    etc = feeder.prefix / "etc"
    files_before = {path.name: path.stat().st_mtime_ns for path in etc.iterdir()}
    result = feeder.deploy()
    assert result.returncode == 0, result.stderr + result.stdout
    assert "nothing changed" in result.stdout
    assert feeder.pids() == before
    assert set(before) >= set(FEEDER_PROGRAMS)
    assert feeder.current() == current
    assert {path.name: path.stat().st_mtime_ns for path in etc.iterdir()} == files_before
    assert [path.name for path in (feeder.prefix / "releases").iterdir()] == [current.split("/")[1]]


@needs_sshd
def test_status_reports_the_processes_and_health(feeder):
    result = feeder.fab("status", "--prefix", str(feeder.prefix))
    assert result.returncode == 0, result.stderr
    for program, pid in feeder.pids().items():
        assert re.search(rf"^{re.escape(program)}\s+RUNNING\s+pid {pid}\b", result.stdout, re.M)
    assert '/health: {"success": true' in result.stdout
    assert f"-> releases/{feeder.current().split('/')[1]}" in result.stdout


@needs_sshd
def test_logs_show_the_end_of_the_api_log(feeder):
    result = feeder.fab("logs", "--prefix", str(feeder.prefix), "--program", "api",
                        "--lines", "200")
    assert result.returncode == 0, result.stderr
    assert f"listening on http://127.0.0.1:{feeder.api_port}" in result.stdout


@needs_sshd
def test_restart_restarts_the_feeder_programs(feeder):
    before = feeder.pids()
    result = feeder.fab("restart", "--prefix", str(feeder.prefix))
    assert result.returncode == 0, result.stderr
    after = feeder.pids()
    for program in FEEDER_PROGRAMS:
        assert after[program] != before[program]
    assert feeder.health()[0] == 200


@needs_sshd
def test_deploy_with_bad_settings_fails_before_touching_the_host(feeder):
    nomconf = (feeder.prefix / "etc" / "nomconf.toml").read_text()
    bad = feeder.write_settings("unknown-key.toml", "no_such_setting = 1\n")
    result = feeder.deploy(bad)
    assert result.returncode == 1
    assert "unknown setting 'no_such_setting'" in result.stderr
    assert (feeder.prefix / "etc" / "nomconf.toml").read_text() == nomconf


@needs_sshd
def test_deploy_whose_api_cannot_start_fails_loudly_and_keeps_the_previous_running(feeder):
    etc = feeder.prefix / "etc"
    previous = {path.name: path.read_text() for path in etc.iterdir()}
    current = feeder.current()
    # Valid settings, but the API refuses to listen beyond loopback without a token.
    bad = feeder.write_settings("exposed.toml", 'api_host = "0.0.0.0"\n')
    result = feeder.deploy(bad, health_timeout_s=8)
    assert result.returncode == 1
    assert "is not healthy" in result.stderr
    assert "refusing to listen on 0.0.0.0" in result.stderr  # the API's log, quoted
    assert "put back the previous release" in result.stderr
    assert "the API is healthy" in result.stderr
    assert {path.name: path.read_text() for path in etc.iterdir()} == previous
    assert feeder.current() == current
    assert feeder.health()[0] == 200
    assert set(feeder.pids()) >= set(FEEDER_PROGRAMS)


# --- what deploy renders -------------------------------------------------

def _parse_rendered(tmp_path: Path, settings: Settings, run_as: str | None) -> str:
    layout = FeederLayout.at(str(tmp_path / "prefix"))
    for folder in ("log", "run"):  # supervisord insists that its folders exist
        (tmp_path / "prefix" / folder).mkdir(parents=True)
    text = render_feeder_supervisord(settings, layout, run_as)
    conf = tmp_path / "supervisord.conf"
    conf.write_text(text)
    check_supervisord(str(conf))  # supervisord's own parser
    return text


def test_feeder_on_aws_runs_no_local_encoder_slots(tmp_path):
    text = _parse_rendered(tmp_path, Settings(backend="aws"), None)
    programs = re.findall(r"^\[program:(\w+)\]", text, re.M)
    assert programs == list(FEEDER_PROGRAMS)


def test_feeder_on_local_backend_has_one_slot_per_encoder(tmp_path):
    text = _parse_rendered(tmp_path, Settings(max_num_ec2_instances=4), None)
    assert re.findall(r"^\[program:(\w+)\]", text, re.M) == [*FEEDER_PROGRAMS, "nommerd"]
    assert "numprocs=4" in text and "autostart=false" in text


def test_supervisord_config_for_a_missing_user_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no-such-user-here"):
        _parse_rendered(tmp_path, Settings(), "no-such-user-here")


# --- the encoder AMI's install script ------------------------------------

def _encoder_environment(root: Path, wheelhouse: Path | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ENCODER_")}
    env.update({
        "ENCODER_SKIP_SYSTEM": "1",
        "ENCODER_PREFIX": str(root / "opt"),
        "ENCODER_ETC_DIR": str(root / "etc"),
        "ENCODER_DATA_DIR": str(root / "data"),
        "ENCODER_LOG_DIR": str(root / "log"),
        "ENCODER_RUN_DIR": str(root / "run"),
        "ENCODER_BIN_DIR": str(root / "bin"),
        "ENCODER_SYSTEMD_DIR": str(root / "systemd"),
        "ENCODER_PYTHON": BASE_PYTHON,
    })
    if wheelhouse is not None:
        env["ENCODER_WHEELHOUSE"] = str(wheelhouse)
    return env


def test_user_data_writes_the_settings_where_the_ami_nommerd_reads_them():
    user_data = encoder_user_data(Settings(backend="aws", ec2_ami_id="ami-1"))
    document = json.loads(user_data.split("\n", 1)[1])
    written = document["write_files"][0]["path"]
    ami_config = render_encoder_supervisord(EncoderLayout())
    assert f'NOMMER_CONFIG="{written}"' in ami_config
    assert document["runcmd"][0][:2] == ["sh", "-c"]
    assert 'supervisorctl start "nommerd:*"' in document["runcmd"][0][2]


def test_encoder_install_script_needs_a_wheelhouse(tmp_path):
    done = subprocess.run(["bash", str(INSTALL_SCRIPT)], env=_encoder_environment(tmp_path, None),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "ENCODER_WHEELHOUSE" in done.stderr


def test_encoder_install_script_installs_nommerd_that_the_user_data_starts(tmp_path, wheelhouse):
    env = _encoder_environment(tmp_path, wheelhouse)
    done = subprocess.run(["bash", str(INSTALL_SCRIPT)], env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr + done.stdout
    conf = (tmp_path / "etc" / "supervisord.conf").read_text()
    assert f'NOMMER_CONFIG="{tmp_path / "etc" / "nomconf.toml"}"' in conf
    assert "autostart=false" in conf and "stopsignal=TERM" in conf
    stopwait = int(re.search(r"^stopwaitsecs=(\d+)", conf, re.M).group(1))
    assert stopwait > ENCODER_STOP_GRACE_S + RELEASE_WAIT_S
    assert f"--stop-grace-s {ENCODER_STOP_GRACE_S}" in conf
    assert (tmp_path / "systemd" / "media-nommer-encoder.service").exists()

    # Boot: systemd's part (supervisord in the foreground), then the user
    # data's: the settings file, then its exact start command.
    supervisord = subprocess.Popen(
        [str(tmp_path / "opt/venv/bin/supervisord"), "--configuration",
         str(tmp_path / "etc/supervisord.conf")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ctl = [str(tmp_path / "bin" / "supervisorctl")]
    try:
        wait_for(lambda: subprocess.run(ctl + ["pid"], capture_output=True, text=True,
                                         timeout=30).stdout.strip().isdigit(),
                  30, "the encoder's supervisord")
        assert "STOPPED" in subprocess.run(ctl + ["status"], capture_output=True, text=True,
                                           timeout=30).stdout
        (tmp_path / "etc" / "nomconf.toml").write_text(
            'backend = "local"\nmax_encoding_jobs_per_ec2_instance = 2\n')
        runcmd = json.loads(encoder_user_data(Settings(backend="aws")).split("\n", 1)[1])["runcmd"]
        path = f"{tmp_path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
        started = subprocess.run(runcmd[0], env=dict(os.environ, PATH=path),
                                 capture_output=True, text=True, timeout=150)
        assert started.returncode == 0, started.stdout + started.stderr
        status = subprocess.run(ctl + ["status"], capture_output=True, text=True, timeout=30).stdout
        assert re.search(r"^nommerd:nommerd_00\s+RUNNING", status, re.M), status
        log = tmp_path / "log" / "nommerd.log"
        wait_for(lambda: log.exists() and "starting 2 worker(s)" in log.read_text(), 30,
                  "nommerd to start its two workers")
        nommerd_pid = _program_pids(status)["nommerd:nommerd_00"]
    finally:
        _stop_by_pid(supervisord.pid, [])
        supervisord.wait(timeout=STOP_TIMEOUT_S)
    assert not _alive(nommerd_pid)
    assert "stopped" in log.read_text()  # nommerd's own last words after SIGTERM
