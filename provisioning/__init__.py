"""Provisioning: the feeder host's deploy over SSH (Fabric) and the encoder
AMI's build (Packer).

    layout.py     where things live on a feeder host and on an encoder
    render.py     nomconf.toml, supervisord.conf and systemd units from templates/
    wheelhouse.py the project and its dependencies as wheels for a target Python
    hostcheck.py  runs on a host: validates configs, waits for the API's /health
    encoder.py    runs on the AMI build: writes the encoder's supervisord files
    remote.py     commands and files on a host over a Fabric connection
    feeder_host.py  a feeder host's supervisord and API, driven over SSH
    deploy.py     `fab deploy`: release, configs, supervisord, health, rollback
    ami.py        `fab build-ami`: Packer through packer-py, then the AMI id
    tasks.py      the `fab` tasks (fabfile.py exposes them)
    errors.py     ProvisioningError

Only remote.py, feeder_host.py, deploy.py and tasks.py use Fabric; the
modules that run on a host need nothing beyond the project's own packages.
"""
