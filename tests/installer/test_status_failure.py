"""`status` when a part is broken: non-zero exit naming the part."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_appliance_cli, supervisorctl, wait_for

pytestmark = pytest.mark.disruptive


def test_status_names_a_stopped_service_and_exits_non_zero():
    """With MariaDB stopped, status exits 1 and names both the stopped process and the unreachable database."""
    supervisorctl("stop", "mariadb", check=True)
    try:
        result = run_appliance_cli("status", "--json")
        assert result.returncode == 1
        report = json.loads(result.stdout)
        assert report["healthy"] is False
        assert any("mariadb" in p and "STOPPED" in p for p in report["sections"]["processes"]["problems"])
        assert report["sections"]["mariadb"]["healthy"] is False
        screen = run_appliance_cli("status")
        assert screen.returncode == 1
        assert "UNHEALTHY" in screen.stdout and "mariadb" in screen.stdout
    finally:
        supervisorctl("start", "mariadb")
    wait_for(lambda: run_appliance_cli("status").returncode == 0, timeout=60, what="status healthy again")
