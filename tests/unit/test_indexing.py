"""The indexer against a fake OpenSearch on real spool files: tailing, acknowledgement, removal, retries, retention."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

import pytest
from opensearchpy.exceptions import ConnectionError as OpenSearchConnectionError
from opensearchpy.exceptions import RequestError

from hipchat_server import indexing
from hipchat_server.indexing import STATUS_FILE, IndexingStats, SpoolIndexer, percentile, read_status
from hipchat_server.storage.message_index import MessageIndex, add_months, expired_indices, finished_months, months_to_create
from hipchat_server.storage.spool import FRAME_HEADER, Spool, encode_frame
from hipchat_server.storage.spool_tail import Position, backlog_bytes, first_unindexed, read_frames_from

NOW = datetime(2026, 11, 26, 9, 15, 30, tzinfo=timezone.utc).timestamp()


def record(n: int, room: str = "eng@conference.example.com", second: int = 21) -> dict:
    return {
        "id": f"01JD{n:022d}",
        "timestamp": f"2026-11-26T09:15:{second:02d}.{n % 1000:03d}Z",
        "type": "groupchat",
        "room": room,
        "conversation": None,
        "participants": [],
        "sender": "alice@example.com",
        "sender_name": "alice",
        "recipient": None,
        "body": f"message {n} é",
        "origin_id": None,
        "xml": f"<message from='{room}/alice' type='groupchat'><body>message {n}</body></message>",
    }


def segment_path(directory, number: int) -> str:
    return os.path.join(str(directory), f"{number:012d}.seg")


def write_segment(directory, number: int, records: list[dict], extra: bytes = b"") -> str:
    """Append ``records`` (and raw ``extra`` bytes) to a segment, as a chat process's spool does."""
    os.makedirs(str(directory), exist_ok=True)
    path = segment_path(directory, number)
    with open(path, "ab") as f:
        f.write(b"".join(encode_frame(r) for r in records) + extra)
    return path


class FakeIndices:
    def __init__(self, existing=()):
        self.existing = set(existing)
        self.created, self.deleted, self.merged, self.refreshed = [], [], [], []

    def create(self, index, request_timeout):
        if index in self.existing:
            raise RequestError(400, "resource_already_exists_exception", {})
        self.existing.add(index)
        self.created.append(index)

    def exists(self, index, request_timeout):
        return index in self.existing

    def get(self, index, allow_no_indices, expand_wildcards, request_timeout):
        prefix = index.rstrip("*")
        return {name: {} for name in self.existing if name.startswith(prefix)}

    def delete(self, index, request_timeout):
        self.existing.discard(index)
        self.deleted.append(index)

    def forcemerge(self, index, max_num_segments, request_timeout):
        self.merged.append((index, max_num_segments))

    def refresh(self, index, request_timeout):
        self.refreshed.append(index)


class FakeCat:
    """``_cat/indices`` answers: index -> (primaries, replicas, segments over every copy)."""

    def __init__(self, segments: dict[str, tuple[int, int, int]]):
        self.segments = segments

    def indices(self, index, h, format, request_timeout):
        return [
            {"index": name, "pri": str(pri), "rep": str(rep), "segments.count": str(count)}
            for name, (pri, rep, count) in self.segments.items()
            if name in index.split(",")
        ]


class FakeOpenSearch:
    """Records bulk requests and stores documents by (index, _id); ``answers`` scripts the next responses.

    An answer is an exception to raise, or a function (_id -> status) for the
    documents of that request; without one every document gets 201.
    """

    def __init__(self):
        self.documents: dict[tuple[str, str], dict] = {}
        self.requests: list[list[str]] = []  # the _ids of each bulk request's index actions
        self.deletions: list[tuple[str, str]] = []  # (index, _id) of every delete action
        self.searches = 0
        self.params: list[dict] = []
        self.answers: list = []
        self.indices = FakeIndices()

    def bulk(self, body, **params):
        lines = body.split(b"\n")
        assert lines[-1] == b"", "a bulk body ends with a newline"
        actions, n = [], 0
        while n < len(lines) - 1:
            (kind, action), = json.loads(lines[n]).items()
            if kind == "index":
                actions.append((kind, action, json.loads(lines[n + 1])))
                n += 2
            else:
                actions.append((kind, action, None))
                n += 1
        self.requests.append([action["_id"] for kind, action, _ in actions if kind == "index"])
        self.params.append(params)
        answer = self.answers.pop(0) if self.answers else (lambda _id: 201)
        if isinstance(answer, Exception):
            raise answer
        items = []
        for kind, action, source in actions:
            key = (action["_index"], action["_id"])
            if kind == "delete":
                self.deletions.append(key)
                found = self.documents.pop(key, None) is not None
                items.append({"delete": {**action, "status": 200 if found else 404}})
                continue
            status = answer(action["_id"])
            if status < 300:
                self.documents[key] = source
            error = None if status < 300 else {"type": "mapper_parsing_exception" if status == 400 else "es_rejected_execution_exception"}
            items.append({"index": {"_index": action["_index"], "_id": action["_id"], "status": status, "error": error}})
        return {"errors": any(next(iter(i.values())).get("error") for i in items), "items": items}

    def search(self, index, body, **params):
        """The resend lookup's query only: origin-ids (terms) stamped since a time (range, epoch millis)."""
        self.searches += 1
        terms, since = body["query"]["bool"]["filter"]
        origins, since_ms = set(terms["terms"]["origin_id"]), since["range"]["timestamp"]["gte"]
        hits = [
            {"_index": name, "_id": _id, "_source": {k: source[k] for k in body["_source"]}}
            for (name, _id), source in self.documents.items()
            if source.get("origin_id") in origins and indexing.parse_timestamp(source["timestamp"]) * 1000 >= since_ms
        ]
        return {"hits": {"hits": hits}}


@pytest.fixture
def client():
    return FakeOpenSearch()


@pytest.fixture
def spool_dir(tmp_path):
    path = tmp_path / "spool"
    path.mkdir()
    return path


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(indexing, "RETRY_FIRST_SECONDS", 0.001)
    monkeypatch.setattr(indexing, "RETRY_MAX_SECONDS", 0.002)


def make_indexer(spool_dir, client) -> SpoolIndexer:
    return SpoolIndexer(str(spool_dir), MessageIndex(client, "messages"), clock=lambda: NOW)


def drain(indexer: SpoolIndexer, rounds: int = 20) -> None:
    for _ in range(rounds):
        if not indexer.run_once():
            return
    raise AssertionError("the indexer kept finding work")


def segment_numbers(directory) -> list[int]:
    return sorted(int(name[:-4]) for name in os.listdir(str(directory)) if name.endswith(".seg"))


# Indexing what a chat process spooled.
def test_records_go_to_their_month_index_with_the_record_id_and_the_whole_record_as_source(spool_dir, client):
    """Each record is indexed into messages-YYYY.MM of its timestamp, _id = id, _source = the record (xml too), no refresh."""
    records = [record(n) for n in range(5)] + [{**record(5), "timestamp": "2026-12-01T00:00:00.000Z"}]
    write_segment(spool_dir / "xmpp-0", 1, records)
    drain(make_indexer(spool_dir, client))
    assert client.documents[("messages-2026.11", records[0]["id"])] == records[0]
    assert client.documents[("messages-2026.12", records[5]["id"])] == records[5]
    assert len(client.documents) == 6
    assert client.params[0]["refresh"] is False


def test_a_real_spool_is_read_while_its_writer_appends(spool_dir, client):
    """Records a `Spool` fsynced into its active segment are indexed without waiting for a rotation."""

    class Inline:
        def callFromThread(self, f, *args):
            f(*args)

    spool = Spool(str(spool_dir / "web"), Inline())
    spool.open()
    try:
        done = []
        for d in [spool.append(record(n)) for n in range(20)]:
            d.addBoth(done.append)
        spool.close()
        assert done == [None] * 20
    finally:
        spool.close()
    drain(make_indexer(spool_dir, client))
    assert len(client.documents) == 20


def test_the_newest_segment_is_tailed_as_it_grows(spool_dir, client):
    """Records appended to the segment being written are indexed on the next pass, and earlier ones are not sent again."""
    write_segment(spool_dir / "xmpp-0", 1, [record(n) for n in range(3)])
    indexer = make_indexer(spool_dir, client)
    drain(indexer)
    write_segment(spool_dir / "xmpp-0", 1, [record(n) for n in range(3, 5)])
    drain(indexer)
    assert client.requests == [[record(n)["id"] for n in range(3)], [record(n)["id"] for n in range(3, 5)]]
    assert segment_numbers(spool_dir / "xmpp-0") == [1], "the newest segment is never removed"


def test_a_frame_still_being_written_is_read_once_it_is_complete(spool_dir, client):
    """A torn (unfinished) frame at the end of the newest segment is not read, nor anything after; once whole it is."""
    frame = encode_frame(record(1))
    write_segment(spool_dir / "xmpp-0", 1, [record(0)], extra=frame[:10])
    indexer = make_indexer(spool_dir, client)
    drain(indexer)
    assert client.requests == [[record(0)["id"]]]
    with open(segment_path(spool_dir / "xmpp-0", 1), "ab") as f:
        f.write(frame[10:])
    drain(indexer)
    assert client.requests[-1] == [record(1)["id"]]


def test_closed_segments_are_removed_once_indexed_but_never_the_newest(spool_dir, client):
    """Every segment with a newer one beside it goes once all its records are acknowledged; the newest stays."""
    for number in (1, 2, 3):
        write_segment(spool_dir / "xmpp-1", number, [record(number * 10 + n) for n in range(4)])
    drain(make_indexer(spool_dir, client))
    assert len(client.documents) == 12
    assert segment_numbers(spool_dir / "xmpp-1") == [3]


def test_a_closed_segment_stays_while_any_of_its_records_is_not_acknowledged(spool_dir, client):
    """Items answered 429 or 503 are sent again, alone; the segment is removed only after they are taken."""
    write_segment(spool_dir / "xmpp-0", 1, [record(n) for n in range(4)])
    write_segment(spool_dir / "xmpp-0", 2, [])
    busy = {record(1)["id"]: 429, record(2)["id"]: 503}
    seen = []

    def first(_id):
        return busy.get(_id, 201)

    def second(_id):
        seen.append(segment_numbers(spool_dir / "xmpp-0"))
        return 201

    client.answers = [first, second]
    drain(make_indexer(spool_dir, client))
    assert client.requests[1] == [record(1)["id"], record(2)["id"]]
    assert seen[0] == [1, 2], "the segment was still there while two of its records were not indexed"
    assert segment_numbers(spool_dir / "xmpp-0") == [2]
    assert len(client.documents) == 4


def test_a_cluster_that_is_down_is_retried_with_the_same_documents(spool_dir, client):
    """A bulk request that fails as a whole is sent again, same ids, until it succeeds; the error is in the status file."""
    write_segment(spool_dir / "xmpp-0", 1, [record(n) for n in range(3)])
    client.answers = [OpenSearchConnectionError("N/A", "refused", None)] * 3
    indexer = make_indexer(spool_dir, client)
    drain(indexer)
    assert len(client.requests) == 4
    assert all(r == client.requests[0] for r in client.requests)
    assert len(client.documents) == 3
    indexer.write_status(force=True)
    status = read_status(str(spool_dir))
    assert "refused" in status["last_error"]
    assert status["last_success"] == "2026-11-26T09:15:30.000Z"


def test_a_record_rejected_for_good_is_dead_lettered_and_the_rest_goes_on(spool_dir, client):
    """A 400 (mapper error) writes the record and its error to spool-rejected/ and counts it as handled."""
    write_segment(spool_dir / "xmpp-0", 1, [record(n) for n in range(3)])
    write_segment(spool_dir / "xmpp-0", 2, [])
    poison = record(1)["id"]
    client.answers = [lambda _id: 400 if _id == poison else 201]
    indexer = make_indexer(spool_dir, client)
    drain(indexer)
    assert len(client.requests) == 1, "a rejected record is not sent again"
    assert segment_numbers(spool_dir / "xmpp-0") == [2]
    with open(spool_dir.parent / "spool-rejected" / "rejected.jsonl") as f:
        [line] = [json.loads(l) for l in f]
    assert line["record"] == record(1)
    assert line["spool"] == "xmpp-0"
    assert line["error"]["status"] == 400
    assert indexer.stats.rejected_total == 1


def test_a_record_with_a_malformed_timestamp_is_dead_lettered_without_being_sent(spool_dir, client):
    """A timestamp that is no date would name (and auto-create) a garbage month index: it never reaches OpenSearch."""
    bad = {**record(0), "timestamp": "2026-11-xxT00:00:00Z"}
    write_segment(spool_dir / "xmpp-0", 1, [bad, record(1)])
    indexer = make_indexer(spool_dir, client)
    drain(indexer)
    assert client.requests == [[record(1)["id"]]]
    assert indexer.stats.rejected_total == 1
    with open(spool_dir.parent / "spool-rejected" / "rejected.jsonl") as f:
        assert "is not ISO 8601" in json.loads(f.readline())["error"]


def test_a_frame_that_is_not_a_message_record_is_dead_lettered_without_being_sent(spool_dir, client):
    """A CRC-valid frame that is not JSON, or has no id, never reaches OpenSearch and does not block the spool."""
    bad = b"not json"
    frame = FRAME_HEADER.pack(len(bad), __import__("zlib").crc32(bad)) + bad
    write_segment(spool_dir / "xmpp-0", 1, [record(0), {"body": "no id"}], extra=frame)
    write_segment(spool_dir / "xmpp-0", 2, [record(1)])
    drain(make_indexer(spool_dir, client))
    assert sorted(_id for _, _id in client.documents) == [record(0)["id"], record(1)["id"]]
    assert segment_numbers(spool_dir / "xmpp-0") == [2]
    with open(spool_dir.parent / "spool-rejected" / "rejected.jsonl") as f:
        assert len(f.readlines()) == 2


def test_a_damaged_closed_segment_is_indexed_up_to_the_damage_and_set_aside(spool_dir, client):
    """A CRC mismatch inside a closed segment: the records before it are indexed, the file moves to spool-rejected/."""
    path = write_segment(spool_dir / "xmpp-0", 1, [record(n) for n in range(3)])
    with open(path, "r+b") as f:
        f.seek(len(encode_frame(record(0))) + FRAME_HEADER.size + 3)
        f.write(b"#")
    write_segment(spool_dir / "xmpp-0", 2, [record(9)])
    drain(make_indexer(spool_dir, client))
    assert sorted(_id for _, _id in client.documents) == [record(0)["id"], record(9)["id"]]
    assert segment_numbers(spool_dir / "xmpp-0") == [2]
    assert os.path.exists(spool_dir.parent / "spool-rejected" / "xmpp-0-000000000001.seg")


def test_stopping_during_retries_leaves_the_position_where_it_was(spool_dir, client):
    """SIGTERM while the cluster is down: nothing is marked handled, nothing removed."""
    write_segment(spool_dir / "xmpp-0", 1, [record(n) for n in range(3)])
    write_segment(spool_dir / "xmpp-0", 2, [])
    indexer = make_indexer(spool_dir, client)

    def down(body, **params):
        indexer.stop()
        raise OpenSearchConnectionError("N/A", "refused", None)

    client.bulk = down
    indexer.run_once()
    assert indexer.tails["xmpp-0"].position is None
    assert segment_numbers(spool_dir / "xmpp-0") == [1, 2]


def test_a_restart_after_a_lost_acknowledgement_sends_again_without_duplicates(spool_dir, client):
    """kill -9 after OpenSearch stored a bulk but before the indexer saw the answer: the next run resends the same ids."""
    write_segment(spool_dir / "xmpp-0", 1, [record(n) for n in range(5)])
    write_segment(spool_dir / "xmpp-0", 2, [])
    first = make_indexer(spool_dir, client)
    stored = client.bulk

    def stored_then_killed(body, **params):
        stored(body, **params)
        first.stop()
        raise OpenSearchConnectionError("N/A", "connection reset", None)

    client.bulk = stored_then_killed
    first.run_once()
    client.bulk = stored
    drain(make_indexer(spool_dir, client))
    assert client.requests[0] == client.requests[1]
    assert len(client.documents) == 5
    assert segment_numbers(spool_dir / "xmpp-0") == [2]


def test_a_restart_continues_from_the_saved_position(spool_dir, client):
    """Positions saved in the status file spare a restart from sending the newest segment again."""
    write_segment(spool_dir / "xmpp-0", 1, [record(n) for n in range(3)])
    indexer = make_indexer(spool_dir, client)
    drain(indexer)
    indexer.write_status(force=True)
    write_segment(spool_dir / "xmpp-0", 1, [record(3)])
    drain(make_indexer(spool_dir, client))
    assert client.requests == [[record(n)["id"] for n in range(3)], [record(3)["id"]]]


def test_a_saved_position_above_every_segment_reads_them_all(spool_dir, client):
    """A spool emptied by hand whose writer started over at segment 1 is read from its start, not skipped or deleted."""
    (spool_dir / STATUS_FILE).write_text(json.dumps({"directories": {"xmpp-0": {"segment": 40, "offset": 100}}}))
    write_segment(spool_dir / "xmpp-0", 1, [record(0)])
    write_segment(spool_dir / "xmpp-0", 2, [record(1)])
    drain(make_indexer(spool_dir, client))
    assert len(client.documents) == 2
    assert segment_numbers(spool_dir / "xmpp-0") == [2]


def test_every_spool_directory_gets_its_turn(spool_dir, client, monkeypatch):
    """With more waiting than one bulk takes, each batch starts with a different directory."""
    monkeypatch.setattr(indexing, "MAX_BATCH_RECORDS", 2)
    for k, name in enumerate(("web", "xmpp-0", "xmpp-1")):
        write_segment(spool_dir / name, 1, [record(k * 10 + n, room=f"{name}@conference.example.com") for n in range(4)])
    indexer = make_indexer(spool_dir, client)
    for _ in range(3):
        indexer.run_once()
    rooms = {client.documents[("messages-2026.11", _id)]["room"] for request in client.requests for _id in request}
    assert rooms == {"web@conference.example.com", "xmpp-0@conference.example.com", "xmpp-1@conference.example.com"}


def test_a_removed_directory_is_forgotten(spool_dir, client):
    """A spool directory deleted (a test's, a retired process's) stops being read without an error."""
    write_segment(spool_dir / "e2e-x", 1, [record(0)])
    indexer = make_indexer(spool_dir, client)
    drain(indexer)
    for name in os.listdir(spool_dir / "e2e-x"):
        os.unlink(spool_dir / "e2e-x" / name)
    os.rmdir(spool_dir / "e2e-x")
    drain(indexer)
    assert "e2e-x" not in indexer.tails


# Reading frames, backlog, status figures.
def test_frames_are_read_within_the_record_budget_and_say_so(spool_dir):
    """A read stops after max_records and reports that more is there; the next read starts at its end."""
    path = write_segment(spool_dir / "d", 1, [record(n) for n in range(5)])
    first = read_frames_from(path, 0, 2, 1 << 20)
    assert len(first.payloads) == 2 and first.limited and not first.at_end
    rest = read_frames_from(path, first.end, 10, 1 << 20)
    assert [json.loads(p)["id"] for p in rest.payloads] == [record(n)["id"] for n in range(2, 5)]
    assert rest.at_end and not rest.limited


def test_backlog_and_oldest_unindexed_record_count_from_the_position(spool_dir):
    """Backlog is every byte at or after the position; the oldest unindexed record is the one at it."""
    first = write_segment(spool_dir / "d", 1, [record(0), record(1)])
    write_segment(spool_dir / "d", 2, [record(2)])
    one = len(encode_frame(record(0)))
    total = os.path.getsize(first) + len(encode_frame(record(2)))
    assert backlog_bytes(str(spool_dir / "d"), None) == total
    assert backlog_bytes(str(spool_dir / "d"), Position(1, one)) == total - one
    assert first_unindexed(str(spool_dir / "d"), Position(1, one))["id"] == record(1)["id"]
    assert first_unindexed(str(spool_dir / "d"), Position(1, os.path.getsize(first)))["id"] == record(2)["id"]
    assert first_unindexed(str(spool_dir / "d"), Position(2, len(encode_frame(record(2))))) is None


def test_status_file_has_positions_backlog_and_lag(spool_dir, client):
    """The status file names each directory's position and backlog, the last success and the lag figures."""
    write_segment(spool_dir / "xmpp-0", 1, [record(n, second=20) for n in range(3)])
    indexer = make_indexer(spool_dir, client)
    drain(indexer)
    write_segment(spool_dir / "xmpp-0", 1, [record(7)])  # not indexed yet
    indexer.stats.summarise(60)
    indexer.write_status(force=True)
    status = read_status(str(spool_dir))
    entry = status["directories"]["xmpp-0"]
    assert entry["offset"] == sum(len(encode_frame(record(n, second=20))) for n in range(3))
    assert entry["backlog_bytes"] == status["backlog_bytes"] == len(encode_frame(record(7)))
    assert status["indexed_total"] == 3
    assert status["last_minute"]["lag_p99_ms"] == 9998  # 09:15:30.000 - 09:15:20.002


def test_lag_percentiles_are_of_the_newest_record_of_each_batch():
    """p50/p99 come from one lag per bulk request; the longest wait is the oldest record's."""
    stats = IndexingStats()
    stats.batch([{"timestamp": "2026-11-26T09:15:29.000Z"}, {"timestamp": "2026-11-26T09:15:29.900Z"}], 0, NOW)
    stats.batch([{"timestamp": "2026-11-26T09:15:28.000Z"}], 0, NOW)
    summary = stats.summarise(60)
    assert summary["records"] == 3
    assert summary["lag_p50_ms"] == 100
    assert summary["lag_p99_ms"] == 2000
    assert summary["longest_wait_ms"] == 2000
    assert percentile([], 0.99) == 0.0
    stats.batch([{"timestamp": "2026-11-xx"}], 1, NOW)  # rejected by OpenSearch for its date; no lag, no crash
    assert stats.summarise(60)["rejected"] == 1


# Month indices and retention.
def test_month_arithmetic_crosses_years():
    """Adding and subtracting months wraps the year in both directions."""
    assert add_months(2026, 12, 1) == (2027, 1)
    assert add_months(2026, 1, -1) == (2025, 12)
    assert add_months(2026, 3, -15) == (2024, 12)
    assert months_to_create(datetime(2026, 12, 31, tzinfo=timezone.utc)) == [(2026, 12), (2027, 1)]


def test_retention_keeps_the_current_month_and_the_n_before_it():
    """With 3 months in November, August stays (its end is under 3 months old) and July goes; odd names are left alone."""
    names = ["messages-2026.06", "messages-2026.07", "messages-2026.08", "messages-2026.11", "messages-2026.12",
             "messages-old", "messages-2026.13", "other-2020.01"]
    now = datetime(2026, 11, 26, tzinfo=timezone.utc)
    assert expired_indices("messages", names, now, 3) == ["messages-2026.06", "messages-2026.07"]
    assert expired_indices("messages", names, now, 0) == []
    assert expired_indices("messages", ["messages-2025.12", "messages-2026.01"], datetime(2026, 2, 1, tzinfo=timezone.utc), 1) == ["messages-2025.12"]


def test_maintaining_months_creates_ahead_and_deletes_expired(client):
    """Next month is created (an existing one is fine); expired months are deleted; never the current or next."""
    client.indices = FakeIndices(existing={"messages-2026.11", "messages-2026.01", "messages-2026.09", "messages-2026.10"})
    index = MessageIndex(client, "messages")
    deleted = index.maintain_months(datetime(2026, 11, 26, tzinfo=timezone.utc), 1)
    assert client.indices.created == ["messages-2026.12"]
    assert deleted == ["messages-2026.01", "messages-2026.09"]
    assert client.indices.existing == {"messages-2026.10", "messages-2026.11", "messages-2026.12"}
    assert MessageIndex(client, "messages").maintain_months(datetime(2026, 11, 26, tzinfo=timezone.utc), 0) == []


def test_the_same_failure_during_an_outage_is_logged_once_per_interval(spool_dir, client, caplog):
    """Retries failing the same way (another node each time) log one warning, yet the status keeps the latest error."""
    write_segment(spool_dir / "xmpp-0", 1, [record(0)])
    client.answers = [OpenSearchConnectionError("N/A", f"refused by node {n}", None) for n in range(4)]
    indexer = make_indexer(spool_dir, client)
    with caplog.at_level("WARNING", logger="hipchat.indexer"):
        drain(indexer)
    assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 1
    assert "node 3" in indexer.last_error


class ScriptedStop:
    """Stands in for the indexer's stop event: records how long each pause was, ends the run after a few."""

    def __init__(self, between=lambda: None, pauses: int = 3):
        self.pauses: list[float] = []
        self.left = pauses
        self.between = between

    def is_set(self) -> bool:
        return self.left <= 0

    def set(self) -> None:
        self.left = 0

    def wait(self, seconds: float) -> bool:
        self.pauses.append(seconds)
        self.left -= 1
        self.between()
        return self.left <= 0


def test_small_batches_go_out_at_most_every_bulk_interval(spool_dir, client):
    """A steady trickle is sent a few times a second, not the moment each record lands."""
    written = iter(range(100))
    write_segment(spool_dir / "xmpp-0", 1, [record(next(written)) for _ in range(3)])
    indexer = make_indexer(spool_dir, client)
    indexer.stopping = ScriptedStop(between=lambda: write_segment(spool_dir / "xmpp-0", 1, [record(next(written)) for _ in range(3)]))
    indexer.run()
    assert len(client.requests) == 3 and all(len(ids) == 3 for ids in client.requests)
    assert all(0.1 < pause <= indexing.MIN_BULK_INTERVAL_SECONDS for pause in indexer.stopping.pauses)


def test_a_backlog_is_drained_without_pauses(spool_dir, client, monkeypatch):
    """Full batches follow each other at once; the indexer pauses only when nothing is left."""
    monkeypatch.setattr(indexing, "MAX_BATCH_RECORDS", 4)
    write_segment(spool_dir / "xmpp-0", 1, [record(n) for n in range(12)])
    indexer = make_indexer(spool_dir, client)
    indexer.stopping = ScriptedStop(pauses=1)
    indexer.run()
    assert [len(ids) for ids in client.requests] == [4, 4, 4]
    assert indexer.stopping.pauses == [indexing.IDLE_POLL_SECONDS]


def test_a_month_is_finished_a_day_after_it_ended():
    """Late messages of a month arrive in its next day's first hours; only then is it merged."""
    names = ["messages-2026.10", "messages-2026.11", "messages-2026.12", "messages-old"]
    assert finished_months("messages", names, datetime(2026, 12, 1, 20, 0, tzinfo=timezone.utc)) == ["messages-2026.10"]
    assert finished_months("messages", names, datetime(2026, 12, 2, 0, 1, tzinfo=timezone.utc)) == ["messages-2026.10", "messages-2026.11"]
    assert finished_months("messages", ["messages-2025.12"], datetime(2026, 1, 2, 1, 0, tzinfo=timezone.utc)) == ["messages-2025.12"]


def test_finished_months_with_more_than_one_segment_per_shard_copy_are_merged(client):
    """Merged into one segment per shard; months already merged, and the current one, are left alone."""
    client.indices = FakeIndices(existing={"messages-2026.09", "messages-2026.10", "messages-2026.11", "messages-2026.12"})
    client.cat = FakeCat({
        "messages-2026.09": (2, 1, 4),  # merged already: 2 primaries and their replicas, one segment each
        "messages-2026.10": (2, 1, 37),
        "messages-2026.11": (2, 1, 40),  # this month: still written
    })
    merged = MessageIndex(client, "messages").compact_finished_months(datetime(2026, 11, 26, tzinfo=timezone.utc))
    assert merged == ["messages-2026.10"]
    assert client.indices.merged == [("messages-2026.10", 1)]
    assert client.indices.refreshed == ["messages-2026.10"]


# A message its client sent twice (through two front ends, both copies spooled): one copy in history.
def resent(n: int, minute: int = 15, second: int = 21, origin: str = "orig-1") -> dict:
    """Copy ``n`` of the message alice sent with origin-id ``origin``: its own id, its own time."""
    return {**record(n), "timestamp": f"2026-11-26T09:{minute:02d}:{second:02d}.{n % 1000:03d}Z", "origin_id": origin}


def test_two_copies_of_a_resent_message_in_one_batch_index_only_the_newest(spool_dir, client):
    """The killed front end's copy and the resend, read together: the newer (the one delivered) alone is indexed."""
    write_segment(spool_dir / "xmpp-0", 1, [resent(1), record(2)])
    write_segment(spool_dir / "xmpp-1", 1, [resent(3)])
    indexer = make_indexer(spool_dir, client)
    drain(indexer)
    assert sorted(i for _, i in client.documents) == [record(2)["id"], resent(3)["id"]]
    assert indexer.resent.dropped_total == 1
    assert segment_numbers(spool_dir / "xmpp-0") == [1] and indexer.tails["xmpp-0"].backlog_bytes() == 0, "the dropped copy is handled, not left behind"


@pytest.mark.parametrize("older_read_first", [True, False], ids=["older copy read first", "newer copy read first"])
def test_the_newer_copy_is_kept_whichever_spool_is_read_first(spool_dir, client, older_read_first):
    """Read first, the older copy is indexed, then deleted when the newer arrives; read after it, never indexed."""
    older, newer = ("xmpp-0", resent(1)), ("xmpp-1", resent(3))
    indexer = make_indexer(spool_dir, client)
    for name, copy in (older, newer) if older_read_first else (newer, older):
        write_segment(spool_dir / name, 1, [copy])
        drain(indexer)
    assert list(client.documents) == [("messages-2026.11", resent(3)["id"])]
    if older_read_first:
        assert client.deletions == [("messages-2026.11", resent(1)["id"])]
    else:
        assert client.deletions == [] and all(resent(1)["id"] not in ids for ids in client.requests)


def test_a_copy_indexed_before_a_restart_is_found_by_a_search(spool_dir, client):
    """A new indexer process remembers nothing: the earlier copy is found in OpenSearch and deleted."""
    write_segment(spool_dir / "xmpp-0", 1, [resent(1)])
    drain(make_indexer(spool_dir, client))
    write_segment(spool_dir / "xmpp-1", 1, [resent(3)])
    client.searches = 0
    drain(make_indexer(spool_dir, client))
    assert client.searches >= 1
    assert list(client.documents) == [("messages-2026.11", resent(3)["id"])]


def test_a_remembered_copy_needs_no_search(spool_dir, client):
    write_segment(spool_dir / "xmpp-0", 1, [resent(1)])
    indexer = make_indexer(spool_dir, client)
    drain(indexer)
    client.searches = 0
    write_segment(spool_dir / "xmpp-1", 1, [resent(3)])
    drain(indexer)
    assert client.searches == 0
    assert list(client.documents) == [("messages-2026.11", resent(3)["id"])]


def test_the_same_origin_id_over_an_hour_apart_is_two_messages(spool_dir, client):
    """As at the front ends, a resend is recognised within ORIGIN_SECONDS; later the same origin-id is a new message."""
    early, late = {**resent(1), "timestamp": "2026-11-26T07:00:00.001Z"}, resent(3)
    write_segment(spool_dir / "xmpp-0", 1, [early])
    write_segment(spool_dir / "xmpp-1", 1, [late])
    drain(make_indexer(spool_dir, client))
    assert len(client.documents) == 2 and client.deletions == []


def test_other_senders_and_origin_ids_are_separate_messages(spool_dir, client):
    bob = {**resent(2), "sender": "bob@example.com"}
    write_segment(spool_dir / "xmpp-0", 1, [resent(1), bob, resent(3, origin="orig-2")])
    drain(make_indexer(spool_dir, client))
    assert len(client.documents) == 3 and client.deletions == []


def test_a_record_read_again_after_a_restart_replaces_itself_and_deletes_nothing(spool_dir, client):
    """The same record (same id) twice is not a resend: indexed again over itself, nothing deleted."""
    write_segment(spool_dir / "xmpp-0", 1, [resent(1)])
    drain(make_indexer(spool_dir, client))
    os.remove(os.path.join(str(spool_dir), STATUS_FILE))  # as if killed before the position was saved
    drain(make_indexer(spool_dir, client))
    assert list(client.documents) == [("messages-2026.11", resent(1)["id"])]
    assert client.deletions == []


def test_a_failed_lookup_is_retried_like_a_failed_bulk_request(spool_dir, client, monkeypatch):
    """The cluster down during the resend lookup: nothing is indexed or dropped until it answers."""
    write_segment(spool_dir / "xmpp-0", 1, [resent(1)])
    calls = []
    real_search = client.search

    def search_failing_once(index, body, **params):
        calls.append(1)
        if len(calls) == 1:
            raise OpenSearchConnectionError("N/A", "connection refused", None)
        return real_search(index, body, **params)

    monkeypatch.setattr(client, "search", search_failing_once)
    indexer = make_indexer(spool_dir, client)
    drain(indexer)
    assert len(calls) == 2 and list(client.documents) == [("messages-2026.11", resent(1)["id"])]
    assert "failed" in (indexer.last_error or "")
