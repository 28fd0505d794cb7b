"""The OpenSearch part of a backup: a snapshot of the month indices whose document counts are exact.

A snapshot copies each shard's Lucene commit as it was when that shard's copy began, and with
one snapshot thread on a small host the shards begin one after another: counting documents
before or after would not tell what the snapshot holds. So three snapshots go into a fresh
repository: "base" copies nearly everything while the indexer goes on; "catch-up" copies what
was written and merged meanwhile; then writes to the month indices are blocked
(``index.blocks.write``: the indexer retries a 403 with back-off, and its messages wait,
durable, in the spool), the indices are refreshed and counted, "backup" copies the last
seconds' segments, and the block is lifted. "base" and "catch-up" are then deleted, leaving
exactly one snapshot in the repository (its files are shared, nothing is lost).

"backup" records the indices' settings with the block on: restore passes
``ignore_index_settings=["index.blocks.write"]`` (the manifest says so in
``snapshot.ignore_index_settings``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field

from hipchat_server.archive import index_name
from hipchat_server.storage.message_index import parse_month_index

log = logging.getLogger("hipchat.backup")

SNAPSHOT_TIMEOUT_SECONDS = 3 * 3600
# Per data node. Unthrottled (~40 MB/s), the copy took the two cores and the disk from chat: its
# latency p99 was 4x the idle figure during a backup. 3.5 GB at this rate is about 1.5 minutes.
SNAPSHOT_RATE = "20mb"
ADMIN_TIMEOUT_SECONDS = 60
IDS_PER_QUERY = 5000
BLOCK_SETTING = "index.blocks.write"
# Left behind by a backup killed while it held the write block: the next one lifts it.
BLOCK_MARKER = "write-block.json"


class SnapshotError(Exception):
    """The snapshot failed; the message says why."""


@dataclass
class SnapshotResult:
    repository: str  # registered name, also the directory name under path.repo
    location: str
    name: str
    indices: list[str]
    documents: dict[str, int]  # per index, in the snapshot
    spool_only: dict[str, int] = field(default_factory=dict)  # spool-copy records not in the snapshot, per index
    blocked_seconds: float = 0.0
    first_snapshot_seconds: float = 0.0


def server_version(client) -> str:
    return client.info()["version"]["number"]


def month_indices(client, prefix: str) -> list[str]:
    found = client.indices.get(index=f"{prefix}-*", allow_no_indices=True, expand_wildcards="open", request_timeout=ADMIN_TIMEOUT_SECONDS)
    return sorted(name for name in found if parse_month_index(prefix, name) is not None)


def set_write_block(client, indices: list[str], blocked: bool) -> None:
    if indices:
        client.indices.put_settings(
            index=",".join(indices), body={BLOCK_SETTING: True if blocked else None}, request_timeout=ADMIN_TIMEOUT_SECONDS
        )


def lift_leftover_block(client, backups_dir: str) -> list[str]:
    """Lift a write block a killed backup left on the indices (named in its marker file); returns them."""
    marker = os.path.join(backups_dir, BLOCK_MARKER)
    try:
        with open(marker) as f:
            indices = json.load(f)["indices"]
    except FileNotFoundError:
        return []
    set_write_block(client, indices, False)
    os.unlink(marker)
    log.warning("lifted the write block a killed backup left on %s", ", ".join(indices))
    return indices


def _snapshot(client, repository: str, name: str, indices: list[str]) -> dict:
    response = client.snapshot.create(
        repository=repository,
        snapshot=name,
        body={"indices": ",".join(indices), "include_global_state": False, "ignore_unavailable": False, "partial": False},
        wait_for_completion=True,
        request_timeout=SNAPSHOT_TIMEOUT_SECONDS,
    )
    snapshot = response.get("snapshot", {})
    if snapshot.get("state") != "SUCCESS":
        raise SnapshotError(f"snapshot {name} ended {snapshot.get('state')}: {snapshot.get('failures')}")
    return snapshot


def _ids_present(client, index: str, ids: list[str]) -> int:
    present = 0
    for start in range(0, len(ids), IDS_PER_QUERY):
        batch = ids[start : start + IDS_PER_QUERY]
        present += client.count(index=index, body={"query": {"ids": {"values": batch}}}, request_timeout=ADMIN_TIMEOUT_SECONDS)["count"]
    return present


def snapshot_messages(client, prefix: str, snapshots_root: str, stamp: str, backups_dir: str, spool_records: list[dict]) -> SnapshotResult:
    """Snapshot every ``<prefix>-YYYY.MM`` index into a new repository ``backup-<stamp>`` under ``snapshots_root``.

    ``spool_records`` (the spool copy's message records) are looked up while writes are blocked:
    those not in the snapshot are counted per index, so that the manifest says how many messages
    a restore must end with (snapshot plus spool copy, each id once).
    """
    repository = f"backup-{stamp}"
    location = os.path.join(snapshots_root, repository)
    indices = month_indices(client, prefix)
    client.snapshot.create_repository(
        repository=repository, body={"type": "fs", "settings": {"location": location, "compress": True, "max_snapshot_bytes_per_sec": SNAPSHOT_RATE}}, request_timeout=ADMIN_TIMEOUT_SECONDS
    )
    result = SnapshotResult(repository, location, "backup", indices, {})
    if not indices:
        return result
    started = time.monotonic()
    _snapshot(client, repository, "base", indices)
    # What was indexed and merged during the long first copy, copied while writes still go on:
    # the copy under the block below is then only the last seconds' segments.
    _snapshot(client, repository, "catch-up", indices)
    result.first_snapshot_seconds = round(time.monotonic() - started, 1)
    marker = os.path.join(backups_dir, BLOCK_MARKER)
    with open(marker, "w") as f:
        json.dump({"indices": indices, "since": time.time()}, f)
    blocked_at = time.monotonic()
    set_write_block(client, indices, True)
    try:
        client.indices.refresh(index=",".join(indices), request_timeout=ADMIN_TIMEOUT_SECONDS)
        for index in indices:
            result.documents[index] = client.count(index=index, request_timeout=ADMIN_TIMEOUT_SECONDS)["count"]
        by_index: dict[str, set[str]] = {}
        for record in spool_records:
            by_index.setdefault(index_name(prefix, record), set()).add(record["id"])
        for index, ids in sorted(by_index.items()):
            present = _ids_present(client, index, sorted(ids)) if index in result.documents else 0
            if len(ids) - present:
                result.spool_only[index] = len(ids) - present
        _snapshot(client, repository, result.name, indices)
    finally:
        set_write_block(client, indices, False)
        os.unlink(marker)
        result.blocked_seconds = round(time.monotonic() - blocked_at, 2)
    for name in ("base", "catch-up"):
        client.snapshot.delete(repository=repository, snapshot=name, request_timeout=SNAPSHOT_TIMEOUT_SECONDS)
    return result


def remove_repository(client, repository: str, location: str) -> None:
    """Unregister a backup's repository and delete its directory (after it was copied into the archive)."""
    try:
        client.snapshot.delete_repository(repository=repository, request_timeout=ADMIN_TIMEOUT_SECONDS)
    except Exception as e:  # gone already, or the cluster is down: the directory still goes
        log.warning("could not unregister the snapshot repository %s: %s", repository, e)
    shutil.rmtree(location, ignore_errors=True)
