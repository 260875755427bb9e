#!/usr/bin/env bash
# Last step of the AMI build: leave nothing of the build machine behind.
#
# cloud-init's state is cleared so that every instance launched from the
# image runs its own user data from a clean slate (the settings file and the
# nommerd start of core/fleets/ec2.py); the uploaded wheelhouse and apt's
# cache only cost disk space.
set -euo pipefail

UPLOAD_DIR=${ENCODER_UPLOAD_DIR:-/tmp/media-nommer}

rm -rf "$UPLOAD_DIR"
apt-get clean
rm -rf /var/lib/apt/lists/*
cloud-init clean --logs
