"""The AWS fleet: encoder machines are EC2 instances launched from the encoder AMI.

Instances are found by their tags (cluster=<settings.cluster_name>,
role=encoder), never by AMI id, so instances of an older AMI stay in the
fleet after a new AMI is configured. They get their AWS access from the
instance profile (settings.ec2_instance_profile): no key is ever written
into user data. IMDSv2 is required on every instance.

What the encoder AMI must provide (the packer build does): supervisord
started at boot, with a `nommerd` program that has autostart=false and
NOMMER_CONFIG=/etc/media-nommer/nomconf.toml in its environment. The user
data built here writes that file, then starts the program.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import uuid

import botocore.exceptions

from core.aws import aws_errors, error_code
from core.errors import BackendError, ConfigError
from core.interfaces import Encoder, Fleet
from core.settings import Settings
from core.toml_text import toml_value

log = logging.getLogger(__name__)

NOMCONF_PATH = "/etc/media-nommer/nomconf.toml"
ENCODER_ROLE = "encoder"

# supervisord may still be starting when cloud-init's last stage runs, so
# the start is tried for about two minutes before cloud-init reports failure.
START_NOMMERD_SCRIPT = (
    'for attempt in $(seq 60); do supervisorctl start "nommerd:*" && exit 0; sleep 2; done; '
    "exit 1")

# What an encoder needs to join the cluster and behave like the feeder
# expects. An allow-list, so a new (possibly secret) setting such as
# api_token never reaches user data by accident.
ENCODER_SETTING_NAMES = (
    "aws_region", "aws_store", "cluster_name",
    "sqs_new_job_queue_name", "sqs_job_state_change_queue_name",
    "simpledb_job_state_domain", "simpledb_ec2_nommer_state_domain",
    "visibility_timeout_s", "max_receives", "queue_wait_s",
    "max_encoding_jobs_per_ec2_instance", "nommerd_max_inactivity",
    "nommerd_terminate_when_idle", "nommerd_heartbeat_interval_s", "job_lease_s",
    "progress_interval_ms", "max_source_bytes",
    "s3_upload_parallel_requests",
)
# Table names of the DynamoDB store, whatever they are called; how the
# encoders lay out sprite sheets.
ENCODER_SETTING_PREFIXES = ("dynamodb_", "sprite_")

# Refusals of RunInstances that another instance type, subnet or market may
# get past.
_NO_CAPACITY_CODES = frozenset({
    "InsufficientInstanceCapacity", "InstanceLimitExceeded", "VcpuLimitExceeded",
    "MaxSpotInstanceCountExceeded", "SpotMaxPriceTooLow", "InsufficientCapacity",
    "Unsupported",
})

# EC2 instance states -> Encoder.state. Terminated instances are gone.
_STATE_BY_EC2_STATE = {
    "pending": "pending",
    "running": "running",
    "stopping": "stopping",
    "shutting-down": "stopping",
    "stopped": "stopped",
}


def encoder_settings(settings: Settings) -> dict:
    """The settings an encoder instance runs with: backend "aws" plus the
    allow-listed cluster settings. Never credentials or tokens."""
    chosen = {"backend": "aws"}
    for field in dataclasses.fields(settings):
        if field.name in ENCODER_SETTING_NAMES or field.name.startswith(ENCODER_SETTING_PREFIXES):
            chosen[field.name] = getattr(settings, field.name)
    # Only an emulated or private endpoint needs passing on; on AWS it is empty.
    if settings.aws_endpoint_url:
        chosen["aws_endpoint_url"] = settings.aws_endpoint_url
    return chosen


def encoder_nomconf(settings: Settings) -> str:
    """The nomconf.toml text of an encoder (see encoder_settings)."""
    lines = ["# Written at boot by the instance's user data; see core/fleets/ec2.py."]
    try:
        lines += [f"{key} = {toml_value(key, value)}"
                  for key, value in encoder_settings(settings).items()]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return "\n".join(lines) + "\n"


def encoder_user_data(settings: Settings) -> str:
    """cloud-init user data: write NOMCONF_PATH, then start nommerd via supervisord.

    A #cloud-config document in JSON form (JSON is YAML, and needs no
    hand-written escaping). It holds no credentials.
    """
    document = {
        "write_files": [{
            "path": NOMCONF_PATH,
            "owner": "root:root",
            "permissions": "0644",
            "content": encoder_nomconf(settings),
        }],
        "runcmd": [["sh", "-c", START_NOMMERD_SCRIPT]],
    }
    return "#cloud-config\n" + json.dumps(document, indent=2, ensure_ascii=False) + "\n"


class _NoCapacity(Exception):
    """EC2 has no capacity for one launch option (type, subnet, market)."""

    def __init__(self, option: str, code: str):
        super().__init__(code)
        self.option = option


class EC2Fleet(Fleet):
    """Encoder instances of cluster settings.cluster_name, reached through the
    boto3 EC2 `ec2_client`. Every method raises BackendError when EC2 fails
    after botocore's retries; `launch` raises ConfigError when a needed
    setting is missing."""

    def __init__(self, ec2_client, settings: Settings):
        self._ec2 = ec2_client
        self.settings = settings

    @classmethod
    def from_settings(cls, settings: Settings) -> "EC2Fleet":
        from core.aws import client

        return cls(client(settings, "ec2"), settings)

    @property
    def _tag_filters(self) -> list[dict]:
        return [{"Name": "tag:cluster", "Values": [self.settings.cluster_name]},
                {"Name": "tag:role", "Values": [ENCODER_ROLE]}]

    def list_encoders(self) -> list[Encoder]:
        """Encoder instances of this cluster that are not terminated, from any AMI."""
        return [encoder for encoder, _ in self._describe()]

    def launch(self, count: int) -> list[str]:
        """Run up to `count` encoder instances; returns their instance ids.

        Tries, in order, each market (Spot, then on-demand if
        ec2_spot_fallback_on_demand; or on-demand alone), each instance type
        (ec2_instance_types, else ec2_instance_type) and each subnet
        (ec2_subnet_ids, else ec2_subnet_id or the default VPC), taking as
        many instances as EC2 has at each before moving on. Raises
        BackendError if EC2 fails, or has no capacity for any option, and
        nothing was launched.
        """
        launched: list[str] = []
        if count < 1:
            return launched
        refused = []
        for spot, instance_type, subnet in self._launch_options():
            wanted = count - len(launched)
            if wanted == 0:
                break
            try:
                launched += self._run(wanted, spot, instance_type, subnet)
            except _NoCapacity as exc:
                log.info("no capacity for %s: %s; trying the next option", exc.option, exc)
                refused.append(exc.option)
            except BackendError:
                if not launched:
                    raise
                log.exception("launching more failed; keeping the %d launched", len(launched))
                break
        if not launched and refused:
            raise BackendError(f"no EC2 capacity for any launch option ({'; '.join(refused)})")
        return launched

    def _launch_options(self) -> list[tuple[bool, str, str]]:
        settings = self.settings
        markets = [True, False] if settings.ec2_spot and settings.ec2_spot_fallback_on_demand \
            else [settings.ec2_spot]
        types = list(settings.ec2_instance_types) or [settings.ec2_instance_type]
        subnets = list(settings.ec2_subnet_ids) or [settings.ec2_subnet_id]
        return [(spot, instance_type, subnet) for spot in markets for instance_type in types
                for subnet in subnets]

    def _run(self, count: int, spot: bool, instance_type: str, subnet: str) -> list[str]:
        """RunInstances of 1..`count` instances of one option. Raises _NoCapacity."""
        # A ClientToken makes RunInstances idempotent: botocore's resend of a
        # launch whose answer was lost returns the same instances, not more.
        request = dict(self._run_request(count, subnet), InstanceType=instance_type)
        if spot:
            request["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {"SpotInstanceType": "one-time",
                                "InstanceInterruptionBehavior": "terminate"}}
        option = f"{'spot' if spot else 'on-demand'} {instance_type} in {subnet or 'default VPC'}"
        # All at once first; short of capacity, as many as EC2 has (MinCount=1).
        for min_count in sorted({count, 1}, reverse=True):
            with aws_errors(f"launch {count} encoder instances ({option})"):
                try:
                    reply = self._ec2.run_instances(
                        **dict(request, MinCount=min_count, ClientToken=uuid.uuid4().hex))
                except botocore.exceptions.ClientError as exc:
                    if error_code(exc) not in _NO_CAPACITY_CODES:
                        raise
                    continue
            return [instance["InstanceId"] for instance in reply.get("Instances", [])]
        raise _NoCapacity(option, "no capacity")

    def stop(self, encoder_ids: list[str]) -> None:
        """Terminate these encoder instances. Ids that are not encoders of this
        cluster, or are already gone, are ignored.

        Termination shuts the instance down cleanly: supervisord gets SIGTERM
        and passes it to nommerd, which releases its jobs before it exits.
        """
        if not encoder_ids:
            return
        ours = [encoder.id for encoder, _ in self._describe(encoder_ids)]
        if not ours:
            return
        with aws_errors(f"terminate encoder instances {', '.join(ours)}"):
            self._ec2.terminate_instances(InstanceIds=ours)

    def _describe(self, instance_ids: list[str] | None = None) -> list[tuple[Encoder, dict]]:
        # Ids go in as a filter, not InstanceIds, so an unknown id is simply
        # not matched instead of failing the whole call.
        filters = self._tag_filters + [
            {"Name": "instance-state-name", "Values": sorted(_STATE_BY_EC2_STATE)}]
        if instance_ids is not None:
            filters.append({"Name": "instance-id", "Values": list(instance_ids)})
        found = []
        with aws_errors("list encoder instances"):
            for page in self._ec2.get_paginator("describe_instances").paginate(Filters=filters):
                for reservation in page.get("Reservations", []):
                    for instance in reservation.get("Instances", []):
                        state = _STATE_BY_EC2_STATE.get(instance["State"]["Name"])
                        if state is None:
                            continue
                        found.append((Encoder(id=instance["InstanceId"], state=state,
                                              launched_at=instance.get("LaunchTime")), instance))
        return found

    def _run_request(self, count: int, subnet: str) -> dict:
        settings = self.settings
        if not settings.ec2_ami_id:
            raise ConfigError("setting 'ec2_ami_id' is empty: encoders are launched from that AMI")
        if not settings.ec2_instance_profile:
            raise ConfigError("setting 'ec2_instance_profile' is empty: encoders get their AWS "
                              "access from that instance profile (no keys are passed to them)")
        tags = [{"Key": "cluster", "Value": settings.cluster_name},
                {"Key": "role", "Value": ENCODER_ROLE},
                {"Key": "Name", "Value": f"{settings.cluster_name}-{ENCODER_ROLE}"}]
        profile = settings.ec2_instance_profile
        request = {
            "ImageId": settings.ec2_ami_id,
            "MinCount": count,
            "MaxCount": count,
            "UserData": encoder_user_data(settings),  # boto3 base64-encodes it
            "IamInstanceProfile": {"Arn": profile} if profile.startswith("arn:") else {"Name": profile},
            # Hop limit 1: the token cannot be fetched through a forwarded hop.
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled",
                                "HttpPutResponseHopLimit": 1},
            # An encoder that shuts itself down must stop costing money.
            "InstanceInitiatedShutdownBehavior": "terminate",
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags},
                                  {"ResourceType": "volume", "Tags": tags}],
        }
        if settings.ec2_key_name:
            request["KeyName"] = settings.ec2_key_name
        if subnet:
            request["SubnetId"] = subnet
        request.update(self._security_groups(subnet))
        return request

    def _security_groups(self, subnet: str) -> dict:
        """SecurityGroupIds for RunInstances. Names are resolved to ids in the
        subnet's VPC, because EC2 takes group names only in the default VPC."""
        groups = list(self.settings.ec2_security_groups)
        ids = [group for group in groups if group.startswith("sg-")]
        names = [group for group in groups if not group.startswith("sg-")]
        if not names:
            return {"SecurityGroupIds": ids} if ids else {}
        if not subnet:
            return {"SecurityGroupIds": ids, "SecurityGroups": names} if ids else {"SecurityGroups": names}
        setting = "ec2_subnet_ids" if self.settings.ec2_subnet_ids else "ec2_subnet_id"
        with aws_errors(f"find subnet {subnet}"):
            try:
                subnets = self._ec2.describe_subnets(SubnetIds=[subnet])["Subnets"]
            except botocore.exceptions.ClientError as exc:
                if error_code(exc) != "InvalidSubnetID.NotFound":
                    raise
                subnets = []
        if not subnets:
            raise ConfigError(f"setting '{setting}': subnet {subnet} does not exist")
        with aws_errors("find security groups"):
            found = self._ec2.describe_security_groups(Filters=[
                {"Name": "vpc-id", "Values": [subnets[0]["VpcId"]]},
                {"Name": "group-name", "Values": names}])["SecurityGroups"]
        by_name = {group["GroupName"]: group["GroupId"] for group in found}
        missing = [name for name in names if name not in by_name]
        if missing:
            raise ConfigError(f"setting 'ec2_security_groups': no group named "
                              f"{', '.join(missing)} in the VPC of subnet {subnet}")
        return {"SecurityGroupIds": ids + [by_name[name] for name in names]}
