"""Restart the chat core one process at a time, so XMPP clients always have a front end to go to.

The XMPP front ends share the client ports (SO_REUSEPORT). Stopping one ends its streams
with ``system-shutdown`` after handing every unacknowledged stanza to the user's other
resources or offline storage (docs/architecture.md, "Stream management and where a message
is"); its clients reconnect and the kernel can only give them the front ends still listening.
The next front end is stopped only once the restarted one listens again, so at every moment
at least one front end accepts clients. Then the other chat programs (HTTPS, indexer,
workers, schedulers) are restarted one by one; each of them tolerates a short absence
(the spool keeps what the indexer has not read, the job queue what the workers have not done).
"""

from __future__ import annotations

import os
import time
from typing import Callable

GROUP = "chat-core"
FRONT_END = "xmpp"
LISTEN_TIMEOUT = 60.0




def process_listens(pid: int, port: int) -> bool:
    """True when process ``pid`` holds a listening socket on ``port``.

    Reads the process's own view of the TCP tables (/proc/<pid>/net), so it works from a
    caller in another network namespace too.
    """
    inodes = set()
    for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(fields[9])
        except (FileNotFoundError, PermissionError, StopIteration):
            continue
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


def rolling_restart(rpc, c2s_port: int, say: Callable[[str], None] = print, clock=time.monotonic, sleep=time.sleep) -> dict[str, float]:
    """Restart every program of the chat-core group, front ends first and one at a time.

    Returns how long each program was down (seconds, stop to running). Raises RuntimeError
    when a front end does not listen again within LISTEN_TIMEOUT (the others are left running).
    """
    infos = [i for i in rpc.supervisor.getAllProcessInfo() if i["group"] == GROUP]
    front_ends = sorted(i["name"] for i in infos if i["name"].startswith(f"{FRONT_END}-"))
    others = sorted(i["name"] for i in infos if not i["name"].startswith(f"{FRONT_END}-"))
    down: dict[str, float] = {}
    for name in front_ends + others:
        full = f"{GROUP}:{name}"
        started = clock()
        say(f"restarting {full}")
        state = rpc.supervisor.getProcessInfo(full)["statename"]
        if state in ("RUNNING", "STARTING", "BACKOFF"):
            rpc.supervisor.stopProcess(full, True)
        rpc.supervisor.startProcess(full, True)
        if name in front_ends:
            deadline = clock() + LISTEN_TIMEOUT
            while True:
                pid = rpc.supervisor.getProcessInfo(full)["pid"]
                if pid and process_listens(pid, c2s_port):
                    break
                if clock() > deadline:
                    raise RuntimeError(f"{full} did not listen on port {c2s_port} within {LISTEN_TIMEOUT:.0f} s after its restart")
                sleep(0.2)
        down[full] = round(clock() - started, 1)
        say(f"{full} back after {down[full]} s")
    return down


def main() -> None:
    """``python -m appliance.upgrade.restart``: the chat_core role's handler during an upgrade."""
    import sys

    from appliance.lib.status import supervisor_rpc
    from hipchat_server.config import load_config

    config = load_config(os.environ.get("HIPCHAT_CONFIG", "/etc/hipchat/hipchat.yml"))
    try:
        rolling_restart(supervisor_rpc(config.appliance.supervisor_config), config.xmpp.c2s_port, say=lambda s: print(s, flush=True))
    except RuntimeError as e:
        print(e, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
