"""The nightly backup: run at a set time of day, keep the last N archives.

`hipchat-appliance backup scheduler` runs under supervisor (program ``backup-scheduler``) as a
loop: sleep until the next ``backup.time`` (the host's local time), take a backup into
``backup.dir``, delete all but the newest ``backup.keep`` archives there. A failed backup is
recorded in ``last.json`` (status shows it) and retried at the next scheduled time; the
archives kept are never touched by a failure.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

log = logging.getLogger("hipchat.backup")

ARCHIVE_PATTERN = re.compile(r"^hipchat-backup-(\d{8}T\d{6}Z)-(.+?)\.tar(\.enc)?$")


@dataclass(frozen=True)
class ArchiveFile:
    path: str
    name: str
    stamp: str  # YYYYmmddTHHMMSSZ, sorts by time
    version: str
    encrypted: bool
    bytes: int


def list_archives(directory: str) -> list[ArchiveFile]:
    """The finished archives in ``directory``, oldest first (``.partial`` files are not archives)."""
    found = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        match = ARCHIVE_PATTERN.match(name)
        if match:
            path = os.path.join(directory, name)
            found.append(ArchiveFile(path, name, match.group(1), match.group(2), bool(match.group(3)), os.path.getsize(path)))
    return sorted(found, key=lambda a: (a.stamp, a.name))


def prune(directory: str, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` archives (and leftovers of killed runs); returns what was deleted."""
    archives = list_archives(directory)
    doomed = [a.path for a in archives[: max(0, len(archives) - keep)]]
    for path in doomed:
        os.unlink(path)
    # A killed backup's staging directory or unfinished archive: nobody else writes here.
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if name.startswith(".staging-") or name.endswith(".partial"):
            if time.time() - os.path.getmtime(path) > 3600:
                shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.unlink(path)
                doomed.append(path)
    return doomed


def parse_time_of_day(value: str) -> tuple[int, int]:
    """``"HH:MM"`` as (hour, minute); ValueError otherwise."""
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", value.strip())
    if not match or int(match.group(1)) > 23 or int(match.group(2)) > 59:
        raise ValueError(f"{value!r} is not a time of day HH:MM")
    return int(match.group(1)), int(match.group(2))


def next_run(now: datetime, time_of_day: str) -> datetime:
    """The first moment at ``time_of_day`` strictly after ``now`` (same time zone as ``now``)."""
    hour, minute = parse_time_of_day(time_of_day)
    candidate = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return candidate if candidate > now else candidate + timedelta(days=1)


def run_scheduler(take_backup, directory: str, time_of_day: str, keep: int, *, now=lambda: datetime.now().astimezone(), sleep=time.sleep, rounds: int | None = None) -> None:
    """Forever (or ``rounds`` times): wait for ``time_of_day``, call ``take_backup()``, prune to ``keep``.

    ``take_backup`` records its own outcome in ``last.json``; an exception is logged and the
    loop goes on to the next night.
    """
    done = 0
    while rounds is None or done < rounds:
        due = next_run(now(), time_of_day)
        log.info("next backup at %s", due.isoformat(timespec="minutes"))
        while (left := (due - now()).total_seconds()) > 0:
            sleep(min(left, 60))  # short naps: a changed clock (NTP step, suspend) is noticed
        try:
            take_backup()
        except Exception:
            log.exception("the scheduled backup failed; the next try is at the next scheduled time")
        else:
            for path in prune(directory, keep):
                log.info("deleted %s (keeping the newest %d)", path, keep)
        done += 1
