"""RosterStore on an in-memory SQLite database with the real schema: rows per owner, update in one transaction."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine

from hipchat_server.storage.roster import RosterStore, UnknownOwnerError
from hipchat_server.storage.schema import metadata, roster_items, users
from hipchat_server.xmpp.jid import parse_jid
from hipchat_server.xmpp.roster import RosterItem

BOB = parse_jid("bob@chat.example.com")


@pytest.fixture
def store():
    engine = create_engine("sqlite://", future=True)
    metadata.create_all(engine, tables=[users, roster_items])
    with engine.begin() as connection:
        for name in ("alice", "carol"):
            connection.execute(users.insert().values(name=name, mention_name=name, email=f"{name}@example.com", username=name))
    return RosterStore(engine)


def test_upsert_get_and_items_round_trip_every_field(store):
    """An item written comes back equal, groups and pending request included; rows belong to their owner."""
    item = RosterItem(BOB, "Bob", ("Team", "Friends"), "to", ask_out=False, ask_in=True, ask_in_stanza="<presence/>")
    store.upsert("alice", item)
    assert store.get("alice", BOB.full()) == item
    assert store.items("alice") == [item]
    assert store.items("carol") == []
    assert store.get("carol", BOB.full()) is None


def test_update_hands_the_old_row_and_writes_the_new_one(store):
    """update passes the current row to the change and returns (old, new); None removes the row."""
    first = RosterItem(BOB, "Bob")
    assert store.update("alice", BOB.full(), lambda old: first) == (None, first)
    second = RosterItem(BOB, "Robert", subscription="both")
    assert store.update("alice", BOB.full(), lambda old: second) == (first, second)
    assert store.delete("alice", BOB.full()) == second
    assert store.get("alice", BOB.full()) is None
    assert store.delete("alice", BOB.full()) is None


def test_unknown_owner_is_refused_and_reported(store):
    """A roster of a user who does not exist cannot be written; user_exists says who exists."""
    with pytest.raises(UnknownOwnerError):
        store.upsert("nobody", RosterItem(BOB))
    assert store.user_exists("alice") and not store.user_exists("nobody")
