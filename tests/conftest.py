"""Fixtures shared by every test: the installed appliance's configuration and handles on its services.

The end-to-end tests run against the real appliance that the test command
(tests/run.sh) installed and started once for the whole run.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_DIR = "/opt/hipchat/venv"
CONFIG_PATH = os.environ.get("HIPCHAT_CONFIG", "/etc/hipchat/hipchat.yml")
SUPERVISOR_CONFIG = "/etc/hipchat/supervisord.conf"
SECRETS_DIR = "/etc/hipchat/secrets"


def supervisorctl(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    """Run supervisorctl against the appliance's supervisord."""
    return subprocess.run(
        [f"{VENV_DIR}/bin/supervisorctl", "-c", SUPERVISOR_CONFIG, *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=60,
    )


def program_pid(name: str) -> int:
    """The PID supervisor reports for program ``name`` (``group:program``), 0 when not running."""
    out = supervisorctl("pid", name).stdout.strip()
    return int(out) if out.isdigit() and int(out) > 0 else 0


def wait_for(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # the service may be restarting while we poll
            last_error = e
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_error})")


def read_secret(name: str) -> str:
    with open(os.path.join(SECRETS_DIR, name)) as f:
        return f.read().strip()


@pytest.fixture(scope="session")
def config():
    from hipchat_server.config import load_config

    return load_config(CONFIG_PATH)


@pytest.fixture(scope="session")
def chat_server(config):
    from hipchat_server.server import ChatServer

    return ChatServer(config)


def run_appliance_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([f"{VENV_DIR}/bin/hipchat-appliance", *args], capture_output=True, text=True, timeout=timeout)


def run_installer(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    """Run installer/install.sh with ``args``; output is captured for assertions."""
    return subprocess.run(
        ["bash", os.path.join(REPO_DIR, "installer", "install.sh"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "ANSIBLE_FORCE_COLOR": "0"},
    )


def recap_counts(output: str) -> dict[str, int]:
    """The `ok=.. changed=.. failed=..` counts of the localhost line in Ansible's PLAY RECAP."""
    import re

    line = next(l for l in output.splitlines()[::-1] if re.match(r"^localhost\s+:", l))
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


def pytest_collection_modifyitems(items):
    """Run tests that break services (marked ``disruptive``) after the rest, so read-only checks see a calm appliance.

    The wipe-and-restore test (marked ``wipe``) runs after everything: it stops and replaces the whole appliance.
    """
    items.sort(key=lambda item: 2 if item.get_closest_marker("wipe") else 1 if item.get_closest_marker("disruptive") else 0)
