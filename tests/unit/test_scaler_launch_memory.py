"""The scaler against EC2's listing lag: moto's EC2 behind the fault proxy,
which leaves instances out of DescribeInstances for a while after
RunInstances started them, as EC2 may."""
from __future__ import annotations

import pytest

from core.aws import client as aws_client
from core.app.local_system import wait_for
from core.backends import open_backends
from core.fleets.ec2 import EC2Fleet
from core.settings import Settings
from feeder.scaler import Scaler
from tests.fixtures.aws import unique_name
from tests.fixtures.fault_proxy import FaultProxy

LISTING_LAG_S = 8.0
MAX_ENCODERS = 3


@pytest.fixture
def ec2_setup(moto_server):
    ec2 = aws_client(Settings(backend="aws", aws_endpoint_url=moto_server.endpoint_url), "ec2")
    ami = ec2.register_image(Name=unique_name("nommer-encoder"),
                             RootDeviceName="/dev/xvda")["ImageId"]
    iam = aws_client(Settings(backend="aws", aws_endpoint_url=moto_server.endpoint_url), "iam")
    profile = unique_name("nommer-encoder")
    iam.create_instance_profile(InstanceProfileName=profile)
    iam.close()
    yield ec2, ami, profile
    ec2.close()


def test_the_scaler_never_launches_past_the_maximum_while_ec2_lists_late(
        tmp_path, moto_server, ec2_setup):
    ec2, ami, profile = ec2_setup
    settings = Settings(backend="local", data_dir=str(tmp_path), scaling_policy="original",
                        max_num_ec2_instances=MAX_ENCODERS, cluster_name=unique_name("lag"),
                        ec2_ami_id=ami, ec2_instance_profile=profile, ec2_security_groups=())
    backends = open_backends(settings)
    for _ in range(10):  # a backlog worth more than the maximum
        backends.jobs.submit("file:///in.mov", "file:///out.mp4", {})
    with FaultProxy(moto_server.endpoint_url, listing_lag_s=LISTING_LAG_S) as proxy:
        fleet_client = aws_client(Settings(backend="aws", aws_endpoint_url=proxy.url), "ec2")
        fleet = EC2Fleet(fleet_client, settings)
        scaler = Scaler(settings, backends, fleet)
        for tick in range(20):  # decisions while EC2 does not list the launches yet
            scaler.step(now_s=1_000_000.0 + tick / 2)
        wait_for(lambda: len(fleet.list_encoders()) == MAX_ENCODERS, 4 * LISTING_LAG_S,
                 what="EC2 to list the launched instances")
        scaler.step(now_s=1_000_100.0)
        assert scaler.memory.launched_s == {}, "listed launches are forgotten"
        fleet_client.close()
        hidden = proxy.faults[("ec2", "hidden-instance")]
    backends.close()

    launched = EC2Fleet(ec2, settings).list_encoders()
    assert hidden > 0, "the lag hid launched instances from the scaler"
    assert len(launched) == MAX_ENCODERS
    ec2.terminate_instances(InstanceIds=[e.id for e in launched])
