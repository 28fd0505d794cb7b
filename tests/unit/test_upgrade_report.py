"""The operator's view of upgrades (`appliance.upgrade.report`): versions, history, the warning
about the newest entry, the Upgrades line of `status` and the console's Backups page.

History and release links are written in a temporary directory the code is pointed at; nothing
is upgraded.
"""

from __future__ import annotations

import json
import os
import re

import pytest
from rich.console import Console as RichConsole

from appliance.lib.status import check_upgrades
from appliance.lib.status_view import render_upgrades
from appliance.upgrade import history, releases
from appliance.upgrade.report import newest_first, upgrade_report, warning_of

SUCCEEDED = {"action": "apply", "from_version": "0.0.9", "to_version": "0.1.0", "started_at": "2026-11-20T10:00:00Z",
             "finished_at": "2026-11-20T10:04:45Z", "seconds": 285.2, "outcome": "succeeded",
             "log": "/var/log/hipchat/upgrade-20261120-100000.log", "backup": "/var/lib/hipchat/backups/hipchat-backup-20261120T100000Z-0.0.9.tar"}
ROLLED_BACK = {"action": "apply", "from_version": "0.1.0", "to_version": "0.2.0", "started_at": "2026-11-25T09:00:00Z",
               "finished_at": "2026-11-25T09:03:10Z", "seconds": 190.0, "outcome": "rolled back",
               "failure": "health check failed: rest: GET /v2/room answered 500\nmore lines of the installer",
               "log": "/var/log/hipchat/upgrade-20261125-090000.log", "backup": "/var/lib/hipchat/backups/b.tar"}


@pytest.fixture
def appliance_dirs(tmp_path, monkeypatch):
    """The history and the release links in ``tmp_path``; the running version 0.1.0."""
    monkeypatch.setattr(history, "HISTORY_DIR", str(tmp_path / "upgrades"))
    monkeypatch.setattr(releases, "BASE_DIR", str(tmp_path / "opt"))
    monkeypatch.setattr(releases, "installed_version", lambda: "0.1.0")
    for version in ("0.0.9", "0.1.0"):
        os.makedirs(tmp_path / "opt" / "releases" / version)
    releases.set_links(releases.release_path("0.1.0"), releases.release_path("0.0.9"))
    return tmp_path


def line_of(section) -> str:
    console = RichConsole(record=True, width=400)
    render_upgrades(console, section)
    return console.export_text()


def test_a_fresh_install_says_no_upgrade_yet_and_does_not_warn(tmp_path, monkeypatch):
    """No history and no release links: the running version, 'no upgrade yet', no warning, healthy."""
    monkeypatch.setattr(history, "HISTORY_DIR", str(tmp_path / "upgrades"))
    monkeypatch.setattr(releases, "BASE_DIR", str(tmp_path / "opt"))
    monkeypatch.setattr(releases, "installed_version", lambda: "0.1.0")
    section = check_upgrades()
    assert section.healthy and section.warnings == []
    assert "Upgrades: running 0.1.0 (current release none (installed without a bundle), previous none); no upgrade yet" in line_of(section)


def test_after_a_successful_upgrade_the_line_names_versions_time_and_result(appliance_dirs):
    """The Upgrades line: running version, current and previous release, when the last upgrade ran, how long, its outcome."""
    history.record(SUCCEEDED)
    section = check_upgrades()
    assert section.healthy and section.warnings == []
    assert section.details["current"] == "0.1.0" and section.details["previous"] == "0.0.9"
    text = line_of(section)
    assert "running 0.1.0 (current release 0.1.0, previous 0.0.9)" in text
    assert "last: apply 0.0.9 -> 0.1.0 ran at 2026-11-20T10:00:00Z, took 285 s: succeeded (1 in" in text


def test_an_upgrade_rolled_back_warns_with_why_and_the_log(appliance_dirs):
    """The newest apply was rolled back: a warning (not a problem) with versions, time, the failure's first line and the log."""
    history.record(SUCCEEDED)
    history.record(ROLLED_BACK)
    section = check_upgrades()
    assert section.healthy, "a failed upgrade must not make status unhealthy (an upgrade's health check asks status)"
    assert section.warnings == [
        "the upgrade from 0.1.0 to 0.2.0 failed at 2026-11-25T09:03:10Z and was rolled back to 0.1.0: "
        "health check failed: rest: GET /v2/room answered 500; log /var/log/hipchat/upgrade-20261125-090000.log"
    ]
    assert "last: apply 0.1.0 -> 0.2.0 ran at 2026-11-25T09:00:00Z, took 190 s: rolled back (2 in" in line_of(section)


def test_a_failed_rollback_names_the_backup_to_restore():
    """Apply and its rollback both failed: the warning gives the restore command with the backup the upgrade took."""
    entry = dict(ROLLED_BACK, outcome="failed", rollback_failure="schema downgrade to 0006 failed")
    text = warning_of(entry)
    assert "its rollback failed too (schema downgrade to 0006 failed)" in text
    assert "`hipchat-appliance restore /var/lib/hipchat/backups/b.tar`" in text


def test_an_operator_rollback_and_an_unhealthy_rollback_warn():
    """The newest entry a rollback: it warns that the appliance went back; an unhealthy one says so."""
    back = {"action": "rollback", "from_version": "0.2.0", "to_version": "0.1.0", "finished_at": "2026-11-25T10:00:00Z", "outcome": "succeeded"}
    assert warning_of(back) == "the appliance was rolled back from 0.2.0 to 0.1.0 at 2026-11-25T10:00:00Z (`upgrade rollback`)"
    assert "ended unhealthy" in warning_of(dict(back, outcome="unhealthy"))


def test_succeeded_and_refused_upgrades_do_not_warn():
    assert warning_of(SUCCEEDED) is None
    assert warning_of(dict(SUCCEEDED, outcome="refused")) is None
    assert warning_of(None) is None


def test_an_unreadable_history_is_a_warning_not_an_exception(appliance_dirs):
    """A damaged history.json: status warns naming the file; the report has an empty history and the error."""
    os.makedirs(appliance_dirs / "upgrades")
    (appliance_dirs / "upgrades" / "history.json").write_text("{not json")
    report = upgrade_report()
    assert report["history"] == [] and report["error"].startswith(f"cannot read {appliance_dirs}/upgrades/history.json")
    section = check_upgrades()
    assert section.healthy and len(section.warnings) == 1 and "history.json" in section.warnings[0]
    (appliance_dirs / "upgrades" / "history.json").write_text("[]")  # JSON, but not the format's object
    assert upgrade_report()["error"] is not None


def test_upgrade_status_json_and_the_report_agree(appliance_dirs):
    """`upgrade status --json` is the report: versions, the history oldest first, the warning."""
    history.record(SUCCEEDED)
    history.record(ROLLED_BACK)
    report = upgrade_report()
    assert [e["to_version"] for e in report["history"]] == ["0.1.0", "0.2.0"]
    assert json.loads(json.dumps(report))["warning"].startswith("the upgrade from 0.1.0 to 0.2.0 failed")


def test_newest_first_keeps_a_limit_and_says_why_each_failed():
    """Rows newest first, at most ``limit``; ``detail`` is a failure's first line, else a failed health check, else a note."""
    unhealthy = {"action": "rollback", "outcome": "unhealthy", "health": {"status": {"ok": False, "detail": "schema at 0007"}, "rest": {"ok": True, "detail": "fine"}}}
    noted = {"action": "rollback", "outcome": "succeeded", "notes": ["0.1.0 was installed without a bundle\nsecond line"]}
    rows = newest_first([SUCCEEDED, ROLLED_BACK, unhealthy, noted], limit=3)
    assert [r["detail"] for r in rows] == ["0.1.0 was installed without a bundle", "status: schema at 0007",
                                           "health check failed: rest: GET /v2/room answered 500"]
    assert newest_first([SUCCEEDED])[0]["detail"] == ""
    assert len(newest_first([dict(SUCCEEDED, failure="x" * 500)])[0]["detail"]) == 200


def test_the_backups_page_shows_versions_warning_and_history(appliance_dirs, monkeypatch, console_with_backups):
    """The console's Backups page: running, current and previous versions, the warning, every entry newest first."""
    history.record(SUCCEEDED)
    history.record(dict(ROLLED_BACK, failure="<script>alert(1)</script> broke"))
    page = console_with_backups()
    versions = re.search(r'<p id="versions">(.*?)</p>', page, re.S).group(1)
    assert "<strong>0.1.0</strong>; current release 0.1.0; previous release 0.0.9" in versions
    warning = re.search(r'id="upgrade-warning">(.*?)</p>', page, re.S).group(1)
    assert "the upgrade from 0.1.0 to 0.2.0 failed at 2026-11-25T09:03:10Z and was rolled back to 0.1.0" in warning
    assert "&lt;script&gt;" in page and "<script>" not in page
    table = re.search(r'<table id="upgrade-history">(.*?)</table>', page, re.S).group(1)
    assert table.index("2026-11-25T09:00:00Z") < table.index("2026-11-20T10:00:00Z")
    assert "rolled back" in table and "succeeded" in table and "285.2 s" in table


def test_the_backups_page_without_history_says_no_upgrade_yet(appliance_dirs, console_with_backups):
    page = console_with_backups()
    assert "No upgrade yet." in page and 'id="upgrade-warning"' not in page


@pytest.fixture
def console_with_backups(redis_server, tmp_path, monkeypatch):
    """Render /admin/backups as an admin of an in-process console (no agent: the backup directory is read here)."""
    from tests.unit.test_console import Authenticator, call, log_in, run_now

    from hipchat_server.web import sessions as web
    from hipchat_server.web.console import agent, backups
    from hipchat_server.web.console.app import Console

    monkeypatch.setattr(agent, "RUN_DIR", str(tmp_path / "no-agent"))
    redis_server.flushall()

    class ChatServer:
        def get_config(self):
            return type("Config", (), {"backup": type("Backup", (), {"dir": str(tmp_path / "backups")})()})()

    console = Console(ChatServer(), web.WebSessions(lambda: redis_server, Authenticator()), run_blocking=run_now, admin_check=lambda u: True)
    backups.register(console)

    def render() -> str:
        answer = call(console, "GET", "/backups", cookies=log_in(console, "admin-ann"))
        assert answer.status == 200, answer.body
        return answer.body.decode()

    return render
