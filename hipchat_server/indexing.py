"""The indexer: every chat process's spool, drained into the monthly OpenSearch indices.

Each chat process appends its message records to its own spool directory
(``<spool_dir>/<process name>/<12-digit number>.seg``, see storage/spool.py)
and only to the newest segment there; a segment with a newer one beside it
never changes again. The indexer reads every directory in order from a
position (segment, byte offset), the newest segment included, so a message
is indexed within moments of being spooled rather than after a rotation: it
takes the complete frames written so far, and a frame still being written is
simply not there yet.

Records go to OpenSearch in bulk requests, as many as are waiting (up to
`MAX_BATCH_RECORDS` / `MAX_BATCH_BYTES`). A position advances, and the
segments behind it are removed, only once every record before it is
acknowledged by OpenSearch or dead-lettered (rejected for good: a mapper
error). Anything else (429, 5xx, a cluster that is down) is sent again with a
back-off, forever; meanwhile the spool grows, and it drains by itself when
OpenSearch is back. The document id is the record id, so whatever is sent
twice (a retry, a restart after kill -9) replaces itself: never a duplicate.
A message its client sent twice is two records; `ResentCopies` keeps one.

The positions reached are saved in the status file (`STATUS_FILE`) at most
once a second, so a restart re-reads only the last second or so (idempotent
anyway); ``hipchat-appliance status`` reads the same file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import threading
import time
from collections import OrderedDict
from datetime import datetime, timezone

from hipchat_server.archive import index_name
from hipchat_server.storage.message_index import Document, MessageIndex
from hipchat_server.storage.recent import ORIGIN_SECONDS
from hipchat_server.storage.spool_tail import Position, SpoolTail

log = logging.getLogger("hipchat.indexer")

STATUS_FILE = "indexer-status.json"  # in the spool directory
REJECTED_DIR = "spool-rejected"  # beside the spool directory: not a process's spool
REJECTED_FILE = "rejected.jsonl"
# One bulk request: big enough that 2,000 messages/s need only a few requests a second, small
# enough that one request stays well under a second on a small cluster.
MAX_BATCH_RECORDS = 4000
MAX_BATCH_BYTES = 6 * 1024 * 1024
IDLE_POLL_SECONDS = 0.05  # an idle spool is looked at 20 times a second: lag stays far below 2 s
# A batch smaller than the maximum waits until this long after the previous bulk request began. Each
# request costs OpenSearch a translog fsync per shard copy and a round of per-request work; at a steady
# few hundred messages a second, requests every 20-50 ms of a dozen documents each cost it more CPU than the
# documents did. A quarter of a second adds at most that to the indexing lag (target: p99 under 2 s).
MIN_BULK_INTERVAL_SECONDS = 0.25
RETRY_FIRST_SECONDS = 0.1
RETRY_MAX_SECONDS = 5.0
STATUS_INTERVAL_SECONDS = 1.0
SUMMARY_INTERVAL_SECONDS = 60.0
ERROR_LOG_SECONDS = 30.0  # the same failure, retried every few seconds during an outage, is logged this often
# Copies indexed by this process that `ResentCopies` remembers (~200 bytes each): the last minutes at
# full speed, far longer at an office's pace. Older ones are searched for (refreshed by then).
REMEMBERED_COPIES = 100_000


def parse_timestamp(timestamp: str) -> float:
    """Seconds since the epoch of a record's ``2026-11-26T09:15:21.123Z``."""
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def iso_time(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class DeadLetters:
    """Records OpenSearch will never take, kept as JSON lines beside the spool so nothing is silently lost."""

    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, REJECTED_FILE)

    @classmethod
    def beside(cls, spool_dir: str) -> "DeadLetters":
        return cls(os.path.join(os.path.dirname(os.path.abspath(spool_dir.rstrip("/"))), REJECTED_DIR))

    def reject(self, spool_name: str, rejected: list[tuple[bytes, object]], now: float) -> None:
        """Append each (source, error) and fsync: the records' segment may be removed right after."""
        os.makedirs(self.directory, mode=0o750, exist_ok=True)
        with open(self.path, "ab") as f:
            for source, error in rejected:
                try:
                    record = json.loads(source)
                except ValueError:
                    record = source.decode("utf-8", "replace")
                line = {"rejected_at": iso_time(now), "spool": spool_name, "error": error, "record": record}
                f.write(json.dumps(line, ensure_ascii=False).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        for source, error in rejected:
            log.error("REJECTED a record of spool %s for good (%s); kept in %s: %.200s", spool_name, error, self.path, source)

    def set_aside(self, spool_name: str, segment_path: str) -> None:
        os.makedirs(self.directory, mode=0o750, exist_ok=True)
        target = os.path.join(self.directory, f"{spool_name}-{os.path.basename(segment_path)}")
        shutil.move(segment_path, target)
        log.error("moved the damaged segment %s to %s", segment_path, target)


class ResentCopies:
    """Keeps the newest of the records a client's resends made of one message (same sender and origin-id).

    The front ends recognise a resend by its origin-id in Redis (`archive.MessageArchive.store`),
    but two windows remain: a front end killed between a message's fsync and that Redis write, and
    a Redis failover that loses the write. The client then resends through another front end, and
    two spools hold the message. The newest copy is the one its recipients got (delivery waits for
    the Redis write the older copy never made), so it is indexed and the older one is deleted or
    never indexed, whichever spool the indexer reads first. Copies more than `ORIGIN_SECONDS` apart
    are separate messages, as for the front ends.
    """

    def __init__(self, index: MessageIndex, remembered: int = REMEMBERED_COPIES):
        self.index = index
        self.remembered = remembered
        self._indexed: OrderedDict[tuple[str, str], tuple[str, str, float]] = OrderedDict()  # -> (id, index, time)
        self.dropped_total = 0

    def sort(self, documents: list[Document]) -> tuple[list[Document], list[tuple[str, str]], list[Document]]:
        """``documents`` split into those to index, the older copies to delete ((index, id)), and those to drop.

        Asks OpenSearch (one search) about the copies not remembered here;
        raises when it cannot answer, like a bulk request.
        """
        to_index, dropped, copies_in_batch = [], [], {}
        for document in documents:
            key = _resend_key(document.record)
            if key is None:
                to_index.append(document)
            else:
                copies_in_batch.setdefault(key, []).append(document)
        newest = {}
        for key, copies in copies_in_batch.items():
            copies.sort(key=lambda d: d.record["id"], reverse=True)
            newest[key] = copies[0]
            stamp = parse_timestamp(copies[0].record["timestamp"])
            for copy in copies[1:]:
                resend = stamp - parse_timestamp(copy.record["timestamp"]) <= ORIGIN_SECONDS
                (dropped if resend else to_index).append(copy)
        known = {key: [self._indexed[key]] for key in newest if key in self._indexed}
        unknown = [key for key in newest if key not in known]
        if unknown:
            since = min(parse_timestamp(newest[key].record["timestamp"]) for key in unknown) - ORIGIN_SECONDS
            for copy in self.index.copies_with_origins(sorted({origin for _, origin in unknown}), int(since * 1000)):
                key = (copy.get("sender"), copy.get("origin_id"))
                if key in newest:
                    known.setdefault(key, []).append((copy["id"], copy["index"], parse_timestamp(copy["timestamp"])))
        deletions = []
        for key, document in newest.items():
            stamp = parse_timestamp(document.record["timestamp"])
            copies = [c for c in known.get(key, ()) if c[0] != document.record["id"] and abs(stamp - c[2]) <= ORIGIN_SECONDS]
            if any(copy_id > document.record["id"] for copy_id, _, _ in copies):
                dropped.append(document)  # a newer copy is indexed already
                continue
            to_index.append(document)
            deletions.extend((index, copy_id) for copy_id, index, _ in copies)
        self.dropped_total += len(dropped) + len(deletions)
        if dropped or deletions:
            log.info("resent messages: kept the newest copy of each; %d older copies not indexed, %d deleted", len(dropped), len(deletions))
        return to_index, deletions, dropped

    def remember(self, documents: list[Document]) -> None:
        """Note ``documents`` as indexed (those with an origin-id), forgetting the oldest beyond `remembered`."""
        for document in documents:
            key = _resend_key(document.record)
            if key is None:
                continue
            self._indexed[key] = (document.record["id"], index_name(self.index.prefix, document.record), parse_timestamp(document.record["timestamp"]))
            self._indexed.move_to_end(key)
        while len(self._indexed) > self.remembered:
            self._indexed.popitem(last=False)


def _resend_key(record: dict) -> tuple[str, str] | None:
    origin_id, sender = record.get("origin_id"), record.get("sender")
    return (sender, origin_id) if isinstance(origin_id, str) and origin_id and isinstance(sender, str) else None


class IndexingStats:
    """Counts and lag of what was indexed: a summary line per minute and the status file's figures."""

    def __init__(self):
        self.indexed_total = 0
        self.rejected_total = 0
        self._reset()
        self.last_minute: dict = {}

    def _reset(self) -> None:
        self.records = self.batches = self.rejected = 0
        self.lags: list[float] = []  # per batch: now - timestamp of its newest record
        self.oldest_lag = 0.0  # the longest any record waited, in any batch

    def batch(self, records: list[dict], rejected: int, now: float) -> None:
        self.records += len(records) - rejected
        self.indexed_total += len(records) - rejected
        self.rejected += rejected
        self.rejected_total += rejected
        self.batches += 1
        stamps = [r["timestamp"] for r in records if isinstance(r.get("timestamp"), str)]
        try:
            newest, oldest = parse_timestamp(max(stamps)), parse_timestamp(min(stamps))
        except ValueError:  # no records, or a malformed timestamp (OpenSearch rejected that one)
            return
        self.lags.append(max(0.0, now - newest))
        self.oldest_lag = max(self.oldest_lag, now - oldest)

    def summarise(self, seconds: float) -> dict:
        lags = sorted(self.lags)
        summary = {
            "records": self.records,
            "records_per_second": round(self.records / seconds, 1) if seconds > 0 else 0.0,
            "bulk_requests": self.batches,
            "rejected": self.rejected,
            "lag_p50_ms": round(percentile(lags, 0.50) * 1000),
            "lag_p99_ms": round(percentile(lags, 0.99) * 1000),
            "longest_wait_ms": round(self.oldest_lag * 1000),
        }
        self.last_minute = summary
        self._reset()
        return summary


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[max(0, math.ceil(fraction * len(sorted_values)) - 1)]


def read_status(spool_dir: str) -> dict | None:
    """The indexer's status file, or None when it has not written one (or it cannot be read)."""
    try:
        with open(os.path.join(spool_dir, STATUS_FILE), encoding="utf-8") as f:
            status = json.load(f)
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def saved_position(status: dict | None, name: str) -> Position | None:
    entry = ((status or {}).get("directories") or {}).get(name) or {}
    if isinstance(entry.get("segment"), int) and isinstance(entry.get("offset"), int):
        return Position(entry["segment"], entry["offset"])
    return None


class SpoolIndexer:
    """Drains every directory under ``spool_dir`` into ``index``; `run` until `stop`.

    One thread does everything, one bulk request at a time: while a request
    is out, new records pile up and go in the next one, so batches grow with
    the load and an idle spool costs a directory listing every `IDLE_POLL_SECONDS`.
    Requests that are not full go out at most every `MIN_BULK_INTERVAL_SECONDS`.
    """

    def __init__(self, spool_dir: str, index: MessageIndex, *, clock=time.time, stopping: threading.Event | None = None):
        self.spool_dir = spool_dir
        self.index = index
        self.clock = clock
        self.stopping = stopping or threading.Event()
        self.dead_letters = DeadLetters.beside(spool_dir)
        self.stats = IndexingStats()
        self.resent = ResentCopies(index)
        self.tails: dict[str, SpoolTail] = {}
        self.started = clock()
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self._turn = 0
        self._saved = read_status(spool_dir)  # positions of the previous run: restart where it was
        self._status_written = 0.0
        self._summary_started = self.started
        self._read_errors: dict[str, str] = {}
        self._error_kind, self._error_logged = "", 0.0
        self._bulk_started = float("-inf")  # time.monotonic() when the last bulk request began
        self._bulk_was_full = False

    def stop(self) -> None:
        """Finish the bulk request in flight (its positions are saved), then `run` returns."""
        self.stopping.set()

    def run(self) -> None:
        log.info("indexing the spools under %s into %s-YYYY.MM", self.spool_dir, self.index.prefix)
        while not self.stopping.is_set():
            try:
                worked = self.run_once()
            except Exception as e:  # a bug or an unwritable dead-letter file: say so, keep going
                log.exception("indexing failed")
                self._error(f"indexing failed: {type(e).__name__}: {e}")
                self.write_status()
                self.stopping.wait(RETRY_MAX_SECONDS)
                continue
            if not worked:
                self.stopping.wait(IDLE_POLL_SECONDS)
            elif not self._bulk_was_full:
                rest = self._bulk_started + MIN_BULK_INTERVAL_SECONDS - time.monotonic()
                if rest > 0:
                    self.stopping.wait(rest)
        self.write_status(force=True)
        log.info("indexer stopped")

    def run_once(self) -> bool:
        """Index one batch of whatever is waiting; False when nothing was (the caller then waits a moment)."""
        self._discover()
        plan, documents, poison = self._collect()
        worked = bool(documents or poison)
        if documents:
            self._bulk_started = time.monotonic()
            # Half a maximum batch counts as full: a backlog is drained without pauses.
            batch_bytes = sum(len(payload) for _, payloads, _ in plan for payload in payloads)
            self._bulk_was_full = len(documents) >= MAX_BATCH_RECORDS // 2 or batch_bytes >= MAX_BATCH_BYTES // 2
        if documents and not self._index(documents):
            return True  # stopping in the middle of retries: positions stay where they were
        for tail, _, position in plan:
            if position != tail.position:
                tail.advance(position)
                worked = True
        self._report()
        return worked

    def _discover(self) -> None:
        try:
            names = {e.name for e in os.scandir(self.spool_dir) if e.is_dir() and not e.name.startswith(".")}
        except OSError as e:
            self._error(f"cannot list the spool directory {self.spool_dir}: {e}")
            return
        for name in names - self.tails.keys():
            position = saved_position(self._saved, name)
            self.tails[name] = SpoolTail(os.path.join(self.spool_dir, name), position, self.dead_letters.set_aside)
            self.tails[name].remove_handled()  # a kill -9 between acknowledgement and removal leaves one behind
        for name in self.tails.keys() - names:
            del self.tails[name]  # its directory was removed

    def _collect(self):
        """Read up to one batch across the directories, a different one first each time (no spool starves)."""
        names = sorted(self.tails)
        if not names:
            return [], [], 0
        self._turn = (self._turn + 1) % len(names)
        plan, documents, poison = [], [], 0
        records_left, bytes_left = MAX_BATCH_RECORDS, MAX_BATCH_BYTES
        for name in names[self._turn :] + names[: self._turn]:
            if records_left <= 0 or bytes_left <= 0:
                break
            tail = self.tails[name]
            try:
                payloads, position = tail.read(records_left, bytes_left)
            except OSError as e:
                if isinstance(e, FileNotFoundError) and not os.path.isdir(tail.directory):
                    del self.tails[name]  # removed since we listed the spools (a test's, a retired process's)
                else:
                    self._read_error(name, f"cannot read spool {name}: {e}")
                continue
            self._read_errors.pop(name, None)
            records_left -= len(payloads)
            bytes_left -= sum(len(p) for p in payloads)
            parsed, bad = parse_documents(payloads, name)
            if bad:
                self.dead_letters.reject(name, bad, self.clock())
                self.stats.rejected_total += len(bad)
                poison += len(bad)
            documents.extend(parsed)
            plan.append((tail, payloads, position))
        return plan, documents, poison

    def _index(self, documents: list[Document]) -> bool:
        """Send ``documents`` until each is acknowledged or rejected for good; False if stopped first."""
        pending, delay, rejected = documents, RETRY_FIRST_SECONDS, 0
        deletions, sorted_out, indexed = None, False, []
        while pending:
            try:
                if not sorted_out:
                    pending, deletions, _ = self.resent.sort(pending)
                    sorted_out = True
                    if not pending and not deletions:
                        break  # every one an older copy of a message indexed already
                outcome = self.index.bulk(pending, deletions)
            except Exception as e:  # connection refused, timeout, 5xx for the whole request
                self._error(f"bulk request of {len(pending)} records failed: {type(e).__name__}: {e}", f"bulk {type(e).__name__}")
            else:
                for (index, copy_id), reason in outcome.undeleted:
                    # Not retried: a leftover copy of a resent message is a duplicate in history, not a loss.
                    log.warning("could not delete %s from %s, an older copy of a resent message: %s", copy_id, index, reason)
                deletions = []
                indexed.extend(outcome.indexed)
                for origin in sorted({d.origin for d, _ in outcome.rejected}):
                    self.dead_letters.reject(
                        origin, [(d.source, error) for d, error in outcome.rejected if d.origin == origin], self.clock()
                    )
                rejected += len(outcome.rejected)
                pending = [d for d, _ in outcome.retry]
                if not pending:
                    break
                reasons = sorted({reason for _, reason in outcome.retry})
                self._error(
                    f"{len(pending)} of {len(outcome.indexed) + len(pending)} records not taken ({', '.join(reasons[:3])}); retrying them",
                    f"items {reasons[:3]}",
                )
            self._report()
            if self.stopping.wait(delay):
                return False
            delay = min(delay * 2, RETRY_MAX_SECONDS)
        self.resent.remember(indexed)
        now = self.clock()
        self.last_success = now
        self.stats.batch([d.record for d in documents], rejected, now)
        return True

    def _error(self, text: str, kind: str | None = None) -> None:
        """Record ``text`` as the last error; log it unless an error of the same ``kind`` was logged lately.

        During an outage the same failure comes back every few seconds, each
        time naming another node: logged once per `ERROR_LOG_SECONDS`.
        """
        now = self.clock()
        kind = kind or text
        if kind != self._error_kind or now - self._error_logged >= ERROR_LOG_SECONDS:
            log.warning("%s", text)
            self._error_kind, self._error_logged = kind, now
        self.last_error, self.last_error_at = text, now

    def _read_error(self, name: str, text: str) -> None:
        if self._read_errors.get(name) != text:
            self._read_errors[name] = text
            self._error(text)

    def _report(self) -> None:
        now = self.clock()
        if now - self._summary_started >= SUMMARY_INTERVAL_SECONDS:
            summary = self.stats.summarise(now - self._summary_started)
            self._summary_started = now
            log.info(
                "indexed %d records (%.0f/s) in %d bulk requests; lag p50 %d ms, p99 %d ms (newest record of each "
                "request), longest wait %d ms; %d rejected; backlog %d bytes",
                summary["records"], summary["records_per_second"], summary["bulk_requests"], summary["lag_p50_ms"],
                summary["lag_p99_ms"], summary["longest_wait_ms"], summary["rejected"], self._backlog_total(),
            )
        self.write_status()

    def _backlog_total(self) -> int:
        total = 0
        for tail in list(self.tails.values()):
            try:
                total += tail.backlog_bytes()
            except OSError:
                pass
        return total

    def write_status(self, force: bool = False) -> None:
        """Write the status file (at most once a second unless ``force``): positions, backlog, success, error."""
        now = self.clock()
        if not force and now - self._status_written < STATUS_INTERVAL_SECONDS:
            return
        self._status_written = now
        directories = {}
        for name, tail in sorted(self.tails.items()):
            entry = {"backlog_bytes": None}
            if tail.position is not None:
                entry.update(segment=tail.position.segment, offset=tail.position.offset)
            try:
                entry["backlog_bytes"] = tail.backlog_bytes()
            except OSError:
                pass
            directories[name] = entry
        status = {
            "pid": os.getpid(),
            "started": iso_time(self.started),
            "updated": iso_time(now),
            "last_success": iso_time(self.last_success),
            "last_error": self.last_error,
            "last_error_at": iso_time(self.last_error_at),
            "indexed_total": self.stats.indexed_total,
            "rejected_total": self.stats.rejected_total,
            "resent_copies_removed_total": self.resent.dropped_total,
            "last_minute": self.stats.last_minute,
            "backlog_bytes": sum(d["backlog_bytes"] or 0 for d in directories.values()),
            "directories": directories,
        }
        path = os.path.join(self.spool_dir, STATUS_FILE)
        try:
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                json.dump(status, f, indent=1)
            os.replace(path + ".tmp", path)
        except OSError as e:
            log.warning("cannot write %s: %s", path, e)


def parse_documents(payloads: list[bytes], origin: str) -> tuple[list[Document], list[tuple[bytes, str]]]:
    """Documents of the payloads that are message records; the rest (with why) for the dead letters."""
    documents, bad = [], []
    for payload in payloads:
        try:
            record = json.loads(payload)
        except ValueError as e:
            bad.append((payload, f"not JSON: {e}"))
            continue
        if not isinstance(record, dict) or not isinstance(record.get("id"), str) or not isinstance(record.get("timestamp"), str):
            bad.append((payload, "not a message record (no id or timestamp)"))
            continue
        try:
            parse_timestamp(record["timestamp"])
        except ValueError:
            # Its month index would be named after garbage (and auto-created): never send it.
            bad.append((payload, f"the timestamp {record['timestamp']!r} is not ISO 8601"))
            continue
        documents.append(Document(record, payload, origin))
    return documents, bad
