"""The memory of the server under test: the summed RSS (or PSS) of its processes.

Which processes: ``pid:1,2``, ``pidfile:/path``, ``match:REGEX`` (against /proc/<pid>/cmdline),
or ``supervisor:chat-core:xmpp-*`` (programs of the appliance's supervisord, glob on their names).
"""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess

SUPERVISORCTL = ["/opt/hipchat/venv/bin/supervisorctl", "-c", "/etc/hipchat/supervisord.conf"]


def _supervisor_pids(pattern: str) -> list[int]:
    out = subprocess.run(SUPERVISORCTL + ["status"], capture_output=True, text=True, timeout=30).stdout
    pids = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and fnmatch.fnmatch(parts[0], pattern) and parts[1] == "RUNNING":
            match = re.search(r"pid (\d+)", line)
            if match:
                pids.append(int(match.group(1)))
    return pids


def _matching_pids(regex: str) -> list[int]:
    pattern, pids = re.compile(regex), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if pattern.search(cmdline):
            pids.append(int(entry))
    return pids


def server_pids(spec: str) -> list[int]:
    """The pids ``spec`` names (see the module docstring); several specs joined by ``;``."""
    pids: list[int] = []
    for part in filter(None, spec.split(";")):
        kind, _, value = part.partition(":")
        if kind == "pid":
            pids += [int(p) for p in value.split(",") if p]
        elif kind == "pidfile":
            with open(value) as f:
                pids.append(int(f.read().strip()))
        elif kind == "match":
            pids += _matching_pids(value)
        elif kind == "supervisor":
            pids += _supervisor_pids(value)
        else:
            raise ValueError(f"server memory spec {part!r}: expected pid:, pidfile:, match: or supervisor:")
    return sorted(set(pids))


def _kib(path: str, field: str) -> int:
    with open(path) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def memory_kib(pids: list[int], kind: str = "rss") -> int:
    """Summed VmRSS (or Pss from smaps_rollup) of ``pids`` in KiB; a vanished pid counts 0."""
    total = 0
    for pid in pids:
        try:
            if kind == "pss":
                total += _kib(f"/proc/{pid}/smaps_rollup", "Pss")
            else:
                total += _kib(f"/proc/{pid}/status", "VmRSS")
        except OSError:
            pass
    return total


def alive(pids: list[int]) -> bool:
    return all(os.path.exists(f"/proc/{pid}") for pid in pids)
