#!/usr/bin/env bash
# Run the whole test suite against a real appliance on this host.
#
# Installs the appliance when it is not installed, updates it to this
# checkout and starts it when it is stopped (install.sh is idempotent and does
# all three), then runs pytest with the appliance's virtualenv.
#   tests/run.sh [pytest arguments]
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR=/opt/hipchat/venv
cd "$REPO_DIR"

echo "==> Installing or starting the appliance (installer/install.sh)"
started=$(date +%s)
bash installer/install.sh
echo "==> Appliance ready after $(( $(date +%s) - started ))s"

echo "==> Installing the test requirements"
"$VENV_DIR/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements.txt
# packer validates the VM image template in the suite.
if ! command -v packer >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq packer >/dev/null
fi

# socat bridges the appliance's ports into the loopback-only network namespaces
# (tests/netns.py); dpkg-scanpackages (dpkg-dev) indexes an offline bundle's packages.
for tool in socat:socat dpkg-scanpackages:dpkg-dev; do
    command -v "${tool%%:*}" >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${tool#*:}" >/dev/null
done

# Debian's chromium, driven by Playwright in the web client's end-to-end test.
if [ ! -x /usr/bin/chromium ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

echo "==> Running the tests"
# --durations: the slowest tests at the end, to keep the suite within its 40 minutes.
exec "$VENV_DIR/bin/python" -m pytest -p no:cacheprovider -ra --durations=25 "$@" tests
