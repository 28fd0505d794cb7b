"""Search: query rewriting and limits, the permission filter in every query, facets, the HTTP API and its authentication."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime, timedelta

import pytest
from twisted.internet import defer, task
from twisted.web.test.requesthelper import DummyRequest

from hipchat_server.authentication import VERIFIED_TTL, AuthenticationFailed, Authenticator
from hipchat_server.rest.api import ApiContext
from hipchat_server.rest.messages import MessagesResource
from hipchat_server.rest.search import SearchResource
from hipchat_server.search import (
    MAX_QUERY_LENGTH,
    QueryRewriter,
    Search,
    SearchError,
    SearchQuery,
)
from hipchat_server.storage.api_tokens import TokenOwner
from hipchat_server.storage.message_search import MAX_MONTH_BUCKETS, MAX_ROOM_BUCKETS, month_buckets
from hipchat_server.storage.room_access import RoomAccess, RoomsByAccess
from hipchat_server.users import ScramCredentials, make_scram_credentials
from hipchat_server.xmpp.auth_limits import AuthFailureLimiter
from tests.unit import history_fakes
from tests.unit.history_fakes import (
    ALICE,
    BOB,
    D,
    ENG,
    SECRET,
    Corpus,
    FakeOpenSearch,
    FakeRecent,
    make_history,
    synchronous,
)

ROOMS = f"conference.{D}"


class FakeReadableRooms:
    """The rooms each user may read (alice: both; bob: only the public one), out of ``existing``."""

    def __init__(self):
        self.readable = {"alice": {ENG, SECRET}, "bob": {ENG}}
        self.existing = {ENG, SECRET}
        self.reads = 0

    def rooms_by_access(self, username):
        self.reads += 1
        if username not in self.readable:
            return RoomsByAccess({}, frozenset())  # an unknown user: no rows at all
        readable = self.readable[username] & self.existing
        return RoomsByAccess({room: RoomAccess(True, True) for room in readable}, frozenset(self.existing - readable))


class MonthlyFakeOpenSearch(FakeOpenSearch):
    """The fake, where each document also has its index's name as ``_index`` (the months facet counts by index)."""

    def _aggregations(self, aggs, docs):
        where = {doc_id: index for index, found in self.indices_docs.items() for doc_id in found}
        return super()._aggregations(aggs, [dict(d, _index=where[d["id"]]) for d in docs])


@pytest.fixture
def client():
    return MonthlyFakeOpenSearch()


@pytest.fixture(autouse=True)
def exists_queries(monkeypatch):
    """The fake's matcher, taught ``exists`` (the visibility filter that names the unreadable rooms uses it)."""
    plain = history_fakes.matches

    def matches(record, query):
        if "exists" in query:
            return history_fakes._field(record, query["exists"]["field"]) not in (None, [])
        return plain(record, query)

    monkeypatch.setattr(history_fakes, "matches", matches)


@pytest.fixture
def rooms():
    return FakeReadableRooms()


@pytest.fixture
def corpus(client):
    return Corpus(client, FakeRecent())


@pytest.fixture
def search(client, rooms):
    history = make_history(client, FakeRecent())
    return Search(
        history.store,
        rooms,
        run_search=synchronous,
        run_database=synchronous,
        domain=D,
        rooms_service=ROOMS,
    )


def result(d):
    out = []
    d.addBoth(out.append)
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def rewrite(text):
    return QueryRewriter(D, ROOMS).rewrite(text)


# The query language.
def test_shortcuts_become_fields_of_the_record():
    assert rewrite("deploy from:alice") == f'deploy (sender:"alice@{D}" OR sender_name.keyword:"alice")'
    assert rewrite("room:eng failed") == f'room:"eng@{ROOMS}" failed'
    assert rewrite("in:eng") == f'room:"eng@{ROOMS}"'
    assert rewrite("with:bob lunch") == f'participants:"bob@{D}" lunch'
    assert rewrite(f"from:carol@{D}") == f'(sender:"carol@{D}" OR sender_name.keyword:"carol@{D}")'


def test_other_fields_and_slashes_are_text_not_syntax():
    """A colon in a sentence, a field we do not offer, a URL or a regex are searched as words."""
    assert rewrite("error: disk full") == "error\\: disk full"
    assert rewrite("participants:eve") == "participants\\:eve"
    assert rewrite("see https://x.example/a") == "see https\\:\\/\\/x.example\\/a"
    assert rewrite("/joh?n(ath[oa]n)/") == "\\/joh?n(ath[oa]n)\\/"


def test_phrases_are_kept_as_written():
    assert rewrite('"from:alice deploy" now') == '"from:alice deploy" now'
    assert rewrite('"unclosed phrase') == '"unclosed phrase"'


def test_wildcards_are_limited():
    assert rewrite("depl* fail?d") == "depl* fail?d"
    with pytest.raises(SearchError, match="wildcards"):
        rewrite("a* b* c* d*")
    with pytest.raises(SearchError, match="may not start"):
        rewrite("*ploy")
    with pytest.raises(SearchError, match="may not start"):
        rewrite("deploy ?x")


def test_query_string_options_bound_the_cost():
    clause = QueryRewriter(D, ROOMS).clause("deploy")["query_string"]
    assert clause["allow_leading_wildcard"] is False and clause["max_determinized_states"] <= 1000
    assert clause["default_operator"] == "AND" and clause["quote_field_suffix"] == ".standard"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(text=""), "q:"),
        (dict(text="x" * (MAX_QUERY_LENGTH + 1)), "at most"),
        (dict(text="x", sort="oldest"), "sort"),
        (dict(text="x", max_results=101), "max-results"),
        (dict(text="x", start_index=5000), "start-index"),
    ],
)
def test_requests_out_of_bounds_are_refused_with_what_to_change(kwargs, message):
    with pytest.raises(SearchError, match=message):
        SearchQuery(**kwargs)


# Permissions, facets, highlights.
def fill(corpus):
    corpus.add(room=ENG, sender=ALICE, body="deploy of the api failed")
    corpus.add(room=ENG, sender=BOB, body="deploy again please")
    corpus.add(room=SECRET, sender=ALICE, body="secret deploy of the launch")
    corpus.add(recipient=BOB, sender=ALICE, body="deploy tonight?")
    corpus.add(recipient=f"carol@{D}", sender=ALICE, body="deploy gossip")  # alice and carol only


def test_a_private_rooms_messages_never_reach_a_non_member(search, corpus):
    """Hits, total, every facet bucket and every highlight leave out what bob may not read."""
    fill(corpus)
    found = result(search.search(BOB, SearchQuery("deploy")))
    assert found.total == 3
    assert {item["body"] for item in found.items} == {
        "deploy of the api failed",
        "deploy again please",
        "deploy tonight?",
    }
    assert dict(found.rooms) == {ENG: 2}
    assert dict(found.senders) == {ALICE: 2, BOB: 1}
    assert sum(n for _, n in found.months) == 3
    assert not any(
        "secret" in (item["highlight"] or "") or "gossip" in (item["highlight"] or "") for item in found.items
    )


def test_a_member_finds_the_private_rooms_messages(search, corpus):
    fill(corpus)
    found = result(search.search(ALICE, SearchQuery("deploy")))
    assert found.total == 5 and dict(found.rooms) == {ENG: 2, SECRET: 1}


def test_a_reader_of_most_rooms_gets_the_filter_naming_the_rooms_they_may_not_read(search, corpus, client, rooms):
    """carol may read three rooms of four: the filter excludes the fourth, asks for every room bucket, same answer."""
    other, third = f"other@{ROOMS}", f"third@{ROOMS}"
    rooms.existing |= {other, third}
    rooms.readable["carol"] = {ENG, other, third}
    fill(corpus)
    corpus.add(room=other, sender=BOB, body="deploy elsewhere")
    found = result(search.search(f"carol@{D}", SearchQuery("deploy")))
    [body] = client.bodies()
    visibility = body["query"]["bool"]["filter"][0]["bool"]
    assert {"term": {"participants": f"carol@{D}"}} in visibility["should"]
    assert {"bool": {"filter": [{"exists": {"field": "room"}}], "must_not": [{"terms": {"room": [SECRET]}}]}} in (
        visibility["should"]
    )
    assert body["aggs"]["rooms"]["terms"]["size"] == MAX_ROOM_BUCKETS
    assert found.total == 4 and dict(found.rooms) == {ENG: 2, other: 1}
    assert {item["body"] for item in found.items} == {
        "deploy of the api failed",
        "deploy again please",
        "deploy gossip",
        "deploy elsewhere",
    }


def test_a_destroyed_rooms_messages_never_show_and_the_room_is_remembered(search, corpus, client, rooms):
    """A room gone from MariaDB keeps its messages in the index: the answer that met it is dropped, unseen."""
    gone, third, fourth = f"gone@{ROOMS}", f"third@{ROOMS}", f"fourth@{ROOMS}"
    rooms.existing |= {third, fourth}
    rooms.readable["carol"] = {ENG, third, fourth}
    fill(corpus)
    corpus.add(room=gone, sender=BOB, body="deploy in a room destroyed since")
    found = result(search.search(f"carol@{D}", SearchQuery("deploy")))
    assert found.total == 3 and dict(found.rooms) == {ENG: 2}
    assert "destroyed" not in json.dumps([found.items, found.rooms, found.senders])
    first, again = client.bodies()
    assert first["aggs"]["rooms"]["terms"]["size"] == MAX_ROOM_BUCKETS  # the excluding filter, checked
    assert {"terms": {"room": sorted([ENG, third, fourth])}} in again["query"]["bool"]["filter"][0]["bool"]["should"]
    assert search.gone_rooms == {gone}
    # Next time the destroyed room is named with the unreadable ones: one search, the same answer.
    again_found = result(search.search(f"carol@{D}", SearchQuery("deploy")))
    assert len(client.bodies()) == 3 and again_found.total == 3
    excluded = client.bodies()[-1]["query"]["bool"]["filter"][0]["bool"]["should"][1]["bool"]["must_not"]
    assert excluded == [{"terms": {"room": sorted([gone, SECRET])}}]


def test_an_answer_that_may_not_list_every_room_is_not_trusted():
    """Buckets left out (more rooms than asked for) or counts that may be low: the search must run again."""
    readable = {ENG: RoomAccess(True, True)}
    listed = {"aggregations": {"rooms": {"buckets": [{"key": ENG, "doc_count": 2}], "sum_other_doc_count": 0}}}
    assert Search._unreadable_hits(listed, readable) == set()
    for extra in ({"sum_other_doc_count": 3}, {"doc_count_error_upper_bound": 1}):
        unlisted = {"aggregations": {"rooms": {**listed["aggregations"]["rooms"], **extra}}}
        assert Search._unreadable_hits(unlisted, readable) is None
    assert Search._unreadable_hits({"aggregations": {}}, readable) is None


def test_permissions_are_read_on_every_search(search, corpus, rooms):
    """A room made private (bob no longer reads it) is gone from bob's very next search: nothing is cached."""
    fill(corpus)
    assert result(search.search(BOB, SearchQuery("deploy"))).total == 3
    rooms.readable["bob"] = set()
    found = result(search.search(BOB, SearchQuery("deploy")))
    assert found.total == 1 and found.rooms == [] and rooms.reads == 2


def test_the_visibility_filter_is_inside_every_search_query(search, corpus, client):
    fill(corpus)
    result(search.search(BOB, SearchQuery("deploy", sort="relevance")))
    [body] = client.bodies()
    visibility = body["query"]["bool"]["filter"][0]["bool"]
    assert {"term": {"participants": BOB}} in visibility["should"]
    assert {"terms": {"room": [ENG]}} in visibility["should"] and visibility["minimum_should_match"] == 1
    assert "post_filter" not in body
    assert set(body["aggs"]) == {"rooms", "senders", "months"}
    assert body["sort"][0] == "_score"


def test_highlights_come_from_the_users_query_alone(search, corpus, client):
    """The highlighter gets the query as asked, not the visibility filter's room terms (it would match them all)."""
    fill(corpus)
    result(search.search(BOB, SearchQuery("deploy")))
    [body] = client.bodies()
    assert body["highlight"]["highlight_query"] == body["query"]["bool"]["must"][0]
    assert "room" not in json.dumps(body["highlight"])


def test_the_months_facet_counts_each_month_from_its_index(search, corpus, client):
    """Hits in two months: one bucket per month, oldest first, labelled YYYY-MM as the date histogram was."""
    fill(corpus)  # 2025-11-24
    corpus.now += 10 * 86_400_000  # 2025-12-04
    corpus.add(room=ENG, sender=BOB, body="deploy in december")
    corpus.add(room=SECRET, sender=ALICE, body="secret deploy in december")
    found = result(search.search(BOB, SearchQuery("deploy")))
    assert found.months == [("2025-11", 3), ("2025-12", 1)]
    assert client.bodies()[-1]["aggs"]["months"] == {"terms": {"field": "_index", "size": MAX_MONTH_BUCKETS}}


def test_month_buckets_add_up_indices_of_one_month_and_keep_odd_names():
    """A month reindexed under a second name is still one bucket; an index without a month keeps its name."""
    aggregations = {
        "months": {
            "buckets": [
                {"key": "messages-2025.06", "doc_count": 5},
                {"key": "messages-2024.12", "doc_count": 2},
                {"key": "messages-2025.06-reindexed", "doc_count": 3},
                {"key": "messages-imported", "doc_count": 1},
            ]
        }
    }
    assert month_buckets(aggregations) == [("2024-12", 2), ("2025-06", 8), ("messages-imported", 1)]


def test_the_senders_facet_is_filtered_only_when_a_room_hides_accounts(search, corpus, client):
    """Without masked rooms the facet is a plain terms aggregation; both shapes read back the same way."""
    fill(corpus)
    found = result(search.search(BOB, SearchQuery("deploy")))
    assert client.bodies()[-1]["aggs"]["senders"] == {"terms": {"field": "sender", "size": 10}}
    assert dict(found.senders) == {ALICE: 2, BOB: 1}


def test_a_user_with_no_rooms_sees_only_their_own_conversations(search, corpus, client):
    fill(corpus)
    found = result(search.search(f"carol@{D}", SearchQuery("deploy")))
    assert [item["body"] for item in found.items] == ["deploy gossip"] and found.rooms == []


def test_rooms_that_hide_accounts_never_reveal_them(client, corpus):
    """In a room whose occupants' accounts are hidden (whois: moderators): no sender facet, no from: by account, no jid."""
    masked = f"masked@{ROOMS}"
    corpus.add(room=masked, sender=ALICE, body="deploy incognito")
    corpus.add(room=ENG, sender=ALICE, body="deploy openly")

    class Rooms:
        def rooms_by_access(self, username):
            return RoomsByAccess({ENG: RoomAccess(True, True), masked: RoomAccess(True, False)}, frozenset())

    search = Search(
        make_history(client, FakeRecent()).store,
        Rooms(),
        run_search=synchronous,
        run_database=synchronous,
        domain=D,
        rooms_service=ROOMS,
    )
    found = result(search.search(BOB, SearchQuery("deploy")))
    assert found.total == 2 and dict(found.senders) == {ALICE: 1}
    assert {item["body"]: item["real_jids"] for item in found.items} == {
        "deploy incognito": False,
        "deploy openly": True,
    }
    rewritten = QueryRewriter(D, ROOMS, [masked]).rewrite("from:alice")
    assert rewritten == f'((sender:"alice@{D}" AND NOT room:("{masked}")) OR sender_name.keyword:"alice")'


# Authentication.
class FakeCredentials:
    def __init__(self):
        self.scram: dict[str, ScramCredentials] = {"alice": make_scram_credentials("correct horse", "SCRAM-SHA-256")}
        self.active = {"alice": True}
        self.lookups = 0

    def get_scram_credentials(self, username, mechanism):
        self.lookups += 1
        return self.scram.get(username)

    def check_password(self, username, password):
        return False

    def is_active(self, username):
        return self.active.get(username, False)


class FakeTokens:
    def __init__(self):
        self.tokens = {}

    def add(self, token, **owner):
        self.tokens[hashlib.sha256(token.encode()).hexdigest()] = TokenOwner(**owner)

    def personal_token(self, token_hash):
        return self.tokens.get(token_hash)


def basic(username, password):
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def test_basic_checks_the_password_against_the_scram_keys_and_remembers_success():
    credentials, now = FakeCredentials(), [0.0]
    authenticator = Authenticator(credentials, clock=lambda: now[0])
    assert authenticator.authenticate(basic("alice", "correct horse")) == "alice"
    assert authenticator.authenticate(basic("alice", "correct horse")) == "alice"
    assert credentials.lookups == 1, "the second request is not checked again"
    now[0] += VERIFIED_TTL + 1
    authenticator.authenticate(basic("alice", "correct horse"))
    assert credentials.lookups == 2
    for header in (basic("alice", "wrong"), basic("nobody", "x"), "Basic !!!", None, "Digest x"):
        with pytest.raises(AuthenticationFailed):
            authenticator.authenticate(header)


def test_basic_refuses_a_disabled_account():
    credentials = FakeCredentials()
    credentials.active["alice"] = False
    with pytest.raises(AuthenticationFailed):
        Authenticator(credentials).authenticate(basic("alice", "correct horse"))


def test_bearer_takes_a_personal_token_with_the_view_messages_scope():
    tokens = FakeTokens()
    later = datetime(2030, 1, 1)
    tokens.add("good", username="alice", is_active=True, scopes=("view_messages",), expires_at=None)
    tokens.add("old", username="alice", is_active=True, scopes=("view_messages",), expires_at=later - timedelta(days=1))
    tokens.add("narrow", username="alice", is_active=True, scopes=("send_message",), expires_at=None)
    authenticator = Authenticator(FakeCredentials(), tokens, now=lambda: later)
    assert authenticator.authenticate("Bearer good") == "alice"
    for token in ("old", "narrow", "unknown", ""):
        with pytest.raises(AuthenticationFailed):
            authenticator.authenticate(f"Bearer {token}")


# The HTTP resources.
@pytest.fixture
def context():
    return ApiContext(
        authenticator=Authenticator(FakeCredentials()),
        limiter=AuthFailureLimiter(3, 60.0, clock=task.Clock()),
        run_blocking=synchronous,
        domain=D,
        public_url="https://chat.example.com",
    )


def get(resource, args=None, authorization=basic("alice", "correct horse"), path=()):
    request = DummyRequest(list(path))
    request.method = b"GET"
    request.args = {k.encode(): [v.encode()] for k, v in (args or {}).items()}
    if authorization:
        request.requestHeaders.setRawHeaders(b"authorization", [authorization.encode()])
    resource.render(request)
    assert request.finished
    return request.responseCode or 200, json.loads(b"".join(request.written)), request


def test_search_answers_json_with_items_highlights_facets_and_paging(context, search, corpus):
    fill(corpus)
    status, body, _ = get(SearchResource(context, search), {"q": "deploy", "max-results": "2"})
    assert status == 200 and body["total"] == 5 and len(body["items"]) == 2
    assert body["items"][0]["links"]["self"].startswith("https://chat.example.com/v2/messages/")
    assert "highlight" in body["items"][0] and "next" in body["links"]
    assert {f["room"] for f in body["facets"]["rooms"]} == {ENG, SECRET}


def test_search_without_credentials_is_401_and_repeated_failures_for_one_account_429(context, search):
    resource = SearchResource(context, search)
    status, body, request = get(resource, {"q": "x"}, authorization=None)
    assert status == 401 and body["error"]["code"] == 401
    assert request.responseHeaders.getRawHeaders(b"www-authenticate")
    for _ in range(3):
        get(resource, {"q": "x"}, authorization=basic("alice", "nope"))
    status, _, _ = get(resource, {"q": "x"})
    assert status == 429
    status, _, _ = get(resource, {"q": "x"}, authorization=basic("bob", "whatever"))
    assert status == 401, "another account from the same address is not locked out"


def test_a_bad_query_is_400_saying_what_to_change(context, search):
    status, body, _ = get(SearchResource(context, search), {"q": "*ploy"})
    assert status == 400 and "may not start" in body["error"]["message"]


def test_search_unavailable_is_503(context, search, client):
    client.down = True
    status, _, _ = get(SearchResource(context, search), {"q": "deploy"})
    assert status == 503


def test_a_message_by_id_is_404_unless_the_caller_may_read_it(context, client, corpus):
    history = make_history(client, FakeRecent())
    secret = corpus.add(room=SECRET, sender=ALICE, body="launch day")
    resource = MessagesResource(context, history)
    status, body, _ = get(resource.getChild(secret["id"].encode(), None), path=[secret["id"]])
    assert status == 200 and body["message"] == "launch day" and body["room"] == SECRET
    context.authenticator.credentials.scram["bob"] = make_scram_credentials("bob's password", "SCRAM-SHA-256")
    context.authenticator.credentials.active["bob"] = True
    status, body, _ = get(resource.getChild(secret["id"].encode(), None), authorization=basic("bob", "bob's password"))
    assert status == 404 and "launch" not in json.dumps(body)
    status, _, _ = get(resource.getChild(b"01ARZ3NDEKTSV4RRFFQ69G5FAV", None))
    assert status == 404


def test_results_are_fired_deferreds(search):
    """The search runs synchronously over the fakes (a guard for the tests above)."""
    assert isinstance(search.search(ALICE, SearchQuery("x")), defer.Deferred)
