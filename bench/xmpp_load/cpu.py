"""Where the CPU goes during a run: cores used by each group of processes (server, data services, load generator).

Groups are `memory.server_pids` specs (``supervisor:chat-core:xmpp-*``...); the load generator's own
worker processes are added by the scenario. Figures are CPU seconds (user + system, from
/proc/<pid>/stat) over the wall-clock seconds between `start` and `stop`: 1.0 is one core busy.
"""

from __future__ import annotations

import os
import time

from .memory import server_pids

# The appliance's processes, by the supervisor program names the installer gives them.
APPLIANCE_GROUPS = {
    "front ends (xmpp-*)": "supervisor:chat-core:xmpp-*",
    "indexer": "supervisor:chat-core:indexer",
    "web": "supervisor:chat-core:web",
    "redis": "supervisor:redis:*",
    "opensearch data nodes": "supervisor:opensearch:opensearch-data-*",
    "opensearch cluster managers": "supervisor:opensearch:opensearch-cm-*",
    "mariadb": "supervisor:mariadb",
}
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    except (OSError, IndexError, ValueError):
        return 0.0


class CpuWatch:
    """Snapshot the CPU time of each group at `start` and `stop`; `cores()` per group over that window."""

    def __init__(self, groups: dict[str, str] | None = None, extra: dict[str, list[int]] | None = None):
        self.pids: dict[str, list[int]] = {}
        self.specs = groups if groups is not None else APPLIANCE_GROUPS
        for name, spec in self.specs.items():
            try:
                found = server_pids(spec)
            except (OSError, ValueError):
                found = []
            if found:
                self.pids[name] = found
        for name, pids in (extra or {}).items():
            self.pids[name] = list(pids)
        self._start: dict[str, float] = {}
        self._t0 = self._t1 = 0.0
        self._end: dict[str, float] = {}

    def _sample(self) -> dict[str, float]:
        return {name: sum(_cpu_seconds(p) for p in pids) for name, pids in self.pids.items()}

    def start(self) -> None:
        self._t0, self._start = time.monotonic(), self._sample()

    def stop(self) -> None:
        self._t1, self._end = time.monotonic(), self._sample()

    def restarted(self) -> list[str]:
        """Groups whose processes changed since this watch began (a restart, a kill): the run's figures are void."""
        changed = []
        for name, spec in self.specs.items():
            try:
                now = server_pids(spec)
            except (OSError, ValueError):
                now = []
            if sorted(now) != sorted(self.pids.get(name, [])):
                changed.append(name)
        return changed

    def cores(self) -> dict[str, float]:
        wall = self._t1 - self._t0
        if wall <= 0:
            return {}
        out = {name: round((self._end.get(name, 0) - self._start.get(name, 0)) / wall, 2) for name in self.pids}
        out["total"] = round(sum(out.values()), 2)
        return out
