"""The metrics exporter: OpenSearch heap per node and Redis figures, for Prometheus, on 127.0.0.1.

One process (``[program:metrics-exporter]``) asks OpenSearch and the Redis
primary at each scrape, so the figures are as fresh as the scrape and no
chat process pays for them. A service that does not answer is reported as
``hipchat_opensearch_up 0`` / ``hipchat_redis_up 0`` rather than failing the whole scrape.
"""

from __future__ import annotations

import logging
import sys
import threading

from prometheus_client.core import GaugeMetricFamily

from hipchat_server import metrics
from hipchat_server.app.process import drop_privileges, start_process
from hipchat_server.server import ChatServer

log = logging.getLogger("hipchat.exporter")


class OpenSearchCollector:
    """Heap per node (the seed's lesson: warn above 75 %) and the cluster's health."""

    def __init__(self, client_factory):
        self.client_factory = client_factory

    def describe(self):
        return []  # nothing asked of OpenSearch when registered

    def collect(self):
        up = GaugeMetricFamily("hipchat_opensearch_up", "1 when OpenSearch answered this scrape.")
        try:
            client = self.client_factory()
            stats = client.nodes.stats(metric="jvm")
            health = client.cluster.health()
        except Exception as e:
            log.warning("OpenSearch figures unavailable: %s", e)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        percent = GaugeMetricFamily("hipchat_opensearch_heap_used_percent", "JVM heap in use, per node.", labels=["node"])
        used = GaugeMetricFamily("hipchat_opensearch_heap_used_bytes", "JVM heap in use, per node.", labels=["node"])
        limit = GaugeMetricFamily("hipchat_opensearch_heap_max_bytes", "JVM heap size, per node.", labels=["node"])
        for node in stats.get("nodes", {}).values():
            name, mem = node.get("name", "?"), node.get("jvm", {}).get("mem", {})
            percent.add_metric([name], mem.get("heap_used_percent", 0))
            used.add_metric([name], mem.get("heap_used_in_bytes", 0))
            limit.add_metric([name], mem.get("heap_max_in_bytes", 0))
        yield from (percent, used, limit)
        status = GaugeMetricFamily("hipchat_opensearch_cluster_status", "Cluster status: 0 green, 1 yellow, 2 red.")
        status.add_metric([], {"green": 0, "yellow": 1}.get(health.get("status"), 2))
        yield status
        nodes = GaugeMetricFamily("hipchat_opensearch_nodes", "Nodes in the cluster.")
        nodes.add_metric([], health.get("number_of_nodes", 0))
        yield nodes


class RedisCollector:
    """The Redis primary (found through Sentinel): memory, clients, commands per second, replicas and their lag."""

    def __init__(self, primary_factory):
        self.primary_factory = primary_factory

    def describe(self):
        return []  # nothing asked of Redis when registered

    def collect(self):
        up = GaugeMetricFamily("hipchat_redis_up", "1 when the Redis primary answered this scrape.")
        try:
            info = self.primary_factory().info()
        except Exception as e:
            log.warning("Redis figures unavailable: %s", e)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        for name, key, text in (
            ("hipchat_redis_used_memory_bytes", "used_memory", "Memory the Redis primary uses."),
            ("hipchat_redis_maxmemory_bytes", "maxmemory", "The primary's memory limit (0: none)."),
            ("hipchat_redis_connected_clients", "connected_clients", "Clients connected to the primary."),
            ("hipchat_redis_ops_per_second", "instantaneous_ops_per_sec", "Commands per second on the primary."),
            ("hipchat_redis_connected_replicas", "connected_slaves", "Replicas connected to the primary."),
        ):
            gauge = GaugeMetricFamily(name, text)
            gauge.add_metric([], info.get(key, 0))
            yield gauge
        # Sentinel's INFO keys keep Redis's own words (slaveN); ours say replica.
        lag = GaugeMetricFamily("hipchat_redis_replica_lag_bytes", "Replication bytes a replica is behind the primary.", labels=["replica"])
        offset = info.get("master_repl_offset", 0)
        for key, value in info.items():
            if key.startswith("slave") and isinstance(value, dict):
                lag.add_metric([f"{value.get('ip')}:{value.get('port')}"], max(0, offset - int(value.get("offset", 0))))
        yield lag


def main(argv: list[str] | None = None) -> int:
    config = start_process("hipchat-metrics-exporter", "HipChat Server metrics exporter (OpenSearch heap, Redis)", argv)
    if config is None:
        return 2
    drop_privileges(config.server.user)  # a no-op under supervisor's `user =`
    chat_server = ChatServer(config)
    metrics.register(OpenSearchCollector(chat_server.get_opensearch_client))
    metrics.register(RedisCollector(chat_server.get_redis_primary))
    if not metrics.serve(config.metrics.exporter_port):
        return 1
    threading.Event().wait()  # the HTTP server's thread does the work
    return 0


if __name__ == "__main__":
    sys.exit(main())
