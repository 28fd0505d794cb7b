"""The ingest scenario: one-to-one chat at a total rate, and how soon each message is searchable.

The chat runs as in the chat scenario (same pairs, numbered bodies, exactly-once check, XEP-0198
ack times). Every message id carries this run's tag (``<tag>m<sender>-<seq>``, which the contract makes the record's
``origin_id``). Receivers note the stanza-id (XEP-0359, the OpenSearch document id) of every
message whose seq is a multiple of ``sample_every`` (chosen for about ``samples`` of them); while
the chat runs, the parent asks OpenSearch every ``poll`` seconds which of the pending ids are
visible (``_search`` with an ids query on the message alias: searchable, not just stored), so a
sample's indexing lag is the first poll that finds it minus its send time (polling adds up to
``poll`` seconds).

Each sample's lag is also taken from the server's own timestamp of the message (the ULID's
milliseconds, set when it was archived) to the wall-clock time of the finding poll: that part
is the indexer's alone, whatever the chat path's own latency.

After the run: every message the server acknowledged must be in OpenSearch exactly once. The
documents of this run (the bench users as participants, timestamps since the start) are read
back (their bodies, ``<sender> <seq> <send time>``, say which message each one is) and compared
with what was sent: acknowledged but not indexed, indexed twice, indexed but never acknowledged.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone

from .cpu import CpuWatch
from .figures import percentiles
from .pool import WorkerPool
from .scenarios import Target, chat

_BODY = re.compile(r"^(\d+) (\d+) (\d+)$")
_CROCKFORD = {c: i for i, c in enumerate("0123456789ABCDEFGHJKMNPQRSTVWXYZ")}


def ulid_seconds(message_id: str) -> float:
    """The wall-clock time (s) a ULID's first 10 characters carry."""
    ms = 0
    for char in message_id[:10]:
        ms = ms * 32 + _CROCKFORD[char]
    return ms / 1000


def search_client(urls: list[str]):
    from opensearchpy import OpenSearch

    return OpenSearch(urls, timeout=30, max_retries=2, retry_on_timeout=True)


class IndexingLag:
    """The chat scenario's observer: samples stanza-ids, polls OpenSearch, checks the totals at the end."""

    def __init__(self, pool: WorkerPool, target: Target, client, alias: str, tag: str, participants: list[str],
                 poll: float = 0.1, index_wait: float = 60.0):
        self.pool, self.target, self.client, self.alias, self.tag = pool, target, client, alias, tag
        self.participants = participants
        self.poll, self.index_wait = poll, index_wait
        self.pending: dict[str, int] = {}  # stanza-id -> send time (monotonic ns)
        self.lags_s: list[float] = []
        self.server_lags_s: list[float] = []  # from the message's server timestamp (ULID) to visible
        self.sampled = 0
        self.search_errors: dict[str, int] = {}
        self.polls = 0
        self.poll_ms: list[float] = []
        self._last_poll = 0.0
        self.wall_start = None
        self.started_ns = 0
        self.cpu = CpuWatch(extra={"load generator": pool.pids()})
        self._sending_ended = False

    # The observer interface of `scenarios.chat`.
    def started(self) -> None:
        self.wall_start = datetime.now(timezone.utc) - timedelta(seconds=2)
        self.started_ns = time.monotonic_ns()
        self.cpu.start()

    def tick(self) -> None:
        if time.monotonic() - self._last_poll >= self.poll:
            self._poll_once()

    def finish(self, result: dict, sent_ranges: dict) -> dict:
        self.cpu.stop()  # over the sending and the drain: the server's work on those messages
        deadline = time.monotonic() + self.index_wait
        self._poll_once()
        while self.pending and time.monotonic() < deadline:
            time.sleep(max(0.0, self.poll - (time.monotonic() - self._last_poll)))
            self._poll_once()
        unacked: dict = {}
        for answer in self.pool.call_all("unacked", [{}] * len(self.pool)):
            unacked.update(answer)
        acked = {(s, q) for s, (first, last) in sent_ranges.items() for q in range(first, last + 1)}
        acked -= {(s, q) for s, seqs in unacked.items() for q in seqs}
        counted = self._count_until(len(acked), deadline)
        found = self._run_documents()
        duplicates = sum(n - 1 for n in found.values() if n > 1)
        missing = acked - set(found)
        lag = percentiles(self.lags_s, (50, 95, 99, 100))
        server_lag = percentiles(self.server_lags_s, (50, 99, 100))
        figures = result["figures"]
        figures.update({
            "samples": self.sampled, "samples_visible": len(self.lags_s), "samples_never_visible": len(self.pending),
            "index_lag_p50_s": lag[50], "index_lag_p95_s": lag[95], "index_lag_p99_s": lag[99], "index_lag_max_s": lag[100],
            "server_to_index_p50_s": server_lag[50], "server_to_index_p99_s": server_lag[99],
            "server_to_index_max_s": server_lag[100],
            "index_poll_s": self.poll, "index_poll_p50_ms": percentiles(self.poll_ms, (50,))[50],
            "acked": len(acked), "indexed_docs": sum(found.values()), "indexed_unique": len(found),
            "indexed_duplicates": duplicates, "acked_not_indexed": len(missing),
            "indexed_not_acked": len(set(found) - acked), "count_query": counted,
            "cpu_cores": self.cpu.cores(),
        })
        notes = result["notes"]
        restarted = self.cpu.restarted()
        if restarted:
            figures["void"] = True
            notes.append(f"FIGURES VOID: server processes restarted during the run: {', '.join(restarted)}")
        if self.search_errors:
            notes.append(f"OpenSearch polls that failed, by error: {self.search_errors}")
        if figures.get("lost") and figures.get("unacked"):
            notes.append(f"{figures['lost']} messages had not arrived when the drain ended and {figures['unacked']} were "
                         "never acknowledged: the server is behind; a longer --drain tells late from lost")
        if missing:
            notes.append(f"acknowledged but not in OpenSearch after {self.index_wait:.0f} s, e.g. {sorted(missing)[:5]}")
        result["scenario"] = "ingest"
        return result

    # OpenSearch.
    def _poll_once(self) -> None:
        self._last_poll = time.monotonic()
        for samples in self.pool.call_all("samples", [{}] * len(self.pool)):
            for stanza_id, _sender, _seq, sent_ns, _received_ns in samples:
                # Stored offline by an earlier run (the bench users are reused) and handed over at login: not this run's.
                if sent_ns < self.started_ns:
                    continue
                if stanza_id not in self.pending:
                    self.pending[stanza_id] = sent_ns
                    self.sampled += 1
        if not self.pending:
            return
        asked_ns, asked_wall = time.monotonic_ns(), time.time()
        try:
            response = self.client.search(
                index=self.alias,
                body={"size": len(self.pending), "_source": False, "query": {"ids": {"values": list(self.pending)}}},
                params={"ignore_unavailable": "true", "allow_no_indices": "true"},
            )
        except Exception as e:  # noqa: BLE001 - counted; the next poll tries again
            key = type(e).__name__
            self.search_errors[key] = self.search_errors.get(key, 0) + 1
            return
        self.polls += 1
        self.poll_ms.append((time.monotonic_ns() - asked_ns) / 1e6)
        for hit in response["hits"]["hits"]:
            sent_ns = self.pending.pop(hit["_id"], None)
            if sent_ns is not None:
                self.lags_s.append((asked_ns - sent_ns) / 1e9)
                self.server_lags_s.append(asked_wall - ulid_seconds(hit["_id"]))

    def _query(self) -> dict:
        return {"bool": {"filter": [
            {"terms": {"participants": self.participants}},
            {"range": {"timestamp": {"gte": self.wall_start.strftime("%Y-%m-%dT%H:%M:%S.000Z")}}},
        ]}}

    def _count_until(self, wanted: int, deadline: float) -> int:
        """Count this run's documents until there are ``wanted`` (or the deadline passed)."""
        n = -1
        while True:
            try:
                self.client.indices.refresh(index=self.alias, params={"ignore_unavailable": "true"})
                n = self.client.count(index=self.alias, body={"query": self._query()})["count"]
            except Exception as e:  # noqa: BLE001
                key = type(e).__name__
                self.search_errors[key] = self.search_errors.get(key, 0) + 1
            if n >= wanted or time.monotonic() > deadline:
                return n
            time.sleep(0.5)

    def _run_documents(self) -> dict:
        """(sender, seq) -> documents of this run with that message, read back page by page (by id)."""
        found: dict = {}
        after = None
        while True:
            body = {"size": 5000, "_source": ["body"], "query": self._query(), "sort": [{"id": "asc"}]}
            if after:
                body["search_after"] = after
            hits = self.client.search(index=self.alias, body=body, request_timeout=60)["hits"]["hits"]
            for hit in hits:
                match = _BODY.match((hit.get("_source") or {}).get("body") or "")
                if match:
                    key = (int(match.group(1)), int(match.group(2)))
                    found[key] = found.get(key, 0) + 1
            if len(hits) < 5000:
                return found
            after = hits[-1]["sort"]


def ingest(pool: WorkerPool, target: Target, pairs: int, rate: float, duration: float, drain: float = 10.0,
           settle: float = 3.0, samples: int = 400, poll: float = 0.1, index_wait: float = 60.0,
           opensearch_urls: list[str] | None = None, alias: str = "messages") -> dict:
    """Chat at ``rate`` messages/s for ``duration`` s while measuring the indexing lag (module docstring)."""
    tag = f"i{int(time.time())}"
    messages = max(1, int(rate * duration))
    per_sender = max(1, int(messages / (2 * pairs)))
    sample_every = min(per_sender, max(1, messages // max(1, samples)))
    pool.call_all("configure", [{"id_prefix": tag, "sample_every": sample_every}] * len(pool))
    participants = [f"{target.prefix}{i}@{target.domain}" for i in range(1, 2 * pairs + 1)]
    observer = IndexingLag(pool, target, search_client(opensearch_urls or ["http://127.0.0.1:9200"]), alias, tag,
                           participants, poll=poll, index_wait=index_wait)
    result = chat(pool, target, pairs, rate, duration, drain, settle=settle, observer=observer)
    result["figures"]["run_tag"] = tag
    return result
