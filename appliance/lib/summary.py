"""The end-of-install summary: what runs where, on which ports, and where the admin credentials are."""

from __future__ import annotations

import os
import re
import subprocess
from collections import defaultdict

from rich.console import Console
from rich.table import Table

from appliance.lib.status import supervisor_rpc
from hipchat_server.config import Config


def listening_ports_by_pid() -> dict[int, set[str]]:
    """Each PID's listening TCP addresses, read from `ss`."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=False).stdout
    ports: dict[int, set[str]] = defaultdict(set)
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        for pid in re.findall(r"pid=(\d+)", line):
            ports[int(pid)].add(fields[3])
    return ports


def descendants(pid: int) -> set[int]:
    """``pid`` and every process below it (OpenSearch and MariaDB may fork helpers)."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
                children[parent].append(int(entry))
            except OSError:
                continue
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p not in found:
            found.add(p)
            todo.extend(children.get(p, []))
    return found


def render_summary(console: Console, config: Config, secrets_dir: str = "/etc/hipchat/secrets") -> None:
    ports = listening_ports_by_pid()
    table = Table(title="What runs where (all under supervisor)")
    table.add_column("process")
    table.add_column("state")
    table.add_column("listens on")
    for info in supervisor_rpc(config.appliance.supervisor_config).supervisor.getAllProcessInfo():
        pids = descendants(info["pid"]) if info["pid"] else set()
        addresses = sorted({a for p in pids for a in ports.get(p, ())}, key=lambda a: int(a.rsplit(":", 1)[1]))
        name = f"{info['group']}:{info['name']}" if info["group"] != info["name"] else info["name"]
        table.add_row(name, info["statename"], ", ".join(addresses))
    console.print(table)
    console.print(f"Web and REST API:   {config.server.public_url}/  (health: {config.server.public_url}/health)")
    console.print(f"XMPP domain:        {config.server.domain}")
    console.print(f"Administrator:      user 'admin', password in {secrets_dir}/admin_password (root only)")
    console.print(f"Other secrets:      {secrets_dir}/ (generated once, mode 0600)")
    console.print(f"CA certificate:     {config.tls.ca_certificate} (give it to clients to trust)")
    console.print("Data:               " + ", ".join(f"{k} {v}" for k, v in sorted(config.appliance.data_dirs.items())))
    console.print("Logs:               /var/log/hipchat")
    console.print("Check health with:  hipchat-appliance status   (add --json for monitoring)")
