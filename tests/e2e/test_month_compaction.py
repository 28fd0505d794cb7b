"""Finished months are merged into one segment per shard, against the real OpenSearch cluster."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest

from hipchat_server.storage.message_index import MessageIndex


@pytest.fixture
def month_index(chat_server):
    """A past month's index of a prefix of its own, written in several refreshes (several segments)."""
    client = chat_server.get_opensearch_client()
    prefix = f"e2e-compact-{uuid.uuid4().hex[:8]}"
    name = f"{prefix}-2026.01"
    client.indices.create(index=name, body={"settings": {"number_of_shards": 1, "number_of_replicas": 1}})
    try:
        for batch in range(4):
            for n in range(5):
                client.index(index=name, id=f"{batch}-{n}", body={"body": f"message {batch} {n}"})
            client.indices.refresh(index=name)  # each refresh writes a segment of its own
        yield client, prefix, name
    finally:
        client.indices.delete(index=name, ignore_unavailable=True)


def segments_per_copy(client, name: str) -> int:
    [row] = client.cat.indices(index=name, h="pri,rep,segments.count", format="json")
    return int(row["segments.count"]) / (int(row["pri"]) * (1 + int(row["rep"])))


def test_a_finished_month_ends_with_one_segment_per_shard_copy_and_keeps_every_message(month_index):
    client, prefix, name = month_index
    assert segments_per_copy(client, name) > 1
    index = MessageIndex(client, prefix)
    assert index.compact_finished_months(datetime(2026, 11, 26, tzinfo=timezone.utc)) == [name]
    assert segments_per_copy(client, name) == 1
    assert client.count(index=name)["count"] == 20
    # Merged already: the next round leaves it alone.
    assert index.compact_finished_months(datetime(2026, 11, 26, tzinfo=timezone.utc)) == []
