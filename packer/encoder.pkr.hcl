// The public encoder AMI: Debian 12 with media-nommer installed in a
// virtualenv and supervisord running a `nommerd` program that waits for the
// instance's user data (core/fleets/ec2.py) to write its settings and start it.
//
// Written for Packer 1.6.6 (Debian's packer, which CI validates with) and
// current Packer alike: nothing here needs `packer init`. A current Packer
// needs the Amazon plugin installed once (see docs/provisioning.md).

locals {
  ami_version = var.ami_version != "" ? var.ami_version : formatdate("YYYYMMDDhhmmss", timestamp())
  upload_dir  = "/tmp/media-nommer"
}

source "amazon-ebs" "encoder" {
  region          = var.region
  instance_type   = var.instance_type
  subnet_id       = var.subnet_id
  ami_name        = "${var.ami_name}-${var.project_version}-${local.ami_version}"
  ami_description = "media-nommer ${var.project_version} encoder (nommerd under supervisord), Debian 12"
  ami_regions     = var.ami_regions
  // Never public here: `fab build-ami --public` shares the image only after
  // it is marked IMDSv2-only (see provisioning/ami.py).

  // The build machine is reachable over SSH from these addresses only.
  temporary_security_group_source_cidrs = var.ssh_source_cidrs

  // Debian 12 (bookworm), published by Debian's own AWS account. Its
  // python3 is 3.11, which the wheelhouse is built for.
  source_ami_filter {
    filters = {
      name                = "debian-12-amd64-*"
      architecture        = "x86_64"
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = ["136693071363"]
    most_recent = true
  }
  ssh_username = "admin"

  // IMDSv2: Packer 1.6.6 knows neither `imds_support` nor
  // `metadata_options`. `fab build-ami` requires IMDSv2 on the build
  // machine as soon as it runs (it finds it by the build_id run tag), and
  // with a current Packer `metadata_options` can do it at launch (see
  // docs/provisioning.md). The image itself is marked imdsSupport=v2.0 by `fab build-ami`
  // (ModifyImageAttribute) before it is shared; see docs/provisioning.md
  // for a hand build.

  launch_block_device_mappings {
    device_name = "/dev/xvda"
    volume_size = var.root_volume_gb
    volume_type = "gp3"
    // gp3's baseline, free of charge (Packer 1.6.6 insists on both values).
    iops                  = 3000
    throughput            = 125
    delete_on_termination = true
  }

  tags = {
    Name            = "${var.ami_name}-${var.project_version}-${local.ami_version}"
    role            = "encoder"
    project         = "media-nommer"
    project_version = var.project_version
    ami_version     = local.ami_version
    source_ami      = "{{ .SourceAMI }}"
    source_ami_name = "{{ .SourceAMIName }}"
  }
  snapshot_tags = {
    Name            = "${var.ami_name}-${var.project_version}-${local.ami_version}"
    project         = "media-nommer"
    project_version = var.project_version
    ami_version     = local.ami_version
  }
  // The temporary build machine and its volume, so they are recognised
  // (and billed to the project) while the build runs.
  run_tags = {
    Name                 = "media-nommer-ami-build"
    project              = "media-nommer"
    "media-nommer-build" = var.build_id
  }
  run_volume_tags = {
    Name    = "media-nommer-ami-build"
    project = "media-nommer"
  }
}

build {
  sources = ["source.amazon-ebs.encoder"]

  provisioner "shell" {
    inline = ["mkdir -p ${local.upload_dir}/wheelhouse"]
  }

  // A trailing slash uploads the folder's contents, not the folder.
  provisioner "file" {
    source      = "${var.wheelhouse_dir}/"
    destination = "${local.upload_dir}/wheelhouse"
  }

  provisioner "shell" {
    script           = "${path.root}/scripts/install-encoder.sh"
    environment_vars = ["ENCODER_WHEELHOUSE=${local.upload_dir}/wheelhouse"]
    execute_command  = "chmod +x {{ .Path }}; sudo env {{ .Vars }} {{ .Path }}"
  }

  provisioner "shell" {
    script          = "${path.root}/scripts/cleanup.sh"
    execute_command = "chmod +x {{ .Path }}; sudo env {{ .Vars }} {{ .Path }}"
  }

  post-processor "manifest" {
    output     = var.manifest_path
    strip_path = true
    custom_data = {
      project_version = var.project_version
      ami_version     = local.ami_version
    }
  }
}
