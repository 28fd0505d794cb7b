#!/usr/bin/env bash
# Install, or re-install, the HipChat Server appliance on this host.
#
#   installer/install.sh [--profile single-host|large] [--inventory FILE] [--check] [-e VAR=VALUE]...
#   installer/install.sh --bundle hipchat-appliance-VERSION.bundle [--trusted-keys-dir DIR] [options above]
#
# Creates the virtualenv under /opt/hipchat with ansible-core, then runs
# installer/site.yml (the project itself is installed into the virtualenv by
# the chat_core role). Re-running is safe: it changes nothing on a host that
# is already installed and never regenerates secrets or touches data.
# With --bundle, HIPCHAT_RELEASES_DIR (default /opt/hipchat/releases) says where releases
# are unpacked; only the default one gets the `current` link.
set -euo pipefail

INSTALLER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV_DIR=/opt/hipchat/venv
LOG_DIR=/var/log/hipchat
PROFILE=single-host
INVENTORY="$INSTALLER_DIR/inventory/localhost.yml"
CHECK=()
EXTRA=()
BUNDLE=""
TRUSTED_KEYS_DIR=""
OFFLINE_DIR=""
RELEASES_DIR="${HIPCHAT_RELEASES_DIR:-/opt/hipchat/releases}"
ARGS=("$@")

usage() {
    sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<USAGE
Options:
  --profile NAME     sizes for this host: single-host (default) or large
  --inventory FILE   install onto the hosts in FILE instead of this host
  --check            dry run: show what would change, change nothing
  -e, --extra-vars   override an installer variable (VAR=VALUE or @file.yml)
  --tags LIST        run only these roles (e.g. opensearch,chat_core)
  --bundle FILE      install from a signed offline bundle, with no network: verify it,
                     unpack it into $RELEASES_DIR/<version>/ and run its installer offline
  --trusted-keys-dir DIR  also trust the public keys (<key-id>.pub) in DIR for --bundle
  --offline-dir DIR  install from an unpacked, verified bundle in DIR (what --bundle runs)
  -h, --help         this help
USAGE
}

while [ $# -gt 0 ]; do
    case "$1" in
        --profile) PROFILE="$2"; shift 2 ;;
        --profile=*) PROFILE="${1#*=}"; shift ;;
        --inventory) INVENTORY="$(realpath "$2")"; shift 2 ;;
        --inventory=*) INVENTORY="$(realpath "${1#*=}")"; shift ;;
        --check) CHECK=(--check --diff); shift ;;
        -e|--extra-vars) EXTRA+=(-e "$2"); shift 2 ;;
        --tags) EXTRA+=(--tags "$2"); shift 2 ;;
        --bundle) BUNDLE="$(realpath "$2")"; shift 2 ;;
        --trusted-keys-dir) TRUSTED_KEYS_DIR="$(realpath "$2")"; shift 2 ;;
        --offline-dir) OFFLINE_DIR="$(realpath "$2")"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
done

PROFILE_FILE="$INSTALLER_DIR/profiles/$PROFILE.yml"
if [ ! -f "$PROFILE_FILE" ]; then
    echo "install.sh: no profile '$PROFILE'; choose one of: $(cd "$INSTALLER_DIR/profiles" && ls ./*.yml | sed 's|^\./||; s|\.yml$||' | tr '\n' ' ')" >&2
    exit 2
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (it installs packages and creates the 'hipchat' system user)." >&2
    exit 2
fi

started=$(date +%s)
step() { printf '\n==> %s\n' "$*"; }

if [ -n "$BUNDLE" ]; then
    # Verify before anything is touched, with this tree's own verifier and keys
    # (plus --trusted-keys-dir); the release's installer then runs offline.
    step "Verifying $BUNDLE and unpacking it into $RELEASES_DIR"
    VERIFY_PYTHON=/usr/bin/python3
    [ -x "$VENV_DIR/bin/python" ] && VERIFY_PYTHON="$VENV_DIR/bin/python"
    release_dir=$(PYTHONPATH="$(dirname "$INSTALLER_DIR")" "$VERIFY_PYTHON" -m appliance.bundle.manifest unpack \
        "$BUNDLE" --releases-dir "$RELEASES_DIR" ${TRUSTED_KEYS_DIR:+--trusted-keys-dir "$TRUSTED_KEYS_DIR"}) || {
        echo "install.sh: the bundle was refused (see above); nothing was changed." >&2
        exit 3
    }
    # A fresh host gets its first release as `current`; an upgrade switches it
    # with `hipchat-appliance upgrade apply`.
    [ -e "$(dirname "$RELEASES_DIR")/current" ] || [ "$RELEASES_DIR" != /opt/hipchat/releases ] \
        || ln -s "$release_dir" "$(dirname "$RELEASES_DIR")/current"
    forwarded=()
    skip=0
    for arg in "${ARGS[@]}"; do
        if [ "$skip" -gt 0 ]; then skip=$((skip - 1)); continue; fi
        case "$arg" in
            --bundle|--trusted-keys-dir) skip=1 ;;
            *) forwarded+=("$arg") ;;
        esac
    done
    exec bash "$release_dir/installer/install.sh" --offline-dir "$release_dir" "${forwarded[@]}"
fi

PIP_OFFLINE=()
APT_OFFLINE=()
if [ -n "$OFFLINE_DIR" ]; then
    if [ ! -f "$OFFLINE_DIR/manifest.json" ] || [ ! -d "$OFFLINE_DIR/wheels" ]; then
        echo "install.sh: $OFFLINE_DIR is not an unpacked bundle (no manifest.json or wheels/)" >&2
        exit 2
    fi
    PIP_OFFLINE=(--no-index --find-links "$OFFLINE_DIR/wheels")
    # apt reads only the bundle's flat repository; the same file (same bytes) as
    # roles/common/tasks/offline.yml writes, here before Ansible so that python3-venv
    # and the preflight role's Java check find the bundle's packages on a fresh host.
    APT_SOURCE=/etc/apt/sources.list.d/hipchat-offline.list
    # The play runs every apt call with APT_CONFIG naming this file (installer/site.yml):
    # a fresh host's apt lists may know a mirror, whose copies apt would otherwise choose.
    APT_CONFIG_FILE=/etc/apt/hipchat-offline.conf
    APT_OFFLINE=(-o "Dir::Etc::SourceList=$APT_SOURCE" -o Dir::Etc::SourceParts=- -o APT::Get::List-Cleanup=0)
    wanted=$(printf '# From the installer: the packages of the offline bundle in %s.\ndeb [trusted=yes] file:%s/debs ./\n' "$OFFLINE_DIR" "$OFFLINE_DIR")
    printf '// From the installer: with APT_CONFIG naming this file, apt reads only the offline bundle'"'"'s packages.\nDir::Etc::SourceList "%s";\nDir::Etc::SourceParts "-";\nAPT::Get::List-Cleanup "0";\n' \
        "$APT_SOURCE" > "$APT_CONFIG_FILE"
    if [ "$(cat "$APT_SOURCE" 2>/dev/null)" != "$wanted" ]; then
        printf '%s\n' "$wanted" > "$APT_SOURCE"
        DEBIAN_FRONTEND=noninteractive apt-get "${APT_OFFLINE[@]}" update -qq
    fi
    EXTRA+=(-e "hipchat_offline_dir=$OFFLINE_DIR")
    for tarball in "$OFFLINE_DIR"/opensearch/opensearch-*.tar.gz; do
        [ -f "$tarball" ] && EXTRA+=(-e "opensearch_distribution_tarball=$tarball")
    done
fi

step "Preparing the installer's virtualenv in $VENV_DIR"
if ! /usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "Installing python3 and python3-venv from Debian..."
    [ -n "$OFFLINE_DIR" ] || DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get "${APT_OFFLINE[@]}" install -y -qq python3 python3-venv >/dev/null
fi
if [ ! -x "$VENV_DIR/bin/python" ]; then
    mkdir -p "$(dirname "$VENV_DIR")"
    /usr/bin/python3 -m venv "$VENV_DIR"
fi
# Quick when everything is already at its pinned version.
"$VENV_DIR/bin/pip" install --quiet --disable-pip-version-check "${PIP_OFFLINE[@]}" -r "$INSTALLER_DIR/requirements.txt"

mkdir -p "$LOG_DIR"
LOG_FILE="$LOG_DIR/install-$(date +%Y%m%d-%H%M%S).log"
step "Running the installer (profile $PROFILE${CHECK:+, dry run}); log: $LOG_FILE"
export ANSIBLE_CONFIG="$INSTALLER_DIR/ansible.cfg"
export ANSIBLE_FORCE_COLOR="${ANSIBLE_FORCE_COLOR:-$([ -t 1 ] && echo 1 || echo 0)}"
set +e
"$VENV_DIR/bin/ansible-playbook" -i "$INVENTORY" -e "@$PROFILE_FILE" "${EXTRA[@]}" "${CHECK[@]}" \
    "$INSTALLER_DIR/site.yml" 2>&1 | tee "$LOG_FILE"
status=${PIPESTATUS[0]}
set -e
elapsed=$(( $(date +%s) - started ))

if [ "$status" -ne 0 ]; then
    printf '\nThe installer stopped after %ss (exit %s). The messages above say what failed;\n' "$elapsed" "$status"
    printf 'fix it and run the same command again: a re-run continues where this one stopped.\nFull log: %s\n' "$LOG_FILE"
    exit "$status"
fi
if [ ${#CHECK[@]} -gt 0 ]; then
    printf '\nDry run finished in %ss; nothing was changed.\n' "$elapsed"
    exit 0
fi
step "Installed in ${elapsed}s"
if [ "$INVENTORY" = "$INSTALLER_DIR/inventory/localhost.yml" ]; then
    "$VENV_DIR/bin/hipchat-appliance" summary || true
fi
