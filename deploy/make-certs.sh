#!/usr/bin/env bash
# Certificates for the lepton-edge MQTT broker (deploy/mosquitto/mosquitto.conf) and the scheduler's HTTPS API
# with openssl: a private CA, the broker's server certificate, one client certificate per device (CN = device
# id, which the broker uses as the MQTT username) or scheduler, the API's server certificate, and client
# certificates for the API's optional mutual TLS (api.client_ca).
#
#   deploy/make-certs.sh [--out DIR] [--days N] ca
#   deploy/make-certs.sh [--out DIR] [--days N] broker [HOSTNAME|IP ...]   # default: localhost 127.0.0.1
#   deploy/make-certs.sh [--out DIR] [--days N] device ID [ID ...]
#   deploy/make-certs.sh [--out DIR] [--days N] scheduler [NAME]           # default: scheduler
#   deploy/make-certs.sh [--out DIR] [--days N] api [HOSTNAME|IP ...]      # default: localhost 127.0.0.1
#   deploy/make-certs.sh [--out DIR] [--days N] api-client NAME [NAME ...]
#
# Output (DIR defaults to ./certs):
#   DIR/ca.crt, DIR/ca.key              the CA (keep ca.key offline; never copy it to a device)
#   DIR/broker.crt, DIR/broker.key      for the broker (cafile/certfile/keyfile in mosquitto.conf)
#   DIR/clients/ID.crt, DIR/clients/ID.key   for device ID (copy with ca.crt to the device)
#   DIR/api.crt, DIR/api.key            for the scheduler API (api.tls_cert, api.tls_key)
#   DIR/api-clients/NAME.crt, .key      for a client of the API when api.client_ca is set (curl --cert/--key)
#
# With api.client_ca: DIR/ca.crt, every certificate this CA signed (devices' too) passes the TLS handshake;
# the API still wants a token. For API clients kept apart from devices, give them their own CA:
# make-certs.sh --out certs/api-ca api-client NAME, and api.client_ca: certs/api-ca/ca.crt.
#
# Idempotent: an existing CA is never re-created; an existing certificate is kept when it is still
# signed by the CA (and, for the broker, names the same hosts), and re-issued otherwise.
# Keys are ECDSA P-256; private keys are created mode 0600.
set -euo pipefail

out=./certs
days=825
ca_days=3650
id_re='^[A-Za-z0-9_.-]{1,64}$'

die() { echo "make-certs.sh: error: $*" >&2; exit 1; }
say() { echo "make-certs.sh: $*"; }
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }

command -v openssl >/dev/null || die "openssl not found: install it (apt-get install openssl)"

while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) [[ $# -ge 2 ]] || die "--out needs a folder"; out=$2; shift 2 ;;
        --days) [[ $# -ge 2 && $2 =~ ^[0-9]+$ ]] || die "--days needs a number of days"; days=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; break ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) break ;;
    esac
done
[[ $# -ge 1 ]] || { usage >&2; exit 2; }
command=$1
shift

umask 077
mkdir -p "$out/clients"

new_key() {  # new_key FILE
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null \
        || die "openssl could not create the key $1"
    chmod 600 "$1"
}

ensure_ca() {
    if [[ -f $out/ca.crt && -f $out/ca.key ]]; then
        return
    fi
    [[ -e $out/ca.crt || -e $out/ca.key ]] && \
        die "$out has only one of ca.crt and ca.key: restore the other, or remove both to start a new CA"
    new_key "$out/ca.key"
    openssl req -new -x509 -sha256 -days "$ca_days" -key "$out/ca.key" -out "$out/ca.crt" \
        -subj "/O=lepton-edge/CN=lepton-edge MQTT CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" \
        || die "openssl could not create the CA certificate"
    chmod 644 "$out/ca.crt"
    say "created CA $out/ca.crt"
}

signed_by_ca() {  # signed_by_ca CERT
    openssl verify -CAfile "$out/ca.crt" "$1" >/dev/null 2>&1
}

issue() {  # issue NAME CN EXTENSIONS: NAME.key/.crt signed by the CA
    local base=$1 cn=$2 extensions=$3 extfile
    extfile=$(mktemp)
    printf '%s\n' "$extensions" > "$extfile"
    new_key "$base.key"
    openssl req -new -sha256 -key "$base.key" -subj "/O=lepton-edge/CN=$cn" -out "$base.csr" \
        || { rm -f "$extfile"; die "openssl could not create the request for $cn"; }
    openssl x509 -req -sha256 -in "$base.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days "$days" -extfile "$extfile" -out "$base.crt" 2>/dev/null \
        || { rm -f "$extfile" "$base.csr"; die "openssl could not sign the certificate for $cn"; }
    rm -f "$extfile" "$base.csr"
    chmod 644 "$base.crt"
}

client() {  # client ID [BASE]
    local id=$1 base=${2:-$out/clients/$1}
    if [[ -f $base.crt && -f $base.key ]] && signed_by_ca "$base.crt"; then
        say "kept $base.crt (CN=$id)"
        return
    fi
    issue "$base" "$id" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
    say "issued $base.crt (CN=$id)"
}

server() {  # server BASE HOST...: a serverAuth certificate naming the hosts
    local base=$1 san="" name
    shift
    for name in "$@"; do
        if [[ $name =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ || $name == *:* ]]; then
            san+="${san:+, }IP Address:$name"
        elif [[ $name =~ ^[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]]; then
            san+="${san:+, }DNS:$name"
        else
            die "server name '$name' is neither a hostname nor an IP address"
        fi
    done
    local current=""
    if [[ -f $base.crt && -f $base.key ]] && signed_by_ca "$base.crt"; then
        current=$(openssl x509 -in "$base.crt" -noout -ext subjectAltName 2>/dev/null | sed -n '2p' | xargs)
        if [[ $current == "$san" ]]; then
            say "kept $base.crt ($san)"
            return
        fi
        say "re-issuing $base.crt: its names ($current) differ from ($san)"
    fi
    # openssl's extension syntax spells IPs as "IP:"; x509 -ext prints them as "IP Address:".
    issue "$base" "${1}" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=${san//IP Address:/IP:}"
    say "issued $base.crt ($san)"
}

case "$command" in
    ca)
        [[ $# -eq 0 ]] || die "'ca' takes no arguments"
        ensure_ca
        say "CA: $out/ca.crt"
        ;;
    broker)
        [[ $# -gt 0 ]] || set -- localhost 127.0.0.1
        ensure_ca
        server "$out/broker" "$@"
        ;;
    api)
        [[ $# -gt 0 ]] || set -- localhost 127.0.0.1
        ensure_ca
        server "$out/api" "$@"
        ;;
    api-client)
        [[ $# -gt 0 ]] || die "give at least one client name: make-certs.sh api-client ops-laptop"
        for id in "$@"; do
            [[ $id =~ $id_re ]] || die "invalid client name '$id': use 1-64 characters from A-Z a-z 0-9 _ . -"
        done
        ensure_ca
        mkdir -p "$out/api-clients"
        for id in "$@"; do client "$id" "$out/api-clients/$id"; done
        ;;
    device)
        [[ $# -gt 0 ]] || die "give at least one device id: make-certs.sh device cam-north-01"
        for id in "$@"; do
            [[ $id =~ $id_re ]] || die "invalid device id '$id': use 1-64 characters from A-Z a-z 0-9 _ . -"
            [[ $id != scheduler* ]] || die "device ids starting with 'scheduler' are reserved: use 'scheduler'"
        done
        ensure_ca
        for id in "$@"; do client "$id"; done
        ;;
    scheduler)
        [[ $# -le 1 ]] || die "'scheduler' takes at most one name"
        name=${1:-scheduler}
        [[ $name =~ ^scheduler[A-Za-z0-9_.-]{0,55}$ ]] || die "scheduler names start with 'scheduler', got '$name'"
        ensure_ca
        client "$name"
        ;;
    *)
        die "unknown command '$command': use ca, broker, device, scheduler, api or api-client (see --help)"
        ;;
esac
