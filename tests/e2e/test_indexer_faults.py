"""The indexer on the installed appliance: every spooled record in OpenSearch exactly once, whatever breaks.

Each test spools records the way a chat process does (`storage.spool.Spool`,
fsynced, into its own ``<spool_dir>/e2e-<id>/``, under a room of its own),
then counts them in the ``messages`` alias: the count must equal what was
spooled, which is both "none lost" and "none doubled" since every record has
its own id. Then the spool is closed (a newer, empty segment starts) and every
segment but that one must be removed.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import threading
import time
import uuid

import pytest

from tests.conftest import program_pid, run_appliance_cli, supervisorctl, wait_for

pytestmark = pytest.mark.disruptive

INDEXER = "chat-core:indexer"
SERVICE_USER = "hipchat"


class Inline:
    """Stands in for the reactor: the spool's Deferreds fire on its writer thread."""

    def callFromThread(self, f, *args):
        f(*args)


class TestSpool:
    """A spool directory written like a chat process's, readable and cleanable by the indexer (user hipchat)."""

    __test__ = False

    def __init__(self, config):
        from hipchat_server.storage.spool import Spool

        self.name = f"e2e-{uuid.uuid4().hex[:10]}"
        self.room = f"{self.name}@conference.e2e.test"
        self.path = os.path.join(config.archive.spool_dir, self.name)
        os.mkdir(self.path, 0o750)
        user = pwd.getpwnam(SERVICE_USER)
        os.chown(self.path, user.pw_uid, user.pw_gid)
        self.spool = Spool(self.path, Inline(), config.archive.spool_segment_bytes)
        self.spool.open()
        self.appended = 0

    def records(self, count: int, origin_ids: list[str] | None = None) -> list[dict]:
        """``count`` new records (not spooled yet); with ``origin_ids``, each carries one (XEP-0359)."""
        from ulid import ULID

        from hipchat_server.archive import timestamp_of

        made = []
        for i in range(count):
            n = self.appended + len(made)
            record_id = ULID()
            body = f"indexer fault test message {n} about deploys and rollbacks"
            made.append(
                {
                    "id": str(record_id),
                    "timestamp": timestamp_of(record_id.milliseconds),
                    "type": "groupchat",
                    "room": self.room,
                    "conversation": None,
                    "participants": [],
                    "sender": "alice@e2e.test",
                    "sender_name": "alice",
                    "recipient": None,
                    "body": body,
                    "origin_id": origin_ids[i] if origin_ids else None,
                    "xml": f"<message from='{self.room}/alice' type='groupchat'><body>{body}</body>"
                    f"<stanza-id xmlns='urn:xmpp:sid:0' id='{record_id}' by='{self.room}'/></message>",
                }
            )
        return made

    def append(self, count: int) -> list[dict]:
        """Spool ``count`` new records and return once all are fsynced."""
        return self.write(self.records(count))

    def write(self, records: list[dict]) -> list[dict]:
        """Spool ``records`` and return them once all are fsynced."""
        done, failures, remaining = threading.Event(), [], [len(records)]
        lock = threading.Lock()

        def fired(result):
            with lock:
                if result is not None:
                    failures.append(result)
                remaining[0] -= 1
                if remaining[0] == 0:
                    done.set()

        for r in records:
            self.spool.append(r).addBoth(fired)
        assert done.wait(120), "the spool did not commit in time"
        assert not failures, failures[0]
        self.appended += len(records)
        return records

    def close_and_roll(self) -> None:
        """Close, then open and close again: the writer's last segment is closed too and may be removed."""
        self.spool.close()
        self.spool.open()
        self.spool.close()

    def segments(self) -> list[str]:
        return sorted(n for n in os.listdir(self.path) if n.endswith(".seg"))

    def remove(self) -> None:
        self.spool.close()
        shutil.rmtree(self.path, ignore_errors=True)


@pytest.fixture
def test_spool(config, chat_server):
    spool = TestSpool(config)
    yield spool
    spool.remove()
    try:
        chat_server.get_opensearch_client().delete_by_query(
            index=config.archive.index_prefix, body={"query": {"term": {"room": spool.room}}},
            conflicts="proceed", refresh=True, request_timeout=60,
        )
    except Exception as e:  # the cluster may still be recovering; the documents are harmless
        print(f"could not delete the test documents of {spool.room}: {e}")


def indexed_count(chat_server, config, room: str) -> int:
    client = chat_server.get_opensearch_client()
    client.indices.refresh(index=f"{config.archive.index_prefix}-*", request_timeout=30)
    body = {"query": {"term": {"room": room}}}
    return client.count(index=config.archive.index_prefix, body=body, request_timeout=30)["count"]


def wait_until_indexed(chat_server, config, spool: TestSpool, timeout: float) -> None:
    """Wait until exactly every appended record is found, then until only the newest (empty) segment remains."""
    wait_for(lambda: indexed_count(chat_server, config, spool.room) >= spool.appended, timeout, 1.0, "every record indexed")
    assert indexed_count(chat_server, config, spool.room) == spool.appended, "a record was indexed twice"
    spool.close_and_roll()
    wait_for(lambda: len(spool.segments()) == 1, 30, 0.5, "the indexed segments to be removed")


def indexed_ids(chat_server, config, room: str) -> list[str]:
    client = chat_server.get_opensearch_client()
    client.indices.refresh(index=f"{config.archive.index_prefix}-*", request_timeout=30)
    body = {"query": {"term": {"room": room}}, "size": 1000, "_source": ["id"]}
    return sorted(hit["_source"]["id"] for hit in client.search(index=config.archive.index_prefix, body=body)["hits"]["hits"])


def test_a_resent_message_spooled_by_two_front_ends_is_indexed_once(chat_server, config, test_spool):
    """A front end killed between a message's fsync and its Redis origin key leaves one copy in its spool; the
    client's resend through another front end leaves a second. History keeps the newer copy (the one delivered),
    whichever spool the real indexer reads first."""
    resending = TestSpool(config)
    resending.room = test_spool.room
    try:
        # The killed front end's copies are indexed first; the resends then replace them.
        test_spool.write(test_spool.records(20, [f"first-{n}" for n in range(20)]))
        wait_for(lambda: len(indexed_ids(chat_server, config, test_spool.room)) == 20, 60, 0.5, "the first copies indexed")
        resends = resending.write(resending.records(20, [f"first-{n}" for n in range(20)]))
        newer = sorted(r["id"] for r in resends)
        wait_for(lambda: indexed_ids(chat_server, config, test_spool.room) == newer, 60, 0.5, "the older copies replaced by the resends")

        # Now the other order: the resends are indexed before the killed front end's spool is read.
        older = test_spool.records(20, [f"second-{n}" for n in range(20)])
        later = resending.write(resending.records(20, [f"second-{n}" for n in range(20)]))
        newer += [r["id"] for r in later]
        wait_for(lambda: indexed_ids(chat_server, config, test_spool.room) == sorted(newer), 60, 0.5, "the resends indexed")
        test_spool.write(older)
        for spool in (test_spool, resending):
            spool.close_and_roll()
            wait_for(lambda: len(spool.segments()) == 1, 30, 0.5, "the older copies handled and their segments removed")
        assert indexed_ids(chat_server, config, test_spool.room) == sorted(newer), "an older copy was indexed after the newer"
    finally:
        resending.remove()


def indexer_running() -> int:
    return program_pid(INDEXER)


def test_spooled_records_are_indexed_exactly_once_within_seconds(chat_server, config, test_spool):
    """At 2,000 records/s for 5 s every record is acknowledged by OpenSearch within ~2 s (realtime get), once each."""
    assert indexer_running(), "the indexer is not running"
    client = chat_server.get_opensearch_client()
    prefix = config.archive.index_prefix
    lags, chunks, stop = [], [], threading.Event()

    def watch():
        # A realtime multi-get sees a document as soon as its bulk is acknowledged, before any refresh.
        while chunks or not stop.is_set():
            if not chunks:
                time.sleep(0.01)
                continue
            spooled_at, record = chunks[0]
            index = f"{prefix}-{record['timestamp'][:4]}.{record['timestamp'][5:7]}"
            found = client.mget(body={"docs": [{"_index": index, "_id": record["id"]}]}, request_timeout=10)
            if found["docs"][0].get("found"):
                lags.append(time.monotonic() - spooled_at)
                chunks.pop(0)
            else:
                time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.monotonic()
    for step in range(50):  # 200 records every 0.1 s
        records = test_spool.append(200)
        chunks.append((time.monotonic(), records[-1]))
        time.sleep(max(0.0, started + (step + 1) * 0.1 - time.monotonic()))
    stop.set()
    watcher.join(60)
    wait_until_indexed(chat_server, config, test_spool, 60)
    lags.sort()
    p50, p99 = lags[len(lags) // 2], lags[max(0, int(len(lags) * 0.99) - 1)]
    print(f"indexing lag over {len(lags)} chunks at 2,000 records/s: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {lags[-1] * 1000:.0f} ms")
    assert len(lags) == 50
    assert p99 < 2.0


def test_kill_9_in_the_middle_of_indexing_loses_and_doubles_nothing(chat_server, config, test_spool):
    """50,000 records; the indexer is killed -9 twice while indexing them; supervisor restarts it; all there once."""
    total = 50_000
    writer = threading.Thread(target=lambda: [test_spool.append(5_000) for _ in range(total // 5_000)])
    started = time.monotonic()
    writer.start()
    try:
        for threshold in (5_000, 25_000):
            wait_for(lambda: indexed_count(chat_server, config, test_spool.room) >= threshold, 90, 0.2, f"{threshold} records indexed")
            pid = indexer_running()
            assert pid, "the indexer is not running"
            os.kill(pid, signal.SIGKILL)
            at_kill = indexed_count(chat_server, config, test_spool.room)
            print(f"killed the indexer (pid {pid}) with {at_kill} of {total} records indexed")
            assert at_kill < total, "the indexer finished before it could be killed"
            wait_for(lambda: indexer_running() not in (0, pid), 60, 0.5, "supervisor to restart the indexer")
        writer.join(120)
        assert test_spool.appended == total
        wait_until_indexed(chat_server, config, test_spool, 120)
        print(f"{total} records spooled and indexed in {time.monotonic() - started:.1f} s with two kills")
    finally:
        writer.join(120)
        if not indexer_running():
            supervisorctl("start", INDEXER)


def opensearch_programs() -> list[str]:
    lines = supervisorctl("status").stdout.splitlines()
    return [line.split()[0] for line in lines if line.startswith("opensearch:")]


def cluster_status(client) -> str:
    return client.cluster.health(request_timeout=5)["status"]


def spool_warnings() -> list[str]:
    result = run_appliance_cli("status", "--json", timeout=120)
    return json.loads(result.stdout)["sections"]["spool"]["warnings"]


def test_every_opensearch_node_down_for_30_s_then_back(chat_server, config, test_spool):
    """Records keep being spooled while the whole cluster is stopped; status warns; after the restart all are indexed once."""
    client = chat_server.get_opensearch_client()
    programs = opensearch_programs()
    assert len(programs) >= 3, programs
    test_spool.append(1_000)
    wait_for(lambda: indexed_count(chat_server, config, test_spool.room) == 1_000, 60, 0.5, "the first records indexed")
    stopped = threading.Event()
    warnings: list[str] = []

    def keep_spooling():
        while not stopped.is_set():
            test_spool.append(50)
            time.sleep(0.1)

    writer = threading.Thread(target=keep_spooling)
    try:
        supervisorctl("stop", "opensearch:*", check=True)
        down_at = time.monotonic()
        writer.start()
        # Messages now wait; after 30 s the oldest is old enough for status to say indexing is behind.
        time.sleep(31)
        deadline = down_at + 60
        while not warnings and time.monotonic() < deadline:
            warnings = spool_warnings()
            if not warnings:
                time.sleep(2)
        down_for = time.monotonic() - down_at
    finally:
        supervisorctl("start", "opensearch:*")
        stopped.set()
        writer.join(30)
    print(f"OpenSearch was down {down_for:.0f} s; {test_spool.appended} records spooled; status said: {warnings}")
    assert any("indexing is behind" in w or "has not indexed anything" in w for w in warnings), warnings
    wait_for(lambda: cluster_status(client) == "green", 180, 2.0, "the cluster to be green again")
    recovered_at = time.monotonic()
    wait_until_indexed(chat_server, config, test_spool, 120)
    print(f"the backlog drained {time.monotonic() - recovered_at:.1f} s after the cluster was green")
    wait_for(lambda: not spool_warnings(), 60, 2.0, "the spool warnings to clear")
