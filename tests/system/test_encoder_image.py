"""The encoder AMI's scripts, run for real into a throwaway root: the install
script (its supervisord started, its `nommerd` started the way an
instance's user data starts it, and again at boot when the settings are
there), and the cleanup script that makes the image safe to share.

Everything started here is stopped by its pid at teardown.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from core.app.local_system import wait_for
from core.fleets.ec2 import encoder_user_data
from core.settings import Settings
from nommerd.daemon import RELEASE_WAIT_S
from provisioning.layout import ENCODER_STOP_GRACE_S, EncoderLayout
from provisioning.render import render_encoder_supervisord
from tests.fixtures.deploy import (host_wheelhouse, BASE_PYTHON, PROJECT_DIR, STOP_TIMEOUT_S, alive,
                                   program_pids, stop_by_pid)

pytestmark = pytest.mark.timeout(300)

INSTALL_SCRIPT = PROJECT_DIR / "packer" / "scripts" / "install-encoder.sh"
CLEANUP_SCRIPT = PROJECT_DIR / "packer" / "scripts" / "cleanup.sh"


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    return host_wheelhouse(tmp_path_factory.mktemp("wheelhouse"), BASE_PYTHON)


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
    unit = (tmp_path / "systemd" / "media-nommer-encoder.service").read_text()
    assert f"ExecStartPost={tmp_path / 'bin' / 'media-nommer-start-nommerd'}" in unit

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
        # First boot: the unit's boot start finds no settings and leaves nommerd alone.
        boot_start = [str(tmp_path / "bin" / "media-nommer-start-nommerd")]
        assert subprocess.run(boot_start, timeout=90).returncode == 0
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
        nommerd_pid = program_pids(status)["nommerd:nommerd_00"]
        # A later boot: no user data runs, the unit's boot start starts nommerd.
        subprocess.run(ctl + ["stop", "nommerd:*"], capture_output=True, timeout=120)
        assert subprocess.run(boot_start, timeout=90).returncode == 0
        status = subprocess.run(ctl + ["status"], capture_output=True, text=True, timeout=30).stdout
        assert re.search(r"^nommerd:nommerd_00\s+RUNNING", status, re.M), status
        nommerd_pid = program_pids(status)["nommerd:nommerd_00"]
    finally:
        stop_by_pid(supervisord.pid, [])
        supervisord.wait(timeout=STOP_TIMEOUT_S)
    assert not alive(nommerd_pid)
    assert "stopped" in log.read_text()  # nommerd's own last words after SIGTERM


def _plant_build_machine_traces(root: Path) -> list[Path]:
    """What a build machine leaves on its disk; returns the paths planted."""
    planted = {
        "root/.ssh/authorized_keys": "ssh-ed25519 AAAA packer-temporary-key\n",
        "home/admin/.ssh/authorized_keys": "ssh-ed25519 AAAA packer-temporary-key\n",
        "etc/ssh/ssh_host_ed25519_key": "PRIVATE\n",
        "etc/ssh/ssh_host_ed25519_key.pub": "ssh-ed25519 AAAA build-machine\n",
        "etc/ssh/ssh_host_rsa_key": "PRIVATE\n",
        "var/lib/dbus/machine-id": "0123456789abcdef0123456789abcdef\n",
        "var/log/auth.log": "Accepted publickey for admin\n",
        "var/log/journal/0123/system.journal": "journal\n",
        "var/log/cloud-init.log": "cloud-init\n",
        "root/.bash_history": "history\n",
        "home/admin/.bash_history": "history\n",
        "tmp/media-nommer/wheelhouse/x.whl": "",
        "var/lib/cloud/instances/i-0123/user-data.txt": "user data\n",
    }
    for name, text in planted.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    return [root / name for name in planted]


def test_the_image_keeps_no_keys_identity_logs_or_history_of_the_build(tmp_path, wheelhouse):
    root = tmp_path / "root"
    planted = _plant_build_machine_traces(root)
    env = _encoder_environment(tmp_path / "root", wheelhouse)
    env.update({name: str(root / path) for name, path in (
        ("ENCODER_PREFIX", "opt/media-nommer"), ("ENCODER_ETC_DIR", "etc/media-nommer"),
        ("ENCODER_DATA_DIR", "var/lib/media-nommer"), ("ENCODER_LOG_DIR", "var/log/media-nommer"),
        ("ENCODER_RUN_DIR", "run/media-nommer"), ("ENCODER_BIN_DIR", "usr/local/bin"),
        ("ENCODER_SYSTEMD_DIR", "etc/systemd/system"))})
    installed = subprocess.run(["bash", str(INSTALL_SCRIPT)], env=env, capture_output=True,
                               text=True, timeout=240)
    assert installed.returncode == 0, installed.stderr + installed.stdout
    cleaned = subprocess.run(["bash", str(CLEANUP_SCRIPT)],
                             env=dict(os.environ, CLEANUP_ROOT=str(root), CLEANUP_SKIP_SYSTEM="1"),
                             capture_output=True, text=True, timeout=60)
    assert cleaned.returncode == 0, cleaned.stderr + cleaned.stdout
    assert [path for path in planted if path.exists()] == []
    assert list((root / "etc/ssh").glob("ssh_host_*")) == []
    assert list((root / "var/log").rglob("*.log")) == []
    # Empty, not absent: systemd writes a new one at first boot only into an empty file.
    assert (root / "etc/machine-id").read_text() == ""
    # The install itself is intact, with the unit that makes host keys at boot.
    assert (root / "opt/media-nommer/venv/bin/nommerd").exists()
    keys_unit = (root / "etc/systemd/system/media-nommer-ssh-host-keys.service").read_text()
    assert "ExecStart=/usr/bin/ssh-keygen -A" in keys_unit and "Before=ssh.service" in keys_unit
