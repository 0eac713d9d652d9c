#!/usr/bin/env bash
# Install lepton-edge as a systemd service (run as root from a checkout of the repository):
#
#   sudo deploy/install.sh                      # install or upgrade
#   sudo deploy/install.sh --uninstall          # remove units, venv and user; keep config and state
#   sudo deploy/install.sh --uninstall --purge  # also remove /etc/lepton-edge and the state/cache folders
#
# What it does (every step is safe to repeat):
#   - system user and group `lepton`, added to the video and render groups where they exist
#   - /opt/lepton-edge/venv: a virtualenv with this repository installed (pip install <repo>[opencv])
#   - /etc/lepton-edge/device.yaml from deploy/device.example.yaml, only if there is none (never overwritten)
#   - systemd/*.service into /etc/systemd/system, then `systemctl daemon-reload` when systemd runs
#   - on a Jetson (/etc/nv_tegra_release), a drop-in allowing the GPU device nodes present now
#     (/dev/nvmap, /dev/nvhost-*, /dev/nvgpu/*/*, /dev/nvsciipc): re-run after a JetPack upgrade
#   - state and cache folders (/var/lib/lepton-edge, /var/cache/lepton-edge) are created by systemd
#     (StateDirectory=, CacheDirectory=) when the service starts
#
# Environment:
#   LEPTON_SYSTEM_OPENCV=1  use the system's OpenCV (Jetson: JetPack's, built with GStreamer): the venv sees
#                           system site-packages and the pip opencv wheel is not installed
#   PYTHON=python3          the interpreter the venv is made from (3.10 or newer)
#   DESTDIR=/some/dir       stage everything under this folder instead of /: no user is created, no
#                           ownership changed, systemctl is not called; Jetson detection and device nodes
#                           are read under it too (for tests and inspection; the venv inside works only
#                           from that location)
#   PIP_*                   passed through to pip (e.g. PIP_INDEX_URL for a local mirror)
set -euo pipefail

PREFIX=/opt/lepton-edge
CONFIG_DIR=/etc/lepton-edge
UNIT_DIR=/etc/systemd/system
SERVICE_USER=lepton
UNITS=(lepton-edge.service lepton-edge-engines.service lepton-edge-scheduler.service)
GPU_UNITS=(lepton-edge.service lepton-edge-engines.service)
JETSON_DROPIN=50-jetson-devices.conf
STATE_DIRS=(/var/lib/lepton-edge /var/cache/lepton-edge /var/lib/lepton-edge-scheduler)

say() { echo "install.sh: $*"; }
die() { echo "install.sh: error: $*" >&2; exit 1; }
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
action=install
purge=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --uninstall) action=uninstall ;;
        --purge) purge=1 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done
[[ $purge -eq 0 || $action == uninstall ]] || die "--purge only goes with --uninstall"

dest=${DESTDIR:-}
if [[ -n $dest ]]; then
    mkdir -p "$dest"
    dest=$(cd "$dest" && pwd)
    [[ $dest != / ]] || dest=""
fi
staging() { [[ -n $dest ]]; }
if staging; then
    say "DESTDIR=$dest: staging only; not creating user '$SERVICE_USER', not changing ownership, not calling systemctl"
elif [[ $(id -u) -ne 0 ]]; then
    die "run as root (sudo $0), or set DESTDIR=/some/dir to stage the files elsewhere"
fi

systemd_running() { ! staging && [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; }

venv=$dest$PREFIX/venv

create_user() {
    if staging; then return; fi
    if ! getent group "$SERVICE_USER" >/dev/null; then
        groupadd --system "$SERVICE_USER"
        say "created group $SERVICE_USER"
    fi
    if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
        useradd --system --gid "$SERVICE_USER" --home-dir /var/lib/lepton-edge --no-create-home \
            --shell /usr/sbin/nologin --comment "lepton-edge service" "$SERVICE_USER"
        say "created system user $SERVICE_USER"
    fi
    local group
    for group in video render; do
        if getent group "$group" >/dev/null; then
            usermod -a -G "$group" "$SERVICE_USER"
        else
            say "no '$group' group on this system: $SERVICE_USER is not added to it"
        fi
    done
}

check_python() {
    python=${PYTHON:-python3}
    command -v "$python" >/dev/null || die "$python not found: install Python 3.10 or newer, or set PYTHON=/path/to/python3"
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || die "$python is $("$python" -V 2>&1); lepton-edge needs Python 3.10 or newer (set PYTHON=...)"
    "$python" -c 'import venv, ensurepip' 2>/dev/null \
        || die "$python cannot create virtualenvs: apt-get install python3-venv"
}

make_venv() {
    local system_site=false
    [[ ${LEPTON_SYSTEM_OPENCV:-0} == 1 ]] && system_site=true
    if [[ -x $venv/bin/python ]]; then
        if grep -qx "include-system-site-packages = $system_site" "$venv/pyvenv.cfg" 2>/dev/null; then
            say "reusing the virtualenv $venv"
            return
        fi
        say "recreating $venv: LEPTON_SYSTEM_OPENCV changed whether it sees the system's packages"
        rm -rf "$venv"
    fi
    local args=()
    [[ $system_site == true ]] && args=(--system-site-packages)
    install -d -m 755 "$dest$PREFIX"
    "$python" -m venv "${args[@]}" "$venv" || die "could not create the virtualenv $venv"
    say "created the virtualenv $venv${args[*]:+ (${args[*]})}"
}

install_package() {
    # Build from a copy of the sources: pip writes build/ and *.egg-info next to them, and the checkout
    # may belong to another user. -L: lepton_edge/data/ links into models/ and deploy/; the copy holds the files.
    build_src=$(mktemp -d)
    trap 'rm -rf "$build_src"' EXIT
    cp -RL "$repo/pyproject.toml" "$repo/README.md" "$repo/lepton_edge" "$build_src/"
    if [[ -f $repo/LICENSE ]]; then cp "$repo/LICENSE" "$build_src/"; fi
    local extra="[opencv]"
    if [[ ${LEPTON_SYSTEM_OPENCV:-0} == 1 ]]; then
        extra=""
        "$venv/bin/python" -c 'import cv2' 2>/dev/null \
            || say "warning: LEPTON_SYSTEM_OPENCV=1 but the system Python has no cv2 (apt-get install python3-opencv, or JetPack's)"
    fi
    say "pip install lepton-edge$extra (from $repo) into $venv"
    "$venv/bin/python" -m pip install --disable-pip-version-check --quiet "$build_src$extra" \
        || die "pip could not install lepton-edge into $venv (see pip's message above)"
    "$venv/bin/python" -c 'import importlib.metadata as m; print("install.sh: installed lepton-edge", m.version("lepton-edge"))'
}

install_config() {
    install -d -m 750 "$dest$CONFIG_DIR"
    staging || chgrp "$SERVICE_USER" "$dest$CONFIG_DIR"
    local config=$dest$CONFIG_DIR/device.yaml
    if [[ -e $config ]]; then
        say "kept the existing $config"
        return
    fi
    install -m 640 "$repo/deploy/device.example.yaml" "$config"
    staging || chgrp "$SERVICE_USER" "$config"
    say "installed $config from deploy/device.example.yaml: edit model.path, source.uri and sinks"
}

install_units() {
    install -d -m 755 "$dest$UNIT_DIR"
    local unit
    for unit in "${UNITS[@]}"; do
        install -m 644 "$repo/systemd/$unit" "$dest$UNIT_DIR/$unit"
    done
    say "installed ${UNITS[*]} into $dest$UNIT_DIR"
    install_jetson_dropins
    if systemd_running; then
        systemctl daemon-reload
        say "systemd reloaded. Start with: systemctl enable --now lepton-edge.service"
    elif ! staging; then
        say "systemd is not running here (a container?): units installed but not loaded; skipped daemon-reload"
    fi
}

install_jetson_dropins() {
    [[ -f $dest/etc/nv_tegra_release ]] || return 0
    local nodes=() node unit
    # /dev/nvsciipc: NvSciIpc, used by the CUDA and multimedia stacks (in NVIDIA's L4T container device list)
    for node in "$dest"/dev/nvmap "$dest"/dev/nvhost-* "$dest"/dev/nvgpu/*/* "$dest"/dev/host1x-fence \
        "$dest"/dev/nvsciipc; do
        [[ -e $node ]] && nodes+=("${node#"$dest"}")
    done
    if [[ ${#nodes[@]} -eq 0 ]]; then
        say "warning: a Jetson, but no GPU device nodes (/dev/nvmap, /dev/nvhost-*, /dev/nvgpu/*/*) found"
        return 0
    fi
    for unit in "${GPU_UNITS[@]}"; do
        install -d -m 755 "$dest$UNIT_DIR/$unit.d"
        {
            echo "# Generated by deploy/install.sh: this Jetson's GPU device nodes (re-run it after a JetPack upgrade)."
            echo "[Service]"
            printf 'DeviceAllow=%s rw\n' "${nodes[@]}"
        } > "$dest$UNIT_DIR/$unit.d/$JETSON_DROPIN"
        chmod 644 "$dest$UNIT_DIR/$unit.d/$JETSON_DROPIN"
    done
    say "Jetson: allowed ${#nodes[@]} GPU device nodes in $UNIT_DIR/<unit>.d/$JETSON_DROPIN"
}

uninstall() {
    local unit
    if systemd_running; then
        for unit in "${UNITS[@]}"; do
            systemctl disable --now "$unit" 2>/dev/null || true
        done
    fi
    for unit in "${UNITS[@]}"; do
        rm -f "$dest$UNIT_DIR/$unit" "$dest$UNIT_DIR/$unit.d/$JETSON_DROPIN"
        if [[ -d $dest$UNIT_DIR/$unit.d ]]; then rmdir --ignore-fail-on-non-empty "$dest$UNIT_DIR/$unit.d"; fi
    done
    systemd_running && systemctl daemon-reload
    say "removed the units from $dest$UNIT_DIR"
    rm -rf "$dest$PREFIX"
    say "removed $dest$PREFIX"
    if ! staging && id -u "$SERVICE_USER" >/dev/null 2>&1; then
        userdel "$SERVICE_USER"
        say "removed user $SERVICE_USER"
    fi
    if ! staging && getent group "$SERVICE_USER" >/dev/null; then
        groupdel "$SERVICE_USER"
    fi
    if [[ $purge -eq 1 ]]; then
        local dir
        for dir in "$CONFIG_DIR" "${STATE_DIRS[@]}"; do
            rm -rf "${dest:?}$dir"
        done
        say "purged $dest$CONFIG_DIR and the state/cache folders"
    else
        say "kept $dest$CONFIG_DIR and the state/cache folders (--uninstall --purge removes them)"
    fi
}

if [[ $action == uninstall ]]; then
    uninstall
    exit 0
fi
check_python
create_user
make_venv
install_package
install_config
install_units
say "done"
