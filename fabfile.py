"""`fab` tasks of media-nommer; they live in provisioning/tasks.py.

    fab -H root@feeder.example deploy     install and run the feeder host
    fab -H root@feeder.example status     release, processes, /health
    fab build-ami                         build the encoder AMI with Packer

`fab --list` shows them all; `fab --help TASK` shows a task's options.
docs/provisioning.md tells the whole story.
"""
from provisioning.tasks import build_ami, deploy, logs, restart, status, wheelhouse

__all__ = ["build_ami", "deploy", "logs", "restart", "status", "wheelhouse"]
