"""The console dashboard's figures: the health of every service (the same checks as `hipchat-appliance
status`), connected users, messages per minute over the last hour, spool depth and indexing lag,
OpenSearch heap per node, Redis primary and replica, disk per data directory.

Gathering them takes a while (every check, a walk of each data directory),
so `DashboardFigures` keeps the last set and gathers a new one in the
background once it is older than `REFRESH_SECONDS`: a page shows figures at
most that old (and says how old) and never waits, except for the very first.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from twisted.internet import defer, threads

from hipchat_server.storage.sessions import FRONTEND_KEY

log = logging.getLogger("hipchat.console")

REFRESH_SECONDS = 15.0


@dataclass
class Figures:
    gathered_at: float
    sections: dict  # name -> appliance.lib.status.Section
    healthy: bool
    connected_users: int | None
    connected_sessions: int | None
    per_minute: list = field(default_factory=list)  # (datetime, messages)
    errors: list = field(default_factory=list)


def count_sessions(redis) -> tuple[int, int]:
    """(distinct users, sessions) bound on every front end, from each front end's own session set."""
    users, sessions = set(), 0
    for key in redis.scan_iter(match=FRONTEND_KEY.format(frontend="*"), count=1000):
        for entry in redis.smembers(key):
            entry = entry.decode() if isinstance(entry, bytes) else entry
            sessions += 1
            users.add(entry.partition("/")[0])
    return len(users), sessions


def _each_check(chat_server, error: Exception) -> list:
    """The checks of `collect_status` run one by one, each failure a problem of its own section."""
    from appliance.lib import status

    sections = []
    for name, check in status.status_checks(chat_server).items():
        try:
            sections.append(check())
        except Exception as e:
            section = status.Section(name)
            section.problem(f"the check failed here: {type(e).__name__}: {e}")
            sections.append(section)
    other = status.Section("status")
    other.problem(f"collecting the full status failed in this process: {type(error).__name__}: {error}")
    return sections + [other]


def _hidden_from_console(sections: list) -> None:
    """Mark what this process may not read (supervisor's socket and the backups are root's) as unknown, not failed.

    The HTTPS process runs as the service user; `hipchat-appliance status`
    as root sees these. A section whose every problem is a permission
    refusal is shown as unknown with a warning saying so.
    """
    for section in sections:
        denied = [p for p in section.problems if "Permission denied" in p]
        if denied and len(denied) == len(section.problems):
            section.problems.clear()
            section.healthy = True
            section.details["unknown"] = True
            section.warnings.append("not readable by the console's process (root only): run `hipchat-appliance status` as root")


def sections_of(report: dict) -> list:
    """The `appliance.lib.status.Section` objects of a report's ``to_dict()`` (what the console's root agent answers)."""
    from appliance.lib.status import Section

    return [Section(name, s["healthy"], list(s["problems"]), list(s["warnings"]), dict(s["details"])) for name, s in report["sections"].items()]


def gather(chat_server, collect=None) -> Figures:
    """Every figure, now (blocking: seconds on a large appliance).

    ``collect()`` answers the status sections (the console asks its root agent,
    which sees supervisor and the backups); None runs the checks in this process.
    """
    from appliance.lib.status import collect_status
    from hipchat_server.storage.message_stats import MessageStatsStore

    try:
        sections = collect() if collect is not None else collect_status(chat_server).sections
    except Exception as e:  # one check crashing (e.g. a directory this user may not read) must not blank the page
        log.exception("collecting the status failed; running each check on its own")
        sections = _each_check(chat_server, e)
    _hidden_from_console(sections)
    figures = Figures(time.time(), {s.name: s for s in sections}, all(s.healthy for s in sections), None, None)
    try:
        figures.connected_users, figures.connected_sessions = count_sessions(chat_server.get_redis_primary())
    except Exception as e:
        figures.errors.append(f"connected users: {e}")
    try:
        stats = MessageStatsStore(chat_server.get_opensearch_client(), chat_server.get_config().archive.index_prefix)
        figures.per_minute = stats.histogram("1m", "now-60m/m")
    except Exception as e:
        figures.errors.append(f"messages per minute: {e}")
    return figures


class DashboardFigures:
    """The last `Figures`, renewed in a thread when older than ``refresh`` seconds."""

    def __init__(self, gather_now, *, refresh: float = REFRESH_SECONDS, clock=time.time, run_blocking=threads.deferToThread):
        self.gather_now, self.refresh, self.clock, self.run_blocking = gather_now, refresh, clock, run_blocking
        self.latest: Figures | None = None
        self._running: defer.Deferred | None = None

    def get(self) -> defer.Deferred:
        """Fires with figures: the kept ones at once (renewing them behind when old), else the first gathered."""
        stale = self.latest is None or self.clock() - self.latest.gathered_at > self.refresh
        if stale and self._running is None:
            self._running = self.run_blocking(self.gather_now)
            self._running.addBoth(self._gathered)
        if self.latest is not None:
            return defer.succeed(self.latest)
        waiting = defer.Deferred()
        self._running.addBoth(lambda result: (waiting.callback(self.latest), result)[1])
        return waiting

    def _gathered(self, result):
        self._running = None
        if isinstance(result, Figures):
            self.latest = result
            return None
        log.error("gathering the dashboard's figures failed: %s", result.getTraceback())
        return None  # the page keeps the older figures
