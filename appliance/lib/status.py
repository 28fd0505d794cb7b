"""The appliance's health on one screen: what `hipchat-appliance status` shows.

Each ``check_*`` function inspects one part and returns a :class:`Section`
whose ``problems`` say, in an operator's words, what is wrong. A part that
cannot be reached is a problem in its section, never an exception.
"""

from __future__ import annotations

import configparser
import os
import shutil
import xmlrpc.client
from dataclasses import asdict, dataclass, field
from typing import Any

from hipchat_server.config import Config

# Above this share of a filesystem in use, status warns (OpenSearch stops
# allocating shards at its 85% low watermark).
DISK_WARNING_PERCENT = 80
# The seed's lesson: a JVM heap constantly above 75% is heading for long GC pauses.
HEAP_WARNING_PERCENT = 75


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


def collect_status(chat_server) -> StatusReport:
    config = chat_server.get_config()
    return StatusReport(
        [
            check_processes(config),
            check_opensearch(chat_server.get_opensearch_client()),
            check_redis(config.redis),
            check_mariadb(chat_server.get_database_engine()),
            check_disk(config.appliance.data_dirs),
        ]
    )
