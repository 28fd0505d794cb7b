"""Bringing a backup's OpenSearch snapshot back: the month indices, and the reads that refill Redis from them.

The archive carries a whole filesystem snapshot repository holding one
snapshot (`appliance.backup.opensearch` writes it). Restoring registers that
repository read-only where it was extracted (a directory under ``path.repo``),
deletes the month indices the snapshot holds, restores them (aliases
included: the ``<prefix>`` alias covers every month), waits for green and
unregisters the repository again.
"""

from __future__ import annotations

import time


ADMIN_TIMEOUT_SECONDS = 60
# Restoring 3.5 GB of primaries and then copying them to the replicas: minutes on this machine.
GREEN_TIMEOUT_SECONDS = 40 * 60
# OpenSearch throttles snapshot restores and peer recoveries to 40 MB/s per node by default; both data
# nodes share the host's disk, which does several times that. Lifted during the restore only.
RESTORE_BYTES_PER_SECOND = "400mb"


class SnapshotRestoreFailed(Exception):
    """The snapshot could not be restored; the message says what OpenSearch answered."""


def major_version(version: str | None) -> int | None:
    """The major number of ``2.19.1``; None when the string does not start with one."""
    try:
        return int(str(version).split(".", 1)[0])
    except ValueError:
        return None


def cluster_version(client) -> str:
    return client.info(request_timeout=ADMIN_TIMEOUT_SECONDS)["version"]["number"]


def month_indices(client, prefix: str) -> dict[str, int]:
    """Every existing ``<prefix>-*`` index and its document count (after a refresh, so the count is exact)."""
    client.indices.refresh(index=f"{prefix}-*", allow_no_indices=True, request_timeout=ADMIN_TIMEOUT_SECONDS)
    rows = client.cat.indices(index=f"{prefix}-*", format="json", h="index,docs.count", request_timeout=ADMIN_TIMEOUT_SECONDS)
    return {row["index"]: int(row["docs.count"] or 0) for row in rows}


def restore_snapshot(
    client, repository_path: str, snapshot: str, indices: list[str], prefix: str, *, ignore_index_settings=(), on_wait=None
) -> float:
    """Replace the ``<prefix>-*`` indices by ``snapshot``'s ``indices`` from the fs repository at ``repository_path``.

    ``ignore_index_settings`` (the manifest's list) are left out of the
    restored indices: the backup's write block during its final snapshot.

    Returns the seconds spent waiting for green. The temporary repository is
    unregistered whatever happens; the caller removes its files.
    """
    name = f"restore-{int(time.time())}"
    client.snapshot.create_repository(
        repository=name,
        body={"type": "fs", "settings": {"location": repository_path, "readonly": True, "max_restore_bytes_per_sec": RESTORE_BYTES_PER_SECOND}},
        request_timeout=ADMIN_TIMEOUT_SECONDS,
    )
    try:
        found = client.snapshot.get(repository=name, snapshot=snapshot, request_timeout=ADMIN_TIMEOUT_SECONDS)["snapshots"]
        if not found or found[0].get("state") != "SUCCESS":
            raise SnapshotRestoreFailed(f"the archive's snapshot {snapshot} is not a complete snapshot ({found and found[0].get('state')})")
        # Only after the snapshot proved readable: the live indices go now.
        existing = list(month_indices(client, prefix))
        for start in range(0, len(existing), 20):
            client.indices.delete(index=",".join(existing[start : start + 20]), request_timeout=ADMIN_TIMEOUT_SECONDS)
        _set_recovery_speed(client, RESTORE_BYTES_PER_SECOND)
        try:
            if indices:
                client.snapshot.restore(
                    repository=name,
                    snapshot=snapshot,
                    body={
                        "indices": ",".join(indices),
                        "include_aliases": True,
                        "include_global_state": False,
                        "ignore_index_settings": list(ignore_index_settings),
                    },
                    wait_for_completion=False,
                    request_timeout=ADMIN_TIMEOUT_SECONDS,
                )
            return wait_for_green(client, indices, on_wait)
        finally:
            _set_recovery_speed(client, None)
    finally:
        client.snapshot.delete_repository(repository=name, request_timeout=ADMIN_TIMEOUT_SECONDS)


def _set_recovery_speed(client, value: str | None) -> None:
    client.cluster.put_settings(
        body={"transient": {"indices.recovery.max_bytes_per_sec": value}}, request_timeout=ADMIN_TIMEOUT_SECONDS
    )


def wait_for_green(client, indices: list[str], on_wait=None, timeout: float = GREEN_TIMEOUT_SECONDS) -> float:
    """Wait until every shard copy of ``indices`` is started; ``on_wait(done, total)`` reports shard progress."""
    started = time.monotonic()
    if not indices:
        return 0.0
    target = ",".join(indices)
    while True:
        health = client.cluster.health(index=target, request_timeout=ADMIN_TIMEOUT_SECONDS)
        total = health["active_shards"] + health["initializing_shards"] + health["unassigned_shards"] + health["relocating_shards"]
        if on_wait is not None:
            on_wait(health["active_shards"], total)
        if health["status"] == "green":
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise SnapshotRestoreFailed(
                f"the restored indices are still {health['status']} after {timeout:.0f} s "
                f"({health['active_shards']} of {total} shard copies started); see `GET _cat/recovery?active_only`"
            )
        time.sleep(2)


def ids_missing(client, prefix: str, ids_by_index: dict[str, list[str]]) -> list[str]:
    """The ids among ``ids_by_index`` (index name -> record ids) that have no document there."""
    missing = []
    for index, ids in ids_by_index.items():
        for start in range(0, len(ids), 2000):
            chunk = ids[start : start + 2000]
            docs = client.mget(index=index, body={"ids": chunk}, _source=False, request_timeout=ADMIN_TIMEOUT_SECONDS)["docs"]
            missing.extend(d["_id"] for d in docs if not d.get("found"))
    return missing


def distinct_values(client, prefix: str, field: str) -> list[str]:
    """Every value of keyword ``field`` across the month indices (a composite aggregation, page by page)."""
    values, after = [], None
    while True:
        source = {"composite": {"size": 5000, "sources": [{"v": {"terms": {"field": field}}}]}}
        if after is not None:
            source["composite"]["after"] = after
        response = client.search(
            index=f"{prefix}-*", body={"size": 0, "aggs": {"values": source}}, request_timeout=ADMIN_TIMEOUT_SECONDS * 5
        )
        aggregation = response["aggregations"]["values"]
        values.extend(bucket["key"]["v"] for bucket in aggregation["buckets"])
        after = aggregation.get("after_key")
        if not aggregation["buckets"] or after is None:
            return values


def newest_records(client, indices_newest_first: list[str], field: str, values: list[str], size: int) -> dict[str, list[dict]]:
    """The ``size`` newest records (newest first) whose ``field`` is each of ``values``.

    Month by month from the newest index back, asking again only for the
    values still short of ``size``: a search costs a round per shard it
    visits, and most rooms fill their list from the last month or two (one
    search over every month took ~60 ms a room at 10 million messages).
    """
    found: dict[str, list[dict]] = {value: [] for value in values}
    for index in indices_newest_first:
        short = [value for value in values if len(found[value]) < size]
        for start in range(0, len(short), 100):
            chunk = short[start : start + 100]
            body = []
            for value in chunk:
                body.append({"index": index})
                # Ids are ULIDs: their order is the messages' order.
                body.append({"size": size - len(found[value]), "query": {"bool": {"filter": [{"term": {field: value}}]}}, "sort": [{"id": "desc"}]})
            responses = client.msearch(body=body, request_timeout=ADMIN_TIMEOUT_SECONDS * 5)["responses"]
            for value, response in zip(chunk, responses):
                if "error" in response:
                    raise SnapshotRestoreFailed(f"reading the newest messages of {field}={value} in {index} failed: {response['error']}")
                found[value].extend(hit["_source"] for hit in response["hits"]["hits"])
    return {value: records for value, records in found.items() if records}
