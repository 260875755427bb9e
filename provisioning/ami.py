"""`fab build-ami`: build the encoder AMI with Packer (through packer-py) and
say how to use it.

Steps: find packer, check that AWS credentials exist (both before anything
slow), build the wheelhouse for the AMI's Python (wheelhouse.ENCODER_TARGET),
run `packer build packer/` with the request as -var values, read the new
AMI ids from the manifest, and for each region's copy: mark it
imdsSupport=v2.0 (Packer 1.6.6 cannot), and only then, with --public and
after checking that the account's block on public images allows it, grant
every account launch permission. A failure on the way leaves the image
private. Last, print the setting to put it in.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import threading
import uuid
from pathlib import Path

import boto3
import botocore.exceptions

from core.aws import aws_errors, client
from core.errors import BackendError
from core.settings import Settings
from provisioning.errors import ProvisioningError
from provisioning.wheelhouse import (ENCODER_TARGET, PROJECT_ROOT, build_wheelhouse,
                                     project_version)

TEMPLATE_DIR = PROJECT_ROOT / "packer"

# The tag that marks this build's temporary machine (the template's
# run_tags), so the watch below finds it and nothing else.
BUILD_TAG = "media-nommer-build"
BUILD_WATCH_INTERVAL_S = 3.0

INSTALL_PACKER_HINT = (
    "install it (Debian: apt-get install packer; a current Packer also needs "
    "`packer plugins install github.com/hashicorp/amazon`) or pass --packer PATH")


@dataclasses.dataclass(frozen=True)
class AmiRequest:
    """What to build; empty strings leave the template's defaults."""

    region: str
    instance_type: str = ""
    ami_name: str = ""
    ami_version: str = ""
    subnet_id: str = ""
    public: bool = False
    copy_regions: tuple[str, ...] = ()
    ssh_source_cidrs: tuple[str, ...] = ()


def find_packer(explicit: str | None) -> str:
    """The packer executable: `explicit`, else packer on PATH. Raises
    ProvisioningError saying how to get one."""
    found = shutil.which(explicit or "packer")
    if found is None:
        where = explicit or "packer on PATH"
        raise ProvisioningError(f"cannot run {where}: {INSTALL_PACKER_HINT}")
    return found


def check_credentials(region: str) -> None:
    """Raise ProvisioningError unless boto3's credential chain finds some:
    Packer reads the same chain (environment, ~/.aws, an instance profile)."""
    try:
        credentials = boto3.session.Session(region_name=region).get_credentials()
    except botocore.exceptions.BotoCoreError as exc:
        raise ProvisioningError(f"AWS credentials are unusable: {exc}") from None
    if credentials is None:
        raise ProvisioningError(
            "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "or AWS_PROFILE with ~/.aws/credentials, or run on an instance with a role "
            "that may create AMIs")


def packer_variables(request: AmiRequest, wheelhouse: Path, manifest: Path,
                     build_id: str = "") -> dict[str, str]:
    """-var values for packer/variables.pkr.hcl."""
    variables = {
        "region": request.region,
        "build_id": build_id,
        "wheelhouse_dir": str(Path(wheelhouse).resolve()),
        "manifest_path": str(Path(manifest).resolve()),
        "project_version": project_version(wheelhouse),
        "ami_regions": json.dumps(list(request.copy_regions)),
    }
    if request.ssh_source_cidrs:
        variables["ssh_source_cidrs"] = json.dumps(list(request.ssh_source_cidrs))
    optional = {"instance_type": request.instance_type, "ami_name": request.ami_name,
                "ami_version": request.ami_version, "subnet_id": request.subnet_id}
    variables.update({key: value for key, value in optional.items() if value})
    return variables


def run_packer(packer: str, variables: dict[str, str]) -> None:
    """`packer build` of TEMPLATE_DIR, its output shown as it runs."""
    from packerpy import PackerExecutable

    # stdout/stderr None: Packer writes straight to the terminal, so a
    # build of many minutes shows its progress.
    executable = PackerExecutable(executable_path=packer, machine_readable=False,
                                  config={"stdout": None, "stderr": None})
    try:
        status, _, _ = executable.build(str(TEMPLATE_DIR), var=variables, color="false")
    except OSError as exc:
        raise ProvisioningError(f"cannot run {packer}: {exc}") from None
    if status != 0:
        raise ProvisioningError(f"packer build failed (exit status {status}); "
                                "its output above says why")


def amis_from_manifest(manifest: Path) -> dict[str, str]:
    """{region: AMI id} of the newest build in a Packer manifest. Raises
    ProvisioningError when there is none."""
    try:
        document = json.loads(Path(manifest).read_text())
    except (OSError, ValueError) as exc:
        raise ProvisioningError(f"packer wrote no readable manifest {manifest}: {exc}") from None
    builds = [build for build in document.get("builds", [])
              if build.get("packer_run_uuid") == document.get("last_run_uuid")]
    if not builds:
        raise ProvisioningError(f"the manifest {manifest} names no build of the last run")
    # "region:ami-id[,region:ami-id...]", one per region the AMI went to.
    amis = {}
    for artifact in builds[-1].get("artifact_id", "").split(","):
        region, _, ami = artifact.partition(":")
        if ami.startswith("ami-"):
            amis[region] = ami
    return amis


def require_imdsv2_on_build_machine(ec2, build_id: str) -> list[str]:
    """Require IMDSv2 on this build's machines that do not yet; returns the
    instance ids changed. Packer 1.6.6 cannot launch the machine that way
    (it has no metadata_options), so it is changed as soon as it exists."""
    found = ec2.describe_instances(Filters=[
        {"Name": f"tag:{BUILD_TAG}", "Values": [build_id]},
        {"Name": "instance-state-name", "Values": ["pending", "running"]}])
    changed = []
    for reservation in found["Reservations"]:
        for instance in reservation["Instances"]:
            if instance.get("MetadataOptions", {}).get("HttpTokens") == "required":
                continue
            ec2.modify_instance_metadata_options(InstanceId=instance["InstanceId"],
                                                 HttpTokens="required", HttpEndpoint="enabled")
            changed.append(instance["InstanceId"])
    return changed


class BuildMachineWatch(threading.Thread):
    """While Packer runs: require IMDSv2 on the build machine once it is
    launched (a pending machine may refuse; the next look tries again)."""

    def __init__(self, region: str, build_id: str, settings: Settings):
        super().__init__(name="imdsv2-watch", daemon=True)
        self.ec2 = client(dataclasses.replace(settings, aws_region=region), "ec2")
        self.build_id = build_id
        self.changed: list[str] = []
        self.last_error = ""
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(BUILD_WATCH_INTERVAL_S):
            try:
                with aws_errors("require IMDSv2 on the build machine"):
                    self.changed += require_imdsv2_on_build_machine(self.ec2, self.build_id)
            except BackendError as exc:
                self.last_error = str(exc)

    def stop(self) -> None:
        self._stop.set()
        self.join(timeout=60)


def ami_from_manifest(manifest: Path, region: str) -> str:
    """The AMI id in `region` of the newest build in a Packer manifest."""
    ami = amis_from_manifest(manifest).get(region)
    if ami is None:
        raise ProvisioningError(f"the manifest {manifest} has no AMI in {region}")
    return ami


def require_imdsv2(region: str, ami: str, settings: Settings) -> None:
    """Mark the AMI imdsSupport=v2.0: instances launched from it require
    IMDSv2 whoever launches them. Raises ProvisioningError."""
    ec2 = client(dataclasses.replace(settings, aws_region=region), "ec2")
    try:
        with aws_errors(f"require IMDSv2 on {ami}"):
            ec2.modify_image_attribute(ImageId=ami, Attribute="imdsSupport", Value="v2.0")
    except BackendError as exc:
        raise ProvisioningError(
            f"{ami} is built, but IMDSv2 could not be required on it ({exc}); run "
            f"`aws ec2 modify-image-attribute --region {region} --image-id {ami} "
            "--imds-support v2.0`") from None


def make_public(region: str, ami: str, settings: Settings) -> None:
    """Grant every AWS account launch permission on `ami`, which must be
    marked IMDSv2-only already. Raises ProvisioningError, the image still
    private, when the account blocks public images."""
    ec2 = client(dataclasses.replace(settings, aws_region=region), "ec2")
    try:
        with aws_errors(f"read the block on public AMIs in {region}"):
            state = ec2.get_image_block_public_access_state()["ImageBlockPublicAccessState"]
        if state != "unblocked":
            raise ProvisioningError(
                f"{ami} is built and stays private: this account blocks public AMIs in "
                f"{region} ({state}); `aws ec2 disable-image-block-public-access --region "
                f"{region}` lifts the block, then `aws ec2 modify-image-attribute --region "
                f"{region} --image-id {ami} --launch-permission 'Add=[{{Group=all}}]'`")
        with aws_errors(f"make {ami} public"):
            ec2.modify_image_attribute(ImageId=ami,
                                       LaunchPermission={"Add": [{"Group": "all"}]})
    except BackendError as exc:
        raise ProvisioningError(f"{ami} is built and stays private: {exc}") from None


def publish(amis: dict[str, str], settings: Settings, public: bool) -> None:
    """IMDSv2 first, public launch permission after, region by region: an
    image is never public without imdsSupport=v2.0."""
    for region, ami in amis.items():
        require_imdsv2(region, ami, settings)
        if public:
            make_public(region, ami, settings)


def build_ami(request: AmiRequest, settings: Settings, scratch: Path,
              packer: str | None = None, wheelhouse: Path | None = None) -> str:
    """Build the encoder AMI; returns its id in request.region. Raises
    ProvisioningError."""
    packer_path = find_packer(packer)
    check_credentials(request.region)
    version = subprocess.run([packer_path, "version"], capture_output=True, text=True,
                             timeout=60, check=False).stdout.strip()
    print(f"building the encoder AMI in {request.region} with {version or packer_path}",
          flush=True)
    wheels = wheelhouse or build_wheelhouse(scratch / "wheelhouse", ENCODER_TARGET)
    manifest = scratch / "packer-manifest.json"
    build_id = uuid.uuid4().hex
    watch = BuildMachineWatch(request.region, build_id, settings)
    watch.start()
    try:
        run_packer(packer_path, packer_variables(request, wheels, manifest, build_id))
    finally:
        watch.stop()
    if not watch.changed:
        print(f"warning: IMDSv2 was not required on the build machine: "
              f"{watch.last_error or 'it was not found'}", flush=True)
    ami = ami_from_manifest(manifest, request.region)
    publish(amis_from_manifest(manifest), settings, request.public)
    return ami


def how_to_use(ami: str, region: str) -> str:
    return (f"AMI {ami} is ready in {region} (IMDSv2 required).\n"
            "Encoders are launched from it once the feeder's settings name it: in the\n"
            "nomconf.toml you deploy with, set\n\n"
            f"    ec2_ami_id = \"{ami}\"\n"
            f"    aws_region = \"{region}\"\n\n"
            f"(or NOMMER_EC2_AMI_ID={ami}), then run `fab -H FEEDER_HOST deploy`.\n"
            "Encoders already running keep their AMI until they stop; they are found by\n"
            "their tags, not by AMI id, so none is orphaned. If the feeder's IAM policy\n"
            f"names the AMI (ec2:RunInstances on image/...), add {ami} to it first\n"
            "(docs/provisioning.md, \"After a build\").")
