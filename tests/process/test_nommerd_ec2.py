"""nommerd on EC2, as a real process: its instance identity and Spot notice
from an IMDSv2 metadata server on 127.0.0.1, SQS, S3 and EC2 from the moto
server, the job store in DynamoDB (moto) or SimpleDB (the SimpleDB test
server), all behind one endpoint (tests/fixtures/fault_proxy.py), real ffmpeg."""
from __future__ import annotations

import re
import socket
from datetime import datetime, timezone

import pytest

from tests.fixtures.aws import unique_name
from core.jobs import JobState
from core.media import ffmpeg_path, make_sample_clip, probe
from core.settings import Settings
from tests.fixtures.fault_proxy import FaultProxy
from tests.fixtures.aws import aws_client, aws_env
from tests.fixtures.imds import InstanceMetadata
from tests.fixtures.nommerd import Nommerd, passes
from tests.fixtures.processes import is_running
from core.app.local_system import wait_for

pytestmark = pytest.mark.timeout(120)

STORES = ("dynamodb", "simpledb")


def closed_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(scope="module")
def cloud(moto_server, simpledb_server):
    """One endpoint for every service: moto, and the SimpleDB test server for SimpleDB."""
    with FaultProxy(moto_server.endpoint_url, simpledb_server.endpoint_url) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def ec2(moto_server):
    client = aws_client(moto_server.endpoint_url, "ec2")
    yield client
    client.close()


@pytest.fixture(scope="module")
def s3(moto_server):
    client = aws_client(moto_server.endpoint_url, "s3")
    yield client
    client.close()


@pytest.fixture(scope="module")
def ami(ec2) -> str:
    return ec2.register_image(Name=unique_name("nommer-encoder"),
                              RootDeviceName="/dev/xvda")["ImageId"]


@pytest.fixture
def instance(ec2, ami):
    """An instance launched in moto: the machine this nommerd plays."""
    own = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    yield own
    ec2.terminate_instances(InstanceIds=[own])


@pytest.fixture
def metadata(instance):
    server = InstanceMetadata(instance)
    yield server
    server.close()


@pytest.fixture(scope="module")
def bucket(s3) -> str:
    name = unique_name("nommer-media")
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def ffmpeg() -> str:
    return ffmpeg_path(Settings())


@pytest.fixture(scope="module")
def clip_uri(tmp_path_factory, ffmpeg, s3, bucket) -> str:
    path = tmp_path_factory.mktemp("clips") / "clip.mp4"
    make_sample_clip(ffmpeg, str(path), duration_s=2, size="160x120")
    s3.upload_file(str(path), bucket, "in/clip.mp4")
    return f"s3://{bucket}/in/clip.mp4"


@pytest.fixture(scope="module")
def long_clip_uri(tmp_path_factory, ffmpeg, s3, bucket) -> str:
    # Long enough that a veryslow encode is still running when the test acts.
    path = tmp_path_factory.mktemp("clips") / "long.mp4"
    make_sample_clip(ffmpeg, str(path), duration_s=20, size="640x480")
    s3.upload_file(str(path), bucket, "in/long.mp4")
    return f"s3://{bucket}/in/long.mp4"


@pytest.fixture
def encoder_factory(tmp_path, cloud):
    """`make(metadata_url, store=..., args=..., **NOMMER_overrides)` starts
    nommerd for a new cluster; every one is stopped at teardown."""
    started: list[Nommerd] = []

    def make(metadata_url: str, store: str = "simpledb", args=(), **overrides) -> Nommerd:
        n = len(started)
        env = aws_env(cloud.url, store, tmp_path / f"data{n}", unique_name("ec2nd"),
                      NOMMER_IMDS_URL=metadata_url, **overrides)
        daemon = Nommerd(env, tmp_path / f"nommerd{n}.log", list(args))
        started.append(daemon)
        return daemon.start()

    yield make
    for daemon in started:
        daemon.stop()


def encoding_ffmpeg(encoder: Nommerd, view: Nommerd, job_id: str) -> list[int]:
    """The pids of the ffmpeg that encodes `job_id` (not the one that probes
    the source first): once `view`'s store shows progress, nommerd's children."""
    wait_for(lambda: view.job(job_id).progress > 0, 30, "encoding to make progress")
    return wait_for(encoder.ffmpeg_children, 20, "ffmpeg to be running")


def instance_state(ec2, instance_id: str) -> str:
    reservation = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]
    return reservation["Instances"][0]["State"]["Name"]


@pytest.mark.parametrize("store", STORES)
def test_s3_job_finishes_with_the_instance_id_as_its_node(encoder_factory, metadata, instance,
                                                          clip_uri, s3, bucket, ffmpeg, store,
                                                          tmp_path):
    encoder = encoder_factory(metadata.url, store=store)
    out_key = f"out/{store}/clip.mp4"
    job = encoder.jobs.submit(clip_uri, f"s3://{bucket}/{out_key}", passes())

    done = encoder.wait_state(job.id, {JobState.FINISHED, JobState.ERROR})

    assert done.state is JobState.FINISHED, done.state_details
    assert done.node == instance and done.attempts == 1
    assert [node.id for node in encoder.backends.store.list_nodes()] == [instance]
    s3.download_file(bucket, out_key, str(tmp_path / "out.mp4"))
    info = probe(ffmpeg, str(tmp_path / "out.mp4"))
    assert ("video", "h264") in info.streams and ("audio", "aac") in info.streams
    assert info.duration_s == pytest.approx(2.0, abs=0.3)
    wait_for(lambda: encoder.backends.new_jobs.counts() == (0, 0), 10, "the message deleted")


def test_spot_interruption_notice_gives_the_job_back_at_once_and_exits_0(
        encoder_factory, metadata, instance, long_clip_uri, bucket):
    # A grace of ten minutes: only the notice, not a grace running out, can release the job.
    encoder = encoder_factory(metadata.url, args=["--stop-grace-s", "600"])
    job = encoder.jobs.submit(long_clip_uri, f"s3://{bucket}/out/spot.mp4",
                              passes(preset="veryslow"))
    ffmpeg_pids = encoding_ffmpeg(encoder, encoder, job.id)

    metadata.spot_action = {"action": "terminate", "time": "2030-01-01T00:02:00Z"}

    assert encoder.proc.wait(timeout=15) == 0
    released = encoder.job(job.id)
    assert released.state is JobState.PENDING, released.state_details
    assert released.state_details == f"released by {instance}"
    assert encoder.backends.new_jobs.counts() == (1, 0), "the message is visible again"
    assert not any(is_running(pid) for pid in ffmpeg_pids)
    [node] = encoder.backends.store.list_nodes()
    assert (node.id, node.state, node.active_jobs) == (instance, "stopped", 0)


def test_idle_encoder_terminates_its_own_instance_and_exits_0(encoder_factory, metadata,
                                                              instance, ec2):
    assert instance_state(ec2, instance) == "running"
    encoder = encoder_factory(metadata.url, NOMMER_NOMMERD_MAX_INACTIVITY="1")

    assert encoder.proc.wait(timeout=30) == 0
    assert instance_state(ec2, instance) in ("shutting-down", "terminated")
    assert f"terminating instance {instance}" in encoder.log_path.read_text()
    [node] = encoder.backends.store.list_nodes()
    assert (node.id, node.state) == (instance, "stopped")


def test_idle_encoder_that_cannot_terminate_its_instance_exits_1_to_be_restarted(encoder_factory):
    # An instance id EC2 does not know: TerminateInstances is refused.
    metadata = InstanceMetadata("i-0000000000000dead")
    try:
        encoder = encoder_factory(metadata.url, NOMMER_NOMMERD_MAX_INACTIVITY="1")
        assert encoder.proc.wait(timeout=30) == 1
    finally:
        metadata.close()
    assert "could not terminate instance i-0000000000000dead" in encoder.log_path.read_text()


def test_without_metadata_or_node_id_it_refuses_to_start_with_exit_2(encoder_factory):
    encoder = encoder_factory(closed_url())

    assert encoder.proc.wait(timeout=30) == 2
    log = encoder.log_path.read_text()
    assert "cannot learn this instance's id" in log and "--node-id" in log
    assert encoder.backends.store.list_nodes() == []


def test_with_a_node_id_it_works_without_metadata(encoder_factory, clip_uri, bucket):
    encoder = encoder_factory(closed_url(), args=["--node-id", "i-0123456789abcdef0"])
    job = encoder.jobs.submit(clip_uri, f"s3://{bucket}/out/no-metadata.mp4", passes())

    done = encoder.wait_state(job.id, {JobState.FINISHED, JobState.ERROR})

    assert done.state is JobState.FINISHED, done.state_details
    assert done.node == "i-0123456789abcdef0"
    assert encoder.proc.poll() is None
    log = encoder.log_path.read_text()
    assert log.count("cannot check for a Spot interruption notice") == 1, "warned once, not in a loop"


def test_aws_outage_is_logged_and_waited_out_and_the_job_then_finishes(
        tmp_path, moto_server, simpledb_server, metadata, instance, clip_uri, bucket):
    with FaultProxy(moto_server.endpoint_url, simpledb_server.endpoint_url,
                    throttle_share=0.0) as endpoint:
        env = aws_env(endpoint.url, "dynamodb", tmp_path / "data", unique_name("outage"),
                      NOMMER_IMDS_URL=metadata.url)
        encoder = Nommerd(env, tmp_path / "nommerd.log", [])
        # The test's own view of the cluster goes to moto directly, past the outage.
        direct = Nommerd(dict(env, NOMMER_AWS_ENDPOINT_URL=moto_server.endpoint_url),
                         tmp_path / "unused.log", [])
        try:
            encoder.start()
            wait_for(direct.backends.store.list_nodes, 30, "nommerd to report itself")

            endpoint.fault_share = 1.0  # every call answered 500: AWS is down
            wait_for(lambda: encoder.log_path.read_text().count("queue or store failed") >= 2,
                     60, "nommerd to notice the outage twice")
            job = direct.jobs.submit(clip_uri, f"s3://{bucket}/out/after-outage.mp4", passes())
            assert encoder.proc.poll() is None
            endpoint.fault_share = 0.0

            done = direct.wait_state(job.id, {JobState.FINISHED, JobState.ERROR}, timeout_s=60)
        finally:
            encoder.stop()
            direct.stop()

    assert done.state is JobState.FINISHED, done.state_details
    assert done.node == instance and done.attempts == 1
    delays = [float(found) for found in re.findall(r"queue or store failed: .*; retrying in "
                                                   r"([\d.]+) s", encoder.log_path.read_text())]
    assert delays[:2] == [0.5, 1.0], "it backs off, doubling the wait"


def test_encoder_that_cannot_renew_its_lease_stops_encoding_before_the_lease_runs_out(
        tmp_path, moto_server, simpledb_server, metadata, instance, long_clip_uri, bucket):
    with FaultProxy(moto_server.endpoint_url, simpledb_server.endpoint_url,
                    throttle_share=0.0) as endpoint:
        env = aws_env(endpoint.url, "dynamodb", tmp_path / "data", unique_name("lease"),
                      NOMMER_IMDS_URL=metadata.url)
        encoder = Nommerd(env, tmp_path / "nommerd.log", [])
        direct = Nommerd(dict(env, NOMMER_AWS_ENDPOINT_URL=moto_server.endpoint_url),
                         tmp_path / "unused.log", [])
        try:
            encoder.start()
            job = direct.jobs.submit(long_clip_uri, f"s3://{bucket}/out/lease.mp4",
                                     passes(preset="veryslow"))
            ffmpeg_pids = encoding_ffmpeg(encoder, direct, job.id)

            endpoint.fault_share = 1.0  # the store and the queue stop answering
            lease_ends_at = direct.job(job.id).lease_expires_at
            wait_for(lambda: not any(is_running(pid) for pid in ffmpeg_pids), 20,
                     "ffmpeg to be stopped")
            stopped_at = datetime.now(timezone.utc)
            endpoint.fault_share = 0.0
            # The job is not lost: once the lease has run out it is taken up again.
            again = wait_for(lambda: (j := direct.job(job.id)).attempts == 2 and j, 40,
                             "the job to be claimed again")
            direct.jobs.cancel(job.id)
        finally:
            encoder.stop()
            direct.stop()

    assert stopped_at < lease_ends_at, "stopped before another encoder could take the job"
    assert "lease not renewed and about to run out" in encoder.log_path.read_text()
    assert again.node == instance
