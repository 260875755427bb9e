#!/usr/bin/env bash
# Last step of the AMI build: leave nothing of the build machine behind, so
# that a public image carries no key, identity or log of it.
#
#   - authorized_keys of every user: Packer's temporary key is in admin's
#     (and cloud-init adds keys at boot, it does not replace them);
#   - SSH host keys: every instance makes its own at first boot (cloud-init,
#     and media-nommer-ssh-host-keys.service where cloud-init does not);
#   - /etc/machine-id emptied: systemd makes a new one at first boot, so no
#     two encoders share one (D-Bus's copy is a link to it or removed);
#   - logs and the journal, shell histories, the uploaded wheelhouse, apt's
#     cache, and cloud-init's state (each instance runs its user data anew).
#
# Environment:
#   CLEANUP_ROOT         clean this folder as if it were / (the tests use a
#                        throwaway root); default: /
#   CLEANUP_SKIP_SYSTEM  1: skip the commands that act on the running
#                        machine (apt-get clean, cloud-init clean)
#   ENCODER_UPLOAD_DIR   where Packer uploaded the wheelhouse (/tmp/media-nommer)
set -euo pipefail

ROOT=${CLEANUP_ROOT:-}
ROOT=${ROOT%/}
UPLOAD_DIR=${ENCODER_UPLOAD_DIR:-/tmp/media-nommer}
shopt -s nullglob dotglob

log() {
    printf 'cleanup: %s\n' "$*"
}

clean_system() {
    apt-get clean
    if command -v cloud-init >/dev/null 2>&1; then
        cloud-init clean --logs
    fi
}

remove_keys() {
    log "removing authorized_keys and SSH host keys"
    rm -f "$ROOT"/root/.ssh/authorized_keys "$ROOT"/home/*/.ssh/authorized_keys
    rm -f "$ROOT"/etc/ssh/ssh_host_*
}

forget_identity() {
    log "emptying machine-id"
    if [[ -e $ROOT/etc/machine-id ]]; then
        : > "$ROOT/etc/machine-id"
    fi
    rm -f "$ROOT/var/lib/dbus/machine-id"
    rm -rf "$ROOT"/var/lib/cloud/instances "$ROOT"/var/lib/cloud/instance
}

remove_traces() {
    log "removing logs, the journal, shell histories and the upload"
    if [[ -d $ROOT/var/log ]]; then
        find "$ROOT/var/log" -type f -delete
    fi
    rm -f "$ROOT"/root/.*_history "$ROOT"/home/*/.*_history
    rm -rf "${ROOT}${UPLOAD_DIR}" "$ROOT"/var/lib/apt/lists/*
}

main() {
    if [[ ${CLEANUP_SKIP_SYSTEM:-0} != 1 ]]; then
        clean_system
    fi
    remove_keys
    forget_identity
    remove_traces
}

main "$@"
