"""`fab` tasks of media-nommer; they live in provisioning/tasks.py.

    fab -H admin@feeder.example deploy     install and run the feeder host (over sudo)
    fab -H admin@feeder.example status     release, processes, /health
    fab -H admin@feeder.example releases   the releases installed
    fab -H admin@feeder.example rollback   back to the previous healthy release
    fab build-ami                          build the encoder AMI with Packer

`fab --list` shows them all; `fab --help TASK` shows a task's options.
docs/provisioning.md tells the whole story.
"""
from provisioning.tasks import (build_ami, deploy, logs, releases, restart, rollback, status,
                                unlock, wheelhouse)

__all__ = ["build_ami", "deploy", "logs", "releases", "restart", "rollback", "status", "unlock",
           "wheelhouse"]
