"""The whole system on the emulated cloud: api, scheduler and scaler as real
processes with backend "aws"; SQS, S3, EC2, IAM and DynamoDB from the moto
server and SimpleDB from the SimpleDB test server, behind one endpoint
(tests/fixtures/fault_proxy.py) that can fail a share of the calls on purpose.

The scaler launches instances in moto. The test plays their boot as the
encoder AMI would: for each instance the fleet launched (found by its
tags), it writes the nomconf.toml from the instance's cloud-init user data
and starts nommerd with it, with a metadata server that answers for that
instance. An instance that EC2 shuts down gets SIGTERM, as supervisord
would pass it on.
"""
from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path

import pytest

from tests.fixtures.aws import unique_name
from core.app.cli import ApiClient
from core.fleets.ec2 import NOMCONF_PATH, EC2Fleet
from core.errors import NommerError
from core.app.local_system import free_port, wait_for
from core.media import ffmpeg_path, make_sample_clip, probe
from core.settings import Settings, load
from tests.fixtures.fault_proxy import FaultProxy
from tests.fixtures.hls_checks import check_dash, check_ladder
from tests.fixtures.aws import aws_client, aws_env
from tests.system.test_metrics_system import scrape
from tests.fixtures.imds import InstanceMetadata
from tests.fixtures.processes import children_of, is_running

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
FEEDER_PROGRAMS = ("api", "scheduler", "scaler")
# What every cluster here runs with; the encoders get the allow-listed ones
# through their user data, as on AWS.
CLUSTER_SETTINGS = {
    "NOMMER_SCALING_POLICY": "original",  # never scales in: encoders stop themselves
    "NOMMER_FEEDERD_AUTO_SCALE_INTERVAL": "0.5",
    "NOMMER_MAX_ENCODING_JOBS_PER_EC2_INSTANCE": "1",
    "NOMMER_NOMMERD_MAX_INACTIVITY": "5",
    "NOMMER_FEEDERD_PRUNE_INTERVAL_S": "1",
}
BOOT_POLL_S = 0.2
JOBS_UNDER_FAULTS = 6
MAX_ENCODERS = 2
# How long EC2 leaves a new instance out of its listings, under faults.
LISTING_LAG_S = 4.0
_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ nommerd\[\d+\] (\S+): "
                       r"job (\S+): (claimed|let go)")


def passes() -> list[dict]:
    return [{"infile_options": [], "move_atom_to_front": True,
             "outfile_options": [["c:v", "libx264"], ["preset", "ultrafast"], ["b:v", "200k"],
                                 ["c:a", "aac"]]}]


class Encoder:
    """One booted instance: its metadata server and its nommerd."""

    def __init__(self, instance_id: str, nomconf: str, root: Path):
        self.instance_id = instance_id
        self.root = root
        root.mkdir(parents=True)
        (root / "nomconf.toml").write_text(nomconf)
        self.metadata = InstanceMetadata(instance_id)
        self.log_path = root / "nommerd.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOMMER_", "SUPERVISOR_"))}
        # What the AMI sets; the rest comes from the user data's nomconf.toml.
        env.update(NOMMER_CONFIG=str(root / "nomconf.toml"), NOMMER_DATA_DIR=str(root / "var"),
                   NOMMER_IMDS_URL=self.metadata.url, NOMMER_SPOT_CHECK_INTERVAL_S="0.5")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "nommerd.daemon"], cwd=REPO,
                                         env=env, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log)
        self.seen_children: set[int] = set()
        self.shut_down = False

    def watch_children(self) -> None:
        if self.proc.poll() is None:
            self.seen_children.update(children_of(self.proc.pid))

    def shutdown(self) -> None:
        """What an instance shutdown does to nommerd: supervisord's SIGTERM."""
        if not self.shut_down and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.shut_down = True

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.watch_children()
            self.proc.kill()
        self.proc.wait(timeout=10)
        for pid in self.seen_children:  # ffmpeg runs in its own session
            if is_running(pid):
                os.kill(pid, signal.SIGKILL)
        self.metadata.close()


class AwsCluster:
    """api, scheduler and scaler of one cluster on the endpoint `endpoint_url`,
    and a thread that boots each encoder instance the fleet launches."""

    def __init__(self, root: Path, endpoint_url: str, moto_url: str, store: str, ami: str,
                 profile: str, group: str, extra: dict[str, str] | None = None):
        self.root = root
        self.api_port = free_port()
        self.env = aws_env(endpoint_url, store, root / "feeder", unique_name("sys"), **{
            **CLUSTER_SETTINGS,
            "NOMMER_API_PORT": str(self.api_port),
            "NOMMER_CLUSTER_NAME": unique_name("nommer"),
            "NOMMER_EC2_AMI_ID": ami,
            "NOMMER_EC2_INSTANCE_PROFILE": profile,
            "NOMMER_EC2_SECURITY_GROUPS": group,
            **(extra or {})})
        self.settings: Settings = load(environ=self.env)
        # The test plays EC2's side on moto directly, past any injected faults.
        self.ec2 = aws_client(moto_url, "ec2")
        self.fleet = EC2Fleet(self.ec2, self.settings)
        self.client = ApiClient(f"http://127.0.0.1:{self.api_port}", timeout_s=30)
        self.feeder: dict[str, subprocess.Popen] = {}
        self.encoders: dict[str, Encoder] = {}
        self.most_live = 0  # the most instances pending or running at once
        self._stop_booting = threading.Event()
        self._booter = threading.Thread(target=self._boot_loop, name="booter", daemon=True)

    def start(self) -> "AwsCluster":
        (self.root / "feeder").mkdir(parents=True)
        for program in FEEDER_PROGRAMS:
            with open(self.log_path(program), "ab") as log:
                self.feeder[program] = subprocess.Popen(
                    [sys.executable, "-m", f"feeder.{program}"], cwd=REPO, env=self.env,
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self._booter.start()
        self.client.wait_healthy(60)
        return self

    def log_path(self, program: str) -> Path:
        return self.root / f"{program}.log"

    def launched(self) -> dict[str, str]:
        """Instance id -> EC2 state of every instance of this cluster, terminated ones too."""
        states = {}
        pages = self.ec2.get_paginator("describe_instances").paginate(Filters=[
            {"Name": "tag:cluster", "Values": [self.settings.cluster_name]},
            {"Name": "tag:role", "Values": ["encoder"]}])
        for page in pages:
            for reservation in page["Reservations"]:
                for instance in reservation["Instances"]:
                    states[instance["InstanceId"]] = instance["State"]["Name"]
        return states

    def _boot_loop(self) -> None:
        while not self._stop_booting.wait(BOOT_POLL_S):
            launched = self.launched()
            self.most_live = max(self.most_live, sum(
                1 for state in launched.values() if state in ("pending", "running")))
            for instance_id, state in launched.items():
                encoder = self.encoders.get(instance_id)
                if encoder is None and state in ("pending", "running"):
                    self.encoders[instance_id] = Encoder(
                        instance_id, self._nomconf(instance_id), self.root / instance_id)
                elif encoder is not None and state in ("shutting-down", "terminated"):
                    encoder.shutdown()
                if encoder is not None:
                    encoder.watch_children()

    def _nomconf(self, instance_id: str) -> str:
        """The nomconf.toml that the instance's cloud-init user data writes."""
        answer = self.ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        user_data = base64.b64decode(answer["UserData"]["Value"]).decode()
        assert user_data.startswith("#cloud-config\n")
        [written] = [f for f in json.loads(user_data.split("\n", 1)[1])["write_files"]
                     if f["path"] == NOMCONF_PATH]
        return written["content"]

    def wait_job(self, job_id: str, states: set[str], timeout_s: float = 90) -> dict:
        def reached():
            try:
                job = self.client.job(job_id)
            except NommerError:  # the API answered an error: it is asked again
                return None
            return job if job["state"] in states else None

        try:
            return wait_for(reached, timeout_s, interval_s=0.2, what=f"job {job_id} in {states}")
        except TimeoutError:
            self.print_logs()
            raise

    def print_logs(self, lines: int = 40) -> None:
        paths = [self.log_path(p) for p in FEEDER_PROGRAMS]
        paths += [e.log_path for e in self.encoders.values()]
        for path in paths:
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                print(f"--- {path.name} ({path.parent.name})", *tail, sep="\n")

    def logs(self) -> dict[str, str]:
        found = {p: self.log_path(p).read_text(errors="replace") for p in FEEDER_PROGRAMS}
        for encoder in self.encoders.values():
            found[encoder.instance_id] = encoder.log_path.read_text(errors="replace")
        return found

    def stop(self) -> None:
        self._stop_booting.set()
        if self._booter.is_alive():
            self._booter.join(timeout=30)
        for encoder in self.encoders.values():
            encoder.stop()
        for proc in self.feeder.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.feeder.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        leftovers = [e.id for e in self.fleet.list_encoders()]
        if leftovers:
            self.ec2.terminate_instances(InstanceIds=leftovers)
        self.ec2.close()

    def __enter__(self) -> "AwsCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def scaler_saw(log: str, *fleet_sizes: int) -> bool:
    """Whether the scaler's decisions saw these fleet sizes, in this order."""
    position = 0
    for size in fleet_sizes:
        position = log.find(f" encoders={size} ", position)
        if position < 0:
            return False
    return True


def holds_by_job(logs: dict[str, str]) -> dict[str, list[tuple[datetime, datetime, str]]]:
    """job id -> (claimed at, let go at, instance) of every hold in the
    encoders' logs, in claim order. A hold never let go ends at datetime.max."""
    holds: dict[str, list] = {}
    for instance_id, text in logs.items():
        if not instance_id.startswith("i-"):
            continue
        open_holds: dict[tuple[str, str], datetime] = {}
        for line in text.splitlines():
            found = _LOG_LINE.match(line)
            if not found:
                continue
            at = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f")
            key = (found.group(2), found.group(3))
            if found.group(4) == "claimed":
                open_holds[key] = at
            else:
                holds.setdefault(key[1], []).append((open_holds.pop(key), at, instance_id))
        for (_, job_id), at in open_holds.items():
            holds.setdefault(job_id, []).append((at, datetime.max, instance_id))
    return {job_id: sorted(found) for job_id, found in holds.items()}


@pytest.fixture(scope="module")
def moto_ec2(moto_server):
    client = aws_client(moto_server.endpoint_url, "ec2")
    yield client
    client.close()


@pytest.fixture(scope="module")
def cloud_setup(moto_server, moto_ec2):
    """The encoder AMI, an instance profile and a security group in moto,
    and a bucket with a short clip in it."""
    ami = moto_ec2.register_image(Name=unique_name("nommer-encoder"),
                                  RootDeviceName="/dev/xvda")["ImageId"]
    iam = aws_client(moto_server.endpoint_url, "iam")
    profile = unique_name("nommer-encoder")
    iam.create_instance_profile(InstanceProfileName=profile)
    iam.close()
    group = unique_name("media_nommer")
    moto_ec2.create_security_group(GroupName=group, Description="media-nommer encoders")
    return {"ami": ami, "profile": profile, "group": group}


@pytest.fixture(scope="module")
def ffmpeg() -> str:
    return ffmpeg_path(Settings())


@pytest.fixture(scope="module")
def media(moto_server, tmp_path_factory, ffmpeg):
    """(s3 client, bucket, source URI) of a 2 s clip in moto's S3."""
    s3 = aws_client(moto_server.endpoint_url, "s3")
    bucket = unique_name("nommer-media")
    s3.create_bucket(Bucket=bucket)
    clip = tmp_path_factory.mktemp("clip") / "clip.mp4"
    make_sample_clip(ffmpeg, str(clip), duration_s=2, size="160x120")
    s3.upload_file(str(clip), bucket, "in/clip.mp4")
    yield s3, bucket, f"s3://{bucket}/in/clip.mp4"
    s3.close()


@pytest.fixture
def endpoint(moto_server, simpledb_server):
    with FaultProxy(moto_server.endpoint_url, simpledb_server.endpoint_url, seed=7) as proxy:
        yield proxy


@pytest.mark.parametrize("store", ["dynamodb", "simpledb"])
def test_s3_job_finishes_on_a_launched_encoder_that_then_terminates_itself(
        tmp_path, endpoint, moto_server, cloud_setup, media, ffmpeg, store):
    s3, bucket, source = media
    with AwsCluster(tmp_path, endpoint.url, moto_server.endpoint_url, store,
                    **cloud_setup) as cluster:
        job_id = cluster.client.submit(source, f"s3://{bucket}/out/{store}.mp4", passes())
        job = cluster.wait_job(job_id, {"FINISHED", "ERROR"})

        assert job["state"] == "FINISHED", job["state_details"]
        [instance_id] = cluster.launched()
        assert job["node"] == instance_id and job["attempts"] == 1
        s3.download_file(bucket, f"out/{store}.mp4", str(tmp_path / "out.mp4"))
        info = probe(ffmpeg, str(tmp_path / "out.mp4"))
        assert ("video", "h264") in info.streams and ("audio", "aac") in info.streams
        assert info.duration_s == pytest.approx(2.0, abs=0.3)
        # The encoder's figures reach the API's scrape through the AWS store.
        figures = scrape(cluster)
        assert figures[("nommer_jobs", (("state", "FINISHED"),))] == 1
        assert figures[("nommer_encode_duration_seconds_count", (("kind", "libx264"),))] == 1
        assert figures[("nommer_download_bytes_total", ())] > 0
        assert figures[("nommer_upload_bytes_total", ())] > 0

        # Idle past nommerd_max_inactivity: the encoder terminates its instance...
        encoder = cluster.encoders[instance_id]
        assert encoder.proc.wait(timeout=60) == 0
        assert cluster.launched()[instance_id] in ("shutting-down", "terminated")
        # ...and the scaler sees the fleet empty, and launches nothing more.
        wait_for(lambda: scaler_saw(cluster.log_path("scaler").read_text(), 1, 0), 30,
                 what="the scaler to see the encoder gone")
        assert cluster.fleet.list_encoders() == []
        assert len(cluster.launched()) == 1


HLS_CLIP_S = 4.0


def test_hls_and_dash_to_an_s3_prefix_are_uploaded_with_manifests_typed_and_play_back(
        tmp_path, endpoint, moto_server, cloud_setup, media, ffmpeg):
    s3, bucket, _source = media
    clip = tmp_path / "clip-360p.mp4"
    make_sample_clip(ffmpeg, str(clip), duration_s=HLS_CLIP_S, size="640x360")
    s3.upload_file(str(clip), bucket, "in/clip-360p.mp4")
    with AwsCluster(tmp_path / "cluster", endpoint.url, moto_server.endpoint_url, "simpledb",
                    **cloud_setup) as cluster:
        job_id = cluster.client.submit_options(
            f"s3://{bucket}/in/clip-360p.mp4", f"s3://{bucket}/show/",
            {"preset": "hls", "ladder": [180, 360], "segment_s": 1, "dash": True})
        job = cluster.wait_job(job_id, {"FINISHED", "ERROR"}, timeout_s=150)
    assert job["state"] == "FINISHED", job["state_details"]

    listed = s3.list_objects_v2(Bucket=bucket, Prefix="show/")["Contents"]
    keys = sorted(item["Key"][len("show/"):] for item in listed)
    assert {"master.m3u8", "180p/index.m3u8", "360p/index.m3u8", "audio/index.m3u8",
            "manifest.mpd"} <= set(keys)
    for rendition in ("180p", "360p", "audio"):
        assert sum(key.startswith(f"{rendition}/init") for key in keys) == 1
    expected_type = {".m3u8": "application/vnd.apple.mpegurl", ".mp4": "video/mp4",
                     ".m4s": "video/iso.segment", ".mpd": "application/dash+xml"}
    for key in keys:
        local = tmp_path / "show" / key
        local.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, "show/" + key, str(local))
        content_type = s3.head_object(Bucket=bucket, Key="show/" + key)["ContentType"]
        assert content_type == expected_type[local.suffix], key
    check_ladder(ffmpeg, tmp_path / "show", HLS_CLIP_S, [180, 360])
    check_dash(ffmpeg, tmp_path / "show" / "manifest.mpd", HLS_CLIP_S, 2)
    [described] = job["outputs"]
    assert described["master_playlist"] == f"s3://{bucket}/show/master.m3u8"
    assert described["dash_manifest"] == f"s3://{bucket}/show/manifest.mpd"
    assert described["renditions"] == 2
    assert described["segments"] == sum(key.endswith(".m4s") and not key.startswith("dash/")
                                        for key in keys)


def submit_until_accepted(client, source: str, destination: str, attempts: int = 5) -> str:
    """Submit as a real client does: the API's short retry budget may run out
    under a fifth of calls failing, and it then answers 503 "try again later"."""
    for attempt in range(1, attempts + 1):
        try:
            return client.submit(source, destination, passes())
        except NommerError as exc:
            if "try again later" not in str(exc) or attempt == attempts:
                raise


@pytest.mark.parametrize("store", ["simpledb", "dynamodb"])
def test_with_aws_calls_failing_before_and_after_every_job_finishes_and_none_runs_twice_at_once(
        tmp_path, endpoint, moto_server, cloud_setup, media, store):
    s3, bucket, source = media
    # A fifth of all calls fail before they arrive; a fifth of the writes
    # that arrive (claims, heartbeats, state changes, sends, deletes) take
    # but lose their answer, half by a 500, half by a dropped connection;
    # EC2 lists a new instance only seconds after launching it.
    endpoint.fault_share = 0.2
    endpoint.after_share, endpoint.hang_s = 0.2, 1.0
    endpoint.listing_lag_s = LISTING_LAG_S
    # Leases and visibility well beyond what botocore's retries can add to
    # a heartbeat, so retried heartbeats alone never let a job go.
    timings = {"NOMMER_MAX_NUM_EC2_INSTANCES": str(MAX_ENCODERS),
               "NOMMER_VISIBILITY_TIMEOUT_S": "10", "NOMMER_JOB_LEASE_S": "10"}
    sqs = aws_client(moto_server.endpoint_url, "sqs")
    with AwsCluster(tmp_path, endpoint.url, moto_server.endpoint_url, store,
                    extra=timings, **cloud_setup) as cluster:
        queue_url = sqs.get_queue_url(QueueName=cluster.settings.sqs_new_job_queue_name)["QueueUrl"]
        ids = []
        for n in range(JOBS_UNDER_FAULTS):
            ids.append(submit_until_accepted(cluster.client, source,
                                             f"s3://{bucket}/out/fault-{n}.mp4"))
            # SQS delivers at least once: here every job is delivered twice.
            sqs.send_message(QueueUrl=queue_url, MessageBody=ids[-1])
        jobs = [cluster.wait_job(job_id, {"FINISHED", "ERROR", "ABANDONED", "CANCELLED"},
                                 timeout_s=120) for job_id in ids]

        assert [job["state"] for job in jobs] == ["FINISHED"] * len(ids), \
            [job["state_details"] for job in jobs]
        for n in range(len(ids)):
            s3.head_object(Bucket=bucket, Key=f"out/fault-{n}.mp4")
        # Every encoder went idle and terminated its instance; nothing crashed.
        wait_for(lambda: all(e.proc.poll() is not None for e in list(cluster.encoders.values())),
                 90, what="the encoders to stop")
        assert len(cluster.encoders) >= 2
        assert {e.proc.returncode for e in cluster.encoders.values()} == {0}
        assert set(cluster.launched().values()) <= {"shutting-down", "terminated"}
        assert all(proc.poll() is None for proc in cluster.feeder.values())
        assert cluster.most_live <= MAX_ENCODERS, "never more encoders than the maximum"
        logs = cluster.logs()
    sqs.close()

    holds = holds_by_job(logs)
    encoder_logs = "".join(text for name, text in logs.items() if name.startswith("i-"))
    for job in jobs:
        held = holds[job["id"]]
        # A claim whose lease ran out before it could be renewed is left
        # unworked: a claim all the same, but no hold.
        lapsed = encoder_logs.count(f"job {job['id']}: lease ran out before the claim")
        assert len(held) + lapsed == job["attempts"], "every claim counted, and only claims"
        for (_, let_go, _), (claimed, _, _) in zip(held, held[1:]):
            assert let_go <= claimed, f"job {job['id']} held twice at once: {held}"
        assert held[-1][2] == job["node"]
    duplicates_refused = (encoder_logs.count("left for its holder")
                          + encoder_logs.count("message dropped"))
    assert duplicates_refused >= len(ids), "every second delivery found its job taken or done"
    # Our own applied writes counted as done: no encoder lost a job it held.
    # (A lease may still lapse when retries take longer than it; that stop
    # is safe and the job is done again, so it is not counted here.)
    assert "changed under us" not in encoder_logs
    # S3 sees too few calls here (two a job) to be sure of a fault every run.
    assert sum(endpoint.faults.values()) >= 50
    store_service = "sdb" if store == "simpledb" else "dynamodb"
    assert {service for service, _ in endpoint.faults} >= {"sqs", "ec2", store_service}
    # (Whether a listing fell in the lag depends on the scaler's backoff;
    # tests/unit/test_scaler_launch_memory.py makes sure of it.)
    assert {"after-500", "after-timeout"} <= {kind for _, kind in endpoint.faults}
    for name, text in logs.items():
        assert "Traceback" not in text, f"{name} failed unexpectedly:\n{text}"
