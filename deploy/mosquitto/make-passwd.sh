#!/usr/bin/env bash
# Add users to the mosquitto password file used by the 8884 (TLS + password) and 127.0.0.1:1883 listeners.
#
#   deploy/mosquitto/make-passwd.sh PASSWD_FILE USER [USER ...]
#
# USER is `scheduler` (or a scheduler replica name) or a device id. Each new user gets a random password,
# printed once on stdout as `USER PASSWORD`: hand it to that client, it is not stored anywhere in clear.
# To choose the password yourself, set LEPTON_MQTT_PASSWORD (only with a single USER).
# Users already in the file are kept unchanged (run `mosquitto_passwd -D FILE USER` first to reset one).
# The password never appears on a command line: it is passed to mosquitto_passwd on stdin.
set -euo pipefail

die() { echo "make-passwd.sh: error: $*" >&2; exit 1; }

[[ $# -ge 2 ]] || { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0" >&2; exit 2; }
file=$1
shift
if [[ -n ${LEPTON_MQTT_PASSWORD:-} && $# -ne 1 ]]; then
    die "LEPTON_MQTT_PASSWORD sets one user's password: give exactly one USER"
fi

mosquitto_passwd=$(command -v mosquitto_passwd || true)
[[ -n $mosquitto_passwd ]] || die "mosquitto_passwd not found: apt-get install mosquitto"
command -v openssl >/dev/null || die "openssl not found: apt-get install openssl"

for user in "$@"; do
    [[ $user =~ ^[A-Za-z0-9_.-]{1,64}$ ]] || \
        die "invalid user '$user': a device id or scheduler name uses 1-64 characters from A-Z a-z 0-9 _ . -"
done

umask 027
mkdir -p "$(dirname "$file")"
for user in "$@"; do
    if [[ -f $file ]] && awk -F: -v user="$user" '$1 == user { found = 1 } END { exit !found }' "$file"; then
        echo "make-passwd.sh: kept $user (already in $file)" >&2
        continue
    fi
    password=${LEPTON_MQTT_PASSWORD:-$(openssl rand -base64 24)}
    create=()
    [[ -s $file ]] || create=(-c)
    printf '%s\n%s\n' "$password" "$password" | "$mosquitto_passwd" "${create[@]}" "$file" "$user" >/dev/null \
        || die "mosquitto_passwd could not add $user to $file"
    echo "$user $password"
done
# mosquitto reads the file after dropping to its own user; nobody else may.
if getent group mosquitto >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
    chgrp mosquitto "$file"
fi
chmod 640 "$file"
