"""The nightly schedule, keeping the last N, the spool cut and the Backups line of status."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone

import pytest

from appliance.backup.create import redacted_config, write_last_result
from appliance.backup.schedule import list_archives, next_run, parse_time_of_day, prune, run_scheduler
from appliance.backup.spool import cut_spool, message_records
from appliance.lib.status import check_backups
from hipchat_server.config import BackupConfig, Config, ConfigError
from hipchat_server.storage.spool import encode_frame

UTC = timezone.utc


def test_next_run_is_today_when_still_ahead_else_tomorrow():
    """The nightly time is the next one strictly after now."""
    now = datetime(2026, 11, 26, 1, 0, tzinfo=UTC)
    assert next_run(now, "02:30") == datetime(2026, 11, 26, 2, 30, tzinfo=UTC)
    assert next_run(now.replace(hour=2, minute=30), "02:30") == datetime(2026, 11, 27, 2, 30, tzinfo=UTC)
    assert next_run(now.replace(hour=23), "02:30") == datetime(2026, 11, 27, 2, 30, tzinfo=UTC)


@pytest.mark.parametrize("bad", ["2:3", "24:00", "12:60", "noon", ""])
def test_bad_times_of_day_are_refused(bad):
    with pytest.raises(ValueError):
        parse_time_of_day(bad)


def test_config_refuses_a_bad_backup_time_naming_the_key():
    """A typo in backup.time is a configuration error that names the key."""
    raw = {"backup": {"time": "25:00"}}
    with pytest.raises(ConfigError, match="backup.time"):
        BackupConfig.load(raw)
    assert BackupConfig.load({"backup": {"keep": 3, "passphrase_file": ""}}).keep == 3
    assert BackupConfig.load({}) == BackupConfig()


def make_archives(directory, stamps):
    for stamp in stamps:
        (directory / f"hipchat-backup-{stamp}-0.1.0.tar").write_bytes(b"x")


def test_prune_keeps_the_newest_n_and_ignores_other_files(tmp_path):
    """Only finished archives count; the oldest beyond ``keep`` are deleted."""
    stamps = [f"202611{day:02d}T023000Z" for day in range(1, 10)]
    make_archives(tmp_path, stamps)
    (tmp_path / "hipchat-backup-20261110T023000Z-0.1.0.tar.partial").write_bytes(b"in progress")
    (tmp_path / "last.json").write_text("{}")
    deleted = prune(str(tmp_path), 7)
    assert sorted(os.path.basename(p) for p in deleted) == [f"hipchat-backup-{s}-0.1.0.tar" for s in stamps[:2]]
    assert [a.stamp for a in list_archives(str(tmp_path))] == stamps[2:]
    assert (tmp_path / "hipchat-backup-20261110T023000Z-0.1.0.tar.partial").exists()  # fresh: maybe running


def test_scheduler_runs_at_the_time_and_prunes_only_after_success(tmp_path):
    """Two nights: the first backup fails (nothing pruned), the second succeeds (pruned to keep)."""
    make_archives(tmp_path, ["20261101T023000Z", "20261102T023000Z", "20261103T023000Z"])
    clock = [datetime(2026, 11, 26, 2, 0, tzinfo=UTC)]
    taken = []

    def sleep(seconds):
        clock[0] += timedelta(seconds=seconds)

    def take_backup():
        taken.append(clock[0])
        if len(taken) == 1:
            raise RuntimeError("OpenSearch down")
        make_archives(tmp_path, [clock[0].strftime("%Y%m%dT%H%M%SZ")])

    run_scheduler(take_backup, str(tmp_path), "02:30", 2, now=lambda: clock[0], sleep=sleep, rounds=1)
    assert len(list_archives(str(tmp_path))) == 3
    run_scheduler(take_backup, str(tmp_path), "02:30", 2, now=lambda: clock[0], sleep=sleep, rounds=1)
    assert [t.strftime("%d %H:%M") for t in taken] == ["26 02:30", "27 02:30"]
    assert [a.stamp for a in list_archives(str(tmp_path))] == ["20261103T023000Z", "20261127T023000Z"]


def test_spool_cut_keeps_only_complete_frames_at_the_cut(tmp_path):
    """A segment's copy ends at its last complete frame; the dead-letter directory is not a spool."""
    spool = tmp_path / "spool"
    (spool / "xmpp-0").mkdir(parents=True)
    (spool / "spool-rejected").mkdir()
    (spool / "spool-rejected" / "000000000001.seg").write_bytes(b"x")
    frames = [encode_frame({"id": f"id{n}", "timestamp": "2026-11-26T10:00:00.000Z", "body": "hi"}) for n in range(3)]
    torn = encode_frame({"id": "id3", "timestamp": "2026-11-26T10:00:00.000Z"})[:-3]
    (spool / "xmpp-0" / "000000000001.seg").write_bytes(b"".join(frames) + torn)
    (spool / "xmpp-0" / "not-a-segment").write_bytes(b"x")
    copies = cut_spool(str(spool), str(tmp_path / "staging"))
    assert [(c.member, c.records, c.bytes, c.copied) for c in copies] == [
        ("spool/xmpp-0/000000000001.seg", 3, sum(len(f) for f in frames), False)
    ]
    assert [r["id"] for r in message_records(copies)] == ["id0", "id1", "id2"]
    # A hard link: the same file, so later appends do not change what was measured.
    assert os.stat(copies[0].path).st_ino == os.stat(spool / "xmpp-0" / "000000000001.seg").st_ino


def test_clear_archives_carry_the_config_without_passwords():
    """Passwords and tokens are replaced in the configuration a clear archive holds."""
    text = "database:\n  host: x\n  password: hunter2\npush:\n  gateway_token: abc\n  gateway_url: ''\n"
    out = redacted_config(text).decode()
    assert "hunter2" not in out and "abc" not in out and "host: x" in out


def test_status_says_no_backup_yet_without_being_unhealthy(tmp_path):
    """A fresh install: no warning, healthy, state none."""
    section = check_backups(BackupConfig(dir=str(tmp_path / "missing")))
    assert section.healthy and not section.warnings and section.details["state"] == "none"


def test_status_warns_when_the_last_backup_failed_or_is_old(tmp_path):
    """A failed last backup and one older than 26 h are warnings (the appliance stays healthy)."""
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    make_archives(tmp_path, ["20261125T023000Z"])
    write_last_result(str(tmp_path), {"ok": True, "finished_at": "2026-11-25T02:31:40.000Z"})
    fresh = check_backups(BackupConfig(dir=str(tmp_path)), now=now.timestamp())
    assert fresh.healthy and not fresh.warnings and fresh.details["state"] == "ok"
    old = check_backups(BackupConfig(dir=str(tmp_path)), now=(now + timedelta(hours=17)).timestamp())
    assert old.healthy and "h old" in old.warnings[0]
    write_last_result(str(tmp_path), {"ok": False, "finished_at": "2026-11-25T11:00:00.000Z", "error": "BackupError: disk full"})
    failed = check_backups(BackupConfig(dir=str(tmp_path)), now=now.timestamp())
    assert failed.healthy and "failed" in failed.warnings[0] and "disk full" in failed.warnings[0]
    assert json.loads((tmp_path / "last.json").read_text())["ok"] is False


def test_a_backup_runs_on_cpu_time_chat_leaves_and_so_do_its_children():
    """lower_priority puts the process (and tar, gzip, mariadb-dump it starts) under SCHED_IDLE."""
    import subprocess
    import sys

    code = (
        "import os, subprocess; from appliance.backup.create import lower_priority; lower_priority(); "
        "print(os.sched_getscheduler(0) == os.SCHED_IDLE, "
        "subprocess.run(['python3', '-c', 'import os; print(os.sched_getscheduler(0) == os.SCHED_IDLE)'], "
        "capture_output=True, text=True).stdout.strip())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True"]
