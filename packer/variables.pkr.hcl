// Inputs of the encoder AMI build. `fab build-ami` sets them from its
// options; by hand: packer build -var wheelhouse_dir=DIR [-var region=...] packer/

variable "region" {
  type        = string
  default     = "us-east-1"
  description = "AWS region the AMI is built in (and registered in)."
}

variable "instance_type" {
  type        = string
  default     = "t3.medium"
  description = "Instance type of the temporary build machine (x86_64, like the base image)."
}

variable "ami_name" {
  type        = string
  default     = "media-nommer-encoder"
  description = "Name prefix of the AMI: <ami_name>-<project_version>-<ami_version>."
}

variable "ami_version" {
  type        = string
  default     = ""
  description = "Version of this image; empty means a UTC timestamp (YYYYMMDDhhmmss)."
}

variable "project_version" {
  type        = string
  default     = "0.1.0"
  description = "Version of media-nommer in the wheelhouse; recorded in the AMI's name and tags."
}

variable "wheelhouse_dir" {
  type        = string
  description = "Folder of wheels (media-nommer and every dependency) for the base image's Python; `fab wheelhouse` makes one."
}

variable "subnet_id" {
  type        = string
  default     = ""
  description = "Subnet of the build machine; empty means the default VPC."
}

variable "root_volume_gb" {
  type        = number
  default     = 30
  description = "Root volume of encoders launched from the AMI: sources and outputs are staged there while encoding."
}

variable "ami_regions" {
  type        = list(string)
  default     = []
  description = "Further regions the AMI is copied to (besides region)."
}

variable "ssh_source_cidrs" {
  type        = list(string)
  default     = ["0.0.0.0/0"]
  description = "Addresses allowed to reach the build machine over SSH (temporary_security_group_source_cidrs); set your own, e.g. [\"203.0.113.7/32\"]."
}

variable "manifest_path" {
  type        = string
  default     = "packer-manifest.json"
  description = "Where the manifest post-processor writes the new AMI id."
}

variable "build_id" {
  type        = string
  default     = ""
  description = "Tag value that marks this build's temporary machine; `fab build-ami` finds it by it to require IMDSv2 on it."
}
