"""The appliance's health on one screen: what `hipchat-appliance status` shows.

Each ``check_*`` function inspects one part and returns a :class:`Section`
whose ``problems`` say, in an operator's words, what is wrong. A part that
cannot be reached is a problem in its section, never an exception.
"""

from __future__ import annotations

import configparser
import os
import shutil
import time
import xmlrpc.client
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from hipchat_server.config import Config

# Above this share of a filesystem in use, status warns (OpenSearch stops
# allocating shards at its 85% low watermark).
DISK_WARNING_PERCENT = 80
# The seed's lesson: a JVM heap constantly above 75% is heading for long GC pauses.
HEAP_WARNING_PERCENT = 75
# Messages are normally indexed within 2 s; one waiting this long means indexing is behind.
INDEXING_BEHIND_SECONDS = 30
# The indexer has not indexed anything for this long while messages wait: it is stuck or down.
INDEXER_STALLED_SECONDS = 60
# Backups are nightly: a day and two hours without a new one means the last night's was missed.
BACKUP_WARNING_SECONDS = 26 * 3600


@dataclass
class Section:
    name: str
    healthy: bool = True
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def problem(self, text: str) -> None:
        self.healthy = False
        self.problems.append(text)


@dataclass
class StatusReport:
    sections: list[Section]

    @property
    def healthy(self) -> bool:
        return all(s.healthy for s in self.sections)

    def to_dict(self) -> dict[str, Any]:
        return {"healthy": self.healthy, "sections": {s.name: asdict(s) for s in self.sections}}


def supervisor_rpc(supervisor_config: str):
    """An XML-RPC proxy to supervisord over the UNIX socket named in its config."""
    from supervisor.xmlrpc import SupervisorTransport

    parser = configparser.RawConfigParser()
    parser.read(supervisor_config)
    socket_path = parser.get("unix_http_server", "file")
    transport = SupervisorTransport(None, None, f"unix://{socket_path}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def check_processes(config: Config) -> Section:
    section = Section("processes")
    try:
        infos = supervisor_rpc(config.appliance.supervisor_config).supervisor.getAllProcessInfo()
    except (OSError, xmlrpc.client.Error, configparser.Error) as e:
        section.problem(f"supervisord does not answer ({e}); start it with `hipchat-appliance start`")
        return section
    processes = []
    for info in infos:
        full_name = f"{info['group']}:{info['name']}" if info["group"] != info["name"] else info["name"]
        processes.append({"name": full_name, "state": info["statename"], "pid": info["pid"], "description": info["description"]})
        if info["statename"] != "RUNNING":
            section.problem(f"process {full_name} is {info['statename']}")
    if not processes:
        section.problem("supervisor runs no appliance process; re-run the installer")
    section.details["processes"] = processes
    return section


def check_opensearch(client) -> Section:
    section = Section("opensearch")
    try:
        health = client.cluster.health(request_timeout=5)
        nodes = client.cat.nodes(request_timeout=5, format="json", h="name,node.roles,heap.percent,ram.percent,cluster_manager,ip,http_address")
    except Exception as e:
        section.problem(f"the OpenSearch cluster does not answer ({type(e).__name__}: {e})")
        return section
    section.details["cluster"] = {
        "status": health["status"],
        "nodes": health["number_of_nodes"],
        "data_nodes": health["number_of_data_nodes"],
        "active_shards": health["active_shards"],
        "unassigned_shards": health["unassigned_shards"],
    }
    if health["status"] != "green":
        section.problem(f"cluster health is {health['status']} ({health['unassigned_shards']} unassigned shards)")
    node_rows = []
    elected = None
    for node in sorted(nodes, key=lambda n: n["name"]):
        heap = int(node.get("heap.percent") or 0)
        is_elected = node.get("cluster_manager") == "*"
        if is_elected:
            elected = node["name"]
        node_rows.append({"name": node["name"], "roles": node["node.roles"], "heap_percent": heap, "elected": is_elected})
        if heap > HEAP_WARNING_PERCENT:
            section.warnings.append(f"node {node['name']} heap at {heap}% (above {HEAP_WARNING_PERCENT}%)")
    section.details["nodes"] = node_rows
    section.details["elected_cluster_manager"] = elected
    if elected is None:
        section.problem("no elected cluster manager")
    return section


def check_redis(redis_config) -> Section:
    import redis

    section = Section("redis")
    sentinels = []
    primary = None
    quorum_ok = False
    for host, port in redis_config.sentinels:
        sentinel = redis.Redis(host=host, port=port, socket_timeout=1.0, decode_responses=True)
        try:
            state = sentinel.sentinel_master(redis_config.service_name)
            sentinels.append({"address": f"{host}:{port}", "up": True, "primary": f"{state['ip']}:{state['port']}"})
            primary = primary or (state["ip"], int(state["port"]))
            # Sent raw: redis-py reads CKQUORUM's "OK 3 usable Sentinels..." reply as False.
            reply = sentinel.execute_command("SENTINEL", "CKQUORUM", redis_config.service_name)
            quorum_ok = quorum_ok or str(reply).startswith("OK")
        except redis.ResponseError as e:
            sentinels.append({"address": f"{host}:{port}", "up": True, "error": str(e)})
            section.warnings.append(f"sentinel {host}:{port}: {e}")
        except Exception as e:
            sentinels.append({"address": f"{host}:{port}", "up": False, "error": str(e)})
            section.problem(f"sentinel {host}:{port} does not answer")
    section.details["sentinels"] = sentinels
    section.details["quorum"] = quorum_ok
    if not quorum_ok:
        section.problem("the Sentinels cannot reach a quorum to fail over")
    if len({s.get("primary") for s in sentinels if s.get("primary")}) > 1:
        section.problem("the Sentinels disagree about which node is primary")
    if primary is None:
        section.problem("no Sentinel names a primary")
        return section
    section.details["primary"] = f"{primary[0]}:{primary[1]}"
    try:
        info = redis.Redis(host=primary[0], port=primary[1], password=redis_config.password, socket_timeout=2).info("replication")
    except Exception as e:
        section.problem(f"the primary {primary[0]}:{primary[1]} does not answer ({e})")
        return section
    if info.get("role") != "master":
        section.problem(f"{primary[0]}:{primary[1]} is named primary but reports role {info.get('role')}")
    primary_offset = int(info.get("master_repl_offset", 0))
    replicas = []
    for key, value in info.items():
        if key.startswith("slave") and isinstance(value, dict):
            replicas.append(
                {
                    "address": f"{value['ip']}:{value['port']}",
                    "state": value["state"],
                    "lag_seconds": int(value.get("lag", 0)),
                    "lag_bytes": max(0, primary_offset - int(value.get("offset", 0))),
                }
            )
    section.details["replicas"] = replicas
    if not any(r["state"] == "online" for r in replicas):
        section.problem("no replica is online: writes are refused (min-replicas-to-write) and a failover would lose data")
    return section


def check_mariadb(engine) -> Section:
    from sqlalchemy import text

    from hipchat_server.storage.migrations import current_revision, head_revision

    section = Section("mariadb")
    try:
        with engine.connect() as connection:
            section.details["version"] = connection.execute(text("SELECT VERSION()")).scalar_one()
        current = current_revision(engine)
    except Exception as e:
        section.problem(f"MariaDB does not answer with the appliance's credentials ({type(e).__name__}: {e})")
        return section
    head = head_revision()
    section.details["schema_revision"] = current
    section.details["code_revision"] = head
    if current != head:
        section.problem(f"the schema is at revision {current}, the code needs {head}: run `hipchat-appliance db upgrade`")
    return section


def directory_size(path: str) -> int:
    """Bytes used by the files under ``path`` (not following symlinks)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass  # a file removed while we walk (segment merges, log rotation)
    return total


def check_disk(data_dirs: dict[str, str]) -> Section:
    section = Section("disk")
    rows = []
    for name, path in sorted(data_dirs.items()):
        if not os.path.isdir(path):
            section.problem(f"data directory {path} ({name}) is missing")
            continue
        usage = shutil.disk_usage(path)
        percent = round(100 * usage.used / usage.total, 1)
        rows.append({"name": name, "path": path, "bytes": directory_size(path), "filesystem_used_percent": percent, "filesystem_free_bytes": usage.free})
        if percent > DISK_WARNING_PERCENT:
            section.warnings.append(f"the filesystem of {path} is {percent}% full")
    section.details["directories"] = rows
    return section


def check_spool(archive, now: float | None = None) -> Section:
    """The durable spool and the indexer draining it: backlog, oldest waiting message, last success, free disk.

    The backlog is measured on disk from the positions the indexer last
    saved, so it is right even when the indexer is not running.
    """
    from hipchat_server.indexing import STATUS_FILE, parse_timestamp, read_status, saved_position
    from hipchat_server.storage.spool_tail import backlog_bytes, first_unindexed

    now = time.time() if now is None else now
    section = Section("spool")
    spool_dir = archive.spool_dir
    if not os.path.isdir(spool_dir):
        section.problem(f"the spool directory {spool_dir} is missing; re-run the installer")
        return section
    status = read_status(spool_dir) or {}
    rows, backlog, oldest = [], 0, None
    for entry in sorted(os.scandir(spool_dir), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        position = saved_position(status, entry.name)
        try:
            waiting = backlog_bytes(entry.path, position)
            first = first_unindexed(entry.path, position) if waiting else None
        except OSError as e:
            section.warnings.append(f"cannot read the spool {entry.path}: {e}")
            continue
        stamp = first.get("timestamp") if isinstance(first, dict) else None
        rows.append({"name": entry.name, "backlog_bytes": waiting, "oldest_unindexed": stamp})
        backlog += waiting
        if isinstance(stamp, str) and (oldest is None or stamp < oldest):
            oldest = stamp
    oldest_age = round(now - parse_timestamp(oldest), 1) if oldest else None
    last_success = status.get("last_success")
    # Without a success yet, count from the indexer's start (or, never started, from the oldest message).
    since = last_success or status.get("started")
    quiet_for = round(now - parse_timestamp(since), 1) if since else oldest_age
    usage = shutil.disk_usage(spool_dir)
    section.details.update(
        backlog_bytes=backlog,
        directories=rows,
        oldest_unindexed=oldest,
        oldest_unindexed_age_seconds=oldest_age,
        last_success=last_success,
        last_error=status.get("last_error"),
        last_error_at=status.get("last_error_at"),
        indexer_status_file=os.path.join(spool_dir, STATUS_FILE) if status else None,
        last_minute=status.get("last_minute") or {},
        filesystem_free_bytes=usage.free,
    )
    # The indexer's last error, when nothing succeeded since: what the operator should look at.
    failing = status.get("last_error") and (status.get("last_error_at") or "") >= (last_success or "")
    error = f" (last error: {status['last_error']})" if failing else ""
    waiting = f"{backlog / 2**20:.1f} MiB"
    if backlog > archive.spool_warn_bytes:
        section.warnings.append(f"{waiting} of messages wait to be indexed (warning above {archive.spool_warn_bytes / 2**20:.0f} MiB){error}")
    # The age guard ignores a message that arrived since the indexer last wrote its status file.
    if backlog and quiet_for is not None and quiet_for > INDEXER_STALLED_SECONDS and (oldest_age is None or oldest_age > 5):
        section.warnings.append(f"the indexer has not indexed anything for {quiet_for:.0f} s while {waiting} wait{error}")
    elif oldest_age is not None and oldest_age > INDEXING_BEHIND_SECONDS:
        section.warnings.append(f"indexing is behind: the oldest message not yet indexed is {oldest_age:.0f} s old{error}")
    min_free = archive.spool_min_free_mb * 1024 * 1024
    free_mb = usage.free // (1024 * 1024)
    if usage.free < min_free:
        section.problem(f"only {free_mb} MiB free on the spool's filesystem: new messages are refused below {archive.spool_min_free_mb} MiB")
    elif usage.free < 2 * min_free:
        section.warnings.append(f"only {free_mb} MiB free on the spool's filesystem; new messages are refused below {archive.spool_min_free_mb} MiB")
    return section


def check_jobs(redis_factory, now: float | None = None) -> Section:
    """The background job queue: jobs waiting per kind, retries scheduled, dead letters (a warning: someone should look)."""
    from hipchat_server.jobs import JobQueue

    section = Section("jobs")
    try:
        counts = JobQueue(redis_factory).counts()
    except Exception as e:
        section.problem(f"the job queue in Redis does not answer ({type(e).__name__}: {e})")
        return section
    now = time.time() if now is None else now
    section.details.update(waiting=counts.waiting, retrying=counts.retrying, dead=counts.dead, newest_dead=counts.newest_dead)
    if counts.dead:
        newest = counts.newest_dead or {}
        age = f", {max(0, now - newest.get('failed_at', now)) / 60:.0f} min ago" if newest else ""
        section.warnings.append(
            f"{counts.dead} dead letter{'s' if counts.dead != 1 else ''} (newest: {newest.get('kind', '?')} job, "
            f"{newest.get('error', '?')}{age}); see `hipchat-appliance jobs dead`, then `jobs retry` or `jobs drop`"
        )
    return section


def check_backups(backup_config, now: float | None = None) -> Section:
    """The last backup (``<backup dir>/last.json``): a warning when it failed or is older than 26 h.

    A fresh install has none yet: that is said, and is not a problem.
    """
    from appliance.backup.create import read_last_result
    from appliance.backup.schedule import list_archives

    from hipchat_server.indexing import parse_timestamp

    now = time.time() if now is None else now
    section = Section("backups")
    last = read_last_result(backup_config.dir)
    archives = list_archives(backup_config.dir) if os.access(backup_config.dir, os.R_OK) else []
    newest = archives[-1] if archives else None
    section.details.update(
        directory=backup_config.dir, schedule=backup_config.time, keep=backup_config.keep, archives=len(archives),
        newest=newest.name if newest else None, last=last,
    )
    marker = os.path.join(backup_config.dir, "write-block.json")
    if os.path.exists(marker) and now - os.path.getmtime(marker) > 300:
        section.warnings.append(
            "a killed backup left the message indices blocked for writes (indexing waits): "
            "run `hipchat-appliance backup create` or restart backup-scheduler to lift it"
        )
    if last is None and newest is None:
        section.details["state"] = "none"
        return section
    if last and not last.get("ok"):
        section.details["state"] = "failed"
        section.warnings.append(f"the last backup failed at {last.get('finished_at')}: {last.get('error')}; run `hipchat-appliance backup create` to see why")
    else:
        section.details["state"] = "ok"
    finished = last.get("finished_at") if last and last.get("ok") else None
    if finished is None and newest is not None:
        finished = datetime.strptime(newest.stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).isoformat()
    if finished is None:  # only failures so far
        return section
    age = now - parse_timestamp(finished)
    section.details["age_seconds"] = round(age)
    if last and last.get("ok") and age > BACKUP_WARNING_SECONDS:
        section.warnings.append(f"the last backup is {age / 3600:.0f} h old (more than {BACKUP_WARNING_SECONDS // 3600} h): is the backup-scheduler process running?")
    return section


def check_upgrades(history_dir: str | None = None) -> Section:
    """The running version, ``current`` / ``previous`` and the newest upgrade or rollback
    (`appliance.upgrade.report`): a warning when it failed or was rolled back, never a problem
    (an upgrade's own health check asks status, and a rollback must not fail it)."""
    from appliance.upgrade.report import upgrade_report

    section = Section("upgrades")
    report = upgrade_report(history_dir)
    entries = report["history"]
    last = entries[-1] if entries else None
    section.details.update(
        installed_version=report["installed_version"], current=report["current"], previous=report["previous"], entries=len(entries),
        last={k: last.get(k) for k in ("action", "from_version", "to_version", "outcome", "started_at", "finished_at", "seconds", "log")} if last else None,
    )
    section.warnings.extend(filter(None, (report["error"], report["warning"])))
    return section


def status_checks(chat_server) -> dict[str, Callable[[], Section]]:
    """Every check of the status, by section name, in the order it is shown."""
    config = chat_server.get_config()
    return {
        "processes": lambda: check_processes(config),
        "opensearch": lambda: check_opensearch(chat_server.get_opensearch_client()),
        "redis": lambda: check_redis(config.redis),
        "mariadb": lambda: check_mariadb(chat_server.get_database_engine()),
        "spool": lambda: check_spool(config.archive),
        "jobs": lambda: check_jobs(chat_server.get_redis_primary),
        "backups": lambda: check_backups(config.backup),
        "upgrades": check_upgrades,
        "disk": lambda: check_disk(config.appliance.data_dirs),
    }


def collect_status(chat_server) -> StatusReport:
    return StatusReport([check() for check in status_checks(chat_server).values()])
