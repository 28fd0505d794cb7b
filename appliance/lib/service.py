"""Starting the appliance: supervisord and, through it, every process."""

from __future__ import annotations

import http.client
import subprocess
import sys
import time
import xmlrpc.client

from rich.console import Console

from hipchat_server.config import load_config

SUPERVISORD = f"{sys.prefix}/bin/supervisord"


def start_appliance(console: Console, config_path: str | None = None, timeout: float = 300) -> int:
    """Start supervisord unless it runs, then wait until every program is RUNNING; return an exit code."""
    from appliance.lib.status import supervisor_rpc

    config = load_config(config_path)
    # A fresh proxy per call: after a refused connection, an XML-RPC proxy's
    # HTTP connection is left unusable (CannotSendRequest).
    def rpc():
        return supervisor_rpc(config.appliance.supervisor_config).supervisor

    try:
        rpc().getPID()
        # Programs stopped by hand (`supervisorctl stop`, a restore's wipe) stay stopped in a running
        # supervisord; `start` means every process, so they are started (in priority order).
        console.print("supervisord is already running; starting any of its programs that are stopped.")
        rpc().startAllProcesses(False)
    except OSError:
        console.print("Starting supervisord...")
        subprocess.run([SUPERVISORD, "-c", config.appliance.supervisor_config], check=True)
    deadline = time.monotonic() + timeout
    pending: list[str] = []
    while time.monotonic() < deadline:
        try:
            infos = rpc().getAllProcessInfo()
        except (OSError, http.client.HTTPException, xmlrpc.client.Fault):
            time.sleep(1)
            continue
        pending = [i["name"] for i in infos if i["statename"] != "RUNNING"]
        if not pending:
            console.print(f"[green]All {len(infos)} appliance processes are running.[/green]")
            return 0
        time.sleep(1)
    console.print(f"[red]Still not running after {timeout:.0f} s:[/red] {', '.join(pending)}; "
                  "see /var/log/hipchat and `hipchat-appliance status`.")
    return 1
