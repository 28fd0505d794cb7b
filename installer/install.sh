#!/usr/bin/env bash
# Install, or re-install, the HipChat Server appliance on this host.
#
#   installer/install.sh [--profile single-host|large] [--inventory FILE] [--check] [-e VAR=VALUE]...
#
# Creates the virtualenv under /opt/hipchat with ansible-core, then runs
# installer/site.yml (the project itself is installed into the virtualenv by
# the chat_core role). Re-running is safe: it changes nothing on a host that
# is already installed and never regenerates secrets or touches data.
set -euo pipefail

INSTALLER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV_DIR=/opt/hipchat/venv
LOG_DIR=/var/log/hipchat
PROFILE=single-host
INVENTORY="$INSTALLER_DIR/inventory/localhost.yml"
CHECK=()
EXTRA=()

usage() {
    sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<USAGE
Options:
  --profile NAME     sizes for this host: single-host (default) or large
  --inventory FILE   install onto the hosts in FILE instead of this host
  --check            dry run: show what would change, change nothing
  -e, --extra-vars   override an installer variable (VAR=VALUE or @file.yml)
  --tags LIST        run only these roles (e.g. opensearch,chat_core)
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

step "Preparing the installer's virtualenv in $VENV_DIR"
if ! /usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "Installing python3 and python3-venv from Debian..."
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
fi
if [ ! -x "$VENV_DIR/bin/python" ]; then
    mkdir -p "$(dirname "$VENV_DIR")"
    /usr/bin/python3 -m venv "$VENV_DIR"
fi
# Quick when everything is already at its pinned version.
"$VENV_DIR/bin/pip" install --quiet --disable-pip-version-check -r "$INSTALLER_DIR/requirements.txt"

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
