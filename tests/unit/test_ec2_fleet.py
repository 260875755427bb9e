"""The EC2 fleet (core.fleets.ec2) against moto's EC2 and IAM, over HTTP."""
from __future__ import annotations

import base64
import dataclasses
import tomllib
from datetime import datetime

import boto3
import pytest
import yaml

from tests.fixtures.aws import unique_name
from core.fleets.ec2 import NOMCONF_PATH, EC2Fleet, encoder_user_data
from core.errors import BackendError, ConfigError
from core.settings import Settings, load

# Credentials the test's own clients sign with: they must never reach an instance.
ACCESS_KEY_ID = "AKIAFLEETTESTKEY0001"
SECRET_ACCESS_KEY = "fleet-test-secret-access-key-value"
API_TOKEN = "api-token-that-stays-on-the-feeder"


def _client(endpoint_url: str, service: str):
    return boto3.client(service, endpoint_url=endpoint_url, region_name="us-east-1",
                        aws_access_key_id=ACCESS_KEY_ID,
                        aws_secret_access_key=SECRET_ACCESS_KEY)


@pytest.fixture(scope="module")
def ec2(moto_server):
    client = _client(moto_server.endpoint_url, "ec2")
    yield client
    client.close()


@pytest.fixture(scope="module")
def amis(ec2):
    """Two builds of the encoder AMI, the older one first."""
    return [ec2.register_image(Name=unique_name(f"nommer-encoder-v{version}"),
                               RootDeviceName="/dev/xvda", Architecture="x86_64",
                               VirtualizationType="hvm")["ImageId"]
            for version in (1, 2)]


@pytest.fixture(scope="module")
def network(ec2, moto_server):
    """A subnet of the default VPC, a security group in it, a key pair and an
    instance profile, all named for this module."""
    subnet = ec2.describe_subnets(
        Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"][0]
    group_name = unique_name("media_nommer")
    ec2.create_security_group(GroupName=group_name, Description="encoders",
                              VpcId=subnet["VpcId"])
    key_name = unique_name("nommer-key")
    ec2.create_key_pair(KeyName=key_name)
    iam = _client(moto_server.endpoint_url, "iam")
    profile = unique_name("nommer-encoder")
    iam.create_instance_profile(InstanceProfileName=profile)
    iam.close()
    return {"subnet": subnet["SubnetId"], "group": group_name, "key": key_name,
            "profile": profile}


@pytest.fixture
def settings(moto_server, amis, network):
    return Settings(
        backend="aws", aws_endpoint_url=moto_server.endpoint_url, api_token=API_TOKEN,
        cluster_name=unique_name("nommer"), ec2_ami_id=amis[0], ec2_instance_type="c5.large",
        ec2_subnet_id=network["subnet"], ec2_security_groups=(network["group"],),
        ec2_key_name=network["key"], ec2_instance_profile=network["profile"],
        sqs_new_job_queue_name="nommer_jobs", aws_store="dynamodb")


@pytest.fixture
def fleet(ec2, settings):
    built = EC2Fleet(ec2, settings)
    yield built
    # The moto server outlives this test: leave nothing running.
    leftovers = [encoder.id for encoder in built.list_encoders()]
    if leftovers:
        ec2.terminate_instances(InstanceIds=leftovers)


def _instance(ec2, instance_id: str) -> dict:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def _user_data(ec2, instance_id: str) -> str:
    attribute = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    return base64.b64decode(attribute["UserData"]["Value"]).decode()


def test_launched_encoders_are_listed_with_cluster_and_role_tags(fleet, ec2, settings):
    launched = fleet.launch(2)

    assert len(launched) == 2
    listed = {encoder.id: encoder for encoder in fleet.list_encoders()}
    assert set(listed) == set(launched)
    for instance_id in launched:
        assert listed[instance_id].state in ("pending", "running")
        assert isinstance(listed[instance_id].launched_at, datetime)
        assert listed[instance_id].launched_at.tzinfo is not None
        tags = {tag["Key"]: tag["Value"] for tag in _instance(ec2, instance_id)["Tags"]}
        assert tags["cluster"] == settings.cluster_name
        assert tags["role"] == "encoder"


def test_encoders_require_imdsv2_and_run_with_the_instance_profile(fleet, ec2, settings, network):
    [instance_id] = fleet.launch(1)
    instance = _instance(ec2, instance_id)

    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    assert instance["IamInstanceProfile"]["Arn"].endswith(f"/{network['profile']}")
    assert instance["ImageId"] == settings.ec2_ami_id
    assert instance["InstanceType"] == "c5.large"
    assert instance["SubnetId"] == network["subnet"]
    assert [group["GroupName"] for group in instance["SecurityGroups"]] == [network["group"]]
    assert instance["KeyName"] == network["key"]
    assert instance.get("InstanceLifecycle") != "spot"


def test_user_data_writes_a_loadable_nomconf_and_carries_no_secret(
        fleet, ec2, settings, tmp_path):
    [instance_id] = fleet.launch(1)
    user_data = _user_data(ec2, instance_id)

    assert user_data == encoder_user_data(settings)
    for secret in (ACCESS_KEY_ID, SECRET_ACCESS_KEY, API_TOKEN):
        assert secret not in user_data
    assert "aws_access_key" not in user_data.lower()
    assert user_data.startswith("#cloud-config\n")
    cloud_config = yaml.safe_load(user_data)
    [written] = cloud_config["write_files"]
    assert written["path"] == NOMCONF_PATH
    assert any("supervisorctl start" in " ".join(command) for command in cloud_config["runcmd"])

    nomconf = tomllib.loads(written["content"])
    assert nomconf["backend"] == "aws"
    assert nomconf["cluster_name"] == settings.cluster_name
    assert nomconf["aws_region"] == settings.aws_region
    assert nomconf["aws_store"] == "dynamodb"
    assert nomconf["sqs_new_job_queue_name"] == "nommer_jobs"
    assert nomconf["sqs_job_state_change_queue_name"] == settings.sqs_job_state_change_queue_name
    assert nomconf["simpledb_job_state_domain"] == settings.simpledb_job_state_domain
    assert "api_token" not in nomconf

    # The encoder's own settings loader accepts the file as written.
    path = tmp_path / "nomconf.toml"
    path.write_text(written["content"])
    loaded = load(path, environ={})
    assert (loaded.backend, loaded.cluster_name, loaded.api_token) == (
        "aws", settings.cluster_name, "")


def test_an_encoder_from_an_older_ami_stays_in_the_fleet(fleet, ec2, settings, amis):
    [old] = fleet.launch(1)
    upgraded = EC2Fleet(ec2, dataclasses.replace(settings, ec2_ami_id=amis[1]))
    [new] = upgraded.launch(1)

    assert _instance(ec2, old)["ImageId"] != _instance(ec2, new)["ImageId"]
    assert {encoder.id for encoder in upgraded.list_encoders()} == {old, new}


def test_instances_of_another_cluster_or_role_are_not_encoders(fleet, ec2, settings):
    [ours] = fleet.launch(1)
    other_cluster = EC2Fleet(ec2, dataclasses.replace(settings, cluster_name=unique_name("other")))
    [theirs] = other_cluster.launch(1)
    feeder = ec2.run_instances(
        ImageId=settings.ec2_ami_id, MinCount=1, MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [
            {"Key": "cluster", "Value": settings.cluster_name},
            {"Key": "role", "Value": "feeder"}]}])["Instances"][0]["InstanceId"]
    try:
        assert [encoder.id for encoder in fleet.list_encoders()] == [ours]

        fleet.stop([theirs, feeder])  # not this fleet's encoders: left alone
        assert _instance(ec2, theirs)["State"]["Name"] == "running"
        assert _instance(ec2, feeder)["State"]["Name"] == "running"
    finally:
        ec2.terminate_instances(InstanceIds=[theirs, feeder])


def test_stopped_encoders_are_terminated_and_leave_the_list(fleet, ec2):
    first, second = fleet.launch(2)

    fleet.stop([first, "i-0123456789abcdef0"])  # an unknown id is ignored

    assert [encoder.id for encoder in fleet.list_encoders()] == [second]
    assert _instance(ec2, first)["State"]["Name"] == "terminated"
    fleet.stop([second])
    assert fleet.list_encoders() == []


def test_spot_setting_launches_spot_instances(ec2, settings):
    spot_fleet = EC2Fleet(ec2, dataclasses.replace(settings, ec2_spot=True))
    [instance_id] = spot_fleet.launch(1)
    try:
        assert _instance(ec2, instance_id)["InstanceLifecycle"] == "spot"
    finally:
        spot_fleet.stop([instance_id])


def test_launch_without_an_instance_profile_is_refused_before_any_instance_starts(
        ec2, settings):
    keyless = EC2Fleet(ec2, dataclasses.replace(settings, ec2_instance_profile=""))
    with pytest.raises(ConfigError, match="ec2_instance_profile"):
        keyless.launch(1)
    assert keyless.list_encoders() == []


def test_unknown_security_group_name_is_a_config_error(ec2, settings):
    misnamed = EC2Fleet(ec2, dataclasses.replace(
        settings, ec2_security_groups=(unique_name("no-such-group"),)))
    with pytest.raises(ConfigError, match="ec2_security_groups"):
        misnamed.launch(1)
    assert misnamed.list_encoders() == []


def test_user_data_is_built_from_an_allow_list_of_settings():
    awkward_name = 'quote" back\\slash tab\t kódoló 😀'
    settings = Settings(backend="aws", api_token="feeder-only", cluster_name=awkward_name,
                        ec2_security_groups=("a", "b"))
    cloud_config = yaml.safe_load(encoder_user_data(settings))
    nomconf = tomllib.loads(cloud_config["write_files"][0]["content"])

    assert nomconf["cluster_name"] == awkward_name
    assert "feeder-only" not in encoder_user_data(settings)
    assert not {"api_token", "ec2_security_groups", "ec2_instance_profile",
                "aws_endpoint_url", "file_roots"} & set(nomconf)


def test_encoders_get_the_feeders_upload_and_sprite_settings():
    settings = Settings(backend="aws", s3_upload_parallel_requests=3, sprite_interval_s=5.0,
                        sprite_columns=8)
    cloud_config = yaml.safe_load(encoder_user_data(settings))
    nomconf = tomllib.loads(cloud_config["write_files"][0]["content"])
    assert nomconf["s3_upload_parallel_requests"] == 3
    assert (nomconf["sprite_interval_s"], nomconf["sprite_columns"]) == (5.0, 8)
    assert nomconf["sprite_tile_width_px"] == Settings().sprite_tile_width_px


def test_without_capacity_launches_fall_back_along_types_subnets_then_on_demand(
        moto_server, ec2, settings, network):
    from core.aws import client
    from tests.fixtures.fault_proxy import FaultProxy

    second_subnet = ec2.describe_subnets(
        Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"][1]["SubnetId"]
    wanted = dataclasses.replace(
        settings, ec2_spot=True, ec2_instance_types=("c7i.large", "m7i.large"),
        ec2_subnet_ids=(network["subnet"], second_subnet))
    with FaultProxy(moto_server.endpoint_url) as proxy:
        through = client(Settings(backend="aws", aws_endpoint_url=proxy.url), "ec2",
                         max_attempts=2)
        fleet = EC2Fleet(through, wanted)
        try:
            proxy.no_capacity = {"spot"}  # no Spot capacity anywhere: on-demand
            [on_demand] = fleet.launch(1)
            proxy.no_capacity = {"c7i.large"}  # the first type is out: the second
            [second_type] = fleet.launch(1)
            proxy.no_capacity = {"c7i.large", "m7i.large"}  # nothing left at all
            with pytest.raises(BackendError):
                fleet.launch(1)
        finally:
            through.close()
            ec2.terminate_instances(InstanceIds=[e.id for e in fleet.list_encoders()]
                                    or ["i-0123456789abcdef0"])
    assert "InstanceLifecycle" not in _instance(ec2, on_demand)
    assert _instance(ec2, on_demand)["InstanceType"] == "c7i.large"
    assert _instance(ec2, second_type)["InstanceType"] == "m7i.large"
    assert _instance(ec2, second_type)["InstanceLifecycle"] == "spot"
    assert proxy.faults[("ec2", "no-capacity")] >= 4
