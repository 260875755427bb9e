#!/bin/sh
# Starts the encoder's nommerd when supervisord starts (systemd runs this
# after it: ExecStartPost of ${unit_name}), on every boot where the
# instance's user data has written ${nomconf}. On the first boot the file is
# not there yet: the user data writes it and starts nommerd itself.
# Written by packer/scripts/install-encoder.sh.
[ -f ${nomconf} ] || exit 0
tries=0
until ${supervisorctl} pid 2>/dev/null | grep -q '^[0-9]'; do
    tries=$$((tries + 1))
    [ "$$tries" -ge ${wait_s} ] && exit 1
    sleep 1
done
# The user data may have started it a moment ago: RUNNING is all we want.
${supervisorctl} start "nommerd:*" >/dev/null 2>&1 ||
    ${supervisorctl} status "nommerd:*" | grep -q RUNNING
