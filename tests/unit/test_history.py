"""History: which archive a user may read, pages from Redis or OpenSearch, merging, counts, paging both ways."""

from __future__ import annotations

import pytest
from twisted.internet import defer, task

from hipchat_server.history import HistoryError, Paging
from hipchat_server.history_counts import COUNT_TTL, SETTLE_SECONDS, UNSETTLED_COUNT_TTL
from hipchat_server.storage.message_search import MessageFilter
from tests.unit.history_fakes import ALICE, BOB, CAROL, D, ENG, SECRET, Corpus, FakeOpenSearch, FakeRecent, make_history


@pytest.fixture
def client():
    return FakeOpenSearch()


@pytest.fixture
def recent():
    return FakeRecent()


@pytest.fixture
def corpus(client, recent):
    return Corpus(client, recent)


@pytest.fixture
def clock():
    return task.Clock()


@pytest.fixture
def history(client, recent, clock):
    return make_history(client, recent, clock)


def result(d: defer.Deferred):
    """The value a Deferred fired with (the fakes are synchronous); raises its failure."""
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred did not fire"
    if isinstance(out[0], Exception) or hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def page_of(history, criteria, **paging):
    return result(history.query(criteria, Paging(**paging)))


def ids(records):
    return [r["id"] for r in records]


def room_criteria(history, room=ENG, **kwargs):
    archive = result(history.room_archive(ALICE, room))
    return history.criteria(archive, **kwargs)


# Who may read which archive.
def test_only_the_owner_may_read_a_user_archive(history):
    """A query to another user's bare JID is forbidden; one's own (or no 'to') is one's own archive."""
    assert history.user_archive(ALICE).jid == ALICE
    assert history.user_archive(ALICE, ALICE).jid == ALICE
    with pytest.raises(HistoryError) as refused:
        history.user_archive(ALICE, BOB)
    assert refused.value.condition == "forbidden"


@pytest.mark.parametrize(
    "user, room, condition",
    [
        ("bob", SECRET, "forbidden"),  # not a member of a private room
        ("mallory", ENG, "forbidden"),  # an outcast of a public room
        ("bob", f"nope@conference.{D}", "item-not-found"),
    ],
)
def test_room_archives_follow_the_permission_rule(history, user, room, condition):
    with pytest.raises(HistoryError) as refused:
        result(history.room_archive(f"{user}@{D}", room))
    assert refused.value.condition == condition


def test_members_read_private_rooms_and_anyone_not_outcast_reads_public_ones(history):
    assert result(history.room_archive(ALICE, SECRET)).jid == SECRET
    assert result(history.room_archive(BOB, ENG)).room is True


def test_with_in_a_room_archive_selects_a_nickname_or_an_account(history):
    """with=room/nick filters on the nickname, with=user on the account, with=room alone is the whole room."""
    archive = result(history.room_archive(ALICE, ENG))
    assert history.criteria(archive, with_bare=ENG, with_resource="bob").sender_name == "bob"
    assert history.criteria(archive, with_bare=BOB).sender == BOB
    assert history.criteria(archive, with_bare=ENG) == MessageFilter(room=ENG)


def test_with_in_a_user_archive_is_the_conversation(history):
    archive = history.user_archive(ALICE)
    assert history.criteria(archive, with_bare=BOB).conversation == f"{ALICE}|{BOB}"
    assert history.criteria(archive, with_bare=ALICE).conversation == f"{ALICE}|{ALICE}"  # notes to self


# The newest page from Redis.
def test_the_newest_page_of_a_busy_room_comes_from_redis_alone(history, corpus, client):
    """With more recent records than the page, no OpenSearch page query runs; the count comes from OpenSearch once."""
    for n in range(200):
        corpus.add(room=ENG, body=f"message {n}")
    page = page_of(history, room_criteria(history), before="", max=50)
    assert page.source == "recent" and not page.complete
    assert [r["body"] for r in page.records] == [f"message {n}" for n in range(150, 200)]
    assert page.count == 200
    assert all(body["size"] == 0 or "ids" in str(body) for body in client.bodies()), "only counting went to OpenSearch"


def test_a_page_from_redis_uses_the_cached_count_plus_newer_messages(history, corpus, client, clock):
    """The second newest-page query asks OpenSearch nothing: cached count + messages pushed since."""
    for _ in range(100):
        corpus.add(room=ENG)
    page_of(history, room_criteria(history), before="", max=10)
    asked = len(client.requests)
    corpus.add(room=ENG, indexed=False)
    page = page_of(history, room_criteria(history), before="", max=10)
    assert page.count == 101 and len(client.requests) == asked
    clock.advance(COUNT_TTL + 1)
    page_of(history, room_criteria(history), before="", max=10)
    assert len(client.requests) > asked, "a stale count is refreshed in the background"


def test_a_settled_count_is_kept_longer_and_one_whose_boundary_left_the_list_is_taken_again(
    history, corpus, client, clock
):
    """Counts whose boundary is older than SETTLE_SECONDS live COUNT_TTL; once the list moved past it, ask again."""
    for _ in range(100):
        corpus.add(room=ENG)
    clock.advance(corpus.now / 1000 + SETTLE_SECONDS + 1)  # the clock reads wall time: the corpus is settled
    page_of(history, room_criteria(history), before="", max=10)
    asked = len(client.requests)
    clock.advance(UNSETTLED_COUNT_TTL + 1)
    assert page_of(history, room_criteria(history), before="", max=10).count == 100
    assert len(client.requests) == asked, "still fresh"
    for _ in range(80):
        corpus.add(room=ENG)  # the boundary leaves the recent list
    assert page_of(history, room_criteria(history), before="", max=10).count == 180
    assert len(client.requests) > asked


def test_a_count_taken_while_the_indexer_lags_behind_the_recent_list_is_not_kept(history, corpus, client):
    """With even the oldest recent record unindexed, older ones may be missing too: that count is not cached."""
    from hipchat_server.archive import index_name

    records = [corpus.add(room=ENG, indexed=n < 20) for n in range(100)]
    page_of(history, room_criteria(history), max=10)  # through OpenSearch: 20 indexed + 75 in Redis
    for record in records[20:]:
        client.index(index_name("messages", record), record)
    assert page_of(history, room_criteria(history), before="", max=10).count == 100


def test_a_page_from_redis_answers_while_opensearch_is_down(history, corpus, client):
    """The newest page needs no OpenSearch: with it down the page comes without a count."""
    for _ in range(100):
        corpus.add(room=ENG)
    client.down = True
    page = page_of(history, room_criteria(history), before="", max=50)
    assert len(page.records) == 50 and page.count is None


def test_catching_up_after_a_message_redis_holds_needs_no_opensearch(history, corpus, client):
    """after=<id in the recent list>: the rest is in the list (complete), the page is oldest first."""
    records = [corpus.add(room=ENG) for _ in range(100)]
    client.requests.clear()
    page = page_of(history, room_criteria(history), after=records[90]["id"], max=50)
    assert page.source == "recent" and page.complete and ids(page.records) == ids(records[91:])
    assert not [b for b in client.bodies() if "sort" in b], "no page query"


def test_a_small_archive_goes_to_opensearch_to_learn_it_is_complete(history, corpus):
    """With fewer records than the page, Redis cannot tell whether older ones exist: OpenSearch decides."""
    records = [corpus.add(room=ENG) for _ in range(10)]
    page = page_of(history, room_criteria(history), before="", max=50)
    assert page.source == "opensearch" and page.complete and ids(page.records) == ids(records) and page.count == 10


# Read-your-writes and merging.
def test_a_message_not_indexed_yet_is_already_in_history(history, corpus):
    """Pages from OpenSearch include what is only in Redis (the spool's messages), once, in order, counted."""
    records = [corpus.add(room=ENG) for _ in range(30)]
    records += [corpus.add(room=ENG, indexed=False) for _ in range(3)]
    page = page_of(history, room_criteria(history), max=100)
    assert ids(page.records) == ids(records) and page.complete and page.count == 33


def test_paging_forwards_from_the_start_reaches_unindexed_messages(history, corpus):
    records = [corpus.add(recipient=BOB) for _ in range(120)]
    records += [corpus.add(recipient=BOB, indexed=False) for _ in range(2)]
    criteria = history.criteria(history.user_archive(ALICE), with_bare=BOB)
    seen, after = [], None
    while True:
        page = page_of(history, criteria, after=after, max=50)
        seen += ids(page.records)
        assert page.count == 122
        if page.complete:
            break
        after = page.last
    assert seen == ids(records)


def test_paging_backwards_through_a_large_archive_is_complete_and_ordered(history, corpus, recent):
    """before=<first of the previous page> walks back through OpenSearch and Redis with no gap or repeat."""
    records = [corpus.add(room=ENG, same_ms=(n % 7 == 3)) for n in range(260)]
    criteria = room_criteria(history)
    pages, before = [], ""
    while True:
        page = page_of(history, criteria, before=before, max=50)
        pages.insert(0, ids(page.records))
        if page.complete:
            break
        before = page.first
    assert [i for p in pages for i in p] == ids(records)
    assert len(pages) == 6


def test_paging_forwards_keeps_messages_of_the_same_millisecond(history, corpus):
    """Several messages in one millisecond: search_after on (timestamp, id) neither skips nor repeats them."""
    records = [corpus.add(room=ENG, same_ms=(n % 3 != 0)) for n in range(40)]
    criteria = room_criteria(history)
    seen, after = [], None
    while True:
        page = page_of(history, criteria, after=after, max=7)
        seen += ids(page.records)
        if page.complete:
            break
        after = page.last
    assert seen == ids(records)


def test_redis_down_leaves_opensearch_to_answer(history, corpus, recent):
    records = [corpus.add(room=ENG) for _ in range(20)]
    recent.down = True
    page = page_of(history, room_criteria(history), before="", max=5)
    assert ids(page.records) == ids(records[-5:]) and not page.complete


def test_opensearch_down_for_an_older_page_is_an_internal_server_error(history, corpus, client):
    records = [corpus.add(room=ENG) for _ in range(100)]
    client.down = True
    with pytest.raises(HistoryError) as refused:
        page_of(history, room_criteria(history), before=records[10]["id"], max=5)
    assert refused.value.condition == "internal-server-error"


# Filters.
def test_start_and_end_are_inclusive_and_select_by_time(history, corpus):
    records = [corpus.add(recipient=BOB) for _ in range(20)]
    start, end = records[5]["timestamp"], records[9]["timestamp"]
    from hipchat_server.xmpp.mam import parse_timestamp

    criteria = history.criteria(
        history.user_archive(ALICE), start_ms=parse_timestamp(start), end_ms=parse_timestamp(end)
    )
    page = page_of(history, criteria)
    assert ids(page.records) == ids(records[5:10]) and page.complete and page.count == 5


def test_after_id_and_before_id_are_exclusive_even_within_one_millisecond(history, corpus):
    records = [corpus.add(room=ENG, same_ms=(n > 0)) for n in range(10)]
    for _ in range(80):
        corpus.add(room=ENG)  # pushes those ten out of the recent list: OpenSearch answers
    criteria = room_criteria(history, after_id=records[2]["id"], before_id=records[7]["id"])
    page = page_of(history, criteria)
    assert ids(page.records) == ids(records[3:7]) and page.count == 4


def test_with_selects_one_conversation_of_a_user_archive(history, corpus):
    with_bob = [corpus.add(recipient=BOB) for _ in range(3)]
    corpus.add(recipient=CAROL)
    corpus.add(sender=BOB, recipient=CAROL)  # not alice's at all
    with_bob.append(corpus.add(sender=BOB, recipient=ALICE))
    page = page_of(history, history.criteria(history.user_archive(ALICE), with_bare=BOB))
    assert ids(page.records) == ids(with_bob)
    assert len(page_of(history, history.criteria(history.user_archive(ALICE))).records) == 5


def test_fulltext_is_asked_of_opensearch_only(history, corpus, client):
    corpus.add(room=ENG, body="the deploy failed")
    corpus.add(room=ENG, body="lunch?")
    corpus.add(room=ENG, body="deploy again", indexed=False)  # not searchable until indexed
    page = page_of(history, room_criteria(history, fulltext="deploy"))
    assert [r["body"] for r in page.records] == ["the deploy failed"]


@pytest.mark.parametrize("field", ["after_id", "before_id"])
def test_an_unknown_id_in_a_filter_is_item_not_found(history, corpus, field):
    corpus.add(room=ENG)
    with pytest.raises(HistoryError) as refused:
        page_of(history, room_criteria(history, **{field: "01ARZ3NDEKTSV4RRFFQ69G5FAV"}))
    assert refused.value.condition == "item-not-found"


def test_an_id_from_another_archive_is_item_not_found(history, corpus):
    """RSM after=<a message of a private room> in a user archive: not in this archive."""
    secret = corpus.add(room=SECRET)
    corpus.add(recipient=BOB)
    with pytest.raises(HistoryError) as refused:
        page_of(history, history.criteria(history.user_archive(ALICE)), after=secret["id"])
    assert refused.value.condition == "item-not-found"


def test_a_malformed_id_is_item_not_found(history):
    with pytest.raises(HistoryError) as refused:
        page_of(history, history.criteria(history.user_archive(ALICE)), before="not-an-id")
    assert refused.value.condition == "item-not-found"


def test_max_zero_only_counts(history, corpus):
    for _ in range(12):
        corpus.add(room=ENG)
    page = page_of(history, room_criteria(history), max=0)
    assert page.records == [] and page.count == 12


def test_every_opensearch_body_is_restricted_to_the_archive(history, corpus, client):
    """Whatever the query, each body sent filters on the room or the participant: nothing else can match."""
    for n in range(90):
        corpus.add(room=ENG if n % 2 else SECRET)
        corpus.add(recipient=BOB)
    page_of(history, room_criteria(history), before="", max=10)
    page_of(history, room_criteria(history, fulltext="hello"))
    page_of(history, history.criteria(history.user_archive(ALICE), with_bare=BOB), max=7)
    result(history.edges(room_criteria(history)))
    assert client.bodies()
    for body in client.bodies():
        text = str(body["query"])
        assert f"'room': '{ENG}'" in text or f"'participants': '{ALICE}'" in text


def test_edges_are_the_first_and_last_message_including_unindexed_ones(history, corpus):
    first = corpus.add(room=ENG)
    corpus.add(room=ENG)
    last = corpus.add(room=ENG, indexed=False)
    oldest, newest = result(history.edges(room_criteria(history)))
    assert (oldest["id"], newest["id"]) == (first["id"], last["id"])
    assert result(history.edges(room_criteria(history, room=SECRET))) == (None, None)


# Permalinks.
def test_a_message_by_id_is_shown_only_to_who_may_read_it(history, corpus):
    secret = corpus.add(room=SECRET, sender=ALICE)
    public = corpus.add(room=ENG)
    private_chat = corpus.add(recipient=BOB)
    assert result(history.message(ALICE, secret["id"]))[0]["id"] == secret["id"]
    assert result(history.message(BOB, secret["id"])) is None
    assert result(history.message(f"mallory@{D}", public["id"])) is None
    assert result(history.message(BOB, private_chat["id"]))[0]["id"] == private_chat["id"]
    assert result(history.message(CAROL, private_chat["id"])) is None
    assert result(history.message(ALICE, "01ARZ3NDEKTSV4RRFFQ69G5FAV")) is None


def test_a_message_by_id_not_indexed_yet_comes_from_the_readers_recent_list(history, corpus):
    fresh = corpus.add(recipient=BOB, indexed=False)
    assert result(history.message(BOB, fresh["id"]))[0]["id"] == fresh["id"]


# Room permissions as stored in MariaDB.
@pytest.fixture
def engine():
    from sqlalchemy import create_engine

    from hipchat_server.storage.schema import metadata, room_members, rooms, users

    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    with engine.begin() as c:
        for n, name in enumerate(["alice", "bob", "mallory", "owner", "admin"], start=1):
            c.execute(users.insert().values(id=n, name=name, mention_name=name, email=f"{name}@e.x", username=name))
        for n, (node, privacy, whois) in enumerate(
            [("eng", "public", "anyone"), ("secret", "private", "anyone"), ("masked", "public", "moderators")], start=1
        ):
            c.execute(rooms.insert().values(id=n, name=node, jid_node=node, privacy=privacy, whois=whois))
        for room_id, user_id, affiliation in [
            (1, 3, "outcast"),
            (2, 1, "member"),
            (2, 4, "owner"),
            (2, 3, "outcast"),
            (3, 5, "admin"),
        ]:
            c.execute(room_members.insert().values(room_id=room_id, user_id=user_id, affiliation=affiliation))
    return engine


def test_room_access_follows_the_rule(engine):
    """Public: everyone but outcasts; private: owner/admin/member; real JIDs hidden in semi-anonymous rooms but to moderators."""
    from hipchat_server.storage.room_access import RoomAccessStore

    store = RoomAccessStore(engine, f"conference.{D}")
    assert set(store.readable_rooms("alice")) == {ENG, SECRET, f"masked@conference.{D}"}
    assert set(store.readable_rooms("bob")) == {ENG, f"masked@conference.{D}"}
    assert set(store.readable_rooms("mallory")) == {f"masked@conference.{D}"}
    assert store.readable_rooms("nobody") == {}  # a deleted account reads nothing
    assert store.access("bob", SECRET).readable is False
    assert store.access("mallory", ENG).readable is False
    assert store.access("bob", f"masked@conference.{D}").real_jids is False
    assert store.access("admin", f"masked@conference.{D}").real_jids is True
    assert store.access("bob", f"nope@conference.{D}") is None
    assert store.access("bob", f"eng@elsewhere.{D}") is None


def test_room_access_agrees_with_the_rooms_service(engine):
    """The rooms service's readable_room_jids (storage/rooms.py) and history's rule select the same rooms."""
    from hipchat_server.storage.room_access import RoomAccessStore
    from hipchat_server.storage.rooms import RoomStore

    ours, theirs = RoomAccessStore(engine, f"conference.{D}"), RoomStore(engine, f"conference.{D}")
    for user in ["alice", "bob", "mallory", "owner", "admin"]:
        assert set(ours.readable_rooms(user)) == theirs.readable_room_jids(user), user
