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
  ami_groups      = var.ami_public ? ["all"] : []

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
  // `metadata_options`, so the image is marked imdsSupport=v2.0 after the
  // build by `fab build-ami` (ModifyImageAttribute; see docs/provisioning.md
  // for a hand build). Encoders are launched with IMDSv2 required in any
  // case (core/fleets/ec2.py), and nommerd only speaks IMDSv2.

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
