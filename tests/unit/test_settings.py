"""Settings: defaults, then nomconf.toml, then NOMMER_* variables (core.settings)."""
from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from core.settings import Settings, load


def _toml(tmp_path, text: str) -> str:
    path = tmp_path / "nomconf.toml"
    path.write_text(text)
    return str(path)


def test_defaults_without_file_or_environment():
    settings = load(environ={})
    assert settings == Settings()
    assert settings.backend == "local"
    assert (settings.api_host, settings.api_port) == ("127.0.0.1", 8001)
    assert settings.sqs_new_job_queue_name == "media_nommer"
    assert settings.sqs_job_state_change_queue_name == "media_nommer_jstate"
    assert settings.nommerd_max_inactivity == 600


def test_the_database_lives_in_the_data_dir(tmp_path):
    settings = load(environ={"NOMMER_DATA_DIR": str(tmp_path)})
    assert settings.database_path == Path(tmp_path) / "nommer.sqlite3"
    assert settings.file_root_paths == ((Path(tmp_path) / "media").resolve(),)


def test_the_file_overrides_defaults(tmp_path):
    path = _toml(tmp_path, 'api_port = 9000\nscaling_policy = "predictive"\n'
                           'notify_timeout_s = 3\nec2_security_groups = ["a", "b"]\n'
                           'ec2_spot = true\n')
    settings = load(path, environ={})
    assert settings.api_port == 9000
    assert settings.scaling_policy == "predictive"
    assert settings.notify_timeout_s == 3.0 and isinstance(settings.notify_timeout_s, float)
    assert settings.ec2_security_groups == ("a", "b")
    assert settings.ec2_spot is True
    assert settings.max_receives == Settings().max_receives


def test_nommer_config_names_the_file(tmp_path):
    path = _toml(tmp_path, "api_port = 9100\n")
    assert load(environ={"NOMMER_CONFIG": path}).api_port == 9100


def test_environment_overrides_the_file(tmp_path):
    path = _toml(tmp_path, "api_port = 9000\nmax_receives = 2\n")
    settings = load(path, environ={"NOMMER_API_PORT": "9200", "NOMMER_EC2_SPOT": "yes",
                                   "NOMMER_FILE_ROOTS": "/srv/in, /srv/out"})
    assert settings.api_port == 9200
    assert settings.max_receives == 2
    assert settings.ec2_spot is True
    assert settings.file_roots == ("/srv/in", "/srv/out")


@pytest.mark.parametrize("text", ["0", "false", "No", "off"])
def test_false_words_from_the_environment(text):
    assert load(environ={"NOMMER_FEEDERD_ALLOW_EC2_LAUNCHES": text}).feederd_allow_ec2_launches \
        is False


def test_an_unknown_key_in_the_file_is_named(tmp_path):
    path = _toml(tmp_path, "api_prot = 9000\n")
    with pytest.raises(ConfigError, match="api_prot"):
        load(path, environ={})


def test_an_unknown_environment_variable_is_named():
    with pytest.raises(ConfigError, match="NOMMER_API_PROT"):
        load(environ={"NOMMER_API_PROT": "9000"})


@pytest.mark.parametrize("toml_line,key", [
    ('api_port = "9000"', "api_port"),
    ("api_port = 90.5", "api_port"),
    ("api_port = true", "api_port"),
    ("ec2_spot = 1", "ec2_spot"),
    ("api_host = 8", "api_host"),
    ('ec2_security_groups = "one"', "ec2_security_groups"),
    ("notify_timeout_s = false", "notify_timeout_s"),
])
def test_a_wrong_type_in_the_file_names_the_key(tmp_path, toml_line, key):
    with pytest.raises(ConfigError, match=key):
        load(_toml(tmp_path, toml_line + "\n"), environ={})


@pytest.mark.parametrize("name,value,key", [
    ("NOMMER_API_PORT", "eighty", "api_port"),
    ("NOMMER_EC2_SPOT", "maybe", "ec2_spot"),
    ("NOMMER_NOTIFY_TIMEOUT_S", "soon", "notify_timeout_s"),
])
def test_a_wrong_type_in_the_environment_names_the_key(name, value, key):
    with pytest.raises(ConfigError, match=key):
        load(environ={name: value})


@pytest.mark.parametrize("environ,key", [
    ({"NOMMER_BACKEND": "azure"}, "backend"),
    ({"NOMMER_SCALING_POLICY": "guess"}, "scaling_policy"),
    ({"NOMMER_API_PORT": "0"}, "api_port"),
    ({"NOMMER_MIN_ENCODERS": "5", "NOMMER_MAX_NUM_EC2_INSTANCES": "2"}, "min_encoders"),
    ({"NOMMER_JOB_LEASE_S": "5", "NOMMER_NOMMERD_HEARTBEAT_INTERVAL_S": "10"}, "job_lease_s"),
])
def test_a_value_out_of_range_names_the_key(environ, key):
    with pytest.raises(ConfigError, match=key):
        load(environ=environ)


def test_launcher_variables_are_not_settings():
    settings = load(environ={"NOMMER_PYTHON": "/opt/py/bin/python", "NOMMER_RUN_DIR": "run",
                             "PATH": "/usr/bin", "OTHER_API_PORT": "1"})
    assert settings == Settings()


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load(str(tmp_path / "missing.toml"), environ={})


def test_a_file_that_is_not_toml_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nomconf.toml"):
        load(_toml(tmp_path, "api_port = = 1\n"), environ={})
