"""The encoder AMI's Packer template and scripts, checked by the real tools
(`packer validate` with Debian's packer 1.6.6 in CI, shellcheck), and what
`fab build-ami` does before it ever reaches AWS."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from provisioning.ami import AmiRequest, ami_from_manifest, packer_variables
from provisioning.errors import ProvisioningError

pytestmark = pytest.mark.timeout(120)

PROJECT_DIR = Path(__file__).resolve().parents[2]
PACKER_DIR = PROJECT_DIR / "packer"
SCRIPTS = sorted((PACKER_DIR / "scripts").glob("*.sh"))
FAB = Path(sys.executable).parent / "fab"
PACKER = shutil.which("packer")
SHELLCHECK = shutil.which("shellcheck")

needs_packer = pytest.mark.skipif(
    PACKER is None, reason="packer is not installed (.ci/run installs Debian's packer)")


def packer(*arguments: str) -> subprocess.CompletedProcess:
    # Packer writes its plugin cache and checkpoint state under HOME; the
    # checkpoint call home would try the network.
    env = dict(os.environ, CHECKPOINT_DISABLE="1")
    return subprocess.run([PACKER, *arguments], cwd=PACKER_DIR, env=env, capture_output=True,
                          text=True, timeout=90)


def fake_wheelhouse(folder: Path) -> Path:
    """A folder named like a wheelhouse: `packer validate` only checks that
    the folder exists, build-ami reads the version from the wheel's name."""
    folder.mkdir()
    (folder / "media_nommer-0.1.0-py3-none-any.whl").write_bytes(b"")
    return folder


@needs_packer
def test_template_passes_packer_validate(tmp_path):
    wheels = fake_wheelhouse(tmp_path / "wheelhouse")
    done = packer("validate", f"-var=wheelhouse_dir={wheels}", ".")
    assert done.returncode == 0, done.stdout + done.stderr


@needs_packer
def test_every_variable_build_ami_passes_is_declared_with_its_type(tmp_path):
    wheels = fake_wheelhouse(tmp_path / "wheelhouse")
    request = AmiRequest(region="eu-west-1", instance_type="c6i.large", ami_name="encoder",
                         ami_version="7", subnet_id="subnet-0123", public=True,
                         copy_regions=("us-west-2", "ap-south-1"),
                         ssh_source_cidrs=("203.0.113.7/32",))
    variables = packer_variables(request, wheels, tmp_path / "manifest.json")
    assert set(variables) >= {"region", "wheelhouse_dir", "manifest_path", "project_version",
                              "ami_regions", "ssh_source_cidrs", "instance_type", "ami_name",
                              "ami_version", "subnet_id"}
    done = packer("validate", *[f"-var={key}={value}" for key, value in variables.items()], ".")
    assert done.returncode == 0, done.stdout + done.stderr


@needs_packer
def test_template_without_a_wheelhouse_does_not_validate(tmp_path):
    done = packer("validate", f"-var=wheelhouse_dir={tmp_path / 'missing'}", ".")
    assert done.returncode != 0
    assert "missing" in done.stdout + done.stderr


@needs_packer
def test_template_is_packer_formatted():
    done = packer("fmt", "-check", ".")
    assert done.returncode == 0, f"run `packer fmt packer/`: {done.stdout}"


@pytest.mark.skipif(SHELLCHECK is None,
                    reason="shellcheck is not installed (.ci/run installs it)")
def test_provisioning_scripts_pass_shellcheck():
    assert SCRIPTS, "no scripts in packer/scripts"
    done = subprocess.run([SHELLCHECK, "--shell=bash", *map(str, SCRIPTS)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout


def _fab_build_ami(tmp_path: Path, path: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AWS_", "NOMMER_"))}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), PATH=path, CHECKPOINT_DISABLE="1",
               AWS_SHARED_CREDENTIALS_FILE=str(home / "no-credentials"),
               AWS_CONFIG_FILE=str(home / "no-config"),
               # No instance metadata service here; do not wait for one.
               AWS_EC2_METADATA_DISABLED="true")
    # Run from an empty folder (no ./nomconf.toml); the fabfile is the project's.
    return subprocess.run([str(FAB), "--search-root", str(PROJECT_DIR), "build-ami",
                           "--region", "eu-west-1"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=90,
                          stdin=subprocess.DEVNULL)


def test_build_ami_without_packer_says_how_to_get_it(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    done = _fab_build_ami(tmp_path, str(empty))
    assert done.returncode == 1
    assert "build-ami failed: cannot run packer on PATH" in done.stderr
    assert "apt-get install packer" in done.stderr
    assert "packer plugins install github.com/hashicorp/amazon" in done.stderr


@needs_packer
def test_build_ami_without_aws_credentials_says_so_before_building(tmp_path):
    done = _fab_build_ami(tmp_path, str(Path(PACKER).parent))
    assert done.returncode == 1
    assert "build-ami failed: no AWS credentials found" in done.stderr
    assert "building the encoder AMI" not in done.stdout


def test_manifest_names_the_ami_of_the_last_run(tmp_path):
    manifest = tmp_path / "packer-manifest.json"
    manifest.write_text(json.dumps({
        "builds": [
            {"name": "encoder", "builder_type": "amazon-ebs", "packer_run_uuid": "run-1",
             "artifact_id": "eu-west-1:ami-0old"},
            {"name": "encoder", "builder_type": "amazon-ebs", "packer_run_uuid": "run-2",
             "artifact_id": "us-east-1:ami-0other,eu-west-1:ami-0new"},
        ],
        "last_run_uuid": "run-2"}))
    assert ami_from_manifest(manifest, "eu-west-1") == "ami-0new"
    with pytest.raises(ProvisioningError, match="no AMI in ap-south-1"):
        ami_from_manifest(manifest, "ap-south-1")
    with pytest.raises(ProvisioningError, match="no readable manifest"):
        ami_from_manifest(tmp_path / "absent.json", "eu-west-1")


def test_template_never_shares_the_image_itself():
    """Sharing is build-ami's last step, after imdsSupport=v2.0 is set."""
    template = (PACKER_DIR / "encoder.pkr.hcl").read_text()
    assert "ami_groups" not in template and "ami_users" not in template
    for needed in ("snapshot_tags", "run_tags", "{{ .SourceAMI }}", "ami_regions",
                   "temporary_security_group_source_cidrs"):
        assert needed in template, needed


def _recording_ec2(monkeypatch, block_state: str):
    """EC2 for build-ami's publishing, answered by botocore's Stubber (moto
    has no image block public access yet), which refuses calls out of the
    order queued here; returns the stubber."""
    import boto3
    from botocore.stub import Stubber

    from provisioning import ami as ami_module

    ec2 = boto3.client("ec2", region_name="eu-west-1", aws_access_key_id="x",
                       aws_secret_access_key="x")
    stubber = Stubber(ec2)
    stubber.add_response("modify_image_attribute", {},
                         {"ImageId": "ami-0new", "Attribute": "imdsSupport", "Value": "v2.0"})
    stubber.add_response("get_image_block_public_access_state",
                         {"ImageBlockPublicAccessState": block_state})
    if block_state == "unblocked":
        stubber.add_response("modify_image_attribute", {},
                             {"ImageId": "ami-0new",
                              "LaunchPermission": {"Add": [{"Group": "all"}]}})
    stubber.activate()
    monkeypatch.setattr(ami_module, "client", lambda settings, service: ec2)
    return stubber


def test_a_public_image_is_marked_imdsv2_only_before_it_is_shared(monkeypatch):
    from core.settings import Settings
    from provisioning.ami import publish

    stubber = _recording_ec2(monkeypatch, "unblocked")
    publish({"eu-west-1": "ami-0new"}, Settings(), public=True)
    stubber.assert_no_pending_responses()


def test_a_blocked_account_leaves_the_image_private_and_says_how_to_share(monkeypatch):
    from core.settings import Settings
    from provisioning.ami import publish

    stubber = _recording_ec2(monkeypatch, "block-new-sharing")
    with pytest.raises(ProvisioningError, match="stays private: this account blocks public"):
        publish({"eu-west-1": "ami-0new"}, Settings(), public=True)
    stubber.assert_no_pending_responses()  # and no launch permission was asked for


def test_the_build_machine_of_this_build_is_made_to_require_imdsv2(moto_server):
    import boto3

    from provisioning.ami import BUILD_TAG, require_imdsv2_on_build_machine

    ec2 = boto3.client("ec2", endpoint_url=moto_server.endpoint_url, region_name="eu-west-1",
                       aws_access_key_id="AKIAPACKERTEST000001", aws_secret_access_key="x")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]

    def launch(build_id: str) -> str:
        return ec2.run_instances(
            ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.micro",
            TagSpecifications=[{"ResourceType": "instance",
                                "Tags": [{"Key": BUILD_TAG, "Value": build_id}]}],
        )["Instances"][0]["InstanceId"]

    ours, theirs = launch("build-ours"), launch("build-theirs")
    assert require_imdsv2_on_build_machine(ec2, "build-ours") == [ours]
    tokens = {instance["InstanceId"]: instance["MetadataOptions"].get("HttpTokens")
              for reservation in ec2.describe_instances(InstanceIds=[ours, theirs])["Reservations"]
              for instance in reservation["Instances"]}
    assert tokens[ours] == "required" and tokens[theirs] != "required"
    assert require_imdsv2_on_build_machine(ec2, "build-ours") == []  # once is enough
    ec2.terminate_instances(InstanceIds=[ours, theirs])
