"""Provisioning for real: `fab deploy` over SSH to an sshd of the test's own
on 127.0.0.1, logged in as a user made for the test with passwordless sudo
(as on a stock Debian EC2 image), into a prefix of its own, with the
programs dropped to a service user made for the test as well. This machine
has no systemd, so supervisord runs as a daemon of its own (`--systemd
auto` finds that out); everything else is what a real host gets.

Releases: wheelhouse A (built once per test run), B (the same with another
project version) and a broken one whose scheduler exits at start. The
module's tests share one host and run in order: first deploy, repeat,
status, switch to B, rollback, a cut-off deploy, pruning, the lock, failed
deploys; a second prefix takes a failed first deploy. Everything started
here is stopped by its pid at teardown; the users are removed.
"""
from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.settings import Settings
from provisioning.hostcheck import check_supervisord
from provisioning.layout import EncoderLayout, FeederLayout
from provisioning.render import render_encoder_supervisord, render_feeder_supervisord
from provisioning.wheelhouse import release_id
from tests.fixtures.deploy import (host_wheelhouse, HOST_PYTHON, FEEDER_PROGRAMS, Feeder,
                                   broken_scheduler_wheelhouse, owner_of, variant_wheelhouse,
                                   wait_gone)
from tests.fixtures.processes import live_processes
from tests.fixtures.sshd import SudoUser, TestSshd, find_sshd, free_port, unique_name

pytestmark = pytest.mark.timeout(300)

needs_root_sshd = pytest.mark.skipif(
    find_sshd() is None or shutil.which("sudo") is None or os.geteuid() != 0,
    reason="needs root, sshd and sudo (.ci/run installs openssh-server and sudo)")


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory) -> Path:
    return host_wheelhouse(tmp_path_factory.mktemp("wheelhouse"), HOST_PYTHON)


@pytest.fixture(scope="session")
def wheelhouse_b(tmp_path_factory, wheelhouse) -> Path:
    return variant_wheelhouse(wheelhouse, tmp_path_factory.mktemp("b") / "wheels", "0.1.0.post1")


@pytest.fixture(scope="session")
def broken_wheelhouse(tmp_path_factory, wheelhouse) -> Path:
    return broken_scheduler_wheelhouse(wheelhouse, tmp_path_factory.mktemp("broken") / "wheels")


@pytest.fixture(scope="module")
def host_root():
    """A folder every user may enter (pytest's own are root's alone): the
    sshd's keys, the prefixes. Removed with the users at the end."""
    root = Path(tempfile.mkdtemp(prefix="media-nommer-host-"))
    root.chmod(0o755)
    operator = SudoUser(unique_name("mn-admin"))
    sshd = None
    try:
        sshd = TestSshd(root / "ssh", user=operator.name)
        yield root, sshd
    finally:
        if sshd is not None:
            sshd.stop()
        operator.remove()
        shutil.rmtree(root, ignore_errors=True)


def processes_under(prefix: Path) -> list[int]:
    """Live processes whose command line names a path under `prefix`."""
    found = []
    for pid, _, _ in live_processes():
        try:
            if str(prefix).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            pass
    return found


def _remove_user(name: str) -> None:
    subprocess.run(["userdel", name], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def feeder(host_root, wheelhouse):
    """A feeder host deployed once with release A, as the sudo user, for
    this module's tests; its supervisord and service user go at the end."""
    root, sshd = host_root
    host = Feeder(sshd, root / "operator", root / "opt" / "media-nommer",
                  unique_name("mn-svc"), free_port())
    try:
        host.first_deploy = host.deploy(wheelhouse, None, 45, "--accept-new-host-key")
        yield host
    finally:
        try:
            host.stop()
        finally:
            _remove_user(host.service_user)


def _running(feeder: Feeder) -> None:
    status = feeder.supervisorctl("status")
    for program in FEEDER_PROGRAMS:
        assert re.search(rf"^{program}\s+RUNNING", status, re.M), status
    assert feeder.health()[0] == 200


@needs_root_sshd
def test_first_deploy_as_a_sudo_user_runs_every_program_as_the_service_user(feeder, wheelhouse):
    result = feeder.first_deploy
    assert result.returncode == 0, result.stderr + result.stdout
    assert feeder.sshd.user != "root"
    assert "started supervisord" in result.stdout
    _running(feeder)
    status = feeder.supervisorctl("status")
    # backend "local": the encoder slots exist, stopped until the scaler needs them.
    assert re.search(r"^nommerd:nommerd_00\s+STOPPED", status, re.M), status
    assert feeder.health() == (200, {"success": True, "status": "ok", "queued": 0,
                                     "in_flight": 0})
    assert feeder.current() == f"releases/{release_id(wheelhouse)}"
    for program, pid in feeder.pids().items():
        assert owner_of(pid) == feeder.service_user, program
    assert owner_of(feeder.supervisord_pid()) == feeder.service_user
    nomconf = feeder.prefix / "etc" / "nomconf.toml"
    assert f"api_port = {feeder.api_port}" in nomconf.read_text()
    # It may hold api_token: root and the service user's group read it, no one else.
    info = nomconf.stat()
    assert stat.S_IMODE(info.st_mode) == 0o640
    assert info.st_gid == pwd.getpwnam(feeder.service_user).pw_gid
    deployed = json.loads((feeder.prefix / "deployed.json").read_text())
    assert deployed["release"] == release_id(wheelhouse) and deployed["previous"] is None


@needs_root_sshd
def test_a_host_whose_key_is_unknown_is_refused_without_accept_new_host_key(feeder, tmp_path):
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    result = feeder.on_host("status", home=stranger)
    assert result.returncode == 1
    assert "is not in known_hosts" in result.stderr
    assert "--accept-new-host-key" in result.stderr
    # The operator's first contact recorded the key; a changed one is refused.
    known = (feeder.home / ".ssh" / "known_hosts").read_text()
    assert feeder.sshd.host_public_key in known
    other = tmp_path / "other"
    (other / ".ssh").mkdir(parents=True)
    (other / ".ssh" / "known_hosts").write_text(
        known.replace(feeder.sshd.host_public_key.split()[1],
                      "AAAAC3NzaC1lZDI1NTE5AAAAIOeLtvB2tGgN5pS3kdm5V+XnSuzvXgTbVqB9r4pKJYhc"))
    result = feeder.on_host("status", "--accept-new-host-key", home=other)
    assert result.returncode == 1
    assert "does not match" in result.stderr and "RUNNING" not in result.stdout


@needs_root_sshd
def test_second_deploy_changes_nothing_and_restarts_nothing(feeder, wheelhouse):
    before = feeder.pids()
    current = feeder.current()
    etc = feeder.prefix / "etc"
    files_before = {path.name: path.stat().st_mtime_ns for path in etc.iterdir()}
    result = feeder.deploy(wheelhouse)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "nothing changed" in result.stdout
    assert feeder.pids() == before
    assert set(before) >= set(FEEDER_PROGRAMS)
    assert feeder.current() == current
    assert {path.name: path.stat().st_mtime_ns for path in etc.iterdir()} == files_before


@needs_root_sshd
def test_status_reports_the_processes_and_health(feeder):
    result = feeder.on_host("status")
    assert result.returncode == 0, result.stderr
    for program, pid in feeder.pids().items():
        assert re.search(rf"^{re.escape(program)}\s+RUNNING\s+pid {pid}\b", result.stdout, re.M)
    assert '/health: {"success": true' in result.stdout
    assert f"-> releases/{feeder.current().split('/')[1]}" in result.stdout


@needs_root_sshd
def test_status_fails_while_a_program_is_not_running(feeder):
    feeder.supervisorctl("stop", "scheduler")
    try:
        result = feeder.on_host("status")
        assert result.returncode == 1
        assert "scheduler STOPPED" in result.stderr
    finally:
        feeder.supervisorctl("start", "scheduler")
    assert feeder.on_host("status").returncode == 0


@needs_root_sshd
def test_logs_show_the_end_of_the_api_log(feeder):
    result = feeder.on_host("logs", "--program", "api", "--lines", "200")
    assert result.returncode == 0, result.stderr
    assert f"listening on http://127.0.0.1:{feeder.api_port}" in result.stdout


@needs_root_sshd
def test_restart_restarts_the_feeder_programs(feeder):
    before = feeder.pids()
    result = feeder.on_host("restart")
    assert result.returncode == 0, result.stderr
    after = feeder.pids()
    for program in FEEDER_PROGRAMS:
        assert after[program] != before[program]
    assert feeder.health()[0] == 200


@needs_root_sshd
def test_release_whose_scheduler_exits_at_start_fails_and_the_previous_runs_on(
        feeder, broken_wheelhouse, wheelhouse):
    current = feeder.current()
    result = feeder.deploy(broken_wheelhouse)
    assert result.returncode == 1, result.stdout
    assert re.search(r"scheduler (FATAL|BACKOFF|EXITED|STARTING)", result.stderr), result.stderr
    assert "scheduler exits at start" in result.stderr  # the scheduler's log, quoted
    assert "put back the last healthy release" in result.stderr
    assert "they run and are healthy" in result.stderr
    assert feeder.current() == current
    _running(feeder)
    assert json.loads((feeder.prefix / "deployed.json").read_text())["release"] == \
        release_id(wheelhouse)


@needs_root_sshd
def test_a_new_release_replaces_the_running_one_and_rollback_brings_back_the_previous(
        feeder, wheelhouse, wheelhouse_b):
    a, b = release_id(wheelhouse), release_id(wheelhouse_b)
    assert a != b
    before = feeder.pids()
    result = feeder.deploy(wheelhouse_b)
    assert result.returncode == 0, result.stderr + result.stdout
    assert feeder.current() == f"releases/{b}"
    assert all(feeder.pids()[name] != before[name] for name in FEEDER_PROGRAMS)
    _running(feeder)
    listed = feeder.on_host("releases")
    assert listed.returncode == 0, listed.stderr
    assert re.search(rf"^{re.escape(b)}\s+\(current, healthy when deployed\)", listed.stdout, re.M)
    assert re.search(rf"^{re.escape(a)}\s+\(previous", listed.stdout, re.M), listed.stdout

    middle = feeder.pids()
    result = feeder.on_host("rollback")
    assert result.returncode == 0, result.stderr + result.stdout
    assert f"rolled back from {b} to {a}" in result.stdout
    assert feeder.current() == f"releases/{a}"
    assert all(feeder.pids()[name] != middle[name] for name in FEEDER_PROGRAMS)
    _running(feeder)
    assert owner_of(feeder.pids()["api"]) == feeder.service_user
    # The API runs release A's code again: its venv, not B's.
    api = feeder.pids()["api"]
    assert Path(f"/proc/{api}/cmdline").read_bytes().split(b"\0")[0].decode().startswith(
        str(feeder.prefix / "current"))
    marker = json.loads((feeder.prefix / "deployed.json").read_text())
    assert (marker["release"], marker["previous"]) == (a, b)


@needs_root_sshd
def test_a_deploy_cut_off_after_the_switch_is_redone_by_the_next(feeder, wheelhouse_b):
    b = release_id(wheelhouse_b)
    # Cut off: `current` switched to B, nothing restarted: A's code runs.
    link = feeder.prefix / "current.new"
    os.symlink(f"releases/{b}", link)
    os.replace(link, feeder.prefix / "current")
    before = feeder.pids()
    result = feeder.deploy(wheelhouse_b)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "nothing changed" not in result.stdout
    assert "differing from its last healthy deploy" in result.stdout
    assert all(feeder.pids()[name] != before[name] for name in FEEDER_PROGRAMS)
    assert json.loads((feeder.prefix / "deployed.json").read_text())["release"] == b


@needs_root_sshd
def test_old_releases_are_pruned_but_never_the_current_or_previous(feeder, wheelhouse,
                                                                   wheelhouse_b):
    releases = feeder.prefix / "releases"
    stale = releases / "0.0.1-000000000000"
    stale.mkdir()
    (stale / ".installed").touch()
    os.utime(stale / ".installed", (1, 1))
    half = releases / "0.0.2-111111111111"  # an install that was cut off
    half.mkdir()
    result = feeder.deploy(wheelhouse, None, 45, "--keep-releases", "1")
    assert result.returncode == 0, result.stderr + result.stdout
    assert sorted(path.name for path in releases.iterdir()) == \
        sorted([release_id(wheelhouse), release_id(wheelhouse_b)])
    _running(feeder)


@needs_root_sshd
def test_a_deploy_waits_for_no_one_while_another_holds_the_lock(feeder, wheelhouse_b):
    lock = feeder.prefix.with_name("media-nommer.lock")
    lock.mkdir()
    (lock / "owner").write_text("deploy of something by someone\n")
    current = feeder.current()
    result = feeder.deploy(wheelhouse_b)
    assert result.returncode == 1
    assert "locked by another deploy (deploy of something by someone)" in result.stderr
    assert feeder.current() == current
    unlocked = feeder.on_host("unlock")
    assert unlocked.returncode == 0, unlocked.stderr
    assert not lock.exists()


@needs_root_sshd
def test_deploy_with_bad_settings_fails_before_touching_the_host(feeder, wheelhouse):
    nomconf = (feeder.prefix / "etc" / "nomconf.toml").read_text()
    bad = feeder.write_settings("unknown-key.toml", "no_such_setting = 1\n")
    result = feeder.deploy(wheelhouse, bad)
    assert result.returncode == 1
    assert "unknown setting 'no_such_setting'" in result.stderr
    assert (feeder.prefix / "etc" / "nomconf.toml").read_text() == nomconf


@needs_root_sshd
def test_deploy_whose_api_cannot_start_fails_loudly_and_keeps_the_previous_running(
        feeder, wheelhouse):
    etc = feeder.prefix / "etc"
    previous = {path.name: path.read_text() for path in etc.iterdir()}
    current = feeder.current()
    # Valid settings, but the API refuses to listen beyond loopback without a token.
    bad = feeder.write_settings("exposed.toml", 'api_host = "0.0.0.0"\n')
    result = feeder.deploy(wheelhouse, bad, 15)
    assert result.returncode == 1
    assert "is not healthy" in result.stderr
    assert "refusing to listen on 0.0.0.0" in result.stderr  # the API's log, quoted
    assert "put back the last healthy release" in result.stderr
    assert "they run and are healthy" in result.stderr
    assert {path.name: path.read_text() for path in etc.iterdir()} == previous
    assert feeder.current() == current
    _running(feeder)


@needs_root_sshd
def test_a_failed_first_deploy_leaves_the_host_as_it_found_it(host_root, broken_wheelhouse,
                                                             wheelhouse_b):
    root, sshd = host_root
    host = Feeder(sshd, root / "operator-2", root / "srv" / "media-nommer",
                  unique_name("mn-svc"), free_port())
    try:
        result = host.deploy(broken_wheelhouse, None, 45, "--accept-new-host-key")
        assert result.returncode == 1, result.stdout
        assert "scheduler exits at start" in result.stderr
        assert "the host is as it was before" in result.stderr
        assert not host.prefix.exists()
        assert sorted(path.name for path in host.prefix.parent.iterdir()) == []
        assert subprocess.run(["id", host.service_user], capture_output=True).returncode != 0
        assert wait_gone(processes_under(host.prefix), 30) == []
        # As found: a good release deploys there as on a fresh host.
        result = host.deploy(wheelhouse_b)
        assert result.returncode == 0, result.stderr + result.stdout
        assert "started supervisord" in result.stdout
        assert host.current() == f"releases/{release_id(wheelhouse_b)}"
        _running(host)
    finally:
        host.stop()
        _remove_user(host.service_user)


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



def test_every_log_on_a_host_is_rotated(tmp_path):
    feeder = _parse_rendered(tmp_path, Settings(max_num_ec2_instances=2), None)
    encoder = render_encoder_supervisord(EncoderLayout())
    for text in (feeder, encoder):
        logs = re.findall(r"^(?:stdout_)?logfile=", text, re.M)
        assert len(re.findall(r"^(?:stdout_)?logfile_maxbytes=20MB$", text, re.M)) == len(logs)
        assert len(re.findall(r"^(?:stdout_)?logfile_backups=5$", text, re.M)) == len(logs)
