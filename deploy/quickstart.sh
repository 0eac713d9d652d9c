#!/usr/bin/env bash
# One entry point for a fresh machine: sets up what is missing, then runs the job.
#   deploy/quickstart.sh demo    # set up, then run broker + scheduler + a device with the bundled detector
#   deploy/quickstart.sh test    # set up, then run the whole test suite
#   deploy/quickstart.sh bench   # set up, then run the benchmarks
#   deploy/quickstart.sh lint    # set up, then run ruff and the import contracts (lint-imports)
#   deploy/quickstart.sh setup   # only set up
# Environment: VENV (default .venv), DURATION (demo seconds, default 30), LEPTON_SYSTEM_OPENCV=1 to use the
# system OpenCV (Jetson: JetPack's python3-opencv with GStreamer) instead of installing the pip wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
APT_UPDATED=0

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

apt_install() {
    # Installs Debian packages when missing; needs root (or sudo).
    local missing=()
    for pkg in "$@"; do dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null; then
        say "please install: ${missing[*]} (no apt-get here)"; return 1
    fi
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    say "installing Debian packages: ${missing[*]}"
    if [ $APT_UPDATED -eq 0 ]; then $sudo apt-get update -qq; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

setup() {
    command -v "$PYTHON" >/dev/null || { say "python3 is required"; exit 1; }
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { say "Python >= 3.10 is required"; exit 1; }
    # Debian splits venv/ensurepip out of the interpreter package.
    if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
        apt_install "python3-venv"
    fi
    # The MQTT broker for the demo and the tests.
    command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || apt_install mosquitto

    local site=""
    [ "${LEPTON_SYSTEM_OPENCV:-0}" = "1" ] && site="--system-site-packages"
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating virtualenv $VENV"
        "$PYTHON" -m venv $site "$VENV"
    fi
    local extras="test"
    if [ "${LEPTON_SYSTEM_OPENCV:-0}" != "1" ]; then extras="$extras,opencv"; fi
    local stamp="$VENV/.lepton-installed"
    local want; want="$(sha256sum < pyproject.toml | cut -c1-16)-$extras"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        say "installing lepton-edge[$extras] into $VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip
        "$VENV/bin/python" -m pip install -q -e ".[$extras]"
        echo "$want" > "$stamp"
    fi
    "$VENV/bin/python" -c 'import cv2' 2>/dev/null || {
        say "OpenCV is not importable: install python3-opencv (Jetson) or unset LEPTON_SYSTEM_OPENCV"; exit 1; }
}

case "${1:-demo}" in
    setup) setup ;;
    demo)
        setup
        say "demo for ${DURATION:-30} s: local broker, scheduler + dashboard, device running the bundled detector (Ctrl-C stops)"
        exec "$VENV/bin/lepton-edge" demo --duration "${DURATION:-30}" ;;
    test)
        setup
        # Real parts the tests start themselves: PostgreSQL (initdb/pg_ctl), Chromium (dashboard), openssl
        # (certificates), systemd-analyze (unit checks), shellcheck (scripts).
        apt_install postgresql chromium openssl systemd shellcheck
        exec "$VENV/bin/python" -m pytest -q "${@:2}" ;;
    bench)
        setup
        exec "$VENV/bin/lepton-edge" bench "${@:2}" ;;
    lint)
        setup
        "$VENV/bin/ruff" check lepton_edge tests models deploy
        exec "$VENV/bin/lint-imports" ;;
    *) echo "usage: $0 {demo|test|bench|setup|lint}" >&2; exit 2 ;;
esac
