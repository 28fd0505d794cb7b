"""`hipchat-appliance start`: bringing the whole appliance back after a reboot on a host without systemd."""

from __future__ import annotations

import os

import pytest

from tests.conftest import run_appliance_cli, supervisorctl, wait_for

pytestmark = pytest.mark.disruptive

SUPERVISOR_PIDFILE = "/var/lib/hipchat/run/supervisord.pid"


def _supervisord_alive() -> bool:
    try:
        os.kill(int(open(SUPERVISOR_PIDFILE).read().strip()), 0)
        return True
    except (OSError, ValueError):
        return False


def test_start_brings_every_process_back_after_supervisord_stopped():
    """With supervisord and every process stopped, `start` starts them all and status is healthy again."""
    supervisorctl("shutdown", check=True)
    wait_for(lambda: not _supervisord_alive(), timeout=180, what="supervisord to stop")
    assert run_appliance_cli("status").returncode == 1  # nothing runs: status must say so

    result = run_appliance_cli("start", timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Starting supervisord" in result.stdout
    assert "appliance processes are running" in result.stdout
    wait_for(lambda: run_appliance_cli("status").returncode == 0, timeout=180, what="status healthy after start")


def test_start_starts_programs_stopped_while_supervisord_runs():
    """Programs stopped by hand (or by a restore's wipe) in a running supervisord are started by `start`."""
    from tests.conftest import program_pid

    stopped = ("chat-core:worker-1", "metrics-exporter")
    supervisorctl("stop", *stopped, check=True)
    assert not any(program_pid(p) for p in stopped)
    result = run_appliance_cli("start", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "already running" in result.stdout and "appliance processes are running" in result.stdout
    assert all(program_pid(p) for p in stopped)


def test_start_on_a_running_appliance_changes_nothing():
    """`start` on a running appliance says so and leaves every process as it was."""
    before = supervisorctl("pid", "all").stdout
    result = run_appliance_cli("start")
    assert result.returncode == 0
    assert "already running" in result.stdout
    assert supervisorctl("pid", "all").stdout == before


def test_the_processes_clients_wait_on_run_ahead_of_background_work_as_the_service_user():
    """XMPP front ends and the HTTPS process at nice -5 (chat_core_frontend_nice), as hipchat; the indexer at 0."""
    import pwd

    from tests.conftest import program_pid

    for program in ("chat-core:xmpp-0", "chat-core:web", "chat-core:indexer"):
        pid = program_pid(program)
        assert pid, f"{program} is not running"
        expected = 0 if program.endswith("indexer") else -5
        assert os.getpriority(os.PRIO_PROCESS, pid) == expected, program
        with open(f"/proc/{pid}/status") as f:
            uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
        assert {pwd.getpwuid(int(uid)).pw_name for uid in uids} == {"hipchat"}, program
