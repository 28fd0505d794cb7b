"""Figures about the message indices in OpenSearch: messages per minute or day, and each monthly index's size.

Blocking: call it from a thread.
"""

from __future__ import annotations

from datetime import datetime, timezone

#: Seconds an aggregation may take before the page gives up on it.
STATS_TIMEOUT = 10


class MessageStatsStore:
    """Over an opensearch-py client and the indices ``<prefix>-YYYY.MM``."""

    def __init__(self, client, prefix: str):
        self.client, self.prefix = client, prefix

    def histogram(self, interval: str, since: str) -> list[tuple[datetime, int]]:
        """Messages per ``interval`` (``1m``, ``1d``) with a timestamp at or after ``since`` (date math: ``now-60m``)."""
        body = {
            "size": 0,
            "track_total_hits": False,
            "query": {"range": {"timestamp": {"gte": since}}},
            "aggs": {"per": {"date_histogram": {"field": "timestamp", "fixed_interval": interval, "min_doc_count": 0,
                                                "extended_bounds": {"min": since, "max": "now"}}}},
        }
        reply = self.client.search(index=f"{self.prefix}-*", body=body, request_timeout=STATS_TIMEOUT, ignore_unavailable=True)
        buckets = reply.get("aggregations", {}).get("per", {}).get("buckets", [])
        return [(datetime.fromtimestamp(b["key"] / 1000, timezone.utc), int(b["doc_count"])) for b in buckets]

    def indices(self) -> list[dict]:
        """Each monthly index: name, month, documents, bytes on disk (primaries and replicas), primary shards, replicas."""
        rows = self.client.cat.indices(
            index=f"{self.prefix}-*", format="json", bytes="b", h="index,docs.count,store.size,pri.store.size,pri,rep",
            request_timeout=STATS_TIMEOUT,
        )
        out = []
        for row in rows:
            month = row["index"][len(self.prefix) + 1 :]
            out.append({
                "index": row["index"], "month": month, "documents": int(row.get("docs.count") or 0),
                "bytes": int(row.get("store.size") or 0), "primary_bytes": int(row.get("pri.store.size") or 0),
                "shards": int(row.get("pri") or 0), "replicas": int(row.get("rep") or 0),
            })
        return sorted(out, key=lambda r: r["month"])

    def shards_per_node(self) -> dict[str, int]:
        """How many shards (of every index) each node holds."""
        rows = self.client.cat.allocation(format="json", h="node,shards", request_timeout=STATS_TIMEOUT)
        return {r["node"]: int(r["shards"] or 0) for r in rows if r.get("node") and r["node"] != "UNASSIGNED"}

    def heap_per_node(self) -> list[dict]:
        """Each node's name, roles, heap used (percent) and its maximum heap in bytes."""
        rows = self.client.cat.nodes(format="json", bytes="b", h="name,node.roles,heap.percent,heap.max", request_timeout=STATS_TIMEOUT)
        return [{"name": r["name"], "roles": r["node.roles"], "heap_percent": int(r.get("heap.percent") or 0), "heap_max": int(r.get("heap.max") or 0)} for r in rows]
