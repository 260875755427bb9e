"""Settings: defaults, then a nomconf.toml, then NOMMER_* environment variables.

Every default lives here. Names follow the original media-nommer's settings,
lower-cased, where they still mean the same (`max_num_ec2_instances` is the
most encoders the scaler runs, on EC2 or as local supervisord slots). The
environment is read once, by `load`, at start-up.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path

from core.errors import ConfigError

ENV_PREFIX = "NOMMER_"
CONFIG_ENV = "NOMMER_CONFIG"
# Variables of the launcher and supervisord.conf that are not settings.
LAUNCHER_ENV = frozenset({"NOMMER_CONFIG", "NOMMER_PYTHON", "NOMMER_RUN_DIR"})


@dataclasses.dataclass(frozen=True)
class Settings:
    # Which implementations of the seams to use: "local" (SQLite, supervisord)
    # or "aws" (SimpleDB/DynamoDB, SQS, EC2, S3).
    backend: str = "local"
    # Local state: the SQLite database, encoder temp dirs, sample clips.
    data_dir: str = "var"

    # Folders that file:// sources and destinations may name. Empty means
    # "<data_dir>/media" only: API clients must not read or write anywhere else.
    file_roots: tuple = ()

    # --- API ---
    api_host: str = "127.0.0.1"
    api_port: int = 8001
    # Required when api_host is not a loopback address: clients send it as
    # "Authorization: Bearer <token>".
    api_token: str = ""
    api_threads: int = 8
    max_request_bytes: int = 65536

    # --- queues (names as the original) ---
    sqs_new_job_queue_name: str = "media_nommer"
    sqs_job_state_change_queue_name: str = "media_nommer_jstate"
    # How long a received message stays hidden; encoders extend it while working.
    visibility_timeout_s: int = 60
    # A job whose message has been received this many times ends in ERROR
    # instead of being tried again.
    max_receives: int = 5
    queue_wait_s: int = 20
    # How often the embedded queue looks for new messages during a long poll.
    local_queue_poll_ms: int = 25

    # --- job store (names as the original) ---
    simpledb_job_state_domain: str = "media_nommer"
    simpledb_ec2_nommer_state_domain: str = "media_nommer_ec2nommer_state"

    # --- encoders ---
    # Jobs one encoder runs at a time.
    max_encoding_jobs_per_ec2_instance: int = 1
    # An encoder with no work for this long stops itself (the original: 600 s).
    nommerd_max_inactivity: int = 600
    nommerd_terminate_when_idle: bool = True
    # How often a working encoder heartbeats its jobs and extends their messages.
    nommerd_heartbeat_interval_s: int = 10
    # A job not heartbeated for this long may be taken over by another encoder.
    job_lease_s: int = 60
    # ffmpeg binary; empty means the one the imageio-ffmpeg package ships.
    ffmpeg_path: str = ""
    # Progress is written to the store at most this often.
    progress_interval_ms: int = 1000
    # Largest source that will be downloaded (bytes).
    max_source_bytes: int = 20 * 1024**3

    # --- scheduler ---
    # Active jobs not updated for this long become ABANDONED (seconds).
    feederd_abandon_inactive_jobs_thresh: int = 3600
    feederd_prune_interval_s: int = 60
    notify_timeout_s: float = 10.0
    # A failing notification is retried with backoff for at most this long.
    notify_retry_for_s: float = 300.0
    # Key of the HMAC-SHA256 that signs JSON notifications (core.webhooks).
    # Without it the API refuses notify_format "json": an unsigned JSON
    # notification would be forgeable. A secret: kept out of repr (so out of
    # logs and tracebacks) and out of the settings sent to encoders.
    webhook_secret: str = dataclasses.field(default="", repr=False)

    # --- untrusted input: outbound reach and resource limits ---
    # Networks (CIDR) or host names that sources and notifications may reach
    # although they are not globally routable. Only consulted when the API
    # listens beyond loopback; then every other non-global address is refused.
    outbound_allowed: tuple = ()
    # Longest wait for a TCP (and TLS) connection to a source or receiver.
    outbound_connect_timeout_s: float = 3.0
    # Notifications sent at once to one receiver (host and port).
    notify_per_receiver: int = 2
    # A download must end within this long, and move at least this many
    # bytes in every window of download_rate_window_s (a dripping source).
    download_deadline_s: float = 3600.0
    download_min_bytes_per_s: int = 1024
    download_rate_window_s: float = 30.0
    # Each ffmpeg pass may run this many times the source's duration, plus
    # encode_time_base_s, of wall-clock time.
    encode_time_factor: float = 10.0
    encode_time_base_s: float = 120.0
    # Largest output file, checked while ffmpeg writes it (bytes).
    max_output_bytes: int = 20 * 1024**3
    # Free space the work folder's disk must keep beyond the source (bytes).
    min_free_bytes: int = 1024**3
    # Address space ffmpeg may use (RLIMIT_AS, bytes); 0 for no limit.
    ffmpeg_max_memory_bytes: int = 4 * 1024**3
    # Largest output frame (width x height, pixels) and frame rate accepted at submit.
    max_frame_pixels: int = 8192 * 4320
    max_frame_rate: float = 240.0
    # Outputs one job may ask for ("outputs": [...] at submit).
    max_outputs_per_job: int = 8
    # Sprite sheets for player scrubbing (nommerd/thumbnails.py): one tile
    # every sprite_interval_s seconds of the source (10 s: a two-hour film
    # makes 720 tiles, finer than a seek bar a few hundred pixels wide can
    # point at), sprite_tile_width_px wide (height keeps the aspect, even),
    # sprite_columns across, and at most sprite_max_tiles_per_sheet tiles
    # per image (more make several sheets: 100 tiles of 160x90 is 1600x900).
    sprite_interval_s: float = 10.0
    sprite_tile_width_px: int = 160
    sprite_columns: int = 10
    sprite_max_tiles_per_sheet: int = 100
    # False: a source ffmpeg decodes with errors fails the job (a truncated
    # file would otherwise end FINISHED with a short output).
    tolerate_decode_errors: bool = False

    # --- scaler ---
    feederd_allow_ec2_launches: bool = True
    feederd_auto_scale_interval: float = 5.0
    # "predictive": latency- and cost-aware (docs/scaling.md); "original":
    # the 2011 rule, which never scales in.
    scaling_policy: str = "predictive"
    # "" (the settings below), "latency" (shorter waits) or "cost" (less money).
    scaling_preset: str = ""
    min_encoders: int = 0
    max_num_ec2_instances: int = 3
    job_overflow_thresh: int = 2
    # How long a new encoder takes from launch to work (seconds): the
    # predictive policy's assumption until it has measured boots.
    boot_time_estimate_s: float = 60.0
    # Mean encode time on one slot (seconds), until the policy has measured it.
    encode_time_estimate_s: float = 120.0
    # The predictive policy sizes the fleet so that at most this share of
    # jobs waits longer than acceptable_wait_s (seconds) (Erlang C).
    acceptable_wait_s: float = 60.0
    scale_wait_tail_prob: float = 0.1
    # Below this many arrivals per boot time no slot is kept warm (it would
    # mostly idle): a job gets an encoder launched for it instead.
    scale_warm_min_arrivals_per_boot: float = 1.0
    # An idle encoder is drained after max(scale_in_idle_s, scale_in_boots x
    # the measured boot time), never within scale_cooldown_s of a change.
    scale_in_idle_s: float = 10.0
    scale_in_boots: float = 2.0
    scale_cooldown_s: float = 30.0
    # The arrival rate and the encode time are estimated over this window (seconds).
    scale_arrival_window_s: float = 900.0
    # How encoders are billed: EC2 bills per second with a 60 s minimum.
    billing_minimum_s: float = 60.0
    billing_increment_s: float = 1.0

    # --- the simulator (nommer-scaler simulate / suite) ---
    # Boot times are drawn uniformly from this range (seconds).
    simulate_boot_min_s: float = 40.0
    simulate_boot_max_s: float = 120.0
    # Share of launches that never come up, and Spot interruptions per encoder-hour.
    simulate_launch_failure_prob: float = 0.02
    simulate_interruptions_per_hour: float = 0.05

    # --- local fleet (supervisord) ---
    supervisor_url: str = ""
    supervisor_program: str = "nommerd"

    # --- AWS ---
    aws_region: str = "us-east-1"
    aws_endpoint_url: str = ""
    aws_store: str = "simpledb"
    # A current-generation type; ec2_instance_types, when set, is an ordered
    # list to fall back along when EC2 has no capacity for the one before.
    ec2_instance_type: str = "c7i.large"
    ec2_instance_types: tuple = ()
    ec2_security_groups: tuple = ("media_nommer",)
    ec2_key_name: str = ""
    ec2_ami_id: str = ""
    # One subnet, or an ordered list (ec2_subnet_ids) tried in turn.
    ec2_subnet_id: str = ""
    ec2_subnet_ids: tuple = ()
    ec2_instance_profile: str = ""
    ec2_spot: bool = False
    # With ec2_spot: launch on-demand when no Spot capacity is left anywhere.
    ec2_spot_fallback_on_demand: bool = True
    # S3 requests (whole small files, or parts of large ones) in flight at
    # once when an encoder uploads a set of files (an HLS ladder). At most
    # 10: a boto3 client keeps that many connections.
    s3_upload_parallel_requests: int = 8
    cluster_name: str = "media-nommer"
    # The instance metadata service (IMDSv2) nommerd asks for its instance id
    # and for Spot interruption notices; another URL only for tests.
    imds_url: str = "http://169.254.169.254"
    # How often nommerd on EC2 looks for a Spot interruption notice (seconds;
    # AWS gives about two minutes' warning and suggests every 5 s).
    spot_check_interval_s: float = 5.0

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def database_path(self) -> Path:
        return self.data_path / "nommer.sqlite3"

    @property
    def file_root_paths(self) -> tuple[Path, ...]:
        """The resolved folders file:// URIs may name."""
        roots = self.file_roots or (str(self.data_path / "media"),)
        return tuple(Path(root).resolve() for root in roots)


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}

_CHOICES = {
    "backend": {"local", "aws"},
    "scaling_policy": {"original", "predictive"},
    "scaling_preset": {"", "latency", "cost"},
    "aws_store": {"simpledb", "dynamodb"},
}


def _coerce(key: str, value, expected_type: type, from_env: bool = False):
    """Convert `value` (from TOML, or an environment string) to the field's type."""
    from_env = from_env and isinstance(value, str) and expected_type is not str
    try:
        if expected_type is bool:
            if isinstance(value, bool):
                return value
            if from_env and value.strip().lower() in {"1", "true", "yes", "on"}:
                return True
            if from_env and value.strip().lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError
        if expected_type is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, int) or from_env:
                return int(value)
            raise ValueError
        if expected_type is float:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, (int, float)) or from_env:
                return float(value)
            raise ValueError
        if expected_type is tuple:
            if from_env:
                return tuple(item.strip() for item in value.split(",") if item.strip())
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return tuple(value)
            raise ValueError
        if isinstance(value, str):
            return value
        raise ValueError
    except ValueError:
        raise ConfigError(
            f"setting {key!r}: expected {expected_type.__name__}, got {value!r}"
        ) from None


def _validate(settings: Settings) -> None:
    for key, choices in _CHOICES.items():
        if getattr(settings, key) not in choices:
            raise ConfigError(
                f"setting {key!r}: {getattr(settings, key)!r} is not one of {sorted(choices)}"
            )
    positive = ("api_port", "visibility_timeout_s", "max_receives", "job_lease_s",
                "max_encoding_jobs_per_ec2_instance", "nommerd_heartbeat_interval_s",
                "feederd_auto_scale_interval", "local_queue_poll_ms", "spot_check_interval_s",
                "outbound_connect_timeout_s", "notify_per_receiver", "download_deadline_s",
                "download_rate_window_s", "encode_time_factor", "max_output_bytes",
                "max_frame_pixels", "max_frame_rate", "max_outputs_per_job", "sprite_interval_s",
                "sprite_tile_width_px", "sprite_columns", "sprite_max_tiles_per_sheet")
    for key in positive:
        if getattr(settings, key) <= 0:
            raise ConfigError(f"setting {key!r}: must be greater than zero")
    if not 1 <= settings.s3_upload_parallel_requests <= 10:
        raise ConfigError("setting 's3_upload_parallel_requests': must be from 1 to 10")
    if settings.min_encoders > settings.max_num_ec2_instances:
        raise ConfigError("setting 'min_encoders': larger than 'max_num_ec2_instances'")
    if not 0 < settings.scale_wait_tail_prob <= 1:
        raise ConfigError("setting 'scale_wait_tail_prob': must be in (0, 1]")
    if settings.job_lease_s <= settings.nommerd_heartbeat_interval_s:
        raise ConfigError("setting 'job_lease_s': must be longer than nommerd_heartbeat_interval_s")


def _type_of(key: str) -> type:
    annotation = _FIELDS[key].type
    return {"str": str, "int": int, "float": float, "bool": bool, "tuple": tuple}[annotation]


def load(config_path: str | os.PathLike | None = None,
         environ: dict[str, str] | None = None) -> Settings:
    """Build Settings from defaults, the TOML file, then NOMMER_* variables.

    The file is `config_path`, else $NOMMER_CONFIG, else none. Raises
    ConfigError naming the bad key for unknown keys, wrong types or values.
    """
    environ = dict(os.environ if environ is None else environ)
    values: dict = {}
    path = config_path or environ.get(CONFIG_ENV)
    if path:
        try:
            with open(path, "rb") as handle:
                document = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        for key, value in document.items():
            if key not in _FIELDS:
                raise ConfigError(f"config file {path}: unknown setting {key!r}")
            values[key] = _coerce(key, value, _type_of(key))
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in LAUNCHER_ENV:
            continue
        key = name[len(ENV_PREFIX):].lower()
        if key not in _FIELDS:
            raise ConfigError(f"environment variable {name}: unknown setting {key!r}")
        values[key] = _coerce(key, value, _type_of(key), from_env=True)
    settings = Settings(**values)
    _validate(settings)
    return settings
