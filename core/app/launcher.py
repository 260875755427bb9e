"""Start the whole system on one machine: supervisord with the project's table.

The settings decide the data folder, the API address and the most encoders;
the launcher turns them into the ENV_ values supervisord.conf expands, then
replaces itself with supervisord in the foreground (Ctrl-C stops it all).
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from core.errors import ConfigError
from core.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def supervisord_conf_path() -> Path:
    return PROJECT_ROOT / "supervisord.conf"


def run_dir(settings: Settings) -> Path:
    return settings.data_path.resolve() / "run"


def socket_url(settings: Settings) -> str:
    return f"unix://{run_dir(settings) / 'supervisor.sock'}"


def launch_environment(settings: Settings, config_path: str | None,
                       base: dict[str, str]) -> dict[str, str]:
    """The environment supervisord and every process under it run with."""
    env = dict(base)
    data_dir = settings.data_path.resolve()
    env["NOMMER_DATA_DIR"] = str(data_dir)
    env["NOMMER_RUN_DIR"] = str(run_dir(settings))
    env["NOMMER_PYTHON"] = sys.executable
    env["NOMMER_SUPERVISOR_URL"] = socket_url(settings)
    env["NOMMER_MAX_NUM_EC2_INSTANCES"] = str(settings.max_num_ec2_instances)
    if config_path:
        env["NOMMER_CONFIG"] = str(Path(config_path).resolve())
    # Children import the project from here even when it is not installed.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), base.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def prepare_folders(settings: Settings) -> None:
    for folder in (run_dir(settings) / "logs", settings.data_path / "media"):
        folder.mkdir(parents=True, exist_ok=True)
    os.chmod(run_dir(settings), 0o700)


def supervisord_argv(conf: Path) -> list[str]:
    exe = shutil.which("supervisord", path=os.path.dirname(sys.executable)) or shutil.which("supervisord")
    if exe is None:
        raise ConfigError("supervisord is not installed (pip install supervisor)")
    return [exe, "--nodaemon", "--configuration", str(conf)]


def exec_supervisord(settings: Settings, config_path: str | None) -> None:
    """Replace this process with supervisord running the whole system."""
    if settings.backend != "local":
        raise ConfigError("`nommer run` starts the embedded system; set backend = \"local\"")
    prepare_folders(settings)
    env = launch_environment(settings, config_path, dict(os.environ))
    argv = supervisord_argv(supervisord_conf_path())
    os.execve(argv[0], argv, env)
