"""How an upgrade runs the new release's installer: offline, rolling restart, and preflight's port check."""

from __future__ import annotations

import io

import pytest

from appliance.upgrade import apply


class FinishedInstaller:
    """Stands in for the installer's process: records its argv, prints a line, exits ``status``."""

    runs: list[list[str]] = []

    def __init__(self, argv, status: int = 0, **kwargs):
        FinishedInstaller.runs.append(argv)
        self.stdout = io.StringIO("TASK [preflight : Check memory, disk, ports and Java.]\n")
        self.status = status

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def wait(self):
        return self.status


@pytest.fixture
def installer_runs(monkeypatch, tmp_path):
    FinishedInstaller.runs = []
    monkeypatch.setattr(apply.subprocess, "Popen", FinishedInstaller)
    return FinishedInstaller.runs


def test_an_upgrade_checks_the_ports_by_default(installer_runs, tmp_path):
    """The appliance's own processes hold its ports and pass preflight; another program on one must stop the upgrade."""
    apply.run_installer("/opt/hipchat/releases/0.2.0", apply.Progress(str(tmp_path / "log")))
    (argv,) = installer_runs
    assert argv[:4] == ["bash", "/opt/hipchat/releases/0.2.0/installer/install.sh", "--offline-dir", "/opt/hipchat/releases/0.2.0"]
    assert "chat_core_rolling_restart=true" in argv
    assert not any("preflight_ports" in a for a in argv)


def test_the_port_check_is_skipped_only_when_asked(installer_runs, tmp_path):
    apply.run_installer("/opt/hipchat/releases/0.2.0", apply.Progress(str(tmp_path / "log")), check_ports=False)
    (argv,) = installer_runs
    assert argv[argv.index('{"preflight_ports": {}}') - 1] == "-e"
