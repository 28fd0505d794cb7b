"""The monthly message indices in OpenSearch: bulk writes, creating months ahead, deleting expired ones.

Every message record is one document in ``<prefix>-YYYY.MM`` (the month of
its server timestamp, `archive.index_name`), with the record's id as the
document id, so writing the same record again replaces it instead of adding
a second copy. (A client's resend of a message, a second record with its
own id, is a different matter: the indexer's `ResentCopies` keeps one of them.) The index template (opensearch role) gives each month its
shards, replicas and mapping, and the ``<prefix>`` alias covers every month.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime

from hipchat_server.archive import index_name

log = logging.getLogger("hipchat.indexer")

# A bulk of a few MiB may wait behind merges on a busy data node; far longer means the node is gone.
BULK_TIMEOUT_SECONDS = 20
ADMIN_TIMEOUT_SECONDS = 30
# Merging a month into one segment per shard reads and writes the whole month once: minutes for
# tens of millions of messages. The month thread waits for it; indexing goes on meanwhile.
COMPACT_TIMEOUT_SECONDS = 3 * 3600
# Per-document statuses that will never succeed however often they are retried: the document
# itself is wrong (a mapper error, a value of the wrong type). Anything else (429 rejected by a
# full write queue, 5xx, 503 unavailable shards, 404 index missing, 403 disk block) can heal.
PERMANENT_STATUSES = frozenset({400})


@dataclass
class Document:
    """One record to index: its parsed fields (for the index and id) and its JSON as spooled (the _source)."""

    record: dict
    source: bytes
    origin: str = ""  # the spool it came from, for the dead letters


@dataclass
class BulkOutcome:
    """What one bulk request did to each document it carried."""

    indexed: list[Document] = field(default_factory=list)
    retry: list[tuple[Document, str]] = field(default_factory=list)  # may succeed later: send again
    rejected: list[tuple[Document, dict]] = field(default_factory=list)  # never will: dead-letter it
    undeleted: list[tuple[tuple[str, str], str]] = field(default_factory=list)  # (index, id) not deleted, and why


def bulk_body(prefix: str, documents: list[Document], deletions: list[tuple[str, str]] = ()) -> bytes:
    """The NDJSON body indexing ``documents``, then deleting ``deletions`` ((index, id) pairs).

    Each _source is the spooled JSON as it is (no re-encoding).
    """
    lines = []
    for document in documents:
        action = {"index": {"_index": index_name(prefix, document.record), "_id": document.record["id"]}}
        lines.append(json.dumps(action, separators=(",", ":")).encode())
        lines.append(document.source)
    for index, document_id in deletions:
        lines.append(json.dumps({"delete": {"_index": index, "_id": document_id}}, separators=(",", ":")).encode())
    lines.append(b"")
    return b"\n".join(lines)


def bulk_outcome(documents: list[Document], response: dict, deletions: list[tuple[str, str]] = ()) -> BulkOutcome:
    """Sort the documents of a bulk request by the response's item for each (items come back in order)."""
    outcome = BulkOutcome()
    items = response.get("items") or []
    if len(items) != len(documents) + len(deletions):
        # Should not happen; if it does, nothing is known to be stored.
        reason = f"the bulk response has {len(items)} items for {len(documents)} documents and {len(deletions)} deletions"
        outcome.retry = [(d, reason) for d in documents]
        outcome.undeleted = [(pair, reason) for pair in deletions]
        return outcome
    for pair, item in zip(deletions, items[len(documents) :]):
        result = next(iter(item.values()))
        status = int(result.get("status", 0))
        if not (200 <= status < 300 or status == 404):  # 404: gone already, as wanted
            error = result.get("error") or {}
            outcome.undeleted.append((pair, f"{status} {error.get('type', 'unknown') if isinstance(error, dict) else error}"))
    for document, item in zip(documents, items[: len(documents)]):
        result = next(iter(item.values()))
        status = int(result.get("status", 0))
        if 200 <= status < 300:
            outcome.indexed.append(document)
        elif status in PERMANENT_STATUSES:
            outcome.rejected.append((document, {"status": status, "error": result.get("error")}))
        else:
            error = result.get("error") or {}
            reason = error.get("type", "unknown") if isinstance(error, dict) else str(error)
            outcome.retry.append((document, f"{status} {reason}"))
    return outcome


class MessageIndex:
    """The ``<prefix>-YYYY.MM`` indices through a (blocking) opensearch-py client."""

    def __init__(self, client, prefix: str):
        self.client = client
        self.prefix = prefix

    def bulk(self, documents: list[Document], deletions: list[tuple[str, str]] = ()) -> BulkOutcome:
        """Index ``documents`` and delete ``deletions`` ((index, id) pairs) in one request.

        Raises when the request as a whole fails (cluster down). No refresh:
        new documents become searchable within the index's refresh interval,
        and until then readers find them in the Redis recent lists.
        """
        response = self.client.bulk(
            body=bulk_body(self.prefix, documents, deletions), refresh=False, request_timeout=BULK_TIMEOUT_SECONDS
        )
        return bulk_outcome(documents, response, deletions)

    def copies_with_origins(self, origin_ids: list[str], since_ms: int) -> list[dict]:
        """Indexed records stamped at or after ``since_ms`` whose XEP-0359 origin-id is one of ``origin_ids``.

        Each is ``{"id", "sender", "origin_id", "timestamp", "index"}``. Only
        what a refresh has made searchable is found (the caller remembers
        what it indexed since).
        """
        response = self.client.search(
            index=f"{self.prefix}-*",
            body={
                "size": min(10_000, 2 * len(origin_ids)),
                "_source": ["id", "sender", "origin_id", "timestamp"],
                "query": {"bool": {"filter": [
                    {"terms": {"origin_id": list(origin_ids)}},
                    {"range": {"timestamp": {"gte": since_ms, "format": "epoch_millis"}}},
                ]}},
            },
            allow_no_indices=True,
            request_timeout=BULK_TIMEOUT_SECONDS,  # part of indexing: no longer than the bulk request it precedes
        )
        return [dict(hit["_source"], index=hit["_index"]) for hit in response["hits"]["hits"]]

    def create_month(self, year: int, month: int) -> bool:
        """Create one month's index (the template applies); False when it already exists."""
        from opensearchpy.exceptions import RequestError

        name = month_index(self.prefix, year, month)
        if self.client.indices.exists(index=name, request_timeout=ADMIN_TIMEOUT_SECONDS):
            return False  # asked first: the client logs a refused PUT as a warning
        try:
            self.client.indices.create(index=name, request_timeout=ADMIN_TIMEOUT_SECONDS)
        except RequestError as e:
            if e.error == "resource_already_exists_exception":
                return False
            raise
        log.info("created the message index %s ahead of its month", name)
        return True

    def month_indices(self) -> list[str]:
        """Names of the existing month indices of this prefix (nothing else that matches ``<prefix>-*``)."""
        found = self.client.indices.get(
            index=f"{self.prefix}-*", allow_no_indices=True, expand_wildcards="open,closed", request_timeout=ADMIN_TIMEOUT_SECONDS
        )
        return sorted(name for name in found if parse_month_index(self.prefix, name) is not None)

    def delete_index(self, name: str) -> None:
        self.client.indices.delete(index=name, request_timeout=ADMIN_TIMEOUT_SECONDS)

    def maintain_months(self, now: datetime, retention_months: int) -> list[str]:
        """Create this month's and next month's index; delete the expired months (`expired_indices`).

        Returns the names deleted. Bulk requests would create a missing month
        too (``action.auto_create_index``), but then the first messages of a
        month wait for its shards to be allocated.
        """
        for year, month in months_to_create(now):
            self.create_month(year, month)
        deleted = []
        for name in expired_indices(self.prefix, self.month_indices() if retention_months > 0 else [], now, retention_months):
            log.warning("deleting the message index %s: all of it is older than the %d months kept", name, retention_months)
            self.delete_index(name)
            deleted.append(name)
        return deleted

    def compact_finished_months(self, now: datetime) -> list[str]:
        """Merge each finished month (`finished_months`) that has more than one segment per shard copy; returns those merged.

        A month index stops growing once its month is over, but keeps the
        dozens of segments it was written in, and a search pays for every
        segment of every shard it visits (at 10 million messages, merging the
        past months took the search p50 from ~56 to ~49 ms). Late writes (a
        spool drained after an outage, an edit) add segments again, and the
        month is merged again at a later round.
        """
        names = finished_months(self.prefix, self.month_indices(), now)
        if not names:
            return []
        merged = []
        rows = self.client.cat.indices(index=",".join(names), h="index,pri,rep,segments.count", format="json", request_timeout=ADMIN_TIMEOUT_SECONDS)
        for row in sorted(rows, key=lambda r: r["index"]):
            copies = int(row["pri"]) * (1 + int(row["rep"]))
            if int(row["segments.count"]) <= copies:
                continue
            log.info("merging the finished month %s (%s segments) into one segment per shard", row["index"], row["segments.count"])
            self.client.indices.forcemerge(index=row["index"], max_num_segments=1, request_timeout=COMPACT_TIMEOUT_SECONDS)
            # Searches (and the segment counts) see the merged segment from the next refresh on, and a
            # month nobody searched lately is not refreshed on schedule: refresh it now, freeing the old ones.
            self.client.indices.refresh(index=row["index"], request_timeout=ADMIN_TIMEOUT_SECONDS)
            merged.append(row["index"])
        return merged


# Month arithmetic of retention, in UTC months (record timestamps are UTC).
def add_months(year: int, month: int, months: int) -> tuple[int, int]:
    """The month ``months`` after (or, negative, before) ``year``-``month``."""
    index = year * 12 + (month - 1) + months
    return index // 12, index % 12 + 1


def month_index(prefix: str, year: int, month: int) -> str:
    return f"{prefix}-{year:04d}.{month:02d}"


def parse_month_index(prefix: str, name: str) -> tuple[int, int] | None:
    """(year, month) of an index named ``<prefix>-YYYY.MM``, else None."""
    match = re.fullmatch(re.escape(prefix) + r"-(\d{4})\.(\d{2})", name)
    if match is None or not 1 <= int(match.group(2)) <= 12:
        return None
    return int(match.group(1)), int(match.group(2))


def months_to_create(now: datetime) -> list[tuple[int, int]]:
    """This month and the next: the next one exists before its first message arrives."""
    return [(now.year, now.month), add_months(now.year, now.month, 1)]


def finished_months(prefix: str, names: list[str], now: datetime) -> list[str]:
    """The month indices among ``names`` whose month ended more than a day before ``now`` (late messages come in the first hours)."""
    yesterday = now.timestamp() - 86400
    moment = datetime.fromtimestamp(yesterday, tz=now.tzinfo)
    current = (moment.year, moment.month)
    return sorted(name for name in names if (month := parse_month_index(prefix, name)) is not None and month < current)


def expired_indices(prefix: str, names: list[str], now: datetime, retention_months: int) -> list[str]:
    """The month indices among ``names`` whose every message is older than ``retention_months`` months.

    The current month and the ``retention_months`` months before it are kept
    whole: with 3 in November, August stays (its last days are less than
    three months old) and July goes. 0 keeps everything; the current and next
    months are never expired.
    """
    if retention_months <= 0:
        return []
    oldest_kept = add_months(now.year, now.month, -retention_months)
    expired = []
    for name in names:
        month = parse_month_index(prefix, name)
        if month is not None and month < oldest_kept:
            expired.append(name)
    return sorted(expired)
