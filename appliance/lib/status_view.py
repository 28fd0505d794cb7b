"""Renders a status report as one terminal screen (rich tables)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from appliance.lib.status import StatusReport

STATE_STYLE = {"RUNNING": "green", "STARTING": "yellow", "BACKOFF": "red", "FATAL": "red", "STOPPED": "red", "EXITED": "red"}


def human_bytes(n: float) -> str:
    """``n`` bytes for people: 512 B, 3.4 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def render_spool(console: Console, spool) -> None:
    """The message indexing line: what waits in the spool, since when, and how the indexer is doing."""
    if spool is None or "backlog_bytes" not in spool.details:
        return
    d = spool.details
    waiting = ", ".join(f"{r['name']} {human_bytes(r['backlog_bytes'])}" for r in d["directories"] if r["backlog_bytes"])
    age = d["oldest_unindexed_age_seconds"]
    minute = d["last_minute"]
    parts = [
        f"backlog {human_bytes(d['backlog_bytes'])}" + (f" ({waiting})" if waiting else ""),
        f"oldest waiting {age:.0f} s" if age is not None else "nothing waiting",
        f"last success {d['last_success'] or 'never'}",
    ]
    if minute:
        parts.append(f"last minute {minute['records_per_second']:.0f} records/s, lag p99 {minute['lag_p99_ms']} ms")
    parts.append(f"spool disk free {human_bytes(d['filesystem_free_bytes'])}")
    console.print("[bold]Message indexing[/bold]: " + "; ".join(parts))


def render_jobs(console: Console, jobs) -> None:
    """The background jobs line: what waits per kind, retries scheduled, dead letters."""
    if jobs is None or "waiting" not in jobs.details:
        return
    d = jobs.details
    waiting = ", ".join(f"{kind} {n}" for kind, n in d["waiting"].items())
    dead = f"[yellow]{d['dead']} dead letters[/yellow]" if d["dead"] else "no dead letters"
    console.print(f"[bold]Background jobs[/bold]: waiting {waiting}; {d['retrying']} retrying; {dead}")


def render_backups(console: Console, backups) -> None:
    """The backups line: the last one's outcome and age, how many are kept, the schedule."""
    if backups is None or "state" not in backups.details:
        return
    d = backups.details
    schedule = f"nightly at {d['schedule']}, keeping {d['keep']}"
    if d["state"] == "none":
        console.print(f"[bold]Backups[/bold]: no backup yet ({schedule}; `hipchat-appliance backup create` takes one now)")
        return
    age = d.get("age_seconds")
    age_text = f"{age / 3600:.1f} h ago" if age is not None else "never succeeded"
    state = "[yellow]last one FAILED[/yellow]" if d["state"] == "failed" else "last one ok"
    console.print(f"[bold]Backups[/bold]: {state}; newest {d['newest'] or '-'} ({age_text}); {d['archives']} in {d['directory']}; {schedule}")


def render_upgrades(console: Console, upgrades) -> None:
    """The upgrades line: running version, current and previous releases, when the last upgrade ran and its result."""
    if upgrades is None or "installed_version" not in upgrades.details:
        return
    d = upgrades.details
    releases = f"current release {d['current'] or 'none (installed without a bundle)'}, previous {d['previous'] or 'none'}"
    last = d["last"]
    if last is None:
        console.print(f"[bold]Upgrades[/bold]: running {d['installed_version'] or '?'} ({releases}); no upgrade yet")
        return
    style = "green" if last["outcome"] == "succeeded" and last["action"] == "apply" else "yellow"
    took = f", took {last['seconds']:.0f} s" if isinstance(last.get("seconds"), (int, float)) else ""
    console.print(
        f"[bold]Upgrades[/bold]: running {d['installed_version'] or '?'} ({releases}); last: {last['action']} "
        f"{last['from_version']} -> {last['to_version']} ran at {last.get('started_at') or '?'}{took}: "
        f"[{style}]{last['outcome']}[/{style}] ({d['entries']} in `hipchat-appliance upgrade status`)"
    )


def render_status(console: Console, report: StatusReport) -> None:
    by_name = {s.name: s for s in report.sections}

    processes = Table(title="Processes (supervisor)")
    processes.add_column("process")
    processes.add_column("state")
    processes.add_column("pid / uptime")
    for p in by_name["processes"].details.get("processes", []):
        style = STATE_STYLE.get(p["state"], "yellow")
        processes.add_row(p["name"], f"[{style}]{p['state']}[/{style}]", p["description"])
    console.print(processes)

    search = by_name["opensearch"]
    cluster = search.details.get("cluster", {})
    nodes = Table(title=f"OpenSearch: cluster {cluster.get('status', 'unreachable')}, "
                        f"{cluster.get('active_shards', '?')} active shards, "
                        f"cluster manager {search.details.get('elected_cluster_manager')}")
    nodes.add_column("node")
    nodes.add_column("roles")
    nodes.add_column("heap %", justify="right")
    nodes.add_column("elected")
    for n in search.details.get("nodes", []):
        nodes.add_row(n["name"], n["roles"], str(n["heap_percent"]), "*" if n["elected"] else "")
    console.print(nodes)

    redis = by_name["redis"]
    redis_table = Table(title=f"Redis: primary {redis.details.get('primary', 'unknown')}, "
                              f"Sentinel quorum {'ok' if redis.details.get('quorum') else 'NOT reachable'}")
    redis_table.add_column("replica")
    redis_table.add_column("state")
    redis_table.add_column("lag (s / bytes)", justify="right")
    for r in redis.details.get("replicas", []):
        redis_table.add_row(r["address"], r["state"], f"{r['lag_seconds']} / {r['lag_bytes']}")
    for s in redis.details.get("sentinels", []):
        redis_table.add_row(f"sentinel {s['address']}", "up" if s["up"] else "DOWN", "")
    console.print(redis_table)

    mariadb = by_name["mariadb"]
    console.print(f"[bold]MariaDB[/bold]: {mariadb.details.get('version', 'unreachable')}, schema revision "
                  f"{mariadb.details.get('schema_revision')} (code {mariadb.details.get('code_revision')})")

    render_spool(console, by_name.get("spool"))
    render_jobs(console, by_name.get("jobs"))
    render_backups(console, by_name.get("backups"))
    render_upgrades(console, by_name.get("upgrades"))

    disk = Table(title="Disk use")
    disk.add_column("data")
    disk.add_column("path")
    disk.add_column("size", justify="right")
    disk.add_column("filesystem used", justify="right")
    for d in by_name["disk"].details.get("directories", []):
        disk.add_row(d["name"], d["path"], human_bytes(d["bytes"]), f"{d['filesystem_used_percent']}%")
    console.print(disk)

    for section in report.sections:
        for warning in section.warnings:
            console.print(f"[yellow]warning[/yellow] {section.name}: {warning}")
        for problem in section.problems:
            console.print(f"[red]UNHEALTHY[/red] {section.name}: {problem}")
    if report.healthy:
        console.print("[green]The appliance is healthy.[/green]")
