#!/usr/bin/env bash
# Install the media-nommer encoder on the AMI's build machine (Debian 12):
# a system user, Python with the project in a virtualenv, and supervisord
# with a `nommerd` program that the instance's user data starts once it has
# written the cluster settings (see core/fleets/ec2.py, encoder_user_data).
#
# ffmpeg comes from the project's own dependency imageio-ffmpeg, whose wheel
# carries a static ffmpeg build: the encoder runs the very binary the tests
# run, pinned by the wheelhouse, without Debian's ffmpeg and its few hundred
# megabytes of libraries. nommerd uses it while the setting ffmpeg_path is
# empty.
#
# Environment:
#   ENCODER_WHEELHOUSE   required: a folder of wheels, media-nommer and every
#                        dependency, for this machine's python3 (fab wheelhouse)
#   ENCODER_PREFIX       the virtualenv goes to $ENCODER_PREFIX/venv (/opt/media-nommer)
#   ENCODER_ETC_DIR      supervisord.conf; the user data writes nomconf.toml here
#                        (/etc/media-nommer)
#   ENCODER_DATA_DIR     nommerd's working folder (/var/lib/media-nommer)
#   ENCODER_LOG_DIR      logs (/var/log/media-nommer)
#   ENCODER_RUN_DIR      supervisord's socket and pid file (/run/media-nommer)
#   ENCODER_BIN_DIR      the supervisorctl wrapper the user data calls and the
#                        script that starts nommerd at boot (/usr/local/bin)
#   ENCODER_SYSTEMD_DIR  the supervisord unit and the SSH host keys unit
#                        (/etc/systemd/system)
#   ENCODER_USER         the user nommerd runs as (nommer)
#   ENCODER_PYTHON       the Python the virtualenv is made from (python3)
#   ENCODER_SKIP_SYSTEM  1: skip what needs a whole machine: apt-get, creating
#                        the system user, enabling the unit. The tests install
#                        into a temporary folder this way; ENCODER_USER then
#                        defaults to the user running the script.
set -euo pipefail

read_environment() {
    WHEELHOUSE=${ENCODER_WHEELHOUSE:?set ENCODER_WHEELHOUSE to a folder of wheels}
    PREFIX=${ENCODER_PREFIX:-/opt/media-nommer}
    ETC_DIR=${ENCODER_ETC_DIR:-/etc/media-nommer}
    DATA_DIR=${ENCODER_DATA_DIR:-/var/lib/media-nommer}
    LOG_DIR=${ENCODER_LOG_DIR:-/var/log/media-nommer}
    RUN_DIR=${ENCODER_RUN_DIR:-/run/media-nommer}
    BIN_DIR=${ENCODER_BIN_DIR:-/usr/local/bin}
    SYSTEMD_DIR=${ENCODER_SYSTEMD_DIR:-/etc/systemd/system}
    PYTHON=${ENCODER_PYTHON:-python3}
    SKIP_SYSTEM=${ENCODER_SKIP_SYSTEM:-0}
    if [[ $SKIP_SYSTEM == 1 ]]; then
        SERVICE_USER=${ENCODER_USER:-$(id -un)}
    else
        SERVICE_USER=${ENCODER_USER:-nommer}
    fi
    VENV=$PREFIX/venv
}

log() {
    printf 'install-encoder: %s\n' "$*"
}

install_system_packages() {
    # cloud-init may still be installing packages on the build machine;
    # apt-get would fail on its lock.
    if command -v cloud-init >/dev/null 2>&1; then
        cloud-init status --wait >/dev/null || true
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # The image starts with every security fix published by build time.
    log "upgrading the base image's packages"
    apt-get upgrade -y -q -o Dpkg::Options::=--force-confold
    log "installing python3, python3-venv and cloud-init"
    apt-get install -y -q --no-install-recommends python3 python3-venv ca-certificates cloud-init
}

create_user() {
    if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
        log "creating system user $SERVICE_USER"
        useradd --system --user-group --home-dir "$DATA_DIR" --no-create-home \
            --shell /usr/sbin/nologin "$SERVICE_USER"
    fi
}

make_folders() {
    mkdir -p "$PREFIX" "$ETC_DIR" "$DATA_DIR" "$LOG_DIR" "$RUN_DIR" "$BIN_DIR" "$SYSTEMD_DIR"
    # nommerd writes its work files; supervisord (root) writes the logs.
    chown "$SERVICE_USER:" "$DATA_DIR"
    chmod 0750 "$DATA_DIR"
}

install_project() {
    log "installing media-nommer into $VENV from $WHEELHOUSE"
    "$PYTHON" -m venv "$VENV"
    # Only the wheelhouse: no registry, no pip configuration of this machine.
    PIP_CONFIG_FILE=/dev/null "$VENV/bin/python" -m pip install --isolated --no-index \
        --no-cache-dir --disable-pip-version-check --quiet \
        --find-links "$WHEELHOUSE" media-nommer
}

write_supervisord_files() {
    log "writing supervisord's configuration, the supervisorctl wrapper and the unit"
    "$VENV/bin/python" -m provisioning.encoder \
        --prefix "$PREFIX" --etc-dir "$ETC_DIR" --data-dir "$DATA_DIR" \
        --log-dir "$LOG_DIR" --run-dir "$RUN_DIR" --bin-dir "$BIN_DIR" \
        --systemd-dir "$SYSTEMD_DIR" --user "$SERVICE_USER"
}

enable_service() {
    log "enabling media-nommer-encoder.service and media-nommer-ssh-host-keys.service"
    systemctl daemon-reload
    systemctl enable media-nommer-encoder.service media-nommer-ssh-host-keys.service
}

check_install() {
    # The image is useless if its ffmpeg does not run here.
    "$VENV/bin/python" -c '
import subprocess, imageio_ffmpeg
subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-version"],
               check=True, stdout=subprocess.DEVNULL)'
    "$VENV/bin/nommerd" --help >/dev/null
    log "done: $("$VENV/bin/python" -c 'import importlib.metadata as m; print("media-nommer", m.version("media-nommer"))')"
}

main() {
    read_environment
    if [[ $SKIP_SYSTEM != 1 ]]; then
        install_system_packages
        create_user
    fi
    make_folders
    install_project
    write_supervisord_files
    if [[ $SKIP_SYSTEM != 1 ]]; then
        enable_service
    fi
    check_install
}

main "$@"
